#!/usr/bin/env bash
# Makes the embedded default model, testmodels/opt-kjv-mini: a small OPT
# (4 layers, hidden 128, ffn 512, 4 heads, 256 positions, vocabulary 4096;
# 1.35M parameters, 2.7 MB of bf16 weights) trained here from scratch on the
# King James Bible, with bench/experiment.sh's corpus and split, and a
# byte-level BPE of VOCAB ids learnt here from the training split
# (bench/cmd/bpetrain: our trainer, no merges from elsewhere). It is small
# enough to live in the repository and in the binaries, so that the
# README's first command converts a model that writes English and carries
# its tokenizer.
#
# Steps: data (experiment.sh's), tokenizer, init, train, export. The result
# is deterministic for a given THREADS (the trainer's sums depend on it).
# Environment: STEPS (3000), BATCH (8), SEQ (255: windows of 256 tokens, as
# the committed model was trained), LR (2e-3), WARMUP (100),
# VOCAB (4096), THREADS (2), SEED (1), OUT (bench/out/default-model), DEST
# (testmodels/opt-kjv-mini).
# Output: testmodels/opt-kjv-mini/ (config.json, generation_config.json,
# model.safetensors in bf16, vocab.json, merges.txt), $OUT/train.jsonl and
# the held-out perplexity in $OUT/score.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
STEPS=${STEPS:-3000}
BATCH=${BATCH:-8}
SEQ=${SEQ:-255}
LR=${LR:-2e-3}
WARMUP=${WARMUP:-100}
VOCAB=${VOCAB:-4096}
THREADS=${THREADS:-2}
SEED=${SEED:-1}
OUT=${OUT:-$ROOT/bench/out/default-model}
DEST=${DEST:-$ROOT/testmodels/opt-kjv-mini}
log() { echo "default-model: $*" >&2; }

# The corpus and the train/validation split (with TOKENIZER set,
# experiment.sh makes no GPT-2-derived tokenizer).
OUT=$OUT TOKENIZER=$OUT/bpe bench/experiment.sh data
SLOPE=$OUT/bin/slope
CONVERT=$OUT/bin/slope-convert
go run ./bench/cmd/bpetrain -in "$OUT/train.txt" -vocab "$VOCAB" -out "$OUT/bpe"

# The configuration and the dense initialisation (experiment.sh's models
# stage at this size, with this tokenizer: $OUT/init-dense.slope).
OUT=$OUT VOCAB=$VOCAB SEED=$SEED HIDDEN=128 FFN=512 LAYERS=4 HEADS=4 TOKENIZER=$OUT/bpe bench/experiment.sh models

log "training: $STEPS steps of $BATCH x $SEQ tokens, $THREADS threads"
"$SLOPE" train "$OUT/init-dense.slope" --data "$OUT/train.txt" --val "$OUT/val.txt" --steps "$STEPS" \
	--batch "$BATCH" --seq "$SEQ" --lr "$LR" --warmup "$WARMUP" --threads "$THREADS" --seed "$SEED" \
	--eval-every 500 --print-every 100 --out "$OUT/trained.slope" --log "$OUT/train.jsonl"
"$SLOPE" score "$OUT/trained.slope" --text "$OUT/val.txt" --window "$SEQ" | tee "$OUT/score.txt"

# The HF directory, bf16, with the tokenizer and a generation config.
"$SLOPE" export "$OUT/trained.slope" --to hf --dtype bf16 --out "$OUT/hf" --force >/dev/null
rm -rf "$DEST"
mkdir -p "$DEST"
cp "$OUT/hf/config.json" "$OUT/hf/model.safetensors" "$OUT/hf/vocab.json" "$OUT/hf/merges.txt" "$DEST/"
cat >"$DEST/generation_config.json" <<JSON
{"bos_token_id": 2, "eos_token_id": 2, "pad_token_id": 1}
JSON
log "wrote $DEST ($(du -sh "$DEST" | cut -f1))"
