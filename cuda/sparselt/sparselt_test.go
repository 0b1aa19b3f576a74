package sparselt

import (
	"errors"
	"math"
	"math/rand/v2"
	"reflect"
	"testing"
	"unsafe"

	"github.com/ebitengine/purego"

	"github.com/slopeml/slope/cuda/driver"
)

func TestOpaqueAlignment(t *testing.T) {
	var keep []*opaque
	for i := 0; i < 200; i++ {
		o := newOpaque()
		keep = append(keep, o)
		p := uintptr(o.ptr())
		base := uintptr(unsafe.Pointer(&o.buf[0]))
		if p%16 != 0 {
			t.Fatalf("struct at %#x is not 16-aligned", p)
		}
		if p < base || p+opaqueSize > base+uintptr(len(o.buf)) {
			t.Fatalf("struct [%#x,+512) outside its buffer [%#x,+%d)", p, base, len(o.buf))
		}
		if uintptr(o.ptr()) != p {
			t.Fatal("ptr is not stable")
		}
		_ = make([]byte, i) // vary the heap
	}
	if len(keep) != 200 {
		t.Fatal()
	}
	if opaqueSize != 512 || opaqueAlign != 16 {
		t.Error("cuSPARSELt 0.8 structs are 512 bytes, alignas(16)")
	}
}

func TestEnumValues(t *testing.T) {
	for _, c := range []struct {
		name      string
		got, want int
	}{
		{"CUDA_R_16BF", cudaR16BF, 14},
		{"CUSPARSE_ORDER_COL", orderCol, 1},
		{"CUSPARSE_ORDER_ROW", orderRow, 2},
		{"CUSPARSE_OPERATION_NON_TRANSPOSE", opN, 0},
		{"CUSPARSE_OPERATION_TRANSPOSE", opT, 1},
		{"CUSPARSELT_SPARSITY_50_PERCENT", sparsity50, 0},
		{"CUSPARSE_COMPUTE_32F", compute32F, 2},
		{"CUSPARSELT_MATMUL_ALG_DEFAULT", algDefault, 0},
		{"CUSPARSELT_MATMUL_ALG_CONFIG_ID", algConfigID, 0},
		{"CUSPARSELT_MATMUL_SPLIT_K", algSplitK, 3},
		{"CUSPARSELT_MATMUL_SPLIT_K_MODE", algSplitKMode, 4},
		{"CUSPARSELT_MATMUL_SPLIT_K_BUFFERS", algSplitKBuffers, 5},
	} {
		if c.got != c.want {
			t.Errorf("%s = %d, want %d", c.name, c.got, c.want)
		}
	}
}

func TestStatusNames(t *testing.T) {
	for st, want := range map[int32]string{
		3: "CUSPARSE_STATUS_INVALID_VALUE", 10: "CUSPARSE_STATUS_NOT_SUPPORTED",
		11: "CUSPARSE_STATUS_INSUFFICIENT_RESOURCES", 7: "CUSPARSE_STATUS_INTERNAL_ERROR", 99: "CUSPARSE_STATUS_UNKNOWN_99",
	} {
		if got := StatusName(st); got != want {
			t.Errorf("StatusName(%d) = %s, want %s", st, got, want)
		}
	}
	err := check("cusparseLtMatmulPlanInit", 3)
	var de *driver.Error
	if !errors.As(err, &de) || err.Error() != "cusparseLtMatmulPlanInit: CUSPARSE_STATUS_INVALID_VALUE (3)" {
		t.Errorf("check: %v", err)
	}
	if check("x", 0) != nil {
		t.Error("success is an error")
	}
}

// at reads element (r, c) of a matrix described by m from mem.
func at(mem []float64, m matSpec, r, c int64) float64 {
	if r < 0 || r >= m.Rows || c < 0 || c >= m.Cols {
		panic("index outside the matrix")
	}
	if m.Order == orderCol {
		return mem[r+c*m.Ld]
	}
	return mem[r*m.Ld+c]
}

// emulate computes cuSPARSELt's D = op(A)·op(B) (+ beta·C, C = D) in the
// storage the problem describes, checking the dimensions agree.
func emulate(t *testing.T, p problem, wm, xm, ym []float64, beta float64) {
	t.Helper()
	opDims := func(m matSpec, op int32) (int64, int64) {
		if op == opT {
			return m.Cols, m.Rows
		}
		return m.Rows, m.Cols
	}
	am, ak := opDims(p.A, p.OpA)
	bk, bn := opDims(p.B, p.OpB)
	if ak != bk || am != p.D.Rows || bn != p.D.Cols {
		t.Fatalf("op(A) %dx%d, op(B) %dx%d, D %dx%d do not chain", am, ak, bk, bn, p.D.Rows, p.D.Cols)
	}
	for _, m := range []matSpec{p.A, p.B, p.D} {
		minLd := m.Rows
		if m.Order == orderRow {
			minLd = m.Cols
		}
		if m.Ld < minLd {
			t.Fatalf("ld %d < %d", m.Ld, minLd)
		}
	}
	opAt := func(mem []float64, m matSpec, op int32, r, c int64) float64 {
		if op == opT {
			return at(mem, m, c, r)
		}
		return at(mem, m, r, c)
	}
	for i := int64(0); i < am; i++ {
		for j := int64(0); j < bn; j++ {
			var s float64
			for l := int64(0); l < ak; l++ {
				s += opAt(wm, p.A, p.OpA, i, l) * opAt(xm, p.B, p.OpB, l, j)
			}
			idx := i + j*p.D.Ld
			if p.D.Order == orderRow {
				idx = i*p.D.Ld + j
			}
			ym[idx] = s + beta*ym[idx]
		}
	}
}

func TestLayoutsComputeXWt(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for _, layout := range []Layout{LayoutCol, LayoutRow} {
		for it := 0; it < 60; it++ {
			N, K := 1+r.IntN(12), 1+r.IntN(12)
			mpad := 1 + r.IntN(9)
			ldX, ldY := K+r.IntN(3), N+r.IntN(3)
			p, err := describe(layout, N, K, mpad, ldX, ldY)
			if err != nil {
				t.Fatal(err)
			}
			// The structured operand: op(A)[n,k] is W[n,k] at n·K+k, so the
			// 2:4 groups along K are contiguous in memory.
			if p.A.Ld != int64(K) {
				t.Fatalf("%v: W ld %d, want K", layout, p.A.Ld)
			}
			w := make([]float64, N*K)
			x := make([]float64, mpad*ldX)
			y0 := make([]float64, mpad*ldY)
			for i := range w {
				w[i] = r.Float64()*2 - 1
			}
			for i := range x {
				x[i] = r.Float64()*2 - 1
			}
			for i := range y0 {
				y0[i] = r.Float64()*2 - 1
			}
			beta := float64(r.IntN(2))
			got := append([]float64(nil), y0...)
			emulate(t, p, w, x, got, beta)
			for m := 0; m < mpad; m++ {
				for n := 0; n < N; n++ {
					var s float64
					for k := 0; k < K; k++ {
						s += x[m*ldX+k] * w[n*K+k]
					}
					want := s + beta*y0[m*ldY+n]
					if g := got[m*ldY+n]; math.Abs(g-want) > 1e-12 {
						t.Fatalf("%v N=%d K=%d mpad=%d: Y[%d,%d] = %v, want %v", layout, N, K, mpad, m, n, g, want)
					}
				}
				for n := N; n < ldY; n++ { // padding columns of y untouched
					if got[m*ldY+n] != y0[m*ldY+n] {
						t.Fatalf("%v: y padding column written", layout)
					}
				}
			}
		}
	}
	if _, err := describe(Layout(7), 32, 32, 16, 32, 32); err == nil {
		t.Error("unknown layout accepted")
	}
}

func TestPadM(t *testing.T) {
	for _, c := range [][2]int{{0, 0}, {1, 16}, {16, 16}, {17, 32}, {64, 64}, {255, 256}, {256, 256},
		{257, 320}, {2048, 2048}, {2000, 2048}, {2049, 2304}, {5000, 5120}} {
		if got := padM(c[0]); got != c[1] {
			t.Errorf("padM(%d) = %d, want %d", c[0], got, c[1])
		}
	}
	prev, buckets := 0, map[int]bool{}
	for m := 1; m <= 8192; m++ {
		p := (&Weight{}).PadM(m)
		if p < m || p%16 != 0 || p < prev {
			t.Fatalf("PadM(%d) = %d (previous %d)", m, p, prev)
		}
		prev = p
		buckets[p] = true
	}
	if len(buckets) > 16+28+24 {
		t.Errorf("%d plans for M up to 8192", len(buckets))
	}
	// Products in one bucket share a plan.
	if (planKey{padM(17), 512, 256}) != (planKey{padM(30), 512, 256}) {
		t.Error("M=17 and M=30 do not share a plan")
	}
	if (algKey{256, 512, padM(1), LayoutCol}) == (algKey{256, 512, padM(1), LayoutRow}) {
		t.Error("layouts share a searched configuration")
	}
}

func TestSupported(t *testing.T) {
	for _, ok := range [][2]int{{256, 512}, {4096, 4096}, {11008, 4096}, {32, 32}, {896, 4864}} {
		if err := Supported(ok[0], ok[1]); err != nil {
			t.Errorf("Supported(%d, %d): %v", ok[0], ok[1], err)
		}
	}
	for _, bad := range [][2]int{{0, 64}, {64, -32}, {48, 64}, {64, 100}, {16, 16}} {
		if err := Supported(bad[0], bad[1]); !errors.Is(err, ErrUnsupported) {
			t.Errorf("Supported(%d, %d) = %v", bad[0], bad[1], err)
		}
	}
}

func TestCheckProduct(t *testing.T) {
	const N, K = 256, 512
	if err := checkProduct(N, K, 1, K, N, 0x1000, 0x2000); err != nil {
		t.Errorf("valid product: %v", err)
	}
	for name, c := range map[string][5]int{
		"M=0":     {0, K, N, 0x1000, 0x2000},
		"ldX<K":   {4, K - 8, N, 0x1000, 0x2000},
		"ldX%8":   {4, K + 4, N, 0x1000, 0x2000},
		"ldY<N":   {4, K, N - 8, 0x1000, 0x2000},
		"x align": {4, K, N, 0x1008, 0x2000},
		"y align": {4, K, N, 0x1000, 0x2002},
		"nil":     {4, K, N, 0, 0x2000},
	} {
		if err := checkProduct(N, K, c[0], c[1], c[2], uintptr(c[3]), uintptr(c[4])); err == nil {
			t.Errorf("%s accepted", name)
		}
	}
	var w *Weight
	if err := w.Matmul(0, 0x2000, N, 0x1000, K, 1, 0); err == nil {
		t.Error("Matmul on a nil weight")
	}
	var h *Handle
	if _, err := h.NewWeight(0, 0x1000, 256, 512); err == nil {
		t.Error("NewWeight on a nil handle")
	}
	if _, err := h.NewWeight(0, 0x1000, 250, 512); !errors.Is(err, ErrUnsupported) {
		t.Errorf("NewWeight of an unsupported shape: %v", err)
	}
}

// TestLoad binds every symbol where a cuSPARSELt is installed (no GPU
// needed); elsewhere it reports that it could not.
func TestLoad(t *testing.T) {
	v, err := Version()
	if err != nil {
		t.Skipf("cuSPARSELt not loadable here: %v", err)
	}
	if v <= 0 {
		t.Errorf("version %d", v)
	}
	t.Logf("cuSPARSELt %d from %s", v, Library())
}

// TestSignatures registers every binding with purego (without calling
// it), which panics on argument types or counts it cannot pass.
func TestSignatures(t *testing.T) {
	a := &api{}
	v := reflect.ValueOf(a).Elem()
	for i := 0; i < v.NumField(); i++ {
		f := v.Field(i)
		func() {
			defer func() {
				if r := recover(); r != nil {
					t.Errorf("%s: %v", v.Type().Field(i).Name, r)
				}
			}()
			purego.RegisterFunc(reflect.NewAt(f.Type(), unsafe.Pointer(f.UnsafeAddr())).Interface(), 1)
		}()
	}
}
