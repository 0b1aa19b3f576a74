package ops

import "github.com/slopeml/slope/ops/cpu"

// Device execution. A backend whose memory is not the host's (a GPU)
// implements DeviceBackend, and its steps implement DeviceStep: the
// runtime then keeps every activation in the backend's memory, passing
// Tensors from step to step, and copies only the call's ids and mask in
// and the logits out. Such steps still implement Step (copying their
// inputs in and their output out), so the shared conformance suite
// (ops/opstest) runs them unchanged.

// Tensor is an activation in a backend's memory: Rows() x Dim() values,
// row-major, in the backend's activation type.
type Tensor interface {
	Rows() int
	Dim() int
}

// DeviceCache is a backend's key/value cache for one session.
type DeviceCache interface {
	// Release frees the cache's memory.
	Release() error
}

// DeviceStep is a Step that computes on Tensors.
type DeviceStep interface {
	Step
	// ForwardDevice is Forward on backend memory; c.DeviceCache, when
	// set, is the session's cache made by the same backend.
	ForwardDevice(c *Call, in []Tensor, out Tensor) error
}

// DeviceBackend is a Backend with its own memory. All methods other than
// Do, NewCache and Close must run inside Do (on the backend's thread), as
// must every DeviceStep.ForwardDevice.
type DeviceBackend interface {
	Backend
	// Do runs fn where the backend's calls are valid.
	Do(fn func() error) error
	// Begin makes the call's ids and mask available to the steps.
	Begin(c *Call) error
	// Acquire returns a tensor of rows x dim (from a pool); Release
	// returns it.
	Acquire(rows, dim int) (Tensor, error)
	Release(t Tensor)
	// GatherRows sets dst's row i to src's row rows[i].
	GatherRows(dst, src Tensor, rows []int) error
	// Download copies t into out (resized to t's shape) as float32.
	Download(t Tensor, out *Value) error
	// NewCache makes a key/value cache for batch sequences of maxLen
	// tokens (memory is taken lazily, per attention layer).
	NewCache(batch, maxLen int) (DeviceCache, error)
}

// Device training. A GradBackend whose memory is not the host's may keep
// the training state there (DeviceGradBackend): the trainer (package
// train) then runs forward and backward on Tensors and the optimizer on
// the backend, and copies Params to and from the host only when the host
// needs them (checkpoints, mask refreshes, new adapters).

// DeviceGradStep is a GradStep whose passes also run on Tensors.
type DeviceGradStep interface {
	GradStep
	DeviceStep
	// BackwardDevice is Backward on backend memory: it adds ∂L/∂in into
	// gin (nil entries: not wanted) and each Param's gradient into the
	// backend's gradient of it (DeviceOptimizer), from the Params' values
	// in backend memory.
	BackwardDevice(c *Call, in []Tensor, out, gout Tensor, gin []Tensor) error
}

// DeviceGradBackend is a GradBackend that can hold the training state.
// Its methods other than BindGrad, Do and NewCache run inside Do.
type DeviceGradBackend interface {
	GradBackend
	DeviceBackend
	// CrossEntropy computes the loss of each row r of logits
	// [rows, vocab] whose targets[r] >= 0: loss[r] = log Σ exp(row) −
	// row[targets[r]] (0 where targets[r] < 0); with grad it overwrites
	// logits with the gradient of scale·Σ loss (zero rows where
	// targets[r] < 0).
	CrossEntropy(logits Tensor, targets []int32, scale float64, grad bool, loss []float64) error
	// Zero sets every value of t to 0.
	Zero(t Tensor) error
	// NewOptimizer keeps params (bound by this backend's steps) with
	// their gradients and AdamW moments in backend memory.
	NewOptimizer(params []*Param) (DeviceOptimizer, error)
	// ReleaseParams frees the backend's copies of params; steps bound
	// with them must not run again.
	ReleaseParams(params []*Param) error
}

// DeviceOptimizer is the training state of a list of Params in a
// backend's memory; k numbers them in the list's order. Its methods run
// inside the backend's Do.
type DeviceOptimizer interface {
	// Load copies the host Params' values and transpose masks, and the
	// moments m[k], v[k] of every Param k, in.
	Load(m, v [][]float32) error
	// Store copies every Param's values into its Value and its moments
	// into m[k], v[k].
	Store(m, v [][]float32) error
	// ZeroGrads sets every gradient to 0.
	ZeroGrads() error
	// SumSquares returns the sum of the squares of every gradient.
	SumSquares() (float64, error)
	// AdamW updates Param k as cpu.AdamW does, to the same bits given the
	// same gradient.
	AdamW(k int, st cpu.AdamWStep) error
	// RefreshMasks recomputes the transpose mask of every N:M Param whose
	// rows are a multiple of M from its values, as
	// format.DoublePruneMagnitude decides; Store then copies the masks
	// out too. It returns an error wrapping ErrUnsupported, and changes
	// nothing, when it cannot for some Param's pattern.
	RefreshMasks() error
	// Close frees the backend memory of the moments.
	Close() error
}
