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
// Param's Value. Its masks are held packed as the container stores them
// (2:4: 4 bits per group of 4 and 1 bit per kept value, against 2
// bytes per kept value unpacked), because they are part of the training
// state the SLoPe memory figures count; code that needs them unpacked
// asks for a copy (IdxCopy, TKeepCopy) when the masks change, not per
// step.
type NMParam struct {
	Pattern    format.NM
	Rows, Cols int
	// Indices holds the in-group index of each kept value, packed as the
	// container's index section (format.PackNMIndices: Rows rows of
	// Pattern.IndexRowBytes(Cols) bytes). Static: W's mask never changes.
	Indices []byte
	// TMask marks the kept values that survive the double pruning (the
	// transpose mask, packed as the container's NM_TRANSPOSE_MASK: one
	// bit per kept value, rows padded to bytes): the input gradient is
	// ∂L/∂X = ∂L/∂Y · W_dp, W_dp holding only these. Nil keeps every
	// value (Rows not a multiple of M: no column-wise pruning). The
	// trainer recomputes it every --mask-refresh steps (SetTKeep).
	TMask []byte
	// TMaskFrom names the container tensor TMask was loaded from ("" when
	// computed here). A refresh keeps it, so that binding the weight's node
	// again does not load the stored mask over the refreshed one.
	TMaskFrom string
}

// IdxCopy returns the unpacked in-group indices (one per kept value, in
// values order).
func (nm *NMParam) IdxCopy() ([]uint8, error) {
	kept, err := nm.Pattern.KeptPerRow(nm.Cols)
	if err != nil {
		return nil, err
	}
	idx := make([]uint8, nm.Rows*kept)
	if err := format.UnpackNMIndices(nm.Pattern, nm.Rows, nm.Cols, nm.Indices, idx); err != nil {
		return nil, err
	}
	return idx, nil
}

// TKeepCopy returns the unpacked transpose mask (one bool per kept
// value, in values order; all true when TMask is nil).
func (nm *NMParam) TKeepCopy() ([]bool, error) {
	kept, err := nm.Pattern.KeptPerRow(nm.Cols)
	if err != nil {
		return nil, err
	}
	keep := make([]bool, nm.Rows*kept)
	if nm.TMask == nil {
		for i := range keep {
			keep[i] = true
		}
		return keep, nil
	}
	if err := format.UnpackTransposeMask(nm.Pattern, nm.Rows, nm.Cols, nm.TMask, keep); err != nil {
		return nil, err
	}
	return keep, nil
}

// MagnitudeTKeep returns the transpose mask the kept values vals give by
// magnitude (format.DoublePruneMagnitude, the reference rule and the
// trainer's refresh), one bool per kept value. Rows must be a multiple of
// M.
func (nm *NMParam) MagnitudeTKeep(vals []float32) ([]bool, error) {
	idx, err := nm.IdxCopy()
	if err != nil {
		return nil, err
	}
	return format.DoublePruneMagnitude(nm.Pattern, nm.Rows, nm.Cols, vals, idx)
}

// SetTKeep packs keep (one bool per kept value) into TMask, reusing its
// buffer.
func (nm *NMParam) SetTKeep(keep []bool) error {
	n64, err := format.TransposeMaskSize(nm.Pattern, nm.Rows, nm.Cols)
	if err != nil {
		return err
	}
	n := int(n64)
	if cap(nm.TMask) < n {
		nm.TMask = make([]byte, n)
	}
	nm.TMask = nm.TMask[:n]
	return format.PackTransposeMask(nm.Pattern, nm.Rows, nm.Cols, keep, nm.TMask)
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
