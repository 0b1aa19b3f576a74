package testmodels

import (
	"github.com/slopeml/slope/export"
	"github.com/slopeml/slope/format/slopepb"
)

// TensorHeader is a tensor's name, shape and stored dtype ("F32", "F16"
// or "BF16"), without its values (export.TensorHeader).
type TensorHeader = export.TensorHeader

// dtypeOf maps the stored dtype names of NamedTensor to slopepb.
func dtypeOf(s string) (slopepb.DType, error) { return export.DTypeOf(s) }

// WriteSafetensors writes tensors, in order, to a safetensors file at
// path. Values are encoded in each tensor's DType (rounding to nearest).
func WriteSafetensors(path string, tensors []NamedTensor, metadata map[string]string) error {
	hs := make([]TensorHeader, len(tensors))
	for i, t := range tensors {
		hs[i] = t.Header()
	}
	return WriteSafetensorsFunc(path, hs, metadata, func(i int) ([]float32, error) { return tensors[i].Data, nil })
}

// WriteSafetensorsFunc writes a safetensors file at path whose tensors
// are headers, in order; data(i) supplies the values of headers[i] when
// they are written, so that only one tensor need be in memory at a time
// (export.WriteSafetensorsFunc).
func WriteSafetensorsFunc(path string, headers []TensorHeader, metadata map[string]string, data func(i int) ([]float32, error)) error {
	return export.WriteSafetensorsFunc(path, headers, metadata, data)
}
