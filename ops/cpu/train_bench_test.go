package cpu

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/slopeml/slope/format"
)

// BenchmarkWeightGrad: the weight gradient of a [out, in] weight over m
// rows (the test model's shapes and OPT-350m's feed-forward pair), dense
// vs kept positions only of a 2:4 weight (weightGradPair), on 1 and 2
// threads. GFLOP/s counts the dense 2·m·out·in in both, so it compares
// times.
func BenchmarkWeightGrad(b *testing.B) {
	for _, sh := range trainShapes {
		out, in := sh[0], sh[1]
		flops := 2 * float64(trainRows*out*in)
		for _, threads := range []int{1, 2} {
			dense, sparse := weightGradPair(b, out, in, threads)
			for _, k := range []struct {
				name string
				grad func() error
			}{
				{"dense", dense},
				{"nm24", sparse},
			} {
				b.Run(fmt.Sprintf("%dx%d/%s/threads=%d", out, in, k.name, threads), func(b *testing.B) {
					for b.Loop() {
						if err := k.grad(); err != nil {
							b.Fatal(err)
						}
					}
					b.ReportMetric(flops*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
				})
			}
		}
	}
}

// weightGradPair returns the weight gradients of a [out, in] weight over
// trainRows rows on threads: dense (gyᵀ·x on the dense GEMM, x's panels
// prepared from x each call; the trainer also transposes gy, which this
// leaves out) and 2:4 (NMWeightGrad
// from gy and x), on random operands.
func weightGradPair(b *testing.B, out, in, threads int) (dense, sparse func() error) {
	p := format.NM{N: 2, M: 4}
	rng := rand.New(rand.NewPCG(1, 2))
	aT, x, gy := randF32(rng, out*trainRows), randF32(rng, trainRows*in), randF32(rng, trainRows*out)
	w, _ := randNM(b, rng, p, Float32, out, in)
	gd, gs := make([]float32, out*in), make([]float32, out*in/2)
	var d *Dense
	return func() (err error) {
			if d, err = PrepareDenseKN(d, x, trainRows, in, threads); err != nil {
				return err
			}
			return d.Linear(gd, aT, out, nil, threads)
		},
		func() error { return NMWeightGrad(gs, gy, x, trainRows, p, out, in, w.Indices, threads) }
}

// BenchmarkTrainLinear: the forward product at the trainer's shapes
// (m = 512 rows: bench/train.sh's 4 x 128 tokens; the test model's
// layers and OPT-350m's feed-forward pair), dense vs 2:4 float32, one
// thread. GFLOP/s counts the dense 2·m·out·in in both.
func BenchmarkTrainLinear(b *testing.B) {
	for _, sh := range trainShapes {
		out, in := sh[0], sh[1]
		dense, sparse := trainLinearPair(b, out, in)
		flops := 2 * float64(trainRows*out*in)
		for _, k := range []struct {
			name string
			lin  func() error
		}{
			{"dense", dense},
			{"nm24", sparse},
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

// BenchmarkTrainLinearPair and BenchmarkWeightGradPair time dense and
// 2:4 call by call at the trainer's shapes (m = 512, one thread) and
// report the median of the per-pair time ratios dense/2:4 ("speedup"),
// which a machine whose speed drifts between sub-benchmarks (shared VMs:
// up to 2x within minutes) leaves nearly intact, and each side's
// dense-equivalent GFLOP/s over the whole run.
func BenchmarkTrainLinearPair(b *testing.B) {
	for _, sh := range trainShapes {
		out, in := sh[0], sh[1]
		dense, sparse := trainLinearPair(b, out, in)
		b.Run(fmt.Sprintf("%dx%d", out, in), func(b *testing.B) {
			benchPair(b, 2*float64(trainRows*out*in), dense, sparse)
		})
	}
}

// trainLinearPair returns the forward products of a random dense and a
// random 2:4 float32 weight [out, in] on the same random x (trainRows
// rows, one thread).
func trainLinearPair(b *testing.B, out, in int) (dense, sparse func() error) {
	rng := rand.New(rand.NewPCG(1, 2))
	x, y := randF32(rng, trainRows*in), make([]float32, trainRows*out)
	d, err := PrepareDense(randDense(b, rng, Float32, out, in))
	if err != nil {
		b.Fatal(err)
	}
	w, _ := randNM(b, rng, format.NM{N: 2, M: 4}, Float32, out, in)
	s, err := PrepareNM(w)
	if err != nil {
		b.Fatal(err)
	}
	return func() error { return d.Linear(y, x, trainRows, nil, 1) },
		func() error { return s.Linear(y, x, trainRows, nil, 1) }
}

func BenchmarkWeightGradPair(b *testing.B) {
	for _, sh := range trainShapes {
		out, in := sh[0], sh[1]
		dense, sparse := weightGradPair(b, out, in, 1)
		b.Run(fmt.Sprintf("%dx%d", out, in), func(b *testing.B) {
			benchPair(b, 2*float64(trainRows*out*in), dense, sparse)
		})
	}
}

// trainShapes are the [out, in] of the test model's layers and
// OPT-350m's feed-forward pair; trainRows is bench/train.sh's 4 x 128
// tokens.
var trainShapes = [][2]int{{256, 256}, {1024, 256}, {256, 1024}, {4096, 1024}, {1024, 4096}}

const trainRows = 512

// benchPair runs dense then sparse once per iteration and reports the
// median dense/sparse time ratio as "speedup" and each one's GFLOP/s
// (flops per call over its total time).
func benchPair(b *testing.B, flops float64, dense, sparse func() error) {
	var td, ts time.Duration
	var ratios []float64
	for b.Loop() {
		t0 := time.Now()
		if err := dense(); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if err := sparse(); err != nil {
			b.Fatal(err)
		}
		t2 := time.Now()
		td += t1.Sub(t0)
		ts += t2.Sub(t1)
		ratios = append(ratios, float64(t1.Sub(t0))/float64(t2.Sub(t1)))
	}
	slices.Sort(ratios)
	b.ReportMetric(ratios[len(ratios)/2], "speedup")
	b.ReportMetric(flops*float64(b.N)/td.Seconds()/1e9, "dense-GFLOP/s")
	b.ReportMetric(flops*float64(b.N)/ts.Seconds()/1e9, "2:4-GFLOP/s")
}

// BenchmarkSPMMKernel: the AVX2/AVX-512 sparse GEMM micro-kernel alone
// (the widest tile: 3 outputs x 32 rows with AVX2, 4 x 64 with AVX-512),
// 512 steps of random kept rows of a transposed X block of in rows:
// in = 128 keeps the block in L1 (16 KiB with AVX2), in = 1024 does not.
// GFLOP/s counts the FLOPs done.
func BenchmarkSPMMKernel(b *testing.B) {
	if !asmOn() {
		b.Skip("no assembly kernels on this CPU or build")
	}
	ld, r := 32, 3
	if asm512On() {
		ld, r = 64, 4
	}
	const steps = 512
	for _, in := range []int{128, 1024} {
		rng := rand.New(rand.NewPCG(1, 2))
		xt := randF32(rng, in*ld)
		off := make([]uint32, 8*steps)
		for i := range off {
			off[i] = uint32(rng.IntN(in) * ld * 4)
		}
		vals := randF32(rng, 8*steps)
		yt := make([]float32, r*ld)
		b.Run(fmt.Sprintf("in=%d", in), func(b *testing.B) {
			for b.Loop() {
				spmmTile(ld, ld, r, 0, xt, in, off, vals, steps, yt)
			}
			b.ReportMetric(2*float64(r*ld*steps)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
		})
	}
}

// BenchmarkPairKernel: the 2:4 weight gradient's pattern-pair kernel
// alone at its widest (8 rows with AVX-512, 6 with AVX2) on rows of n
// elements: n = 512 keeps its rows and columns in L1, n = 2048 does not.
func BenchmarkPairKernel(b *testing.B) {
	if !asmOn() {
		b.Skip("no assembly kernels on this CPU or build")
	}
	kern := sddmmPairKernels()
	r := len(kern)
	for _, n := range []int{512, 2048} {
		rng := rand.New(rand.NewPCG(1, 2))
		ld := n + 16
		gy, xa, xb := randF32(rng, r*ld), randF32(rng, ld), randF32(rng, ld)
		var offs [sddmmPairMax]int64
		for q := range r {
			offs[q] = int64(q * ld * 4)
		}
		var res [2 * sddmmPairMax]float32
		b.Run(fmt.Sprintf("n=%d", n), func(b *testing.B) {
			for b.Loop() {
				kern[r-1](&gy[0], &offs[0], &xa[0], &xb[0], n, &res[0])
			}
			b.ReportMetric(4*float64(r*n)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
		})
	}
}

// BenchmarkHeadGEMM: the three products of a tied LM head at
// bench/train.sh's shapes (512 rows, hidden 256, vocabulary 8192), as the
// trainer runs them, one thread: the logits (x·Eᵀ), the input gradient
// (gy·E, K = 8192) and the embedding's gradient (gyᵀ·x over 8192 rows,
// gyᵀ transposed in scratch). The last two have a 16 MiB A operand, the
// case for which the dense GEMM blocks its rows (gemmStreamA).
func BenchmarkHeadGEMM(b *testing.B) {
	const m, h, v = 512, 256, 8192
	rng := rand.New(rand.NewPCG(1, 2))
	e, x, gy := randF32(rng, v*h), randF32(rng, m*h), randF32(rng, m*v)
	logits, gx, ge, gyT := make([]float32, m*v), make([]float32, m*h), make([]float32, v*h), make([]float32, m*v)
	var d *Dense
	for _, c := range []struct {
		name string
		run  func() error
	}{
		{"logits", func() (err error) {
			if d, err = PrepareDenseF32(d, e, v, h, 1); err != nil {
				return err
			}
			return d.Linear(logits, x, m, nil, 1)
		}},
		{"input-grad", func() (err error) {
			if d, err = PrepareDenseKN(d, e, v, h, 1); err != nil {
				return err
			}
			return d.MulAdd(gx, gy, m, 1)
		}},
		{"weight-grad", func() (err error) {
			if err = Transpose(gyT, gy, m, v, 1); err != nil {
				return err
			}
			if d, err = PrepareDenseKN(d, x, m, h, 1); err != nil {
				return err
			}
			return d.MulAdd(ge, gyT, v, 1)
		}},
	} {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				if err := c.run(); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(2*float64(m*h*v)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
		})
	}
}
