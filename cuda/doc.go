// Package cuda is the NVIDIA GPU backend of the runtime: the ai.slope ops
// (see package ops) on one GPU through the CUDA driver API (cuda/driver),
// this project's kernels (cuda/kernels), cuBLASLt for dense products
// (cuda/blaslt) and cuSPARSELt for 2:4 sparse ones (cuda/sparselt).
//
// # Contract
//
// No cgo, no CUDA at build time: the package builds with CGO_ENABLED=0
// anywhere and loads the NVIDIA libraries at run time (cuda/dl). New
// returns an error wrapping driver.ErrNoDevice when there is no usable
// GPU; the rest of the program keeps working on the CPU backend.
//
// One locked OS thread: every CUDA call of a Backend runs inside
// Backend.Do, on the device's worker goroutine (cuda/driver).
//
// Backend implements ops.Backend and ops.DeviceBackend: the runtime keeps
// activations on the GPU (bf16 or float32, Options.Activations) and
// copies only ids, mask and logits. Each step also implements ops.Step
// (copying its inputs in and its output out), so the shared conformance
// suite ops/opstest runs on this backend unchanged.
//
// Weights are uploaded once, at Bind. Dense weights and embedding tables
// go to the device in the activation type. N:M weights keep the
// container's portable layout (values + packed indices, format/SPEC.md),
// which the N:M kernels read directly; 2:4 bf16 weights are also
// compressed by cuSPARSELt on the device (expanded by a kernel first),
// and with Options.TCMaxRows reordered into spmm24tc's streaming layout.
// Options.SetForms names the useful combinations (Forms: decode, batch,
// all, low-memory; `slope --sparse-forms`); a form no path reads is
// dropped.
//
// # Kernel choice per SlopeLinear product of M rows
//
//   - 2:4 bf16, M <= Options.SpMVMaxRows (4): the decode kernel
//     spmv24, which streams the portable values and indices once;
//   - with Options.TCMaxRows (off by default), bf16 mode, up to 16
//     rows: spmm24tc on the sparse tensor cores (mma.sp), stream-K over
//     two blocks per SM (Options.TCBlocks);
//   - 2:4 bf16, more rows: cuSPARSELt, with a plan per weight and padded
//     row count, created once (algorithm searched once per shape when
//     Options.Search);
//   - anything else (other patterns, float32 mode): the generic N:M
//     kernel.
//
// Adapters: the merged layout (Lᵀ appended to W) gives [x·Wᵀ | x·L] from
// one sparse product, then one cuBLASLt product adds scale·(x·L)·R; the
// plain layout uses two cuBLASLt products. Attention runs the small
// kernel for fewer than 16 new tokens and two batched cuBLASLt products
// around a masked softmax otherwise, per chunk of queries
// (Options.AttentionChunk) that sees only the keys up to its last query,
// with the KV cache on the device; with Options.FusedAttention, bf16 and
// heads of 64 or 128, in one fused kernel instead (kernels.AttnFused,
// and its backward in training; not yet run on a GPU).
//
// Training (grad.go): Backend is an ops.GradBackend and
// ops.DeviceGradBackend: every op has a backward pass (kernels without
// atomics, cuBLASLt products; the N:M weight gradient gathered at the
// mask), and the Params, gradients and AdamW moments live on the GPU,
// where the loss, the optimizer and the 2:4 transpose-mask refresh run
// too. train.Trainer drives it: `slope train --device cuda-f32` in float32
// (N:M products expanded densely), `--device cuda` in mixed precision
// (bf16 activations and products over fp32 master values; the 2:4
// forward and input gradient on cuSPARSELt forms written in place,
// grad_sparse.go). Options.Profile times the training work per op
// (profile.go, `slope train --gpu-profile`). BenchTrain (bench_train.go)
// benchmarks one layer's six linears alone.
//
// Not yet: OPT's project_in inside Embedding for inference
// (ErrUnsupported; training has it), CUDA graphs for the decode step.
package cuda
