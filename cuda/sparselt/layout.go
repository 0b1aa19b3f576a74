package sparselt

import (
	"errors"
	"fmt"
)

// Enum values from cuSPARSELt 0.8's cusparseLt.h and CUDA 13's cusparse.h
// and library_types.h.
const (
	cudaR16BF = 14 // CUDA_R_16BF

	orderCol = 1 // CUSPARSE_ORDER_COL
	orderRow = 2 // CUSPARSE_ORDER_ROW

	opN = 0 // CUSPARSE_OPERATION_NON_TRANSPOSE
	opT = 1 // CUSPARSE_OPERATION_TRANSPOSE

	sparsity50 = 0 // CUSPARSELT_SPARSITY_50_PERCENT (2:4 for bf16)
	compute32F = 2 // CUSPARSE_COMPUTE_32F (CUSPARSE_COMPUTE_32I = 0, _16F = 1)
	algDefault = 0 // CUSPARSELT_MATMUL_ALG_DEFAULT

	// cusparseLtMatmulAlgAttribute_t
	algConfigID      = 0 // CUSPARSELT_MATMUL_ALG_CONFIG_ID (int32)
	algSplitK        = 3 // CUSPARSELT_MATMUL_SPLIT_K (int32)
	algSplitKMode    = 4 // CUSPARSELT_MATMUL_SPLIT_K_MODE (cusparseLtSplitKMode_t)
	algSplitKBuffers = 5 // CUSPARSELT_MATMUL_SPLIT_K_BUFFERS (int32)

	// elemAlign is the pointer alignment cuSPARSELt requires (bytes), also
	// passed as the descriptors' alignment.
	elemAlign = 16
	bf16Size  = 2
)

// Shape multiples. cuSPARSELt's documented minimum for a 16-bit
// structured matrix is 16 rows and columns, and 8 for a dense one; the
// limits here are stricter, to stay clear of the edge of what is tested.
const (
	// DimMultiple is what N and K must be multiples of (Supported).
	DimMultiple = 32
	// LdMultiple is what the leading dimensions of x and y must be
	// multiples of (16-byte rows).
	LdMultiple = 8
)

// Layout chooses how the product is presented to cuSPARSELt. Both compute
// the same Y[M,N] (row-major) = X[M,K]·Wᵀ from the same memory; they
// differ only in how the structured operand W is described:
//
//   - LayoutCol (the default), "TN" with every matrix column-major: A = W
//     seen as the column-major [K,N] (ld K), opA = T, so op(A) = W [N,K];
//     B = X seen as the column-major [K,M] (ld ldX), opB = N; C = D = Y
//     seen as the column-major [N,M] (ld ldY). This is cuBLAS's classic
//     X·Wᵀ layout and the combination cuSPARSELt supports for every type.
//   - LayoutRow, "NN" with a row-major structured A: A = W as the
//     row-major [N,K] (ld K), opA = N; B, C and D as in LayoutCol.
//
// In both the 2:4 groups run along K, contiguous in W's memory.
type Layout int

// Layouts.
const (
	LayoutCol Layout = iota
	LayoutRow
)

func (l Layout) String() string {
	switch l {
	case LayoutCol:
		return "col(TN)"
	case LayoutRow:
		return "row(NN)"
	}
	return fmt.Sprintf("Layout(%d)", int(l))
}

// matSpec is the arguments of a cuSPARSELt matrix descriptor.
type matSpec struct {
	Rows, Cols, Ld int64
	Order          int32
}

// problem is the cuSPARSELt description of Y = X·Wᵀ: D = op(A)·op(B) with
// A the structured W, B the dense X, C = D = Y; m = N, n = Mpad, k = K.
type problem struct {
	OpA, OpB int32
	A, B, D  matSpec
}

// ErrUnsupported is wrapped by the errors for shapes cuSPARSELt is not
// used for; the caller falls back to another kernel.
var ErrUnsupported = errors.New("sparselt: unsupported shape")

// Supported reports whether a weight of N rows (outputs) and K columns
// (inputs) can be held by a Weight.
func Supported(N, K int) error {
	switch {
	case N <= 0 || K <= 0:
		return fmt.Errorf("%w: N=%d K=%d must be positive", ErrUnsupported, N, K)
	case N%DimMultiple != 0 || K%DimMultiple != 0:
		return fmt.Errorf("%w: N=%d K=%d must be multiples of %d", ErrUnsupported, N, K, DimMultiple)
	case int64(N)*int64(K) > 1<<40:
		return fmt.Errorf("%w: N=%d K=%d too large", ErrUnsupported, N, K)
	}
	return nil
}

// padM returns the rows a product of M rows runs on: M rounded up to 16
// up to 256 rows, to 64 up to 2048 and to 256 beyond, so that a bounded
// number of plans (one per padded size) serves every M.
func padM(M int) int {
	if M <= 0 {
		return 0
	}
	step := 16
	switch {
	case M > 2048:
		step = 256
	case M > 256:
		step = 64
	}
	return (M + step - 1) / step * step
}

// describe returns the descriptors of layout for an [N,K] weight and
// x, y buffers of mpad rows with leading dimensions ldX, ldY.
func describe(layout Layout, N, K, mpad, ldX, ldY int) (problem, error) {
	p := problem{
		OpB: opN,
		B:   matSpec{Rows: int64(K), Cols: int64(mpad), Ld: int64(ldX), Order: orderCol},
		D:   matSpec{Rows: int64(N), Cols: int64(mpad), Ld: int64(ldY), Order: orderCol},
	}
	switch layout {
	case LayoutCol:
		p.OpA = opT
		p.A = matSpec{Rows: int64(K), Cols: int64(N), Ld: int64(K), Order: orderCol}
	case LayoutRow:
		p.OpA = opN
		p.A = matSpec{Rows: int64(N), Cols: int64(K), Ld: int64(K), Order: orderRow}
	default:
		return problem{}, fmt.Errorf("sparselt: unknown %v", layout)
	}
	return p, nil
}

// checkProduct validates the arguments of Weight.Matmul.
func checkProduct(N, K, M, ldX, ldY int, x, y uintptr) error {
	switch {
	case M <= 0:
		return fmt.Errorf("%w: M=%d", ErrUnsupported, M)
	case ldX < K || ldX%LdMultiple != 0:
		return fmt.Errorf("%w: ldX=%d must be >= K=%d and a multiple of %d", ErrUnsupported, ldX, K, LdMultiple)
	case ldY < N || ldY%LdMultiple != 0:
		return fmt.Errorf("%w: ldY=%d must be >= N=%d and a multiple of %d", ErrUnsupported, ldY, N, LdMultiple)
	case x == 0 || y == 0:
		return fmt.Errorf("sparselt: nil x or y")
	case x%elemAlign != 0 || y%elemAlign != 0:
		return fmt.Errorf("%w: x %#x and y %#x must be %d-byte aligned", ErrUnsupported, x, y, elemAlign)
	}
	return nil
}
