package testmodels

import "github.com/slopeml/slope/export"

// NamedTensor is one weight of a generated checkpoint, as the writers of
// this package (safetensors, PyTorch .bin, ONNX) take it: Name, Shape,
// DType (the stored dtype: "F32", "F16" or "BF16"; Data holds values
// already representable in it) and Data. It is export.Tensor, whose
// writers these are.
type NamedTensor = export.Tensor
