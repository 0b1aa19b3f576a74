package ops

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/ops/cpu"
)

// The training GEMM helpers against the plain forms they replaced
// (denseMul on explicit transposes, a new buffer added in, and for N:M
// weights the dense gyᵀ·x gathered at the mask): linearForward is
// identical; the accumulating forms are identical when K fits one K block
// of the dense kernel (512) and within float32 rounding otherwise; the
// kept-positions weight gradient is within float32 rounding.

func randVec(rng *rand.Rand, n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(rng.Float64()*2 - 1)
	}
	return v
}

// near reports whether got is within float32 rounding of a K-term sum
// (relative to the sum of magnitudes, which |want| + K bounds here).
func near(got, want float32, k int) bool {
	tol := float64(k+8) * 0x1p-24 * (math.Abs(float64(want)) + float64(k))
	return math.Abs(float64(got)-float64(want)) <= tol
}

func TestLinearHelpers(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, sh := range [][3]int{{5, 7, 9}, {64, 48, 33}, {300, 600, 40}, {700, 24, 520}} {
		m, in, out := sh[0], sh[1], sh[2]
		w, x, gy := randVec(rng, out*in), randVec(rng, m*in), randVec(rng, m*out)
		bias := randVec(rng, out)
		for _, threads := range []int{1, 2} {
			y, ref := make([]float32, m*out), make([]float32, m*out)
			if err := linearForward(y, x, m, in, out, w, bias, threads); err != nil {
				t.Fatal(err)
			}
			if err := denseMul(ref, x, m, in, out, w, bias, threads); err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(y, ref) {
				t.Fatalf("forward m %d in %d out %d: differs from denseMul", m, in, out)
			}

			gx0 := randVec(rng, m*in)
			gx := slices.Clone(gx0)
			if err := addInputGrad(gx, gy, m, in, out, w, threads); err != nil {
				t.Fatal(err)
			}
			tmp := make([]float32, m*in)
			if err := denseMul(tmp, gy, m, out, in, transposed(w, out, in, 1), nil, threads); err != nil {
				t.Fatal(err)
			}
			for i := range gx {
				want := gx0[i] + tmp[i]
				if out <= 512 && gx[i] != want || !near(gx[i], want, out) {
					t.Fatalf("input grad m %d in %d out %d: gx[%d] = %g, want %g", m, in, out, i, gx[i], want)
				}
			}

			g0 := randVec(rng, out*in)
			g := slices.Clone(g0)
			if err := addWeightGrad(g, gy, x, m, in, out, threads); err != nil {
				t.Fatal(err)
			}
			gd, err := weightGrad(gy, x, m, in, out, threads)
			if err != nil {
				t.Fatal(err)
			}
			for i := range g {
				want := g0[i] + gd[i]
				if m <= 512 && g[i] != want || !near(g[i], want, m) {
					t.Fatalf("weight grad m %d in %d out %d: g[%d] = %g, want %g", m, in, out, i, g[i], want)
				}
			}
		}
	}
}

// TestNMWeightGradMasked: SlopeLinear's weight gradient (cpu.NMWeightGrad)
// equals the dense gyᵀ·x gathered at W's kept positions (weightGrad, the
// trainer's former path), up to float32 rounding (ops/cpu's tests check
// each kernel path against a float64 reference, and the bit-identical
// AVX-512 case of patterns other than 2:4).
func TestNMWeightGradMasked(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, p := range []format.NM{{N: 2, M: 4}, {N: 1, M: 4}, {N: 2, M: 8}} {
		for _, sh := range [][3]int{{3, 8, 16}, {37, 24, 40}, {512, 64, 256}, {600, 16, 32}} {
			m, out, in := sh[0], sh[1], sh[2]
			kept := in / p.M * p.N
			idx := make([]uint8, out*kept)
			for g := 0; g < out*in/p.M; g++ {
				perm := rng.Perm(p.M)[:p.N]
				slices.Sort(perm)
				for s, v := range perm {
					idx[g*p.N+s] = uint8(v)
				}
			}
			gy, x := randVec(rng, m*out), randVec(rng, m*in)
			got := make([]float32, out*kept)
			rb, err := p.IndexRowBytes(in)
			if err != nil {
				t.Fatal(err)
			}
			packed := make([]byte, out*rb)
			if err := format.PackNMIndices(p, out, in, idx, packed); err != nil {
				t.Fatal(err)
			}
			if err := cpu.NMWeightGrad(got, gy, x, m, p, out, in, packed, 2); err != nil {
				t.Fatal(err)
			}
			gd, err := weightGrad(gy, x, m, in, out, 2)
			if err != nil {
				t.Fatal(err)
			}
			for o := 0; o < out; o++ {
				for k := 0; k < kept; k++ {
					c := k/p.N*p.M + int(idx[o*kept+k])
					if want := gd[o*in+c]; !near(got[o*kept+k], want, m) {
						t.Fatalf("%s m %d [%d, %d]: g[%d][%d] = %g, dense-then-masked %g", p, m, out, in, o, k, got[o*kept+k], want)
					}
				}
			}
		}
	}
}
