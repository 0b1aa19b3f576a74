// Package ops defines the operator set of domain "ai.slope", the ops that
// nodes of a .slope container's graph name, and the registry through which
// backends provide kernels for them.
//
// # Status
//
// Nothing is implemented yet; this file states the contract the package
// is built to. Everything below is planned.
//
// # Op set (planned)
//
// Version 1 of domain ai.slope has these ops; each op's inputs, outputs,
// attributes, shapes and dtypes are specified here and are normative for
// every backend:
//
//   - Embedding: token and position embedding lookup.
//   - LayerNorm: layer normalization over the last dimension, with
//     optional elementwise affine parameters.
//   - Linear: Y = X Wᵀ + b with a dense weight.
//   - SlopeLinear: Y = X Wᵀ + b + s·(X L) R with an N:M-sparse weight W,
//     its transpose (mask or materialized) for the backward pass, and an
//     optional low-rank adapter (L, R, scale s).
//   - CausalAttention: multi-head self-attention with a causal mask and a
//     key/value cache for incremental decoding.
//   - Relu, Gelu: activations.
//   - Add: elementwise addition (residual connections).
//   - LMHead: projection to vocabulary logits (possibly tied to the
//     embedding).
//
// # Backends (planned)
//
// A backend (the pure-Go CPU reference here, the CUDA backend in package
// cuda) registers kernels per op, dtype and encoding. Lookup fails with an
// error naming what is missing; there is no silent fallback.
//
// # Conformance (planned)
//
// A conformance suite runs every registered kernel against the reference
// implementation on generated inputs with per-dtype tolerances, so that a
// backend is accepted only when it matches the reference.
package ops
