package tokenizer

import (
	"bytes"
	"strings"
	"testing"
)

// TestTrainBPE: the learnt files load, encode and decode the text back,
// merge the most frequent pairs first (frequent words become one token),
// and come out the same on a second run.
func TestTrainBPE(t *testing.T) {
	text := strings.Repeat("And God said, Let there be light: and there was light. ", 40) +
		"In the beginning God created the heaven and the earth. ünïcödé \n\t  spaces"
	specials := []string{"<s>", "<pad>", "</s>", "<unk>"}
	v, m, err := TrainBPE(text, 290, specials)
	if err != nil {
		t.Fatal(err)
	}
	tk, err := LoadGPT2(v, m)
	if err != nil {
		t.Fatal(err)
	}
	if tk.VocabSize() != 290 {
		t.Errorf("vocabulary %d, want 290", tk.VocabSize())
	}
	if id, ok := tk.TokenID("</s>"); !ok || id != 2 {
		t.Errorf("</s> is %d (%v), want 2", id, ok)
	}
	ids := tk.Encode(text)
	back, err := tk.Decode(ids)
	if err != nil || back != text {
		t.Fatalf("decode(encode(text)) = %q, %v", back, err)
	}
	if len(ids) >= len(text)/3 {
		t.Errorf("%d tokens for %d bytes: the merges did not compress", len(ids), len(text))
	}
	for _, w := range []string{" light", " there", " God"} {
		if got := tk.Encode(w); len(got) != 1 {
			t.Errorf("%q: %d tokens, want 1 (a frequent word)", w, len(got))
		}
	}
	v2, m2, err := TrainBPE(text, 290, specials)
	if err != nil || !bytes.Equal(v, v2) || !bytes.Equal(m, m2) {
		t.Error("a second run learnt different files")
	}
	// "abcabc": ab and bc occur twice each, and the tie goes to "a b" (it
	// sorts first); then "ab c" twice; then no pair occurs twice.
	_, m3, err := TrainBPE("abcabc", 1000, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := string(m3); got != "#version: 0.2\na b\nab c\n" {
		t.Errorf("abcabc: merges %q", got)
	}
	if _, _, err := TrainBPE("x", 10, specials); err == nil {
		t.Error("a vocabulary below 260 was accepted")
	}
}
