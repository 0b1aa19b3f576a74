package main

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/slopeml/slope/convert"
	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/format/slopepb"
	"github.com/slopeml/slope/ops/cpu"
	slopert "github.com/slopeml/slope/runtime"
	"github.com/slopeml/slope/testmodels"
	"github.com/slopeml/slope/train"
)

func convertTiny(t *testing.T, nm string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "tiny.slope")
	if _, err := convert.DenseToSlope(t.Context(), convert.Options{In: convert.TinyLabel, Out: out, NM: nm}); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestForwardJSON(t *testing.T) {
	ref, err := testmodels.LoadReference()
	if err != nil {
		t.Fatal(err)
	}
	model := convertTiny(t, "2:4")
	ids, _ := json.Marshal(ref.InputIDs)
	code, stdout, stderr := runSlope("forward", model, "--ids", string(ids))
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var got struct{ Logits [][][]float32 }
	if err := json.Unmarshal([]byte(stdout), &got); err != nil {
		t.Fatal(err)
	}
	d := 0.0
	for b := range ref.LogitsPruned24Magnitude {
		for s := range ref.LogitsPruned24Magnitude[b] {
			for v, w := range ref.LogitsPruned24Magnitude[b][s] {
				e := math.Abs(float64(got.Logits[b][s][v] - w))
				if math.IsNaN(e) {
					e = math.Inf(1)
				}
				d = math.Max(d, e)
			}
		}
	}
	if !(d <= 1e-4) {
		t.Fatalf("forward logits differ from transformers by %g", d)
	}
	// Errors: ragged rows, bad JSON, no --ids, a mask of another shape;
	// an id outside the vocabulary is named by its place.
	for _, c := range [][]string{{"--ids", "[[1,2],[3]]"}, {"--ids", "nope"}, {"--ids", "[]"}, {}, {"--ids", "[2,3]", "--mask", "[1]"}, {"--ids", "[2,3]", "--mask", "[[1,1],[1,1]]"}} {
		want := "--ids"
		if len(c) > 2 {
			want = "--mask"
		}
		if code, _, stderr := runSlope(append([]string{"forward", model}, c...)...); code != exitUsage || !strings.Contains(stderr, want) {
			t.Errorf("%v: exit %d, %s", c, code, stderr)
		}
	}
	// Checked against the model: ids outside the vocabulary, a mask
	// value other than 0 and 1, more tokens than the positions.
	long := "[" + strings.Repeat("5,", 2048) + "5]"
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--ids", "[[2,3,4],[2,5,99999]]"}, "--ids: sequence 1, token 2: id 99999 outside the model's vocabulary of"},
		{[]string{"--ids", "[[2,3],[4,5]]", "--mask", "[[1,2],[1,1]]"}, "--mask: sequence 0, token 1 is 2, want 0 or 1"},
		{[]string{"--ids", long}, "--ids: sequences of 2049 tokens, more than the model's"},
	} {
		if code, _, stderr := runSlope(append([]string{"forward", model}, c.args...)...); code != exitUsage || !strings.Contains(stderr, c.want) {
			t.Errorf("%.60v: exit %d, %s", c.args, code, stderr)
		}
	}
}

func TestBench(t *testing.T) {
	model := convertTiny(t, "2:4")
	code, stdout, stderr := runSlope("bench", model, "--prompt-len", "8", "--gen-len", "4")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, want := range []string{"prefill  1 x 8 tokens", "decode   1 x 4 tokens", "peak RSS", "cpu      " + cpu.Kernels() + " kernels"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("bench output lacks %q:\n%s", want, stdout)
		}
	}
	// A failed bench leaves no profile; a run writes one.
	prof := filepath.Join(t.TempDir(), "cpu.prof")
	if code, _, _ := runSlope("bench", filepath.Join(t.TempDir(), "none.slope"), "--cpuprofile", prof); code == 0 {
		t.Error("bench of a missing model succeeded")
	}
	if _, err := os.Stat(prof); err == nil {
		t.Error("a failed bench left its --cpuprofile file")
	}
	if code, _, stderr := runSlope("bench", model, "--prompt-len", "4", "--gen-len", "2", "--cpuprofile", prof); code != 0 {
		t.Errorf("bench --cpuprofile: exit %d, %q", code, stderr)
	} else if st, err := os.Stat(prof); err != nil || st.Size() == 0 {
		t.Errorf("bench --cpuprofile wrote no profile: %v", err)
	}
	if code, _, _ := runSlope("bench", model, "--prompt-len", "100"); code == 0 {
		t.Error("a prompt longer than the model's positions succeeded")
	}
	if code, _, stderr := runSlope("bench", model, "--gpu-profile"); code != exitUsage || !strings.Contains(stderr, "--gpu-profile") {
		t.Errorf("--gpu-profile on the CPU: exit %d, %s", code, stderr)
	}
}

func TestRunAndScoreIDs(t *testing.T) {
	ref, err := testmodels.LoadReference()
	if err != nil {
		t.Fatal(err)
	}
	model := convertTiny(t, "dense")
	prompt, _ := json.Marshal(ref.GreedyPrompt[0])
	want := ref.GreedyOutput[0][len(ref.GreedyPrompt[0]):]
	code, stdout, stderr := runSlope("run", model, "--ids", string(prompt), "--max-tokens", "8")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var got []int64
	for _, f := range strings.Fields(stdout) {
		var v int64
		if err := json.Unmarshal([]byte(f), &v); err != nil {
			t.Fatalf("output %q: %v", stdout, err)
		}
		got = append(got, v)
	}
	if len(got) != len(want) {
		t.Fatalf("generated %v, transformers %v", got, want)
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("generated %v, transformers %v", got, want)
		}
	}
	ids, _ := json.Marshal(ref.InputIDs[0])
	if code, stdout, stderr := runSlope("score", model, "--ids", string(ids)); code != 0 || !strings.Contains(stdout, "perplexity") {
		t.Fatalf("score: exit %d, %s %s", code, stdout, stderr)
	}
	if code, _, stderr := runSlope("run", model, "--prompt", "hello"); code != exitUsage || !strings.Contains(stderr, "tokenizer") {
		t.Fatalf("--prompt without a tokenizer: exit %d, %s", code, stderr)
	}
}

// gpt2TokenizerHFDir writes a one-layer HF directory (safetensors) with
// GPT-2's vocabulary size and tokenizer files, and returns it.
func gpt2TokenizerHFDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	cfg := testmodels.ConfigFamilies()["pre-ln-tied"]
	cfg.Vocab, cfg.MaxPos = 50272, 64
	if err := testmodels.WriteHFDirGen(dir, cfg, 1, "F32", testmodels.Layout{Format: "safetensors"}); err != nil {
		t.Fatal(err)
	}
	if err := testmodels.WriteGPT2Tokenizer(dir); err != nil {
		t.Fatal(err)
	}
	return dir
}

// A model with GPT-2's tokenizer beside its weights: the converter stores
// the tokenizer, and run / score take text.
func TestRunAndScoreText(t *testing.T) {
	dir := gpt2TokenizerHFDir(t)
	model := filepath.Join(t.TempDir(), "gpt2tok.slope")
	if _, err := convert.DenseToSlope(t.Context(), convert.Options{In: dir, Out: model}); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := runSlope("run", model, "--prompt", "Hello, world", "--max-tokens", "5")
	if code != 0 || strings.TrimSpace(stdout) == "" {
		t.Fatalf("run: exit %d, stdout %q, stderr %s", code, stdout, stderr)
	}
	text := filepath.Join(t.TempDir(), "text.txt")
	if err := os.WriteFile(text, []byte("The quick brown fox jumps over the lazy dog."), 0o644); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr = runSlope("score", model, "--text", text)
	if code != 0 || !strings.Contains(stdout, "tokens 10") {
		// BOS + 10 GPT-2 tokens: 10 scored.
		t.Fatalf("score: exit %d, %q %s", code, stdout, stderr)
	}
}

// Sampling flags out of range are usage errors; a prompt plus new tokens
// that fit the positions with one to spare (the last token is never fed
// back) runs, one more does not.
func TestRunSamplingFlagsAndLength(t *testing.T) {
	model := convertTiny(t, "2:4")
	for _, c := range []struct {
		args []string
		flag string
	}{
		{[]string{"--temperature", "NaN"}, "--temperature"},
		{[]string{"--temperature", "-1"}, "--temperature"},
		{[]string{"--temperature", "+Inf"}, "--temperature"},
		{[]string{"--top-k", "-5"}, "--top-k"},
		{[]string{"--top-p", "1.5"}, "--top-p"},
		{[]string{"--top-p", "NaN"}, "--top-p"},
		{[]string{"--repetition-penalty", "0"}, "--repetition-penalty"},
		{[]string{"--repetition-penalty", "-2"}, "--repetition-penalty"},
		{[]string{"--repetition-penalty", "Inf"}, "--repetition-penalty"},
		{[]string{"--top-k", "20"}, "--temperature"}, // sampling options without sampling
		{[]string{"--top-p", "0.9"}, "--temperature"},
	} {
		code, _, stderr := runSlope(append([]string{"run", model, "--ids", "[2, 100]"}, c.args...)...)
		if code != exitUsage || !strings.Contains(stderr, c.flag) {
			t.Errorf("%v: exit %d, %q", c.args, code, stderr)
		}
	}
	if code, stdout, stderr := runSlope("run", model, "--ids", "[2, 100]", "--max-tokens", "5", "--repetition-penalty", "1.3"); code != 0 || len(strings.Fields(stdout)) != 5 {
		t.Errorf("--repetition-penalty 1.3: exit %d, %q %q", code, stdout, stderr)
	}
	code, stdout, stderr := runSlope("run", model, "--ids", "[2, 100]", "--max-tokens", "63")
	if code != 0 || len(strings.Fields(stdout)) != 63 {
		t.Errorf("2 + 63 tokens on 64 positions: exit %d, %d tokens, %q", code, len(strings.Fields(stdout)), stderr)
	}
	if code, _, stderr := runSlope("run", model, "--ids", "[2, 100]", "--max-tokens", "64"); code != exitUsage || !strings.Contains(stderr, "--max-tokens 64: the prompt's 2 tokens and 64 new ones need 65 positions") {
		t.Errorf("2 + 64 tokens on 64 positions: exit %d, %q", code, stderr)
	}
	// The positions a run would need, counted right, and nothing on stdout.
	if code, stdout, stderr := runSlope("run", model, "--ids", "[2, 100]", "--max-tokens", "100"); code != exitUsage || !strings.Contains(stderr, "need 101 positions") || stdout != "" {
		t.Errorf("2 + 100 tokens on 64 positions: exit %d, %q, stdout %q", code, stderr, stdout)
	}
	if code, _, stderr := runSlope("run", model, "--ids", "[2, 100]", "--max-tokens", "9223372036854775807"); code != exitUsage || !strings.Contains(stderr, "need 9223372036854775808 positions") {
		t.Errorf("a huge --max-tokens: exit %d, %q", code, stderr)
	}
	// The prompt flags are named as each command has them.
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"run", model, "--prompt", ""}, "--prompt is empty"},
		{[]string{"run", model}, "give exactly one of --prompt and --ids"},
		{[]string{"score", model}, "give exactly one of --text and --ids"},
		{[]string{"score", model, "--text", ""}, "--text: give the name of a text file"},
		{[]string{"score", model, "--ids", "[2, 100, 7]", "--window", "-5"}, "--window"},
		{[]string{"score", model, "--ids", "[2, 100, 7]", "--stride", "-7"}, "--stride"},
		{[]string{"score", model, "--ids", "[2, 100, 7]", "--stride", "300"}, "--stride 300: want fewer tokens than the window (64)"},
		{[]string{"score", model, "--ids", "[2, 100, 7]", "--window", "1"}, "--window 1: want at least 2"},
		{[]string{"score", model, "--ids", "[2, 100, 7]", "--window", "100000"}, "--window 100000: the model has 64 positions"},
		{[]string{"run", model, "--ids", "[2, 100]", "--sparse-forms", "bogus"}, "--sparse-forms"},
		{[]string{"forward", model, "--ids", "[2, 100]", "--device", "tpu"}, "--device"},
	} {
		if code, _, stderr := runSlope(c.args...); code != exitUsage || !strings.Contains(stderr, c.want) {
			t.Errorf("%v: exit %d, %q, want %q", c.args[2:], code, stderr, c.want)
		}
	}
}

// A source whose special_tokens_map.json names GPT-2's <|endoftext|>: the
// container carries the map, and the runtime's tokenizer matches the
// token in text as Hugging Face does (one id); without the map it is text.
func TestTokenizerSpecialTokensMap(t *testing.T) {
	for _, withMap := range []bool{false, true} {
		dir := gpt2TokenizerHFDir(t)
		if withMap {
			m := `{"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}`
			if err := os.WriteFile(filepath.Join(dir, "special_tokens_map.json"), []byte(m), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		model := filepath.Join(t.TempDir(), "m.slope")
		if _, err := convert.DenseToSlope(t.Context(), convert.Options{In: dir, Out: model}); err != nil {
			t.Fatal(err)
		}
		m, err := slopert.Open(model, nil)
		if err != nil {
			t.Fatal(err)
		}
		tok, err := m.Tokenizer()
		m.Close()
		if err != nil {
			t.Fatal(err)
		}
		got := tok.Encode("<|endoftext|>")
		if single := len(got) == 1 && got[0] == 50256; single != withMap {
			t.Errorf("map %v: <|endoftext|> encodes as %v", withMap, got)
		}
		// Training on text must see the ids inference sees.
		tr, err := train.New(model, train.Options{})
		if err != nil {
			t.Fatal(err)
		}
		ttok, err := tr.Tokenizer()
		tr.Close()
		if err != nil {
			t.Fatal(err)
		}
		if tg := ttok.Encode("a<|endoftext|>"); !slices.Equal(tg, tok.Encode("a<|endoftext|>")) {
			t.Errorf("map %v: the trainer encodes a<|endoftext|> as %v, the runtime as %v", withMap, tg, tok.Encode("a<|endoftext|>"))
		}
	}
}

func TestFiniteLogits(t *testing.T) {
	out := [][][]float32{{{1, 2}, {3, 4}}, {{5, 6}, {7, 8}}}
	if err := finiteLogits(out); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []float32{float32(math.Inf(-1)), float32(math.NaN())} {
		out[1][0][1] = bad
		if err := finiteLogits(out); err == nil || !strings.Contains(err.Error(), "sequence 1, token 0: logit 1") {
			t.Errorf("%v: %v", bad, err)
		}
	}
}

// A container whose tokenizer does not load (its vocab.json and
// merges.txt swapped) still runs on token ids: score needs no tokenizer,
// and run prints the ids, saying why.
func TestIDsWithDamagedTokenizer(t *testing.T) {
	good := filepath.Join(t.TempDir(), "gpt2tok.slope")
	if _, err := convert.DenseToSlope(t.Context(), convert.Options{In: gpt2TokenizerHFDir(t), Out: good}); err != nil {
		t.Fatal(err)
	}
	model := filepath.Join(t.TempDir(), "swapped.slope")
	if err := format.Rewrite(good, model, func(m *slopepb.Manifest) {
		f := m.Tokenizer.Files
		f["vocab.json"], f["merges.txt"] = f["merges.txt"], f["vocab.json"]
	}); err != nil {
		t.Fatal(err)
	}
	if code, stdout, stderr := runSlope("score", model, "--ids", "[2, 100, 7]"); code != 0 || !strings.Contains(stdout, "tokens 2") {
		t.Errorf("score --ids: exit %d, %q %q", code, stdout, stderr)
	}
	code, stdout, stderr := runSlope("run", model, "--ids", "[2, 100]", "--max-tokens", "3")
	if code != 0 || len(strings.Fields(stdout)) != 3 || !strings.Contains(stderr, "warning") || !strings.Contains(stderr, "printed as ids") {
		t.Errorf("run --ids: exit %d, %q %q", code, stdout, stderr)
	}
	if code, _, stderr := runSlope("run", model, "--prompt", "hello"); code != 1 || !strings.Contains(stderr, "vocab.json") {
		t.Errorf("run --prompt: exit %d, %q", code, stderr)
	}
}
