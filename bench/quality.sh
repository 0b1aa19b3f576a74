#!/usr/bin/env bash
# Issue 5's quality table: the dense model that bench/experiment.sh trained
# ($OUT/dense.slope), exported as a Hugging Face directory and converted
# back by slope-convert with every pruning method (magnitude, wanda,
# sparsegpt; the last two calibrated on the training split), at 2:4 and
# 4:8, each without adapters and with SVD-initialised adapters of rank
# 1.56% and 6.25% of the hidden size. Every model, and the dense one, is
# scored by `slope score` on the held-out split, as bench/experiment.sh
# scores its runs.
# Environment: OUT (bench/out/experiment, as bench/experiment.sh),
# SEQ (128: score window), CALIB_SAMPLES (128), CALIB_SEQLEN (128),
# SEED (1), THREADS (2).
# Output: $OUT/quality.md (table), $OUT/quality/*.slope.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/bench/out/experiment}
SEQ=${SEQ:-128}
CALIB_SAMPLES=${CALIB_SAMPLES:-128}
CALIB_SEQLEN=${CALIB_SEQLEN:-128}
SEED=${SEED:-1}
THREADS=${THREADS:-2}
die() {
	echo "quality: $*" >&2
	exit 1
}
for f in dense.slope train.txt val.txt; do
	[ -f "$OUT/$f" ] || die "$OUT/$f is missing: run bench/experiment.sh first"
done
mkdir -p "$OUT/bin" "$OUT/quality"
go build -o "$OUT/bin/slope" ./cli/slope
go build -o "$OUT/bin/slope-convert" ./cli/slope-convert
SLOPE=$OUT/bin/slope
CONVERT=$OUT/bin/slope-convert
Q=$OUT/quality

# The converter reads checkpoints (HF directories, ONNX), not .slope
# files: export the trained model (its tokenizer goes along).
"$SLOPE" export "$OUT/dense.slope" --to hf --out "$Q/dense-hf" --force >/dev/null
[ -f "$Q/dense-hf/vocab.json" ] || die "the export of $OUT/dense.slope has no tokenizer"

score() { # model -> "nll ppl"
	local s
	s=$("$SLOPE" score "$1" --text "$OUT/val.txt" --window "$SEQ" --threads "$THREADS")
	read -r _ _ _ nll _ ppl <<<"$s"
	echo "$nll $ppl"
}

convert() { # out flags...
	local out=$1
	shift
	/usr/bin/time -f "%e" -o "$out.time" "$CONVERT" dense-to-slope --in "$Q/dense-hf" --out "$out" --dtype fp32 \
		--seed "$SEED" --quiet "$@" >/dev/null
}

convert "$Q/dense.slope" --nm dense
read -r dnll dppl < <(score "$Q/dense.slope")
{
	echo "| method | pattern | no adapters: loss / ppl | svd rank 1.56%: loss / ppl | svd rank 6.25%: loss / ppl |"
	echo "| --- | --- | --- | --- | --- |"
	echo "| dense (no pruning) | - | $dnll / $dppl | | |"
} | tee "$OUT/quality.md"
for method in magnitude wanda sparsegpt; do
	calib=()
	[ "$method" = magnitude ] || calib=(--calib "$OUT/train.txt" --calib-samples "$CALIB_SAMPLES" --calib-seqlen "$CALIB_SEQLEN")
	for nm in 2:4 4:8; do
		row="| $method | $nm |"
		for a in none 0.0156 0.0625; do
			name=$method-${nm/:/of}-$a
			if [ "$a" = none ]; then
				convert "$Q/$name.slope" --nm "$nm" --method "$method" "${calib[@]}"
			else
				convert "$Q/$name.slope" --nm "$nm" --method "$method" "${calib[@]}" --adapter-init svd --rank-frac "$a"
			fi
			read -r nll ppl < <(score "$Q/$name.slope")
			row="$row $nll / $ppl |"
		done
		echo "$row" | tee -a "$OUT/quality.md"
	done
done
echo "conversion wall times (s): $(for f in "$Q"/*.slope.time; do printf '%s=%s ' "$(basename "$f" .slope.time)" "$(cat "$f")"; done)" >>"$OUT/quality.md"
