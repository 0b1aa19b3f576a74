// Kernels of the slope CUDA backend. Compiled to PTX by gen.sh (run
// `go generate ./cuda/kernels`); the PTX is embedded by kernels.go and
// JIT-compiled by the driver. See doc.go for the contract.
//
// Element type T of activations is float or __nv_bfloat16; every
// templated kernel has two entry points, suffix _f32 and _bf16. All
// arithmetic accumulates in fp32. Indices into buffers that may exceed
// 2^31 elements are computed in 64 bits.

#include <cuda_bf16.h>
#include <stdint.h>

typedef __nv_bfloat16 bf16;

#define FULL_MASK 0xffffffffu

// ---------------------------------------------------------------- helpers

__device__ __forceinline__ float ldf(const float* p) { return *p; }
__device__ __forceinline__ float ldf(const bf16* p) { return __bfloat162float(*p); }
__device__ __forceinline__ void stf(float* p, float v) { *p = v; }
__device__ __forceinline__ void stf(bf16* p, float v) { *p = __float2bfloat16_rn(v); }

// bf16 halves of a 32-bit word (low half is the element at the lower address).
__device__ __forceinline__ float bf_lo(unsigned w) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float bf_hi(unsigned w) { return __uint_as_float(w & 0xffff0000u); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

// Block-wide sum/max; every thread gets the result. sh holds >= 32 floats.
// blockDim.x must be a multiple of 32.
__device__ float block_sum(float v, float* sh) {
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    if (lane == 0) sh[wid] = v;
    __syncthreads();
    v = (threadIdx.x < nw) ? sh[threadIdx.x] : 0.f;
    if (wid == 0) v = warp_sum(v);
    if (threadIdx.x == 0) sh[0] = v;
    __syncthreads();
    float r = sh[0];
    __syncthreads();
    return r;
}

__device__ float block_max(float v, float* sh) {
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_max(v);
    if (lane == 0) sh[wid] = v;
    __syncthreads();
    v = (threadIdx.x < nw) ? sh[threadIdx.x] : -INFINITY;
    if (wid == 0) v = warp_max(v);
    if (threadIdx.x == 0) sh[0] = v;
    __syncthreads();
    float r = sh[0];
    __syncthreads();
    return r;
}

__device__ __forceinline__ int64_t gtid() { return (int64_t)blockIdx.x * blockDim.x + threadIdx.x; }
__device__ __forceinline__ int64_t gstride() { return (int64_t)gridDim.x * blockDim.x; }

// Activation codes (kernels.Act): 0 none, 1 relu, 2 gelu (erf), 3 gelu_tanh,
// 4 silu, 5 tanh, 6 sigmoid. Precise math (no fast-math).
__device__ __forceinline__ float activate(float x, int act) {
    switch (act) {
    case 1: return fmaxf(x, 0.f);
    case 2: return 0.5f * x * (1.f + erff(x * 0.70710678118654752f));
    case 3: return 0.5f * x * (1.f + tanhf(0.79788456080286536f * (x + 0.044715f * x * x * x)));
    case 4: return x / (1.f + expf(-x));
    case 5: return tanhf(x);
    case 6: return 1.f / (1.f + expf(-x));
    default: return x;
    }
}

// ---------------------------------------------------------------- convert

extern "C" __global__ void convert_f32_to_bf16(bf16* dst, const float* src, int64_t n) {
    for (int64_t i = gtid(); i < n; i += gstride()) dst[i] = __float2bfloat16_rn(src[i]);
}

extern "C" __global__ void convert_bf16_to_f32(float* dst, const bf16* src, int64_t n) {
    for (int64_t i = gtid(); i < n; i += gstride()) dst[i] = __bfloat162float(src[i]);
}

// ---------------------------------------------------------------- embedding
// grid.x = rows (row r), threads over dim.
template <typename T>
__device__ void embedding_body(T* out, const int* ids, const int* positions, const T* tok, const T* pos, int rows, int dim) {
    const int r = blockIdx.x;
    if (r >= rows) return;
    const T* tr = tok + (int64_t)ids[r] * dim;
    const T* pr = pos + (int64_t)positions[r] * dim;
    T* o = out + (int64_t)r * dim;
    for (int c = threadIdx.x; c < dim; c += blockDim.x) stf(o + c, ldf(tr + c) + ldf(pr + c));
}

// ---------------------------------------------------------------- layernorm
// One block per row; gamma/beta may be null (1 and 0).
template <typename T>
__device__ void layernorm_body(T* out, const T* in, const float* gamma, const float* beta, int rows, int dim, float eps) {
    __shared__ float sh[32];
    const int r = blockIdx.x;
    if (r >= rows) return;
    const T* x = in + (int64_t)r * dim;
    T* y = out + (int64_t)r * dim;
    float s = 0.f;
    for (int c = threadIdx.x; c < dim; c += blockDim.x) s += ldf(x + c);
    const float mean = block_sum(s, sh) / (float)dim;
    float v = 0.f;
    for (int c = threadIdx.x; c < dim; c += blockDim.x) {
        float d = ldf(x + c) - mean;
        v += d * d;
    }
    const float var = block_sum(v, sh) / (float)dim;
    const float inv = 1.f / sqrtf(var + eps);
    for (int c = threadIdx.x; c < dim; c += blockDim.x) {
        float z = (ldf(x + c) - mean) * inv;
        if (gamma) z *= gamma[c];
        if (beta) z += beta[c];
        stf(y + c, z);
    }
}

// ---------------------------------------------------------------- elementwise

template <typename T>
__device__ void add_body(T* out, const T* a, const T* b, int64_t n) {
    for (int64_t i = gtid(); i < n; i += gstride()) stf(out + i, ldf(a + i) + ldf(b + i));
}

// grid.y over rows (strided), x over cols.
template <typename T>
__device__ void bias_act_body(T* y, int ldy, const float* bias, int rows, int cols, int act) {
    for (int r = blockIdx.y; r < rows; r += gridDim.y) {
        T* yr = y + (int64_t)r * ldy;
        for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < cols; c += gridDim.x * blockDim.x) {
            float v = ldf(yr + c);
            if (bias) v += bias[c];
            stf(yr + c, activate(v, act));
        }
    }
}

template <typename T>
__device__ void act_body(T* out, const T* in, int64_t n, int act) {
    for (int64_t i = gtid(); i < n; i += gstride()) stf(out + i, activate(ldf(in + i), act));
}

// ---------------------------------------------------------------- N:M portable layout

// Index bits per kept value: m = 2: 1; 3-4: 2; 5-8: 3; 9-16: 4.
__device__ __forceinline__ int nm_bits(int m) { return m <= 2 ? 1 : m <= 4 ? 2 : m <= 8 ? 3 : 4; }

// In-group index of kept value j of a row whose index bytes are ir[0..rowBytes).
__device__ __forceinline__ int nm_index(const unsigned char* ir, int rowBytes, int j, int b) {
    const int p = j * b;                 // first stream bit
    const int byte = p >> 3;
    unsigned w = ir[byte];
    if (byte + 1 < rowBytes) w |= (unsigned)ir[byte + 1] << 8;  // a 3-bit index may straddle bytes
    return (int)((w >> (p & 7)) & ((1u << b) - 1u));
}

// One block per row: zero the dense row, then scatter the kept values.
template <typename V>
__device__ void nm_expand_body(V* dense, const V* vals, const unsigned char* idx, int rows, int cols, int n, int m) {
    const int r = blockIdx.x;
    if (r >= rows) return;
    const int k = cols / m * n;
    const int b = nm_bits(m);
    const int rowBytes = (k * b + 7) >> 3;
    V* dr = dense + (int64_t)r * cols;
    const V* vr = vals + (int64_t)r * k;
    const unsigned char* ir = idx + (int64_t)r * rowBytes;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) stf(dr + c, 0.f);
    __syncthreads();
    for (int j = threadIdx.x; j < k; j += blockDim.x) {
        const int c = (j / n) * m + nm_index(ir, rowBytes, j, b);
        dr[c] = vr[j];
    }
}

// Generic N:M sparse times dense: y[i][r] = bias[r] + sum_j vals[r][j] * x[i][col(j)].
// One warp per weight row r (blockIdx.x*warps+warp), each warp handles
// SPMM_MB consecutive x rows per step (blockIdx.y strided).
#define SPMM_MB 8
template <typename V, typename T>
__device__ void spmm_nm_body(T* y, int ldy, const T* x, int ldx, const V* vals, const unsigned char* idx, const float* bias,
                             int M, int rows, int cols, int n, int m) {
    const int lane = threadIdx.x & 31;
    const int r = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (r >= rows) return;
    const int k = cols / m * n;
    const int b = nm_bits(m);
    const int rowBytes = (k * b + 7) >> 3;
    const V* vr = vals + (int64_t)r * k;
    const unsigned char* ir = idx + (int64_t)r * rowBytes;
    const float bv = bias ? bias[r] : 0.f;
    for (int i0 = blockIdx.y * SPMM_MB; i0 < M; i0 += gridDim.y * SPMM_MB) {
        float acc[SPMM_MB];
#pragma unroll
        for (int ii = 0; ii < SPMM_MB; ii++) acc[ii] = 0.f;
        for (int j = lane; j < k; j += 32) {
            const int c = (j / n) * m + nm_index(ir, rowBytes, j, b);
            const float v = ldf(vr + j);
#pragma unroll
            for (int ii = 0; ii < SPMM_MB; ii++)
                if (i0 + ii < M) acc[ii] += v * ldf(x + (int64_t)(i0 + ii) * ldx + c);
        }
#pragma unroll
        for (int ii = 0; ii < SPMM_MB; ii++) {
            const float s = warp_sum(acc[ii]);
            if (lane == 0 && i0 + ii < M) stf(y + (int64_t)(i0 + ii) * ldy + r, s + bv);
        }
    }
}

// ---------------------------------------------------------------- spmv24
//
// 2:4, bf16 values, M <= MT x rows. Row r's values are cols/2 bf16
// (cols bytes), its index bytes cols/8; cols % 64 == 0. A "chunk" is 16
// bytes of values = 8 kept values = 16 input columns = 4 groups, and its
// indices are the 2 index bytes at 2*chunk (a little-endian uint16, value
// q of the chunk at bits [2q, 2q+2), group q/2).
//
// Each warp owns RW consecutive rows. One warp step covers 128 chunks
// (2048 columns) starting at chunk cb: lane l loads value chunks
// cb + 32*j + l (j = 0..3; each load instruction reads 512 contiguous
// bytes) and the 8 index bytes of chunks cb + 4l .. cb + 4l + 3 (256
// contiguous bytes per instruction); the uint16 of chunk cb + 32*j + l is
// then fetched with shuffles from lane 8*j + l/4, word (l&2)/2, half l&1.
// x is read as 16-column vectors through the read-only cache.
#define SPMV_WARPS 4
#define SPMV_STEP 128  // chunks per warp step

// 16 consecutive x values as floats (p 16-byte aligned).
__device__ __forceinline__ void load_x16(const float* p, float* f) {
    const float4* q = reinterpret_cast<const float4*>(p);
#pragma unroll
    for (int i = 0; i < 4; i++) {
        float4 a = __ldg(q + i);
        f[4 * i] = a.x; f[4 * i + 1] = a.y; f[4 * i + 2] = a.z; f[4 * i + 3] = a.w;
    }
}
__device__ __forceinline__ void load_x16(const bf16* p, float* f) {
    const uint4* q = reinterpret_cast<const uint4*>(p);
#pragma unroll
    for (int i = 0; i < 2; i++) {
        uint4 a = __ldg(q + i);
        f[8 * i + 0] = bf_lo(a.x); f[8 * i + 1] = bf_hi(a.x);
        f[8 * i + 2] = bf_lo(a.y); f[8 * i + 3] = bf_hi(a.y);
        f[8 * i + 4] = bf_lo(a.z); f[8 * i + 5] = bf_hi(a.z);
        f[8 * i + 6] = bf_lo(a.w); f[8 * i + 7] = bf_hi(a.w);
    }
}

// Kept value q (0..7) of a 16-byte value chunk.
__device__ __forceinline__ float chunk_val(const uint4& v, int q) {
    const unsigned w = q < 2 ? v.x : q < 4 ? v.y : q < 6 ? v.z : v.w;
    return (q & 1) ? bf_hi(w) : bf_lo(w);
}

template <typename T, int MT, int RW>
__device__ __forceinline__ void spmv24_body(T* y, int ldy, const T* x, int ldx, const bf16* vals, const unsigned char* idx,
                                            const float* bias, int M, int rows, int cols) {
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int r0 = (blockIdx.x * SPMV_WARPS + warp) * RW;
    if (r0 >= rows) return;  // uniform per warp
    const int nch = cols >> 4;  // chunks per row (a multiple of 4)
    const uint4* vrow[RW];
    const uint2* irow[RW];
    bool ok[RW];
#pragma unroll
    for (int rr = 0; rr < RW; rr++) {
        const int r = r0 + rr;
        ok[rr] = r < rows;
        const int rc = ok[rr] ? r : r0;
        vrow[rr] = reinterpret_cast<const uint4*>(vals + (int64_t)rc * (cols >> 1));
        irow[rr] = reinterpret_cast<const uint2*>(idx + (int64_t)rc * (cols >> 3));
    }
    float acc[RW][MT];
#pragma unroll
    for (int rr = 0; rr < RW; rr++)
#pragma unroll
        for (int mm = 0; mm < MT; mm++) acc[rr][mm] = 0.f;

    for (int cb = 0; cb < nch; cb += SPMV_STEP) {
        // Issue every load of the step first (RW * 5 in flight per lane).
        uint2 iw[RW];
        uint4 vv[RW][4];
#pragma unroll
        for (int rr = 0; rr < RW; rr++) {
            iw[rr] = (ok[rr] && cb + 4 * lane < nch) ? __ldcs(irow[rr] + (cb >> 2) + lane) : make_uint2(0u, 0u);
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const int c = cb + 32 * j + lane;
                vv[rr][j] = (ok[rr] && c < nch) ? __ldcs(vrow[rr] + c) : make_uint4(0u, 0u, 0u, 0u);
            }
        }
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const int c = cb + 32 * j + lane;
            const int src = 8 * j + (lane >> 2);
            unsigned sel[RW];
#pragma unroll
            for (int rr = 0; rr < RW; rr++) {
                const unsigned w0 = __shfl_sync(FULL_MASK, iw[rr].x, src);
                const unsigned w1 = __shfl_sync(FULL_MASK, iw[rr].y, src);
                const unsigned w = (lane & 2) ? w1 : w0;
                sel[rr] = (lane & 1) ? (w >> 16) : (w & 0xffffu);
            }
            if (c >= nch) continue;
            const int col0 = c << 4;
            if (MT == 1) {
                // Select x of each kept value from the 16-column vector.
                float xf[16];
                load_x16(x + col0, xf);
#pragma unroll
                for (int rr = 0; rr < RW; rr++)
#pragma unroll
                    for (int q = 0; q < 8; q++) {
                        const int ii = (sel[rr] >> (2 * q)) & 3;
                        const int g = q >> 1;
                        const float a = (ii & 1) ? xf[4 * g + 1] : xf[4 * g];
                        const float bb = (ii & 1) ? xf[4 * g + 3] : xf[4 * g + 2];
                        acc[rr][0] += chunk_val(vv[rr][j], q) * ((ii & 2) ? bb : a);
                    }
            } else {
                // Expand each row's chunk to 16 dense weights once, then
                // one 16-wide dot product per x row.
                float wd[RW][16];
#pragma unroll
                for (int rr = 0; rr < RW; rr++)
#pragma unroll
                    for (int g = 0; g < 4; g++) {
                        const int ia = (sel[rr] >> (4 * g)) & 3;
                        const int ib = (sel[rr] >> (4 * g + 2)) & 3;
                        const float va = chunk_val(vv[rr][j], 2 * g);
                        const float vb = chunk_val(vv[rr][j], 2 * g + 1);
#pragma unroll
                        for (int t = 0; t < 4; t++) wd[rr][4 * g + t] = (ia == t ? va : 0.f) + (ib == t ? vb : 0.f);
                    }
#pragma unroll
                for (int mm = 0; mm < MT; mm++) {
                    if (mm < M) {
                        float xf[16];
                        load_x16(x + (int64_t)mm * ldx + col0, xf);
#pragma unroll
                        for (int rr = 0; rr < RW; rr++)
#pragma unroll
                            for (int t = 0; t < 16; t++) acc[rr][mm] += wd[rr][t] * xf[t];
                    }
                }
            }
        }
    }
#pragma unroll
    for (int rr = 0; rr < RW; rr++) {
        const int r = r0 + rr;
        const float bv = (bias && ok[rr]) ? bias[r] : 0.f;
#pragma unroll
        for (int mm = 0; mm < MT; mm++) {
            const float s = warp_sum(acc[rr][mm]);
            if (lane == 0 && ok[rr] && mm < M) stf(y + (int64_t)mm * ldy + r, s + bv);
        }
    }
}

// ---------------------------------------------------------------- spmm24tc
//
// 2:4 sparse weight times M <= 16 activations on the sparse tensor cores
// (PTX mma.sp.sync.aligned.m16n8k32.row.col.f32.bf16.bf16.f32): A = 16
// weight rows x 32 input columns
// (2:4 along K = our cols, exactly the row-wise 2:4 of the format),
// B = x^T (32 columns x 8 tokens), D = y^T tile (16 rows x 8 tokens);
// two mmas along N when M > 8. x is rounded to bf16 for the tensor cores
// (exact when T = bf16); accumulation is fp32.
//
// Fragment facts used (PTX ISA, 9.7.14.6 "Matrix multiply-accumulate
// operation using mma.sp instruction with sparse matrix A"; groupID =
// lane >> 2, threadID_in_group = lane & 3):
//  * 9.7.14.6.2.2 "Matrix Fragments for sparse mma.m16n8k32 with .f16 and
//    .bf16 types", multiplicand A: four .b32 registers, each holding the
//    two non-zeros of one 4-wide chunk; a0,a1 (reg 0) and a4,a5 (reg 2):
//    row groupID, a2,a3 (reg 1) and a6,a7 (reg 3): row groupID+8;
//    firstcol = threadID_in_group*4 for regs 0-1, +16 for regs 2-3. The
//    low half of a register is the non-zero with the lower index.
//  * multiplicand B (Figure 121; CuTe SM80_SPARSE_16x8x32 BLayout): reg r
//    holds rows k = threadID_in_group*2 + 8r + {0 (low), 1 (high)},
//    column n = groupID.
//  * C/D as "Matrix Fragments for mma.m16n8k16 with floating point type":
//    c0,c1: row groupID, cols 2*threadID_in_group + {0,1}; c2,c3: row +8.
//  * metadata (Figure 122; CuTe ELayout; 9.7.14.6.1 "Sparse matrix
//    storage"): with sparsity selector 0 the thread pair T0,T1 of each
//    quad contributes; thread T(j), j = lane & 1, covers K columns
//    16j..16j+15 (chunks 4j..4j+3): bits [15:0] for row groupID, bits
//    [31:16] for row groupID+8, chunk 4j+t at bits [4t+3:4t] of the half,
//    its low 2 bits the index of the first non-zero, the high 2 bits the
//    second (the meaningful values 0b0100, 0b1000, 0b1001, 0b1100,
//    0b1101, 0b1110: first < second, which the format guarantees). Lanes
//    T2,T3 get the same value, so the selector could also be 1.
//
// The portable index stream of a row (2 bits per kept value, LSB first,
// a group's two indices increasing) is that metadata format already: the
// nibble of 4-column chunk w of a row is at stream bits [4w, 4w+4).
//
// K permutation. A warp step covers 128 columns = 32 chunks = 4 mmas
// (s = 0..3). The sum over K is order-free, so mma s, chunk q = t + 4a
// (t = q & 3, a = q >> 2) is mapped to real chunk
//     rho(s, q) = 16*(s >> 1) + 4*t + 2*(s & 1) + a
// (a bijection onto 0..31). Then lane (g, t) needs the 16-byte value
// words 16h + 4t .. 16h + 4t + 3 of rows g and g+8 for h = s >> 1: one
// 16-byte load per row and half, and reg (a, row half rh) = word
// 2*(s&1) + a. The
// metadata half of a thread needs the nibbles 16h + 2(s&1) + a + 4t,
// t = 0..3, gathered from the row's 2 index words of half h. B uses the
// same rho: x is staged in shared memory already in B-fragment order
// (xs[slice][s][nb][lane] = the 4 registers of that lane), so each mma
// reads one conflict-free 16-byte word per lane.
//
// Streaming layout (SpMM24TCLayout, made from the portable layout when a
// weight is bound): those loads read whole contiguous blocks. Per row
// group rg (16 rows) and step st, the values are 128 uint4 [h][rh][lane]
// (lane (g, t) of (h, rh): the portable row 16rg + g + 8rh, uint4
// 8st + 4h + t) and the index words 32 uint2 [h][rh][g] (row 16rg + g +
// 8rh, uint2 2st + h); a missing half (cols % 128 == 64) is zeros. So a
// warp streams one contiguous range (2 KiB + 256 B per step) and each
// load instruction reads 512 (values) or 64 (indices) contiguous bytes;
// read in place, the portable layout scattered each instruction over 8
// rows, which measured at most 1.26x of dense at M = 1 against 1.5-1.7x for
// the row-streaming decode kernel on the same weights.
//
// Work split (SpMM24TCPlan), stream-K style: the work is U = rowBlocks x
// steps units (a row block is TC_RB = 16*TC_WARPS rows, warp w of it the
// row group 8*rb + w; a step is 128 columns), and block b of the G in
// the grid takes units [b*U/G, (b+1)*U/G): equal shares, so a grid of
// (blocks resident per SM) x SMs has no tail. A share is walked in
// segments, one per row block it touches; every warp of a block walks
// the same steps, so x is shared: the block stages up to TC_KSMAX steps
// of x (a chunk) in shared memory in B-fragment order, then each warp
// runs its mmas with the values and indices of the next two steps in
// flight (three register buffers in rotation; a chunk boundary costs one
// barrier while those loads are outstanding).
// Few units per block (small weights; SpMM24TCPlan decides) leave
// stream-K with short segments and many split row blocks; there the
// launch is a K split instead (spb > 0): rowBlocks x S blocks, block b
// takes row block b % rowBlocks and the spb steps from (b / rowBlocks) *
// spb, one wave of S = grid / rowBlocks slices.
// A segment that covers its row block's whole K writes y. Otherwise it
// is one of the row block's c contributors (blocks tc_block_of(first
// unit) .. tc_block_of(last unit)): it writes its fp32 partial tile to
// slot (b - first) of ws[rowBlocks][maxC][16][TC_RB], and the last one
// to arrive (counted in cnt[rb], which it resets to 0) sums the c slots
// in slot order (deterministic), adds the bias and writes y.
#define TC_WARPS 8
#define TC_RB (TC_WARPS * 16)                    // rows per block
#define TC_KSMAX 8                               // steps per staged x chunk
#define TC_STEP 128                              // columns per warp step
#define TC_XB 2                                  // x units loaded per batch when staging
#define TC_XS_WORDS (TC_KSMAX * 4 * 2 * 32 * 4)  // 32-bit words of the x tile

__device__ __forceinline__ unsigned pack_bf2(float lo, float hi) {
    return (unsigned)__bfloat16_as_ushort(__float2bfloat16_rn(lo)) |
           ((unsigned)__bfloat16_as_ushort(__float2bfloat16_rn(hi)) << 16);
}

// 8 consecutive activations (16-byte aligned) as 4 bf16x2 words.
__device__ __forceinline__ uint4 ld_x8(const bf16* p) { return __ldg(reinterpret_cast<const uint4*>(p)); }
__device__ __forceinline__ uint4 ld_x8(const float* p) {
    const float4* q = reinterpret_cast<const float4*>(p);
    const float4 a = __ldg(q), b = __ldg(q + 1);
    return make_uint4(pack_bf2(a.x, a.y), pack_bf2(a.z, a.w), pack_bf2(b.x, b.y), pack_bf2(b.z, b.w));
}

__device__ __forceinline__ unsigned u4w(const uint4& v, int i) { return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w; }

// Metadata half (16 bits) from a row's two index words of half h: the
// nibbles at positions sh/4 + 4t (t = 0..3) of the 64-bit pair.
__device__ __forceinline__ unsigned tc_meta16(uint2 w, int sh) {
    return ((w.x >> sh) & 0xFu) | (((w.x >> (sh + 16)) & 0xFu) << 4) | (((w.y >> sh) & 0xFu) << 8) |
           (((w.y >> (sh + 16)) & 0xFu) << 12);
}

__device__ __forceinline__ void mma_sp_16832(float (&d)[4], const unsigned (&a)[4], const uint4& b, unsigned e) {
    asm("mma.sp.sync.aligned.m16n8k32.row.col.f32.bf16.bf16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9,%10,%11}, {%0,%1,%2,%3}, %12, 0x0;\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b.x), "r"(b.y), "r"(b.z), "r"(b.w), "r"(e));
}

// Values and index words of absolute step st (nh halves of 64 columns)
// from the row group's streaming-layout blocks V (128 uint4 per step:
// [h][rh][lane]) and I (32 uint2 per step: [h][rh][g]).
__device__ __forceinline__ void tc_load(uint4 (&va)[2][2], uint2 (&ia)[2][2], const uint4* V, const uint2* I, int st,
                                        int nh, int lane) {
#pragma unroll
    for (int h = 0; h < 2; h++) {
        if (h < nh) {
            va[h][0] = __ldcs(V + (st * 4 + 2 * h) * 32 + lane);
            va[h][1] = __ldcs(V + (st * 4 + 2 * h + 1) * 32 + lane);
            ia[h][0] = __ldg(I + (st * 4 + 2 * h) * 8 + (lane >> 2));
            ia[h][1] = __ldg(I + (st * 4 + 2 * h + 1) * 8 + (lane >> 2));
        } else {
            va[h][0] = va[h][1] = make_uint4(0u, 0u, 0u, 0u);
            ia[h][0] = ia[h][1] = make_uint2(0u, 0u);
        }
    }
}

// One warp step: the mmas of step buffer (va, ia) against x slice sl.
__device__ __forceinline__ void tc_mma_step(float (&acc)[2][4], const uint4 (&va)[2][2], const uint2 (&ia)[2][2],
                                            const unsigned* xs, int sl, int nh, int NB, int lane) {
#pragma unroll
    for (int s = 0; s < 4; s++) {
        const int h = s >> 1, c = s & 1;
        if (h < nh) {
            unsigned a[4];
            a[0] = u4w(va[h][0], 2 * c);      // row g,   chunk t     (a = 0)
            a[1] = u4w(va[h][1], 2 * c);      // row g+8, chunk t
            a[2] = u4w(va[h][0], 2 * c + 1);  // row g,   chunk t + 4 (a = 1)
            a[3] = u4w(va[h][1], 2 * c + 1);  // row g+8, chunk t + 4
            const int sh = 4 * (2 * c + (lane & 1));
            const unsigned e = tc_meta16(ia[h][0], sh) | (tc_meta16(ia[h][1], sh) << 16);
            const uint4* xb = reinterpret_cast<const uint4*>(xs) + ((sl * 4 + s) * 2) * 32 + lane;
            mma_sp_16832(acc[0], a, xb[0], e);
            if (NB > 1) mma_sp_16832(acc[1], a, xb[32], e);
        }
    }
}

// The block whose share holds unit u (shares as in the work split).
__device__ __forceinline__ int tc_block_of(int64_t u, int64_t U, int G) { return (int)(((u + 1) * G + U - 1) / U) - 1; }

template <typename T>
__device__ __forceinline__ void spmm24tc_body(T* y, int ldy, const T* x, int ldx, const bf16* vals, const unsigned char* idx,
                                              const float* bias, float* ws, int* cnt, int M, int rows, int cols, int maxC,
                                              int spb) {
    __shared__ __align__(16) unsigned xs[TC_XS_WORDS];  // [slice][s][nb][lane][reg]
    __shared__ int lastBlock;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int NB = M > 8 ? 2 : 1;
    const int G = gridDim.x, b = blockIdx.x;
    const int steps = (cols + TC_STEP - 1) / TC_STEP;
    const int rowBlocks = (rows + TC_RB - 1) / TC_RB;
    const int64_t U = (int64_t)rowBlocks * steps;
    // K-split mode (spb > 0): one segment, row block b % rowBlocks, steps
    // from (b / rowBlocks) * spb; stream-K otherwise.
    const int64_t lo = spb > 0 ? 0 : (int64_t)b * U / G, hi = spb > 0 ? 1 : (int64_t)(b + 1) * U / G;
    for (int i = tid; i < TC_XS_WORDS; i += TC_WARPS * 32) xs[i] = 0u;

    // Staging: thread tid always handles the 8-column unit cu of the chunk
    // (slice cu >> 4; tokens n = n0 + i * nstep); the destination words
    // of its 4 bf16 pairs (p) are fixed (inverse of rho; recomputed per
    // chunk rather than held in registers).
    const int upr = TC_KSMAX * 16;  // units per token row of a chunk
    const int cu = tid % upr, n0 = tid / upr, nstep = (TC_WARPS * 32) / upr;

    for (int64_t u = lo; u < hi;) {
        // Segment: row block rb, steps [st0, st0 + nst); it is contributor
        // slot of c to its row block (c == 1: the whole row block).
        int rb, st0, nst, slot, c;
        if (spb > 0) {
            rb = b % rowBlocks;
            st0 = (b / rowBlocks) * spb;
            nst = min(spb, steps - st0);
            slot = b / rowBlocks;
            c = (steps + spb - 1) / spb;
            u = hi;
        } else {
            rb = (int)(u / steps);
            st0 = (int)(u - (int64_t)rb * steps);
            nst = (int)min((int64_t)(steps - st0), hi - u);
            u += nst;
            const int first = tc_block_of((int64_t)rb * steps, U, G);
            slot = b - first;
            c = tc_block_of((int64_t)rb * steps + steps - 1, U, G) - first + 1;
        }
        const int rg = rb * TC_WARPS + warp;
        const bool active = rg < (rows >> 4);  // uniform per warp
        const int kend = min(cols, (st0 + nst) * TC_STEP);
        const int r0 = (active ? rg : 0) * 16 + g;  // this lane's rows r0 and r0 + 8
        const uint4* V = reinterpret_cast<const uint4*>(vals) + (int64_t)(active ? rg : 0) * steps * 128;
        const uint2* I = reinterpret_cast<const uint2*>(idx) + (int64_t)(active ? rg : 0) * steps * 32;
        auto stage = [&](int st) {  // x columns of the chunk starting at segment step st
            const int col = (st0 + st) * TC_STEP + 8 * cu;
            if (col >= kend) return;
            int dst[4];
#pragma unroll
            for (int p = 0; p < 4; p++) {
                const int j = cu & 15;           // unit within the slice
                const int w = 2 * j + (p >> 1);  // real chunk within the warp step
                const int h = w >> 4, tt = (w >> 2) & 3, c = (w >> 1) & 1, a = w & 1;
                const int s = 2 * h + c, q = tt + 4 * a;
                const int k = 4 * q + 2 * (p & 1);  // mma row of B (even: the pair is k, k+1)
                const int r = k >> 3, tb = (k & 7) >> 1;
                dst[p] = (((((cu >> 4) * 4 + s) * 2) * 32) + tb) * 4 + r;  // + token part below
            }
            const T* xc = x + col;
#pragma unroll 1
            for (int nn = n0; nn < M; nn += TC_XB * nstep) {
                uint4 uu[TC_XB];
#pragma unroll
                for (int i = 0; i < TC_XB; i++) {
                    const int n = nn + i * nstep;
                    if (n < M) uu[i] = ld_x8(xc + (int64_t)n * ldx);
                }
#pragma unroll
                for (int i = 0; i < TC_XB; i++) {
                    const int n = nn + i * nstep;
                    if (n < M) {
                        const int tok = (n >> 3) * 32 * 4 + (n & 7) * 4 * 4;  // lane 32*nb + 4*(n&7), in words
                        xs[dst[0] + tok] = uu[i].x;
                        xs[dst[1] + tok] = uu[i].y;
                        xs[dst[2] + tok] = uu[i].z;
                        xs[dst[3] + tok] = uu[i].w;
                    }
                }
            }
        };
        auto halves = [&](int st) {  // 64-column halves of segment step st (0 past the end or inactive)
            if (!active || st >= nst) return 0;
            const int w = cols - (st0 + st) * TC_STEP;
            return w >= 128 ? 2 : w >= 64 ? 1 : 0;
        };

        float acc[2][4];
#pragma unroll
        for (int nb = 0; nb < 2; nb++)
#pragma unroll
            for (int i = 0; i < 4; i++) acc[nb][i] = 0.f;

        uint4 va0[2][2], va1[2][2], va2[2][2];
        uint2 ia0[2][2], ia1[2][2], ia2[2][2];
        tc_load(va0, ia0, V, I, st0, halves(0), lane);
        tc_load(va1, ia1, V, I, st0 + 1, halves(1), lane);
        // Step st computes buffer cur while step st + 2 is loaded into nxt
        // (the buffer step st - 1 used). st < nst is uniform per block, so
        // the barriers are too; the first one also keeps the previous
        // segment's mmas and reduction away from xs.
#define TC_ITER(ST, CV, CI, NV, NI)                                                     \
    if ((ST) < nst) {                                                                   \
        if ((ST) % TC_KSMAX == 0) {                                                     \
            __syncthreads(); /* the previous chunk's mmas are done with xs */           \
            stage(ST);                                                                  \
            __syncthreads();                                                            \
        }                                                                               \
        tc_load(NV, NI, V, I, st0 + (ST) + 2, halves((ST) + 2), lane);                  \
        tc_mma_step(acc, CV, CI, xs, (ST) % TC_KSMAX, halves(ST), NB, lane);            \
    }
        for (int st = 0; st < nst; st += 3) {
            TC_ITER(st, va0, ia0, va2, ia2)
            TC_ITER(st + 1, va1, ia1, va0, ia0)
            TC_ITER(st + 2, va2, ia2, va1, ia1)
        }
#undef TC_ITER

        // Fragment (nb, i) of lane (g, t): token 8nb + 2t + (i & 1), row r0 + 8(i >> 1).
        if (c > 1) {
            float* slots = ws + (int64_t)rb * maxC * 16 * TC_RB;
            const int rl = warp * 16 + g;  // r0 within the row block
            if (active) {
                float* p = slots + (int64_t)slot * 16 * TC_RB;
#pragma unroll
                for (int nb = 0; nb < 2; nb++)
#pragma unroll
                    for (int i = 0; i < 4; i++) {
                        const int tok = 8 * nb + 2 * t + (i & 1);
                        if (tok < M) __stcg(p + tok * TC_RB + rl + 8 * (i >> 1), acc[nb][i]);
                    }
            }
            __threadfence();
            __syncthreads();
            if (tid == 0) lastBlock = atomicAdd(cnt + rb, 1) == c - 1;
            __syncthreads();
            if (!lastBlock) continue;  // uniform per block
            __threadfence();
            if (active) {
#pragma unroll
                for (int nb = 0; nb < 2; nb++)
#pragma unroll
                    for (int i = 0; i < 4; i++) {
                        const int tok = 8 * nb + 2 * t + (i & 1);
                        float sum = 0.f;
                        if (tok < M)
                            for (int k = 0; k < c; k++) sum += __ldcg(slots + ((int64_t)k * 16 + tok) * TC_RB + rl + 8 * (i >> 1));
                        acc[nb][i] = sum;
                    }
            }
            if (tid == 0) cnt[rb] = 0;
        }
        if (active) {
            const float b0 = bias ? bias[r0] : 0.f, b8 = bias ? bias[r0 + 8] : 0.f;
#pragma unroll
            for (int nb = 0; nb < 2; nb++)
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    const int tok = 8 * nb + 2 * t + (i & 1);
                    const int r = r0 + 8 * (i >> 1);
                    if (tok < M) stf(y + (int64_t)tok * ldy + r, acc[nb][i] + ((i >> 1) ? b8 : b0));
                }
        }
    }
}

// ---------------------------------------------------------------- attention

// cache[b][past+i] = src[b*seq+i], rows of d elements.
template <typename T>
__device__ void kv_append_body(T* cache, const T* src, int batch, int seq, int past, int maxLen, int d) {
    const int64_t n = (int64_t)batch * seq * d;
    for (int64_t e = gtid(); e < n; e += gstride()) {
        const int64_t row = e / d;
        const int c = (int)(e - row * d);
        const int b = (int)(row / seq), i = (int)(row - (int64_t)b * seq);
        cache[((int64_t)b * maxLen + past + i) * d + c] = src[e];
    }
}

// One block (ATTN_WARPS warps) per (head, batch); queries one after the
// other; keys split across warps (key j to warp j % ATTN_WARPS), lanes
// over head dims; online softmax per warp, merged in shared memory.
#define ATTN_WARPS 4
#define ATTN_MAX_HD 256
template <typename T>
__device__ void attn_small_body(T* out, const T* q, const T* kc, const T* vc, const int* mask, int maskLd, int batch, int seq,
                                int past, int maxLen, int heads, int headDim, float scale) {
    __shared__ float qs[ATTN_MAX_HD];
    __shared__ float accs[ATTN_WARPS][ATTN_MAX_HD];
    __shared__ float ms[ATTN_WARPS], ls[ATTN_WARPS];
    const int h = blockIdx.x, b = blockIdx.y;
    if (h >= heads || b >= batch) return;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int d = heads * headDim;
    const int off = h * headDim;
    const int* mk = mask + (int64_t)b * maskLd;
    for (int i = 0; i < seq; i++) {
        const int64_t qrow = (int64_t)b * seq + i;
        __syncthreads();  // previous query's merge is done with the shared buffers
        for (int e = threadIdx.x; e < headDim; e += blockDim.x) qs[e] = ldf(q + qrow * d + off + e);
        __syncthreads();
        float mx = -INFINITY, l = 0.f;
        float acc[ATTN_MAX_HD / 32];
#pragma unroll
        for (int t = 0; t < ATTN_MAX_HD / 32; t++) acc[t] = 0.f;
        const int visible = past + i + 1;
        for (int j = warp; j < visible; j += ATTN_WARPS) {
            if (mk[j] == 0) continue;  // uniform per warp
            const T* kr = kc + ((int64_t)b * maxLen + j) * d + off;
            float s = 0.f;
#pragma unroll
            for (int t = 0; t < ATTN_MAX_HD / 32; t++) {
                const int e = lane + 32 * t;
                if (e < headDim) s += qs[e] * ldf(kr + e);
            }
            s = scale * warp_sum(s);
            const float mn = fmaxf(mx, s);
            const float corr = expf(mx - mn);  // 0 while mx is -inf
            const float p = expf(s - mn);
            l = l * corr + p;
            const T* vr = vc + ((int64_t)b * maxLen + j) * d + off;
#pragma unroll
            for (int t = 0; t < ATTN_MAX_HD / 32; t++) {
                const int e = lane + 32 * t;
                if (e < headDim) acc[t] = acc[t] * corr + p * ldf(vr + e);
            }
            mx = mn;
        }
        if (lane == 0) { ms[warp] = mx; ls[warp] = l; }
#pragma unroll
        for (int t = 0; t < ATTN_MAX_HD / 32; t++) {
            const int e = lane + 32 * t;
            if (e < headDim) accs[warp][e] = acc[t];
        }
        __syncthreads();
        float gm = -INFINITY;
#pragma unroll
        for (int w = 0; w < ATTN_WARPS; w++) gm = fmaxf(gm, ms[w]);
        T* o = out + qrow * d + off;
        if (gm == -INFINITY) {  // no visible key: a padded query
            for (int e = threadIdx.x; e < headDim; e += blockDim.x) stf(o + e, 0.f);
            continue;
        }
        float f[ATTN_WARPS];
        float sum = 0.f;
#pragma unroll
        for (int w = 0; w < ATTN_WARPS; w++) {
            f[w] = ms[w] == -INFINITY ? 0.f : expf(ms[w] - gm);
            sum += ls[w] * f[w];
        }
        const float inv = 1.f / sum;
        for (int e = threadIdx.x; e < headDim; e += blockDim.x) {
            float v = 0.f;
#pragma unroll
            for (int w = 0; w < ATTN_WARPS; w++) v += accs[w][e] * f[w];
            stf(o + e, v * inv);
        }
    }
}

// One block per (query i = blockIdx.x, head = blockIdx.y) of batch entry b.
template <typename T>
__device__ void softmax_causal_body(T* probs, const float* scores, const int* mask, int maskLd, int b, int heads, int seq, int past,
                                    int total, float scale) {
    __shared__ float sh[32];
    const int i = blockIdx.x, h = blockIdx.y;
    if (i >= seq || h >= heads) return;
    const int64_t row = ((int64_t)h * seq + i) * total;
    const float* s = scores + row;
    T* p = probs + row;
    const int* mk = mask + (int64_t)b * maskLd;
    const int visible = past + i + 1;
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < visible; j += blockDim.x)
        if (mk[j] != 0) mx = fmaxf(mx, scale * s[j]);
    mx = block_max(mx, sh);
    if (mx == -INFINITY) {  // no visible key: zeros
        for (int j = threadIdx.x; j < total; j += blockDim.x) stf(p + j, 0.f);
        return;
    }
    float sum = 0.f;
    for (int j = threadIdx.x; j < visible; j += blockDim.x)
        if (mk[j] != 0) sum += expf(scale * s[j] - mx);
    const float inv = 1.f / block_sum(sum, sh);
    for (int j = threadIdx.x; j < total; j += blockDim.x) {
        const float v = (j < visible && mk[j] != 0) ? expf(scale * s[j] - mx) * inv : 0.f;
        stf(p + j, v);
    }
}

// ---------------------------------------------------------------- training

__device__ double block_sum_d(double v, double* sh);
//
// The optimizer side of SLoPe training (package train is the reference):
// the weight gradient of an N:M weight is a dense product dW = dYᵀ·X
// whose kept positions nm_gather compresses into the kept-value layout;
// adamw updates kept values (or dense parameters) and their moments;
// sumsq measures the global gradient norm for clipping.

// out[r][j] (+)= dense[r][col(j)] for the kept value j of row r (portable
// N:M indices); out is fp32 [rows, k], dense [rows, ldd] of type T.
template <typename T>
__device__ void nm_gather_body(float* out, const T* dense, int ldd, const unsigned char* idx, int rows, int cols, int n, int m,
                               int accumulate) {
    const int r = blockIdx.x;
    if (r >= rows) return;
    const int k = cols / m * n;
    const int b = nm_bits(m);
    const int rowBytes = (k * b + 7) >> 3;
    const T* dr = dense + (int64_t)r * ldd;
    float* orow = out + (int64_t)r * k;
    const unsigned char* ir = idx + (int64_t)r * rowBytes;
    for (int j = threadIdx.x; j < k; j += blockDim.x) {
        const int c = (j / n) * m + nm_index(ir, rowBytes, j, b);
        const float g = ldf(dr + c);
        orow[j] = accumulate ? __fadd_rn(orow[j], g) : g;
    }
}

// The double-pruned transpose, dense: dt[c][r] (dt is [cols, rows]) is
// the kept value j of row r at column c when keep[r*k + j] != 0, else 0
// (portable N:M indices; keep one byte per kept value, package ops'
// NMParam.TKeep). Every element is written. cuSPARSELt compresses the
// result as the sparse operand of the input-gradient product.
// Block (bx, by) covers rows [64by, 64by + 64) and the tw = (64/m)*m
// columns from bx*tw (whole groups): it scatters the tile's kept values
// into shared memory, reading them along the rows, then writes the tile
// transposed, consecutive threads on consecutive rows of W.
#define EXT_TILE 64
template <typename T>
__device__ void nm_expand_t_body(T* dt, const T* vals, const unsigned char* idx, const unsigned char* keep, int rows, int cols,
                                 int n, int m) {
    __shared__ float tile[EXT_TILE][EXT_TILE + 1];  // [row - r0][col - c0]
    const int tw = (EXT_TILE / m) * m;
    const int r0 = blockIdx.y * EXT_TILE, c0 = blockIdx.x * tw;
    const int k = cols / m * n;
    const int b = nm_bits(m);
    const int rowBytes = (k * b + 7) >> 3;
    for (int i = threadIdx.x; i < EXT_TILE * EXT_TILE; i += blockDim.x) tile[i / EXT_TILE][i % EXT_TILE] = 0.f;
    __syncthreads();
    const int g0 = c0 / m, g1 = min(cols, c0 + tw) / m;
    const int kt = (g1 - g0) * n;  // kept values per row in the tile
    for (int i = threadIdx.x; i < EXT_TILE * kt; i += blockDim.x) {
        const int rr = i / kt, j = g0 * n + (i - rr * kt);
        const int r = r0 + rr;
        if (r >= rows) continue;
        const int64_t e = (int64_t)r * k + j;
        if (!keep[e]) continue;
        const int c = (j / n) * m + nm_index(idx + (int64_t)r * rowBytes, rowBytes, j, b);
        tile[rr][c - c0] = ldf(vals + e);
    }
    __syncthreads();
    for (int i = threadIdx.x; i < EXT_TILE * EXT_TILE; i += blockDim.x) {
        const int cc = i / EXT_TILE, rr = i % EXT_TILE;
        const int c = c0 + cc, r = r0 + rr;
        if (cc < tw && c < cols && r < rows) stf(dt + (int64_t)c * rows + r, tile[rr][cc]);
    }
}

// nm_pack_t24: W_dpᵀ [cols, rows] 2:4 along its rows (groups of 4
// consecutive rows of W) written straight into the values part of
// cuSPARSELt's compressed form, instead of expanding it densely and
// compressing it again (cuSPARSELt's compress runs at about a thirtieth
// of memory speed). That part is W_dpᵀ's kept values packed row by row:
// row c of W_dpᵀ (column c of W), group g (rows 4g..4g+3 of W) fills
// dst[c·rows/2 + 2g + {0,1}]: two kept values in increasing row order; a
// lone kept value in the second slot when it is the group's last row,
// else in the first; zeros elsewhere (package sparselt, CheckValues,
// verifies this layout on the device before a caller relies on it; the
// metadata part comes from compressing the mask's pattern). W's kept
// values are vals/idx (portable 2:4), keep says which are in W_dp (at
// most two per group of four rows).
//
// One block per tile of PACK_ROWS rows x PACK_COLS columns of W. Phase 1:
// one thread per group of W (two kept values: one 32-bit load of vals,
// one 16-bit load of keep, a nibble of idx) puts the values that keep
// marks into a transposed shared tile, and a presence byte 1 << (row & 3)
// beside each. Phase 2: one thread per (column, group of 4 rows) reads
// the four presence bytes and values as 32-bit words and writes the
// group's two slots with one 32-bit store. Rows of the shared arrays are
// padded to odd word strides (tv 33 words, tp 17) to spread phase 2's
// reads over the banks (tp's still meet two-way once per warp; phase 1's
// stores meet about four-way).
#define PACK_ROWS 64
#define PACK_COLS 128
template <typename T>
__device__ void nm_pack_t24_body(T* dst, const T* vals, const unsigned char* idx, const unsigned char* keep, int rows, int cols) {
    __shared__ __align__(16) unsigned short tv[PACK_COLS][PACK_ROWS + 2];    // [col - c0][row - r0] bf16 bits
    __shared__ __align__(16) unsigned char tp[PACK_COLS][PACK_ROWS + 4];     // presence, 1 << (row & 3)
    const int r0 = blockIdx.y * PACK_ROWS, c0 = blockIdx.x * PACK_COLS;
    const int k = cols / 2;
    const int rowBytes = (k * 2 + 7) >> 3;  // 2 bits per kept value, 4 per group
    unsigned* tp32 = (unsigned*)&tp[0][0];
    for (int i = threadIdx.x; i < PACK_COLS * (PACK_ROWS + 4) / 4; i += blockDim.x) tp32[i] = 0u;
    __syncthreads();
    const int gt = min(cols - c0, PACK_COLS) / 4;  // groups per row in the tile
    const int rt = min(rows - r0, PACK_ROWS);
    for (int i = threadIdx.x; i < rt * gt; i += blockDim.x) {
        const int rr = i / gt, gl = i - rr * gt;
        const int r = r0 + rr, gi = c0 / 4 + gl;
        const int64_t e = (int64_t)r * k + 2 * gi;
        const unsigned short kp = *(const unsigned short*)(keep + e);
        if (!kp) continue;
        const unsigned v = *(const unsigned*)(vals + e);
        const unsigned code = (idx[(int64_t)r * rowBytes + (gi >> 1)] >> ((gi & 1) * 4)) & 0xFu;
        const unsigned char bit = (unsigned char)(1u << (rr & 3));
        if (kp & 0xFFu) {
            const int cc = 4 * gl + (int)(code & 3u);
            tv[cc][rr] = (unsigned short)(v & 0xFFFFu);
            tp[cc][rr] = bit;
        }
        if (kp >> 8) {
            const int cc = 4 * gl + (int)(code >> 2);
            tv[cc][rr] = (unsigned short)(v >> 16);
            tp[cc][rr] = bit;
        }
    }
    __syncthreads();
    const int half = rows / 2;
    const int qt = rt / 4;  // groups of 4 rows in the tile
    for (int i = threadIdx.x; i < gt * 4 * qt; i += blockDim.x) {
        const int cc = i / qt, gg = i - cc * qt;
        const unsigned pw = *(const unsigned*)&tp[cc][4 * gg];
        const unsigned bits = (pw | pw >> 8 | pw >> 16 | pw >> 24) & 0xFu;
        const unsigned lo = *(const unsigned*)&tv[cc][4 * gg], hi = *(const unsigned*)&tv[cc][4 * gg + 2];
        // the four rows' values, row q in q16(q)
        unsigned out = 0u;
        if (bits) {
            const int q0 = __ffs(bits) - 1;
            const unsigned rest = bits & (bits - 1);
            const unsigned v0 = ((q0 < 2 ? lo : hi) >> (16 * (q0 & 1))) & 0xFFFFu;
            if (rest) {
                const int q1 = __ffs(rest) - 1;
                const unsigned v1 = ((q1 < 2 ? lo : hi) >> (16 * (q1 & 1))) & 0xFFFFu;
                out = v0 | v1 << 16;
            } else {
                out = q0 == 3 ? v0 << 16 : v0;
            }
        }
        *(unsigned*)(dst + (int64_t)(c0 + cc) * half + r0 / 2 + 2 * gg) = out;
    }
}

// nm_pack_t24_reg: nm_pack_t24's result without shared memory, for
// cols a multiple of 32 (vals and keep 16-byte aligned, idx and dst
// 4-byte aligned). Each thread takes one group of four rows of W and
// PACKR_GROUPS = 8 groups of four columns: it reads its four rows'
// part with vector loads (32 bytes of values, 16 of keep, 4 of idx per
// row), then writes the 32 columns' words of its row group. The lanes of
// a warp take 32 consecutive row groups, so each store of the warp fills
// 128 contiguous bytes of one row of dst; a block's 8 warps take 8
// consecutive chunks of columns of the same 128 rows, so its loads read
// whole sectors. Grid: (ceil(cols / 256), ceil(rows / 128)), 256
// threads (kernels.go: packRegCols, packRegRows). BenchmarkGPUNMPackT24
// on an H200 (docs/gpu-logs/h200-20261127T181553Z-pack.txt): 2.3-2.4
// TB/s, against 1.4-1.5 for the tiled kernel's transpose through shared
// memory.
#define PACKR_GROUPS 8

extern "C" __global__ void __launch_bounds__(256) nm_pack_t24_reg_bf16(bf16* dst, const bf16* vals, const unsigned char* idx,
                                                                     const unsigned char* keep, int rows, int cols) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int rg = blockIdx.y * 32 + lane;                                     // group of 4 rows
    const int gi0 = (blockIdx.x * (blockDim.x >> 5) + warp) * PACKR_GROUPS;   // first group of 4 columns
    if (4 * rg >= rows || 4 * gi0 >= cols) return;
    const int k = cols / 2;
    const int rowBytes = cols >> 3;  // 2 bits per kept value
    uint4 va[4], vb[4], kp[4];
    unsigned code[4];
#pragma unroll
    for (int q = 0; q < 4; q++) {
        const int64_t r = 4 * rg + q;
        const uint4* vp = (const uint4*)(vals + r * k + 2 * gi0);
        va[q] = vp[0];
        vb[q] = vp[1];
        kp[q] = *(const uint4*)(keep + r * k + 2 * gi0);
        code[q] = *(const unsigned*)(idx + r * rowBytes + gi0 / 2);
    }
    const int64_t half = rows / 2;
#pragma unroll
    for (int g = 0; g < PACKR_GROUPS; g++) {
        unsigned vw[4], kw[4], cd[4];
#pragma unroll
        for (int q = 0; q < 4; q++) {
            vw[q] = g < 4 ? u4w(va[q], g) : u4w(vb[q], g - 4);  // kept values 2g (low half) and 2g+1
            kw[q] = u4w(kp[q], g >> 1) >> ((g & 1) * 16);       // their keep bytes, low first
            cd[q] = (code[q] >> (4 * g)) & 0xFu;                // their columns in the group: bits 0-1, 2-3
        }
#pragma unroll
        for (int c = 0; c < 4; c++) {
            // The kept values of column c in rows 4rg..4rg+3, the first two
            // in increasing row order; a lone one in slot 1 when in row 3.
            unsigned out = 0u;
            int n = 0, last = 0;
#pragma unroll
            for (int q = 0; q < 4; q++) {
                const bool p0 = (kw[q] & 0xFFu) != 0 && (cd[q] & 3u) == (unsigned)c;
                const bool p1 = (kw[q] & 0xFF00u) != 0 && (cd[q] >> 2) == (unsigned)c;
                if (p0 || p1) {
                    const unsigned v = p0 ? (vw[q] & 0xFFFFu) : (vw[q] >> 16);
                    if (n == 0) out = v;
                    else if (n == 1) out |= v << 16;
                    n++;
                    last = q;
                }
            }
            if (n == 1 && last == 3) out <<= 16;
            *(unsigned*)(dst + (int64_t)(4 * (gi0 + g) + c) * half + 2 * rg) = out;
        }
    }
}

// nm_tmask24: the transpose mask's refresh by magnitude for a 2:4 weight
// W [rows, cols] in the portable layout (fp32 values vals, indices idx):
// in every column and group of 4 rows, of W's kept values there the 2 of
// largest magnitude are kept (all when there are at most 2; ties to the
// lower row; a NaN larger than any number), as format.DoublePruneMagnitude
// decides. keep gets one byte per kept value, 1 or 0, in W's values
// order. One block per 64 x 64 tile of W: phase 1 puts each kept value's
// key (its bits with the sign cleared, plus one: 0 marks an absent
// entry) and its index among the tile's values of its row into
// transposed shared arrays; phase 2 ranks each (column, group of 4 rows) and writes the
// four decisions.
template <typename T>
__device__ void nm_tmask24_body(unsigned char* keep, const T* vals, const unsigned char* idx, int rows, int cols) {
    __shared__ unsigned tk[EXT_TILE][EXT_TILE + 1];       // [col - c0][row - r0]: key + 1, 0 absent
    __shared__ unsigned char tj[EXT_TILE][EXT_TILE + 4];   // [col - c0][row - r0]: index in the tile's part of the row's values
    const int r0 = blockIdx.y * EXT_TILE, c0 = blockIdx.x * EXT_TILE;
    const int k = cols / 2;
    const int rowBytes = (k * 2 + 7) >> 3;
    for (int i = threadIdx.x; i < EXT_TILE * (EXT_TILE + 1); i += blockDim.x) (&tk[0][0])[i] = 0u;
    __syncthreads();
    const int gt = min(cols - c0, EXT_TILE) / 4;
    const int rt = min(rows - r0, EXT_TILE);
    for (int i = threadIdx.x; i < rt * gt * 2; i += blockDim.x) {
        const int rr = i / (gt * 2), jl = i - rr * gt * 2;  // jl: kept value of the tile's row
        const int r = r0 + rr, j = c0 / 2 + jl;
        const int cc = (jl >> 1) * 4 + nm_index(idx + (int64_t)r * rowBytes, rowBytes, j, 2);
        const float v = ldf(vals + (int64_t)r * k + j);
        tk[cc][rr] = (__float_as_uint(v) & 0x7FFFFFFFu) + 1u;
        tj[cc][rr] = (unsigned char)jl;
    }
    __syncthreads();
    const int qt = rt / 4;
    for (int i = threadIdx.x; i < gt * 4 * qt; i += blockDim.x) {
        const int cc = i / qt, gg = i - cc * qt;
        unsigned key[4];
#pragma unroll
        for (int q = 0; q < 4; q++) key[q] = tk[cc][4 * gg + q];
#pragma unroll
        for (int q = 0; q < 4; q++) {
            if (!key[q]) continue;
            int beaten = 0;
#pragma unroll
            for (int o = 0; o < 4; o++) beaten += (key[o] > key[q]) || (o < q && key[o] == key[q]);
            const int r = r0 + 4 * gg + q;
            keep[(int64_t)r * k + c0 / 2 + tj[cc][4 * gg + q]] = beaten < 2 ? 1 : 0;
        }
    }
}

extern "C" __global__ void nm_tmask24_f32(unsigned char* keep, const float* vals, const unsigned char* idx, int rows, int cols) {
    nm_tmask24_body<float>(keep, vals, idx, rows, cols);
}

// adamw_f32's scalars (kernels.AdamWStep).
struct AdamWArgs {
    float gscale;
    double b1, omb1, b2, omb2, lr, eps, shrink, bc1, bc2;
};

// One element's update of adamw_f32; returns the new w.
__device__ __forceinline__ float adamw_one(float w, float grad, float& m, float& v, const AdamWArgs& a) {
    const double g = (double)__fmul_rn(grad, a.gscale);
    const double mi = __dadd_rn(__dmul_rn(a.b1, (double)m), __dmul_rn(a.omb1, g));
    const double vi = __dadd_rn(__dmul_rn(a.b2, (double)v), __dmul_rn(__dmul_rn(a.omb2, g), g));
    m = (float)mi;
    v = (float)vi;
    const double step = __ddiv_rn(__dmul_rn(a.lr, __ddiv_rn(mi, a.bc1)), __dadd_rn(__dsqrt_rn(__ddiv_rn(vi, a.bc2)), a.eps));
    return (float)__dsub_rn(__dmul_rn((double)w, a.shrink), step);
}

// AdamW with decoupled weight decay, in the CPU trainer's arithmetic
// (train.Trainer.adamW): g = grad·gscale in fp32, then in fp64
//   m = β1·m + (1-β1)·g,  v = β2·v + ((1-β2)·g)·g
//   w = w·shrink - (lr·(m/bc1)) / (sqrt(v/bc2) + ε)
// with every product and sum rounded separately (no contraction), so the
// result is bit-identical to the CPU's; m, v, w stored as fp32, and w
// also as bf16 in wbf when wbf is not null.
//
// With w, grad, mom1 and mom2 16-byte aligned (and wbf 8-byte aligned or
// null), each thread takes four elements per 16-byte load and store (four
// independent updates in flight: the kernel is bound by memory latency
// otherwise), and the last n % 4 one at a time; unaligned, one at a time.
extern "C" __global__ void adamw_f32(float* w, const float* grad, float* mom1, float* mom2, bf16* wbf, int64_t n, float gscale, double b1,
                          double omb1, double b2, double omb2, double lr, double eps, double shrink, double bc1, double bc2) {
    const AdamWArgs a = {gscale, b1, omb1, b2, omb2, lr, eps, shrink, bc1, bc2};
    int64_t done = 0;
    if ((((uintptr_t)w | (uintptr_t)grad | (uintptr_t)mom1 | (uintptr_t)mom2) & 15) == 0 && ((uintptr_t)wbf & 7) == 0) {
        const int64_t n4 = n / 4;
        for (int64_t i = gtid(); i < n4; i += gstride()) {
            float4 wv = ((const float4*)w)[i], mv = ((const float4*)mom1)[i], vv = ((const float4*)mom2)[i];
            const float4 gv = ((const float4*)grad)[i];
            wv.x = adamw_one(wv.x, gv.x, mv.x, vv.x, a);
            wv.y = adamw_one(wv.y, gv.y, mv.y, vv.y, a);
            wv.z = adamw_one(wv.z, gv.z, mv.z, vv.z, a);
            wv.w = adamw_one(wv.w, gv.w, mv.w, vv.w, a);
            ((float4*)w)[i] = wv;
            ((float4*)mom1)[i] = mv;
            ((float4*)mom2)[i] = vv;
            if (wbf) ((uint2*)wbf)[i] = make_uint2(pack_bf2(wv.x, wv.y), pack_bf2(wv.z, wv.w));
        }
        done = n4 * 4;
    }
    for (int64_t i = done + gtid(); i < n; i += gstride()) {
        float m = mom1[i], v = mom2[i];
        const float wn = adamw_one(w[i], grad[i], m, v, a);
        mom1[i] = m;
        mom2[i] = v;
        w[i] = wn;
        if (wbf) wbf[i] = __float2bfloat16_rn(wn);
    }
}

// parts[blockIdx.x] = this block's share of the sum of g[i]^2 (fp64; a
// grid-stride loop, by four with g 16-byte aligned, then a fixed
// reduction tree): sum_f64 adds the parts in a fixed order, so the sum
// has the same bits on every run.
extern "C" __global__ void sumsq_f32(double* parts, const float* g, int64_t n) {
    __shared__ double part[32];
    double s = 0.0;
    int64_t done = 0;
    if (((uintptr_t)g & 15) == 0) {
        const int64_t n4 = n / 4;
        for (int64_t i = gtid(); i < n4; i += gstride()) {
            const float4 v = ((const float4*)g)[i];
            s = __dadd_rn(s, __dmul_rn((double)v.x, (double)v.x));
            s = __dadd_rn(s, __dmul_rn((double)v.y, (double)v.y));
            s = __dadd_rn(s, __dmul_rn((double)v.z, (double)v.z));
            s = __dadd_rn(s, __dmul_rn((double)v.w, (double)v.w));
        }
        done = n4 * 4;
    }
    for (int64_t i = done + gtid(); i < n; i += gstride()) {
        const double v = (double)g[i];
        s = __dadd_rn(s, __dmul_rn(v, v));
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) part[warp] = s;
    __syncthreads();
    if (warp == 0) {
        s = lane < (int)(blockDim.x >> 5) ? part[lane] : 0.0;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        if (lane == 0) parts[blockIdx.x] = s;
    }
}

// *out += the sum of parts[0..n) (one block; fixed order).
extern "C" __global__ void sum_f64(double* out, const double* parts, int n) {
    __shared__ double sh[32];
    double s = 0.0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += parts[i];
    s = block_sum_d(s, sh);
    if (threadIdx.x == 0) *out += s;
}

// ---------------------------------------------------------------- backward
//
// The backward passes of the training ops (package ops' CPU GradSteps are
// the reference). T is the activation type (float or bf16; activation
// gradients have it too); parameter gradients and column-sum parts are
// fp32, and all arithmetic is fp32 or wider. Every kernel ADDS into its
// gradient outputs, as the ops' Backward contract says, and none uses
// atomics: a gradient is the same bits on every run.

// d act(x)/dx for the activation codes of activate.
__device__ __forceinline__ float activate_grad(float x, int act) {
    switch (act) {
    case 1: return x > 0.f ? 1.f : 0.f;
    case 2: return 0.5f * (1.f + erff(x * 0.70710678118654752f)) + x * 0.39894228040143268f * expf(-0.5f * x * x);
    case 3: {
        const float k = 0.79788456080286536f;
        const float t = tanhf(k * (x + 0.044715f * x * x * x));
        return 0.5f * (1.f + t) + 0.5f * x * (1.f - t * t) * k * (1.f + 3.f * 0.044715f * x * x);
    }
    case 4: {
        const float sg = 1.f / (1.f + expf(-x));
        return sg * (1.f + x * (1.f - sg));
    }
    case 5: {
        const float t = tanhf(x);
        return 1.f - t * t;
    }
    case 6: {
        const float sg = 1.f / (1.f + expf(-x));
        return sg * (1.f - sg);
    }
    default: return 1.f;
    }
}

// p[i] = v for n values.
template <typename T>
__device__ void fill_body(T* p, float v, int64_t n) {
    int64_t done = 0;
    if (((uintptr_t)p & 15) == 0) {  // 16-byte stores, then the rest one by one
        constexpr int per = 16 / sizeof(T);
        union {
            T e[per];
            uint4 u;
        } pat;
#pragma unroll
        for (int j = 0; j < per; j++) stf(&pat.e[j], v);
        const int64_t nv = n / per;
        for (int64_t i = gtid(); i < nv; i += gstride()) ((uint4*)p)[i] = pat.u;
        done = nv * per;
    }
    for (int64_t i = done + gtid(); i < n; i += gstride()) stf(p + i, v);
}

// gx[i] += gy[i]·act'(x[i]).
template <typename T>
__device__ void act_bwd_body(T* gx, const T* gy, const T* x, int64_t n, int act) {
    for (int64_t i = gtid(); i < n; i += gstride()) stf(gx + i, ldf(gx + i) + ldf(gy + i) * activate_grad(ldf(x + i), act));
}

// Block-wide double sum; every thread gets the result. sh holds >= 32
// doubles; blockDim.x must be a multiple of 32.
__device__ double block_sum_d(double v, double* sh) {
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    if (lane == 0) sh[wid] = v;
    __syncthreads();
    v = (threadIdx.x < nw) ? sh[threadIdx.x] : 0.0;
    if (wid == 0) {
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    }
    if (threadIdx.x == 0) sh[0] = v;
    __syncthreads();
    const double r = sh[0];
    __syncthreads();
    return r;
}

// LayerNorm's input gradient, one block per row, in fp64 as the CPU does
// (with dim 2 and no affine the gradient is a cancellation of order eps,
// which fp32 loses): with x̂ = (x-mean)·inv and d = gy·gamma,
// gx += inv·(d - mean(d) - x̂·mean(d·x̂)). stats[2r], stats[2r+1] get the
// row's mean and inv for layernorm_bwd_parts. gamma may be null (1).
template <typename T>
__device__ void layernorm_bwd_body(T* gx, float* stats, const T* gy, const T* in, const float* gamma, int rows, int dim, float eps) {
    __shared__ double sh[32];
    const int r = blockIdx.x;
    if (r >= rows) return;
    const T* x = in + (int64_t)r * dim;
    const T* g = gy + (int64_t)r * dim;
    T* o = gx + (int64_t)r * dim;
    double s = 0.0;
    for (int c = threadIdx.x; c < dim; c += blockDim.x) s += (double)ldf(x + c);
    const double mean = block_sum_d(s, sh) / (double)dim;
    double v = 0.0;
    for (int c = threadIdx.x; c < dim; c += blockDim.x) {
        const double d = (double)ldf(x + c) - mean;
        v += d * d;
    }
    const double inv = 1.0 / sqrt(block_sum_d(v, sh) / (double)dim + (double)eps);
    double a = 0.0, b = 0.0;
    for (int c = threadIdx.x; c < dim; c += blockDim.x) {
        const double d = gamma ? (double)ldf(g + c) * (double)gamma[c] : (double)ldf(g + c);
        a += d;
        b += d * (((double)ldf(x + c) - mean) * inv);
    }
    a = block_sum_d(a, sh) / (double)dim;
    b = block_sum_d(b, sh) / (double)dim;
    for (int c = threadIdx.x; c < dim; c += blockDim.x) {
        const double d = gamma ? (double)ldf(g + c) * (double)gamma[c] : (double)ldf(g + c);
        const double xh = ((double)ldf(x + c) - mean) * inv;
        stf(o + c, ldf(o + c) + (float)((d - a - xh * b) * inv));
    }
    if (threadIdx.x == 0) {
        stats[2 * (int64_t)r] = (float)mean;
        stats[2 * (int64_t)r + 1] = (float)inv;
    }
}

// Column sums in two passes, without atomics: col_sum_parts writes the
// sums of row chunks (chunk rows each; grid.y over the chunks, a thread
// per column, rows in order) to parts [chunks][cols], col_sum adds each
// column's parts in chunk order into out. The sums have the same bits on
// every run, and a tall matrix still spreads over the whole GPU.
template <typename T>
__device__ void col_sum_parts_body(float* parts, const T* y, int ldy, int rows, int cols, int chunk) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    const int r0 = blockIdx.y * chunk, r1 = min(rows, r0 + chunk);
    float s = 0.f;
    for (int r = r0; r < r1; r++) s += ldf(y + (int64_t)r * ldy + c);
    parts[(int64_t)blockIdx.y * cols + c] = s;
}

// out[c] += Σ_p parts[p][c] over nparts chunks, in order.
extern "C" __global__ void col_sum_f32(float* out, const float* parts, int nparts, int cols) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    float s = 0.f;
    for (int p = 0; p < nparts; p++) s += parts[(int64_t)p * cols + c];
    out[c] += s;
}

// LayerNorm's parameter gradients, first pass: per chunk of rows (as
// col_sum_parts), parts[0][chunk][c] = Σ gy·x̂ and parts[1][chunk][c] =
// Σ gy, x̂ from each row's stats (layernorm_bwd); col_sum adds them up.
template <typename T>
__device__ void layernorm_bwd_parts_body(float* parts, const T* gy, const T* in, const float* stats, int rows, int dim, int chunk) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= dim) return;
    const int r0 = blockIdx.y * chunk, r1 = min(rows, r0 + chunk);
    float sg = 0.f, sb = 0.f;
    for (int r = r0; r < r1; r++) {
        const float g = ldf(gy + (int64_t)r * dim + c);
        sg += g * (ldf(in + (int64_t)r * dim + c) - stats[2 * r]) * stats[2 * r + 1];
        sb += g;
    }
    parts[(int64_t)blockIdx.y * dim + c] = sg;
    parts[((int64_t)gridDim.y + blockIdx.y) * dim + c] = sb;
}

// Embedding-table gradient without atomics: block u owns table row
// keys[u] (of the fp32 gradient g) and adds gy's rows rows[start[u]] ..
// rows[start[u+1]-1] into it, in that order (the host groups the rows by
// key, keeping row order).
template <typename T>
__device__ void embedding_bwd_body(float* g, const T* gy, const int* keys, const int* start, const int* rows, int n, int dim) {
    const int u = blockIdx.x;
    if (u >= n) return;
    float* gr = g + (int64_t)keys[u] * dim;
    const int a = start[u], b = start[u + 1];
    for (int c = threadIdx.x; c < dim; c += blockDim.x) {
        float s = gr[c];
        for (int i = a; i < b; i++) s += ldf(gy + (int64_t)rows[i] * dim + c);
        gr[c] = s;
    }
}

// Next-token cross-entropy, one block per row of logits y [rows, vocab]:
// loss[r] = max + log(Σ exp(y - max)) - y[target[r]] (the exponentials in
// fp32, their sum and the logarithm in fp64), 0 where target[r] < 0. With
// grad, y is overwritten with the gradient of scale·Σ loss:
// scale·softmax(y) - scale at the target (zeros where target[r] < 0).
template <typename T>
__device__ void cross_entropy_body(T* y, double* loss, const int* target, int rows, int vocab, double scale, int grad) {
    __shared__ float sh[32];
    __shared__ double shd[32];
    const int r = blockIdx.x;
    if (r >= rows) return;
    T* yr = y + (int64_t)r * vocab;
    const int t = target[r];
    if (t < 0) {
        if (grad)
            for (int j = threadIdx.x; j < vocab; j += blockDim.x) stf(yr + j, 0.f);
        if (threadIdx.x == 0) loss[r] = 0.0;
        return;
    }
    const float yt = ldf(yr + t);  // read before any thread writes the row
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) mx = fmaxf(mx, ldf(yr + j));
    mx = block_max(mx, sh);
    double s = 0.0;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) s += (double)expf(ldf(yr + j) - mx);
    s = block_sum_d(s, shd);
    if (threadIdx.x == 0) loss[r] = (double)mx + log(s) - (double)yt;
    if (!grad) return;
    const float sc = (float)(scale / s);
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) stf(yr + j, expf(ldf(yr + j) - mx) * sc);
    __syncthreads();
    if (threadIdx.x == 0) stf(yr + t, ldf(yr + t) - (float)scale);
}

// The softmax's backward, one block per row of cols probabilities p (type
// T) with dp = ∂L/∂p (fp32): ds = scale·p ⊙ (dp - Σ p·dp), type T (for
// float, ds may alias dp). A row of zeros (a query with no visible key)
// gives zeros.
template <typename T>
__device__ void softmax_bwd_body(T* ds, const T* p, const float* dp, int rows, int cols, float scale) {
    __shared__ float sh[32];
    const int r = blockIdx.x;
    if (r >= rows) return;
    const T* pr = p + (int64_t)r * cols;
    const float* dr = dp + (int64_t)r * cols;
    T* o = ds + (int64_t)r * cols;
    float s = 0.f;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) s += ldf(pr + j) * dr[j];
    s = block_sum(s, sh);
    for (int j = threadIdx.x; j < cols; j += blockDim.x) stf(o + j, scale * ldf(pr + j) * (dr[j] - s));
}

#define FOR_T_BWD(T, S)                                                                                                              \
    extern "C" __global__ void fill_##S(T* p, float v, int64_t n) { fill_body<T>(p, v, n); }                                       \
    extern "C" __global__ void act_bwd_##S(T* gx, const T* gy, const T* x, int64_t n, int act) { act_bwd_body<T>(gx, gy, x, n, act); } \
    extern "C" __global__ void layernorm_bwd_##S(T* gx, float* stats, const T* gy, const T* in, const float* gamma, int rows, int dim, \
                                                 float eps) {                                                                      \
        layernorm_bwd_body<T>(gx, stats, gy, in, gamma, rows, dim, eps);                                                           \
    }                                                                                                                              \
    extern "C" __global__ void col_sum_parts_##S(float* parts, const T* y, int ldy, int rows, int cols, int chunk) {               \
        col_sum_parts_body<T>(parts, y, ldy, rows, cols, chunk);                                                                   \
    }                                                                                                                              \
    extern "C" __global__ void layernorm_bwd_parts_##S(float* parts, const T* gy, const T* in, const float* stats, int rows, int dim, \
                                                       int chunk) {                                                                \
        layernorm_bwd_parts_body<T>(parts, gy, in, stats, rows, dim, chunk);                                                       \
    }                                                                                                                              \
    extern "C" __global__ void embedding_bwd_##S(float* g, const T* gy, const int* keys, const int* start, const int* rows, int n,  \
                                                 int dim) {                                                                        \
        embedding_bwd_body<T>(g, gy, keys, start, rows, n, dim);                                                                   \
    }                                                                                                                              \
    extern "C" __global__ void cross_entropy_##S(T* y, double* loss, const int* target, int rows, int vocab, double scale, int grad) { \
        cross_entropy_body<T>(y, loss, target, rows, vocab, scale, grad);                                                          \
    }                                                                                                                              \
    extern "C" __global__ void softmax_bwd_##S(T* ds, const T* p, const float* dp, int rows, int cols, float scale) {              \
        softmax_bwd_body<T>(ds, p, dp, rows, cols, scale);                                                                         \
    }

FOR_T_BWD(float, f32)
FOR_T_BWD(bf16, bf16)

// ---------------------------------------------------------------- entry points

#define FOR_T(T, S)                                                                                                              \
    extern "C" __global__ void embedding_##S(T* out, const int* ids, const int* positions, const T* tok, const T* pos, int rows, \
                                             int dim) {                                                                          \
        embedding_body<T>(out, ids, positions, tok, pos, rows, dim);                                                             \
    }                                                                                                                            \
    extern "C" __global__ void layernorm_##S(T* out, const T* in, const float* gamma, const float* beta, int rows, int dim,     \
                                             float eps) {                                                                        \
        layernorm_body<T>(out, in, gamma, beta, rows, dim, eps);                                                                 \
    }                                                                                                                            \
    extern "C" __global__ void add_##S(T* out, const T* a, const T* b, int64_t n) { add_body<T>(out, a, b, n); }                \
    extern "C" __global__ void bias_act_##S(T* y, int ldy, const float* bias, int rows, int cols, int act) {                    \
        bias_act_body<T>(y, ldy, bias, rows, cols, act);                                                                         \
    }                                                                                                                            \
    extern "C" __global__ void act_##S(T* out, const T* in, int64_t n, int act) { act_body<T>(out, in, n, act); }               \
    extern "C" __global__ void nm_expand_##S(T* dense, const T* vals, const unsigned char* idx, int rows, int cols, int n,      \
                                             int m) {                                                                            \
        nm_expand_body<T>(dense, vals, idx, rows, cols, n, m);                                                                   \
    }                                                                                                                            \
    extern "C" __global__ void kv_append_##S(T* cache, const T* src, int batch, int seq, int past, int maxLen, int d) {         \
        kv_append_body<T>(cache, src, batch, seq, past, maxLen, d);                                                              \
    }                                                                                                                            \
    extern "C" __global__ void __launch_bounds__(ATTN_WARPS * 32)                                                                \
        attn_small_##S(T* out, const T* q, const T* kc, const T* vc, const int* mask, int maskLd, int batch, int seq, int past,  \
                       int maxLen, int heads, int headDim, float scale) {                                                        \
        attn_small_body<T>(out, q, kc, vc, mask, maskLd, batch, seq, past, maxLen, heads, headDim, scale);                       \
    }                                                                                                                            \
    extern "C" __global__ void softmax_causal_##S(T* probs, const float* scores, const int* mask, int maskLd, int b, int heads, \
                                                  int seq, int past, int total, float scale) {                                   \
        softmax_causal_body<T>(probs, scores, mask, maskLd, b, heads, seq, past, total, scale);                                  \
    }

FOR_T(float, f32)
FOR_T(bf16, bf16)

// nm_gather_f32's 2:4 case, one thread per group of four columns: a
// 16-byte load of the group from dense (16-byte aligned, ldd a multiple
// of 4) and an 8-byte store, or load and store, of its two kept values
// (out 8-byte aligned); cols a multiple of 4. The grid-stride loop runs
// over rows·cols/4 groups.
extern "C" __global__ void nm_gather24_f32(float* out, const float* dense, int ldd, const unsigned char* idx, int rows, int cols,
                                           int accumulate) {
    const int gpr = cols / 4;
    const int rowBytes = (cols + 7) >> 3;  // 2 bits per kept value, cols/2 of them
    const int64_t total = (int64_t)rows * gpr;
    for (int64_t g = gtid(); g < total; g += gstride()) {
        const int r = (int)(g / gpr), gi = (int)(g - (int64_t)r * gpr);
        const uint4 d = *(const uint4*)(dense + (int64_t)r * ldd + 4 * gi);
        const unsigned code = (idx[(int64_t)r * rowBytes + (gi >> 1)] >> ((gi & 1) * 4)) & 0xFu;
        float2 v = make_float2(__uint_as_float(u4w(d, code & 3u)), __uint_as_float(u4w(d, code >> 2)));
        float2* o = (float2*)(out + (int64_t)r * (cols / 2) + 2 * gi);
        if (accumulate) {
            const float2 prev = *o;
            v.x = __fadd_rn(prev.x, v.x);
            v.y = __fadd_rn(prev.y, v.y);
        }
        *o = v;
    }
}

#define NM_GATHER(T, S)                                                                                                          \
    extern "C" __global__ void nm_gather_##S(float* out, const T* dense, int ldd, const unsigned char* idx, int rows, int cols,  \
                                             int n, int m, int accumulate) {                                                     \
        nm_gather_body<T>(out, dense, ldd, idx, rows, cols, n, m, accumulate);                                                   \
    }
NM_GATHER(float, f32)
NM_GATHER(bf16, bf16)

#define NM_EXPAND_T(T, S)                                                                                                        \
    extern "C" __global__ void nm_expand_t_##S(T* dt, const T* vals, const unsigned char* idx, const unsigned char* keep,       \
                                               int rows, int cols, int n, int m) {                                               \
        nm_expand_t_body<T>(dt, vals, idx, keep, rows, cols, n, m);                                                              \
    }
NM_EXPAND_T(float, f32)
NM_EXPAND_T(bf16, bf16)

extern "C" __global__ void nm_pack_t24_bf16(bf16* dst, const bf16* vals, const unsigned char* idx, const unsigned char* keep,
                                             int rows, int cols) {
    nm_pack_t24_body<bf16>(dst, vals, idx, keep, rows, cols);
}

#define SPMM(V, SV, T, ST)                                                                                                       \
    extern "C" __global__ void spmm_nm_##SV##_##ST(T* y, int ldy, const T* x, int ldx, const V* vals, const unsigned char* idx, \
                                                   const float* bias, int M, int rows, int cols, int n, int m) {                 \
        spmm_nm_body<V, T>(y, ldy, x, ldx, vals, idx, bias, M, rows, cols, n, m);                                                \
    }

SPMM(float, f32, float, f32)
SPMM(float, f32, bf16, bf16)
SPMM(bf16, bf16, float, f32)
SPMM(bf16, bf16, bf16, bf16)

#define SPMV(T, ST, MT, RW)                                                                                                      \
    extern "C" __global__ void __launch_bounds__(SPMV_WARPS * 32)                                                                \
        spmv24_bf16_##ST##_m##MT(T* y, int ldy, const T* x, int ldx, const bf16* vals, const unsigned char* idx,                 \
                                 const float* bias, int M, int rows, int cols) {                                                 \
        spmv24_body<T, MT, RW>(y, ldy, x, ldx, vals, idx, bias, M, rows, cols);                                                  \
    }

SPMV(float, f32, 1, 1)
SPMV(float, f32, 2, 2)
SPMV(float, f32, 4, 2)
SPMV(float, f32, 8, 2)
SPMV(float, f32, 16, 2)
SPMV(bf16, bf16, 1, 1)
SPMV(bf16, bf16, 2, 2)
SPMV(bf16, bf16, 4, 2)
SPMV(bf16, bf16, 8, 2)
SPMV(bf16, bf16, 16, 2)

#define SPMM24TC(T, ST)                                                                                                          \
    extern "C" __global__ void __launch_bounds__(TC_WARPS * 32, 2)                                                               \
        spmm24tc_bf16_##ST(T* y, int ldy, const T* x, int ldx, const bf16* vals, const unsigned char* idx, const float* bias,   \
                           float* ws, int* cnt, int M, int rows, int cols, int maxC, int spb) {                                  \
        spmm24tc_body<T>(y, ldy, x, ldx, vals, idx, bias, ws, cnt, M, rows, cols, maxC, spb);                                    \
    }

SPMM24TC(float, f32)
SPMM24TC(bf16, bf16)

// ---------------------------------------------------------------- fused attention
//
// attn_fused_bf16: causal attention in one pass on the tensor cores
// (flash-style: the scores never leave registers), bf16 in and out, fp32
// scores, softmax and accumulators. For batch entry bt, head h and query
// i < seq (absolute position past + i), out[bt·seq + i][h·D..] is the
// softmax of scale·q_i·k_j over the keys j <= past + i with
// mask[bt·maskLd + j] != 0, applied to v_j; zeros for a query with no
// such key (as softmax_causal). q and out are [batch·seq, dim], k and v
// [batch, maxLen, dim] (the KV cache, or the new keys with maxLen = seq),
// head h at columns h·D..h·D+D-1; dim and D multiples of 8, k and v
// 16-byte aligned, q and out 4-byte aligned.
//
// Grid (ceil(seq/64), heads, batch), 4 warps; warp w takes queries
// 64·blockIdx.x + 16w .. +15 as the A operand (rows) of
// mma.m16n8k16.bf16 ("Matrix Fragments for mma.m16n8k16 with floating
// point type": with g = lane/4, t = lane%4, A registers 0-3 hold rows g,
// g+8, g, g+8 and columns 2t..2t+1, 2t..2t+1, 2t+8.., 2t+8..; B registers
// 0-1 hold column g and rows 2t.., 2t+8..; C holds rows g (c0, c1) and
// g+8 (c2, c3), columns 2t, 2t+1). Per tile of 64 keys the block stages K
// as [key][d] and V transposed as [d][key] in shared memory, so both B
// operands are 32-bit loads; each warp computes its 16 x 64 scores, masks
// them, updates its rows' running max m and sum l (the quads of a row
// reduce by shuffles), rescales its output rows by exp(m_old - m_new),
// and adds P·V with P's C fragments reused as A fragments (rounded to
// bf16). The block covers the keys up to its last query's position.
#define FA_BQ 64
#define FA_BK 64

__device__ __forceinline__ void mma_16816(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// The online softmax's update for rows g + 8·rr of a warp's tile, whose
// masked, scaled scores are x[nt][2·rr + e] (-inf where masked): the
// rows' max m and sum l of exp(x - m) absorb the tile, x becomes exp(x -
// m_new), and the result is exp(m_old - m_new), the factor that rescales
// what was accumulated with the old max (1 while no key is visible). The
// quad of lanes holding a row reduces by two shuffles.
template <int NT>
__device__ __forceinline__ float fa_online(float (&x)[NT][4], int rr, float& m, float& l) {
    float mx = -INFINITY;
#pragma unroll
    for (int nt = 0; nt < NT; nt++) mx = fmaxf(mx, fmaxf(x[nt][2 * rr], x[nt][2 * rr + 1]));
    mx = fmaxf(mx, __shfl_xor_sync(FULL_MASK, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(FULL_MASK, mx, 2));
    const float mnew = fmaxf(m, mx);
    const float ref = mnew == -INFINITY ? 0.f : mnew;
    const float corr = mnew == -INFINITY ? 1.f : expf(m - mnew);
    float sum = 0.f;
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
#pragma unroll
        for (int e = 0; e < 2; e++) {
            const float p = expf(x[nt][2 * rr + e] - ref);
            x[nt][2 * rr + e] = p;
            sum += p;
        }
    }
    sum += __shfl_xor_sync(FULL_MASK, sum, 1);
    sum += __shfl_xor_sync(FULL_MASK, sum, 2);
    l = l * corr + sum;
    m = mnew;
    return corr;
}

// The fused attention kernels' building blocks, for a tile of T rows of
// keys or queries and head size D.
//
// fa_stage stages rows [r0, r0 + T) of a [*, dim] head slice src (head
// columns at src) into rows[T][D + 8] and/or, transposed, into tr[D][T +
// 8] (either may be null); rows at or past n are zeros. Thread i takes
// row i % T, columns 8·(i / T)..+7, so a warp's shared stores fall in
// distinct banks.
template <int D, int T>
__device__ __forceinline__ void fa_stage(bf16 (*rows)[D + 8], bf16 (*tr)[T + 8], const bf16* src, int r0, int n, int dim) {
    for (int i = threadIdx.x; i < T * D / 8; i += blockDim.x) {
        const int r = i % T, c8 = (i / T) * 8;
        uint4 x = make_uint4(0u, 0u, 0u, 0u);
        if (r0 + r < n) x = *(const uint4*)(src + (int64_t)(r0 + r) * dim + c8);
        if (rows) *(uint4*)&rows[r][c8] = x;
        if (tr) {
            const unsigned short* xe = (const unsigned short*)&x;
#pragma unroll
            for (int j = 0; j < 8; j++) *(unsigned short*)&tr[c8 + j][r] = xe[j];
        }
    }
}

// fa_load_a: the A fragments of 16 rows [r, r + 16) of a [*, dim] head
// slice (rows at or past n are zeros).
template <int D>
__device__ __forceinline__ void fa_load_a(unsigned (&a)[D / 16][4], const bf16* src, int r, int n, int dim, int g, int t) {
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const int row = r + g + 8 * (j & 1), c = 16 * kk + 2 * t + 8 * (j >> 1);
            a[kk][j] = row < n ? *(const unsigned*)(src + (int64_t)row * dim + c) : 0u;
        }
    }
}

// fa_mma_rows: x[nt] = A·Bᵀ for a 16 x T tile, A fragments a (16 x D),
// B's rows staged as rows[T][D + 8] (B[k][n] = rows[n][k]).
template <int D, int T>
__device__ __forceinline__ void fa_mma_rows(float (&x)[T / 8][4], const unsigned (&a)[D / 16][4], const bf16 (*rows)[D + 8], int g, int t) {
#pragma unroll
    for (int nt = 0; nt < T / 8; nt++) {
        x[nt][0] = x[nt][1] = x[nt][2] = x[nt][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) {
            const unsigned b0 = *(const unsigned*)&rows[nt * 8 + g][16 * kk + 2 * t];
            const unsigned b1 = *(const unsigned*)&rows[nt * 8 + g][16 * kk + 8 + 2 * t];
            mma_16816(x[nt], a[kk], b0, b1);
        }
    }
}

// fa_mma_tr: acc[nd] += X·B for X a 16 x T tile in C fragments x (P's
// or dS's, rounded to bf16 as A fragments), B [T][D] staged transposed as
// tr[D][T + 8].
template <int D, int T>
__device__ __forceinline__ void fa_mma_tr(float (&acc)[D / 8][4], const float (&x)[T / 8][4], const bf16 (*tr)[T + 8], int g, int t) {
#pragma unroll
    for (int kk = 0; kk < T / 16; kk++) {
        const unsigned a[4] = {pack_bf2(x[2 * kk][0], x[2 * kk][1]), pack_bf2(x[2 * kk][2], x[2 * kk][3]),
                               pack_bf2(x[2 * kk + 1][0], x[2 * kk + 1][1]), pack_bf2(x[2 * kk + 1][2], x[2 * kk + 1][3])};
#pragma unroll
        for (int nd = 0; nd < D / 8; nd++) {
            const unsigned b0 = *(const unsigned*)&tr[nd * 8 + g][16 * kk + 2 * t];
            const unsigned b1 = *(const unsigned*)&tr[nd * 8 + g][16 * kk + 8 + 2 * t];
            mma_16816(acc[nd], a, b0, b1);
        }
    }
}

// fa_add_rows: dst rows r + g (+8) of a [*, dim] head slice += acc
// (bf16; rows at or past n skipped).
template <int D>
__device__ __forceinline__ void fa_add_rows(bf16* dst, const float (&acc)[D / 8][4], int r, int n, int dim, int g, int t) {
#pragma unroll
    for (int rr = 0; rr < 2; rr++) {
        const int row = r + g + 8 * rr;
        if (row >= n) continue;
#pragma unroll
        for (int nd = 0; nd < D / 8; nd++) {
            __nv_bfloat162* p = (__nv_bfloat162*)(dst + (int64_t)row * dim + nd * 8 + 2 * t);
            const float2 old = __bfloat1622float2(*p);
            *p = __floats2bfloat162_rn(old.x + acc[nd][2 * rr], old.y + acc[nd][2 * rr + 1]);
        }
    }
}

template <int D>
__device__ void attn_fused_body(bf16* out, const bf16* q, const bf16* k, const bf16* v, const int* mask, int maskLd, int seq, int past,
                                int maxLen, int dim, float scale) {
    __shared__ __align__(16) bf16 ks[FA_BK][D + 8];   // [key][d]
    __shared__ __align__(16) bf16 vt[D][FA_BK + 8];   // [d][key]
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int q0 = blockIdx.x * FA_BQ, h = blockIdx.y, bt = blockIdx.z;
    const int qw = q0 + warp * 16;
    const int* mk = mask + (int64_t)bt * maskLd;
    const bf16* qb = q + (int64_t)bt * seq * dim + h * D;
    const bf16* kb = k + (int64_t)bt * maxLen * dim + h * D;
    const bf16* vb = v + (int64_t)bt * maxLen * dim + h * D;
    // This warp's queries as A fragments (rows past seq are zeros).
    unsigned qa[D / 16][4];
    fa_load_a<D>(qa, qb, qw, seq, dim, g, t);
    float o[D / 8][4];
#pragma unroll
    for (int nd = 0; nd < D / 8; nd++) o[nd][0] = o[nd][1] = o[nd][2] = o[nd][3] = 0.f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
    const int nkeys = past + min(q0 + FA_BQ, seq);  // keys the block's last query sees
    for (int k0 = 0; k0 < nkeys; k0 += FA_BK) {
        __syncthreads();  // the previous tile is consumed
        fa_stage<D, FA_BK>(ks, nullptr, kb, k0, nkeys, dim);
        fa_stage<D, FA_BK>(nullptr, vt, vb, k0, nkeys, dim);
        __syncthreads();
        // S = Q·Kᵀ: 16 x FA_BK per warp.
        float s[FA_BK / 8][4];
        fa_mma_rows<D, FA_BK>(s, qa, ks, g, t);
        // Mask and scale; the rows' new max, sum and output scale.
#pragma unroll
        for (int rr = 0; rr < 2; rr++) {
            const int qi = qw + g + 8 * rr;
            const int last = qi < seq ? past + qi : -1;  // the last key the query sees
#pragma unroll
            for (int nt = 0; nt < FA_BK / 8; nt++) {
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    const int key = k0 + nt * 8 + 2 * t + e;
                    const float x = scale * s[nt][2 * rr + e];
                    s[nt][2 * rr + e] = key > last || mk[min(key, nkeys - 1)] == 0 ? -INFINITY : x;
                }
            }
            const float corr = fa_online(s, rr, m[rr], l[rr]);
#pragma unroll
            for (int nd = 0; nd < D / 8; nd++) {
                o[nd][2 * rr] *= corr;
                o[nd][2 * rr + 1] *= corr;
            }
        }
        // O += P·V, P's C fragments as A fragments.
        fa_mma_tr<D, FA_BK>(o, s, vt, g, t);
    }
#pragma unroll
    for (int rr = 0; rr < 2; rr++) {
        const int qi = qw + g + 8 * rr;
        if (qi >= seq) continue;
        const float inv = l[rr] > 0.f ? 1.f / l[rr] : 0.f;
        bf16* orow = out + ((int64_t)bt * seq + qi) * dim + h * D;
#pragma unroll
        for (int nd = 0; nd < D / 8; nd++) *(unsigned*)(orow + nd * 8 + 2 * t) = pack_bf2(o[nd][2 * rr] * inv, o[nd][2 * rr + 1] * inv);
    }
}

extern "C" __global__ void __launch_bounds__(128) attn_fused64_bf16(bf16* out, const bf16* q, const bf16* k, const bf16* v, const int* mask,
                                                                   int maskLd, int seq, int past, int maxLen, int dim, float scale) {
    attn_fused_body<64>(out, q, k, v, mask, maskLd, seq, past, maxLen, dim, scale);
}

extern "C" __global__ void __launch_bounds__(128) attn_fused128_bf16(bf16* out, const bf16* q, const bf16* k, const bf16* v, const int* mask,
                                                                    int maskLd, int seq, int past, int maxLen, int dim, float scale) {
    attn_fused_body<128>(out, q, k, v, mask, maskLd, seq, past, maxLen, dim, scale);
}

// ---------------------------------------------------------------- fused attention backward
//
// The backward of attn_fused over whole sequences (past 0; k, v [batch,
// seq, dim]), bf16, in two kernels that ADD into the input gradients
// (dq, dk, dv; each may be null). With P = softmax(scale·Q·Kᵀ) over the
// visible keys, dO the output's gradient and O the output:
//   Dq_i = dO_i·O_i,  dS = scale·P ⊙ (dO·Vᵀ − Dq),
//   dQ = dS·K,  dK = dSᵀ·Q,  dV = Pᵀ·dO.
// attn_bwd_q (grid (ceil(seq/64), heads, batch), 4 warps, 16 queries per
// warp as in the forward) first passes over the keys for each row's max
// m and sum l of exp, writes lse = m + log l (+inf for a row without
// visible keys, whose P is then 0) and Dq to lse and dq_dot ([heads,
// batch·seq] fp32), then passes again for dQ. attn_bwd_kv (grid
// (ceil(seq/64), heads, batch), 16 keys per warp as the A operand) reads
// them and passes over the queries that see its keys for dK and dV. Key
// and query tiles are 32 wide; the operands staged in shared memory in
// the layout each product's B fragment reads with 32-bit loads.
#define FB_T 32

template <int D>
__device__ void attn_bwd_q_body(bf16* dq, float* lse, float* dqdot, const bf16* q, const bf16* k, const bf16* v, const bf16* o,
                                const bf16* dout, const int* mask, int seq, int dim, float scale) {
    __shared__ __align__(16) bf16 ks[FB_T][D + 8];
    __shared__ __align__(16) bf16 vs[FB_T][D + 8];
    __shared__ __align__(16) bf16 kt[D][FB_T + 8];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int q0 = blockIdx.x * FA_BQ, h = blockIdx.y, bt = blockIdx.z;
    const int qw = q0 + warp * 16;
    const int64_t base = (int64_t)bt * seq * dim + h * D;  // the sequence's head slice
    const int* mk = mask + (int64_t)bt * seq;
    const int64_t stat = (int64_t)h * gridDim.z * seq + (int64_t)bt * seq;  // lse, dq_dot [heads][batch·seq]
    unsigned qa[D / 16][4], da[D / 16][4];
    fa_load_a<D>(qa, q + base, qw, seq, dim, g, t);
    fa_load_a<D>(da, dout + base, qw, seq, dim, g, t);
    // Dq for rows g, g+8: each lane's columns of dO's fragments times O's.
    float dd[2] = {0.f, 0.f};
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const int row = qw + g + 8 * (j & 1), c = 16 * kk + 2 * t + 8 * (j >> 1);
            if (row < seq) {
                const float2 ov = __bfloat1622float2(*(const __nv_bfloat162*)(o + base + (int64_t)row * dim + c));
                dd[j & 1] += bf_lo(da[kk][j]) * ov.x + bf_hi(da[kk][j]) * ov.y;
            }
        }
    }
    const int nkeys = min(q0 + FA_BQ, seq);
    // Pass 1: each row's max and sum of exp.
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
    for (int k0 = 0; k0 < nkeys; k0 += FB_T) {
        __syncthreads();
        fa_stage<D, FB_T>(ks, nullptr, k + base, k0, nkeys, dim);
        __syncthreads();
        float s[FB_T / 8][4];
        fa_mma_rows<D, FB_T>(s, qa, ks, g, t);
#pragma unroll
        for (int rr = 0; rr < 2; rr++) {
            const int qi = qw + g + 8 * rr;
#pragma unroll
            for (int nt = 0; nt < FB_T / 8; nt++) {
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    const int key = k0 + nt * 8 + 2 * t + e;
                    const float x = scale * s[nt][2 * rr + e];
                    s[nt][2 * rr + e] = qi >= seq || key > qi || mk[min(key, nkeys - 1)] == 0 ? -INFINITY : x;
                }
            }
            fa_online(s, rr, m[rr], l[rr]);
        }
    }
    float ls[2];
#pragma unroll
    for (int rr = 0; rr < 2; rr++) {
        dd[rr] += __shfl_xor_sync(FULL_MASK, dd[rr], 1);
        dd[rr] += __shfl_xor_sync(FULL_MASK, dd[rr], 2);
        ls[rr] = l[rr] > 0.f ? m[rr] + logf(l[rr]) : INFINITY;
        const int qi = qw + g + 8 * rr;
        if (t == 0 && qi < seq) {
            lse[stat + qi] = ls[rr];
            dqdot[stat + qi] = dd[rr];
        }
    }
    if (!dq) return;
    // Pass 2: dQ += scale·P ⊙ (dO·Vᵀ − Dq) · K.
    float acc[D / 8][4];
#pragma unroll
    for (int nd = 0; nd < D / 8; nd++) acc[nd][0] = acc[nd][1] = acc[nd][2] = acc[nd][3] = 0.f;
    for (int k0 = 0; k0 < nkeys; k0 += FB_T) {
        __syncthreads();
        fa_stage<D, FB_T>(ks, kt, k + base, k0, nkeys, dim);
        fa_stage<D, FB_T>(vs, nullptr, v + base, k0, nkeys, dim);
        __syncthreads();
        float s[FB_T / 8][4], dp[FB_T / 8][4];
        fa_mma_rows<D, FB_T>(s, qa, ks, g, t);
        fa_mma_rows<D, FB_T>(dp, da, vs, g, t);
#pragma unroll
        for (int rr = 0; rr < 2; rr++) {
            const int qi = qw + g + 8 * rr;
#pragma unroll
            for (int nt = 0; nt < FB_T / 8; nt++) {
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    const int key = k0 + nt * 8 + 2 * t + e;
                    const bool vis = qi < seq && key <= qi && mk[min(key, nkeys - 1)] != 0;
                    const float p = vis ? expf(scale * s[nt][2 * rr + e] - ls[rr]) : 0.f;
                    s[nt][2 * rr + e] = scale * p * (dp[nt][2 * rr + e] - dd[rr]);
                }
            }
        }
        fa_mma_tr<D, FB_T>(acc, s, kt, g, t);
    }
    fa_add_rows<D>(dq + base, acc, qw, seq, dim, g, t);
}

template <int D>
__device__ void attn_bwd_kv_body(bf16* dk, bf16* dv, const float* lse, const float* dqdot, const bf16* q, const bf16* k, const bf16* v,
                                 const bf16* dout, const int* mask, int seq, int dim, float scale) {
    __shared__ __align__(16) bf16 qs[FB_T][D + 8];
    __shared__ __align__(16) bf16 qt[D][FB_T + 8];
    __shared__ __align__(16) bf16 ds_[FB_T][D + 8];
    __shared__ __align__(16) bf16 dt[D][FB_T + 8];
    __shared__ float sl[FB_T], sd[FB_T];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int k0 = blockIdx.x * FA_BQ, h = blockIdx.y, bt = blockIdx.z;
    const int kw = k0 + warp * 16;  // this warp's first key
    const int64_t base = (int64_t)bt * seq * dim + h * D;
    const int* mk = mask + (int64_t)bt * seq;
    const int64_t stat = (int64_t)h * gridDim.z * seq + (int64_t)bt * seq;
    unsigned ka[D / 16][4], va[D / 16][4];
    fa_load_a<D>(ka, k + base, kw, seq, dim, g, t);
    fa_load_a<D>(va, v + base, kw, seq, dim, g, t);
    float gk[D / 8][4], gv[D / 8][4];
#pragma unroll
    for (int nd = 0; nd < D / 8; nd++) {
        gk[nd][0] = gk[nd][1] = gk[nd][2] = gk[nd][3] = 0.f;
        gv[nd][0] = gv[nd][1] = gv[nd][2] = gv[nd][3] = 0.f;
    }
    // The warp's keys' mask (rows g, g+8).
    bool kon[2];
#pragma unroll
    for (int rr = 0; rr < 2; rr++) kon[rr] = kw + g + 8 * rr < seq && mk[min(kw + g + 8 * rr, seq - 1)] != 0;
    static_assert(FA_BQ % FB_T == 0, "a key block starts a query tile");
    for (int r0 = k0; r0 < seq; r0 += FB_T) {  // earlier queries see none of the block's keys
        __syncthreads();
        fa_stage<D, FB_T>(qs, qt, q + base, r0, seq, dim);
        fa_stage<D, FB_T>(ds_, dt, dout + base, r0, seq, dim);
        for (int i = threadIdx.x; i < FB_T; i += blockDim.x) {
            sl[i] = r0 + i < seq ? lse[stat + r0 + i] : INFINITY;
            sd[i] = r0 + i < seq ? dqdot[stat + r0 + i] : 0.f;
        }
        __syncthreads();
        // Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ: 16 keys x FB_T queries.
        float s[FB_T / 8][4], dp[FB_T / 8][4];
        fa_mma_rows<D, FB_T>(s, ka, qs, g, t);
        fa_mma_rows<D, FB_T>(dp, va, ds_, g, t);
#pragma unroll
        for (int rr = 0; rr < 2; rr++) {
            const int key = kw + g + 8 * rr;
#pragma unroll
            for (int nt = 0; nt < FB_T / 8; nt++) {
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    const int qc = nt * 8 + 2 * t + e;  // query r0 + qc
                    const bool vis = kon[rr] && key <= r0 + qc;  // sl is +inf past seq
                    const float p = vis ? expf(scale * s[nt][2 * rr + e] - sl[qc]) : 0.f;
                    s[nt][2 * rr + e] = p;                                      // Pᵀ
                    dp[nt][2 * rr + e] = scale * p * (dp[nt][2 * rr + e] - sd[qc]);  // dSᵀ
                }
            }
        }
        fa_mma_tr<D, FB_T>(gv, s, dt, g, t);
        fa_mma_tr<D, FB_T>(gk, dp, qt, g, t);
    }
    if (dk) fa_add_rows<D>(dk + base, gk, kw, seq, dim, g, t);
    if (dv) fa_add_rows<D>(dv + base, gv, kw, seq, dim, g, t);
}

#define ATTN_BWD(D)                                                                                                               \
    extern "C" __global__ void __launch_bounds__(128) attn_bwd_q##D##_bf16(bf16* dq, float* lse, float* dqdot, const bf16* q,      \
                                                                         const bf16* k, const bf16* v, const bf16* o,              \
                                                                         const bf16* dout, const int* mask, int seq, int dim,      \
                                                                         float scale) {                                           \
        attn_bwd_q_body<D>(dq, lse, dqdot, q, k, v, o, dout, mask, seq, dim, scale);                                              \
    }                                                                                                                             \
    extern "C" __global__ void __launch_bounds__(128) attn_bwd_kv##D##_bf16(bf16* dk, bf16* dv, const float* lse,                 \
                                                                          const float* dqdot, const bf16* q, const bf16* k,       \
                                                                          const bf16* v, const bf16* dout, const int* mask,       \
                                                                          int seq, int dim, float scale) {                        \
        attn_bwd_kv_body<D>(dk, dv, lse, dqdot, q, k, v, dout, mask, seq, dim, scale);                                            \
    }
ATTN_BWD(64)
ATTN_BWD(128)
