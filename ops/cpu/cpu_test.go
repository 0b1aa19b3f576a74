package cpu

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
	"strings"
	"testing"

	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/format/slopepb"
)

var dtypes = []DType{Float32, BFloat16, Float16}

// paths runs f once per kernel path this machine has: the assembly kernels
// with the AVX-512 sparse GEMM (when the CPU has AVX-512F), the AVX2+FMA
// assembly alone, and the portable Go kernels, which useAsm = false
// forces. Tests that flip these switches must not run in parallel.
func paths(t *testing.T, f func(t *testing.T)) {
	t.Helper()
	type path struct {
		name     string
		asm, z   bool
		possible bool
	}
	all := []path{
		{"avx512", true, true, haveAVX512},
		{"avx2", true, false, haveAVX2FMA},
		{"go", false, false, true},
	}
	defer func() { useAsm, useAVX512 = true, true }()
	for _, p := range all {
		if !p.possible {
			t.Logf("%s: not supported by this CPU, skipped", p.name)
			continue
		}
		useAsm, useAVX512 = p.asm, p.z
		t.Run(p.name, f)
	}
}

func randF32(rng *rand.Rand, n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(rng.Float64()*2 - 1)
	}
	return v
}

func encode(t testing.TB, dt DType, v []float32) []byte {
	t.Helper()
	esz := 4
	if dt != Float32 {
		esz = 2
	}
	b := make([]byte, len(v)*esz)
	if err := format.EncodeFloats(dt, v, b); err != nil {
		t.Fatal(err)
	}
	return b
}

func decode(t testing.TB, dt DType, b []byte, n int) []float32 {
	t.Helper()
	v := make([]float32, n)
	if err := format.DecodeFloats(dt, b, v); err != nil {
		t.Fatal(err)
	}
	return v
}

func randDense(t testing.TB, rng *rand.Rand, dt DType, out, in int) DenseWeight {
	return DenseWeight{DType: dt, Out: out, In: in, Data: encode(t, dt, randF32(rng, out*in))}
}

// randNM returns a random N:M weight and its dense float32 expansion.
func randNM(t testing.TB, rng *rand.Rand, p format.NM, dt DType, out, in int) (NMWeight, []float32) {
	t.Helper()
	kept := in / p.M * p.N
	idx := make([]uint8, out*kept)
	perm := make([]int, p.M)
	for g := 0; g < out*in/p.M; g++ {
		for i := range perm {
			perm[i] = i
		}
		rng.Shuffle(p.M, func(i, j int) { perm[i], perm[j] = perm[j], perm[i] })
		sel := append([]int(nil), perm[:p.N]...)
		sort.Ints(sel)
		for s, v := range sel {
			idx[g*p.N+s] = uint8(v)
		}
	}
	rb, err := p.IndexRowBytes(in)
	if err != nil {
		t.Fatal(err)
	}
	packed := make([]byte, out*rb)
	if err := format.PackNMIndices(p, out, in, idx, packed); err != nil {
		t.Fatal(err)
	}
	vals := randF32(rng, out*kept)
	w := NMWeight{Pattern: p, DType: dt, Out: out, In: in, Values: encode(t, dt, vals), Indices: packed}
	dense := make([]float32, out*in)
	if err := format.ExpandNM(p, out, in, decode(t, dt, w.Values, out*kept), idx, dense); err != nil {
		t.Fatal(err)
	}
	return w, dense
}

// unitRound is the float32 unit roundoff.
const unitRound = 0x1p-24

// checkClose compares y with the float64 reference ref. Each output is a
// sum of `terms` float32 products accumulated in float32 (FMA chains,
// pairwise combination of partial sums, a K-block add and the bias add),
// so its error is at most about (terms+depthSlack)·u·Σ|x_k·w_k| + |bias|·u
// (the standard bound γ_n·Σ|a_i| for any summation order, u = 2^-24);
// bound holds Σ|x·w| + |bias| per output. The reference itself is exact
// to float64 and rounded once (≤ u·|ref|).
func checkClose(t *testing.T, what string, y, ref []float32, bound []float64, terms int) {
	t.Helper()
	const depthSlack = 8
	bad := 0
	for i := range y {
		tol := float64(terms+depthSlack)*unitRound*bound[i] + unitRound*math.Abs(float64(ref[i])) + 1e-30
		if d := math.Abs(float64(y[i]) - float64(ref[i])); !(d <= tol) {
			if bad < 5 {
				t.Errorf("%s: element %d: got %g, want %g (|diff| %.3g > tol %.3g)", what, i, y[i], ref[i], d, tol)
			}
			bad++
		}
	}
	if bad > 0 {
		t.Errorf("%s: %d of %d elements out of tolerance", what, bad, len(y))
	}
}

// absBound returns Σ_k |x[i,k]·w[o,k]| + |bias[o]| for a dense [out, in] w.
func absBound(x []float32, m int, w []float32, out, in int, bias []float32) []float64 {
	b := make([]float64, m*out)
	for i := 0; i < m; i++ {
		for o := 0; o < out; o++ {
			var s float64
			for k := 0; k < in; k++ {
				s += math.Abs(float64(x[i*in+k]) * float64(w[o*in+k]))
			}
			if bias != nil {
				s += math.Abs(float64(bias[o]))
			}
			b[i*out+o] = s
		}
	}
	return b
}

var testRows = []int{1, 2, 3, 7, 17, 64}

func TestDenseLinearVsRef(t *testing.T) {
	shapes := [][2]int{{1, 1}, {5, 3}, {16, 16}, {17, 33}, {40, 100}, {33, 530}, {70, 1100}}
	paths(t, func(t *testing.T) {
		rng := rand.New(rand.NewPCG(1, 2))
		for _, dt := range dtypes {
			for _, sh := range shapes {
				out, in := sh[0], sh[1]
				w := randDense(t, rng, dt, out, in)
				d, err := PrepareDense(w)
				if err != nil {
					t.Fatal(err)
				}
				wf := decode(t, dt, w.Data, out*in)
				for _, m := range testRows {
					if m*out*in > 2_000_000 {
						continue
					}
					x := randF32(rng, m*in)
					var bias []float32
					if m%2 == 1 {
						bias = randF32(rng, out)
					}
					y := make([]float32, m*out)
					ref := make([]float32, m*out)
					for i := range y {
						y[i] = float32(math.NaN()) // must be overwritten
					}
					if err := d.Linear(y, x, m, bias, 0); err != nil {
						t.Fatal(err)
					}
					if err := LinearDenseRef(ref, x, m, w, bias); err != nil {
						t.Fatal(err)
					}
					checkClose(t, fmt.Sprintf("%s [%d,%d] m=%d", dt, out, in, m), y, ref,
						absBound(x, m, wf, out, in, bias), in)
				}
			}
		}
	})
}

// TestDenseRowBlocks: a product whose A operand exceeds gemmStreamA runs
// the row-blocked loop order; it must give the bits of the same rows in
// calls small enough for the plain order (each element's FMA chains are
// the same), on every dtype, a partial last panel, two K blocks, a bias
// and a last row block and tile that are not full, and stay within
// rounding of the float64 reference.
func TestDenseRowBlocks(t *testing.T) {
	const out, in = 37, denseKC + 88
	m := gemmStreamA/(4*in) + gemmMC + 7 // A just over gemmStreamA
	if m*in*4 <= gemmStreamA || m%gemmMC == 0 || m%gemmMR == 0 {
		t.Fatalf("m = %d does not reach the blocked path's edges", m)
	}
	paths(t, func(t *testing.T) {
		rng := rand.New(rand.NewPCG(7, 8))
		x, bias := randF32(rng, m*in), randF32(rng, out)
		for _, dt := range dtypes {
			w := randDense(t, rng, dt, out, in)
			d, err := PrepareDense(w)
			if err != nil {
				t.Fatal(err)
			}
			var y []float32 // the last one, 2 threads
			for _, threads := range []int{1, 2} {
				y = make([]float32, m*out)
				if err := d.Linear(y, x, m, bias, threads); err != nil {
					t.Fatal(err)
				}
				// The same rows in calls of 100 rows: A below gemmStreamA.
				want := make([]float32, m*out)
				for r := 0; r < m; r += 100 {
					n := min(100, m-r)
					if err := d.Linear(want[r*out:(r+n)*out], x[r*in:(r+n)*in], n, bias, 1); err != nil {
						t.Fatal(err)
					}
				}
				for i := range y {
					if math.Float32bits(y[i]) != math.Float32bits(want[i]) {
						t.Fatalf("%s threads %d: y[%d] = %g, row-chunked calls give %g", dt, threads, i, y[i], want[i])
					}
				}
			}
			// Against the reference on the first and last rows.
			wf := decode(t, dt, w.Data, out*in)
			for _, r := range []int{0, m - 1} {
				ref := make([]float32, out)
				xr := x[r*in : (r+1)*in]
				if err := LinearDenseRef(ref, xr, 1, w, bias); err != nil {
					t.Fatal(err)
				}
				checkClose(t, fmt.Sprintf("%s row %d", dt, r), y[r*out:(r+1)*out], ref, absBound(xr, 1, wf, out, in, bias), in)
			}
		}
	})
}

// TestNMAllPatterns runs every valid pattern (120) with every dtype on
// small shapes, through the GEMV (m < 4) and GEMM (m >= 4, two row
// blocks for m = 40) paths.
func TestNMAllPatterns(t *testing.T) {
	paths(t, func(t *testing.T) {
		rng := rand.New(rand.NewPCG(3, 4))
		count := 0
		for mm := 2; mm <= 16; mm++ {
			for n := 1; n < mm; n++ {
				p := format.NM{N: n, M: mm}
				count++
				for _, dt := range dtypes {
					out, in := 13, mm*5
					w, wd := randNM(t, rng, p, dt, out, in)
					s, err := PrepareNM(w)
					if err != nil {
						t.Fatal(err)
					}
					for _, m := range []int{1, 3, 7, 40} {
						x := randF32(rng, m*in)
						bias := randF32(rng, out)
						y := make([]float32, m*out)
						ref := make([]float32, m*out)
						if err := s.Linear(y, x, m, bias, 2); err != nil {
							t.Fatal(err)
						}
						if err := LinearNMRef(ref, x, m, w, bias); err != nil {
							t.Fatal(err)
						}
						checkClose(t, fmt.Sprintf("%s %s m=%d", p, dt, m), y, ref,
							absBound(x, m, wd, out, in, bias), in/mm*n)
					}
				}
			}
		}
		if count != 120 {
			t.Fatalf("tested %d patterns, want 120", count)
		}
	})
}

// TestNMLinearPanelGroups: the AVX2 sparse GEMM's groups of panels
// expanded together (16, or fewer when a panel's expanded steps are
// large), full and ragged, on 1 and 3 threads whatever GOMAXPROCS is:
// 404 outputs (51 panels: 16+16+16+3 on one thread, 16+1 per thread on
// three) and, at In = 8192 (4096 kept values per output: groups of 8),
// 140 outputs (18 panels).
func TestNMLinearPanelGroups(t *testing.T) {
	paths(t, func(t *testing.T) {
		rng := rand.New(rand.NewPCG(7, 8))
		p := format.NM{N: 2, M: 4}
		for _, dt := range []DType{Float32, BFloat16} {
			for _, sh := range [][2]int{{404, 160}, {140, 8192}} {
				out, in := sh[0], sh[1]
				w, wd := randNM(t, rng, p, dt, out, in)
				s, err := PrepareNM(w)
				if err != nil {
					t.Fatal(err)
				}
				const m = 40
				x, bias := randF32(rng, m*in), randF32(rng, out)
				ref := make([]float32, m*out)
				if err := LinearNMRef(ref, x, m, w, bias); err != nil {
					t.Fatal(err)
				}
				for _, threads := range []int{1, 3} {
					y := make([]float32, m*out)
					if err := s.Linear(y, x, m, bias, threads); err != nil {
						t.Fatal(err)
					}
					checkClose(t, fmt.Sprintf("%s [%d,%d] threads %d", dt, out, in, threads), y, ref,
						absBound(x, m, wd, out, in, bias), in/2)
				}
			}
		}
	})
}

// TestNMLinearVsRef covers the common patterns on ragged shapes: Out not a
// multiple of the 8-lane panel or the 3-output micro-kernel, group counts
// not a multiple of the 4-group unroll, m across the 32-row blocks.
func TestNMLinearVsRef(t *testing.T) {
	patterns := []format.NM{{N: 2, M: 4}, {N: 1, M: 2}, {N: 2, M: 8}, {N: 4, M: 8}, {N: 3, M: 8}, {N: 5, M: 16}}
	// {20, 300}: several K chunks of the sparse GEMM; m = 130: several
	// row blocks (32 or 64 rows) with a ragged last one.
	shapes := [][2]int{{1, 1}, {9, 3}, {50, 37}, {130, 64}, {20, 300}}
	paths(t, func(t *testing.T) {
		rng := rand.New(rand.NewPCG(5, 6))
		for _, p := range patterns {
			for _, dt := range dtypes {
				for _, sh := range shapes {
					out, in := sh[0], sh[1]*p.M
					w, wd := randNM(t, rng, p, dt, out, in)
					s, err := PrepareNM(w)
					if err != nil {
						t.Fatal(err)
					}
					for _, m := range append(testRows, 130) {
						if m*out*in > 7_000_000 {
							continue
						}
						x := randF32(rng, m*in)
						var bias []float32
						if m%2 == 0 {
							bias = randF32(rng, out)
						}
						y := make([]float32, m*out)
						ref := make([]float32, m*out)
						if err := s.Linear(y, x, m, bias, 0); err != nil {
							t.Fatal(err)
						}
						if err := LinearNMRef(ref, x, m, w, bias); err != nil {
							t.Fatal(err)
						}
						checkClose(t, fmt.Sprintf("%s %s [%d,%d] m=%d", p, dt, out, in, m), y, ref,
							absBound(x, m, wd, out, in, bias), in/p.M*p.N)
						// LinearAdd: y0 + x·Wᵀ.
						y0 := randF32(rng, m*out)
						ya := append([]float32(nil), y0...)
						if err := s.LinearAdd(ya, x, m, 0); err != nil {
							t.Fatal(err)
						}
						if err := LinearNMRef(ref, x, m, w, nil); err != nil {
							t.Fatal(err)
						}
						bound := absBound(x, m, wd, out, in, nil)
						for i := range ref {
							ref[i] += y0[i]
							bound[i] += math.Abs(float64(y0[i]))
						}
						checkClose(t, fmt.Sprintf("LinearAdd %s %s [%d,%d] m=%d", p, dt, out, in, m), ya, ref, bound, in/p.M*p.N+1)
					}
				}
			}
		}
	})
}

func TestLowRankAddVsRef(t *testing.T) {
	shapes := [][3]int{{1, 1, 1}, {5, 7, 3}, {40, 33, 16}, {100, 70, 17}}
	paths(t, func(t *testing.T) {
		rng := rand.New(rand.NewPCG(7, 8))
		for _, sh := range shapes {
			in, out, r := sh[0], sh[1], sh[2]
			l, rr := randF32(rng, in*r), randF32(rng, r*out)
			for _, m := range testRows {
				x := randF32(rng, m*in)
				y0 := randF32(rng, m*out)
				y, ref := append([]float32(nil), y0...), append([]float32(nil), y0...)
				const scale = 0.75
				if err := LowRankAdd(y, x, m, in, out, r, l, rr, scale, 0); err != nil {
					t.Fatal(err)
				}
				if err := LowRankAddRef(ref, x, m, in, out, r, l, rr, scale); err != nil {
					t.Fatal(err)
				}
				// The prepared form runs the same kernels: bit-identical.
				a, err := PrepareLowRank(in, out, r, l, rr)
				if err != nil {
					t.Fatal(err)
				}
				yp := append([]float32(nil), y0...)
				if err := a.Add(yp, x, m, scale, 1); err != nil {
					t.Fatal(err)
				}
				for i := range yp {
					if math.Float32bits(yp[i]) != math.Float32bits(y[i]) {
						t.Fatalf("prepared low-rank m=%d: element %d = %g, LowRankAdd %g", m, i, yp[i], y[i])
					}
				}
				// Bound: |y0| + |scale|·Σ_j (Σ_k |x·L|)·|R| over in + r terms.
				bound := make([]float64, m*out)
				for i := 0; i < m; i++ {
					tb := make([]float64, r)
					for j := range tb {
						for k := 0; k < in; k++ {
							tb[j] += math.Abs(float64(x[i*in+k]) * float64(l[k*r+j]))
						}
					}
					for o := 0; o < out; o++ {
						s := 0.0
						for j := range tb {
							s += tb[j] * math.Abs(float64(rr[j*out+o]))
						}
						bound[i*out+o] = math.Abs(float64(y0[i*out+o])) + scale*s
					}
				}
				checkClose(t, fmt.Sprintf("lowrank in=%d out=%d r=%d m=%d", in, out, r, m), y, ref, bound, in+r+2)
			}
		}
	})
}

// TestThreadsDeterministic checks bit-identical results for every thread
// count, including splits over rows (fewer panels than goroutines).
func TestThreadsDeterministic(t *testing.T) {
	paths(t, func(t *testing.T) {
		rng := rand.New(rand.NewPCG(9, 10))
		type run func(y, x []float32, m, threads int) error
		cases := []struct {
			name    string
			in, out int
			f       run
		}{}
		for _, dt := range dtypes {
			for _, sh := range [][2]int{{20, 600}, {100, 96}} {
				w := randDense(t, rng, dt, sh[0], sh[1])
				d, err := PrepareDense(w)
				if err != nil {
					t.Fatal(err)
				}
				bias := randF32(rng, sh[0])
				cases = append(cases, struct {
					name    string
					in, out int
					f       run
				}{fmt.Sprintf("dense %s %v", dt, sh), sh[1], sh[0], func(y, x []float32, m, th int) error {
					return d.Linear(y, x, m, bias, th)
				}})
			}
			for _, sh := range [][2]int{{8, 64}, {45, 96}} {
				w, _ := randNM(t, rng, format.NM{N: 2, M: 4}, dt, sh[0], sh[1])
				s, err := PrepareNM(w)
				if err != nil {
					t.Fatal(err)
				}
				cases = append(cases, struct {
					name    string
					in, out int
					f       run
				}{fmt.Sprintf("nm %s %v", dt, sh), sh[1], sh[0], func(y, x []float32, m, th int) error {
					return s.Linear(y, x, m, nil, th)
				}})
			}
		}
		l, r := randF32(rng, 50*7), randF32(rng, 7*40)
		cases = append(cases, struct {
			name    string
			in, out int
			f       run
		}{"lowrank", 50, 40, func(y, x []float32, m, th int) error {
			clear(y)
			return LowRankAdd(y, x, m, 50, 40, 7, l, r, 0.5, th)
		}})
		for _, c := range cases {
			for _, m := range []int{1, 3, 17, 100} {
				x := randF32(rng, m*c.in)
				want := make([]float32, m*c.out)
				if err := c.f(want, x, m, 1); err != nil {
					t.Fatal(err)
				}
				for _, th := range []int{2, 3, 5, 8} {
					got := make([]float32, m*c.out)
					if err := c.f(got, x, m, th); err != nil {
						t.Fatal(err)
					}
					for i := range got {
						if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
							t.Fatalf("%s m=%d threads=%d: element %d = %g, single-thread %g", c.name, m, th, i, got[i], want[i])
						}
					}
				}
			}
		}
	})
}

func TestErrors(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	w := randDense(t, rng, Float32, 4, 8)
	d, err := PrepareDense(w)
	if err != nil {
		t.Fatal(err)
	}
	nm, _ := randNM(t, rng, format.NM{N: 2, M: 4}, BFloat16, 4, 8)
	s, err := PrepareNM(nm)
	if err != nil {
		t.Fatal(err)
	}
	x, y, bias := make([]float32, 2*8), make([]float32, 2*4), make([]float32, 4)

	badIdx := nm
	badIdx.Indices = append([]byte(nil), nm.Indices...)
	badIdx.Indices[0] = 0x05 // group 0: indices 1, 1: not increasing

	cases := []struct {
		name    string
		err     error
		wantErr error
	}{
		{"dense dtype", func() error {
			_, err := PrepareDense(DenseWeight{DType: slopepb.DType_INT8, Out: 4, In: 8, Data: w.Data})
			return err
		}(), format.ErrShape},
		{"dense data length", func() error {
			_, err := PrepareDense(DenseWeight{DType: Float32, Out: 4, In: 8, Data: w.Data[1:]})
			return err
		}(), format.ErrShape},
		{"dense zero dims", func() error { _, err := PrepareDense(DenseWeight{DType: Float32}); return err }(), format.ErrShape},
		{"nm values length", func() error {
			b := nm
			b.Values = b.Values[2:]
			_, err := PrepareNM(b)
			return err
		}(), format.ErrShape},
		{"nm indices length", func() error {
			b := nm
			b.Indices = append(b.Indices, 0)
			_, err := PrepareNM(b)
			return err
		}(), format.ErrShape},
		{"nm in not multiple of M", func() error {
			b := nm
			b.In = 6
			_, err := PrepareNM(b)
			return err
		}(), format.ErrShape},
		{"nm bad pattern", func() error {
			b := nm
			b.Pattern = format.NM{N: 4, M: 4}
			_, err := PrepareNM(b)
			return err
		}(), format.ErrPattern},
		{"nm bad index", func() error { _, err := PrepareNM(badIdx); return err }(), format.ErrIndex},
		{"ref bad index", LinearNMRef(y, x, 2, badIdx, nil), format.ErrIndex},
		{"x length", d.Linear(y, x[1:], 2, nil, 0), format.ErrShape},
		{"y length", d.Linear(y[:7], x, 2, nil, 0), format.ErrShape},
		{"bias length", d.Linear(y, x, 2, bias[:3], 0), format.ErrShape},
		{"negative m", d.Linear(nil, nil, -1, nil, 0), format.ErrShape},
		{"sparse x length", s.Linear(y, x[:15], 2, nil, 0), format.ErrShape},
		{"sparse bias length", s.Linear(y, x, 2, make([]float32, 5), 0), format.ErrShape},
		{"dense ref y", LinearDenseRef(y[:1], x, 2, w, nil), format.ErrShape},
		{"nm ref x", LinearNMRef(y, x[:3], 2, nm, nil), format.ErrShape},
		{"lowrank L", LowRankAdd(y, x, 2, 8, 4, 2, make([]float32, 15), make([]float32, 8), 1, 0), format.ErrShape},
		{"lowrank R", LowRankAdd(y, x, 2, 8, 4, 2, make([]float32, 16), make([]float32, 9), 1, 0), format.ErrShape},
		{"lowrank r=0", LowRankAdd(y, x, 2, 8, 4, 0, nil, nil, 1, 0), format.ErrShape},
		{"prepare lowrank L", func() error {
			_, err := PrepareLowRank(8, 4, 2, make([]float32, 17), make([]float32, 8))
			return err
		}(), format.ErrShape},
		{"lowrank add y", func() error {
			a, err := PrepareLowRank(8, 4, 2, make([]float32, 16), make([]float32, 8))
			if err != nil {
				return err
			}
			return a.Add(y[:5], x, 2, 1, 0)
		}(), format.ErrShape},
		{"lowrank ref y", LowRankAddRef(y[:3], x, 2, 8, 4, 2, make([]float32, 16), make([]float32, 8), 1), format.ErrShape},
	}
	for _, c := range cases {
		if c.err == nil || !errors.Is(c.err, c.wantErr) {
			t.Errorf("%s: got %v, want an error wrapping %v", c.name, c.err, c.wantErr)
		} else {
			t.Logf("%s: %v", c.name, c.err)
		}
	}
	var nd *Dense
	if err := nd.Linear(y, x, 2, nil, 0); err == nil {
		t.Error("nil *Dense: no error")
	}
	// m = 0 is a no-op.
	if err := d.Linear(nil, nil, 0, nil, 0); err != nil {
		t.Errorf("m = 0: %v", err)
	}
	if err := s.Linear(nil, nil, 0, nil, 0); err != nil {
		t.Errorf("m = 0: %v", err)
	}
}

// TestPreparedBytes documents the prepared memory against the raw form.
func TestPreparedBytes(t *testing.T) {
	rng := rand.New(rand.NewPCG(13, 14))
	nm, _ := randNM(t, rng, format.NM{N: 2, M: 4}, BFloat16, 768, 768)
	s, err := PrepareNM(nm)
	if err != nil {
		t.Fatal(err)
	}
	// 2:4: values plus 2 bits per kept value, exactly the raw size.
	raw := len(nm.Values) + len(nm.Indices)
	if s.Bytes() != raw {
		t.Errorf("2:4 bf16 768x768: prepared %d bytes, raw %d", s.Bytes(), raw)
	}
	// Other patterns: 4 index bits per kept value (2:8 raw: 3).
	nm, _ = randNM(t, rng, format.NM{N: 2, M: 8}, BFloat16, 768, 768)
	if s, err = PrepareNM(nm); err != nil {
		t.Fatal(err)
	}
	raw = len(nm.Values) + len(nm.Indices)
	if want := 768 * 192 * 5 / 2; s.Bytes() != want {
		t.Errorf("2:8 bf16 768x768: prepared %d bytes, want %d", s.Bytes(), want)
	}
	t.Logf("2:8 bf16 768x768: raw %d bytes, prepared %d (%.3fx)", raw, s.Bytes(), float64(s.Bytes())/float64(raw))
	d, err := PrepareDense(randDense(t, rng, BFloat16, 50, 10))
	if err != nil {
		t.Fatal(err)
	}
	if d.Bytes() != 64*10*2 {
		t.Errorf("dense bf16 [50,10]: prepared %d bytes, want %d", d.Bytes(), 64*10*2)
	}
}

// TestKernels: the report names the kernel set that dispatch picks, on
// every path this machine has, and with the assembly allowed on a build
// or CPU without it.
func TestKernels(t *testing.T) {
	want := map[string]string{"avx512": "AVX-512", "avx2": "AVX2+FMA (no AVX-512)", "go": "portable Go (assembly disabled)"}
	paths(t, func(t *testing.T) {
		path := t.Name()[strings.LastIndex(t.Name(), "/")+1:]
		if got := Kernels(); got != want[path] {
			t.Errorf("Kernels() = %q, want %q", got, want[path])
		}
	})
	switch {
	case !haveAsmBuild:
		if got := Kernels(); got != "portable Go (no assembly for this build)" {
			t.Errorf("without the assembly built: %q", got)
		}
	case !haveAVX2FMA:
		if got := Kernels(); got != "portable Go (the CPU lacks AVX2 or FMA)" {
			t.Errorf("on a CPU without AVX2 and FMA: %q", got)
		}
	}
}
