// Package runtime executes .slope models. It opens a container through
// package format (memory-mapped, validated), compiles its graph into a
// flat plan of steps bound on an ops.Backend, and runs it.
//
// The package name shadows the standard library's runtime, so importers
// alias it:
//
//	import slopert "github.com/slopeml/slope/runtime"
//
// # Contract
//
// Loading. Open maps the container, checks that it holds a graph with
// inputs input_ids and attention_mask and output logits, and binds every
// node on the backend (the CPU backend by default). Binding reads each
// weight once; a node the backend cannot run is an error naming it.
//
// Compilation. Nodes run in graph order; every intermediate value gets a
// buffer from a pool keyed by width, reused once the value's last reader
// has run, so a session's memory is a few activation buffers plus its
// key/value cache, sized when the session is made.
//
// Sessions. A Session holds per-sequence state (the attention key/value
// cache and the mask so far) for up to Batch sequences of MaxLen tokens.
// Step appends tokens and returns their logits. On top of it: Forward
// (logits for a batch, fresh cache), Generate (greedy or sampled decoding
// with temperature, top-k, top-p, a seed, a token budget and EOS stop;
// prompts of different lengths are left-padded), and Score (perplexity of
// a token sequence). A Session is used by one goroutine at a time; many
// sessions may share a Model.
//
// Training (issue 6) will add a Trainer on the same plan.
package runtime
