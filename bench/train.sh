#!/usr/bin/env bash
# Training throughput and memory, SLoPe 2:4 vs dense, on the CPU trainer:
# `slope init` makes the same small OPT (4 layers, hidden 256, 4 heads,
# ffn 1024, 256 positions, vocab VOCAB) dense and 2:4
# from one seed, then `slope train` runs STEPS steps of BATCH x SEQ tokens
# on random token ids. Prints tokens/s and peak RSS of each, in one run.
# Environment: STEPS (8), BATCH (4), SEQ (128), VOCAB (8192), THREADS (0).
# Output: bench/out/train.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-8}
BATCH=${BATCH:-4}
SEQ=${SEQ:-128}
VOCAB=${VOCAB:-8192}
THREADS=${THREADS:-0}
work=$(mktemp -d "${TMPDIR:-/tmp}/slope-train.XXXXXX")
trap 'rm -rf "$work"' EXIT
go build -o "$work/slope" ./cli/slope
cat >"$work/config.json" <<JSON
{"model_type": "opt", "vocab_size": $VOCAB, "hidden_size": 256, "ffn_dim": 1024,
 "num_hidden_layers": 4, "num_attention_heads": 4, "max_position_embeddings": 256,
 "word_embed_proj_dim": 256, "do_layer_norm_before": true, "activation_function": "relu",
 "enable_bias": true, "layer_norm_elementwise_affine": true, "tie_word_embeddings": true}
JSON
python3 - "$work/tokens.u16" "$VOCAB" <<'PY'
import random, struct, sys
random.seed(1)
n = 200000
with open(sys.argv[1], "wb") as f:
    f.write(b"".join(struct.pack("<H", random.randrange(3, int(sys.argv[2]))) for _ in range(n)))
PY
mkdir -p bench/out
{
	echo "# bench/train.sh $(date -u +%Y-%m-%dT%H:%M:%SZ) $(nproc) CPUs, $STEPS steps of $BATCH x $SEQ tokens, vocab $VOCAB"
	for nm in dense 2:4; do
		"$work/slope" init --config "$work/config.json" --out "$work/m.slope" --nm "$nm" --seed 1 >/dev/null
		start=$(date +%s.%N)
		/usr/bin/time -f "%M" -o "$work/rss" "$work/slope" train "$work/m.slope" --data "$work/tokens.u16" --steps "$STEPS" \
			--batch "$BATCH" --seq "$SEQ" --lr 1e-3 --out "$work/ck.slope" --threads "$THREADS" --print-every 1000000 >/dev/null 2>&1
		end=$(date +%s.%N)
		secs=$(echo "$end - $start" | bc)
		echo "$nm: $(echo "$STEPS * $BATCH * $SEQ / $secs" | bc) tokens/s (wall $secs s incl. start-up and the final save), peak RSS $(($(cat "$work/rss") / 1024)) MiB"
	done
} | tee bench/out/train.txt
