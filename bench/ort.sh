#!/usr/bin/env bash
# slope against ONNX Runtime (CPU) on an OPT-125m-shaped model (12 layers,
# hidden 768, ffn 3072, vocab 50272; random weights from a seed), in one
# run: genckpt writes the fp32 checkpoint and a with-past ONNX model of
# the same weights (past_key_values.* in, present.* out: ORT decodes with
# a KV cache); ORT (onnxruntime-node 1.30, CPU execution provider, all
# graph optimizations) runs the ONNX fp32 model, `slope bench` the
# checkpoint converted dense fp32, dense bf16 and 2:4 bf16 — the same
# prompt, decode length and threads; both prefills compute the logits of
# every position (slope bench --all-logits). Then ORT's logits are checked
# against `slope forward` on the dense fp32 model (max |Δ|).
# Environment: PROMPT (128), GEN (64), THREADS (0 = all cores), REPS (1
# timed run after a warm-up, best kept, for each), KEEP=1.
# onnxruntime-node is installed by scripts/testdata.sh (once, into
# .cache/npm/ort, with its install script's CUDA download skipped; the CPU
# binaries are in the package), the copy the export tests use too.
# Output: bench/out/ort.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
PROMPT=${PROMPT:-128}
GEN=${GEN:-64}
THREADS=${THREADS:-0}
REPS=${REPS:-1}
ORT_VERSION=1.30.0
scripts/testdata.sh >&2
export ORT_PATH="$PWD/.cache/npm/ort/node_modules/onnxruntime-node"
work=$(mktemp -d "${TMPDIR:-/tmp}/slope-ort.XXXXXX")
[[ "${KEEP:-0}" == 1 ]] || trap 'rm -rf "$work"' EXIT
go build -o "$work/slope" ./cli/slope
go build -o "$work/slope-convert" ./cli/slope-convert
go build -o "$work/genckpt" ./bench/cmd/genckpt
"$work/genckpt" -out "$work/ckpt" -preset opt-125m -dtype F32 -layout safetensors -onnx "$work/opt-125m-past.onnx" >/dev/null
"$work/slope-convert" dense-to-slope --in "$work/ckpt" --out "$work/dense-fp32.slope" --nm dense --quiet >/dev/null
"$work/slope-convert" dense-to-slope --in "$work/ckpt" --out "$work/dense-bf16.slope" --nm dense --dtype bf16 --quiet >/dev/null
"$work/slope-convert" dense-to-slope --in "$work/ckpt" --out "$work/slope-24-bf16.slope" --nm 2:4 --dtype bf16 --quiet >/dev/null
mkdir -p bench/out
ort() { node bench/ort/ort_bench.mjs --model "$work/opt-125m-past.onnx" "$@"; }
# rate FILE prefill|decode: the tok/s of a `slope bench`-format report.
rate() { awk -v k="$2" '$1 == k { print $(NF-1) }' "$1"; }
{
	echo "# bench/ort.sh $(date -u +%Y-%m-%dT%H:%M:%SZ) $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), prompt $PROMPT, gen $GEN, threads $THREADS, node $(node --version)"
	echo "## ort-fp32 (onnxruntime-node $ORT_VERSION, with-past ONNX, $(($(stat -c %s "$work/opt-125m-past.onnx") + $(stat -c %s "$work/opt-125m-past.onnx.data"))) bytes)"
	THREADS=$THREADS ort --prompt "$PROMPT" --gen "$GEN" --reps "$REPS" | tee "$work/ort-fp32.txt"
	for m in dense-fp32 dense-bf16 slope-24-bf16; do
		echo "## $m ($(stat -c %s "$work/$m.slope") bytes)"
		best_p=0 best_d=0
		for _ in $(seq "$REPS"); do
			"$work/slope" bench "$work/$m.slope" --prompt-len "$PROMPT" --gen-len "$GEN" --threads "$THREADS" --all-logits >"$work/run.txt"
			p=$(rate "$work/run.txt" prefill) d=$(rate "$work/run.txt" decode)
			if awk -v a="$p" -v b="$best_p" 'BEGIN { exit !(a > b) }'; then best_p=$p; fi
			if awk -v a="$d" -v b="$best_d" 'BEGIN { exit !(a > b) }'; then best_d=$d; fi
			cat "$work/run.txt"
		done
		printf 'prefill %s tok/s\ndecode %s tok/s\n' "$best_p" "$best_d" >"$work/$m.txt"
	done
	echo "## correctness: ORT vs slope forward, dense fp32, same weights"
	ort --check --slope "$work/slope" --slope-model "$work/dense-fp32.slope" --check-len 16 --tol 1e-3 || echo "check FAILED"
	echo
	ortp=$(rate "$work/ort-fp32.txt" prefill) ortd=$(rate "$work/ort-fp32.txt" decode)
	printf '%-18s %14s %14s %12s %12s\n' model "prefill tok/s" "decode tok/s" "prefill/ORT" "decode/ORT"
	printf '%-18s %14.1f %14.1f %12s %12s\n' "ORT fp32" "$ortp" "$ortd" 1.00 1.00
	for m in dense-fp32 dense-bf16 slope-24-bf16; do
		p=$(rate "$work/$m.txt" prefill) d=$(rate "$work/$m.txt" decode)
		label=${m/slope-24/2:4}
		printf '%-18s %14.1f %14.1f %12.2f %12.2f\n' "slope ${label/-/ }" "$p" "$d" "$(awk -v a="$p" -v b="$ortp" 'BEGIN { print a / b }')" "$(awk -v a="$d" -v b="$ortd" 'BEGIN { print a / b }')"
	done
} 2>&1 | tee bench/out/ort.txt
