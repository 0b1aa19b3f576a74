package blaslt

import (
	"errors"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"unsafe"

	"github.com/slopeml/slope/cuda/driver"
)

func TestHeaderLayouts(t *testing.T) {
	if s := unsafe.Sizeof(matmulAlgo{}); s != 64 {
		t.Errorf("cublasLtMatmulAlgo_t: %d bytes, want 64", s)
	}
	var r heuristicResult
	checks := []struct {
		name      string
		got, want uintptr
	}{
		{"sizeof(cublasLtMatmulHeuristicResult_t)", unsafe.Sizeof(r), 96},
		{"algo", unsafe.Offsetof(r.algo), 0},
		{"workspaceSize", unsafe.Offsetof(r.workspaceSize), 64},
		{"state", unsafe.Offsetof(r.state), 72},
		{"wavesCount", unsafe.Offsetof(r.wavesCount), 76},
		{"reserved", unsafe.Offsetof(r.reserved), 80},
		{"alignof", unsafe.Alignof(r), 8},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %d, want %d", c.name, c.got, c.want)
		}
	}
}

func TestEnumValues(t *testing.T) {
	// cudaDataType (library_types.h) and cublasComputeType_t (cublas_api.h).
	if F32 != 0 || F16 != 2 || BF16 != 14 {
		t.Errorf("DType values %d %d %d, want CUDA_R_32F=0 CUDA_R_16F=2 CUDA_R_16BF=14", F32, F16, BF16)
	}
	if cublasCompute32F != 68 {
		t.Errorf("CUBLAS_COMPUTE_32F = %d, want 68", cublasCompute32F)
	}
	if F32.Size() != 4 || BF16.Size() != 2 || F16.Size() != 2 || DType(99).Size() != 0 {
		t.Error("DType.Size")
	}
}

func TestStatusNames(t *testing.T) {
	for st, want := range map[int32]string{
		7: "CUBLAS_STATUS_INVALID_VALUE", 15: "CUBLAS_STATUS_NOT_SUPPORTED",
		3: "CUBLAS_STATUS_ALLOC_FAILED", 13: "CUBLAS_STATUS_EXECUTION_FAILED", 42: "CUBLAS_STATUS_UNKNOWN_42",
	} {
		if got := StatusName(st); got != want {
			t.Errorf("StatusName(%d) = %s, want %s", st, got, want)
		}
	}
	err := check("cublasLtMatmul", 15)
	var de *driver.Error
	if !errors.As(err, &de) || err.Error() != "cublasLtMatmul: CUBLAS_STATUS_NOT_SUPPORTED (15)" {
		t.Errorf("check: %v", err)
	}
	if check("x", 0) != nil {
		t.Error("success is an error")
	}
}

// colGemm emulates cuBLASLt on a colProblem: D' = alpha·op(A')·op(B') +
// beta·D' in column-major storage, for every batch entry. It also checks
// that the layouts agree with m, n, k and the transposes.
func colGemm(t *testing.T, p colProblem, alpha, beta float64, am, bm, dm []float64) {
	t.Helper()
	if p.TransB {
		if p.B.Rows != p.N || p.B.Cols != p.K {
			t.Fatalf("B' layout %dx%d, want %dx%d (transb T)", p.B.Rows, p.B.Cols, p.N, p.K)
		}
	}
	if p.TransA {
		if p.A.Rows != p.K || p.A.Cols != p.M {
			t.Fatalf("A' layout %dx%d, want %dx%d (transa T)", p.A.Rows, p.A.Cols, p.K, p.M)
		}
	} else if p.A.Rows != p.M || p.A.Cols != p.K {
		t.Fatalf("A' layout %dx%d, want %dx%d", p.A.Rows, p.A.Cols, p.M, p.K)
	}
	if !p.TransB && (p.B.Rows != p.K || p.B.Cols != p.N) || p.D.Rows != p.M || p.D.Cols != p.N {
		t.Fatalf("B' %dx%d / D' %dx%d do not match m=%d n=%d k=%d", p.B.Rows, p.B.Cols, p.D.Rows, p.D.Cols, p.M, p.N, p.K)
	}
	for _, l := range []colMatrix{p.A, p.B, p.D} {
		if l.Ld < l.Rows {
			t.Fatalf("ld %d < rows %d", l.Ld, l.Rows)
		}
	}
	for b := int64(0); b < int64(p.Batch); b++ {
		oa, ob, od := b*p.A.Stride, b*p.B.Stride, b*p.D.Stride
		for j := int64(0); j < p.N; j++ {
			for i := int64(0); i < p.M; i++ {
				var s float64
				for l := int64(0); l < p.K; l++ {
					var av float64
					if p.TransA {
						av = am[oa+l+i*p.A.Ld]
					} else {
						av = am[oa+i+l*p.A.Ld]
					}
					var bv float64
					if p.TransB {
						bv = bm[ob+j+l*p.B.Ld]
					} else {
						bv = bm[ob+l+j*p.B.Ld]
					}
					s += av * bv
				}
				at := od + i + j*p.D.Ld
				if beta == 0 {
					dm[at] = alpha * s
				} else {
					dm[at] = alpha*s + beta*dm[at]
				}
			}
		}
	}
}

// rowGemm is the row-major reference of a Gemm.
func rowGemm(g *Gemm, a, b, d []float64) {
	for bi := 0; bi < max(g.Batch, 1); bi++ {
		oa, ob, od := int64(bi)*g.StrideA, int64(bi)*g.StrideB, int64(bi)*g.StrideD
		for i := 0; i < g.M; i++ {
			for j := 0; j < g.N; j++ {
				var s float64
				for l := 0; l < g.K; l++ {
					var bv float64
					if g.TransB {
						bv = b[ob+int64(j*g.LdB+l)]
					} else {
						bv = b[ob+int64(l*g.LdB+j)]
					}
					var av float64
					if g.TransA {
						av = a[oa+int64(l*g.LdA+i)]
					} else {
						av = a[oa+int64(i*g.LdA+l)]
					}
					s += av * bv
				}
				at := od + int64(i*g.LdD+j)
				d[at] = float64(g.Alpha)*s + float64(g.Beta)*d[at]
			}
		}
	}
}

// extent returns the elements a strided batch of rows×ld matrices spans.
func extent(rows, ld, cols int, stride int64, batch int) int {
	return int(int64(max(batch, 1)-1)*stride) + (rows-1)*ld + cols
}

func randomGemm(r *rand.Rand, transB bool) *Gemm {
	g := &Gemm{M: 1 + r.IntN(9), N: 1 + r.IntN(9), K: 1 + r.IntN(9), TransB: transB,
		Alpha: float32(r.IntN(3)) - 0.5, AB: F32, Out: F32}
	if r.IntN(2) == 1 {
		g.Beta = 0.75
	}
	g.LdA = g.K + r.IntN(3)
	if r.IntN(3) == 0 {
		// Aᵀ: stored [K,M], one product
		g.TransA, g.LdA = true, g.M+r.IntN(3)
		g.LdB = g.N + r.IntN(3)
		if transB {
			g.LdB = g.K + r.IntN(3)
		}
		g.LdD = g.N + r.IntN(3)
		return g
	}
	if transB {
		g.LdB = g.K + r.IntN(3)
	} else {
		g.LdB = g.N + r.IntN(3)
	}
	g.LdD = g.N + r.IntN(3)
	if r.IntN(2) == 1 {
		g.Batch = 2 + r.IntN(3)
		bRows := g.K
		if transB {
			bRows = g.N
		}
		if r.IntN(2) == 1 {
			// packed (possibly with gaps)
			g.StrideA = int64(g.M*g.LdA + r.IntN(3))
			g.StrideB = int64(bRows*g.LdB + r.IntN(3))
			g.StrideD = int64(g.M*g.LdD + r.IntN(3))
		} else {
			// attention-like: heads side by side in wide rows; B may be shared
			h := g.Batch
			g.LdA, g.StrideA = g.K*h, int64(g.K)
			if transB {
				g.LdB, g.StrideB = g.K*h, int64(g.K)
			} else {
				g.LdB, g.StrideB = g.N*h, int64(g.N)
			}
			if r.IntN(3) == 0 {
				g.StrideB = 0
			}
			g.LdD, g.StrideD = g.N*h, int64(g.N)
		}
	}
	return g
}

func TestColumnMajorMapping(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for it := 0; it < 400; it++ {
		g := randomGemm(r, it%2 == 1)
		p, err := columnMajor(g)
		if err != nil {
			t.Fatalf("%s: %v", g.shape(), err)
		}
		bRows := g.K
		if g.TransB {
			bRows = g.N
		}
		b := max(g.Batch, 1)
		na := extent(g.M, g.LdA, g.K, g.StrideA, b)
		if g.TransA {
			na = extent(g.K, g.LdA, g.M, g.StrideA, b)
		}
		nb := extent(bRows, g.LdB, map[bool]int{false: g.N, true: g.K}[g.TransB], g.StrideB, b)
		nd := extent(g.M, g.LdD, g.N, g.StrideD, b)
		a, bb := make([]float64, na), make([]float64, nb)
		for i := range a {
			a[i] = r.Float64()*2 - 1
		}
		for i := range bb {
			bb[i] = r.Float64()*2 - 1
		}
		want, got := make([]float64, nd), make([]float64, nd)
		for i := range want {
			want[i] = r.Float64()
			got[i] = want[i]
		}
		rowGemm(g, a, bb, want)
		// The column-major problem reads our B as its A and our A as its B.
		colGemm(t, p, float64(g.Alpha), float64(g.Beta), bb, a, got)
		for i := range want {
			if math.Abs(want[i]-got[i]) > 1e-12 {
				t.Fatalf("%s: element %d: col-major %v, row-major %v", g.shape(), i, got[i], want[i])
			}
		}
	}
}

func TestColumnMajorShape(t *testing.T) {
	g := &Gemm{M: 3, N: 5, K: 7, LdA: 7, LdB: 7, LdD: 5, TransB: true, AB: BF16, Out: F32}
	p, err := columnMajor(g)
	if err != nil {
		t.Fatal(err)
	}
	if p.M != 5 || p.N != 3 || p.K != 7 || !p.TransA || p.TransB || !p.SwapAB || p.Batch != 1 {
		t.Errorf("problem %+v", p)
	}
	if p.A != (colMatrix{Rows: 7, Cols: 5, Ld: 7}) || p.B != (colMatrix{Rows: 7, Cols: 3, Ld: 7}) || p.D != (colMatrix{Rows: 5, Cols: 3, Ld: 5}) {
		t.Errorf("layouts %+v", p)
	}
	g.TransB = false
	g.LdB = 5
	p, _ = columnMajor(g)
	if p.TransA || p.A != (colMatrix{Rows: 5, Cols: 7, Ld: 5}) {
		t.Errorf("no transB: %+v", p)
	}
}

func TestColumnMajorRejects(t *testing.T) {
	ok := Gemm{M: 4, N: 4, K: 4, LdA: 4, LdB: 4, LdD: 4, AB: BF16, Out: BF16}
	for name, mut := range map[string]func(g *Gemm){
		"M=0":       func(g *Gemm) { g.M = 0 },
		"LdA<K":     func(g *Gemm) { g.LdA = 3 },
		"LdB<N":     func(g *Gemm) { g.LdB = 3 },
		"LdB<K":     func(g *Gemm) { g.TransB, g.K, g.LdA = true, 8, 8 },
		"LdD<N":     func(g *Gemm) { g.LdD = 2 },
		"batch<0":   func(g *Gemm) { g.Batch = -1 },
		"stride<0":  func(g *Gemm) { g.Batch, g.StrideA = 2, -1 },
		"f32->bf16": func(g *Gemm) { g.AB = F32 },
		"dtype":     func(g *Gemm) { g.Out = 5 },
	} {
		g := ok
		mut(&g)
		if _, err := columnMajor(&g); !errors.Is(err, ErrShape) {
			t.Errorf("%s accepted: %v", name, err)
		}
	}
	g := ok
	if _, err := columnMajor(&g); err != nil {
		t.Errorf("valid gemm rejected: %v", err)
	}
	var h *Handle
	if err := h.Run(0, &g); err == nil || !strings.Contains(err.Error(), "destroyed") {
		t.Errorf("Run on nil handle: %v", err)
	}
}

func TestPlanKey(t *testing.T) {
	g := Gemm{M: 8, N: 16, K: 32, LdA: 32, LdB: 32, LdD: 16, TransB: true, AB: BF16, Out: BF16,
		A: 0x10000, B: 0x20000, D: 0x30000, Alpha: 1}
	k := keyOf(&g)
	h := g
	h.A, h.B, h.D, h.Alpha, h.Beta = 0x40000, 0x50000, 0x60000, 2, 1
	if keyOf(&h) != k {
		t.Error("pointers or scalars change the key")
	}
	h.StrideA = 77 // ignored without a batch
	if keyOf(&h) != k {
		t.Error("strides of a single product change the key")
	}
	for name, mut := range map[string]func(g *Gemm){
		"M":      func(g *Gemm) { g.M++ },
		"LdD":    func(g *Gemm) { g.LdD++ },
		"TransB": func(g *Gemm) { g.TransB = false },
		"Out":    func(g *Gemm) { g.Out = F32 },
		"Batch":  func(g *Gemm) { g.Batch, g.StrideA = 2, 256 },
		"align":  func(g *Gemm) { g.A += 128 },
	} {
		x := g
		mut(&x)
		if keyOf(&x) == k {
			t.Errorf("%s does not change the key", name)
		}
	}
	if k.AlignA != 256 || k.AlignB != 256 || k.AlignD != 256 {
		t.Errorf("alignments %+v", k)
	}
}

func TestAlignment(t *testing.T) {
	for _, c := range []struct {
		addr      uint64
		stride    int64
		batch, es int
		want      uint32
	}{
		{0x1000, 0, 1, 2, 256},
		{0x1080, 0, 1, 2, 128},
		{0x1002, 0, 1, 2, 2},
		{0x1000, 64, 4, 2, 128}, // heads of 64 bf16 apart
		{0x1000, 64, 1, 2, 256}, // stride unused without a batch
		{0x1000, 3, 2, 4, 4},
		{0x1000, 0, 3, 4, 256}, // broadcast
	} {
		if got := alignment(c.addr, c.stride, c.batch, c.es); got != c.want {
			t.Errorf("alignment(%#x, %d, %d, %d) = %d, want %d", c.addr, c.stride, c.batch, c.es, got, c.want)
		}
	}
}

// TestLoad binds every symbol where a cuBLASLt is installed (no GPU
// needed); elsewhere it reports that it could not.
func TestLoad(t *testing.T) {
	v, err := Version()
	if err != nil {
		t.Skipf("cuBLASLt not loadable here: %v", err)
	}
	if v <= 0 {
		t.Errorf("version %d", v)
	}
	t.Logf("cuBLASLt %d from %s", v, Library())
}

// TestHostDescriptors creates and frees the descriptors, layouts and
// preference of a batched plan where a cuBLASLt is installed: these calls
// need no GPU, so attribute sizes and enum values are checked here.
func TestHostDescriptors(t *testing.T) {
	a, err := load()
	if err != nil {
		t.Skipf("cuBLASLt not loadable here: %v", err)
	}
	h := &Handle{a: a, wsSize: WorkspaceBytes}
	for _, g := range []*Gemm{
		{M: 16, N: 80, K: 64, LdA: 256, StrideA: 64, LdB: 256, StrideB: 64, TransB: true,
			LdD: 80, StrideD: 16 * 80, Batch: 4, AB: BF16, Out: F32, A: 0x1000, B: 0x2000, D: 0x3000},
		{M: 3, N: 5, K: 7, LdA: 7, LdB: 5, LdD: 5, AB: F32, Out: F32, A: 0x1002, B: 0x2000, D: 0x3000},
	} {
		p, err := columnMajor(g)
		if err != nil {
			t.Fatal(err)
		}
		pl, err := h.describe(&p, g.AB, g.Out, false)
		if err != nil {
			t.Fatalf("%s: %v", g.shape(), err)
		}
		pref, err := h.preference(keyOf(g))
		if err != nil {
			t.Fatalf("%s: %v", g.shape(), err)
		}
		if err := check("cublasLtMatmulPreferenceDestroy", a.cublasLtMatmulPreferenceDestroy(pref)); err != nil {
			t.Error(err)
		}
		if err := h.freePlan(pl); err != nil {
			t.Error(err)
		}
	}
	// A wrong attribute size is refused (the check is live).
	var desc uintptr
	if err := check("cublasLtMatmulDescCreate", a.cublasLtMatmulDescCreate(&desc, cublasCompute32F, cudaR32F)); err != nil {
		t.Fatal(err)
	}
	v := int64(1)
	if st := a.cublasLtMatmulDescSetAttribute(desc, descTransA, unsafe.Pointer(&v), 8); st != 7 {
		t.Errorf("8-byte TRANSA: status %s, want CUBLAS_STATUS_INVALID_VALUE", StatusName(st))
	}
	a.cublasLtMatmulDescDestroy(desc)
}
