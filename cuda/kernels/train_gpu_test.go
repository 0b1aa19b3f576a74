package kernels

import (
	"math"
	"math/rand/v2"
	"testing"
	"unsafe"

	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/ops/cpu"
)

// TestGPUNMGather: the kept positions of a dense matrix, in the kept-value
// order of the mask, written or added.
func TestGPUNMGather(t *testing.T) {
	g := openGPU(t)
	rng := rand.New(rand.NewPCG(41, 2))
	for _, dt := range dtypes {
		for _, c := range []struct{ rows, cols, n, m int }{{16, 64, 2, 4}, {33, 96, 4, 8}, {8, 48, 1, 4}, {5, 40, 3, 8}} {
			nm := makeNM(t, rng, c.rows, c.cols, c.n, c.m, false)
			ldd := c.cols + 3
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
	for _, sh := range [][2]int{{64, 128}, {68, 132}, {132, 388}, {256, 512}, {1024, 320}} {
		rows, cols := sh[0], sh[1]
		nm := makeNM(t, rng, rows, cols, 2, 4, true)
		ix := make([]uint8, len(nm.vals))
		if err := format.UnpackNMIndices(format.NM{N: 2, M: 4}, rows, cols, nm.idx, ix); err != nil {
			t.Fatal(err)
		}
		keep := randomTKeep(rng, ix, rows, cols)
		want := packT24Ref(nm.vals, ix, keep, rows, cols)
		var got []float32
		g.run(t, func() error {
			out := g.poison(len(want) * 2)
			if err := g.k.NMPackT24(0, out, g.putT(BF16, nm.vals), g.putU8(nm.idx), g.putU8(keep), rows, cols); err != nil {
				return err
			}
			got = g.getT(BF16, out, len(want))
			return nil
		})
		for i := range want {
			if got[i] != want[i] {
				t.Fatalf("nm_pack_t24 %dx%d: slot %d = %g, want %g", rows, cols, i, got[i], want[i])
			}
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
	const n = 100003
	for si, h := range []AdamWStep{
		NewAdamWStep(1e-3, 0.9, 0.95, 1e-8, 0.1, 1, 1),
		NewAdamWStep(3e-4, 0.9, 0.999, 1e-8, 0, 7, 0.37),
	} {
		w, grad, m, v := randVec(rng, n, false), randVec(rng, n, false), randVec(rng, n, false), randVec(rng, n, false)
		for i := range v {
			v[i] = v[i] * v[i] * 0.01
			m[i] *= 0.1
		}
		ww, wm, wv := append([]float32(nil), w...), append([]float32(nil), m...), append([]float32(nil), v...)
		adamWRef(ww, grad, wm, wv, h)
		var gw, gm, gv, gbf []float32
		g.run(t, func() error {
			pw, pm, pv := g.putF32(w), g.putF32(m), g.putF32(v)
			pbf := g.poison(2 * n)
			if err := g.k.AdamW(0, pw, g.putF32(grad), pm, pv, pbf, n, h); err != nil {
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

// TestGPUSumSquares: two accumulating calls against a float64 sum, and
// the same bits when run again.
func TestGPUSumSquares(t *testing.T) {
	g := openGPU(t)
	rng := rand.New(rand.NewPCG(45, 6))
	a, b := randVec(rng, 1<<20+3, false), randVec(rng, 1000, false)
	var want float64
	for _, x := range append(append([]float32(nil), a...), b...) {
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
			if err := g.k.SumSquares(0, out, parts, pb, len(b)); err != nil {
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
