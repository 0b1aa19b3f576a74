package convert

import (
	"errors"

	"github.com/slopeml/slope/format/slopepb"
)

// ErrCheckpoint is wrapped by errors about a checkpoint whose files are
// well-formed but do not make up a valid model: weights missing or of the
// wrong shape or dtype, an inconsistent shard index.
var ErrCheckpoint = errors.New("invalid checkpoint")

// Source is a dense checkpoint seen through canonical names.
type Source interface {
	// Config is the architecture config (fields that change the math).
	Config() *slopepb.OPTConfig
	// Names lists the canonical weight names, in model order.
	Names() []string
	// Tensor loads one weight on demand, decoded to float32, in canonical
	// orientation.
	Tensor(name string) (*Tensor, error)
	// Files describes the source files (path, size, SHA-256, format).
	Files() []*slopepb.SourceFile
	// Warnings are non-fatal findings, e.g. source tensors that were not
	// expected and are ignored.
	Warnings() []string
	// Close releases the open files.
	Close() error
}

// rawSource is a Source that can also hand out a weight's stored bytes
// (little-endian elements of its DType, already in canonical orientation)
// without decoding them: the converter reads those when it stores the
// weight in the dtype it has.
type rawSource interface {
	Source
	// StoredTensor describes a weight without reading it (Data nil); ok is
	// false when its bytes cannot be read raw.
	StoredTensor(name string) (t *Tensor, ok bool)
	// TensorRaw reads a weight's stored bytes into buf when it has the
	// capacity, else into a new slice, and returns them.
	TensorRaw(name string, buf []byte) ([]byte, error)
}

// Tensor is one weight of a Source.
type Tensor struct {
	// Name is the canonical name; SourceName the name in the checkpoint.
	Name, SourceName string
	// DType is the dtype the checkpoint stores it in.
	DType slopepb.DType
	// Shape in canonical orientation.
	Shape []int
	// Data is the row-major values, decoded to float32.
	Data []float32
}

// Numel is the number of elements of the tensor's shape.
func (t *Tensor) Numel() int {
	n := 1
	for _, d := range t.Shape {
		n *= d
	}
	return n
}
