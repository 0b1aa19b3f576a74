package ops

import "github.com/slopeml/slope/format"

// Training interfaces (issue 6). A backend that can train binds nodes as
// GradSteps: steps that own float32 master copies of their weights
// (Params), run forward from them, and run backward.
//
// Conventions, for every op:
//   - Backward gets the same Call, the forward's inputs and output, and
//     gout = ∂L/∂out ([rows, OutDim]).
//   - It ADDS ∂L/∂in[i] into gin[i] (same shape as in[i]); a nil gin[i]
//     means that gradient is not wanted. It ADDS each parameter's
//     gradient into its Param.Grad. Nothing is overwritten, so gradients
//     from several consumers of a value, and over micro-batches,
//     accumulate.
//   - Backward of CausalAttention needs no KV cache: training calls run
//     whole sequences (Past = 0, Cache = nil).

// Param is a trainable tensor of a GradStep.
type Param struct {
	// Name is the container's tensor name. Two steps may share a Param
	// (a tied LM head and the token embedding): they return the same
	// pointer, and both add into its Grad.
	Name string
	// Value holds the float32 master values, Grad their gradient (same
	// length). A dense tensor is row-major in its shape; an N:M weight
	// holds its kept values only, in the container's values order.
	Value, Grad []float32
	Shape       []int
	// NM is set for the N:M weight of a SlopeLinear.
	NM *NMParam
}

// NMParam describes an N:M weight [Rows, Cols] whose kept values are a
// Param's Value.
type NMParam struct {
	Pattern    format.NM
	Rows, Cols int
	// Idx is the in-group index of each kept value (static: W's mask
	// never changes).
	Idx []uint8
	// TKeep marks the kept values that survive the double pruning (the
	// transpose mask, in values order): the input gradient is
	// ∂L/∂X = ∂L/∂Y · W_dp, W_dp holding only these. The trainer
	// recomputes it every --mask-refresh steps.
	TKeep []bool
}

// GradStep is a Step with a backward pass.
type GradStep interface {
	Step
	// Backward adds ∂L/∂in into gin and parameter gradients into
	// Params()[k].Grad (see the conventions above).
	Backward(c *Call, in []*Value, out *Value, gout *Value, gin []*Value) error
	// Params lists the step's trainable tensors (nil for none).
	Params() []*Param
}

// ParamStore gives GradSteps their Params by tensor name, so that steps
// naming the same tensor share one Param.
type ParamStore interface {
	// Param returns the Param of tensor name, creating it from the
	// container on first use.
	Param(name string) (*Param, error)
}

// GradBackend binds nodes as GradSteps.
type GradBackend interface {
	Backend
	BindGrad(b Binding, params ParamStore) (GradStep, error)
}
