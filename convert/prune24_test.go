package convert

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"sync/atomic"
	"testing"

	"github.com/slopeml/slope/format/slopepb"
)

// prune24Forms are the fused 2:4 kernel's forms this CPU runs, by name:
// the flags prune24Rows reads for each.
func prune24Forms() (names []string, flags map[string][2]bool) {
	flags = map[string][2]bool{"go": {false, false}}
	names = []string{"go"}
	if prune24AVX2 {
		flags["avx2"] = [2]bool{false, true}
		names = append(names, "avx2")
	}
	if prune24AVX512 {
		flags["avx512"] = [2]bool{true, false}
		names = append(names, "avx512")
	}
	return names, flags
}

// withPrune24Form runs f with the kernel's form set by flags (AVX-512,
// AVX2), then restores the CPU's.
func withPrune24Form(flags [2]bool, f func()) {
	a, b := prune24AVX512, prune24AVX2
	prune24AVX512, prune24AVX2 = flags[0], flags[1]
	defer func() { prune24AVX512, prune24AVX2 = a, b }()
	f()
}

// TestPrune24SIMDMatchesGo: the AVX-512 and AVX2 forms of the fused 2:4
// kernel write the Go form's bytes and sums (bit for bit), on random
// rows of every kind (ties, special values, any finite value), for fp16
// and bf16, and stop at the same NaN.
func TestPrune24SIMDMatchesGo(t *testing.T) {
	names, flags := prune24Forms()
	if len(names) == 1 {
		t.Skip("NOT RUN: this CPU has neither AVX-512 (BW, VBMI2) nor AVX2 (with FMA, F16C, BMI2); the Go form is tested by the other tests")
	}
	t.Logf("forms: %v", names)
	r := rand.New(rand.NewPCG(7, 8))
	// ran counts, per SIMD form, the trials in which prune24 ran a SIMD
	// kernel (prune24SIMDRan) with only that form switched on: AVX-512
	// takes widths that are multiples of 32 and leaves the others to the
	// Go form (the AVX2 form takes them), so three trials in four use
	// such widths.
	ran := map[string]int{}
	var calls atomic.Int64
	prune24SIMDRan = func() { calls.Add(1) }
	defer func() { prune24SIMDRan = nil }()
	for _, dt := range halfDTypes {
		h, _ := halfFloatOf(dt)
		for trial := range 90 {
			rows, cols := 4*(1+r.IntN(4)), 32*(1+r.IntN(6))
			if trial%4 == 3 {
				cols = 16 * (1 + 2*r.IntN(6)) // an odd multiple of 16
			}
			if trial%15 == 14 {
				rows, cols = 256, 2048 // several workers
			}
			raw := randHalves(r, h, rows*cols, trial%3)
			nan := trial%5 == 4
			if nan {
				at := r.IntN(rows * cols)
				binary.LittleEndian.PutUint16(raw[2*at:], h.inf+1+uint16(r.IntN(3)))
			}
			name := fmt.Sprintf("%s [%d %d] kind %d nan %v", dt, rows, cols, trial%3, nan)
			type out struct {
				nm, mask   []byte
				res        prunedWeight
				err        error
				rowW, rowP []float64 // prune24Rows's per-row sums, compared bit for bit
			}
			var want out
			for i, form := range names {
				sz := half24SizesOf(cols)
				o := out{nm: make([]byte, rows*(sz.values+sz.index)), mask: make([]byte, rows*sz.mask)}
				withPrune24Form(flags[form], func() {
					calls.Store(0)
					o.res, o.err = h.prune24(rows, cols, raw, o.nm, o.mask)
					if calls.Load() > 0 {
						if i == 0 {
							t.Fatalf("%s: the Go form ran a SIMD kernel", name)
						}
						ran[form]++ // the form's own kernel
					}
					if !nan {
						o.rowW, o.rowP = make([]float64, rows), make([]float64, rows)
						nm, mask := make([]byte, len(o.nm)), make([]byte, len(o.mask))
						vb := rows * sz.values
						h.prune24Rows(cols, raw, nm[:vb], nm[vb:], mask, o.rowW, o.rowP)
					}
				})
				if i == 0 {
					want = o
					continue
				}
				switch {
				case nan:
					if want.err == nil || o.err == nil || o.err.Error() != want.err.Error() {
						t.Fatalf("%s: Go form %v, %s form %v", name, want.err, form, o.err)
					}
				case want.err != nil || o.err != nil:
					t.Fatalf("%s: Go form %v, %s form %v", name, want.err, form, o.err)
				case !bytes.Equal(o.nm, want.nm) || !bytes.Equal(o.mask, want.mask):
					t.Fatalf("%s: %s form's encodings differ (NM %v, mask %v)", name, form, bytes.Equal(o.nm, want.nm), bytes.Equal(o.mask, want.mask))
				case o.res.dropped != want.res.dropped || math.Float64bits(o.res.errPruned) != math.Float64bits(want.res.errPruned):
					t.Fatalf("%s: %s form: dropped %d, error %v; Go form %d, %v", name, form, o.res.dropped, o.res.errPruned, want.res.dropped, want.res.errPruned)
				}
				for r := range o.rowW {
					if math.Float64bits(o.rowW[r]) != math.Float64bits(want.rowW[r]) || math.Float64bits(o.rowP[r]) != math.Float64bits(want.rowP[r]) {
						t.Fatalf("%s: %s form's sums of row %d: %v, %v; Go form %v, %v", name, form, r, o.rowW[r], o.rowP[r], want.rowW[r], want.rowP[r])
					}
				}
			}
		}
	}
	t.Logf("trials on each form's own kernel: %v", ran)
	for _, form := range names[1:] {
		if ran[form] < 100 { // of 180
			t.Errorf("the %s kernel ran in %d trials of 180", form, ran[form])
		}
	}
}

// BenchmarkPrune24Forms: the fused kernel's forms on an OPT-1.3B
// fc1-shaped fp16 weight.
func BenchmarkPrune24Forms(b *testing.B) {
	const rows, cols = 8192, 2048
	h, _ := halfFloatOf(slopepb.DType_FLOAT16)
	raw := randHalves(rand.New(rand.NewPCG(1, 1)), h, rows*cols, 2)
	sz := half24SizesOf(cols)
	nm, mask := make([]byte, rows*(sz.values+sz.index)), make([]byte, rows*sz.mask)
	names, flags := prune24Forms()
	for _, form := range names {
		b.Run(form, func(b *testing.B) {
			b.SetBytes(int64(len(raw)))
			withPrune24Form(flags[form], func() {
				for b.Loop() {
					if _, err := h.prune24(rows, cols, raw, nm, mask); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
	}
}
