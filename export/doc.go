// Package export writes the model of a .slope container in formats other
// tools load, and owns the writers that package testmodels' generators
// use too: safetensors (WriteSafetensorsFunc), transformers' OPT
// config.json (ConfigJSON) and ONNX graphs of OPT (WriteOPTONNX,
// WriteOPTONNXFunc).
//
// # Export
//
// `slope export FILE --to hf --out DIR` (Export with To ToHF) writes a
// Hugging Face OPTForCausalLM directory: model.safetensors with
// model.decoder.* keys (lm_head.weight only when the head is untied),
// config.json from the container's typed OPT config (with torch_dtype,
// the dtype of most of the bytes), and the tokenizer files the container
// carries, if any. transformers' from_pretrained and `slope-convert
// dense-to-slope --in DIR` read it.
//
// `slope export FILE --to onnx --out FILE.onnx [--with-past]` (ToONNX)
// writes an ONNX model of standard ops (ai.onnx opset ONNXOpset: Gather
// embeddings, LayerNormalization, MatMul + Add linears, attention as
// MatMul/Softmax with an additive causal mask, Relu/Gelu/..., Cast of
// fp16/bf16 weights to float) that ONNX Runtime runs: input_ids [batch,
// seq] int64 -> logits [batch, seq, vocab]. With WithPast it is the
// decoder-with-past layout ORT and transformers.js users decode with:
// inputs input_ids, attention_mask [batch, past+seq] and
// past_key_values.{i}.key/.value [batch, heads, past, head_dim]; outputs
// logits and present.{i}.key/.value (past and new concatenated). The
// weights go to FILE.onnx.data (64-byte aligned, ONNX external data) when
// they exceed ExternalDataThreshold (2 GB; protobuf caps a message at 2
// GiB), or always with ExternalData; one weight is in memory at a time
// then.
//
// Both targets are dense: an N:M weight is expanded with zeros at its
// pruned positions, and a low-rank adapter is merged into its weight,
// W = W_s + scale·(L·R)ᵀ with L [in, r] and R [r, out] (the runtime's
// y = x·W_sᵀ + scale·(x·L)·R), summed in float64; in the merged layout
// (adapter.merged) Lᵀ is read from the weight's last r rows, which are
// dropped. Transpose masks are not exported (they serve training).
// Weights keep their stored dtype unless Options.DType converts them
// (rounding to nearest even); a merged weight is rounded to it too.
//
// The output is written beside its path (Out + ".tmp") and renamed into
// place; an existing non-empty directory (hf) or file (onnx) is replaced
// only with Options.Force.
//
// Round trips (tested): dense -> slope -> hf -> slope with the same
// options gives bit-identical tensors, N:M indices and transpose masks.
// For N:M this holds because magnitude pruning keeps the N largest |w| of
// each group, ties to the lower index, and export writes the pruned
// positions as +0: every kept value still beats every pruned one (it is
// larger, or it is a zero that won the same tie at a lower index). It can
// fail only when the first conversion changed the dtype and rounded a
// kept value to zero (fp16 underflow) ahead of a lower-index pruned one.
package export
