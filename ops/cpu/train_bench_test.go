package cpu

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/slopeml/slope/format"
)

// BenchmarkWeightGrad: the weight gradient of a [out, in] weight over m
// rows (the test model's shapes and OPT-350m's feed-forward pair), dense (gyᵀ·x on the dense GEMM, x's panels prepared from x) vs
// kept positions only of a 2:4 weight (NMWeightGrad from gy and x).
// GFLOP/s counts the dense 2·m·out·in in both, so it compares times.
func BenchmarkWeightGrad(b *testing.B) {
	const m = 512
	p := format.NM{N: 2, M: 4}
	for _, sh := range [][2]int{{256, 256}, {1024, 256}, {256, 1024}, {4096, 1024}, {1024, 4096}} {
		out, in := sh[0], sh[1]
		rng := rand.New(rand.NewPCG(1, 2))
		aT, x, gy := randF32(rng, out*m), randF32(rng, m*in), randF32(rng, m*out)
		flops := 2 * float64(m*out*in)
		for _, threads := range []int{1, 2} {
			b.Run(fmt.Sprintf("%dx%d/dense/threads=%d", out, in, threads), func(b *testing.B) {
				g := make([]float32, out*in)
				var d *Dense
				for b.Loop() {
					d, _ = PrepareDenseKN(d, x, m, in, threads)
					if err := d.Linear(g, aT, out, nil, threads); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(flops*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
			})
			b.Run(fmt.Sprintf("%dx%d/nm24/threads=%d", out, in, threads), func(b *testing.B) {
				w, _ := randNM(b, rng, p, Float32, out, in)
				kept := in / 2
				g := make([]float32, out*kept)
				for b.Loop() {
					if err := NMWeightGrad(g, gy, x, m, p, out, in, w.Indices, threads); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(flops*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
			})
		}
	}
}

// BenchmarkTrainLinear: the forward product at the trainer's shapes
// (m = 512 rows: bench/train.sh's 4 x 128 tokens; the test model's
// layers and OPT-350m's feed-forward pair), dense vs 2:4 float32, one
// thread. GFLOP/s counts the dense 2·m·out·in in both.
func BenchmarkTrainLinear(b *testing.B) {
	const m = 512
	for _, sh := range [][2]int{{256, 256}, {1024, 256}, {256, 1024}, {4096, 1024}, {1024, 4096}} {
		out, in := sh[0], sh[1]
		rng := rand.New(rand.NewPCG(1, 2))
		x, y := randF32(rng, m*in), make([]float32, m*out)
		flops := 2 * float64(m*out*in)
		d, err := PrepareDense(randDense(b, rng, Float32, out, in))
		if err != nil {
			b.Fatal(err)
		}
		w, _ := randNM(b, rng, format.NM{N: 2, M: 4}, Float32, out, in)
		s, err := PrepareNM(w)
		if err != nil {
			b.Fatal(err)
		}
		for _, k := range []struct {
			name string
			lin  func() error
		}{
			{"dense", func() error { return d.Linear(y, x, m, nil, 1) }},
			{"nm24", func() error { return s.Linear(y, x, m, nil, 1) }},
		} {
			b.Run(fmt.Sprintf("%dx%d/%s", out, in, k.name), func(b *testing.B) {
				for b.Loop() {
					if err := k.lin(); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(flops*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
			})
		}
	}
}
