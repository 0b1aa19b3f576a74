package kernels

import (
	"errors"
	"math"
	"math/rand/v2"
	"testing"
	"unsafe"

	"github.com/slopeml/slope/cuda/driver"
	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/ops/cpu"
)

// TestGPUNMGather: the kept positions of a dense matrix, in the kept-value
// order of the mask, written or added.
func TestGPUNMGather(t *testing.T) {
	g := openGPU(t)
	rng := rand.New(rand.NewPCG(41, 2))
	for _, dt := range dtypes {
		// ldd a multiple of 4 takes nm_gather24_f32 for f32 2:4 (36
		// columns: an odd number of groups per row).
		for _, c := range []struct{ rows, cols, n, m, ldd int }{{16, 64, 2, 4, 67}, {16, 64, 2, 4, 68}, {20, 36, 2, 4, 36},
			{33, 96, 4, 8, 99}, {8, 48, 1, 4, 51}, {5, 40, 3, 8, 43}} {
			nm := makeNM(t, rng, c.rows, c.cols, c.n, c.m, false)
			ldd := c.ldd
			dense := rnd(rng, dt, c.rows*ldd)
			prev := randVec(rng, c.rows*nm.k, false)
			for _, accumulate := range []bool{false, true} {
				want := make([]float32, 0, c.rows*nm.k)
				for r := 0; r < c.rows; r++ {
					for col := 0; col < c.cols; col++ {
						if nm.dense[r*c.cols+col] != 0 {
							want = append(want, dense[r*ldd+col])
						}
					}
				}
				if accumulate {
					for i := range want {
						want[i] += prev[i]
					}
				}
				var got []float32
				g.run(t, func() error {
					out := g.putF32(prev)
					if err := g.k.NMGather(0, dt, out, g.putT(dt, dense), ldd, g.putU8(nm.idx), c.rows, c.cols, c.n, c.m, accumulate); err != nil {
						return err
					}
					got = g.getT(F32, out, len(want))
					return nil
				})
				for i := range want {
					if got[i] != want[i] {
						t.Fatalf("nm_gather %v %d:%d %dx%d accumulate %v: element %d = %g, want %g", dt, c.n, c.m, c.rows, c.cols, accumulate, i, got[i], want[i])
					}
				}
			}
		}
	}
}

// TestGPUNMExpandT: the transposed double-pruned weight, against
// format.DoublePruneMagnitude's mask applied on the host.
func TestGPUNMExpandT(t *testing.T) {
	g := openGPU(t)
	rng := rand.New(rand.NewPCG(47, 8))
	for _, dt := range dtypes {
		for _, c := range []struct{ rows, cols, n, m int }{{16, 64, 2, 4}, {32, 96, 4, 8}, {12, 40, 2, 4}} {
			nm := makeNM(t, rng, c.rows, c.cols, c.n, c.m, dt == BF16)
			p := format.NM{N: c.n, M: c.m}
			idx := make([]uint8, len(nm.vals))
			if err := format.UnpackNMIndices(p, c.rows, c.cols, nm.idx, idx); err != nil {
				t.Fatal(err)
			}
			keep, err := format.DoublePruneMagnitude(p, c.rows, c.cols, nm.vals, idx)
			if err != nil {
				t.Fatal(err)
			}
			keepB := make([]byte, len(keep))
			kept := 0
			for i, k := range keep {
				if k {
					keepB[i], kept = 1, kept+1
				}
			}
			if kept == len(keep) || kept == 0 {
				t.Fatalf("%d:%d: the double pruning kept %d of %d: no test", c.n, c.m, kept, len(keep))
			}
			want := dpTransposeRef(nm.vals, idx, keepB, c.rows, c.cols, c.n, c.m)
			var got []float32
			g.run(t, func() error {
				out := g.poison(c.rows * c.cols * dt.Size())
				if err := g.k.NMExpandT(0, dt, out, g.putT(dt, nm.vals), g.putU8(nm.idx), g.putU8(keepB), c.rows, c.cols, c.n, c.m); err != nil {
					return err
				}
				got = g.getT(dt, out, len(want))
				return nil
			})
			for i := range want {
				if got[i] != want[i] {
					t.Fatalf("nm_expand_t %v %d:%d %dx%d: element %d = %g, want %g", dt, c.n, c.m, c.rows, c.cols, i, got[i], want[i])
				}
			}
		}
	}
}

// TestGPUNMPackT24: W_dpᵀ's values packed as cuSPARSELt holds them,
// against the layout's definition (packT24Ref), with empty, lone and
// full groups and partial tiles.
func TestGPUNMPackT24(t *testing.T) {
	g := openGPU(t)
	rng := rand.New(rand.NewPCG(55, 56))
	for _, sh := range [][2]int{{64, 128}, {68, 132}, {132, 388}, {132, 160}, {256, 512}, {1024, 320}, {260, 544}} {
		rows, cols := sh[0], sh[1]
		nm, keep, want := packT24Case(t, rng, rows, cols)
		// Both kernels where nm_pack_t24_reg takes the shape.
		for _, reg := range []bool{false, true} {
			if reg && cols%32 != 0 {
				continue
			}
			var got []float32
			g.run(t, func() error {
				out := g.poison(len(want) * 2)
				if err := g.k.nmPackT24(0, out, g.putT(BF16, nm.vals), g.putU8(nm.idx), g.putU8(keep), rows, cols, reg); err != nil {
					return err
				}
				got = g.getT(BF16, out, len(want))
				return nil
			})
			for i := range want {
				if got[i] != want[i] {
					t.Fatalf("nm_pack_t24 (reg %v) %dx%d: slot %d = %g, want %g", reg, rows, cols, i, got[i], want[i])
				}
			}
		}
	}
}

// BenchmarkGPUNMPackT24: the two packing kernels at the fc1 shapes of
// OPT-13B and OPT-66B (W [4·hidden, hidden]), a valid random 128-row
// slab repeated down W. Bytes: values, keep and idx read, dst written.
func BenchmarkGPUNMPackT24(b *testing.B) {
	g := openGPU(b)
	rng := rand.New(rand.NewPCG(61, 62))
	for _, sh := range []struct {
		name       string
		rows, cols int
	}{{"13B-fc1", 20480, 5120}, {"66B-fc1", 36864, 9216}} {
		const slab = 128
		nm, keep, _ := packT24Case(b, rng, slab, sh.cols)
		vals := toBF16(nm.vals)
		k := sh.cols / 2
		bytes := int64(sh.rows)*int64(k)*(2+1+2) + int64(sh.rows)*int64(sh.cols)/8
		for _, reg := range []bool{false, true} {
			name := sh.name + "/tiled"
			if reg {
				name = sh.name + "/reg"
			}
			b.Run(name, func(b *testing.B) {
				b.SetBytes(bytes)
				g.run(b, func() error {
					dv, dk, di := g.alloc(2*sh.rows*k), g.alloc(sh.rows*k), g.alloc(sh.rows*len(nm.idx)/slab)
					out := g.alloc(2 * sh.rows * k)
					for r := 0; r < sh.rows && g.err == nil; r += slab {
						g.err = errors.Join(g.d.CopyIn(dv+driver.Ptr(2*r*k), unsafe.Pointer(&vals[0]), 2*len(vals)),
							g.d.CopyIn(dk+driver.Ptr(r*k), unsafe.Pointer(&keep[0]), len(keep)),
							g.d.CopyIn(di+driver.Ptr(r/slab*len(nm.idx)), unsafe.Pointer(&nm.idx[0]), len(nm.idx)))
					}
					if g.err != nil {
						return g.err
					}
					if err := g.k.nmPackT24(0, out, dv, di, dk, sh.rows, sh.cols, reg); err != nil { // warm-up
						return err
					}
					if err := g.d.Synchronize(); err != nil {
						return err
					}
					b.ResetTimer()
					for i := 0; i < b.N; i++ {
						if err := g.k.nmPackT24(0, out, dv, di, dk, sh.rows, sh.cols, reg); err != nil {
							return err
						}
					}
					err := g.d.Synchronize()
					b.StopTimer()
					return err
				})
			})
		}
	}
}

// TestGPUNMTMask24: the transpose mask's refresh by magnitude, against
// format.DoublePruneMagnitude, with ties, zeros, NaNs and partial tiles.
func TestGPUNMTMask24(t *testing.T) {
	g := openGPU(t)
	rng := rand.New(rand.NewPCG(59, 60))
	for _, sh := range [][2]int{{64, 128}, {68, 132}, {256, 512}, {1024, 320}} {
		rows, cols := sh[0], sh[1]
		plain, ties := tmask24Cases(t, rng, rows, cols)
		for ci, c := range []*nmCase{plain, ties} {
			want := tmask24Want(t, c, rows, cols)
			var got []byte
			g.run(t, func() error {
				keep := g.poison(len(c.vals))
				if err := g.k.NMTMask24(0, keep, g.putF32(c.vals), g.putU8(c.idx), rows, cols); err != nil {
					return err
				}
				got = make([]byte, len(c.vals))
				return g.d.CopyOut(unsafe.Pointer(&got[0]), keep, len(got))
			})
			for i, w := range want {
				if got[i] > 1 || (got[i] == 1) != w {
					t.Fatalf("nm_tmask24 %dx%d case %d: kept value %d: keep %d, want %v", rows, cols, ci, i, got[i], w)
				}
			}
		}
	}
}

// adamWRef is package train's AdamW for one parameter: cpu.AdamW, which
// the trainer runs, with the same scalars.
func adamWRef(w, grad, m, v []float32, h AdamWStep) {
	cpu.AdamW(w, grad, m, v, cpu.AdamWStep{Beta1: h.Beta1, Beta2: h.Beta2, BC1: h.BC1, BC2: h.BC2,
		LR: h.LR, Shrink: h.Shrink, Eps: h.Eps, GradScale: h.GradScale})
}

// TestGPUAdamW: bit-identical to the CPU trainer's update (values,
// moments) and the bf16 copy.
func TestGPUAdamW(t *testing.T) {
	g := openGPU(t)
	rng := rand.New(rand.NewPCG(43, 4))
	const n = 100003 // 3 past a multiple of 4
	for si, c := range []struct {
		h   AdamWStep
		off driver.Ptr // bytes past an aligned buffer (4: the unaligned path)
	}{
		{NewAdamWStep(1e-3, 0.9, 0.95, 1e-8, 0.1, 1, 1), 0},
		{NewAdamWStep(3e-4, 0.9, 0.999, 1e-8, 0, 7, 0.37), 0},
		{NewAdamWStep(1e-3, 0.9, 0.95, 1e-8, 0.1, 2, 1), 4},
	} {
		h, off := c.h, c.off
		w, grad, m, v := randVec(rng, n, false), randVec(rng, n, false), randVec(rng, n, false), randVec(rng, n, false)
		for i := range v {
			v[i] = v[i] * v[i] * 0.01
			m[i] *= 0.1
		}
		ww, wm, wv := append([]float32(nil), w...), append([]float32(nil), m...), append([]float32(nil), v...)
		adamWRef(ww, grad, wm, wv, h)
		var gw, gm, gv, gbf []float32
		g.run(t, func() error {
			pre := []float32{0}[:off/4]
			pw, pm, pv := g.putF32(append(pre, w...))+off, g.putF32(append(pre, m...))+off, g.putF32(append(pre, v...))+off
			pbf := g.poison(2*n+8) + off/2
			if err := g.k.AdamW(0, pw, g.putF32(append(pre, grad...))+off, pm, pv, pbf, n, h); err != nil {
				return err
			}
			gw, gm, gv, gbf = g.getT(F32, pw, n), g.getT(F32, pm, n), g.getT(F32, pv, n), g.getT(BF16, pbf, n)
			return nil
		})
		for i := 0; i < n; i++ {
			if gw[i] != ww[i] || gm[i] != wm[i] || gv[i] != wv[i] {
				t.Fatalf("adamw case %d: element %d: w %g m %g v %g; CPU %g %g %g", si, i, gw[i], gm[i], gv[i], ww[i], wm[i], wv[i])
			}
			if want := format.BFloat16ToFloat32(format.Float32ToBFloat16(ww[i])); gbf[i] != want {
				t.Fatalf("adamw case %d: bf16 copy %d = %g, want %g", si, i, gbf[i], want)
			}
		}
	}
}

// TestGPUFill: every element of a buffer, at aligned and unaligned
// starts and lengths that are and are not multiples of 16 bytes, and
// nothing past it.
func TestGPUFill(t *testing.T) {
	g := openGPU(t)
	for _, dt := range dtypes {
		for _, c := range []struct{ off, n int }{{0, 4096}, {0, 1001}, {1, 37}, {3, 5000}, {0, 1}} {
			const v, guard = 1.5, 16
			var got []float32
			g.run(t, func() error {
				base := g.putT(dt, make([]float32, c.off+c.n+guard))
				p := base + driver.Ptr(c.off*dt.Size())
				if err := g.k.Fill(0, dt, p, v, c.n); err != nil {
					return err
				}
				got = g.getT(dt, base, c.off+c.n+guard)
				return nil
			})
			for i, x := range got {
				want := float32(0)
				if i >= c.off && i < c.off+c.n {
					want = v
				}
				if x != want {
					t.Fatalf("fill %v offset %d n %d: element %d = %g, want %g", dt, c.off, c.n, i, x, want)
				}
			}
		}
	}
}

// TestGPUSumSquares: two accumulating calls against a float64 sum, and
// the same bits when run again; the second from 4 bytes past an aligned
// buffer (the kernel's unaligned path).
func TestGPUSumSquares(t *testing.T) {
	g := openGPU(t)
	rng := rand.New(rand.NewPCG(45, 6))
	a, b := randVec(rng, 1<<20+3, false), randVec(rng, 1000, false)
	var want float64
	for _, x := range append(append([]float32(nil), a...), b[1:]...) {
		want += float64(x) * float64(x)
	}
	var got [3]float64
	g.run(t, func() error {
		out, parts := g.alloc(8), g.alloc(8*SumSquaresParts)
		pa, pb := g.putF32(a), g.putF32(b)
		for i := range got {
			if err := g.d.Memset32(out, 0, 2); err != nil {
				return err
			}
			if err := g.k.SumSquares(0, out, parts, pa, len(a)); err != nil {
				return err
			}
			if err := g.k.SumSquares(0, out, parts, pb+4, len(b)-1); err != nil {
				return err
			}
			if err := g.d.Synchronize(); err != nil {
				return err
			}
			if err := g.d.CopyOut(unsafe.Pointer(&got[i]), out, 8); err != nil {
				return err
			}
		}
		return nil
	})
	if rel := math.Abs(got[0]-want) / want; !(rel <= 1e-12) {
		t.Errorf("sum of squares %g, want %g (relative error %.2g)", got[0], want, rel)
	}
	if got[1] != got[0] || got[2] != got[0] {
		t.Errorf("sum of squares differs between runs: %v", got)
	}
}
