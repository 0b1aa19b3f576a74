// Package runtime executes .slope models: it will load a container, turn
// its graph into an executable plan, and run inference and training on it.
//
// The package name shadows the standard library's runtime, so importers
// alias it:
//
//	import slopert "github.com/slopeml/slope/runtime"
//
// # Status
//
// Nothing is implemented yet; this file states the contract the package
// is built to. The parts below are planned (issues 4 and 6).
//
// # Contract (planned)
//
// Loading. The runtime opens containers through package format only: the
// file is memory-mapped, its manifest validated, and uncompressed tensors
// are used in place from the mapping (zero-copy); compressed tensors are
// decoded once at load. Tensor bytes are verified (checksums, N:M indices,
// transpose masks) before first use, and any failure is an error naming
// the file, the tensor and its offset, never a panic.
//
// Compilation. The graph of ai.slope nodes (see package ops) is compiled
// into a flat plan: nodes in topological order, each bound to a kernel of
// the chosen backend, with every intermediate value assigned a slot in a
// buffer arena sized up front, so that a forward pass allocates nothing.
// Compilation rejects ops, dtypes or shapes the backend does not support,
// naming the node.
//
// Sessions. A Session holds a compiled plan plus per-sequence state (the
// attention key/value cache) and offers Forward (logits for a batch of
// token ids), Generate (greedy or sampled decoding with a stop condition)
// and Score (log-likelihood of given continuations). A Session is used by
// one goroutine at a time; several Sessions may share one loaded model.
//
// Training (issue 6). A Trainer fine-tunes a SLoPe model: N:M weights keep
// their sparsity pattern and update their kept values (the backward pass
// through a weight uses its double-pruned transpose), low-rank adapters are
// added at a configured step, and checkpoints are .slope containers with
// a TrainingState (optimizer moments, step, data position, random state)
// from which training resumes exactly.
package runtime
