package tokenizer

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// smallVocab is a vocabulary whose 256 byte tokens have the byte's value as
// id, plus extra tokens with ids from 256 on.
func smallVocab(extra ...string) map[string]int {
	v := map[string]int{}
	for b := 0; b < 256; b++ {
		v[string(byteToRune[b])] = b
	}
	for i, e := range extra {
		v[e] = 256 + i
	}
	return v
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// tokenizerJSON builds a tokenizer.json; edit changes it before encoding.
func tokenizerJSON(t *testing.T, vocab any, merges any, added []map[string]any, edit func(map[string]any)) []byte {
	t.Helper()
	if added == nil {
		added = []map[string]any{}
	}
	f := map[string]any{
		"version":      "1.0",
		"truncation":   nil,
		"padding":      nil,
		"added_tokens": added,
		"normalizer":   nil,
		"pre_tokenizer": map[string]any{
			"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true,
		},
		"post_processor": map[string]any{"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
		"decoder":        map[string]any{"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
		"model": map[string]any{
			"type": "BPE", "dropout": nil, "unk_token": nil, "continuing_subword_prefix": "",
			"end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false,
			"vocab": vocab, "merges": merges,
		},
	}
	if edit != nil {
		edit(f)
	}
	return mustJSON(t, f)
}

func addedTok(id int, content string, special bool) map[string]any {
	return map[string]any{"id": id, "content": content, "single_word": false, "lstrip": false,
		"rstrip": false, "normalized": !special, "special": special}
}

// gpt2MergePairs returns GPT-2's merges as [left, right] pairs.
func gpt2MergePairs(t *testing.T) [][2]string {
	_, mergesTxt := gpt2Files(t)
	ms, err := parseMergesTxt(mergesTxt, "merges.txt")
	if err != nil {
		t.Fatal(err)
	}
	pairs := make([][2]string, len(ms))
	for i, m := range ms {
		pairs[i] = [2]string{m.a, m.b}
	}
	return pairs
}

// TestTokenizerJSONMatchesGPT2 builds tokenizer.json files from GPT-2's
// vocab.json and merges.txt, with merges in both formats, and checks that
// they encode as LoadGPT2 does.
func TestTokenizerJSONMatchesGPT2(t *testing.T) {
	ref := gpt2(t)
	vocab, _ := gpt2Files(t)
	pairs := gpt2MergePairs(t)
	strs := make([]string, len(pairs))
	for i, p := range pairs {
		strs[i] = p[0] + " " + p[1]
	}
	added := []map[string]any{addedTok(50256, "<|endoftext|>", true)}
	for name, merges := range map[string]any{"strings": strs, "pairs": pairs} {
		t.Run(name, func(t *testing.T) {
			tok, err := LoadTokenizerJSON(tokenizerJSON(t, json.RawMessage(vocab), merges, added, nil))
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range referenceTexts {
				if strings.Contains(s, "<|endoftext|>") {
					continue
				}
				if got, want := tok.Encode(s), ref.Encode(s); !slices.Equal(got, want) {
					t.Errorf("%q: %v, LoadGPT2 gives %v", s, got, want)
				}
			}
			got := tok.Encode("Hello<|endoftext|> world")
			want := append(append(ref.Encode("Hello"), 50256), ref.Encode(" world")...)
			if !slices.Equal(got, want) {
				t.Errorf("special token: %v, want %v", got, want)
			}
			if !tok.IsSpecial(50256) || tok.IsSpecial(15496) {
				t.Error("IsSpecial is wrong")
			}
			if ref.IsSpecial(50256) {
				t.Error("<|endoftext|> is special for LoadGPT2, which should only know OPT's")
			}
		})
	}
}

// TestOPTSpecialTokens: with an OPT-style vocab.json, "</s>" and "<pad>" in
// text are the special tokens, as for HF's OPT tokenizer, while "<s>" and
// "<unk>" are ordinary text.
func TestOPTSpecialTokens(t *testing.T) {
	ref := gpt2(t)
	vocabJSON, merges := gpt2Files(t)
	var vocab map[string]int
	if err := json.Unmarshal(vocabJSON, &vocab); err != nil {
		t.Fatal(err)
	}
	for i, s := range []string{"</s>", "<pad>", "<s>", "<unk>"} {
		vocab[s] = 50257 + i
	}
	tok, err := LoadGPT2(mustJSON(t, vocab), merges)
	if err != nil {
		t.Fatal(err)
	}
	if got := tok.SpecialTokens(); !slices.Equal(got, []string{"</s>", "<pad>"}) {
		t.Errorf("SpecialTokens: %q", got)
	}
	cat := func(parts ...[]int) []int { return slices.Concat(parts...) }
	for _, c := range []struct {
		text string
		want []int
	}{
		{"</s>", []int{50257}},
		{"Hello</s> world", cat(ref.Encode("Hello"), []int{50257}, ref.Encode(" world"))},
		{"a </s></s><pad>b", cat(ref.Encode("a "), []int{50257, 50257, 50258}, ref.Encode("b"))},
		{"<s> and <unk>", ref.Encode("<s> and <unk>")},
		{"</s", ref.Encode("</s")},
	} {
		if got := tok.Encode(c.text); !slices.Equal(got, c.want) {
			t.Errorf("Encode(%q) = %v, want %v", c.text, got, c.want)
		}
	}
	if got := tok.EncodeOrdinary("x</s>"); !slices.Equal(got, ref.Encode("x</s>")) {
		t.Errorf("EncodeOrdinary: %v", got)
	}
	if got := tok.EncodeWithBOS("</s>hi", 50257); !slices.Equal(got, cat([]int{50257, 50257}, ref.Encode("hi"))) {
		t.Errorf("EncodeWithBOS: %v", got)
	}
	if s, err := tok.Decode(tok.Encode("a</s>b<pad>")); err != nil || s != "a</s>b<pad>" {
		t.Errorf("Decode: %q, %v", s, err)
	}
	if !tok.IsSpecial(50257) || tok.IsSpecial(50259) {
		t.Error("IsSpecial is wrong")
	}
	if id, ok := tok.TokenID("</s>"); !ok || id != 50257 {
		t.Errorf("TokenID: %d, %v", id, ok)
	}
	if s, ok := tok.Token(15496); !ok || s != "Hello" {
		t.Errorf("Token: %q, %v", s, ok)
	}
	if err := tok.SetSpecialTokens("<s>", "<nope>"); err == nil || !strings.Contains(err.Error(), `"<nope>"`) {
		t.Errorf("SetSpecialTokens of an unknown token: %v", err)
	}
	if err := tok.SetSpecialTokens(); err != nil {
		t.Fatal(err)
	}
	if got := tok.Encode("</s>"); !slices.Equal(got, ref.Encode("</s>")) || tok.IsSpecial(50257) {
		t.Errorf("with no special tokens, Encode(\"</s>\") = %v", got)
	}
}

func TestAddedTokenFlags(t *testing.T) {
	flag := func(m map[string]any, k string) map[string]any { m[k] = true; return m }
	added := []map[string]any{
		flag(addedTok(300, "<X>", true), "lstrip"),
		flag(addedTok(301, "<Y>", false), "rstrip"),
		flag(addedTok(302, "Wo", false), "single_word"),
		addedTok(303, "<Z>", true),
		addedTok(304, "<Z><Z>", true),
		addedTok(256, "ab", false), // also in the vocabulary
	}
	tok, err := LoadTokenizerJSON(tokenizerJSON(t, smallVocab("ab"), []string{"a b"}, added, nil))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		text string
		want []int
	}{
		{"a  <X>b", []int{97, 300, 98}},
		{"a<Y> \n b", []int{97, 301, 98}},
		{"Wo aWo Wo", []int{302, 32, 97, 87, 111, 32, 302}},
		{"<Z><Z><Z>", []int{304, 303}},
		{"xab", []int{120, 256}},
	} {
		if got := tok.Encode(c.text); !slices.Equal(got, c.want) {
			t.Errorf("Encode(%q) = %v, want %v", c.text, got, c.want)
		}
	}
	if !tok.IsSpecial(300) || tok.IsSpecial(301) || !tok.IsSpecial(304) {
		t.Error("IsSpecial is wrong")
	}
	if s, err := tok.Decode([]int{304, 301, 97}); err != nil || s != "<Z><Z><Y>a" {
		t.Errorf("Decode: %q, %v", s, err)
	}
	if tok.VocabSize() != 305 {
		t.Errorf("VocabSize %d", tok.VocabSize())
	}
}

func TestTokenizerJSONOptions(t *testing.T) {
	vocab := smallVocab("aĠ", "ab", "abc")
	merges := []string{"a Ġ", "a b"}
	load := func(edit func(map[string]any)) *BPE {
		t.Helper()
		tok, err := LoadTokenizerJSON(tokenizerJSON(t, vocab, merges, []map[string]any{addedTok(400, "<Z>", true)}, edit))
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	check := func(name string, tok *BPE, text string, want ...int) {
		t.Helper()
		if got := tok.Encode(text); !slices.Equal(got, want) {
			t.Errorf("%s: Encode(%q) = %v, want %v", name, text, got, want)
		}
	}
	plain := load(nil)
	check("plain", plain, "a b", 97, 32, 98)
	check("plain", plain, "abc", 257, 99)
	prefix := load(func(f map[string]any) { f["pre_tokenizer"].(map[string]any)["add_prefix_space"] = true })
	check("add_prefix_space", prefix, "hi", 32, 104, 105)
	check("add_prefix_space", prefix, " hi", 32, 104, 105)
	check("add_prefix_space", prefix, "x<Z>y", 32, 120, 400, 32, 121)
	noRegex := load(func(f map[string]any) { f["pre_tokenizer"].(map[string]any)["use_regex"] = false })
	check("use_regex false", noRegex, "a b", 256, 98)
	ignore := load(func(f map[string]any) { f["model"].(map[string]any)["ignore_merges"] = true })
	check("ignore_merges", ignore, "abc", 258)
	check("ignore_merges", ignore, "abcd", 257, 99, 100)
	seq := load(func(f map[string]any) {
		f["pre_tokenizer"] = map[string]any{"type": "Sequence", "pretokenizers": []any{f["pre_tokenizer"]}}
		f["normalizer"] = map[string]any{"type": "Sequence", "normalizers": []any{}}
		delete(f["model"].(map[string]any), "type")
		f["decoder"] = nil
	})
	check("sequence", seq, "a b", 97, 32, 98)
}

func wantErr(t *testing.T, name string, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: no error", name)
		return
	}
	t.Logf("%s: %v", name, err)
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("%s: error %q does not mention %q", name, err, p)
		}
	}
}

func TestLoadGPT2Errors(t *testing.T) {
	v := smallVocab("ab", "abc")
	good := mustJSON(t, v)
	for _, c := range []struct {
		name          string
		vocab, merges string
		want          []string
	}{
		{"bad JSON", `{"a": 1,`, "", []string{"vocab.json", "line 1", "end of JSON"}},
		{"bad JSON line", "{\n\"a\": 1,\n\"b\" 2}", "", []string{"vocab.json", "line 3, column 5"}},
		{"not an object", `[1, 2]`, "", []string{"vocab.json", "want a JSON object", "'['"}},
		{"string id", `{"a": "1"}`, "", []string{"vocab.json", `entry "a"`, `the string "1"`}},
		{"negative id", `{"a": -1}`, "", []string{`entry "a"`, "-1"}},
		{"fractional id", `{"a": 1.5}`, "", []string{`entry "a"`, "1.5"}},
		{"object id", `{"a": {}}`, "", []string{`entry "a"`, "object"}},
		{"duplicate id", `{"a": 1, "b": 1}`, "", []string{"vocab.json", `"a" and "b" both have id 1`}},
		{"duplicate token", `{"a": 1, "a": 2}`, "", []string{`"a" is listed twice`}},
		{"trailing data", `{"a": 1} x`, "", []string{"vocab.json", "line 1"}},
		{"missing byte", `{"a": 1}`, "", []string{"vocab.json", "byte 0x00"}},
		{"one-token merge", string(good), "#version: 0.2\na b\nab\n", []string{"merges.txt line 3", `"ab"`}},
		{"three-token merge", string(good), "a b c", []string{"merges.txt line 1"}},
		{"double space", string(good), "a  b", []string{"merges.txt line 1"}},
		{"merge token not in vocab", string(good), "a b\nzz c\n", []string{"merges.txt line 2", `merge token "zz" is not in the vocabulary`}},
		{"merged token not in vocab", string(good), "a b\nb c\n", []string{"merges.txt line 2", `merged token "bc"`}},
		{"duplicate merge", string(good), "a b\nab c\n\na b\n", []string{"merges.txt line 4", "repeats merges.txt line 1"}},
	} {
		_, err := LoadGPT2([]byte(c.vocab), []byte(c.merges))
		wantErr(t, c.name, err, c.want...)
	}
	// Blank lines, CRLF and no #version line are fine.
	tok, err := LoadGPT2(good, []byte("a b\r\n\r\nab c\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := tok.Encode("abc"); !slices.Equal(got, []int{257}) {
		t.Errorf("Encode: %v", got)
	}
}

func TestLoadTokenizerJSONErrors(t *testing.T) {
	v := smallVocab("ab")
	m := []string{"a b"}
	build := func(edit func(map[string]any)) []byte {
		return tokenizerJSON(t, v, m, []map[string]any{addedTok(300, "<s>", true)}, edit)
	}
	model := func(k string, val any) func(map[string]any) {
		return func(f map[string]any) { f["model"].(map[string]any)[k] = val }
	}
	top := func(k string, val any) func(map[string]any) {
		return func(f map[string]any) { f[k] = val }
	}
	for _, c := range []struct {
		name string
		file []byte
		want []string
	}{
		{"bad JSON", []byte("{\n  \"model\": {,\n}"), []string{"tokenizer.json", "line 2"}},
		{"wrong type", []byte(`{"model": []}`), []string{"tokenizer.json", "line 1"}},
		{"no model", []byte(`{}`), []string{"no model"}},
		{"WordPiece", build(model("type", "WordPiece")), []string{`model.type is "WordPiece"`, "BPE"}},
		{"Unigram", build(func(f map[string]any) { f["model"] = map[string]any{"type": "Unigram", "vocab": []any{}} }), []string{`"Unigram"`}},
		{"no type, no merges", build(func(f map[string]any) { f["model"] = map[string]any{"vocab": v} }), []string{"no type"}},
		{"normalizer", build(top("normalizer", map[string]any{"type": "NFC"})), []string{`normalizer "NFC"`}},
		{"pre_tokenizer", build(top("pre_tokenizer", map[string]any{"type": "Whitespace"})), []string{`pre_tokenizer "Whitespace"`}},
		{"no pre_tokenizer", build(top("pre_tokenizer", nil)), []string{"no pre_tokenizer"}},
		{"decoder", build(top("decoder", map[string]any{"type": "WordPiece"})), []string{`decoder "WordPiece"`}},
		{"dropout", build(model("dropout", 0.1)), []string{"dropout"}},
		{"prefix", build(model("continuing_subword_prefix", "##")), []string{`"##"`}},
		{"suffix", build(model("end_of_word_suffix", "</w>")), []string{`"</w>"`}},
		{"no vocab", build(model("vocab", nil)), []string{"model.vocab is missing"}},
		{"vocab duplicate id", build(model("vocab", json.RawMessage(`{"a": 1, "b": 1}`))), []string{"model.vocab", "both have id 1"}},
		{"merges not array", build(model("merges", "a b")), []string{"model.merges is not an array"}},
		{"merge element", build(model("merges", []any{"a b", 5})), []string{"model.merges[1]"}},
		{"merge string", build(model("merges", []any{"a b", "ab"})), []string{"model.merges[1]", `"ab"`}},
		{"merge pair", build(model("merges", []any{[]string{"a", "b", "c"}})), []string{"model.merges[0]"}},
		{"merge not in vocab", build(model("merges", []any{"a b", "zz y"})), []string{"model.merges[1]", `merge token "zz"`}},
		{"merged not in vocab", build(model("merges", [][]string{{"b", "a"}})), []string{"model.merges[0]", `merged token "ba"`}},
		{"added id mismatch", build(top("added_tokens", []any{addedTok(5, "ab", false)})), []string{"added_tokens[0]", `"ab"`, "id 256"}},
		{"added id taken", build(top("added_tokens", []any{addedTok(256, "<s>", true)})), []string{"added_tokens[0]", "already", `"ab"`}},
		{"added duplicate id", build(top("added_tokens", []any{addedTok(300, "<s>", true), addedTok(300, "</s>", true)})), []string{"added_tokens[1]", "added_tokens[0]"}},
		{"added duplicate content", build(top("added_tokens", []any{addedTok(300, "<s>", true), addedTok(301, "<s>", true)})), []string{"added_tokens[1]"}},
		{"added no content", build(top("added_tokens", []any{map[string]any{"id": 300}})), []string{"added_tokens[0]", "no content"}},
		{"added no id", build(top("added_tokens", []any{map[string]any{"content": "<s>"}})), []string{"added_tokens[0]", "no id"}},
		{"added negative id", build(top("added_tokens", []any{addedTok(-3, "<s>", true)})), []string{"added_tokens[0]", "-3"}},
	} {
		_, err := LoadTokenizerJSON(c.file)
		wantErr(t, c.name, err, c.want...)
	}
}

func TestLoadDir(t *testing.T) {
	dir := t.TempDir()
	if _, err := LoadDir(dir); err == nil || !strings.Contains(err.Error(), "vocab.json") {
		t.Errorf("empty directory: %v", err)
	}
	vocab := mustJSON(t, smallVocab("ab"))
	write := func(name, data string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("vocab.json", string(vocab))
	write("merges.txt", "#version: 0.2\na b\nb\n")
	_, err := LoadDir(dir)
	wantErr(t, "bad merges", err, filepath.Join(dir, "merges.txt")+" line 3")
	write("merges.txt", "#version: 0.2\na b\n")
	tok, err := LoadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := tok.Encode("ab"); !slices.Equal(got, []int{256}) {
		t.Errorf("vocab.json+merges.txt: %v", got)
	}
	write("tokenizer.json", string(tokenizerJSON(t, smallVocab("ab"), []string{}, nil, nil)))
	if tok, err = LoadDir(dir); err != nil {
		t.Fatal(err)
	}
	if got := tok.Encode("ab"); !slices.Equal(got, []int{97, 98}) {
		t.Errorf("tokenizer.json should win: %v", got)
	}
	write("tokenizer.json", "{")
	_, err = LoadDir(dir)
	wantErr(t, "bad tokenizer.json", err, filepath.Join(dir, "tokenizer.json"))
}

// LoadDir makes special the tokens special_tokens_map.json names (strings,
// {"content": ...} objects, lists), those of the vocabulary only; without
// the file, DefaultSpecialTokens; a malformed file is an error naming it.
func TestLoadDirSpecialTokensMap(t *testing.T) {
	dir := t.TempDir()
	write := func(name, data string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("vocab.json", string(mustJSON(t, smallVocab("<|endoftext|>", "</s>", "<x>"))))
	write("merges.txt", "#version: 0.2\n")
	tok, err := LoadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := tok.Encode("</s><|endoftext|>"); len(got) < 3 || got[0] != 257 {
		t.Errorf("defaults: %v, want </s> special and <|endoftext|> as text", got)
	}
	write("special_tokens_map.json", `{"bos_token": "<|endoftext|>", "eos_token": {"content": "<|endoftext|>", "lstrip": false},
		"additional_special_tokens": ["<x>", "<missing>"]}`)
	if tok, err = LoadDir(dir); err != nil {
		t.Fatal(err)
	}
	if got := tok.Encode("<|endoftext|><x></s>"); !slices.Equal(got[:2], []int{256, 258}) || len(got) < 3 {
		t.Errorf("with the map: %v, want <|endoftext|> and <x> special, </s> as text", got)
	}
	write("special_tokens_map.json", `{"bos_token": 3}`)
	_, err = LoadDir(dir)
	wantErr(t, "bad special_tokens_map.json", err, "special_tokens_map.json", "bos_token")
}
