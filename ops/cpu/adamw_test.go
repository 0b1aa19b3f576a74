package cpu

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

// TestAdamWVsRef: every path bit-identical to the scalar reference on
// random values, gradients and moments (including zero gradients, zero
// second moments and large values), with and without a gradient scale
// and zeroing, at lengths around the 8-lane blocks, with nothing written
// past n.
func TestAdamWVsRef(t *testing.T) {
	paths(t, func(t *testing.T) {
		rng := rand.New(rand.NewPCG(5, 6))
		steps := []AdamWStep{
			{Beta1: 0.9, Beta2: 0.999, BC1: 1 - 0.9, BC2: 1 - 0.999, LR: 1e-3, Shrink: 1 - 1e-3*0.1, Eps: 1e-8},
			{Beta1: 0.9, Beta2: 0.95, BC1: 1 - math.Pow(0.9, 37), BC2: 1 - math.Pow(0.95, 37), LR: 3e-4, Shrink: 1, Eps: 1e-6, GradScale: 0.37},
			{Beta1: 0.9, Beta2: 0.95, BC1: 0.5, BC2: 0.25, LR: 1e-2, Shrink: 1, Eps: 1e-8, GradScale: 1, ZeroGrad: true},
		}
		for _, n := range vecLens() {
			for si, s := range steps {
				// Finite padding: a store past n changes it (a NaN one would
				// come back as the same NaN).
				const pad = 7.5
				w, g := guard(rng, n, 9, pad), guard(rng, n, 9, pad)
				m, v := guard(rng, n, 9, pad), guard(rng, n, 9, pad)
				for i := range n {
					g[i] = float32(rng.NormFloat64() * math.Pow(10, float64(rng.IntN(7)-4)))
					m[i] = float32(rng.NormFloat64() * 1e-3)
					v[i] = float32(rng.Float64() * 1e-5)
					switch rng.IntN(8) {
					case 0:
						g[i] = 0
					case 1:
						v[i], m[i] = 0, 0
					case 2:
						w[i] *= 1e4
					}
				}
				rw, rm, rv := slices.Clone(w), slices.Clone(m), slices.Clone(v)
				rg := slices.Clone(g)
				adamWGo(rw[:n], rg[:n], rm[:n], rv[:n], s)
				AdamW(w[:n], g[:n], m[:n], v[:n], s)
				what := fmt.Sprintf("n %d step %d", n, si)
				if s.ZeroGrad && slices.ContainsFunc(g[:n], func(x float32) bool { return x != 0 }) {
					t.Fatalf("%s: gradient not zeroed", what)
				}
				for name, pair := range map[string][2][]float32{"w": {w, rw}, "m": {m, rm}, "v": {v, rv}, "grad": {g, rg}} {
					got, want := pair[0], pair[1]
					for i := range got {
						if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
							t.Fatalf("%s: %s[%d] = %g, want %g (n %d; past n means a write past the slice)", what, name, i, got[i], want[i], n)
						}
					}
				}
			}
		}
	})
}

// BenchmarkAdamW: one step over a million values, the selected path
// against the scalar reference.
func BenchmarkAdamW(b *testing.B) {
	const n = 1 << 20
	rng := rand.New(rand.NewPCG(1, 2))
	w, g, m, v := randF32(rng, n), randF32(rng, n), randF32(rng, n), make([]float32, n)
	s := AdamWStep{Beta1: 0.9, Beta2: 0.999, BC1: 0.1, BC2: 0.001, LR: 1e-3, Shrink: 1, Eps: 1e-8}
	b.Run("kernel", func(b *testing.B) {
		for b.Loop() {
			AdamW(w, g, m, v, s)
		}
	})
	b.Run("ref", func(b *testing.B) {
		for b.Loop() {
			adamWGo(w, g, m, v, s)
		}
	})
}
