package testmodels

import (
	"encoding/json"
	"io/fs"
	"testing"

	"github.com/slopeml/slope/tokenizer"
)

func TestLoadReference(t *testing.T) {
	r, err := LoadReference()
	if err != nil {
		t.Fatal(err)
	}
	if got := []int{len(r.Logits), len(r.Logits[0]), len(r.Logits[0][0])}; got[0] != 2 || got[1] != 12 || got[2] != 512 {
		t.Fatalf("logits shape %v, want [2 12 512]", got)
	}
	if len(r.LogitsPruned24Magnitude) != 2 || len(r.LogitsPadded) != 2 {
		t.Fatalf("pruned/padded logits have %d/%d rows", len(r.LogitsPruned24Magnitude), len(r.LogitsPadded))
	}
	if r.InputIDs[0][0] != 2 {
		t.Errorf("input_ids[0][0] = %d, want 2 (BOS)", r.InputIDs[0][0])
	}
	if r.AttentionMask[1][0] != 0 || r.AttentionMask[1][11] != 1 {
		t.Errorf("attention_mask row 1 = %v, want left padding", r.AttentionMask[1])
	}
	if r.Config.HiddenSize != 64 || r.Config.NumHiddenLayers != 2 {
		t.Errorf("config %+v", r.Config)
	}
}

// TestEmbedded: both models carry their files, the default model's
// tokenizer loads and covers its vocabulary, and the fixture's reference
// data stays out of binaries.
func TestEmbedded(t *testing.T) {
	defaultFS, _ := Embedded(DefaultName)
	for _, c := range []struct {
		fsys  fs.FS
		files []string
	}{
		{TinyFS(), []string{"config.json", "model.safetensors", "generation_config.json"}},
		{defaultFS, []string{"config.json", "model.safetensors", "generation_config.json", "vocab.json", "merges.txt"}},
	} {
		for _, name := range c.files {
			if b, err := fs.ReadFile(c.fsys, name); err != nil || len(b) == 0 {
				t.Errorf("embedded %s: %d bytes, %v", name, len(b), err)
			}
		}
	}
	tok, err := tokenizer.LoadFS(defaultFS, DefaultName)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := fs.ReadFile(defaultFS, "config.json")
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		VocabSize int `json:"vocab_size"`
	}
	if err := json.Unmarshal(cfg, &c); err != nil {
		t.Fatal(err)
	}
	if tok.VocabSize() != c.VocabSize {
		t.Errorf("the default model's tokenizer has %d tokens, its config %d", tok.VocabSize(), c.VocabSize)
	}
	if _, err := fs.Stat(TinyFS(), "reference.json"); err == nil {
		t.Error("reference.json must not be embedded")
	}
	if _, ok := Embedded("nope"); ok {
		t.Error("Embedded accepted an unknown name")
	}
}

func TestCheckRejectsRagged(t *testing.T) {
	r, err := LoadReference()
	if err != nil {
		t.Fatal(err)
	}
	r.Logits[1] = r.Logits[1][:3]
	if err := r.check(); err == nil {
		t.Fatal("ragged logits accepted")
	}
	r2 := &Reference{}
	if err := r2.check(); err == nil {
		t.Fatal("empty reference accepted")
	}
}
