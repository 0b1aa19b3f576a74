#!/usr/bin/env bash
# Runtime speed on an OPT-125m-shaped model (12 layers, hidden 768, ffn
# 3072, vocab 50272; random weights from a seed): the same fp32 checkpoint
# converted dense fp32, dense bf16 and 2:4 bf16, each timed by `slope
# bench` (prefill of PROMPT tokens, decode of GEN tokens with the KV cache)
# in one run, so the ratios compare like with like.
# Environment: PROMPT (128), GEN (32), THREADS (0 = all cores), KEEP=1.
# Output: bench/out/runtime.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
PROMPT=${PROMPT:-128}
GEN=${GEN:-32}
THREADS=${THREADS:-0}
work=$(mktemp -d "${TMPDIR:-/tmp}/slope-runtime.XXXXXX")
[[ "${KEEP:-0}" == 1 ]] || trap 'rm -rf "$work"' EXIT
go build -o "$work/slope" ./cli/slope
go build -o "$work/slope-convert" ./cli/slope-convert
go build -o "$work/genckpt" ./bench/cmd/genckpt
"$work/genckpt" -out "$work/ckpt" -preset opt-125m -dtype F32 -layout safetensors >/dev/null
"$work/slope-convert" dense-to-slope --in "$work/ckpt" --out "$work/dense-fp32.slope" --nm dense --quiet >/dev/null
"$work/slope-convert" dense-to-slope --in "$work/ckpt" --out "$work/dense-bf16.slope" --nm dense --dtype bf16 --quiet >/dev/null
"$work/slope-convert" dense-to-slope --in "$work/ckpt" --out "$work/slope-24-bf16.slope" --nm 2:4 --dtype bf16 --quiet >/dev/null
mkdir -p bench/out
{
	echo "# bench/runtime.sh $(date -u +%Y-%m-%dT%H:%M:%SZ) $(nproc) CPUs, prompt $PROMPT, gen $GEN, threads $THREADS"
	for m in dense-fp32 dense-bf16 slope-24-bf16; do
		echo "## $m ($(stat -c %s "$work/$m.slope") bytes)"
		"$work/slope" bench "$work/$m.slope" --prompt-len "$PROMPT" --gen-len "$GEN" --threads "$THREADS"
	done
} | tee bench/out/runtime.txt
