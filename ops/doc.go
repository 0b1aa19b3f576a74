// Package ops defines the operator set of domain "ai.slope" (the ops that
// the nodes of a .slope container's graph name), the Backend interface
// through which a device provides kernels for them, and the CPU backend.
//
// # Data model
//
// Activations are float32 matrices [rows, dim], row-major, one row per
// token of the current call (rows = batch*seq, batch-major). Weights come
// from a Weights source (a *format.File) and are bound once, when a node
// is bound to a kernel; a bound node is a Step. A Call carries what every
// step of one forward pass shares: batch and sequence sizes, token ids,
// the attention mask and the key/value cache.
//
// # Op set, version 1 (normative for every backend)
//
// Inputs in order; "?" marks an optional input (the empty name in the
// graph); attributes with their defaults.
//
//	Embedding(input_ids, attention_mask, embed_tokens [V, P], embed_positions [Np, H], project_in? [H, P]) -> [rows, H]
//	    position_offset: int = 2. Row t of sequence b reads token ids[b,t]
//	    and position cumsum(mask[b, 0..t])*mask[b,t] - 1 + position_offset
//	    (OPT: positions count only real tokens, padding reads row 1). With
//	    project_in the token embedding is projected (x·project_inᵀ) first.
//	LayerNorm(x, weight?, bias?) -> x's shape      epsilon: float = 1e-5
//	Linear(x, weight [out, in], bias? [out]) -> [rows, out]        y = x·Wᵀ + b
//	SlopeLinear(x, weight NM [out(+r), in], bias?, transpose_mask?, L? [in, r], R? [r, out]) -> [rows, out]
//	    n, m: int (the weight's pattern); merged_rank: int = 0.
//	    y = x·Wᵀ + b + s·(x·L)·R, s = the adapter scale stored with L and R.
//	    With merged_rank r > 0 (SLoPe's inference layout) the weight has
//	    out + r rows, its last r rows being Lᵀ pruned with W, and L is
//	    absent: one sparse GEMM yields x·Wᵀ and x·L. The transpose mask is
//	    used by the backward pass only.
//	CausalAttention(q [rows, H], k [rows, H], v [rows, H], attention_mask) -> [rows, H]
//	    num_heads: int; scale: float (applied to q·kᵀ). Query t of sequence
//	    b sees keys j <= past+t with mask[b, j] = 1; keys and values of the
//	    call are appended to the Call's cache when it has one. A query that
//	    sees no key (padding at the start of a row) yields zeros.
//	Relu, Gelu (erf), GeluTanh (tanh approximation), Silu, Tanh, Sigmoid: (x) -> x's shape
//	Add(a, b) -> a's shape
//	LMHead(x [rows, H], weight [V, H]) -> [rows, V]        logits = x·Wᵀ (tied: the embedding)
//
// # Backends
//
// A Backend binds nodes to steps. The CPU backend (NewCPU) keeps its
// kernels in a per-backend registry; a node whose op has no kernel is an
// error naming the op and the node. A GradBackend (grad.go) also binds
// nodes as GradSteps with a backward pass over float32 master Params
// (NewCPUGrad; the CUDA backend, with float32 or bf16 activations).
//
// A backend with its own memory (the CUDA backend, package cuda) also
// implements DeviceBackend, and its steps DeviceStep: the runtime then
// passes Tensors in that memory from step to step and copies only ids,
// mask and logits (device.go). Such steps still implement Step by copying
// in and out, so the conformance suite runs them unchanged. For training,
// a DeviceGradBackend keeps the Params, gradients and optimizer state in
// its memory too (DeviceGradStep, DeviceOptimizer).
//
// The conformance suites (package ops/opstest: Run for the ops, RunGrad
// for their gradients) check every op of a backend against float64
// references and finite differences on random shapes; every backend's
// tests call them with their own backend value.
package ops
