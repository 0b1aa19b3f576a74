// Package testmodels owns the small OPT checkpoints the project converts and
// tests against, and the Hugging Face reference fixtures that come with
// them (expected logits, greedy generations). The fixtures were made with
// Hugging Face transformers and PyTorch (see hf-opt-tiny-a/FIXTURE.md),
// never by this project's code, so they are an independent reference.
// The default model (opt-kjv-mini, what slope-convert converts without
// --in) is this project's own: a small OPT trained on the King James
// Bible by bench/default-model.sh, with its tokenizer.
//
// Only what the converter needs offline (config.json, model.safetensors,
// generation_config.json, the default model's tokenizer) is embedded in
// binaries; the larger reference files are read from the source tree by
// tests (Dir, LoadReference).
//
// It also generates checkpoints of any OPT config deterministically from a
// seed (GenWeights, ConfigFamilies, WriteHFDir: safetensors single or
// sharded, PyTorch .bin single or sharded via WriteTorchBin; WriteOPTONNX
// with or without past key/values), so tests cover configs the fixture
// lacks, and the benchmarks get OPT-125m/1.3B-shaped models.
package testmodels

import (
	"embed"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
)

// DefaultName is the name of the embedded default model, and of its
// directory under testmodels/: a small OPT trained by this project on the
// King James Bible (bench/default-model.sh), with its tokenizer, so that
// a conversion without a checkpoint gives a model that writes English.
const DefaultName = "opt-kjv-mini"

// TinyName is the name of the embedded reference fixture, and of its
// directory: the tiny random OPT made by transformers that the tests
// compare against (reference.json, read from the source tree).
const TinyName = "hf-opt-tiny-a"

//go:embed hf-opt-tiny-a/config.json hf-opt-tiny-a/model.safetensors hf-opt-tiny-a/generation_config.json
//go:embed opt-kjv-mini/config.json opt-kjv-mini/model.safetensors opt-kjv-mini/generation_config.json
//go:embed opt-kjv-mini/vocab.json opt-kjv-mini/merges.txt
var embedded embed.FS

// Embedded returns the embedded model name (DefaultName or TinyName) as a
// Hugging Face model directory: config.json, model.safetensors,
// generation_config.json and, for the default model, vocab.json and
// merges.txt at its root. ok is false for any other name.
func Embedded(name string) (fsys fs.FS, ok bool) {
	if name != DefaultName && name != TinyName {
		return nil, false
	}
	sub, err := fs.Sub(embedded, name)
	if err != nil {
		// fs.Sub fails only for an invalid path; the names are constants.
		panic("testmodels: " + err.Error())
	}
	return sub, true
}

// TinyFS is the embedded reference fixture (Embedded(TinyName)).
func TinyFS() fs.FS {
	f, _ := Embedded(TinyName)
	return f
}

// Dir is the absolute path of the reference fixture's directory in the
// source tree (testmodels/hf-opt-tiny-a), for tests that need files that
// are not embedded. It is derived from this source file's location (or,
// in a -trimpath build, found by walking up from the working directory),
// so it is only meaningful where the source tree is present.
func Dir() string { return sourceDir(TinyName) }

func sourceDir(name string) string {
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		return filepath.Join(filepath.Dir(file), name)
	}
	wd, err := os.Getwd()
	if err != nil {
		return filepath.Join("testmodels", name)
	}
	for d := wd; ; d = filepath.Dir(d) {
		cand := filepath.Join(d, "testmodels", name)
		if st, err := os.Stat(cand); err == nil && st.IsDir() {
			return cand
		}
		if filepath.Dir(d) == d {
			return filepath.Join(wd, "testmodels", name)
		}
	}
}

// ReferenceConfig is the model configuration recorded in reference.json.
type ReferenceConfig struct {
	VocabSize             int  `json:"vocab_size"`
	HiddenSize            int  `json:"hidden_size"`
	NumHiddenLayers       int  `json:"num_hidden_layers"`
	FFNDim                int  `json:"ffn_dim"`
	NumAttentionHeads     int  `json:"num_attention_heads"`
	MaxPositionEmbeddings int  `json:"max_position_embeddings"`
	WordEmbedProjDim      int  `json:"word_embed_proj_dim"`
	DoLayerNormBefore     bool `json:"do_layer_norm_before"`
}

// Reference holds the inputs and outputs transformers produced for the
// default model (reference.json; FIXTURE.md describes every field).
type Reference struct {
	Config ReferenceConfig `json:"config"`
	// InputIDs [batch, seq]; Logits [batch, seq, vocab] of model(InputIDs).
	InputIDs [][]int64     `json:"input_ids"`
	Logits   [][][]float32 `json:"logits"`
	// InputIDsPadded and AttentionMask [batch, seq] (left padding, mask 0
	// at pads); LogitsPadded [batch, seq, vocab] of the model given both.
	InputIDsPadded [][]int64     `json:"input_ids_padded"`
	AttentionMask  [][]int64     `json:"attention_mask"`
	LogitsPadded   [][][]float32 `json:"logits_padded"`
	// GreedyPrompt [1, p] and GreedyOutput [1, p+new] of greedy generate.
	GreedyPrompt [][]int64 `json:"greedy_prompt"`
	GreedyOutput [][]int64 `json:"greedy_output"`
	// LogitsPruned24Magnitude [batch, seq, vocab]: logits for InputIDs
	// after every decoder-layer linear was pruned 2:4 by magnitude.
	LogitsPruned24Magnitude [][][]float32 `json:"logits_pruned_24_magnitude"`
	Note                    string        `json:"note"`
}

// LoadReference reads and checks reference.json from Dir. A missing or
// malformed fixture is an error: tests must fail, not skip.
func LoadReference() (*Reference, error) {
	path := filepath.Join(Dir(), "reference.json")
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reference fixture: %w", err)
	}
	var r Reference
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("reference fixture %s: %w", path, err)
	}
	if err := r.check(); err != nil {
		return nil, fmt.Errorf("reference fixture %s: %w", path, err)
	}
	return &r, nil
}

// check verifies that every field is present and rectangular, and that
// the shapes agree with each other and with the config.
func (r *Reference) check() error {
	v := r.Config.VocabSize
	if v <= 0 {
		return fmt.Errorf("config.vocab_size %d must be positive", v)
	}
	b, s, err := dims2("input_ids", r.InputIDs)
	if err != nil {
		return err
	}
	if err := want3("logits", r.Logits, b, s, v); err != nil {
		return err
	}
	if err := want2("input_ids_padded", r.InputIDsPadded, b, s); err != nil {
		return err
	}
	if err := want2("attention_mask", r.AttentionMask, b, s); err != nil {
		return err
	}
	if err := want3("logits_padded", r.LogitsPadded, b, s, v); err != nil {
		return err
	}
	pb, ps, err := dims2("greedy_prompt", r.GreedyPrompt)
	if err != nil {
		return err
	}
	ob, ol, err := dims2("greedy_output", r.GreedyOutput)
	if err != nil {
		return err
	}
	if ob != pb || ol < ps {
		return fmt.Errorf("greedy_output is [%d %d], want [%d >=%d] for greedy_prompt [%d %d]", ob, ol, pb, ps, pb, ps)
	}
	return want3("logits_pruned_24_magnitude", r.LogitsPruned24Magnitude, b, s, v)
}

func dims2[T any](name string, x [][]T) (int, int, error) {
	if len(x) == 0 || len(x[0]) == 0 {
		return 0, 0, fmt.Errorf("field %q is missing or empty", name)
	}
	for i, row := range x {
		if len(row) != len(x[0]) {
			return 0, 0, fmt.Errorf("field %q: row %d has %d entries, row 0 has %d", name, i, len(row), len(x[0]))
		}
	}
	return len(x), len(x[0]), nil
}

func want2[T any](name string, x [][]T, b, s int) error {
	xb, xs, err := dims2(name, x)
	if err != nil {
		return err
	}
	if xb != b || xs != s {
		return fmt.Errorf("field %q is [%d %d], want [%d %d]", name, xb, xs, b, s)
	}
	return nil
}

func want3(name string, x [][][]float32, b, s, v int) error {
	if len(x) != b {
		return fmt.Errorf("field %q has %d rows, want %d", name, len(x), b)
	}
	for i := range x {
		if len(x[i]) != s {
			return fmt.Errorf("field %q[%d] has %d entries, want %d", name, i, len(x[i]), s)
		}
		for j := range x[i] {
			if len(x[i][j]) != v {
				return fmt.Errorf("field %q[%d][%d] has %d entries, want %d", name, i, j, len(x[i][j]), v)
			}
		}
	}
	return nil
}
