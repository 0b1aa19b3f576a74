package tokenizer

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
)

// writeFiles writes files (name -> content) into a new directory.
func writeFiles(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// GPT-2's files with an added_tokens.json, as transformers saves a slow
// tokenizer to which tokens were added: its entries are matched in text,
// special when special_tokens_map.json names them, and decode.
func TestLoadDirAddedTokensJSON(t *testing.T) {
	vocab, merges := gpt2Files(t)
	ref := gpt2(t)
	files := map[string]string{
		"vocab.json":         string(vocab),
		"merges.txt":         string(merges),
		AddedTokensFile:      `{"<|pad|>": 50257, "<|x|>": 50258}`,
		SpecialTokensMapFile: `{"eos_token": "<|endoftext|>", "pad_token": "<|pad|>"}`,
	}
	dir := writeFiles(t, files)
	read, err := ReadFS(os.DirFS(dir), dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := slices.Sorted(maps.Keys(read)); !slices.Equal(got, slices.Sorted(maps.Keys(files))) {
		t.Errorf("ReadFS read %q", got)
	}
	tok, err := LoadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	cat := func(parts ...[]int) []int { return slices.Concat(parts...) }
	for _, c := range []struct {
		text string
		want []int
	}{
		{"a<|pad|>", []int{64, 50257}}, // Hugging Face's ids
		{"a<|x|>b", []int{64, 50258, 65}},
		{"<|endoftext|> hi<|pad|>", cat([]int{50256}, ref.Encode(" hi"), []int{50257})},
	} {
		if got := tok.Encode(c.text); !slices.Equal(got, c.want) {
			t.Errorf("Encode(%q) = %v, want %v", c.text, got, c.want)
		}
	}
	if got := tok.EncodeOrdinary("<|pad|>"); !slices.Equal(got, ref.Encode("<|pad|>")) {
		t.Errorf("EncodeOrdinary: %v", got)
	}
	if s, err := tok.Decode([]int{64, 50257, 50258}); err != nil || s != "a<|pad|><|x|>" {
		t.Errorf("Decode: %q, %v", s, err)
	}
	if !tok.IsSpecial(50257) || !tok.IsSpecial(50256) || tok.IsSpecial(50258) {
		t.Error("IsSpecial: want <|pad|> and <|endoftext|> special, <|x|> not")
	}
	if tok.VocabSize() != 50259 {
		t.Errorf("VocabSize %d", tok.VocabSize())
	}
	if w := tok.Warnings(); len(w) != 0 {
		t.Errorf("warnings: %q", w)
	}

	// Without the map, the added tokens are matched but none is special
	// (<|endoftext|> is then text, as DefaultSpecialTokens are OPT's).
	delete(read, SpecialTokensMapFile)
	tok, err = LoadFiles(read, "")
	if err != nil {
		t.Fatal(err)
	}
	if got := tok.Encode("<|endoftext|>a<|pad|>"); !slices.Equal(got, cat(ref.Encode("<|endoftext|>a"), []int{50257})) {
		t.Errorf("without the map: %v", got)
	}
	if tok.IsSpecial(50257) {
		t.Error("without the map, <|pad|> is special")
	}
}

func TestAddedTokensJSONErrors(t *testing.T) {
	vocab := string(mustJSON(t, smallVocab("ab")))
	name := filepath.Join("m", AddedTokensFile)
	for _, c := range []struct {
		name, added string
		want        []string
	}{
		{"bad JSON", `{"<p>": 300,`, []string{name, "line 1"}},
		{"negative id", `{"<p>": -1}`, []string{name, `entry "<p>"`, "-1"}},
		{"id of a vocabulary token", `{"<p>": 97}`, []string{name, `token "<p>"`, `already the vocabulary's token "a"`}},
		{"vocabulary token, other id", `{"ab": 300}`, []string{name, `token "ab"`, "id 256"}},
		{"id far past the vocabulary", `{"<p>": 100000}`, []string{name, `token "<p>"`, "100000"}},
	} {
		_, err := LoadFiles(map[string][]byte{"vocab.json": []byte(vocab), "merges.txt": {}, AddedTokensFile: []byte(c.added)}, "m")
		wantErr(t, c.name, err, c.want...)
	}
}

// A token that special_tokens_map.json names but the files lack is left
// out (ordinary text), with a warning naming the file, the key and the
// token; the tokens it names that the files have are special.
func TestSpecialTokensMapMissingToken(t *testing.T) {
	files := map[string][]byte{
		"vocab.json":         mustJSON(t, smallVocab("<s>")),
		"merges.txt":         {},
		AddedTokensFile:      []byte(`{"<x>": 257}`),
		SpecialTokensMapFile: []byte(`{"bos_token": "<s>", "pad_token": {"content": "<pad>"}, "additional_special_tokens": ["<x>", "<y>"]}`),
	}
	tok, err := LoadFiles(files, "m")
	if err != nil {
		t.Fatal(err)
	}
	w := tok.Warnings()
	if len(w) != 2 {
		t.Fatalf("warnings %q, want two", w)
	}
	for i, want := range [][]string{{"additional_special_tokens", `"<y>"`}, {"pad_token", `"<pad>"`}} {
		for _, p := range append(want, filepath.Join("m", SpecialTokensMapFile)) {
			if !strings.Contains(w[i], p) {
				t.Errorf("warning %q does not mention %q", w[i], p)
			}
		}
	}
	if got := tok.Encode("<s><x><pad>"); !slices.Equal(got, []int{256, 257, '<', 'p', 'a', 'd', '>'}) {
		t.Errorf("Encode: %v", got)
	}
	if !tok.IsSpecial(256) || !tok.IsSpecial(257) {
		t.Error("IsSpecial: <s> and <x> are special")
	}
}

// single_word added tokens match where the text before and after them
// does not end or start with a word character: HF's \w (Rust regex:
// Alphabetic, Mark, Decimal_Number, Connector_Punctuation, Join_Control).
func TestSingleWordBoundary(t *testing.T) {
	w := addedTok(300, "<w>", false)
	w["single_word"] = true
	tok, err := LoadTokenizerJSON(tokenizerJSON(t, smallVocab(), []string{}, []map[string]any{w}, nil))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		text  string
		match bool
	}{
		{"<w>", true},
		{" <w> ", true},
		{"²<w>", true},  // No
		{"<w>½", true},  // No
		{"-<w>", true},  // Pd
		{"x<w>", false}, // Ll
		{"<w>x", false},
		{"_<w>", false},      // Pc
		{"‿<w>", false},      // Pc
		{"ः<w>", false},      // Mc
		{"\u20dd<w>", false}, // Me
		{"\u200d<w>", false}, // Join_Control
		{"Ⓐ<w>", false},      // So, Other_Alphabetic
		{"Ⅻ<w>", false},      // Nl
		{"٣<w>", false},      // Nd
	} {
		got := tok.Encode(c.text)
		if slices.Contains(got, 300) != c.match {
			t.Errorf("Encode(%q) = %v, want the token %v", c.text, got, c.match)
		}
	}
}

// Added tokens that are not normalized are split out first, the
// normalized ones only in the text left between them, as HF's fast
// tokenizers do; normalized defaults to !special.
func TestAddedTokensNormalizedSecond(t *testing.T) {
	for _, explicit := range []bool{true, false} {
		ab, bc := addedTok(300, "ab", false), addedTok(301, "bc", true)
		if !explicit {
			delete(ab, "normalized")
			delete(bc, "normalized")
		}
		tok, err := LoadTokenizerJSON(tokenizerJSON(t, smallVocab(), []string{}, []map[string]any{ab, bc}, nil))
		if err != nil {
			t.Fatal(err)
		}
		for text, want := range map[string][]int{
			"abc":   {'a', 301},
			"ab":    {300},
			"ababc": {300, 'a', 301},
			"bcab":  {301, 300},
		} {
			if got := tok.Encode(text); !slices.Equal(got, want) {
				t.Errorf("normalized given %v: Encode(%q) = %v, want %v", explicit, text, got, want)
			}
		}
	}
	// Both normalized: one pass, leftmost first.
	tok, err := LoadTokenizerJSON(tokenizerJSON(t, smallVocab(), []string{}, []map[string]any{
		addedTok(300, "ab", false), addedTok(301, "bc", false)}, nil))
	if err != nil {
		t.Fatal(err)
	}
	if got := tok.Encode("abc"); !slices.Equal(got, []int{300, 'c'}) {
		t.Errorf("both normalized: Encode(\"abc\") = %v", got)
	}
}

// allocated returns the bytes f allocates.
func allocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// Ids index dense tables: an id far past the number of tokens is refused
// (naming the file and the token) before anything is allocated for it.
func TestSparseIDsRefused(t *testing.T) {
	const big = maxTokenID
	v := smallVocab()
	limit := idLimit(len(v) + 1) // 257 tokens with "zz": ids up to 1538
	for _, c := range []struct {
		name string
		id   int
		ok   bool
	}{{"at the limit", limit, true}, {"past the limit", limit + 1, false}, {"largest id", big, false}} {
		v["zz"] = c.id
		vj := mustJSON(t, v)
		var err error
		n := allocated(func() { _, err = LoadGPT2(vj, nil) })
		if c.ok {
			if err != nil {
				t.Errorf("vocab.json, %s: %v", c.name, err)
			}
		} else {
			wantErr(t, "vocab.json, "+c.name, err, "vocab.json", `"zz"`, fmt.Sprint(c.id))
		}
		if n > 4<<20 {
			t.Errorf("vocab.json of %d bytes, %s: %d MB allocated", len(vj), c.name, n>>20)
		}
	}
	delete(v, "zz")
	for _, c := range []struct {
		name string
		id   int
		ok   bool
	}{{"at the limit", idLimit(len(v) + 1), true}, {"past the limit", idLimit(len(v)+1) + 1, false}, {"largest id", big, false}} {
		tj := tokenizerJSON(t, v, []string{}, []map[string]any{addedTok(c.id, "<x>", true)}, nil)
		var err error
		var tok *BPE
		n := allocated(func() { tok, err = LoadTokenizerJSON(tj) })
		if c.ok {
			if err != nil {
				t.Errorf("tokenizer.json, %s: %v", c.name, err)
			} else if got := tok.Encode("a<x>"); !slices.Equal(got, []int{'a', c.id}) || tok.VocabSize() != c.id+1 {
				t.Errorf("tokenizer.json, %s: Encode %v, VocabSize %d", c.name, got, tok.VocabSize())
			}
		} else {
			wantErr(t, "tokenizer.json, "+c.name, err, "tokenizer.json", "added_tokens[0]", `"<x>"`, fmt.Sprint(c.id))
		}
		if n > 4<<20 {
			t.Errorf("tokenizer.json of %d bytes, %s: %d MB allocated", len(tj), c.name, n>>20)
		}
	}
}
