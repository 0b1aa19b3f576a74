package blaslt

import (
	"fmt"
	"github.com/slopeml/slope/cuda/gputest"
	"math"
	"math/rand/v2"
	"testing"
	"unsafe"

	"github.com/slopeml/slope/cuda/driver"
	"github.com/slopeml/slope/format"
)

// openGPU opens GPU 0 and a blaslt Handle on it. Without a GPU the test
// fails when SLOPE_REQUIRE_GPU=1 and is skipped, saying so, otherwise.
func openGPU(t *testing.T) (*driver.Device, *Handle) {
	t.Helper()
	d, err := driver.Open(0)
	if err == nil {
		var h *Handle
		err = d.Do(func() error {
			var e error
			h, e = New(d)
			return e
		})
		if err == nil {
			t.Cleanup(func() {
				if err := d.Do(h.Destroy); err != nil {
					t.Errorf("Destroy: %v", err)
				}
				d.Close()
			})
			v, _ := Version()
			t.Logf("%s; cuBLASLt %d (%s)", d.Info, v, Library())
			return d, h
		}
		d.Close()
	}
	gputest.Unavailable(t, err, driver.ErrNoDevice)
	return nil, nil
}

// upload rounds vals to dt in place and copies them to a new device buffer.
func upload(d *driver.Device, vals []float64, dt DType) (driver.Ptr, error) {
	var raw []byte
	switch dt {
	case F32:
		buf := make([]float32, len(vals))
		for i, v := range vals {
			buf[i] = float32(v)
			vals[i] = float64(buf[i])
		}
		raw = unsafe.Slice((*byte)(unsafe.Pointer(&buf[0])), 4*len(buf))
	case BF16:
		buf := make([]uint16, len(vals))
		for i, v := range vals {
			buf[i] = format.Float32ToBFloat16(float32(v))
			vals[i] = float64(format.BFloat16ToFloat32(buf[i]))
		}
		raw = unsafe.Slice((*byte)(unsafe.Pointer(&buf[0])), 2*len(buf))
	default:
		return 0, fmt.Errorf("upload: dtype %s", dt)
	}
	p, err := d.Alloc(len(raw))
	if err != nil {
		return 0, err
	}
	return p, d.CopyIn(p, unsafe.Pointer(&raw[0]), len(raw))
}

func download(d *driver.Device, p driver.Ptr, n int, dt DType) ([]float64, error) {
	out := make([]float64, n)
	switch dt {
	case F32:
		buf := make([]float32, n)
		if err := d.CopyOut(unsafe.Pointer(&buf[0]), p, 4*n); err != nil {
			return nil, err
		}
		for i, v := range buf {
			out[i] = float64(v)
		}
	case BF16:
		buf := make([]uint16, n)
		if err := d.CopyOut(unsafe.Pointer(&buf[0]), p, 2*n); err != nil {
			return nil, err
		}
		for i, v := range buf {
			out[i] = float64(format.BFloat16ToFloat32(v))
		}
	}
	return out, nil
}

// relL2 returns ‖got−want‖₂/‖want‖₂ over the elements mask selects.
func relL2(got, want []float64, mask func(i int) bool) float64 {
	var num, den float64
	for i := range want {
		if mask != nil && !mask(i) {
			continue
		}
		e := got[i] - want[i]
		if math.IsNaN(got[i]) {
			return math.Inf(1)
		}
		num += e * e
		den += want[i] * want[i]
	}
	return math.Sqrt(num / math.Max(den, 1e-300))
}

// runGemm fills the operands of g (shape fields set, pointers not) with
// random values, runs it on the GPU over a poisoned (or, when g.Beta != 0,
// random) D, and returns the relative L2 error against rowGemm in
// float64 on the same rounded inputs, over the elements g writes.
func runGemm(t *testing.T, d *driver.Device, h *Handle, g *Gemm, seed uint64) float64 {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, 7))
	b := max(g.Batch, 1)
	bRows, bCols := g.K, g.N
	if g.TransB {
		bRows, bCols = g.N, g.K
	}
	na := extent(g.M, g.LdA, g.K, g.StrideA, b)
	if g.TransA {
		na = extent(g.K, g.LdA, g.M, g.StrideA, b)
	}
	nb := extent(bRows, g.LdB, bCols, g.StrideB, b)
	nd := extent(g.M, g.LdD, g.N, g.StrideD, b)
	rnd := func(n int) []float64 {
		v := make([]float64, n)
		for i := range v {
			v[i] = r.Float64()*2 - 1
		}
		return v
	}
	av, bv, dv := rnd(na), rnd(nb), rnd(nd)
	written := make([]bool, nd)
	for bi := 0; bi < b; bi++ {
		for i := 0; i < g.M; i++ {
			for j := 0; j < g.N; j++ {
				written[int64(bi)*g.StrideD+int64(i*g.LdD+j)] = true
			}
		}
	}
	var got []float64
	err := d.Do(func() error {
		var err error
		if g.A, err = upload(d, av, g.AB); err != nil {
			return err
		}
		defer d.Free(g.A)
		if g.B, err = upload(d, bv, g.AB); err != nil {
			return err
		}
		defer d.Free(g.B)
		if g.D, err = upload(d, dv, g.Out); err != nil {
			return err
		}
		defer d.Free(g.D)
		if g.Beta == 0 {
			if err := d.Memset8(g.D, 0xFF, nd*g.Out.Size()); err != nil {
				return err
			}
		}
		if err := h.Run(0, g); err != nil {
			return err
		}
		if err := d.Synchronize(); err != nil {
			return err
		}
		got, err = download(d, g.D, nd, g.Out)
		return err
	})
	if err != nil {
		t.Fatalf("%s: %v", g.shape(), err)
	}
	want := append([]float64(nil), dv...)
	rowGemm(g, av, bv, want)
	// Elements D does not cover must be left alone (checked when not poisoned).
	if g.Beta != 0 {
		for i := range dv {
			if !written[i] && got[i] != dv[i] {
				t.Fatalf("%s: element %d outside D changed", g.shape(), i)
			}
		}
	}
	return relL2(got, want, func(i int) bool { return written[i] })
}

func TestGPUGemmF32(t *testing.T) {
	d, h := openGPU(t)
	for _, c := range []struct{ m, n, k int }{{37, 53, 61}, {128, 256, 512}, {1, 4096, 1024}} {
		for _, tb := range []bool{false, true} {
			for _, beta := range []float32{0, 0.5} {
				g := &Gemm{M: c.m, N: c.n, K: c.k, LdA: c.k, LdD: c.n, TransB: tb, Alpha: 1, Beta: beta, AB: F32, Out: F32}
				g.LdB = c.n
				if tb {
					g.LdB = c.k
				}
				e := runGemm(t, d, h, g, uint64(c.m*c.n))
				t.Logf("%s beta=%g: rel L2 %.3g", g.shape(), beta, e)
				if e > 1e-5 {
					t.Errorf("%s beta=%g: rel L2 %.3g > 1e-5", g.shape(), beta, e)
				}
			}
		}
	}
	if h.Plans() == 0 {
		t.Error("no plan cached")
	}
}

// TestGPUGemmBF16: bf16 inputs, f32 and bf16 outputs, with and without
// Bᵀ, and with Aᵀ (A stored [K,M]: the weight-gradient form
// dW[out,in] = dYᵀ·X, at its own shape).
func TestGPUGemmBF16(t *testing.T) {
	d, h := openGPU(t)
	for _, ta := range []bool{false, true} {
		for _, out := range []DType{BF16, F32} {
			for _, tb := range []bool{false, true} {
				g := &Gemm{M: 96, N: 320, K: 448, LdA: 448, LdD: 320, TransB: tb, Alpha: 1, AB: BF16, Out: out}
				seed := uint64(3)
				if ta {
					g = &Gemm{M: 160, N: 96, K: 2048, LdA: 160, LdD: 96, TransA: true, TransB: tb, Alpha: 1, AB: BF16, Out: out}
					seed = 5
				}
				g.LdB = g.N
				if tb {
					g.LdB = g.K
				}
				e := runGemm(t, d, h, g, seed)
				t.Logf("%s: rel L2 %.3g", g.shape(), e)
				if e > 1e-2 {
					t.Errorf("%s: rel L2 %.3g > 1e-2", g.shape(), e)
				}
			}
		}
	}
}

func TestGPUGemmBatched(t *testing.T) {
	d, h := openGPU(t)
	// Attention-like: Q [M, H·hd] and K [T, H·hd] with heads side by side;
	// S_h = Q_h·K_hᵀ into packed [H, M, T], then O_h = S_h·V_h into [M, H·hd].
	const H, hd, M, T = 4, 64, 16, 80
	cases := []*Gemm{
		{M: M, N: T, K: hd, LdA: H * hd, StrideA: hd, LdB: H * hd, StrideB: hd, TransB: true,
			LdD: T, StrideD: M * T, Batch: H, Alpha: 0.125, AB: BF16, Out: F32},
		{M: M, N: hd, K: T, LdA: T, StrideA: M * T, LdB: H * hd, StrideB: hd,
			LdD: H * hd, StrideD: hd, Batch: H, Alpha: 1, AB: BF16, Out: BF16},
		{M: M, N: T, K: hd, LdA: H * hd, StrideA: hd, LdB: H * hd, StrideB: hd, TransB: true,
			LdD: T, StrideD: M * T, Batch: H, Alpha: 1, Beta: 1, AB: F32, Out: F32},
		// packed batch of independent products
		{M: 33, N: 17, K: 65, LdA: 65, StrideA: 33 * 65, LdB: 17, StrideB: 65 * 17,
			LdD: 17, StrideD: 33 * 17, Batch: 3, Alpha: 1, AB: F32, Out: F32},
	}
	for i, g := range cases {
		e := runGemm(t, d, h, g, uint64(100+i))
		tol := 1e-2
		if g.AB == F32 {
			tol = 1e-5
		}
		t.Logf("%s: rel L2 %.3g", g.shape(), e)
		if e > tol {
			t.Errorf("%s: rel L2 %.3g > %g", g.shape(), e, tol)
		}
	}
}

// C apart from D (with its own leading dimension) and the bias epilogue:
// D = Alpha·A·Bᵀ + Beta·C + bias, C left unchanged.
func TestGPUGemmCAndBias(t *testing.T) {
	d, h := openGPU(t)
	for _, dt := range []DType{F32, BF16} {
		const m, n, k, ldc = 37, 64, 61, 70
		r := rand.New(rand.NewPCG(5, 5))
		rnd := func(c int) []float64 {
			v := make([]float64, c)
			for i := range v {
				v[i] = r.Float64()*2 - 1
			}
			return v
		}
		av, bv, cv, biasv := rnd(m*k), rnd(n*k), rnd(m*ldc), rnd(n)
		g := &Gemm{M: m, N: n, K: k, LdA: k, LdB: k, TransB: true, LdD: n, LdC: ldc, Alpha: 0.5, Beta: 1, AB: dt, Out: dt}
		var got, gotC []float64
		err := d.Do(func() error {
			var err error
			ptrs := []*driver.Ptr{&g.A, &g.B, &g.C, &g.Bias}
			for i, v := range [][]float64{av, bv, cv, biasv} {
				if *ptrs[i], err = upload(d, v, dt); err != nil {
					return err
				}
				defer d.Free(*ptrs[i])
			}
			if g.D, err = d.Alloc(m * n * dt.Size()); err != nil {
				return err
			}
			defer d.Free(g.D)
			if err := d.Memset8(g.D, 0xFF, m*n*dt.Size()); err != nil {
				return err
			}
			if err := h.Run(0, g); err != nil {
				return err
			}
			if err := d.Synchronize(); err != nil {
				return err
			}
			if got, err = download(d, g.D, m*n, dt); err != nil {
				return err
			}
			gotC, err = download(d, g.C, m*ldc, dt)
			return err
		})
		if err != nil {
			t.Fatalf("%s: %v", g.shape(), err)
		}
		want := make([]float64, m*n)
		for i := 0; i < m; i++ {
			for j := 0; j < n; j++ {
				var s float64
				for l := 0; l < k; l++ {
					s += av[i*k+l] * bv[j*k+l]
				}
				want[i*n+j] = 0.5*s + cv[i*ldc+j] + biasv[j]
			}
		}
		e := relL2(got, want, nil)
		tol := 1e-5
		if dt == BF16 {
			tol = 1e-2
		}
		t.Logf("%s: rel L2 %.3g", g.shape(), e)
		if e > tol {
			t.Errorf("%s: rel L2 %.3g > %g", g.shape(), e, tol)
		}
		for i := range cv {
			if gotC[i] != cv[i] {
				t.Fatalf("%s: C changed at %d", g.shape(), i)
			}
		}
	}
}
