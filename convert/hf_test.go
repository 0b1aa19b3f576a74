package convert

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"testing/fstest"

	"google.golang.org/protobuf/proto"

	"github.com/slopeml/slope/format/slopepb"
	"github.com/slopeml/slope/testmodels"
)

func TestOpenHFTiny(t *testing.T) {
	src, err := OpenHF(testmodels.TinyFS(), TinyLabel)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	c := src.Config()
	if c.HiddenSize != 64 || c.NumHiddenLayers != 2 || c.VocabSize != 512 || c.FfnDim != 256 ||
		c.NumAttentionHeads != 4 || c.MaxPositionEmbeddings != 64 || !c.DoLayerNormBefore || !c.TieWordEmbeddings ||
		c.PadTokenId != 1 || c.BosTokenId != 2 || c.ActivationFunction != "relu" || c.LayerNormEps != OPTLayerNormEps {
		t.Errorf("config %v", c)
	}
	names := src.Names()
	if len(names) != 36 || names[0] != "decoder.embed_tokens.weight" || names[len(names)-1] != "decoder.final_layer_norm.bias" {
		t.Errorf("names %v", names)
	}
	if w := src.Warnings(); len(w) != 0 {
		t.Errorf("warnings %v", w)
	}
	files := src.Files()
	if len(files) != 2 || files[1].Path != TinyLabel+"/model.safetensors" || files[1].Size != 552208 ||
		len(files[1].Sha256) != 64 || files[1].Format != "safetensors" {
		t.Errorf("files %v", files)
	}
	q, err := src.Tensor("decoder.layers.1.self_attn.q_proj.weight")
	if err != nil {
		t.Fatal(err)
	}
	if q.SourceName != "model.decoder.layers.1.self_attn.q_proj.weight" || len(q.Data) != 64*64 || q.Shape[0] != 64 {
		t.Errorf("q_proj %s %v %d", q.SourceName, q.Shape, len(q.Data))
	}
	if _, err := src.Tensor("decoder.nope"); err == nil {
		t.Error("unknown tensor read")
	}
}

// renamedFS rewrites the fixture's keys with rename (nil: drop the key)
// and adds extra tensors.
func renamedFS(t *testing.T, rename func(string) string, extra ...stTensor) fstest.MapFS {
	t.Helper()
	m := fixtureFS(t)
	st, err := OpenSafetensors(m, "model.safetensors")
	if err != nil {
		t.Fatal(err)
	}
	var ts []stTensor
	for _, k := range st.Names() {
		nk := rename(k)
		if nk == "" {
			continue
		}
		e, _ := st.Entry(k)
		d, err := st.ReadFloat32(k)
		if err != nil {
			t.Fatal(err)
		}
		ts = append(ts, stTensor{nk, e.Shape, d})
	}
	m["model.safetensors"] = &fstest.MapFile{Data: encodeST(append(ts, extra...))}
	return m
}

func TestOpenHFDecoderPrefix(t *testing.T) {
	m := renamedFS(t, func(k string) string { return strings.TrimPrefix(k, "model.") },
		stTensor{"lm_head.weight", []int{1}, []float32{0}}, stTensor{"foo.bar", []int{1}, []float32{0}})
	src, err := OpenHF(m, "hub")
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	if len(src.Names()) != 36 {
		t.Errorf("%d names", len(src.Names()))
	}
	w := strings.Join(src.Warnings(), "\n")
	if !strings.Contains(w, `"foo.bar"`) || !strings.Contains(w, `"lm_head.weight"`) {
		t.Errorf("warnings %q", w)
	}
	a, err := src.Tensor("decoder.layers.0.fc2.weight")
	if err != nil {
		t.Fatal(err)
	}
	ref, _ := OpenHF(testmodels.TinyFS(), TinyLabel)
	defer ref.Close()
	b, _ := ref.Tensor("decoder.layers.0.fc2.weight")
	if a.SourceName != "decoder.layers.0.fc2.weight" || !equalF32(a.Data, b.Data) {
		t.Error("decoder.* key read differs from model.decoder.* key")
	}
}

func TestOpenHFMissingWeights(t *testing.T) {
	drop := map[string]bool{
		"model.decoder.layers.1.fc1.weight":            true,
		"model.decoder.layers.0.self_attn.q_proj.bias": true,
		"model.decoder.final_layer_norm.weight":        true,
	}
	m := renamedFS(t, func(k string) string {
		if drop[k] {
			return ""
		}
		return k
	})
	dir := t.TempDir()
	for name, f := range m {
		if err := os.WriteFile(filepath.Join(dir, name), f.Data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	_, err := OpenHF(os.DirFS(dir), dir)
	if err == nil {
		t.Fatal("missing weights accepted")
	}
	for k := range drop {
		if !strings.Contains(err.Error(), strings.TrimPrefix(k, "model.")) {
			t.Errorf("error does not list %s: %v", k, err)
		}
	}
	if !strings.Contains(err.Error(), "3 weights missing") {
		t.Errorf("error %v", err)
	}
	// Through DenseToSlope too.
	if _, err := DenseToSlope(t.Context(), Options{In: dir, Out: filepath.Join(dir, "x.slope")}); err == nil ||
		!strings.Contains(err.Error(), "decoder.layers.1.fc1.weight") {
		t.Errorf("DenseToSlope: %v", err)
	}
}

func TestOpenHFErrors(t *testing.T) {
	cases := []struct {
		name string
		edit func(m fstest.MapFS)
		want []string
	}{
		{"wrong model_type", func(m fstest.MapFS) {
			m["config.json"] = &fstest.MapFile{Data: []byte(strings.Replace(string(m["config.json"].Data), `"opt"`, `"gpt2"`, 1))}
		}, []string{`"model_type"`, "gpt2", "config.json"}},
		{"no config", func(m fstest.MapFS) { delete(m, "config.json") }, []string{"config.json"}},
		{"only pytorch bin", func(m fstest.MapFS) {
			delete(m, "model.safetensors")
			m["pytorch_model.bin"] = &fstest.MapFile{Data: []byte("PK")}
		}, []string{"pytorch_model.bin", "zip"}},
		{"sharded without weight_map", func(m fstest.MapFS) {
			delete(m, "model.safetensors")
			m["model.safetensors.index.json"] = &fstest.MapFile{Data: []byte("{}")}
		}, []string{"dir/model.safetensors.index.json", `no "weight_map"`}},
		{"sharded shard missing", func(m fstest.MapFS) {
			m["model.safetensors.index.json"] = &fstest.MapFile{Data: []byte(`{"weight_map":{"a":"model-00001-of-00001.safetensors"}}`)}
			delete(m, "model.safetensors")
		}, []string{"model-00001-of-00001.safetensors", "missing"}},
		{"no weights", func(m fstest.MapFS) { delete(m, "model.safetensors") }, []string{"no weights", "model.safetensors"}},
		{"bad hidden_size", func(m fstest.MapFS) {
			m["config.json"] = &fstest.MapFile{Data: []byte(strings.Replace(string(m["config.json"].Data), `"hidden_size": 64`, `"hidden_size": "64"`, 1))}
		}, []string{`"hidden_size"`}},
		{"shape mismatch", func(m fstest.MapFS) {
			m["config.json"] = &fstest.MapFile{Data: []byte(strings.Replace(string(m["config.json"].Data), `"ffn_dim": 256`, `"ffn_dim": 128`, 1))}
		}, []string{"fc1.weight", "want [128 64]"}},
		{"broken safetensors", func(m fstest.MapFS) {
			m["model.safetensors"] = &fstest.MapFile{Data: []byte("garbage!garbage")}
		}, []string{"model.safetensors", "header length"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := fixtureFS(t)
			c.edit(m)
			src, err := OpenHF(m, "dir")
			if err == nil {
				src.Close()
				t.Fatal("accepted")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if c.name == "only pytorch bin" && !errors.Is(err, ErrPytorchBin) {
				t.Errorf("not ErrPytorchBin: %v", err)
			}
		})
	}
}

func TestParseOPTConfigDefaults(t *testing.T) {
	c, err := ParseOPTConfig("c.json", []byte(`{"model_type":"opt","hidden_size":768,"word_embed_proj_dim":null,"pad_token_id":null}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.VocabSize != 50272 || c.NumHiddenLayers != 12 || c.FfnDim != 3072 || c.MaxPositionEmbeddings != 2048 ||
		c.WordEmbedProjDim != 768 || !c.DoLayerNormBefore || c.RemoveFinalLayerNorm || !c.EnableBias ||
		!c.LayerNormElementwiseAffine || !c.TieWordEmbeddings || c.PadTokenId != -1 || c.EosTokenId != 2 {
		t.Errorf("defaults %v", c)
	}
	bad := map[string]string{
		`{}`: `"model_type"`,
		`[]`: "JSON object",
		`{"model_type":"opt","num_hidden_layers":0}`:              `"num_hidden_layers"`,
		`{"model_type":"opt","ffn_dim":1.5}`:                      `"ffn_dim"`,
		`{"model_type":"opt","do_layer_norm_before":"yes"}`:       `"do_layer_norm_before"`,
		`{"model_type":"opt","activation_function":"mish"}`:       `"activation_function"`,
		`{"model_type":"opt","num_attention_heads":5}`:            `"num_attention_heads"`,
		`{"model_type":"opt","vocab_size":99999999999}`:           `"vocab_size"`,
		`{"model_type":"opt","vocab_size":10,"pad_token_id":10}`:  `"pad_token_id"`,
		`{"model_type":"opt","enable_bias":null}`:                 `"enable_bias"`,
		`{"model_type":"opt","word_embed_proj_dim":0}`:            `"word_embed_proj_dim"`,
		`{"model_type":"opt","tie_word_embeddings":1}`:            `"tie_word_embeddings"`,
		`{"model_type":"opt","activation_function":"quick_gelu"}`: `"activation_function"`,
	}
	for in, want := range bad {
		_, err := ParseOPTConfig("c.json", []byte(in))
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "c.json") {
			t.Errorf("%s: error %v, want mention of %s", in, err, want)
		}
	}
}

func TestOPTWeightsVariants(t *testing.T) {
	c, _ := ParseOPTConfig("c", []byte(`{"model_type":"opt","num_hidden_layers":1,"word_embed_proj_dim":512,
		"do_layer_norm_before":false,"enable_bias":false,"tie_word_embeddings":false,"layer_norm_elementwise_affine":false}`))
	names := OPTWeightNames(c)
	want := []string{"decoder.embed_tokens.weight", "decoder.embed_positions.weight", "decoder.project_in.weight",
		"decoder.layers.0.self_attn.q_proj.weight", "decoder.layers.0.self_attn.k_proj.weight",
		"decoder.layers.0.self_attn.v_proj.weight", "decoder.layers.0.self_attn.out_proj.weight",
		"decoder.layers.0.fc1.weight", "decoder.layers.0.fc2.weight",
		"decoder.project_out.weight", "lm_head.weight"}
	if !slices.Equal(names, want) {
		t.Errorf("names\n%v\nwant\n%v", names, want)
	}
}

// TestParseOPTConfigAllFields: every field that changes the math is read.
func TestParseOPTConfigAllFields(t *testing.T) {
	c, err := ParseOPTConfig("c.json", []byte(`{"model_type":"opt","vocab_size":100,"hidden_size":48,
		"num_hidden_layers":3,"num_attention_heads":6,"ffn_dim":96,"max_position_embeddings":30,
		"word_embed_proj_dim":24,"do_layer_norm_before":false,"_remove_final_layer_norm":true,
		"enable_bias":false,"layer_norm_elementwise_affine":false,"activation_function":"gelu_new",
		"tie_word_embeddings":false,"pad_token_id":0,"bos_token_id":null,"eos_token_id":99,
		"dropout":0.1,"torch_dtype":"float16","unknown_field":[1,2]}`))
	if err != nil {
		t.Fatal(err)
	}
	want := &slopepb.OPTConfig{VocabSize: 100, HiddenSize: 48, NumHiddenLayers: 3, NumAttentionHeads: 6, FfnDim: 96,
		MaxPositionEmbeddings: 30, WordEmbedProjDim: 24, DoLayerNormBefore: false, RemoveFinalLayerNorm: true,
		EnableBias: false, LayerNormElementwiseAffine: false, ActivationFunction: "gelu_new", TieWordEmbeddings: false,
		PadTokenId: 0, BosTokenId: -1, EosTokenId: 99, LayerNormEps: OPTLayerNormEps}
	if !proto.Equal(c, want) {
		t.Errorf("config\n got %v\nwant %v", c, want)
	}
}

// TestHFPrefersSafetensors: with both safetensors and .bin weights, the
// safetensors are read and the .bin is reported as ignored.
func TestHFPrefersSafetensors(t *testing.T) {
	cfg := testmodels.ConfigFamilies()["no-bias"]
	dir := t.TempDir()
	w := testmodels.GenWeights(cfg, 1, "F32")
	if err := testmodels.WriteHFDir(dir, cfg, testmodels.GenWeights(cfg, 2, "F32"), testmodels.Layout{Format: "bin-sharded"}); err != nil {
		t.Fatal(err)
	}
	if err := testmodels.WriteHFDir(dir, cfg, w, testmodels.Layout{Format: "safetensors-sharded"}); err != nil {
		t.Fatal(err)
	}
	src, err := OpenSource(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	checkWeights(t, src, w, "")
	if ws := strings.Join(src.Warnings(), "\n"); !strings.Contains(ws, "pytorch_model.bin.index.json ignored") {
		t.Errorf("warnings %q", ws)
	}
	for _, f := range src.Files() {
		if strings.HasSuffix(f.Path, ".bin") {
			t.Errorf("ignored file %s recorded", f.Path)
		}
	}
}
