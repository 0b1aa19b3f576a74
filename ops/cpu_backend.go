package ops

import (
	"fmt"
	"github.com/slopeml/slope/ops/cpu"
	"runtime"
)

// BindFunc binds one node on a backend.
type BindFunc func(b Binding) (Step, error)

// Registry maps op types to kernels. Each backend value owns one; there is
// no package-level registry, so tests can build backends with any subset.
type Registry struct {
	name  string
	binds map[string]BindFunc
}

// NewRegistry makes an empty registry for a backend named name.
func NewRegistry(name string) *Registry {
	return &Registry{name: name, binds: map[string]BindFunc{}}
}

// Register sets the kernel of op (replacing an earlier one).
func (r *Registry) Register(op string, f BindFunc) { r.binds[op] = f }

// Name implements Backend.
func (r *Registry) Name() string { return r.name }

// Bind implements Backend.
func (r *Registry) Bind(b Binding) (Step, error) {
	f, ok := r.binds[b.Node.OpType]
	if !ok {
		return nil, fmt.Errorf("node %q: backend %s has no kernel for op %s: %w", b.Node.Name, r.name, b.Node.OpType, ErrUnsupported)
	}
	return f(b)
}

// Ops lists the registered op types.
func (r *Registry) Ops() []string {
	out := make([]string, 0, len(r.binds))
	for op := range r.binds {
		out = append(out, op)
	}
	return out
}

// NewCPU returns the CPU backend: every op of version 1, float32
// activations, weights in fp32, fp16 or bf16.
func NewCPU() *Registry {
	r := NewRegistry("cpu")
	r.Register(OpEmbedding, bindEmbedding)
	r.Register(OpLayerNorm, bindLayerNorm)
	r.Register(OpLinear, bindLinear)
	r.Register(OpSlopeLinear, bindSlopeLinear)
	r.Register(OpLMHead, bindLMHead)
	r.Register(OpCausalAttention, bindAttention)
	r.Register(OpAdd, bindAdd)
	for _, op := range []string{OpRelu, OpGelu, OpGeluTanh, OpSilu, OpTanh, OpSigmoid} {
		r.Register(op, bindActivation)
	}
	return r
}

// threads resolves a thread count.
func threads(n int) int {
	if n <= 0 {
		return runtime.GOMAXPROCS(0)
	}
	return n
}

// parallelRows runs f over [0, n) split into at most t contiguous chunks.
// Each index is handled by exactly one goroutine, so results do not
// depend on t.
func parallelRows(n, t int, f func(lo, hi int)) {
	cpu.ParallelFor(n, min(threads(t), n), f)
}

// checkValue verifies an activation's shape against a call.
func checkValue(what string, v *Value, rows, dim int) error {
	if v.Rows != rows || v.Dim != dim || len(v.Data) < rows*dim {
		return fmt.Errorf("%s: value is [%d %d] (%d floats), want [%d %d]", what, v.Rows, v.Dim, len(v.Data), rows, dim)
	}
	return nil
}
