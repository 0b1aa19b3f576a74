package export

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/slopeml/slope/format/slopepb"
)

// hfConfigJSON is config.json as transformers writes it for OPT.
type hfConfigJSON struct {
	NameOrPath                 string   `json:"_name_or_path"`
	RemoveFinalLayerNorm       bool     `json:"_remove_final_layer_norm"`
	ActivationDropout          float64  `json:"activation_dropout"`
	ActivationFunction         string   `json:"activation_function"`
	Architectures              []string `json:"architectures"`
	AttentionDropout           float64  `json:"attention_dropout"`
	BOSTokenID                 *int64   `json:"bos_token_id"`
	DoLayerNormBefore          bool     `json:"do_layer_norm_before"`
	Dropout                    float64  `json:"dropout"`
	EnableBias                 bool     `json:"enable_bias"`
	EOSTokenID                 *int64   `json:"eos_token_id"`
	FFNDim                     int64    `json:"ffn_dim"`
	HiddenSize                 int64    `json:"hidden_size"`
	InitStd                    float64  `json:"init_std"`
	LayerNormElementwiseAffine bool     `json:"layer_norm_elementwise_affine"`
	Layerdrop                  float64  `json:"layerdrop"`
	MaxPositionEmbeddings      int64    `json:"max_position_embeddings"`
	ModelType                  string   `json:"model_type"`
	NumAttentionHeads          int64    `json:"num_attention_heads"`
	NumHiddenLayers            int64    `json:"num_hidden_layers"`
	PadTokenID                 *int64   `json:"pad_token_id"`
	TieWordEmbeddings          bool     `json:"tie_word_embeddings"`
	TorchDType                 string   `json:"torch_dtype,omitempty"`
	TransformersVersion        string   `json:"transformers_version"`
	UseCache                   bool     `json:"use_cache"`
	VocabSize                  int64    `json:"vocab_size"`
	WordEmbedProjDim           int64    `json:"word_embed_proj_dim"`
}

// ConfigJSON is the config.json of an OPT model with config c, with
// transformers' field names (OPTForCausalLM, model_type "opt"). A
// negative token id is written as null; a zero word_embed_proj_dim means
// hidden_size; an empty activation means relu. torchDType ("float32",
// "float16", "bfloat16" or "" to omit it) is recorded as torch_dtype and
// nameOrPath as _name_or_path. OPT's config.json has no LayerNorm epsilon
// (transformers uses 1e-5), so c.LayerNormEps is not written.
func ConfigJSON(c *slopepb.OPTConfig, torchDType, nameOrPath string) ([]byte, error) {
	if c == nil {
		return nil, errors.New("config.json: no OPT config")
	}
	for _, d := range []struct {
		name string
		v    int64
	}{{"vocab_size", c.VocabSize}, {"hidden_size", c.HiddenSize}, {"num_hidden_layers", c.NumHiddenLayers},
		{"num_attention_heads", c.NumAttentionHeads}, {"ffn_dim", c.FfnDim}, {"max_position_embeddings", c.MaxPositionEmbeddings}} {
		if d.v <= 0 {
			return nil, fmt.Errorf("config.json: %s = %d, want > 0", d.name, d.v)
		}
	}
	if c.HiddenSize%c.NumAttentionHeads != 0 {
		return nil, fmt.Errorf("config.json: num_attention_heads %d does not divide hidden_size %d", c.NumAttentionHeads, c.HiddenSize)
	}
	id := func(v int64) *int64 {
		if v < 0 {
			return nil
		}
		return &v
	}
	proj := c.WordEmbedProjDim
	if proj == 0 {
		proj = c.HiddenSize
	}
	act := c.ActivationFunction
	if act == "" {
		act = "relu"
	}
	j := hfConfigJSON{
		NameOrPath: nameOrPath, RemoveFinalLayerNorm: c.RemoveFinalLayerNorm,
		ActivationFunction: act, Architectures: []string{"OPTForCausalLM"},
		BOSTokenID: id(c.BosTokenId), DoLayerNormBefore: c.DoLayerNormBefore, EnableBias: c.EnableBias, EOSTokenID: id(c.EosTokenId),
		FFNDim: c.FfnDim, HiddenSize: c.HiddenSize, InitStd: 0.02, LayerNormElementwiseAffine: c.LayerNormElementwiseAffine,
		MaxPositionEmbeddings: c.MaxPositionEmbeddings, ModelType: "opt", NumAttentionHeads: c.NumAttentionHeads, NumHiddenLayers: c.NumHiddenLayers,
		PadTokenID: id(c.PadTokenId), TieWordEmbeddings: c.TieWordEmbeddings, TorchDType: torchDType,
		TransformersVersion: "4.46.0", UseCache: true, VocabSize: c.VocabSize, WordEmbedProjDim: proj,
	}
	b, err := json.MarshalIndent(j, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}
