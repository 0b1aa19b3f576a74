package cpu

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"testing"

	"github.com/slopeml/slope/format"
)

// BenchmarkFMAPeak measures the register-only FMA throughput (12
// independent VFMADD231PS chains, 192 FLOPs per iteration) on one core
// and on GOMAXPROCS cores.
func BenchmarkFMAPeak(b *testing.B) {
	if !haveAVX2FMA {
		b.Skip("no AVX2+FMA")
	}
	const iters = 1 << 16
	for _, th := range []int{1, runtime.GOMAXPROCS(0)} {
		b.Run(fmt.Sprintf("threads=%d", th), func(b *testing.B) {
			for b.Loop() {
				var wg sync.WaitGroup
				for range th {
					wg.Go(func() { fmaPeak(iters) })
				}
				wg.Wait()
			}
			flops := float64(b.N) * float64(th) * iters * 192
			b.ReportMetric(flops/b.Elapsed().Seconds()/1e9, "GFLOP/s")
		})
	}
}

// BenchmarkLinear runs the OPT-125m linear shapes (Out x In: attention
// 768x768, fc1 3072x768, fc2 768x3072) for decode (m=1) and prefill
// (m=128) with GOMAXPROCS goroutines (and one fp32 GEMM on one core).
// GFLOP/s counts dense-equivalent FLOPs 2·m·In·Out; actual-GFLOP/s the
// FLOPs done (2·m·kept·Out for N:M); weight-GB/s the prepared weight
// bytes streamed per call (m=1).
func BenchmarkLinear(b *testing.B) {
	rng := rand.New(rand.NewPCG(1, 1))
	type kind struct {
		name string
		dt   DType
		nm   bool
	}
	kinds := []kind{
		{"dense-f32", Float32, false},
		{"dense-bf16", BFloat16, false},
		{"dense-f16", Float16, false},
		{"nm24-f32", Float32, true},
		{"nm24-bf16", BFloat16, true},
		{"nm24-f16", Float16, true},
	}
	for _, sh := range [][2]int{{768, 768}, {3072, 768}, {768, 3072}} {
		out, in := sh[0], sh[1]
		for _, k := range kinds {
			var lin func(y, x []float32, m int, th int) error
			var bytes int
			flopFrac := 1.0
			if k.nm {
				w, _ := randNM(b, rng, format.NM{N: 2, M: 4}, k.dt, out, in)
				s, err := PrepareNM(w)
				if err != nil {
					b.Fatal(err)
				}
				lin = func(y, x []float32, m, th int) error { return s.Linear(y, x, m, nil, th) }
				bytes = s.Bytes()
				flopFrac = 0.5
			} else {
				d, err := PrepareDense(randDense(b, rng, k.dt, out, in))
				if err != nil {
					b.Fatal(err)
				}
				lin = func(y, x []float32, m, th int) error { return d.Linear(y, x, m, nil, th) }
				bytes = d.Bytes()
			}
			ths := []int{0}
			if k.name == "dense-f32" {
				ths = append(ths, 1)
			}
			for _, m := range []int{1, 128} {
				for _, th := range ths {
					name := fmt.Sprintf("%dx%d/%s/m=%d", out, in, k.name, m)
					if th == 1 {
						name += "/threads=1"
					}
					x := randF32(rng, m*in)
					y := make([]float32, m*out)
					b.Run(name, func(b *testing.B) {
						for b.Loop() {
							if err := lin(y, x, m, th); err != nil {
								b.Fatal(err)
							}
						}
						sec := b.Elapsed().Seconds() / float64(b.N)
						flops := 2 * float64(m) * float64(in) * float64(out)
						b.ReportMetric(flops/sec/1e9, "GFLOP/s")
						b.ReportMetric(flopFrac*flops/sec/1e9, "actual-GFLOP/s")
						if m == 1 {
							b.ReportMetric(float64(bytes)/sec/1e9, "weight-GB/s")
						}
					})
				}
			}
		}
	}
}

// BenchmarkLinearCold is the m=1 decode with the weights out of cache:
// each iteration runs one of enough copies of the 768x768 layer (about 64
// MiB of fp32 dense weights, more than the L3) that every call streams
// its weights from memory, as decoding a whole model does. weight-GB/s is
// the prepared bytes read per second.
func BenchmarkLinearCold(b *testing.B) {
	rng := rand.New(rand.NewPCG(3, 3))
	const out, in = 768, 768
	for _, dt := range []DType{Float32, BFloat16} {
		for _, nm := range []bool{false, true} {
			copies := (64 << 20) / (out * in * 4)
			lins := make([]func(y, x []float32) error, copies)
			bytes := 0
			for i := range lins {
				if nm {
					w, _ := randNM(b, rng, format.NM{N: 2, M: 4}, dt, out, in)
					s, err := PrepareNM(w)
					if err != nil {
						b.Fatal(err)
					}
					lins[i] = func(y, x []float32) error { return s.Linear(y, x, 1, nil, 0) }
					bytes = s.Bytes()
				} else {
					d, err := PrepareDense(randDense(b, rng, dt, out, in))
					if err != nil {
						b.Fatal(err)
					}
					lins[i] = func(y, x []float32) error { return d.Linear(y, x, 1, nil, 0) }
					bytes = d.Bytes()
				}
			}
			kind := "dense"
			if nm {
				kind = "nm24"
			}
			name := fmt.Sprintf("%dx%d/%s-%s/m=1", out, in, kind, map[DType]string{Float32: "f32", BFloat16: "bf16"}[dt])
			x, y := randF32(rng, in), make([]float32, out)
			b.Run(name, func(b *testing.B) {
				i := 0
				for b.Loop() {
					if err := lins[i](y, x); err != nil {
						b.Fatal(err)
					}
					if i++; i == len(lins) {
						i = 0
					}
				}
				sec := b.Elapsed().Seconds() / float64(b.N)
				b.ReportMetric(2*out*in/sec/1e9, "GFLOP/s")
				b.ReportMetric(float64(bytes)/sec/1e9, "weight-GB/s")
			})
		}
	}
}

// BenchmarkLowRankAdd: an r=16 adapter on a 768x768 layer.
func BenchmarkLowRankAdd(b *testing.B) {
	rng := rand.New(rand.NewPCG(2, 2))
	const in, out, r = 768, 768, 16
	l, rr := randF32(rng, in*r), randF32(rng, r*out)
	for _, m := range []int{1, 128} {
		x, y := randF32(rng, m*in), make([]float32, m*out)
		a, err := PrepareLowRank(in, out, r, l, rr)
		if err != nil {
			b.Fatal(err)
		}
		for _, prep := range []bool{false, true} {
			name := fmt.Sprintf("m=%d", m)
			if prep {
				name += "/prepared"
			}
			b.Run(name, func(b *testing.B) {
				for b.Loop() {
					var err error
					if prep {
						err = a.Add(y, x, m, 0.5, 0)
					} else {
						err = LowRankAdd(y, x, m, in, out, r, l, rr, 0.5, 0)
					}
					if err != nil {
						b.Fatal(err)
					}
				}
				sec := b.Elapsed().Seconds() / float64(b.N)
				b.ReportMetric(2*float64(m)*r*(in+out)/sec/1e9, "GFLOP/s")
			})
		}
	}
}
