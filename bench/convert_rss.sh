#!/usr/bin/env bash
# Peak memory and wall time of `slope-convert dense-to-slope --nm dense` on an
# OPT-1.3B-shaped fp16 checkpoint (hidden 2048, 24 layers, 32 heads, ffn 8192,
# vocab 50272, 2048 positions: about 2.6 GB) stored as sharded safetensors,
# against `cp -r` of the same files. The converter streams: it should stay
# well under 1 GiB of peak RSS (target), however large the checkpoint.
#
# Environment: NM (default "dense"), LAYOUT (default safetensors-sharded),
# PRESET (default opt-1.3b), DTYPE (default F16), WORK (scratch directory,
# default a new one under $TMPDIR; removed at the end unless KEEP=1).
# Output: a summary on stdout and in bench/out/convert_rss.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
NM=${NM:-dense}
LAYOUT=${LAYOUT:-safetensors-sharded}
PRESET=${PRESET:-opt-1.3b}
DTYPE=${DTYPE:-F16}
work=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/slope-convert-rss.XXXXXX")}
mkdir -p "$work"
if [[ "${KEEP:-0}" != 1 ]]; then
	trap 'rm -rf "$work"' EXIT
fi
[[ -x /usr/bin/time ]] || { echo "convert_rss.sh: needs GNU time at /usr/bin/time" >&2; exit 1; }

go build -o "$work/slope-convert" ./cli/slope-convert
go build -o "$work/genckpt" ./bench/cmd/genckpt
"$work/genckpt" -out "$work/ckpt" -preset "$PRESET" -dtype "$DTYPE" -layout "$LAYOUT"
sync

field() { # field FILE LABEL: the value of a /usr/bin/time -v line
	sed -n "s/^[[:space:]]*$2: //p" "$1"
}

/usr/bin/time -v "$work/slope-convert" dense-to-slope --in "$work/ckpt" --out "$work/out.slope" --nm "$NM" --quiet \
	>"$work/convert.stdout" 2>"$work/convert.time"
/usr/bin/time -v cp -r "$work/ckpt" "$work/copy" 2>"$work/cp.time"

ckpt_bytes=$(du -sb "$work/ckpt" | cut -f1)
out_bytes=$(stat -c %s "$work/out.slope")
mkdir -p bench/out
{
	echo "# bench/convert_rss.sh $(date -u +%Y-%m-%dT%H:%M:%SZ) $(go version | cut -d' ' -f3-) $(nproc) CPUs"
	echo "checkpoint: $PRESET $DTYPE $LAYOUT, $ckpt_bytes bytes in $(ls "$work/ckpt" | wc -l) files"
	echo "command: slope-convert dense-to-slope --in CKPT --out OUT --nm $NM --quiet  (output $out_bytes bytes)"
	printf '%-14s %22s %18s\n' "" "max RSS (KiB)" "wall (m:ss)"
	printf '%-14s %22s %18s\n' "slope-convert" "$(field "$work/convert.time" 'Maximum resident set size (kbytes)')" \
		"$(field "$work/convert.time" 'Elapsed (wall clock) time (h:mm:ss or m:ss)')"
	printf '%-14s %22s %18s\n' "cp -r" "$(field "$work/cp.time" 'Maximum resident set size (kbytes)')" \
		"$(field "$work/cp.time" 'Elapsed (wall clock) time (h:mm:ss or m:ss)')"
	rss=$(field "$work/convert.time" 'Maximum resident set size (kbytes)')
	if ((rss < 1048576)); then echo "peak RSS under the 1 GiB target"; else echo "peak RSS OVER the 1 GiB target"; fi
} | tee bench/out/convert_rss.txt
