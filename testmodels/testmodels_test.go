package testmodels

import (
	"io/fs"
	"os"
	"path/filepath"
	"testing"
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

// TestEmbedded: the embedded files are the source tree's, the default
// model carries its tokenizer, and the fixture's reference data stays out
// of binaries.
func TestEmbedded(t *testing.T) {
	defaultFS, _ := Embedded(DefaultName)
	for _, c := range []struct {
		fsys  fs.FS
		dir   string
		files []string
	}{
		{TinyFS(), Dir(), []string{"config.json", "model.safetensors", "generation_config.json"}},
		{defaultFS, DefaultDir(), []string{"config.json", "model.safetensors", "generation_config.json", "vocab.json", "merges.txt"}},
	} {
		for _, name := range c.files {
			emb, err := fs.ReadFile(c.fsys, name)
			if err != nil {
				t.Fatal(err)
			}
			disk, err := os.ReadFile(filepath.Join(c.dir, name))
			if err != nil {
				t.Fatal(err)
			}
			if string(emb) != string(disk) {
				t.Errorf("embedded %s differs from %s", name, c.dir)
			}
		}
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
