// Package kernels holds the CUDA kernels of the GPU backend as PTX
// (embedded; generated from kernels.cu by `go generate ./cuda/kernels`,
// which runs gen.sh and needs nvcc but no GPU) and typed launchers for
// them. No cgo: the module is JIT-loaded through package driver.
//
// # Types and layouts
//
// Activations have element type T, F32 (float32) or BF16 (bfloat16,
// conversions round to nearest even); every kernel accumulates in fp32.
// Matrices are row-major; a leading dimension (ld) is the row stride in
// elements. Biases, LayerNorm gamma/beta are fp32. Token ids, positions
// and masks are int32. Launchers validate their arguments (positive
// sizes, ld >= width, known dtype, non-null required pointers, int32
// range) and return errors naming the kernel; they never panic. All of
// them must run inside Device.Do, like every driver call; they enqueue on
// the given stream and do not synchronize.
//
// N:M weights [rows, cols] use the container's portable layout (SPEC.md,
// "NM"): values rows*k (k = cols*n/m) row-major, indices per row a
// little-endian bit stream of b = ceil(log2 m) bits per kept value (its
// position in its group of m), padded to whole bytes per row:
// ceil(k*b/8) bytes. Indices are assumed valid (the format reader checks
// them).
//
// # Kernels
//
//   - Convert: f32 <-> bf16, n elements.
//   - Embedding: out[r] = tok[ids[r]] + pos[positions[r]] (positions
//     already include any offset).
//   - LayerNorm: per row (x-mean)/sqrt(var+eps)*gamma+beta, biased
//     variance, fp32 statistics; gamma/beta optional.
//   - Add: out = a + b. Act: out = act(in). BiasAct: in place
//     y = act(y + bias) on a strided [rows, cols] matrix; Act codes match
//     package ops (gelu is the erf form, gelu_tanh the tanh one; precise
//     math, no fast-math).
//   - NMExpand: N:M (any 1 <= n < m <= 16) to a dense [rows, cols]
//     matrix with zeros at the pruned positions.
//   - SpMMNM: y[i][r] = bias[r] + sum_c W[r][c] x[i][c], x [M, cols],
//     y [M, rows], any N:M pattern, values f32 or bf16 (generic path).
//   - SpMV24: the same for 2:4 with bf16 values and M <= 16, the
//     memory-bound decode path: each row's values and index bytes are
//     streamed once with 16-byte (values) and 8-byte (indices) coalesced
//     loads, x through the read-only cache, one warp per row (two rows per
//     warp for M > 1), fp32 accumulation and a warp-shuffle reduction.
//     Needs cols % 64 == 0 and aligned buffers (see SpMV24); otherwise it
//     returns an error and the caller uses SpMMNM. M is served by one of
//     the compile-time tiles 1, 2, 4, 8, 16 (entry points
//     spmv24_bf16_<T>_m<tile>).
//   - SpMM24TC: the same product (M <= 16, 2:4 bf16 weights) on the
//     sparse tensor cores: inline PTX mma.sp m16n8k32 bf16 with fp32
//     accumulation, one mma per 8 tokens (two for M > 8). It reads the
//     weight in its streaming layout (SpMM24TCLayout, made from the
//     portable layout at bind): per 16 rows and 128 columns one
//     contiguous 2 KiB of values and 256 bytes of index words, whose
//     index stream is already the mma.sp metadata format. Work split
//     (SpMM24TCPlan): stream-K, the grid (2 blocks per SM) sharing
//     rows/128 x cols/128 units equally, when that gives each block at
//     least 16 units; otherwise (small weights) a one-wave K split, each
//     row block's columns in equal slices. Each block stages its x range in shared
//     memory in B-fragment order for its 8 warps (16 rows each, two steps
//     of loads in flight); a row block split across blocks is summed in
//     a workspace by its last contributor (SpMM24TCWorkspace, counters
//     that every launch leaves zero). x is rounded to bf16 when T is F32.
//     Needs rows % 16 == 0, cols % 64 == 0 and the alignments of SpMV24;
//     otherwise it returns an error.
//   - KVAppend: cache [batch, maxLen, d] rows past..past+seq-1 of each
//     sequence from src [batch*seq, d].
//   - AttnSmall: causal attention of new queries (q, out [batch*seq, d],
//     d = heads*headDim, head h at columns h*headDim..) over the cache:
//     keys j <= past+i with mask[b][j] != 0, softmax(scale*q.k) with the
//     maximum subtracted, in fp32; a query with no visible key gets zeros
//     (as package ops does). One block per (head, sequence).
//   - SoftmaxCausal: the masked causal softmax of prefill between two
//     batched GEMMs: fp32 scores [heads, seq, total] to probs of type T,
//     zeros where masked or in the future, all-zero rows when nothing is
//     visible.
//   - AttnFused: AttnSmall's result for many new queries in one
//     flash-style pass on the tensor cores (bf16, head sizes 64 and 128;
//     mma.m16n8k16, online softmax in fp32). Its Go emulation
//     (TestEmulateAttnFused) and, on a GPU, the kernel itself
//     (TestGPUAttnFused) are each checked against float64 attention; the
//     backend uses it only with Options.FusedAttention.
//   - AttnFusedBackward: its gradients over whole sequences, added into
//     dq, dk, dv: a pass over the keys per query block for each row's
//     log-sum-exp and dO·O, then dQ; a pass over the queries per key
//     block for dK and dV (TestEmulateAttnBwd).
package kernels
