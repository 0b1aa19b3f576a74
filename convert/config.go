package convert

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"

	"github.com/slopeml/slope/format/slopepb"
)

// Caps on config sizes, so that a hostile config.json cannot make the
// converter allocate absurd name lists or shapes.
const (
	maxDim    = 1 << 24 // hidden, ffn, vocab, positions, proj dim
	maxLayers = 4096
)

// OPTLayerNormEps is the LayerNorm epsilon of OPT (nn.LayerNorm's default;
// OPT's config.json has no field for it).
const OPTLayerNormEps = 1e-5

// Activations maps the activation_function values of config.json that the
// converter accepts to the op_type of the graph node that computes them.
var Activations = map[string]string{
	"relu":              "Relu",
	"gelu":              "Gelu",
	"gelu_new":          "GeluTanh",
	"gelu_pytorch_tanh": "GeluTanh",
	"silu":              "Silu",
	"swish":             "Silu",
	"tanh":              "Tanh",
	"sigmoid":           "Sigmoid",
}

// ParseOPTConfig parses a Hugging Face OPT config.json. Fields that change
// the math are read with type checks; fields absent from the file take the
// defaults of transformers' OPTConfig (vocab 50272, hidden 768, 12 layers,
// 12 heads, ffn 3072, 2048 positions, word_embed_proj_dim = hidden,
// pre-LayerNorm, biases, affine LayerNorms, relu, tied embeddings, pad 1,
// bos 2, eos 2). A null token id becomes -1. model_type must be "opt".
// Other fields are ignored. name is used in errors.
func ParseOPTConfig(name string, data []byte) (*slopepb.OPTConfig, error) {
	var raw map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := dec.Decode(&raw); err != nil {
		return nil, fmt.Errorf("%s: not a JSON object: %w", name, err)
	}
	if raw == nil {
		return nil, fmt.Errorf("%s: not a JSON object", name)
	}
	field := func(key string, err error) error {
		return fmt.Errorf("%s: field %q: %w", name, key, err)
	}
	mt, ok := raw["model_type"]
	if !ok {
		return nil, field("model_type", errors.New(`missing; want "opt"`))
	}
	var modelType string
	if err := json.Unmarshal(mt, &modelType); err != nil || modelType != "opt" {
		return nil, field("model_type", fmt.Errorf(`is %s; want "opt"`, bytes.TrimSpace(mt)))
	}
	c := &slopepb.OPTConfig{
		VocabSize: 50272, HiddenSize: 768, NumHiddenLayers: 12, NumAttentionHeads: 12, FfnDim: 3072,
		MaxPositionEmbeddings: 2048, DoLayerNormBefore: true, EnableBias: true,
		LayerNormElementwiseAffine: true, ActivationFunction: "relu", TieWordEmbeddings: true,
		PadTokenId: 1, BosTokenId: 2, EosTokenId: 2, LayerNormEps: OPTLayerNormEps,
	}
	ints := []struct {
		key      string
		dst      *int64
		min, max int64
		nullable bool
	}{
		{"vocab_size", &c.VocabSize, 1, maxDim, false},
		{"hidden_size", &c.HiddenSize, 1, maxDim, false},
		{"num_hidden_layers", &c.NumHiddenLayers, 1, maxLayers, false},
		{"num_attention_heads", &c.NumAttentionHeads, 1, maxDim, false},
		{"ffn_dim", &c.FfnDim, 1, maxDim, false},
		{"max_position_embeddings", &c.MaxPositionEmbeddings, 1, maxDim, false},
		{"pad_token_id", &c.PadTokenId, 0, math.MaxInt32, true},
		{"bos_token_id", &c.BosTokenId, 0, math.MaxInt32, true},
		{"eos_token_id", &c.EosTokenId, 0, math.MaxInt32, true},
	}
	for _, f := range ints {
		v, ok := raw[f.key]
		if !ok {
			continue
		}
		if string(bytes.TrimSpace(v)) == "null" {
			if !f.nullable {
				return nil, field(f.key, errors.New("is null; want an integer"))
			}
			*f.dst = -1
			continue
		}
		n, err := jsonInt(v)
		if err != nil {
			return nil, field(f.key, err)
		}
		if n < f.min || n > f.max {
			return nil, field(f.key, fmt.Errorf("%d out of range [%d, %d]", n, f.min, f.max))
		}
		*f.dst = n
	}
	c.WordEmbedProjDim = c.HiddenSize
	if v, ok := raw["word_embed_proj_dim"]; ok && string(bytes.TrimSpace(v)) != "null" {
		n, err := jsonInt(v)
		if err != nil {
			return nil, field("word_embed_proj_dim", err)
		}
		if n < 1 || n > maxDim {
			return nil, field("word_embed_proj_dim", fmt.Errorf("%d out of range [1, %d]", n, maxDim))
		}
		c.WordEmbedProjDim = n
	}
	bools := []struct {
		key string
		dst *bool
	}{
		{"do_layer_norm_before", &c.DoLayerNormBefore},
		{"_remove_final_layer_norm", &c.RemoveFinalLayerNorm},
		{"enable_bias", &c.EnableBias},
		{"layer_norm_elementwise_affine", &c.LayerNormElementwiseAffine},
		{"tie_word_embeddings", &c.TieWordEmbeddings},
	}
	for _, f := range bools {
		v, ok := raw[f.key]
		if !ok {
			continue
		}
		if err := json.Unmarshal(v, f.dst); err != nil || string(bytes.TrimSpace(v)) == "null" {
			return nil, field(f.key, fmt.Errorf("is %s; want true or false", bytes.TrimSpace(v)))
		}
	}
	if v, ok := raw["activation_function"]; ok {
		if err := json.Unmarshal(v, &c.ActivationFunction); err != nil || string(bytes.TrimSpace(v)) == "null" {
			return nil, field("activation_function", fmt.Errorf("is %s; want a string", bytes.TrimSpace(v)))
		}
	}
	if _, ok := Activations[c.ActivationFunction]; !ok {
		return nil, field("activation_function", fmt.Errorf("%q is not supported (supported: %s)",
			c.ActivationFunction, strings.Join(slices.Sorted(maps.Keys(Activations)), ", ")))
	}
	if c.HiddenSize%c.NumAttentionHeads != 0 {
		return nil, field("num_attention_heads", fmt.Errorf("%d does not divide hidden_size %d", c.NumAttentionHeads, c.HiddenSize))
	}
	// transformers builds embed_tokens with padding_idx=pad_token_id, which
	// PyTorch requires to be a row of the table.
	if c.PadTokenId >= c.VocabSize {
		return nil, field("pad_token_id", fmt.Errorf("%d is not below vocab_size %d", c.PadTokenId, c.VocabSize))
	}
	return c, nil
}

// jsonInt parses a JSON integer (no fraction, no exponent).
func jsonInt(v json.RawMessage) (int64, error) {
	s := string(bytes.TrimSpace(v))
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("is %s; want an integer", s)
	}
	return n, nil
}

// hasFinalLayerNorm: OPT's decoder has a final LayerNorm only when it is
// pre-LayerNorm and _remove_final_layer_norm is false.
func hasFinalLayerNorm(c *slopepb.OPTConfig) bool {
	return c.DoLayerNormBefore && !c.RemoveFinalLayerNorm
}

// hasProjection: project_in/project_out exist when word_embed_proj_dim
// differs from hidden_size.
func hasProjection(c *slopepb.OPTConfig) bool { return c.WordEmbedProjDim != c.HiddenSize }

// LayerPrefix is the canonical name prefix of decoder layer i.
func LayerPrefix(i int) string { return "decoder.layers." + strconv.Itoa(i) + "." }

// WeightSpec is one canonical weight of an architecture.
type WeightSpec struct {
	Name  string
	Shape []int
	// Linear is true for the [out, in] weights of the decoder layers'
	// linear layers (the candidates for N:M pruning).
	Linear bool
}

// OPTWeights lists the canonical weights an OPT model with config c has,
// in model order, with their shapes.
func OPTWeights(c *slopepb.OPTConfig) []WeightSpec {
	h, f, v := int(c.HiddenSize), int(c.FfnDim), int(c.VocabSize)
	p := int(c.WordEmbedProjDim)
	var ws []WeightSpec
	add := func(name string, linear bool, shape ...int) {
		ws = append(ws, WeightSpec{Name: name, Shape: shape, Linear: linear})
	}
	norm := func(prefix string) {
		if c.LayerNormElementwiseAffine {
			add(prefix+".weight", false, h)
			add(prefix+".bias", false, h)
		}
	}
	linear := func(prefix string, out, in int) {
		add(prefix+".weight", true, out, in)
		if c.EnableBias {
			add(prefix+".bias", false, out)
		}
	}
	add("decoder.embed_tokens.weight", false, v, p)
	add("decoder.embed_positions.weight", false, int(c.MaxPositionEmbeddings)+2, h)
	if hasProjection(c) {
		add("decoder.project_in.weight", false, h, p)
	}
	for i := 0; i < int(c.NumHiddenLayers); i++ {
		l := LayerPrefix(i)
		norm(l + "self_attn_layer_norm")
		for _, k := range []string{"q_proj", "k_proj", "v_proj", "out_proj"} {
			linear(l+"self_attn."+k, h, h)
		}
		norm(l + "final_layer_norm")
		linear(l+"fc1", f, h)
		linear(l+"fc2", h, f)
	}
	if hasFinalLayerNorm(c) {
		norm("decoder.final_layer_norm")
	}
	if hasProjection(c) {
		add("decoder.project_out.weight", false, p, h)
	}
	if !c.TieWordEmbeddings {
		add("lm_head.weight", false, v, p)
	}
	return ws
}

// OPTWeightNames is the names of OPTWeights.
func OPTWeightNames(c *slopepb.OPTConfig) []string {
	ws := OPTWeights(c)
	names := make([]string, len(ws))
	for i, w := range ws {
		names[i] = w.Name
	}
	return names
}
