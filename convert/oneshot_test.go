package convert

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/slopeml/slope/format"
)

// synthCalib returns n calibration rows of width d with correlated
// columns (a rank-k mixture plus noise) and column norms that vary over
// two orders of magnitude, as LLM activations have (a few outlier
// features).
func synthCalib(n, d, k int, seed uint64) []float32 {
	rng := rand.New(rand.NewPCG(seed, 7))
	mix := make([]float64, k*d)
	for i := range mix {
		mix[i] = rng.NormFloat64()
	}
	scale := make([]float64, d)
	for j := range scale {
		scale[j] = math.Exp(rng.NormFloat64())
		if j%17 == 3 {
			scale[j] *= 10 // outlier features
		}
	}
	x := make([]float32, n*d)
	z := make([]float64, k)
	for t := 0; t < n; t++ {
		for i := range z {
			z[i] = rng.NormFloat64()
		}
		for j := 0; j < d; j++ {
			var v float64
			for i := range z {
				v += z[i] * mix[i*d+j]
			}
			v = v/math.Sqrt(float64(k)) + 0.3*rng.NormFloat64()
			x[t*d+j] = float32(v * scale[j])
		}
	}
	return x
}

func randWeights(rows, cols int, seed uint64) []float32 {
	rng := rand.New(rand.NewPCG(seed, 11))
	w := make([]float32, rows*cols)
	for i := range w {
		w[i] = float32(rng.NormFloat64() * 0.05)
	}
	return w
}

// checkNM checks that keep has exactly N kept of every M along rows and
// that ws is zero exactly where keep is false.
func checkNM(t *testing.T, p format.NM, rows, cols int, ws []float32, keep []bool) {
	t.Helper()
	for r := 0; r < rows; r++ {
		for g := 0; g < cols; g += p.M {
			n := 0
			for j := g; j < g+p.M; j++ {
				if keep[r*cols+j] {
					n++
				} else if ws[r*cols+j] != 0 {
					t.Fatalf("row %d col %d pruned but %g", r, j, ws[r*cols+j])
				}
			}
			if n != p.N {
				t.Fatalf("row %d group %d keeps %d, want %d", r, g/p.M, n, p.N)
			}
		}
	}
}

func TestOneShotLayerError(t *testing.T) {
	const n, rows, cols = 768, 48, 256
	x := synthCalib(n, cols, 24, 1)
	w := randWeights(rows, cols, 2)
	norms := ColumnNorms(x, n, cols)
	h := NewHessian(cols)
	if err := h.Add(x[:n/3*cols], n/3); err != nil { // in two parts: accumulation is additive
		t.Fatal(err)
	}
	if err := h.Add(x[n/3*cols:], n-n/3); err != nil {
		t.Fatal(err)
	}
	var ref float64
	for _, v := range w {
		ref += float64(v) * float64(v)
	}
	dense := LayerError(x, n, w, make([]float32, len(w)), rows, cols) // ‖XWᵀ‖
	for _, p := range []format.NM{{N: 2, M: 4}, {N: 4, M: 8}} {
		mk, err := MagnitudeMask(p, rows, cols, w)
		if err != nil {
			t.Fatal(err)
		}
		mag := ApplyMask(w, mk)
		wk, err := WandaMask(p, rows, cols, w, norms)
		if err != nil {
			t.Fatal(err)
		}
		wan := ApplyMask(w, wk)
		sg, sk, err := SparseGPT(p, rows, cols, w, h, SparseGPTOptions{BlockSize: 64})
		if err != nil {
			t.Fatal(err)
		}
		checkNM(t, p, rows, cols, mag, mk)
		checkNM(t, p, rows, cols, wan, wk)
		checkNM(t, p, rows, cols, sg, sk)
		eMag := LayerError(x, n, w, mag, rows, cols) / dense
		eWan := LayerError(x, n, w, wan, rows, cols) / dense
		eSG := LayerError(x, n, w, sg, rows, cols) / dense
		t.Logf("%s: relative layer error ‖XWᵀ − XW_sᵀ‖/‖XWᵀ‖: magnitude %.4f, wanda %.4f, sparsegpt %.4f", p, eMag, eWan, eSG)
		if !(eSG < eWan && eWan < eMag) {
			t.Errorf("%s: want sparsegpt < wanda < magnitude, got %.4f, %.4f, %.4f", p, eSG, eWan, eMag)
		}
		// Deterministic: the same inputs give the same output.
		sg2, sk2, err := SparseGPT(p, rows, cols, w, h, SparseGPTOptions{BlockSize: 64})
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(sg, sg2) || !slices.Equal(sk, sk2) {
			t.Errorf("%s: sparsegpt is not deterministic", p)
		}
		wk2, _ := WandaMask(p, rows, cols, w, norms)
		if !slices.Equal(wk, wk2) {
			t.Errorf("%s: wanda is not deterministic", p)
		}
	}
}

// TestSparseGPTBlocks: the lazy batch updates are exact, so the block
// size changes only rounding.
func TestSparseGPTBlocks(t *testing.T) {
	const n, rows, cols = 256, 12, 96
	x := synthCalib(n, cols, 8, 3)
	w := randWeights(rows, cols, 4)
	h := NewHessian(cols)
	if err := h.Add(x, n); err != nil {
		t.Fatal(err)
	}
	p := format.NM{N: 2, M: 4}
	a, ka, err := SparseGPT(p, rows, cols, w, h, SparseGPTOptions{BlockSize: 8})
	if err != nil {
		t.Fatal(err)
	}
	b, kb, err := SparseGPT(p, rows, cols, w, h, SparseGPTOptions{BlockSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ka, kb) {
		t.Fatal("masks differ with the block size")
	}
	for i := range a {
		if math.Abs(float64(a[i]-b[i])) > 1e-5*(1+math.Abs(float64(a[i]))) {
			t.Fatalf("value %d: %g vs %g", i, a[i], b[i])
		}
	}
}

// TestSparseGPTFactor: U is upper triangular and UᵀU is the inverse of
// the damped Hessian.
func TestSparseGPTFactor(t *testing.T) {
	const n, d = 200, 70
	x := synthCalib(n, d, 10, 5)
	h := NewHessian(d)
	if err := h.Add(x, n); err != nil {
		t.Fatal(err)
	}
	u, err := sparseGPTFactor(h, 0.01)
	if err != nil {
		t.Fatal(err)
	}
	a := make([]float64, d*d)
	var mean float64
	for i, v := range h.Sum {
		a[i] = 2 * v / n
	}
	for j := 0; j < d; j++ {
		mean += a[j*d+j] / d
	}
	for j := 0; j < d; j++ {
		a[j*d+j] += 0.01 * mean
	}
	for i := 0; i < d; i++ {
		for j := 0; j < i; j++ {
			if u[i*d+j] != 0 {
				t.Fatalf("U[%d][%d] = %g below the diagonal", i, j, u[i*d+j])
			}
		}
		if u[i*d+i] <= 0 {
			t.Fatalf("U[%d][%d] = %g", i, i, u[i*d+i])
		}
	}
	// (UᵀU)·A = I.
	for i := 0; i < d; i++ {
		for j := 0; j < d; j++ {
			var s float64
			for k := 0; k < d; k++ {
				var inv float64 // (UᵀU)[i][k]
				for m := 0; m <= min(i, k); m++ {
					inv += u[m*d+i] * u[m*d+k]
				}
				s += inv * a[k*d+j]
			}
			want := 0.0
			if i == j {
				want = 1
			}
			if math.Abs(s-want) > 1e-8 {
				t.Fatalf("(UᵀU·H)[%d][%d] = %g, want %g", i, j, s, want)
			}
		}
	}
	checkGram(t, h, x, n, 13, 7)
}

// checkGram checks h.Sum against a float64 XᵀX of x [n, h.D] within
// float32 accumulation (relative to Σ|x_a·x_b|), and its exact symmetry,
// at every stepA-th row and stepB-th column.
func checkGram(t *testing.T, h *Hessian, x []float32, n, stepA, stepB int) {
	t.Helper()
	d := h.D
	for a := 0; a < d; a += stepA {
		for b := 0; b < d; b += stepB {
			var s, scale float64
			for r := 0; r < n; r++ {
				p := float64(x[r*d+a]) * float64(x[r*d+b])
				s += p
				scale += math.Abs(p)
			}
			if math.Abs(s-h.Sum[a*d+b]) > 2e-6*scale {
				t.Fatalf("XᵀX[%d][%d] = %g, want %g (scale %g)", a, b, h.Sum[a*d+b], s, scale)
			}
			if h.Sum[a*d+b] != h.Sum[b*d+a] {
				t.Fatalf("XᵀX not symmetric at (%d, %d)", a, b)
			}
		}
	}
}

func TestWandaMaskTies(t *testing.T) {
	p := format.NM{N: 2, M: 4}
	w := []float32{1, -1, 1, 1, 0.5, 2, 0.5, 3}
	keep, err := WandaMask(p, 1, 8, w, []float64{1, 1, 1, 1, 4, 1, 4, 1})
	if err != nil {
		t.Fatal(err)
	}
	// Group 1: all scores equal, the lower indices win; group 2: scores
	// 2, 2, 2, 3.
	want := []bool{true, true, false, false, true, false, false, true}
	if !slices.Equal(keep, want) {
		t.Errorf("keep %v, want %v", keep, want)
	}
	if _, err := WandaMask(p, 1, 8, w, []float64{1}); err == nil {
		t.Error("wrong norms length accepted")
	}
	if _, _, err := SparseGPT(p, 1, 8, w, NewHessian(8), SparseGPTOptions{}); err == nil {
		t.Error("empty Hessian accepted")
	}
}

// Inputs that are always zero (dead ReLU units feeding fc2) carry no
// information: SparseGPT keeps none of their weights where a group has
// live inputs to keep instead.
func TestSparseGPTDeadInputs(t *testing.T) {
	const rows, cols, n = 64, 128, 512
	p := format.NM{N: 2, M: 4}
	x := synthCalib(n, cols, 16, 31)
	for i := range x {
		x[i] *= 0.05 // small activations: a dead input's H_jj = 1 would dominate
	}
	for r := 0; r < n; r++ {
		for g := 0; g < cols/4; g++ {
			x[r*cols+4*g+g%4] = 0 // one dead input per group
		}
	}
	h := NewHessian(cols)
	if err := h.Add(x, n); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(5, 6))
	w := make([]float32, rows*cols)
	for i := range w {
		w[i] = float32(rng.NormFloat64())
	}
	_, keep, err := SparseGPT(p, rows, cols, w, h, SparseGPTOptions{})
	if err != nil {
		t.Fatal(err)
	}
	kept := 0
	for r := 0; r < rows; r++ {
		for g := 0; g < cols/4; g++ {
			if keep[r*cols+4*g+g%4] {
				kept++
			}
		}
	}
	if kept != 0 {
		t.Errorf("kept %d of %d weights of dead inputs", kept, rows*cols/4)
	}
}

// Hessian.Add over more rows than one chunk matches a float64 XᵀX, and a
// later Add drops the cached SparseGPT factor.
func TestHessianChunks(t *testing.T) {
	const d = 12
	n := 2*hessianRows + 37
	x := synthCalib(n, d, 4, 9)
	h := NewHessian(d)
	if err := h.Add(x, n); err != nil {
		t.Fatal(err)
	}
	if err := h.Flush(); err != nil { // the last 37 rows
		t.Fatal(err)
	}
	checkGram(t, h, x, n, 1, 1)
	u1, err := sparseGPTFactor(h, 0.01)
	if err != nil {
		t.Fatal(err)
	}
	if u2, _ := sparseGPTFactor(h, 0.01); &u2[0] != &u1[0] {
		t.Error("the factor was not reused")
	}
	if err := h.Add(x[:d*100], 100); err != nil {
		t.Fatal(err)
	}
	if u3, _ := sparseGPTFactor(h, 0.01); &u3[0] == &u1[0] {
		t.Error("the factor outlived an Add")
	}
}

// TestHessianSplitAdds: rows added in uneven parts (shorter and longer than
// a chunk, starting mid-chunk) give the Sum, bit for bit, and N of one Add
// of them all, once flushed.
func TestHessianSplitAdds(t *testing.T) {
	const d = 12
	parts := []int{1000, 3000, 97, hessianRows + 5, 1}
	n := 0
	for _, r := range parts {
		n += r
	}
	x := synthCalib(n, d, 4, 9)
	whole := NewHessian(d)
	if err := whole.Add(x, n); err != nil {
		t.Fatal(err)
	}
	split := NewHessian(d)
	at := 0
	for _, r := range parts {
		if err := split.Add(x[at*d:(at+r)*d], r); err != nil {
			t.Fatal(err)
		}
		at += r
	}
	for _, h := range []*Hessian{whole, split} {
		if err := h.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	if whole.N != n || split.N != n {
		t.Fatalf("N: %d at once, %d in parts, want %d", whole.N, split.N, n)
	}
	var zero bool
	for i := range whole.Sum {
		if whole.Sum[i] != split.Sum[i] {
			t.Fatalf("Sum[%d]: %g at once, %g in parts", i, whole.Sum[i], split.Sum[i])
		}
		zero = zero || (i%(d+1) == 0 && whole.Sum[i] == 0)
	}
	if zero {
		t.Fatal("a diagonal entry of XᵀX is zero: the rows were not all multiplied")
	}
}
