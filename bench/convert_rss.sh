#!/usr/bin/env bash
# Peak memory and wall time of `slope-convert dense-to-slope --nm dense` on an
# OPT-1.3B-shaped fp16 checkpoint (hidden 2048, 24 layers, 32 heads, ffn 8192,
# vocab 50272, 2048 positions: about 2.6 GB) stored as sharded safetensors,
# against `cp -r` of the same files, with and without syncing the copy
# (see below), REPEAT rounds (2). The converter streams: it should stay
# well under 1 GiB of peak RSS (target), however large the checkpoint.
#
# Environment: NM (default "dense"), LAYOUT (default safetensors-sharded),
# PRESET (default opt-1.3b), DTYPE (default F16), REPEAT (2), COLD (0),
# WORK (scratch directory, default a new one under $TMPDIR; removed at the
# end unless KEEP=1).
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

secs() { # secs CMD...: wall seconds of CMD
	local t0 t1
	t0=$(date +%s.%N)
	"$@"
	t1=$(date +%s.%N)
	echo "$t1 - $t0" | bc
}

# REPEAT rounds, each: the conversion (its output fsynced before the
# rename, as the writer always does), `cp -r` of the checkpoint (page
# cache only: ext4 and others copy in the kernel and return before any
# byte reaches the disk) and `cp -r` followed by `sync` of the copied
# files (the same durability as the converter's output). The checkpoint
# is in the page cache for all three (genckpt just wrote it), unless
# COLD=1: then the page cache is dropped before each (root only), so each
# reads the checkpoint from the disk, as with a checkpoint larger than
# the memory.
REPEAT=${REPEAT:-2}
COLD=${COLD:-0}
cold() {
	[[ "$COLD" == 1 ]] || return 0
	sync
	echo 3 >/proc/sys/vm/drop_caches || { echo "convert_rss.sh: COLD=1 needs root (drop_caches)" >&2; exit 1; }
}
rows=()
for r in $(seq "$REPEAT"); do
	rm -f "$work/out.slope"
	cold
	/usr/bin/time -v "$work/slope-convert" dense-to-slope --in "$work/ckpt" --out "$work/out.slope" --nm "$NM" --quiet \
		>"$work/convert.stdout" 2>"$work/convert.time"
	rm -rf "$work/copy"
	cold
	cp_s=$(secs cp -r "$work/ckpt" "$work/copy")
	rm -rf "$work/copy"
	cold
	cps_s=$(secs sh -c 'cp -r "$1" "$2" && sync "$2"/*' sh "$work/ckpt" "$work/copy")
	rm -rf "$work/copy"
	conv=$(field "$work/convert.time" 'Elapsed (wall clock) time (h:mm:ss or m:ss)')
	conv_s=$(echo "$conv" | awk -F: '{ s = 0; for (i = 1; i <= NF; i++) s = s * 60 + $i; print s }')
	rss=$(field "$work/convert.time" 'Maximum resident set size (kbytes)')
	cpu=$(field "$work/convert.time" 'Percent of CPU this job got')
	rows+=("$(printf '%-6s %10s %10s %8s %10s %10s %8s %8s' "$r" "$conv_s" "$rss" "$cpu" "$cp_s" "$cps_s" \
		"$(echo "scale=2; $conv_s / $cp_s" | bc)" "$(echo "scale=2; $conv_s / $cps_s" | bc)")")
done

ckpt_bytes=$(du -sb "$work/ckpt" | cut -f1)
out_bytes=$(stat -c %s "$work/out.slope")
mkdir -p bench/out
{
	echo "# bench/convert_rss.sh $(date -u +%Y-%m-%dT%H:%M:%SZ) $(go version | cut -d' ' -f3-) $(nproc) CPUs"
	echo "checkpoint: $PRESET $DTYPE $LAYOUT, $ckpt_bytes bytes in $(ls "$work/ckpt" | wc -l) files; page cache $([[ "$COLD" == 1 ]] && echo "dropped before each command (COLD=1)" || echo "warm")"
	echo "command: slope-convert dense-to-slope --in CKPT --out OUT --nm $NM --quiet  (output $out_bytes bytes)"
	printf '%-6s %10s %10s %8s %10s %10s %8s %8s\n' round "convert s" "RSS KiB" "CPU" "cp -r s" "+sync s" "/cp" "/cp+sync"
	printf '%s\n' "${rows[@]}"
	max=0
	for row in "${rows[@]}"; do
		v=$(echo "$row" | awk '{ print $3 }')
		((v > max)) && max=$v
	done
	if ((max < 1048576)); then echo "peak RSS under the 1 GiB target"; else echo "peak RSS OVER the 1 GiB target"; fi
} | tee bench/out/convert_rss.txt
