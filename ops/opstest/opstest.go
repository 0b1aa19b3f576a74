// Package opstest is the conformance suite of the ai.slope op set: Run
// checks every op of a backend against float64 references written here
// independently of any backend, on random shapes (ragged sizes, every
// float dtype, several N:M patterns, adapters, padding and the KV cache).
// Every backend's tests call Run with their own backend value.
package opstest

import (
	"fmt"
	"math"
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/format/onnxpb"
	"github.com/slopeml/slope/format/slopepb"
	"github.com/slopeml/slope/ops"
)

// Tolerance of a backend's float32 result against the float64 reference:
// |got - want| <= Abs + Rel*scale, scale being the sum of absolute terms
// that made the value (so accumulation order does not matter).
type Tolerance struct{ Abs, Rel float64 }

// DefaultTolerance fits float32 accumulation.
var DefaultTolerance = Tolerance{Abs: 1e-5, Rel: 2e-6}

// Run runs the whole suite on backend.
func Run(t *testing.T, backend ops.Backend, tol Tolerance) {
	t.Run("LayerNorm", func(t *testing.T) { testLayerNorm(t, backend, tol) })
	t.Run("Activations", func(t *testing.T) { testActivations(t, backend, tol) })
	t.Run("Add", func(t *testing.T) { testAdd(t, backend, tol) })
	t.Run("Linear", func(t *testing.T) { testLinear(t, backend, tol) })
	t.Run("SlopeLinear", func(t *testing.T) { testSlopeLinear(t, backend, tol) })
	t.Run("LMHead", func(t *testing.T) { testLMHead(t, backend, tol) })
	t.Run("Embedding", func(t *testing.T) { testEmbedding(t, backend, tol) })
	t.Run("CausalAttention", func(t *testing.T) { testAttention(t, backend, tol) })
	t.Run("MissingKernel", func(t *testing.T) { testMissing(t, backend) })
}

// weights builds a container of the given tensors and opens it.
type weights struct {
	t  *testing.T
	w  *format.Writer
	fn string
}

func newWeights(t *testing.T) *weights {
	fn := filepath.Join(t.TempDir(), "w.slope")
	w, err := format.Create(fn, &format.WriterOptions{Alignment: 64})
	if err != nil {
		t.Fatal(err)
	}
	return &weights{t: t, w: w, fn: fn}
}

func (b *weights) dense(name string, dt slopepb.DType, shape []uint64, data []float32) {
	if err := b.w.WriteDense(name, dt, shape, data); err != nil {
		b.t.Fatal(err)
	}
}

func (b *weights) open() *format.File {
	if err := b.w.Close(); err != nil {
		b.t.Fatal(err)
	}
	f, err := format.Open(b.fn, nil)
	if err != nil {
		b.t.Fatal(err)
	}
	b.t.Cleanup(func() { f.Close() })
	return f
}

// roundTo rounds values to what dtype stores.
func roundTo(dt slopepb.DType, x []float32) {
	for i, v := range x {
		switch dt {
		case slopepb.DType_FLOAT16:
			x[i] = format.Float16ToFloat32(format.Float32ToFloat16(v))
		case slopepb.DType_BFLOAT16:
			x[i] = format.BFloat16ToFloat32(format.Float32ToBFloat16(v))
		}
	}
}

func randn(rng *rand.Rand, n int, scale float64) []float32 {
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(rng.NormFloat64() * scale)
	}
	return x
}

func node(op string, inputs []string, attrs ...*onnxpb.AttributeProto) *ops.Node {
	return ops.NewNode(0, &onnxpb.NodeProto{Name: "n", OpType: op, Domain: format.GraphDomain, Input: inputs, Output: []string{"y"}, Attribute: attrs})
}

func intAttr(name string, v int64) *onnxpb.AttributeProto {
	return &onnxpb.AttributeProto{Name: name, Type: onnxpb.AttributeProto_INT, I: v}
}

func floatAttr(name string, v float32) *onnxpb.AttributeProto {
	return &onnxpb.AttributeProto{Name: name, Type: onnxpb.AttributeProto_FLOAT, F: v}
}

// call is a call of batch sequences of seq new tokens, mask all ones.
func call(batch, seq int) *ops.Call {
	c := &ops.Call{Batch: batch, Seq: seq, IDs: make([]int32, batch*seq), Mask: make([]int32, batch*seq)}
	for i := range c.Mask {
		c.Mask[i] = 1
	}
	return c
}

func value(rows, dim int, data []float32) *ops.Value {
	return &ops.Value{Rows: rows, Dim: dim, Data: data}
}

// run binds and runs one node.
func run(t *testing.T, be ops.Backend, n *ops.Node, w ops.Weights, c *ops.Call, in ...*ops.Value) *ops.Value {
	t.Helper()
	dims := make([]int, len(in))
	for i, v := range in {
		dims[i] = v.Dim
	}
	s, err := be.Bind(ops.Binding{Node: n, InDims: dims, W: w})
	if err != nil {
		t.Fatalf("bind %s: %v", n.OpType, err)
	}
	out := value(c.Rows(), s.OutDim(), make([]float32, c.Rows()*s.OutDim()))
	if err := s.Forward(c, in, out); err != nil {
		t.Fatalf("forward %s: %v", n.OpType, err)
	}
	return out
}

// compare checks got against want element by element; scale[i] is the
// magnitude the tolerance is relative to (nil: |want|).
func compare(t *testing.T, what string, got []float32, want, scale []float64, tol Tolerance) {
	t.Helper()
	if len(got) < len(want) {
		t.Fatalf("%s: %d values, want %d", what, len(got), len(want))
	}
	for i, w := range want {
		s := math.Abs(w)
		if scale != nil {
			s = scale[i]
		}
		if d := math.Abs(float64(got[i]) - w); d > tol.Abs+tol.Rel*s || math.IsNaN(float64(got[i])) {
			t.Fatalf("%s: element %d = %g, want %g (|Δ| %g > %g)", what, i, got[i], w, d, tol.Abs+tol.Rel*s)
		}
	}
}

var floatDTypes = []slopepb.DType{slopepb.DType_FLOAT32, slopepb.DType_FLOAT16, slopepb.DType_BFLOAT16}

func name(parts ...any) string { return fmt.Sprint(parts...) }
