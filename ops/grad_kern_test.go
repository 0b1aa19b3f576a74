package ops

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/slopeml/slope/ops/cpu"
)

// The training GEMM helpers against the plain forms they replaced
// (denseMul on explicit transposes, a new buffer added in): linearForward
// is identical; the accumulating forms are identical when K fits one K
// block of the dense kernel (cpu.DenseKBlock) and within float32 rounding otherwise.
// (The N:M weight gradient's paths are checked in ops/cpu.)

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
				if out <= cpu.DenseKBlock && gx[i] != want || !near(gx[i], want, out) {
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
				if m <= cpu.DenseKBlock && g[i] != want || !near(g[i], want, m) {
					t.Fatalf("weight grad m %d in %d out %d: g[%d] = %g, want %g", m, in, out, i, g[i], want)
				}
			}
		}
	}
}

// transposed returns srcᵀ [cols, rows] in a new slice.
func transposed(src []float32, rows, cols, threads int) []float32 {
	dst := make([]float32, rows*cols)
	transposeInto(dst, src, rows, cols, threads)
	return dst
}

// weightGrad computes the dense weight gradient g [out, in] = gyᵀ·x for
// gy [m, out] and x [m, in] (a GEMM with K = m): a = gyᵀ [out, m], the
// weight xᵀ [in, m]. m must be >= 1. (The reference of addWeightGrad.)
func weightGrad(gy, x []float32, m, in, out, threads int) ([]float32, error) {
	gyT := transposed(gy[:m*out], m, out, threads)
	xT := transposed(x[:m*in], m, in, threads)
	g := make([]float32, out*in)
	if err := denseMul(g, gyT, out, m, in, xT, nil, threads); err != nil {
		return nil, err
	}
	return g, nil
}

// TestBiasGrad: biasGrad (one AxpyRows with weights 1) gives the bits of
// the plain loop it replaced, gb[o] += gy[r][o] row by row.
func TestBiasGrad(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, sh := range [][2]int{{1, 1}, {3, 7}, {7, 65}, {100, 1030}, {512, 256}} {
		m, out := sh[0], sh[1]
		gy, gb := randVec(rng, m*out), randVec(rng, out)
		want := slices.Clone(gb)
		biasGradLoop(want, gy, m, out)
		biasGrad(gb, gy, m, out)
		for o := range gb {
			if math.Float32bits(gb[o]) != math.Float32bits(want[o]) {
				t.Fatalf("m %d out %d: gb[%d] = %g, the loop gives %g", m, out, o, gb[o], want[o])
			}
		}
	}
}

// biasGradLoop is the plain loop biasGrad replaced (its reference).
func biasGradLoop(gb, gy []float32, m, out int) {
	for r := 0; r < m; r++ {
		for o, v := range gy[r*out : (r+1)*out] {
			gb[o] += v
		}
	}
}

// BenchmarkBiasGrad: biasGrad against the plain loop at 512 rows (4 x
// 128 tokens) of the test model's widest linear (1024 outputs).
func BenchmarkBiasGrad(b *testing.B) {
	const m, out = 512, 1024
	rng := rand.New(rand.NewPCG(1, 2))
	gy, gb := randVec(rng, m*out), make([]float32, out)
	for _, k := range []struct {
		name string
		f    func(gb, gy []float32, m, out int)
	}{{"loop", biasGradLoop}, {"axpyrows", biasGrad}} {
		b.Run(k.name, func(b *testing.B) {
			for b.Loop() {
				k.f(gb, gy, m, out)
			}
		})
	}
}
