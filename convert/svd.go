package convert

import (
	"math"
	"math/rand/v2"
	"runtime"
	"sort"

	"github.com/slopeml/slope/ops/cpu"
)

// Randomized SVD parameters: the sketch has rank + svdOversample(rank)
// columns (capped at min(rows, cols), where it is exact), refined by
// svdPowerIters rounds of subspace iteration.
const svdPowerIters = 4

func svdOversample(rank int) int { return max(10, rank/2) }

// SVD is a truncated singular value decomposition A ≈ U·diag(S)·Vᵀ of a
// [rows, cols] matrix: U [rows, k] and V [cols, k] are stored column by
// column (U[j] is the j-th left singular vector), S descending.
type SVD struct {
	U, V [][]float64
	S    []float64
}

// RandomizedSVD returns the top rank singular triplets of the row-major
// [rows, cols] matrix a, by randomized subspace iteration (Halko, Martinsson
// and Tropp 2011, algorithm 4.4): a Gaussian sketch of rank+oversample
// columns drawn from rng, svdPowerIters rounds of power iteration with
// re-orthonormalization, then an exact one-sided Jacobi SVD of the small
// projected matrix. All arithmetic is float64. When the sketch is as wide
// as min(rows, cols) the result is an exact SVD.
func RandomizedSVD(a []float32, rows, cols, rank int, rng *rand.Rand) SVD {
	k := min(rank+svdOversample(rank), rows, cols)
	rank = min(rank, k)
	omega := make([][]float64, k)
	for j := range omega {
		omega[j] = make([]float64, cols)
		for i := range omega[j] {
			omega[j][i] = rng.NormFloat64()
		}
	}
	y := mulA(a, rows, cols, omega)
	orthonormalize(y)
	for range svdPowerIters {
		z := mulAT(a, rows, cols, y)
		orthonormalize(z)
		y = mulA(a, rows, cols, z)
		orthonormalize(y)
	}
	// B = Yᵀ·A [k, cols]; Bᵀ = Aᵀ·Y [cols, k] = Ub·Σ·Vbᵀ, so
	// A ≈ Y·B = (Y·Vb)·Σ·Ubᵀ.
	bt := mulAT(a, rows, cols, y)
	ub, s, vb := jacobiSVD(bt)
	u := make([][]float64, rank)
	for j := range u {
		u[j] = make([]float64, rows)
		for c := range y {
			if f := vb[j][c]; f != 0 {
				axpy(u[j], f, y[c])
			}
		}
	}
	return SVD{U: u, V: ub[:rank], S: s[:rank]}
}

// ExactSVD is the full SVD of the row-major [rows, cols] matrix a
// (min(rows, cols) triplets) by one-sided Jacobi, in float64.
func ExactSVD(a []float64, rows, cols int) SVD {
	// Columns of A, Jacobi-orthogonalized: A = U·Σ·Vᵀ with A's columns
	// as the vectors; when rows < cols work on Aᵀ and swap.
	if rows >= cols {
		m := make([][]float64, cols)
		for j := range m {
			m[j] = make([]float64, rows)
			for i := 0; i < rows; i++ {
				m[j][i] = a[i*cols+j]
			}
		}
		u, s, v := jacobiSVD(m)
		return SVD{U: u, V: v, S: s}
	}
	m := make([][]float64, rows)
	for i := range m {
		m[i] = append([]float64(nil), a[i*cols:(i+1)*cols]...)
	}
	u, s, v := jacobiSVD(m) // Aᵀ = u·Σ·vᵀ
	return SVD{U: v, V: u, S: s}
}

// jacobiSVD is the one-sided Jacobi (Hestenes) SVD of the matrix whose
// columns are m (each of length n; m is overwritten): M = U·Σ·Vᵀ with U's
// columns returned as u (unit, or zero for a zero singular value), s
// descending and V [k, k] as columns v.
func jacobiSVD(m [][]float64) (u [][]float64, s []float64, v [][]float64) {
	k := len(m)
	v = make([][]float64, k)
	for j := range v {
		v[j] = make([]float64, k)
		v[j][j] = 1
	}
	const eps = 1e-15
	for sweep := 0; sweep < 80; sweep++ {
		rotated := false
		for p := 0; p < k-1; p++ {
			for q := p + 1; q < k; q++ {
				alpha, beta, gamma := dot(m[p], m[p]), dot(m[q], m[q]), dot(m[p], m[q])
				if gamma == 0 || math.Abs(gamma) <= eps*math.Sqrt(alpha*beta) {
					continue
				}
				rotated = true
				zeta := (beta - alpha) / (2 * gamma)
				t := math.Copysign(1, zeta) / (math.Abs(zeta) + math.Sqrt(1+zeta*zeta))
				c := 1 / math.Sqrt(1+t*t)
				sn := c * t
				rotate(m[p], m[q], c, sn)
				rotate(v[p], v[q], c, sn)
			}
		}
		if !rotated {
			break
		}
	}
	s = make([]float64, k)
	for j := range m {
		s[j] = math.Sqrt(dot(m[j], m[j]))
		if s[j] > 0 {
			for i := range m[j] {
				m[j][i] /= s[j]
			}
		}
	}
	order := make([]int, k)
	for j := range order {
		order[j] = j
	}
	sort.SliceStable(order, func(a, b int) bool { return s[order[a]] > s[order[b]] })
	u, v2, s2 := make([][]float64, k), make([][]float64, k), make([]float64, k)
	for j, o := range order {
		u[j], v2[j], s2[j] = m[o], v[o], s[o]
	}
	// v2[j] is column j of V as a k-vector indexed by the original columns.
	return u, s2, v2
}

func rotate(x, y []float64, c, s float64) {
	for i := range x {
		a, b := x[i], y[i]
		x[i] = c*a - s*b
		y[i] = s*a + c*b
	}
}

func dot(x, y []float64) float64 {
	var s float64
	for i, v := range x {
		s += v * y[i]
	}
	return s
}

func axpy(y []float64, a float64, x []float64) {
	for i, v := range x {
		y[i] += a * v
	}
}

// orthonormalize makes the vectors of q orthonormal in place (modified
// Gram-Schmidt, twice for stability); a vector that is (numerically) in
// the span of the earlier ones becomes zero.
func orthonormalize(q [][]float64) {
	for j := range q {
		norm0 := math.Sqrt(dot(q[j], q[j]))
		for range 2 {
			for i := 0; i < j; i++ {
				if d := dot(q[i], q[j]); d != 0 {
					axpy(q[j], -d, q[i])
				}
			}
		}
		n := math.Sqrt(dot(q[j], q[j]))
		if n <= 1e-12*norm0 || n == 0 {
			clear(q[j])
			continue
		}
		for i := range q[j] {
			q[j][i] /= n
		}
	}
}

// parallel runs f over [0, n) in contiguous chunks on up to GOMAXPROCS
// cores (ops/cpu's worker pool), each chunk at least grain indices (one
// call when n < 2·grain); every index is handled by exactly one call, so
// results that depend only on the index do not depend on the core count.
func parallel(n, grain int, f func(lo, hi int)) {
	t := min(runtime.GOMAXPROCS(0), n/max(grain, 1))
	if t <= 1 {
		if n > 0 {
			f(0, n)
		}
		return
	}
	cpu.ParallelFor(n, t, f)
}

// mulA returns A·X for the row-major [rows, cols] a and X given as
// vectors of length cols; the result's vectors have length rows.
func mulA(a []float32, rows, cols int, x [][]float64) [][]float64 {
	out := make([][]float64, len(x))
	for j := range out {
		out[j] = make([]float64, rows)
	}
	parallel(rows, 16, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			row := a[i*cols : (i+1)*cols]
			for j, xj := range x {
				var s float64
				for c, w := range row {
					s += float64(w) * xj[c]
				}
				out[j][i] = s
			}
		}
	})
	return out
}

// mulAT returns Aᵀ·Y for the row-major [rows, cols] a and Y given as
// vectors of length rows; the result's vectors have length cols.
func mulAT(a []float32, rows, cols int, y [][]float64) [][]float64 {
	out := make([][]float64, len(y))
	for j := range out {
		out[j] = make([]float64, cols)
	}
	parallel(cols, 16, func(lo, hi int) {
		for i := 0; i < rows; i++ {
			row := a[i*cols+lo : i*cols+hi]
			for j, yj := range y {
				f := yj[i]
				if f == 0 {
					continue
				}
				o := out[j][lo:hi]
				for c, w := range row {
					o[c] += f * float64(w)
				}
			}
		}
	})
	return out
}
