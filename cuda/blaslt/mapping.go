package blaslt

import (
	"errors"
	"fmt"
)

// Enum values from the CUDA 13 headers (cublasLt.h, cublas_api.h,
// library_types.h).
const (
	cudaR32F  = 0  // CUDA_R_32F
	cudaR16F  = 2  // CUDA_R_16F
	cudaR16BF = 14 // CUDA_R_16BF

	cublasCompute32F = 68 // CUBLAS_COMPUTE_32F (not _FAST_TF32 = 77)

	cublasOpN = 0 // CUBLAS_OP_N
	cublasOpT = 1 // CUBLAS_OP_T

	// cublasLtMatmulDescAttributes_t
	descTransA = 3 // CUBLASLT_MATMUL_DESC_TRANSA (int32)
	descTransB = 4 // CUBLASLT_MATMUL_DESC_TRANSB (int32)

	// cublasLtMatrixLayoutAttribute_t
	layoutBatchCount   = 5 // CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT (int32)
	layoutStridedBatch = 6 // CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET (int64)

	// cublasLtMatmulPreferenceAttributes_t
	prefMaxWorkspace = 1 // CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES (uint64)
	prefMinAlignA    = 5 // CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES (uint32)
	prefMinAlignB    = 6 // ..._B_BYTES
	prefMinAlignC    = 7 // ..._C_BYTES
	prefMinAlignD    = 8 // ..._D_BYTES

	descEpilogue    = 7 // CUBLASLT_MATMUL_DESC_EPILOGUE (uint32)
	descBiasPointer = 8 // CUBLASLT_MATMUL_DESC_BIAS_POINTER (void*)
	epilogueBias    = 4 // CUBLASLT_EPILOGUE_BIAS
)

// DType is an element type of a Gemm operand. Its values are the
// cudaDataType values of library_types.h, so the zero value is F32.
type DType int

// Supported element types.
const (
	F32  DType = cudaR32F
	F16  DType = cudaR16F
	BF16 DType = cudaR16BF
)

// Size returns the bytes of one element (0 for an unknown type).
func (t DType) Size() int {
	switch t {
	case F32:
		return 4
	case F16, BF16:
		return 2
	}
	return 0
}

func (t DType) String() string {
	switch t {
	case F32:
		return "f32"
	case F16:
		return "f16"
	case BF16:
		return "bf16"
	}
	return fmt.Sprintf("DType(%d)", int(t))
}

// ErrShape is wrapped by every error about an invalid Gemm description.
var ErrShape = errors.New("blaslt: invalid gemm")

// colMatrix is one cuBLASLt (column-major) matrix layout.
type colMatrix struct {
	Rows, Cols, Ld int64
	Stride         int64 // elements between batch entries (0 when Batch == 1)
}

// colProblem is the column-major cuBLASLt problem that computes a
// row-major Gemm:
//
//	D' = op(A')·op(B'), with A' = g.B, B' = g.A, D' = g.D
//
// A row-major matrix X[r,c] with leading dimension ld is, in the same
// memory, the column-major matrix Xᵀ [c,r] with the same ld. So the
// row-major D = A·op(B) is the column-major Dᵀ = op(B)ᵀ·Aᵀ: cuBLASLt's
// "A" is our B and its "B" is our A, m = N, n = M, k = K.
//
//   - our A [M,K] row-major is column-major Aᵀ [K,M]: B' as stored,
//     transb = N.
//   - TransA: our A is stored [K,M] row-major (op(A) = its transpose),
//     which is column-major [M,K]; B' must be op(A)ᵀ [K,M] = that stored
//     matrix transposed, so transb = T.
//   - TransB false: our B [K,N] row-major is column-major Bᵀ [N,K] = op(B)ᵀ:
//     A' stored [N,K], transa = N.
//   - TransB true: our B [N,K] row-major is column-major Bᵀ [K,N]; op(B)ᵀ
//     = B = (Bᵀ)ᵀ: A' stored [K,N], transa = T.
//   - D [M,N] row-major is column-major Dᵀ [N,M]: D' (and C') [N,M].
type colProblem struct {
	M, N, K        int64 // cuBLASLt m, n, k (= Gemm N, M, K)
	TransA, TransB bool  // cuBLASLt transa (our TransB), transb (our TransA)
	A, B, D        colMatrix
	C              *colMatrix // nil: C' is D'
	Batch          int32
	SwapAB         bool // always true: A' is g.B and B' is g.A
}

// columnMajor validates g and returns the cuBLASLt problem Run issues.
func columnMajor(g *Gemm) (colProblem, error) {
	var p colProblem
	bad := func(format string, args ...any) (colProblem, error) {
		return colProblem{}, fmt.Errorf("%w: %s (%s)", ErrShape, fmt.Sprintf(format, args...), g.shape())
	}
	if g.M <= 0 || g.N <= 0 || g.K <= 0 {
		return bad("M, N, K must be positive")
	}
	if g.AB.Size() == 0 || g.Out.Size() == 0 {
		return bad("unknown dtype")
	}
	if g.AB == F32 && g.Out != F32 {
		return bad("f32 inputs need an f32 output")
	}
	aCols := g.K // row length of A as stored
	if g.TransA {
		aCols = g.M
	}
	if g.LdA < aCols {
		return bad("LdA %d < %d", g.LdA, aCols)
	}
	bCols := g.N // row length of B as stored
	if g.TransB {
		bCols = g.K
	}
	if g.LdB < bCols {
		return bad("LdB %d < %d", g.LdB, bCols)
	}
	if g.LdD < g.N {
		return bad("LdD %d < N %d", g.LdD, g.N)
	}
	if g.Batch < 0 {
		return bad("negative Batch")
	}
	batch := max(g.Batch, 1)
	if (g.C != 0 || g.Bias != 0) && batch > 1 {
		return bad("C and Bias need a single product")
	}
	if g.C != 0 && g.LdC < g.N {
		return bad("LdC %d < N %d", g.LdC, g.N)
	}
	if batch > 1 && (g.StrideA < 0 || g.StrideB < 0 || g.StrideD < 0) {
		return bad("negative stride")
	}
	if int64(batch) > 1<<31-1 {
		return bad("Batch too large")
	}
	stride := func(s int64) int64 {
		if batch == 1 {
			return 0
		}
		return s
	}
	p = colProblem{
		M: int64(g.N), N: int64(g.M), K: int64(g.K),
		TransA: g.TransB, TransB: g.TransA,
		B:      colMatrix{Rows: int64(g.K), Cols: int64(g.M), Ld: int64(g.LdA), Stride: stride(g.StrideA)},
		D:      colMatrix{Rows: int64(g.N), Cols: int64(g.M), Ld: int64(g.LdD), Stride: stride(g.StrideD)},
		Batch:  int32(batch),
		SwapAB: true,
	}
	if g.C != 0 {
		p.C = &colMatrix{Rows: int64(g.N), Cols: int64(g.M), Ld: int64(g.LdC)}
	}
	if g.TransA {
		p.B = colMatrix{Rows: int64(g.M), Cols: int64(g.K), Ld: int64(g.LdA), Stride: stride(g.StrideA)}
	}
	if g.TransB {
		p.A = colMatrix{Rows: int64(g.K), Cols: int64(g.N), Ld: int64(g.LdB), Stride: stride(g.StrideB)}
	} else {
		p.A = colMatrix{Rows: int64(g.N), Cols: int64(g.K), Ld: int64(g.LdB), Stride: stride(g.StrideB)}
	}
	return p, nil
}

// planKey identifies the cached descriptor, layouts and algorithm of a
// Gemm: every field but the pointers, Alpha and Beta, plus the alignment
// class of the pointers (which limits the algorithms cuBLASLt may pick).
type planKey struct {
	M, N, K                   int
	LdA, LdB, LdD             int
	StrideA, StrideB, StrideD int64
	TransA, TransB            bool
	Batch                     int
	AB, Out                   DType
	AlignA, AlignB, AlignD    uint32
	// LdC is 0 when C is D; AlignC likewise follows D then.
	LdC    int
	AlignC uint32
	Bias   bool
}

// keyOf returns the plan key of g (g must be valid).
func keyOf(g *Gemm) planKey {
	batch := max(g.Batch, 1)
	k := planKey{
		M: g.M, N: g.N, K: g.K, LdA: g.LdA, LdB: g.LdB, LdD: g.LdD,
		TransA: g.TransA, TransB: g.TransB, Batch: batch, AB: g.AB, Out: g.Out,
		AlignA: alignment(uint64(g.A), g.StrideA, batch, g.AB.Size()),
		AlignB: alignment(uint64(g.B), g.StrideB, batch, g.AB.Size()),
		AlignD: alignment(uint64(g.D), g.StrideD, batch, g.Out.Size()),
		Bias:   g.Bias != 0,
	}
	k.AlignC = k.AlignD
	if g.C != 0 {
		k.LdC, k.AlignC = g.LdC, alignment(uint64(g.C), 0, 1, g.Out.Size())
	}
	if batch > 1 {
		k.StrideA, k.StrideB, k.StrideD = g.StrideA, g.StrideB, g.StrideD
	}
	return k
}

// maxAlign is cuBLASLt's default (and largest useful) alignment
// preference in bytes.
const maxAlign = 256

// alignment returns the largest power of two, at most 256, dividing the
// address of every batch entry of a matrix (addr + i·stride·elemSize).
func alignment(addr uint64, stride int64, batch, elemSize int) uint32 {
	v := addr
	if batch > 1 {
		v |= uint64(stride) * uint64(elemSize)
	}
	a := uint32(maxAlign)
	for a > 1 && v%uint64(a) != 0 {
		a >>= 1
	}
	return a
}

func (g *Gemm) shape() string {
	s := fmt.Sprintf("M=%d N=%d K=%d ldA=%d ldB=%d ldD=%d transA=%v transB=%v %s->%s", g.M, g.N, g.K, g.LdA, g.LdB, g.LdD, g.TransA, g.TransB, g.AB, g.Out)
	if g.Batch > 1 {
		s += fmt.Sprintf(" batch=%d strides=%d/%d/%d", g.Batch, g.StrideA, g.StrideB, g.StrideD)
	}
	if g.C != 0 {
		s += fmt.Sprintf(" ldC=%d", g.LdC)
	}
	if g.Bias != 0 {
		s += " +bias"
	}
	return s
}
