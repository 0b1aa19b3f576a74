package export

import "slices"

// Tensor is one named float tensor with its values, as the writers of
// this package take it (package testmodels' NamedTensor).
type Tensor struct {
	Name  string
	Shape []int
	// DType is the stored dtype: "F32", "F16" or "BF16". Data holds values
	// (rounded to it when written).
	DType string
	Data  []float32
}

// Header returns t without its data.
func (t Tensor) Header() TensorHeader {
	return TensorHeader{Name: t.Name, Shape: slices.Clone(t.Shape), DType: t.DType}
}
