// Package convert turns dense checkpoints into SLoPe .slope containers.
//
// The contract between reading and writing is the Source interface: a
// Source gives the architecture config and a lazy iterator of named weights
// in canonical orientation ([out, in] for linear layers, as PyTorch stores
// them) under canonical names (see OPTWeightNames), each decoded to float32
// on demand. Everything downstream — pruning, double pruning of the
// transposes, graph building, writing — works on canonical names only and
// never cares whether the weights came from safetensors, a PyTorch pickle or
// an ONNX file. Adding a checkpoint format means writing a Source.
//
// Sources: OpenSource picks one for a path. Hugging Face directories
// (OpenHF, OpenHFDir) sit on TensorStores, one per file: Safetensors
// (strict header validation, mmap), PytorchBin (zip + a restricted pickle
// machine that accepts only the globals a state dict needs and executes
// nothing), routed by model.safetensors.index.json or
// pytorch_model.bin.index.json when sharded. OpenONNX recognises OPT from
// an ONNX graph's data flow and reads initializers inline or from external
// data confined to the model's directory.
//
// DenseToSlope is the end-to-end converter: it holds one tensor in memory
// at a time, prunes the decoder-layer linear weights (q, k, v, out_proj,
// fc1, fc2) N:M (by magnitude: MagnitudeMask; or see Method below), with per-layer patterns from
// Options.NMLayers (ParseNMLayers), stores them as NM tensors with their
// double-pruned transpose masks (and, with Options.Transpose
// TransposeMaterialize, W_dpᵀ itself as NM_TRANSPOSE_MATERIALIZED
// tensors named TransposeName(weight)), writes everything else dense, and
// records provenance (the choice for every tensor: its pattern, or dense
// and why) and the model graph (BuildOPTGraph, BuildOPTGraphAdapters) in
// the manifest, plus the source's tokenizer files when it has them.
// Embeddings, positions, the LM head, project_in/out and norms are never
// pruned, nor (without Options.PruneWide) a weight whose aspect ratio
// exceeds MaxAspectRatio.
//
// Options.Method chooses the pruning: MethodMagnitude (the default),
// MethodWanda (WandaMask: the N largest |w_ij|·‖X_j‖₂ of every group) or
// MethodSparseGPT (SparseGPT: OBS pruning with updates of the kept values
// from the Hessian (2/n)·XᵀX, accumulated in float64 by Hessian). The
// calibrated methods read Options.Calib (LoadCalibration: text through
// the model's tokenizer with BOS per sample, or uint16/uint32 token ids)
// and prune the decoder layers in order: each layer's inputs come from
// the layers before it, already pruned, computed node by node by the CPU
// backend of package ops (the runtime's kernels); within a layer each
// linear is pruned before its node runs, so its inputs reflect the
// layer's earlier linears already pruned (q, k, v share the LayerNorm
// output). The samples go through a layer in chunks of
// Options.CalibChunk samples (default about 8192 tokens), once per input
// of its linears and once to its output (a pass starts where an earlier
// one left a narrow set of values: the attention output), so memory holds
// up to three copies of the hidden states, one chunk's activations, one
// layer's weights and one Hessian; when all samples fit one chunk, the
// layer runs once. The chunking never changes the result: statistics are
// summed in sample order, and Hessian.Add multiplies whole chunks of 2048
// rows whatever the calls' sizes. The Result reports the time per layer (Layers, also through
// Options.LayerProgress) and per weight ‖X(W − W_s)ᵀ‖/‖XWᵀ‖ on the
// calibration inputs; the provenance records the method and calibration
// (file, SHA-256, samples, sequence length, seed) for the file and for
// every pruned tensor. Transpose masks and adapters work on the method's
// W_s (SparseGPT's updated values included).
//
// With a rank (Options.Rank or RankFrac) every pruned weight gets a
// low-rank adapter in the runtime's convention y = x·W_sᵀ + b +
// scale·(x·L)·R, L [in, r], R [r, out]: AdapterInitSlope (L ~
// N(0, 1/in)·SlopeInitGain, R = 0: the output is unchanged until
// trained), AdapterInitZero, or AdapterInitSVD (scale·L·R is the best
// rank-r approximation of the pruning residual (W − W_s)ᵀ, computed by
// RandomizedSVD, seeded by Options.Seed and the weight's name).
// Options.MergeAdapters writes SLoPe's inference layout instead: Lᵀ is
// appended to W as r rows and pruned N:M with it (so L is pruned too; with
// svd, R is refit by least squares to the pruned L), and R is stored alone
// with adapter.merged; the graph node gets merged_rank. The Result reports
// per weight ‖W − W_s‖/‖W‖ and ‖W − (W_s + scale·(L·R)ᵀ)‖/‖W‖ with the
// values as stored.
//
// A conversion is deterministic for a seed: two runs give the same file,
// bar the provenance's creation time, which Options.Created or
// $SOURCE_DATE_EPOCH fix.
//
// With no input path the embedded default model of package testmodels
// (opt-kjv-mini, a small OPT trained by this project, with its tokenizer)
// is converted, so the tool works offline; "embedded:NAME" names an
// embedded model (DefaultLabel, TinyLabel: the transformers-made fixture
// the tests use).
package convert
