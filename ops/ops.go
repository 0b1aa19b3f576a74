package ops

import (
	"errors"
	"fmt"
	"math"

	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/format/onnxpb"
	"github.com/slopeml/slope/format/slopepb"
)

// Op types of domain ai.slope, version 1.
const (
	OpEmbedding       = "Embedding"
	OpLayerNorm       = "LayerNorm"
	OpLinear          = "Linear"
	OpSlopeLinear     = "SlopeLinear"
	OpCausalAttention = "CausalAttention"
	OpAdd             = "Add"
	OpLMHead          = "LMHead"
	OpRelu            = "Relu"
	OpGelu            = "Gelu"
	OpGeluTanh        = "GeluTanh"
	OpSilu            = "Silu"
	OpTanh            = "Tanh"
	OpSigmoid         = "Sigmoid"
)

// ErrUnsupported is wrapped when a backend has no kernel for an op (or for
// a dtype or encoding an op's weight uses).
var ErrUnsupported = errors.New("unsupported by backend")

// ErrBadNode is wrapped when a node breaks its op's contract (inputs,
// attributes, weight shapes).
var ErrBadNode = errors.New("invalid node")

// Value is an activation: rows x dim float32, row-major.
type Value struct {
	Rows, Dim int
	Data      []float32
}

// Row returns row r.
func (v *Value) Row(r int) []float32 { return v.Data[r*v.Dim : (r+1)*v.Dim] }

// Call is what the steps of one forward pass share.
type Call struct {
	// Batch sequences of Seq new tokens each: rows = Batch*Seq.
	Batch, Seq int
	// Past is the number of tokens per sequence already in Cache.
	Past int
	// IDs of the new tokens, [Batch*Seq].
	IDs []int32
	// Mask over all tokens so far, [Batch*(Past+Seq)]: 1 token, 0 padding.
	Mask []int32
	// Cache holds keys and values of earlier calls; nil keeps none.
	Cache *KVCache
	// DeviceCache is Cache for a DeviceBackend (see DeviceStep).
	DeviceCache DeviceCache
	// Threads bounds the goroutines a step uses (<= 0: GOMAXPROCS).
	Threads int
}

// Rows is Batch*Seq.
func (c *Call) Rows() int { return c.Batch * c.Seq }

// KVCache keeps the keys and values of each attention layer for Batch
// sequences of up to MaxLen tokens.
type KVCache struct {
	Batch, MaxLen int
	layers        map[int]*kvLayer
}

type kvLayer struct {
	dim  int
	k, v []float32 // [Batch, MaxLen, dim]
}

// NewKVCache makes an empty cache.
func NewKVCache(batch, maxLen int) *KVCache {
	return &KVCache{Batch: batch, MaxLen: maxLen, layers: map[int]*kvLayer{}}
}

// layer returns the buffers of attention layer id, allocating them on
// first use; a later use with another width is an error (another model's
// layer with the same id).
func (c *KVCache) layer(id, dim int) (*kvLayer, error) {
	l := c.layers[id]
	if l == nil {
		n := c.Batch * c.MaxLen * dim
		l = &kvLayer{dim: dim, k: make([]float32, n), v: make([]float32, n)}
		c.layers[id] = l
	}
	if l.dim != dim {
		return nil, fmt.Errorf("attention: the cache's layer %d holds width %d, not %d", id, l.dim, dim)
	}
	return l, nil
}

// Weights is where bound nodes get their tensors (a *format.File).
type Weights interface {
	Lookup(name string) (*slopepb.Tensor, error)
	// Dense decodes any float tensor to dense float32 (NM expanded).
	Dense(name string) ([]float32, error)
	// NM returns an NM tensor's sections in place.
	NM(name string) (*format.NMView, error)
	// Raw returns a tensor's raw encoding (in place when uncompressed).
	Raw(name string) ([]byte, error)
}

// Node is a graph node with parsed attributes, as backends bind it.
type Node struct {
	Name, OpType string
	Inputs       []string
	Outputs      []string
	// ID numbers the node within its graph (stable across binds); the
	// KV cache is keyed by it.
	ID    int
	attrs map[string]*onnxpb.AttributeProto
}

// NewNode wraps an ONNX node.
func NewNode(id int, n *onnxpb.NodeProto) *Node {
	a := make(map[string]*onnxpb.AttributeProto, len(n.Attribute))
	for _, at := range n.Attribute {
		a[at.Name] = at
	}
	return &Node{Name: n.Name, OpType: n.OpType, Inputs: n.Input, Outputs: n.Output, ID: id, attrs: a}
}

// Input returns input i, "" when absent or omitted.
func (n *Node) Input(i int) string {
	if i < len(n.Inputs) {
		return n.Inputs[i]
	}
	return ""
}

// Int returns an INT attribute, def when absent.
func (n *Node) Int(name string, def int64) (int64, error) {
	a, ok := n.attrs[name]
	if !ok {
		return def, nil
	}
	if a.Type != onnxpb.AttributeProto_INT {
		return 0, n.errorf("attribute %q is %s, want INT", name, a.Type)
	}
	return a.I, nil
}

// Float returns a FLOAT attribute, def when absent.
func (n *Node) Float(name string, def float32) (float32, error) {
	a, ok := n.attrs[name]
	if !ok {
		return def, nil
	}
	if a.Type != onnxpb.AttributeProto_FLOAT {
		return 0, n.errorf("attribute %q is %s, want FLOAT", name, a.Type)
	}
	return a.F, nil
}

// LayerNormEpsilon is a LayerNorm node's epsilon (default 1e-5), which
// must be finite and not negative: a NaN would make every output NaN.
func (n *Node) LayerNormEpsilon() (float32, error) {
	eps, err := n.Float("epsilon", 1e-5)
	if err != nil {
		return 0, err
	}
	if !(eps >= 0) || math.IsInf(float64(eps), 1) {
		return 0, n.errorf("epsilon %v: want a finite value, not negative", eps)
	}
	return eps, nil
}

func (n *Node) errorf(format string, a ...any) error {
	return fmt.Errorf("node %q (%s): %s: %w", n.Name, n.OpType, fmt.Sprintf(format, a...), ErrBadNode)
}

// Step is a node bound to a kernel, with its weights resolved.
type Step interface {
	// OutDim is the width of the step's output.
	OutDim() int
	// Forward computes out (Rows = c.Rows(), Dim = OutDim()) from in, the
	// values of the node's activation inputs in order.
	Forward(c *Call, in []*Value, out *Value) error
}

// Binding tells a backend, for each activation input of a node, its
// width; weights are looked up by name.
type Binding struct {
	Node *Node
	// InDims are the widths of the node's activation inputs (in order of
	// ActivationInputs).
	InDims []int
	W      Weights
}

// Backend binds nodes to steps.
type Backend interface {
	Name() string
	// Bind prepares a node; an op without a kernel wraps ErrUnsupported.
	Bind(b Binding) (Step, error)
}

// ActivationInputs lists the input positions of op that are activations
// (values computed by the graph); the others are weights or the graph
// inputs input_ids / attention_mask, which reach steps through the Call.
func ActivationInputs(op string) ([]int, error) {
	switch op {
	case OpEmbedding:
		return nil, nil
	case OpLayerNorm, OpLinear, OpSlopeLinear, OpLMHead, OpRelu, OpGelu, OpGeluTanh, OpSilu, OpTanh, OpSigmoid:
		return []int{0}, nil
	case OpCausalAttention:
		return []int{0, 1, 2}, nil
	case OpAdd:
		return []int{0, 1}, nil
	}
	return nil, fmt.Errorf("op %q is not in ai.slope version 1: %w", op, ErrUnsupported)
}
