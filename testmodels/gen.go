package testmodels

import (
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/slopeml/slope/export"
	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/format/slopepb"
)

// GenConfig is the architecture of a generated OPT checkpoint. Its fields
// mirror transformers' OPTConfig: Vocab (vocab_size), Hidden
// (hidden_size), Layers (num_hidden_layers), Heads (num_attention_heads),
// FFN (ffn_dim), MaxPos (max_position_embeddings), WordEmbedProjDim
// (word_embed_proj_dim; 0 means Hidden), PreLN (do_layer_norm_before),
// RemoveFinalLN (_remove_final_layer_norm), Bias (enable_bias),
// ElementwiseAffine (layer_norm_elementwise_affine), Tied
// (tie_word_embeddings), Activation (activation_function; "" means
// "relu"), PadID, BOSID, EOSID (negative: null).
type GenConfig struct {
	Vocab, Hidden, Layers, Heads, FFN, MaxPos, WordEmbedProjDim int
	PreLN, RemoveFinalLN, Bias, ElementwiseAffine, Tied         bool
	Activation                                                  string
	PadID, BOSID, EOSID                                         int
}

// ProjDim is word_embed_proj_dim (Hidden when WordEmbedProjDim is 0).
func (c GenConfig) ProjDim() int {
	if c.WordEmbedProjDim == 0 {
		return c.Hidden
	}
	return c.WordEmbedProjDim
}

// ActivationFunction is activation_function ("relu" when Activation is "").
func (c GenConfig) ActivationFunction() string {
	if c.Activation == "" {
		return "relu"
	}
	return c.Activation
}

// Check reports a config that no OPT model can have.
func (c GenConfig) Check() error {
	for _, d := range []struct {
		name string
		v    int
	}{{"Vocab", c.Vocab}, {"Hidden", c.Hidden}, {"Layers", c.Layers}, {"Heads", c.Heads}, {"FFN", c.FFN}, {"MaxPos", c.MaxPos}} {
		if d.v <= 0 {
			return fmt.Errorf("GenConfig.%s = %d, want > 0", d.name, d.v)
		}
	}
	if c.WordEmbedProjDim < 0 {
		return fmt.Errorf("GenConfig.WordEmbedProjDim = %d, want >= 0", c.WordEmbedProjDim)
	}
	if c.Hidden%c.Heads != 0 {
		return fmt.Errorf("GenConfig.Heads = %d does not divide Hidden = %d", c.Heads, c.Hidden)
	}
	return nil
}

// ConfigFamilies are small configs, one per architectural variant of OPT
// that changes the set of weights or the math:
//
//	pre-ln-tied   like OPT-125m: pre-LayerNorm, final LayerNorm, biases, tied head, relu
//	post-ln-proj  like OPT-350m: post-LayerNorm, word_embed_proj_dim != hidden (project_in/out)
//	untied-head   a separate lm_head.weight
//	no-final-ln   _remove_final_layer_norm
//	no-bias       enable_bias false: no linear biases
//	gelu          activation_function gelu
//	no-affine     layer_norm_elementwise_affine false: no LayerNorm parameters
func ConfigFamilies() map[string]GenConfig {
	base := GenConfig{Vocab: 96, Hidden: 32, Layers: 2, Heads: 4, FFN: 64, MaxPos: 24,
		PreLN: true, Bias: true, ElementwiseAffine: true, Tied: true, Activation: "relu",
		PadID: 1, BOSID: 2, EOSID: 2}
	with := func(f func(*GenConfig)) GenConfig {
		c := base
		f(&c)
		return c
	}
	return map[string]GenConfig{
		"pre-ln-tied": base,
		"post-ln-proj": with(func(c *GenConfig) {
			c.PreLN = false
			c.WordEmbedProjDim = 16
		}),
		"untied-head": with(func(c *GenConfig) { c.Tied = false }),
		"no-final-ln": with(func(c *GenConfig) { c.RemoveFinalLN = true }),
		"no-bias":     with(func(c *GenConfig) { c.Bias = false }),
		"gelu":        with(func(c *GenConfig) { c.Activation = "gelu" }),
		"no-affine":   with(func(c *GenConfig) { c.ElementwiseAffine = false }),
	}
}

// GenSpecs lists the canonical weights (decoder.* names, [out, in]
// linears) of an OPT model with config c, in model order, with their
// shapes: the same set transformers' OPTForCausalLM has.
func GenSpecs(c GenConfig) []TensorHeader {
	h, f, v, p := c.Hidden, c.FFN, c.Vocab, c.ProjDim()
	var out []TensorHeader
	add := func(name string, shape ...int) { out = append(out, TensorHeader{Name: name, Shape: shape}) }
	norm := func(prefix string) {
		if c.ElementwiseAffine {
			add(prefix+".weight", h)
			add(prefix+".bias", h)
		}
	}
	linear := func(prefix string, o, i int) {
		add(prefix+".weight", o, i)
		if c.Bias {
			add(prefix+".bias", o)
		}
	}
	add("decoder.embed_tokens.weight", v, p)
	add("decoder.embed_positions.weight", c.MaxPos+2, h)
	if p != h {
		add("decoder.project_in.weight", h, p)
	}
	for i := range c.Layers {
		l := "decoder.layers." + strconv.Itoa(i) + "."
		norm(l + "self_attn_layer_norm")
		for _, k := range []string{"q_proj", "k_proj", "v_proj", "out_proj"} {
			linear(l+"self_attn."+k, h, h)
		}
		norm(l + "final_layer_norm")
		linear(l+"fc1", f, h)
		linear(l+"fc2", h, f)
	}
	if c.PreLN && !c.RemoveFinalLN {
		norm("decoder.final_layer_norm")
	}
	if p != h {
		add("decoder.project_out.weight", p, h)
	}
	if !c.Tied {
		add("lm_head.weight", v, p)
	}
	return out
}

// GenWeights generates every weight of an OPT model with config cfg (see
// GenSpecs), deterministically from seed, with values stored in dtype
// ("F32", "F16" or "BF16"). It panics on an invalid config or dtype (it
// is a test helper; GenWeightsFunc returns the error instead).
func GenWeights(cfg GenConfig, seed uint64, dtype string) []NamedTensor {
	var out []NamedTensor
	if err := GenWeightsFunc(cfg, seed, dtype, func(t NamedTensor) error {
		out = append(out, t)
		return nil
	}); err != nil {
		panic("testmodels.GenWeights: " + err.Error())
	}
	return out
}

// GenWeightsFunc generates the weights of GenWeights one at a time and
// passes each to fn, so that only one is in memory at once. It stops at
// the first error fn returns.
func GenWeightsFunc(cfg GenConfig, seed uint64, dtype string, fn func(NamedTensor) error) error {
	if err := cfg.Check(); err != nil {
		return err
	}
	if _, err := dtypeOf(dtype); err != nil {
		return err
	}
	for _, h := range GenSpecs(cfg) {
		t, err := GenTensor(h, seed, dtype)
		if err != nil {
			return err
		}
		if err := fn(t); err != nil {
			return err
		}
	}
	return nil
}

// GenTensor generates the values of one weight: a function of seed, the
// weight's name and shape only, so any weight can be regenerated alone.
// LayerNorm weights are 1 + N(0, 0.05)-ish, LayerNorm biases
// N(0, 0.05)-ish, everything else N(0, 0.02)-ish (a scaled sum of four
// uniforms: unit variance, bounded by ±2√3), rounded to dtype.
func GenTensor(h TensorHeader, seed uint64, dtype string) (NamedTensor, error) {
	dt, err := dtypeOf(dtype)
	if err != nil {
		return NamedTensor{}, fmt.Errorf("tensor %q: %w", h.Name, err)
	}
	n := h.Numel()
	if n < 0 {
		return NamedTensor{}, fmt.Errorf("tensor %q: bad shape %v", h.Name, h.Shape)
	}
	scale, offset := float32(0.02), float32(0)
	isNorm := strings.Contains(h.Name, "layer_norm.")
	switch {
	case isNorm && strings.HasSuffix(h.Name, ".weight"):
		scale, offset = 0.05, 1
	case isNorm:
		scale = 0.05
	}
	hs := fnv.New64a()
	hs.Write([]byte(h.Name))
	state := seed ^ hs.Sum64()
	data := make([]float32, n)
	const sqrt3 = 1.7320508075688772
	for i := range data {
		r := splitmix64(&state)
		sum := float64(r&0xffff) + float64(r>>16&0xffff) + float64(r>>32&0xffff) + float64(r>>48) + 2 // 4 x (u+0.5)
		z := (sum/65536 - 2) * sqrt3
		data[i] = roundTo(dt, offset+scale*float32(z))
	}
	return NamedTensor{Name: h.Name, Shape: slices.Clone(h.Shape), DType: dtype, Data: data}, nil
}

func splitmix64(s *uint64) uint64 {
	*s += 0x9e3779b97f4a7c15
	z := *s
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	return z ^ z>>31
}

// roundTo rounds f to the nearest value of dt (ties to even).
func roundTo(dt slopepb.DType, f float32) float32 {
	switch dt {
	case slopepb.DType_FLOAT16:
		return format.Float16ToFloat32(format.Float32ToFloat16(f))
	case slopepb.DType_BFLOAT16:
		return format.BFloat16ToFloat32(format.Float32ToBFloat16(f))
	}
	return f
}

// Layout says how WriteHFDir stores the weights of a Hugging Face
// directory.
type Layout struct {
	// Format: "safetensors" (model.safetensors), "safetensors-sharded"
	// (model-0000i-of-0000n.safetensors + model.safetensors.index.json),
	// "bin" (pytorch_model.bin) or "bin-sharded"
	// (pytorch_model-0000i-of-0000n.bin + pytorch_model.bin.index.json).
	Format string
	// KeyPrefix is prepended to the decoder.* names: "model." as
	// transformers' save_pretrained writes them, or "" as in the original
	// facebook/opt-* checkpoints. lm_head.weight is never prefixed.
	KeyPrefix string
	// IncludeTiedLMHead also stores lm_head.weight (a copy of
	// decoder.embed_tokens.weight) when the embeddings are tied.
	IncludeTiedLMHead bool
	// ShardBytes caps the tensor bytes of a shard (a larger tensor gets a
	// shard of its own); 0 means about a third of the total.
	ShardBytes int64
}

// Layouts are the four Formats WriteHFDir supports.
var Layouts = []string{"safetensors", "safetensors-sharded", "bin", "bin-sharded"}

// ConfigJSON is the config.json of a model with config c, with
// transformers' field names. torchDType ("float32", "float16",
// "bfloat16" or "") is recorded as torch_dtype (export.ConfigJSON).
func ConfigJSON(c GenConfig, torchDType string) ([]byte, error) {
	if err := c.Check(); err != nil {
		return nil, err
	}
	id := func(v int) int64 {
		if v < 0 {
			return -1
		}
		return int64(v)
	}
	return export.ConfigJSON(&slopepb.OPTConfig{
		VocabSize: int64(c.Vocab), HiddenSize: int64(c.Hidden), NumHiddenLayers: int64(c.Layers),
		NumAttentionHeads: int64(c.Heads), FfnDim: int64(c.FFN), MaxPositionEmbeddings: int64(c.MaxPos),
		WordEmbedProjDim: int64(c.ProjDim()), DoLayerNormBefore: c.PreLN, RemoveFinalLayerNorm: c.RemoveFinalLN,
		EnableBias: c.Bias, LayerNormElementwiseAffine: c.ElementwiseAffine, ActivationFunction: c.ActivationFunction(),
		TieWordEmbeddings: c.Tied, PadTokenId: id(c.PadID), BosTokenId: id(c.BOSID), EosTokenId: id(c.EOSID),
	}, torchDType, "slope/testmodels/gen")
}

func torchDTypeName(dtype string) string { return export.TorchDTypeName(dtype) }

// WriteHFDir writes a Hugging Face OPT model directory at dir (created if
// needed): config.json for cfg and the weights w (canonical decoder.* /
// lm_head.* names, as GenWeights returns them; any others are written
// as they are) stored as layout says.
func WriteHFDir(dir string, cfg GenConfig, w []NamedTensor, layout Layout) error {
	hs := make([]TensorHeader, len(w))
	dtype := ""
	for i, t := range w {
		hs[i] = t.Header()
		if i == 0 || t.DType == dtype {
			dtype = t.DType
		} else {
			dtype = ""
		}
	}
	return writeHFDir(dir, cfg, torchDTypeName(dtype), hs, func(i int) ([]float32, error) { return w[i].Data, nil }, layout)
}

// WriteHFDirGen writes the model that GenWeights(cfg, seed, dtype) makes
// as WriteHFDir would, generating each weight only when it is written:
// with a safetensors layout one weight is in memory at a time, with a .bin
// layout one shard.
func WriteHFDirGen(dir string, cfg GenConfig, seed uint64, dtype string, layout Layout) error {
	if err := cfg.Check(); err != nil {
		return err
	}
	if _, err := dtypeOf(dtype); err != nil {
		return err
	}
	hs := GenSpecs(cfg)
	for i := range hs {
		hs[i].DType = dtype
	}
	return writeHFDir(dir, cfg, torchDTypeName(dtype), hs, func(i int) ([]float32, error) {
		t, err := GenTensor(hs[i], seed, dtype)
		return t.Data, err
	}, layout)
}

// HF file names.
const (
	hfSafetensorsName  = "model.safetensors"
	hfSafetensorsIndex = "model.safetensors.index.json"
	hfBinName          = "pytorch_model.bin"
	hfBinIndex         = "pytorch_model.bin.index.json"
)

func writeHFDir(dir string, cfg GenConfig, torchDType string, hs []TensorHeader, data func(i int) ([]float32, error), layout Layout) error {
	cj, err := ConfigJSON(cfg, torchDType)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), cj, 0o644); err != nil {
		return err
	}
	// Stored keys, and the tied head as an extra copy of the embeddings.
	keys := make([]string, len(hs))
	for i, h := range hs {
		keys[i] = h.Name
		if strings.HasPrefix(h.Name, "decoder.") {
			keys[i] = layout.KeyPrefix + h.Name
		}
	}
	get := data
	if cfg.Tied && layout.IncludeTiedLMHead && !slices.Contains(keys, "lm_head.weight") {
		emb := slices.IndexFunc(hs, func(h TensorHeader) bool { return h.Name == "decoder.embed_tokens.weight" })
		if emb < 0 {
			return errors.New("IncludeTiedLMHead: no decoder.embed_tokens.weight to copy")
		}
		head := hs[emb]
		head.Name = "lm_head.weight"
		hs = append(slices.Clone(hs), head)
		keys = append(keys, "lm_head.weight")
		n := len(hs) - 1
		get = func(i int) ([]float32, error) {
			if i == n {
				return data(emb)
			}
			return data(i)
		}
	}
	stored := make([]TensorHeader, len(hs))
	sizes := make([]int64, len(hs))
	var total int64
	for i, h := range hs {
		stored[i] = h
		stored[i].Name = keys[i]
		if sizes[i], err = h.Bytes(); err != nil {
			return err
		}
		total += sizes[i]
	}
	sharded := false
	var single, index, pattern string
	switch layout.Format {
	case "safetensors":
		single = hfSafetensorsName
	case "safetensors-sharded":
		sharded, index, pattern = true, hfSafetensorsIndex, "model-%05d-of-%05d.safetensors"
	case "bin":
		single = hfBinName
	case "bin-sharded":
		sharded, index, pattern = true, hfBinIndex, "pytorch_model-%05d-of-%05d.bin"
	default:
		return fmt.Errorf("layout format %q: want one of %v", layout.Format, Layouts)
	}
	isBin := strings.HasPrefix(layout.Format, "bin")
	var shards [][]int // indices into stored, per shard
	if !sharded {
		all := make([]int, len(stored))
		for i := range all {
			all[i] = i
		}
		shards = [][]int{all}
	} else {
		limit := layout.ShardBytes
		if limit <= 0 {
			limit = max(total/3+1, 1)
		}
		var cur []int
		var curBytes int64
		for i := range stored {
			if len(cur) > 0 && curBytes+sizes[i] > limit {
				shards = append(shards, cur)
				cur, curBytes = nil, 0
			}
			cur = append(cur, i)
			curBytes += sizes[i]
		}
		if len(cur) > 0 || len(shards) == 0 {
			shards = append(shards, cur)
		}
	}
	weightMap := map[string]string{}
	for s, idx := range shards {
		name := single
		if sharded {
			name = fmt.Sprintf(pattern, s+1, len(shards))
		}
		p := filepath.Join(dir, name)
		if isBin {
			ts := make([]NamedTensor, len(idx))
			for j, i := range idx {
				d, err := get(i)
				if err != nil {
					return fmt.Errorf("%s: tensor %q: %w", p, stored[i].Name, err)
				}
				ts[j] = NamedTensor{Name: stored[i].Name, Shape: stored[i].Shape, DType: stored[i].DType, Data: d}
			}
			if err := WriteTorchBin(p, ts); err != nil {
				return err
			}
		} else {
			hs := make([]TensorHeader, len(idx))
			for j, i := range idx {
				hs[j] = stored[i]
			}
			if err := WriteSafetensorsFunc(p, hs, map[string]string{"format": "pt"}, func(j int) ([]float32, error) { return get(idx[j]) }); err != nil {
				return err
			}
		}
		for _, i := range idx {
			weightMap[stored[i].Name] = name
		}
	}
	if !sharded {
		return nil
	}
	ib, err := json.MarshalIndent(map[string]any{
		"metadata":   map[string]any{"total_size": total},
		"weight_map": weightMap,
	}, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, index), append(ib, '\n'), 0o644)
}
