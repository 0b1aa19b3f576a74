package convert

import "github.com/slopeml/slope/format/slopepb"

// StoredTensor describes one tensor of a checkpoint file, under the key
// the file uses.
type StoredTensor struct {
	Key   string
	DType slopepb.DType // FLOAT32, FLOAT16 or BFLOAT16; DTYPE_UNSPECIFIED for others
	// SourceDType is the file's own name for the dtype ("F16", "torch.HalfStorage", ...).
	SourceDType string
	Shape       []int
}

// TensorStore is one checkpoint file seen as a table of named tensors,
// read one at a time (safetensors, a PyTorch zip .bin, a shard of either).
// Keys are the file's own; mapping them to canonical names is the
// Source's job.
type TensorStore interface {
	// Name is the file's label in errors and provenance.
	Name() string
	// Keys lists the tensors in file order.
	Keys() []string
	// Stored describes one tensor without reading it.
	Stored(key string) (StoredTensor, bool)
	// ReadFloat32 reads one float tensor (fp32, fp16, bf16) as row-major
	// float32; other dtypes are an error naming the tensor.
	ReadFloat32(key string) ([]float32, error)
	Close() error
}

// Keys implements TensorStore.
func (s *Safetensors) Keys() []string { return s.Names() }

// Stored implements TensorStore.
func (s *Safetensors) Stored(key string) (StoredTensor, bool) {
	e, ok := s.Entry(key)
	if !ok {
		return StoredTensor{}, false
	}
	dt, _ := SafetensorsDType(e.DType)
	return StoredTensor{Key: key, DType: dt, SourceDType: e.DType, Shape: e.Shape}, true
}

var _ TensorStore = (*Safetensors)(nil)
