package testmodels

import (
	"strconv"

	"github.com/slopeml/slope/export"
)

// The ONNX writer lives in package export (export.WriteOPTONNX), which
// `slope export --to onnx` uses too; this file keeps the test generator's
// API over it.

// ONNXOpset is the ai.onnx opset of the graphs WriteOPTONNX writes
// (LayerNormalization needs 17, Gelu 20).
const ONNXOpset = export.ONNXOpset

// ONNXConfig is the architecture of an OPT model written by WriteOPTONNX,
// in the terms of transformers' OPTConfig.
type ONNXConfig struct {
	Vocab, Hidden, Heads, Layers, FFN int
	// MaxPos is max_position_embeddings; embed_positions has MaxPos+2 rows.
	MaxPos int
	// ProjDim is word_embed_proj_dim; 0 means Hidden (no project_in/out).
	ProjDim int
	// PreLN is do_layer_norm_before.
	PreLN bool
	// RemoveFinalLayerNorm drops the final LayerNorm of a pre-LN model.
	RemoveFinalLayerNorm bool
	// Tied: the LM head is the token embedding (tie_word_embeddings).
	Tied bool
	// NoBias: linear layers without biases (enable_bias false).
	NoBias bool
	// Activation is activation_function: "relu" (""), "gelu", "gelu_new",
	// "tanh", "sigmoid" or "silu".
	Activation string
	// Eps is the LayerNorm epsilon; 0 means 1e-5.
	Eps float32
}

// ONNXOptions choose how WriteOPTONNX lays the model out.
type ONNXOptions struct {
	// ExternalData stores the weights in a side file (ExternalName, by
	// default the model's file name + ".data", in the same directory)
	// instead of inline; small constants stay inline.
	ExternalData bool
	ExternalName string
	// CanonicalWeights stores linear weights as [out, in] (fc1/fc2 read by
	// Gemm with transB=1 on a [batch*seq, hidden] reshape, the others by
	// MatMul of a Transpose node) instead of [in, out] read by MatMul, as
	// the dynamo exporter does for q/k/v/out_proj.
	CanonicalWeights bool
	// DecomposeLayerNorm writes each LayerNorm as ReduceMean, Sub, Pow,
	// ReduceMean, Add, Sqrt, Div, Mul, Add.
	DecomposeLayerNorm bool
	// TypedData stores inline values in float_data (FLOAT) or int32_data
	// (FLOAT16, BFLOAT16) instead of raw_data.
	TypedData bool
	// CopyTiedHead writes a tied LM head as a separate (transposed when
	// not CanonicalWeights) copy of the token embedding, as the legacy
	// exporter does, instead of reading the embedding itself.
	CopyTiedHead bool
	// OpaqueNames names the weight initializers "onnx::Init_N", N counting
	// down, instead of "m.model.<canonical name>".
	OpaqueNames bool
	// WithPast writes the decoder-with-past graph ORT users decode with
	// (as optimum's OPT export): inputs input_ids [batch, seq] int64,
	// attention_mask [batch, past+seq] int64 and, for each layer i,
	// past_key_values.i.key / .value [batch, heads, past, head_dim] float;
	// outputs logits [batch, seq, vocab] and present.i.key / .value
	// [batch, heads, past+seq, head_dim] (the past concatenated with the
	// new keys and values along axis 2). Positions are OPT's:
	// cumsum(attention_mask)*attention_mask - 1 + 2, the last seq columns.
	WithPast bool
}

// exportConfig is cfg in export's terms.
func (c ONNXConfig) exportConfig() export.ONNXConfig {
	return export.ONNXConfig{Vocab: c.Vocab, Hidden: c.Hidden, Heads: c.Heads, Layers: c.Layers, FFN: c.FFN,
		MaxPos: c.MaxPos, ProjDim: c.ProjDim, PreLN: c.PreLN, RemoveFinalLayerNorm: c.RemoveFinalLayerNorm,
		Tied: c.Tied, NoBias: c.NoBias, Activation: c.Activation, Eps: c.Eps}
}

// ONNXWeightShapes lists the canonical weights (name and [out, in] shape)
// of cfg, in model order, as WriteOPTONNX expects them.
func ONNXWeightShapes(cfg ONNXConfig) ([]string, [][]int) {
	return export.ONNXWeightShapes(cfg.exportConfig())
}

func (c ONNXConfig) projDim() int {
	if c.ProjDim == 0 {
		return c.Hidden
	}
	return c.ProjDim
}

// WriteOPTONNX writes an ONNX model of an OPT causal LM with config cfg
// and weights tensors (canonical names, [out, in] linear weights, as
// ONNXWeightShapes lists them; an lm_head.weight is ignored when Tied)
// to path, shaped like torch.onnx.export's output: input input_ids
// [batch, seq] int64, output logits [batch, seq, vocab]; Gather
// embeddings (positions 2..seq+1), LayerNormalization, linear layers as
// MatMul + Add, attention as Reshape/Transpose/MatMul/Softmax with a
// causal mask, the activation, residual Adds, the LM head as a MatMul.
// Weights stored as F16 or BF16 are Cast to float. It is
// export.WriteOPTONNX with producer_name "slope testmodels".
func WriteOPTONNX(path string, cfg ONNXConfig, tensors []NamedTensor, opts ONNXOptions) error {
	return export.WriteOPTONNX(path, cfg.exportConfig(), tensors, export.ONNXOptions{
		ExternalData: opts.ExternalData, ExternalName: opts.ExternalName, CanonicalWeights: opts.CanonicalWeights,
		DecomposeLayerNorm: opts.DecomposeLayerNorm, TypedData: opts.TypedData, CopyTiedHead: opts.CopyTiedHead,
		OpaqueNames: opts.OpaqueNames, WithPast: opts.WithPast, ProducerName: "slope testmodels",
	})
}

func numel(shape []int) int {
	n := 1
	for _, d := range shape {
		n *= d
	}
	return n
}

// onnxPastName is the name of layer i's past key or value input (kv is
// "key" or "value") of a WithPast graph.
func onnxPastName(i int, kv string) string {
	return "past_key_values." + strconv.Itoa(i) + "." + kv
}

// onnxPresentName is the name of layer i's present key or value output.
func onnxPresentName(i int, kv string) string {
	return "present." + strconv.Itoa(i) + "." + kv
}
