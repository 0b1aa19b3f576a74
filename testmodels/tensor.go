package testmodels

// NamedTensor is one weight of a generated checkpoint, as the writers of
// this package (safetensors, PyTorch .bin, ONNX) take it.
type NamedTensor struct {
	Name  string
	Shape []int
	// DType is the stored dtype: "F32", "F16" or "BF16". Data holds values
	// already representable in it.
	DType string
	Data  []float32
}
