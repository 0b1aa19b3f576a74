package convert

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/slopeml/slope/format"
)

func randMatrix(rng *rand.Rand, rows, cols int) []float32 {
	a := make([]float32, rows*cols)
	for i := range a {
		a[i] = float32(rng.NormFloat64())
	}
	return a
}

// gramSingularValues are the singular values of a [rows, cols] from the
// eigenvalues of the Gram matrix AᵀA (cyclic Jacobi eigenvalue iteration
// in float64), descending: an SVD independent of jacobiSVD.
func gramSingularValues(a []float64, rows, cols int) []float64 {
	g := make([]float64, cols*cols)
	for i := 0; i < rows; i++ {
		for p := 0; p < cols; p++ {
			for q := 0; q < cols; q++ {
				g[p*cols+q] += a[i*cols+p] * a[i*cols+q]
			}
		}
	}
	n := cols
	for sweep := 0; sweep < 100; sweep++ {
		var off float64
		for p := 0; p < n; p++ {
			for q := p + 1; q < n; q++ {
				off += g[p*n+q] * g[p*n+q]
			}
		}
		if off < 1e-26 {
			break
		}
		for p := 0; p < n; p++ {
			for q := p + 1; q < n; q++ {
				apq := g[p*n+q]
				if math.Abs(apq) < 1e-300 {
					continue
				}
				theta := (g[q*n+q] - g[p*n+p]) / (2 * apq)
				t := math.Copysign(1, theta) / (math.Abs(theta) + math.Sqrt(theta*theta+1))
				c := 1 / math.Sqrt(t*t+1)
				s := t * c
				for k := 0; k < n; k++ { // columns p, q
					gkp, gkq := g[k*n+p], g[k*n+q]
					g[k*n+p], g[k*n+q] = c*gkp-s*gkq, s*gkp+c*gkq
				}
				for k := 0; k < n; k++ { // rows p, q
					gpk, gqk := g[p*n+k], g[q*n+k]
					g[p*n+k], g[q*n+k] = c*gpk-s*gqk, s*gpk+c*gqk
				}
			}
		}
	}
	sv := make([]float64, n)
	for i := range sv {
		sv[i] = math.Sqrt(max(g[i*n+i], 0))
	}
	slices.Sort(sv)
	slices.Reverse(sv)
	return sv
}

// rankRErr is ‖A − U_r·Σ_r·V_rᵀ‖_F/‖A‖_F for the first r triplets of d.
func rankRErr(a []float32, rows, cols int, d SVD, r int) float64 {
	var num, den float64
	for i := 0; i < rows; i++ {
		for j := 0; j < cols; j++ {
			var s float64
			for k := 0; k < r; k++ {
				s += d.U[k][i] * d.S[k] * d.V[k][j]
			}
			x := float64(a[i*cols+j])
			num += (x - s) * (x - s)
			den += x * x
		}
	}
	return math.Sqrt(num / den)
}

func TestExactSVD(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, sh := range [][2]int{{64, 48}, {48, 64}, {7, 7}, {1, 5}} {
		rows, cols := sh[0], sh[1]
		a32 := randMatrix(rng, rows, cols)
		a := make([]float64, len(a32))
		for i, v := range a32 {
			a[i] = float64(v)
		}
		d := ExactSVD(a, rows, cols)
		k := min(rows, cols)
		if len(d.S) != k {
			t.Fatalf("%v: %d singular values", sh, len(d.S))
		}
		if e := rankRErr(a32, rows, cols, d, k); e > 1e-12 {
			t.Errorf("%v: reconstruction error %g", sh, e)
		}
		for i := 0; i < k; i++ {
			for j := 0; j < k; j++ {
				want := 0.0
				if i == j {
					want = 1
				}
				if math.Abs(dot(d.U[i], d.U[j])-want) > 1e-12 || math.Abs(dot(d.V[i], d.V[j])-want) > 1e-12 {
					t.Fatalf("%v: singular vectors %d, %d not orthonormal", sh, i, j)
				}
			}
		}
		g := gramSingularValues(a, rows, cols)
		for i := 0; i < k; i++ {
			if math.Abs(g[i]-d.S[i]) > 1e-9*g[0] {
				t.Errorf("%v: σ%d = %g, Gram eigen-decomposition gives %g", sh, i, d.S[i], g[i])
			}
		}
	}
}

// TestRandomizedSVD: on a 64x48 matrix the randomized rank-r error is
// within 1e-3 of the exact best (Eckart-Young: the tail singular values),
// for a flat Gaussian spectrum and for a pruning residual.
func TestRandomizedSVD(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	const rows, cols = 64, 48
	gauss := randMatrix(rng, rows, cols)
	w := randMatrix(rng, rows, cols)
	keep, _ := MagnitudeMask(format.NM{N: 2, M: 4}, rows, cols, w)
	ws := ApplyMask(w, keep)
	resid := make([]float32, len(w))
	for i := range w {
		resid[i] = w[i] - ws[i]
	}
	for name, a32 := range map[string][]float32{"gaussian": gauss, "residual": resid} {
		a := make([]float64, len(a32))
		var total float64
		for i, v := range a32 {
			a[i] = float64(v)
			total += a[i] * a[i]
		}
		exact := ExactSVD(a, rows, cols)
		for _, r := range []int{1, 4, 8, 16} {
			var tail float64
			for _, s := range exact.S[r:] {
				tail += s * s
			}
			best := math.Sqrt(tail / total)
			d := RandomizedSVD(a32, rows, cols, r, rand.New(rand.NewPCG(1, uint64(r))))
			got := rankRErr(a32, rows, cols, d, r)
			t.Logf("%s r=%d: randomized %.6f, exact best %.6f", name, r, got, best)
			if got-best > 1e-3 || got < best-1e-9 {
				t.Errorf("%s r=%d: randomized error %.6f, best %.6f", name, r, got, best)
			}
			for k := 0; k < r; k++ {
				if math.Abs(d.S[k]-exact.S[k]) > 1e-2*exact.S[k] {
					t.Errorf("%s r=%d: σ%d %g, exact %g", name, r, k, d.S[k], exact.S[k])
				}
			}
		}
	}
}

// TestAdapterFactors: svd factors reduce the error below the pruned one
// on random matrices (more with a larger rank), follow the runtime's
// convention scale·L·R ≈ (W − W_s)ᵀ for any scale, and the other inits
// leave the weight unchanged.
func TestAdapterFactors(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	const out, in = 96, 64
	w := randMatrix(rng, out, in)
	keep, _ := MagnitudeMask(format.NM{N: 2, M: 4}, out, in, w)
	ws := ApplyMask(w, keep)
	prev := 2.0
	for _, r := range []int{4, 16, 48} {
		for _, scale := range []float32{1, -0.5, 3} {
			l, rr, err := adapterFactors(AdapterInitSVD, w, ws, out, in, r, scale, weightRNG(1, "w"))
			if err != nil {
				t.Fatal(err)
			}
			ep, ea := relErrors(w, ws, out, in, r, l, rr, scale)
			if ea >= ep {
				t.Errorf("r=%d scale %g: adapted error %g not below pruned %g", r, scale, ea, ep)
			}
			if scale == 1 {
				if ea >= prev {
					t.Errorf("r=%d: error %g not below the smaller rank's %g", r, ea, prev)
				}
				prev = ea
				t.Logf("r=%d: pruned %.4f, svd adapted %.4f", r, ep, ea)
			}
		}
	}
	for _, init := range []string{AdapterInitSlope, AdapterInitZero} {
		l, r, err := adapterFactors(init, w, ws, out, in, 8, 1, weightRNG(1, "w"))
		if err != nil {
			t.Fatal(err)
		}
		ep, ea := relErrors(w, ws, out, in, 8, l, r, 1)
		if math.Abs(ea-ep) > 1e-12 {
			t.Errorf("%s: adapted error %g differs from pruned %g (R must be 0)", init, ea, ep)
		}
		nz := 0
		for _, v := range l {
			if v != 0 {
				nz++
			}
		}
		if (init == AdapterInitSlope) != (nz == len(l)) {
			t.Errorf("%s: %d of %d L entries non-zero", init, nz, len(l))
		}
	}
	if _, _, err := adapterFactors("pca", w, ws, out, in, 8, 1, weightRNG(1, "w")); err == nil {
		t.Error("unknown init accepted")
	}
}

// TestRefitR: the least-squares R for a pruned L is no worse than the
// original R, and for an unpruned L recovers the svd R.
func TestRefitR(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 10))
	const out, in, rank = 64, 48, 8
	w := randMatrix(rng, out, in)
	keep, _ := MagnitudeMask(format.NM{N: 2, M: 4}, out, in, w)
	ws := ApplyMask(w, keep)
	l, r, _ := adapterFactors(AdapterInitSVD, w, ws, out, in, rank, 2, weightRNG(2, "w"))
	r2, ok := refitR(w, ws, out, in, rank, l, 2)
	if !ok {
		t.Fatal("refit failed")
	}
	_, e1 := relErrors(w, ws, out, in, rank, l, r, 2)
	_, e2 := relErrors(w, ws, out, in, rank, l, r2, 2)
	if e2 > e1+1e-7 || e1-e2 > 1e-3 {
		t.Errorf("refit of the svd L: error %g, svd %g", e2, e1)
	}
	// Prune L 2:4 along in (as the merged layout does).
	lt := make([]float32, rank*in)
	for k := 0; k < rank; k++ {
		for i := 0; i < in; i++ {
			lt[k*in+i] = l[i*rank+k]
		}
	}
	lk, _ := MagnitudeMask(format.NM{N: 2, M: 4}, rank, in, lt)
	for k := 0; k < rank; k++ {
		for i := 0; i < in; i++ {
			if !lk[k*in+i] {
				l[i*rank+k] = 0
			}
		}
	}
	_, before := relErrors(w, ws, out, in, rank, l, r, 2)
	r3, ok := refitR(w, ws, out, in, rank, l, 2)
	if !ok {
		t.Fatal("refit failed")
	}
	ep, after := relErrors(w, ws, out, in, rank, l, r3, 2)
	t.Logf("pruned L: pruned %.4f, svd R %.4f, refit R %.4f, unpruned L %.4f", ep, before, after, e1)
	if after > before+1e-7 || after >= ep {
		t.Errorf("refit error %g, before %g, pruned %g", after, before, ep)
	}
	if _, ok := refitR(w, ws, out, in, rank, make([]float32, in*rank), 1); ok {
		t.Error("refit of a zero L succeeded")
	}
}
