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

// ONNXConfig is the architecture of an OPT model written by WriteOPTONNX
// (export.ONNXConfig).
type ONNXConfig = export.ONNXConfig

// ONNXOptions choose how WriteOPTONNX lays the model out
// (export.ONNXOptions).
type ONNXOptions = export.ONNXOptions

// ONNXWeightShapes lists the canonical weights (name and [out, in] shape)
// of cfg, in model order, as WriteOPTONNX expects them.
func ONNXWeightShapes(cfg ONNXConfig) ([]string, [][]int) { return export.ONNXWeightShapes(cfg) }

// WriteOPTONNX is export.WriteOPTONNX with producer_name "slope
// testmodels" unless opts names another: an ONNX model shaped like
// torch.onnx.export's output (see export.WriteOPTONNX).
func WriteOPTONNX(path string, cfg ONNXConfig, tensors []NamedTensor, opts ONNXOptions) error {
	if opts.ProducerName == "" {
		opts.ProducerName = "slope testmodels"
	}
	return export.WriteOPTONNX(path, cfg, tensors, opts)
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
