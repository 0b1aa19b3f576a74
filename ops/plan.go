package ops

import (
	"errors"
	"fmt"

	"github.com/slopeml/slope/format/onnxpb"
)

// Names of a container graph's inputs and output.
const (
	InputIDs      = "input_ids"
	AttentionMask = "attention_mask"
	OutputLogits  = "logits"
)

// ErrGraph is wrapped when a container's graph cannot be compiled: no
// graph, missing inputs or output, a value used before it is computed.
var ErrGraph = errors.New("graph cannot be compiled")

// Planned is one bound node of a Plan: which value slots it reads and
// writes.
type Planned[S any] struct {
	Node *Node
	Step S
	In   []int // value slots of its activation inputs, in order
	Out  int   // the slot of its output
	Dim  int   // the width of its output
	// Free lists the slots whose last reader is this node (the logits'
	// slot is never freed).
	Free []int
}

// Plan is a graph compiled into a list of bound nodes in graph order,
// each value given a slot. Inference (package runtime) and training
// (package train) compile graphs through it with their own binders.
type Plan[S any] struct {
	Steps []Planned[S]
	// Dims are the widths of the value slots; Logits is the slot of the
	// graph's output.
	Dims   []int
	Logits int
}

// Compile checks g's interface (inputs InputIDs and AttentionMask, the
// single output OutputLogits), then binds its nodes in order with bind,
// which gets each node's Binding (weights from w).
func Compile[S interface{ OutDim() int }](g *onnxpb.GraphProto, w Weights, bind func(Binding) (S, error)) (*Plan[S], error) {
	if g == nil || len(g.Node) == 0 {
		return nil, fmt.Errorf("no graph: %w", ErrGraph)
	}
	inputs := map[string]bool{}
	for _, in := range g.Input {
		inputs[in.GetName()] = true
	}
	if !inputs[InputIDs] || !inputs[AttentionMask] {
		return nil, fmt.Errorf("graph inputs must include %s and %s: %w", InputIDs, AttentionMask, ErrGraph)
	}
	if len(g.Output) != 1 || g.Output[0].GetName() != OutputLogits {
		return nil, fmt.Errorf("graph must have the single output %s: %w", OutputLogits, ErrGraph)
	}
	p := &Plan[S]{}
	slot := map[string]int{}
	lastUse := map[int]int{}
	for i, n := range g.Node {
		node := NewNode(i, n)
		acts, err := ActivationInputs(n.OpType)
		if err != nil {
			return nil, fmt.Errorf("node %q: %w", n.Name, err)
		}
		ps := Planned[S]{Node: node}
		var inDims []int
		for _, a := range acts {
			name := node.Input(a)
			s, ok := slot[name]
			if !ok {
				return nil, fmt.Errorf("node %q: input %d %q is not a computed value: %w", n.Name, a, name, ErrGraph)
			}
			ps.In = append(ps.In, s)
			inDims = append(inDims, p.Dims[s])
			lastUse[s] = i
		}
		if len(n.Output) != 1 {
			return nil, fmt.Errorf("node %q: %d outputs, want 1: %w", n.Name, len(n.Output), ErrGraph)
		}
		if ps.Step, err = bind(Binding{Node: node, InDims: inDims, W: w}); err != nil {
			return nil, err
		}
		ps.Out, ps.Dim = len(p.Dims), ps.Step.OutDim()
		slot[n.Output[0]] = ps.Out
		p.Dims = append(p.Dims, ps.Dim)
		p.Steps = append(p.Steps, ps)
	}
	out, ok := slot[OutputLogits]
	if !ok {
		return nil, fmt.Errorf("no node computes %s: %w", OutputLogits, ErrGraph)
	}
	p.Logits = out
	lastUse[out] = len(p.Steps) // the output outlives the plan
	for s, i := range lastUse {
		if i < len(p.Steps) {
			p.Steps[i].Free = append(p.Steps[i].Free, s)
		}
	}
	return p, nil
}
