package ops

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
