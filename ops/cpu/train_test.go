package cpu

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/slopeml/slope/format"
)

// The training helpers against their references: PrepareDense and
// PrepareNM of the same (transposed where stated) weight give the same
// prepared buffers, and MulAdd is y + Linear's product.

func transposeRef(src []float32, rows, cols int) []float32 {
	dst := make([]float32, rows*cols)
	for r := 0; r < rows; r++ {
		for c := 0; c < cols; c++ {
			dst[c*rows+r] = src[r*cols+c]
		}
	}
	return dst
}

func TestPrepareDenseF32(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var d *Dense
	for _, sh := range [][2]int{{16, 8}, {37, 21}, {37, 21}, {5, 700}, {64, 64}} {
		out, in := sh[0], sh[1]
		w := randF32(rng, out*in)
		ref, err := PrepareDense(DenseWeight{DType: Float32, Out: out, In: in, Data: encode(t, Float32, w)})
		if err != nil {
			t.Fatal(err)
		}
		prev := d
		if d, err = PrepareDenseF32(d, w, out, in, 2); err != nil {
			t.Fatal(err)
		}
		if prev != nil && prev.pan.k == in && prev.pan.n == out && d != prev {
			t.Errorf("[%d, %d]: buffer not reused", out, in)
		}
		if !slices.Equal(d.pan.w.f32, ref.pan.w.f32) || d.pan.dt != ref.pan.dt || d.pan.k != ref.pan.k || d.pan.n != ref.pan.n || d.pan.np != ref.pan.np {
			t.Fatalf("[%d, %d]: panels differ from PrepareDense", out, in)
		}
	}
	if _, err := PrepareDenseF32(nil, make([]float32, 5), 2, 3, 1); err == nil {
		t.Error("wrong length accepted")
	}
}

func TestPrepareDenseKN(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	var d *Dense
	for _, sh := range [][2]int{{16, 8}, {21, 37}, {21, 37}, {700, 5}, {512, 1024}} {
		k, n := sh[0], sh[1]
		for _, threads := range []int{1, 2, 3} {
			b := randF32(rng, k*n)
			ref, err := PrepareDense(DenseWeight{DType: Float32, Out: n, In: k, Data: encode(t, Float32, transposeRef(b, k, n))})
			if err != nil {
				t.Fatal(err)
			}
			if d, err = PrepareDenseKN(d, b, k, n, threads); err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(d.pan.w.f32, ref.pan.w.f32) || d.pan.k != k || d.pan.n != n || d.pan.np != ref.pan.np {
				t.Fatalf("[%d, %d] threads %d: panels differ from PrepareDense of the transpose", k, n, threads)
			}
		}
	}
	if _, err := PrepareDenseKN(nil, make([]float32, 5), 2, 3, 1); err == nil {
		t.Error("wrong length accepted")
	}
}

// TestDenseScratch: one DenseScratch through shapes that grow and shrink
// (and leave stale lanes behind) prepares exactly PrepareDense's panels
// of the weight (PrepareF32) and of the transposed operand (PrepareKN).
func TestDenseScratch(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	var s DenseScratch
	for _, sh := range [][2]int{{64, 37}, {17, 5}, {3, 64}, {40, 33}, {16, 16}, {1, 1}, {100, 70}} {
		out, in := sh[0], sh[1]
		w := randF32(rng, out*in)
		ref, err := PrepareDense(DenseWeight{DType: Float32, Out: out, In: in, Data: encode(t, Float32, w)})
		if err != nil {
			t.Fatal(err)
		}
		d, err := s.PrepareF32(w, out, in)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(d.pan.w.f32, ref.pan.w.f32) || d.pan.k != in || d.pan.n != out || d.pan.np != ref.pan.np {
			t.Fatalf("PrepareF32 [%d, %d]: panels differ from PrepareDense", out, in)
		}
		// The same weight given as its transpose [in, out].
		if d, err = s.PrepareKN(transposeRef(w, out, in), in, out); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(d.pan.w.f32, ref.pan.w.f32) || d.pan.k != in || d.pan.n != out || d.pan.np != ref.pan.np {
			t.Fatalf("PrepareKN [%d, %d]: panels differ from PrepareDense of the transpose", in, out)
		}
	}
	if _, err := s.PrepareF32(make([]float32, 5), 2, 3); err == nil {
		t.Error("PrepareF32: wrong length accepted")
	}
	if _, err := s.PrepareKN(make([]float32, 5), 2, 3); err == nil {
		t.Error("PrepareKN: wrong length accepted")
	}
}

func TestDenseMulAdd(t *testing.T) {
	paths(t, func(t *testing.T) {
		rng := rand.New(rand.NewPCG(5, 6))
		for _, sh := range [][3]int{{1, 7, 5}, {3, 16, 16}, {13, 40, 33}, {64, denseKC, 48}, {50, 300, 100}} {
			m, in, out := sh[0], sh[1], sh[2]
			w := randF32(rng, out*in)
			d, err := PrepareDenseF32(nil, w, out, in, 1)
			if err != nil {
				t.Fatal(err)
			}
			x := randF32(rng, m*in)
			y0 := randF32(rng, m*out)
			prod := make([]float32, m*out)
			if err := d.Linear(prod, x, m, nil, 2); err != nil {
				t.Fatal(err)
			}
			for _, threads := range []int{1, 2} {
				y := slices.Clone(y0)
				if err := d.MulAdd(y, x, m, threads); err != nil {
					t.Fatal(err)
				}
				// K <= denseKC is one K block: exactly y0 + the product.
				for i := range y {
					if want := y0[i] + prod[i]; y[i] != want {
						t.Fatalf("m %d in %d out %d threads %d: y[%d] = %g, want %g", m, in, out, threads, i, y[i], want)
					}
				}
			}
		}
		d, _ := PrepareDenseF32(nil, make([]float32, 6), 2, 3, 1)
		if err := d.MulAdd(make([]float32, 3), make([]float32, 3), 1, 1); err == nil {
			t.Error("wrong y length accepted")
		}
	})
}

func TestSparseSetValuesF32(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	// The AVX-512 gather (where the CPU has it), the AVX2 one with its Go
	// tail, and the Go loop alone.
	paths(t, func(t *testing.T) {
		for _, p := range []format.NM{{N: 2, M: 4}, {N: 1, M: 4}, {N: 2, M: 8}} {
			// 1043 and 520 outputs: more than one 64-panel block of the planned
			// gather, the last one partial; kept not a multiple of 16.
			for _, sh := range [][2]int{{8, 16}, {13, 40}, {64, 256}, {1043, 40}, {520, 104}} {
				out, in := sh[0], sh[1]
				w, _ := randNM(t, rng, p, Float32, out, in)
				s, err := PrepareNM(w)
				if err != nil {
					t.Fatal(err)
				}
				vals := randF32(rng, out*in/p.M*p.N)
				w.Values = encode(t, Float32, vals)
				ref, err := PrepareNM(w)
				if err != nil {
					t.Fatal(err)
				}
				if err := s.SetValuesF32(vals, 2); err != nil {
					t.Fatal(err)
				}
				if !slices.Equal(s.vals.f32, ref.vals.f32) || !slices.Equal(s.idx, ref.idx) {
					t.Fatalf("%s [%d, %d]: differs from PrepareNM", p, out, in)
				}
				// The gathering form: values drawn from a longer slice, some zero.
				pool := randF32(rng, 2*len(vals)+3)
				src := make([]int32, len(vals))
				for i := range src {
					src[i] = int32(rng.IntN(len(pool)+1)) - 1
					if src[i] >= 0 {
						vals[i] = pool[src[i]]
					} else {
						vals[i] = 0
					}
				}
				w.Values = encode(t, Float32, vals)
				if ref, err = PrepareNM(w); err != nil {
					t.Fatal(err)
				}
				// The planned gather (AVX-512 gathers or the Go loop), from
				// poisoned values.
				plan, err := s.PanelGather(src, len(pool))
				if err != nil {
					t.Fatal(err)
				}
				for _, threads := range []int{1, 3} {
					for i := range s.vals.f32 {
						s.vals.f32[i] = float32(math.NaN())
					}
					if err := s.SetValuesPanelGatherF32(pool, plan, threads); err != nil {
						t.Fatal(err)
					}
					if !slices.Equal(s.vals.f32, ref.vals.f32) {
						t.Fatalf("%s [%d, %d] threads %d: planned gather differs from PrepareNM", p, out, in, threads)
					}
				}
				if err := s.SetValuesPanelGatherF32(pool[:len(pool)-1], plan, 1); err == nil {
					t.Error("planned gather from a shorter slice accepted")
				}
				if _, err := s.PanelGather(src, int(slices.Max(src))); err == nil && slices.Max(src) >= 0 {
					t.Error("plan with a source past the values accepted")
				}
				if err := s.SetValuesF32(vals[1:], 1); err == nil {
					t.Error("wrong length accepted")
				}
			}
		}
	})
	w, _ := randNM(t, rng, format.NM{N: 2, M: 4}, BFloat16, 8, 16)
	s, err := PrepareNM(w)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SetValuesF32(make([]float32, 64), 1); err == nil {
		t.Error("bf16 weight accepted")
	}
}

func TestNMWeightGrad(t *testing.T) {
	paths(t, func(t *testing.T) {
		rng := rand.New(rand.NewPCG(9, 10))
		for _, p := range []format.NM{{N: 2, M: 4}, {N: 1, M: 4}, {N: 2, M: 8}, {N: 1, M: 2}} {
			for _, sh := range [][3]int{{1, 5, 8}, {7, 3, 24}, {8, 16, 32}, {13, 9, 40}, {64, 8, 256}, {100, 17, 64}, {600, 6, 48}, {1030, 5, 36}, {40, 300, 64}, {33, 64, 16}} {
				m, out, in := sh[0], sh[1], sh[2]
				if in%p.M != 0 {
					continue
				}
				w, _ := randNM(t, rng, p, Float32, out, in)
				kept := in / p.M * p.N
				idx := make([]uint8, out*kept)
				if err := format.UnpackNMIndices(p, out, in, w.Indices, idx); err != nil {
					t.Fatal(err)
				}
				gy, x := randF32(rng, m*out), randF32(rng, m*in)
				g0 := randF32(rng, out*kept)
				ref := slices.Clone(g0)
				if err := NMWeightGradRef(ref, gy, x, m, p, out, in, idx); err != nil {
					t.Fatal(err)
				}
				// The dense product the trainer used to gather from.
				d, err := PrepareDenseKN(nil, x, m, in, 1)
				if err != nil {
					t.Fatal(err)
				}
				gd := make([]float32, out*in)
				if err := d.Linear(gd, transposeRef(gy, m, out), out, nil, 1); err != nil {
					t.Fatal(err)
				}
				// (The dense GEMM runs GEMVs below gemmMinRows rows of gyᵀ;
				// 2:4 takes the pattern-sorted dot products, not the GEMM's
				// chains.)
				exact := asm512On() && 16%p.N == 0 && 16/p.N*p.M <= 32 && out >= gemmMinRows && p != format.NM{N: 2, M: 4}
				// The bound of checkClose: Σ|gy·x| per kept position, plus |g0|.
				bound := make([]float64, out*kept)
				masked := make([]float32, out*kept)
				for o := 0; o < out; o++ {
					for k := 0; k < kept; k++ {
						c := k/p.N*p.M + int(idx[o*kept+k])
						s := float64(abs32(g0[o*kept+k]))
						for r := 0; r < m; r++ {
							s += float64(abs32(gy[r*out+o] * x[r*in+c]))
						}
						bound[o*kept+k] = s
						masked[o*kept+k] = g0[o*kept+k] + gd[o*in+c]
					}
				}
				var first []float32
				for _, threads := range []int{1, 2, 3} {
					g := slices.Clone(g0)
					if err := NMWeightGrad(g, gy, x, m, p, out, in, w.Indices, threads); err != nil {
						t.Fatal(err)
					}
					what := fmt.Sprintf("%s m %d [%d, %d] threads %d", p, m, out, in, threads)
					checkClose(t, what, g, ref, bound, m+1)
					if exact && !slices.Equal(g, masked) {
						t.Fatalf("%s: not bit-identical to the dense product gathered at the mask", what)
					}
					if first == nil {
						first = g
					} else if !slices.Equal(g, first) {
						t.Fatalf("%s: differs from threads 1", what)
					}
				}
			}
		}
		if err := NMWeightGrad(make([]float32, 4), make([]float32, 2), make([]float32, 8), 1, format.NM{N: 2, M: 4}, 2, 8, make([]byte, 3), 1); err == nil {
			t.Error("wrong index section length accepted")
		}
		// 2:8 packs 3-bit indices, so a packed index can be >= M (and
		// two indices can repeat or be out of order).
		if err := NMWeightGrad(make([]float32, 2), make([]float32, 1), make([]float32, 8), 1, format.NM{N: 2, M: 8}, 1, 8, []byte{0x06}, 1); err == nil {
			t.Error("indices out of order accepted")
		}
	})
}

func abs32(v float32) float32 {
	if v < 0 {
		return -v
	}
	return v
}

func TestTranspose(t *testing.T) {
	paths(t, func(t *testing.T) {
		rng := rand.New(rand.NewPCG(11, 12))
		for _, sh := range [][2]int{{1, 1}, {8, 8}, {7, 13}, {16, 300}, {37, 515}, {512, 256}, {0, 5}} {
			rows, cols := sh[0], sh[1]
			src := randF32(rng, rows*cols)
			ref := transposeRef(src, rows, cols)
			for _, threads := range []int{1, 2, 3} {
				dst := randF32(rng, rows*cols)
				if err := Transpose(dst, src, rows, cols, threads); err != nil {
					t.Fatal(err)
				}
				if !slices.Equal(dst, ref) {
					t.Fatalf("[%d, %d] threads %d: differs from the reference", rows, cols, threads)
				}
			}
		}
		if err := Transpose(make([]float32, 5), make([]float32, 6), 2, 3, 1); err == nil {
			t.Error("wrong dst length accepted")
		}
	})
}

// TestSparseWithValues: an indices-only weight (PrepareNMIndices) has
// PrepareNM's index words; a view of it on a borrowed, poisoned buffer
// refilled by SetValuesF32 computes what the prepared weight does, bit
// for bit (the padding lanes of a partial last panel are cleared too);
// the indices-only weight refuses Linear and refills, and a buffer or an
// index section of the wrong length is refused.
func TestSparseWithValues(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	for _, p := range []format.NM{{N: 2, M: 4}, {N: 1, M: 4}} {
		const out, in, m = 13, 40, 20
		w, _ := randNM(t, rng, p, Float32, out, in)
		vals := make([]float32, len(w.Values)/4) // the kept values
		for i := range vals {
			vals[i] = math.Float32frombits(binary.LittleEndian.Uint32(w.Values[4*i:]))
		}
		full, err := PrepareNM(w)
		if err != nil {
			t.Fatal(err)
		}
		x := randF32(rng, m*in)
		want := make([]float32, m*out)
		if err := full.Linear(want, x, m, nil, 1); err != nil {
			t.Fatal(err)
		}
		s, err := PrepareNMIndices(p, out, in, w.Indices)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(s.idx, full.idx) {
			t.Fatalf("%s: PrepareNMIndices' index words differ from PrepareNM's", p)
		}
		buf := make([]float32, s.ValuesF32Len())
		for i := range buf {
			buf[i] = float32(math.NaN())
		}
		v, err := s.WithValuesF32(buf)
		if err != nil {
			t.Fatal(err)
		}
		if err := v.SetValuesF32(vals, 2); err != nil {
			t.Fatal(err)
		}
		got := make([]float32, m*out)
		if err := v.Linear(got, x, m, nil, 2); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("%s: the view's product differs from the prepared weight's", p)
		}
		if slices.ContainsFunc(buf, func(f float32) bool { return f != f }) {
			t.Fatalf("%s: padding lanes left poisoned", p)
		}
		if err := s.Linear(got, x, m, nil, 1); err == nil {
			t.Errorf("%s: Linear on an indices-only weight accepted", p)
		}
		if err := s.SetValuesF32(vals, 1); err == nil {
			t.Errorf("%s: refill of an indices-only weight accepted", p)
		}
		if _, err := s.WithValuesF32(buf[1:]); err == nil {
			t.Errorf("%s: short buffer accepted", p)
		}
		if _, err := PrepareNMIndices(p, out, in, w.Indices[1:]); err == nil {
			t.Errorf("%s: short index section accepted", p)
		}
	}
}

// TestDensePrefixOut: a product through PrefixOut(n) gives, bit for bit,
// what PrepareDense of the first n output rows gives (GEMV and GEMM row
// counts, n on and off a panel boundary, float32 and bf16 weights), and
// bad n is refused.
func TestDensePrefixOut(t *testing.T) {
	paths(t, func(t *testing.T) {
		rng := rand.New(rand.NewPCG(9, 10))
		for _, dt := range []DType{Float32, BFloat16} {
			const out, in = 75, 40
			w := randF32(rng, out*in)
			full, err := PrepareDense(DenseWeight{DType: dt, Out: out, In: in, Data: encode(t, dt, w)})
			if err != nil {
				t.Fatal(err)
			}
			for _, n := range []int{1, 15, 16, 17, 48, 63, 75} {
				ref, err := PrepareDense(DenseWeight{DType: dt, Out: n, In: in, Data: encode(t, dt, w[:n*in])})
				if err != nil {
					t.Fatal(err)
				}
				view, err := full.PrefixOut(n)
				if err != nil {
					t.Fatal(err)
				}
				for _, m := range []int{1, 3, 7, 20} {
					x := randF32(rng, m*in)
					want, got := make([]float32, m*n), make([]float32, m*n)
					if err := ref.Linear(want, x, m, nil, 2); err != nil {
						t.Fatal(err)
					}
					if err := view.Linear(got, x, m, nil, 2); err != nil {
						t.Fatal(err)
					}
					for i := range want {
						if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
							t.Fatalf("%v n=%d m=%d: output %d = %v, want %v", dt, n, m, i, got[i], want[i])
						}
					}
				}
			}
			for _, n := range []int{0, out + 1} {
				if _, err := full.PrefixOut(n); err == nil {
					t.Errorf("PrefixOut(%d) of %d outputs accepted", n, out)
				}
			}
		}
	})
}
