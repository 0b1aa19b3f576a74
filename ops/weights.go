package ops

import (
	"fmt"

	"github.com/slopeml/slope/format/slopepb"
)

// weight loads a float tensor as dense float32 and checks its shape
// against want (-1 matches any size).
func weight(b Binding, input int, want ...int) ([]float32, []int, error) {
	n := b.Node
	name := n.Input(input)
	if name == "" {
		return nil, nil, n.errorf("input %d (a weight) is missing", input)
	}
	t, err := b.W.Lookup(name)
	if err != nil {
		return nil, nil, fmt.Errorf("node %q: %w", n.Name, err)
	}
	shape := make([]int, len(t.Shape))
	for i, d := range t.Shape {
		shape[i] = int(d)
	}
	if len(shape) != len(want) {
		return nil, nil, n.errorf("weight %q has shape %v, want %d dims", name, shape, len(want))
	}
	for i, w := range want {
		if w >= 0 && shape[i] != w {
			return nil, nil, n.errorf("weight %q has shape %v, want %v (-1: any)", name, shape, want)
		}
	}
	switch t.Dtype {
	case slopepb.DType_FLOAT32, slopepb.DType_FLOAT16, slopepb.DType_BFLOAT16:
	default:
		return nil, nil, fmt.Errorf("node %q: weight %q has dtype %s: %w", n.Name, name, t.Dtype, ErrUnsupported)
	}
	data, err := b.W.Dense(name)
	if err != nil {
		return nil, nil, fmt.Errorf("node %q: %w", n.Name, err)
	}
	return data, shape, nil
}

// optionalWeight is weight for an optional input: nil when omitted.
func optionalWeight(b Binding, input int, want ...int) ([]float32, error) {
	if b.Node.Input(input) == "" {
		return nil, nil
	}
	w, _, err := weight(b, input, want...)
	return w, err
}

// inDim is the width of activation input i of the binding.
func inDim(b Binding, i int) (int, error) {
	if i >= len(b.InDims) {
		return 0, b.Node.errorf("needs %d activation inputs, has %d", i+1, len(b.InDims))
	}
	return b.InDims[i], nil
}

// Helpers for backends outside this package (package cuda binds the same
// nodes): the same checks and errors as the CPU backend's.

// WeightF32 loads weight input i of a node as dense float32 with its
// shape, checked against want (-1 matches any size).
func WeightF32(b Binding, input int, want ...int) ([]float32, []int, error) {
	return weight(b, input, want...)
}

// InDim is the width of activation input i of a binding.
func InDim(b Binding, i int) (int, error) { return inDim(b, i) }

// AdapterScale is the scale stored with the adapter factor at input i.
func AdapterScale(b Binding, input int) (float32, error) { return adapterScale(b, input) }
