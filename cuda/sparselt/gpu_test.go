package sparselt

import (
	"errors"
	"fmt"
	"github.com/slopeml/slope/cuda/gputest"
	"math"
	"math/rand/v2"
	"testing"
	"unsafe"

	"github.com/slopeml/slope/cuda/driver"
	"github.com/slopeml/slope/format"
)

// openGPU opens GPU 0 and a sparselt Handle on it. Without a GPU (or
// cuSPARSELt) the test fails when SLOPE_REQUIRE_GPU=1 and is skipped,
// saying so, otherwise.
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
			var hv int
			d.Do(func() error { hv, _ = h.Version(); return nil })
			t.Logf("%s; cuSPARSELt %d (handle %d) from %s", d.Info, v, hv, Library())
			return d, h
		}
		d.Close()
	}
	gputest.Unavailable(t, err, driver.ErrNoDevice)
	return nil, nil
}

// bf16Matrix is a host bf16 matrix with its exact float32 values.
type bf16Matrix struct {
	bits []uint16
	vals []float32
}

func randomBF16(r *rand.Rand, n int) bf16Matrix {
	m := bf16Matrix{bits: make([]uint16, n), vals: make([]float32, n)}
	for i := range m.bits {
		m.bits[i] = format.Float32ToBFloat16(float32(r.Float64()*2 - 1))
		m.vals[i] = format.BFloat16ToFloat32(m.bits[i])
	}
	return m
}

// pruned24 returns a random W [N,K] with exactly 2 nonzeros in each group
// of 4 consecutive elements of a row.
func pruned24(r *rand.Rand, N, K int) bf16Matrix {
	m := randomBF16(r, N*K)
	for g := 0; g < N*K; g += 4 {
		a := r.IntN(4)
		b := (a + 1 + r.IntN(3)) % 4
		for j := 0; j < 4; j++ {
			if j != a && j != b {
				m.bits[g+j], m.vals[g+j] = 0, 0
			}
		}
	}
	return m
}

func toDevice(d *driver.Device, bits []uint16) (driver.Ptr, error) {
	p, err := d.Alloc(2 * len(bits))
	if err != nil {
		return 0, err
	}
	return p, d.CopyIn(p, unsafe.Pointer(&bits[0]), 2*len(bits))
}

func fromDevice(d *driver.Device, p driver.Ptr, n int) ([]float32, error) {
	bits := make([]uint16, n)
	if err := d.CopyOut(unsafe.Pointer(&bits[0]), p, 2*n); err != nil {
		return nil, err
	}
	out := make([]float32, n)
	for i, b := range bits {
		out[i] = format.BFloat16ToFloat32(b)
	}
	return out, nil
}

// sampleRows returns the rows of an M-row product the reference checks:
// all of them for small M, else the first, the last and 30 random ones.
func sampleRows(r *rand.Rand, M int) []int {
	if M <= 64 {
		rows := make([]int, M)
		for i := range rows {
			rows[i] = i
		}
		return rows
	}
	rows := []int{0, M - 1}
	for len(rows) < 32 {
		rows = append(rows, r.IntN(M))
	}
	return rows
}

// product runs one w.Matmul of M rows on fresh device buffers x (rows
// M.. poisoned with NaN) and y (poisoned, or random when beta != 0) and
// returns the relative L2 error of Y against a float64 reference on
// sampled rows.
func product(t *testing.T, d *driver.Device, w *Weight, W bf16Matrix, X bf16Matrix, M int, beta float32, r *rand.Rand) (float64, error) {
	N, K := w.N, w.K
	mpad := w.PadM(M)
	xb := append([]uint16(nil), X.bits[:mpad*K]...)
	for i := M * K; i < len(xb); i++ {
		xb[i] = 0xFFFF // NaN in the padding rows must not reach rows < M
	}
	y0 := randomBF16(r, mpad*N)
	var got []float32
	err := d.Do(func() error {
		x, err := toDevice(d, xb)
		if err != nil {
			return err
		}
		defer d.Free(x)
		y, err := toDevice(d, y0.bits)
		if err != nil {
			return err
		}
		defer d.Free(y)
		if beta == 0 {
			if err := d.Memset8(y, 0xFF, 2*mpad*N); err != nil {
				return err
			}
		}
		if err := w.Matmul(0, y, N, x, K, M, beta); err != nil {
			return err
		}
		if err := d.Synchronize(); err != nil {
			return err
		}
		got, err = fromDevice(d, y, mpad*N)
		return err
	})
	if err != nil {
		return 0, err
	}
	var num, den float64
	for _, m := range sampleRows(r, M) {
		xr := X.vals[m*K : (m+1)*K]
		for n := 0; n < N; n++ {
			wr := W.vals[n*K : (n+1)*K]
			var s float64
			for k, wv := range wr {
				if wv != 0 {
					s += float64(xr[k]) * float64(wv)
				}
			}
			if beta != 0 {
				s += float64(beta) * float64(y0.vals[m*N+n])
			}
			g := float64(got[m*N+n])
			if math.IsNaN(g) || math.IsInf(g, 0) {
				return math.Inf(1), fmt.Errorf("Y[%d,%d] = %v", m, n, g)
			}
			num += (g - s) * (g - s)
			den += s * s
		}
	}
	return math.Sqrt(num / math.Max(den, 1e-300)), nil
}

// newWeight uploads W and compresses it with h's current Layout.
func newWeight(d *driver.Device, h *Handle, W bf16Matrix, N, K int) (*Weight, error) {
	var w *Weight
	err := d.Do(func() error {
		dense, err := toDevice(d, W.bits)
		if err != nil {
			return err
		}
		defer d.Free(dense)
		w, err = h.NewWeight(0, dense, N, K)
		return err
	})
	return w, err
}

func TestGPUSparse(t *testing.T) {
	d, h := openGPU(t)
	r := rand.New(rand.NewPCG(5, 6))
	shapes := [][2]int{{256, 512}, {4096, 4096}}
	Ms := []int{1, 16, 64, 2048}
	type data struct{ W, X bf16Matrix }
	inputs := map[[2]int]data{}
	for _, s := range shapes {
		inputs[s] = data{W: pruned24(r, s[0], s[1]), X: randomBF16(r, padM(2048)*s[1])}
	}
	for _, layout := range []Layout{LayoutCol, LayoutRow} {
		t.Run(layout.String(), func(t *testing.T) {
			h.Layout = layout
			for _, s := range shapes {
				N, K := s[0], s[1]
				in := inputs[s]
				w, err := newWeight(d, h, in.W, N, K)
				if err != nil {
					t.Errorf("NewWeight(%d, %d): %v", N, K, err)
					continue
				}
				if b := w.Bytes(); b < int64(N*K) || b >= int64(2*N*K) {
					t.Errorf("%v: compressed to %d bytes (dense %d)", w, b, 2*N*K)
				}
				for _, M := range Ms {
					for _, beta := range []float32{0, 1} {
						e, err := product(t, d, w, in.W, in.X, M, beta, r)
						if err != nil {
							t.Errorf("%v M=%d beta=%g: %v", w, M, beta, err)
							continue
						}
						t.Logf("%v M=%d (padded %d) beta=%g: rel L2 %.3g", w, M, w.PadM(M), beta, e)
						if e > 1e-2 {
							t.Errorf("%v M=%d beta=%g: rel L2 %.3g > 1e-2", w, M, beta, e)
						}
					}
				}
				if err := d.Do(w.Destroy); err != nil {
					t.Errorf("Destroy: %v", err)
				}
			}
		})
	}
	h.Layout = LayoutCol
}

func TestGPUSparseSearch(t *testing.T) {
	d, h := openGPU(t)
	h.Search = true
	r := rand.New(rand.NewPCG(8, 9))
	for _, c := range []struct{ N, K, M int }{{256, 512, 64}, {256, 512, 2048}, {4096, 4096, 16}} {
		X := randomBF16(r, padM(c.M)*c.K)
		// Two weights of one shape: the second reuses the first's search.
		for i := 0; i < 2; i++ {
			W := pruned24(r, c.N, c.K)
			w, err := newWeight(d, h, W, c.N, c.K)
			if err != nil {
				t.Fatalf("NewWeight(%d, %d): %v", c.N, c.K, err)
			}
			for _, beta := range []float32{0, 1} {
				e, err := product(t, d, w, W, X, c.M, beta, r)
				if err != nil {
					t.Fatalf("%v M=%d search: %v", w, c.M, err)
				}
				id, split, ok := h.Searched(c.N, c.K, padM(c.M), h.Layout)
				t.Logf("%v M=%d beta=%g weight %d: search chose config %d split-K %d (%v); rel L2 %.3g", w, c.M, beta, i, id, split, ok, e)
				if !ok {
					t.Errorf("no configuration recorded for %v M=%d", w, c.M)
				}
				if e > 1e-2 {
					t.Errorf("%v M=%d beta=%g with search: rel L2 %.3g > 1e-2", w, c.M, beta, e)
				}
			}
		}
	}
}

func TestGPUSparseRejectsDense(t *testing.T) {
	d, h := openGPU(t)
	r := rand.New(rand.NewPCG(10, 11))
	W := randomBF16(r, 256*512) // no zeros: not 2:4
	_, err := newWeight(d, h, W, 256, 512)
	if !errors.Is(err, ErrNotPruned) {
		t.Fatalf("a dense weight: %v, want ErrNotPruned", err)
	}
	t.Logf("as expected: %v", err)
	if _, err := newWeight(d, h, pruned24(r, 48, 512), 48, 512); !errors.Is(err, ErrUnsupported) {
		t.Errorf("N=48: %v, want ErrUnsupported", err)
	}
}

// TestGPURecompress: a weight recompressed from another pruned matrix
// (other positions) multiplies as that matrix, in both layouts, twice.
func TestGPURecompress(t *testing.T) {
	d, h := openGPU(t)
	r := rand.New(rand.NewPCG(11, 12))
	const N, K, M = 256, 512, 64
	X := randomBF16(r, padM(M)*K)
	for _, layout := range []Layout{LayoutCol, LayoutRow} {
		h.Layout = layout
		w, err := newWeight(d, h, pruned24(r, N, K), N, K)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 2; i++ {
			W2 := pruned24(r, N, K)
			if err := d.Do(func() error {
				dense, err := toDevice(d, W2.bits)
				if err != nil {
					return err
				}
				defer d.Free(dense)
				if err := w.Recompress(0, dense); err != nil {
					return err
				}
				return d.Synchronize()
			}); err != nil {
				t.Fatal(err)
			}
			e, err := product(t, d, w, W2, X, M, 0, r)
			if err != nil || e > 1e-2 {
				t.Errorf("%v recompressed (%d): rel L2 %.3g, %v", w, i, e, err)
			}
		}
		if err := d.Do(w.Destroy); err != nil {
			t.Error(err)
		}
	}
	h.Layout = LayoutCol
}

// TestGPUValuesInPlace: the values layout check passes in both layouts;
// a weight compressed from its pattern (1.0 at the kept positions) whose
// values part is then overwritten with W's kept values in portable
// order is byte for byte the weight compressed from W, and multiplies
// as W. Weight.Values refuses before the check.
func TestGPUValuesInPlace(t *testing.T) {
	d, h := openGPU(t)
	r := rand.New(rand.NewPCG(13, 14))
	const N, K, M = 256, 512, 64
	X := randomBF16(r, padM(M)*K)
	for _, layout := range []Layout{LayoutCol, LayoutRow} {
		h.Layout = layout
		W := pruned24(r, N, K)
		pattern := make([]uint16, N*K)
		var packed []uint16
		for i, b := range W.bits {
			if b != 0 {
				pattern[i] = 0x3F80
				packed = append(packed, b)
			}
		}
		if len(packed) != N*K/2 {
			t.Fatalf("%d kept values, want %d", len(packed), N*K/2)
		}
		ref, err := newWeight(d, h, W, N, K)
		if err != nil {
			t.Fatal(err)
		}
		w, err := newWeight(d, h, bf16Matrix{bits: pattern}, N, K)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Values(); !errors.Is(err, ErrValuesLayout) {
			t.Errorf("Values before CheckValues: %v, want ErrValuesLayout", err)
		}
		var same bool
		if err := d.Do(func() error {
			if err := h.CheckValues(0); err != nil {
				return err
			}
			p, err := w.Values()
			if err != nil {
				return err
			}
			if err := d.CopyIn(p, unsafe.Pointer(&packed[0]), 2*len(packed)); err != nil {
				return err
			}
			a, b := make([]byte, w.bytes), make([]byte, ref.bytes)
			if err := d.CopyOut(unsafe.Pointer(&a[0]), w.comp, len(a)); err != nil {
				return err
			}
			if err := d.CopyOut(unsafe.Pointer(&b[0]), ref.comp, len(b)); err != nil {
				return err
			}
			same = string(a) == string(b)
			return nil
		}); err != nil {
			t.Fatalf("%s: %v", layout, err)
		}
		if !same {
			t.Errorf("%s: values written in place differ from the compressed W", layout)
		}
		if e, err := product(t, d, w, W, X, M, 0, r); err != nil || e > 1e-2 {
			t.Errorf("%s: product with values written in place: rel L2 %.3g, %v", layout, e, err)
		}
		for _, x := range []*Weight{w, ref} {
			if err := d.Do(x.Destroy); err != nil {
				t.Error(err)
			}
		}
	}
	h.Layout = LayoutCol
}
