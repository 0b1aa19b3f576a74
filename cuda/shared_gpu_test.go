package cuda

import (
	"fmt"
	"math"
	"testing"

	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/format/slopepb"
)

// TestSharedValues: a 2:4 layer with the default forms keeps one copy of
// its values, inside cuSPARSELt's compressed form, which the decode
// kernel, the generic N:M kernel and cuSPARSELt all read; every path
// gives x·Wᵀ against float64 on the host (two shapes; the second weight
// of the first shape skips VerifyValues, which ran for the first).
func TestSharedValues(t *testing.T) {
	b := newWith(t, Options{Activations: BF16})
	if b.sp == nil {
		t.Fatal("cuSPARSELt is not available: no shared values")
	}
	const m = 16
	for i, sh := range [][2]int{{256, 512}, {256, 512}, {96, 320}} {
		out, in := sh[0], sh[1]
		seed := uint64(20 + i)
		err := b.Do(func() error {
			before := b.WeightBytes
			l, err := b.NewBenchLinear(Sparse24All, out, in, 0, false, seed)
			if err != nil {
				return err
			}
			defer b.FreeBenchLinear(l)
			if !l.ValuesShared() {
				return fmt.Errorf("%dx%d: values not shared (values layout check: %v)", out, in, b.sp.CheckValues(b.s))
			}
			if p, err := l.step.sp.Values(); err != nil || p != l.step.vals {
				t.Errorf("%dx%d: the N:M kernels read %#x, cuSPARSELt's values are at %#x (%v)", out, in, uintptr(l.step.vals), uintptr(p), err)
			}
			if want := int64(out * in / 8); l.PortableBytes != want {
				t.Errorf("%dx%d: portable bytes %d, want %d (the indices only)", out, in, l.PortableBytes, want)
			}
			if got, want := b.WeightBytes-before, l.PortableBytes+l.TCBytes+l.LtBytes; got != want {
				t.Errorf("%dx%d: WeightBytes grew by %d, the forms hold %d", out, in, got, want)
			}
			// The host's copy of the weight, as NewBenchLinear made it.
			vals := make([]float32, out*in/2)
			if err := format.DecodeFloats(slopepb.DType_BFLOAT16, randomBF16(out*in/2, 1/math.Sqrt(float64(in))*1.4, seed), vals); err != nil {
				return err
			}
			idx := make([]uint8, len(vals))
			if err := format.UnpackNMIndices(format.NM{N: 2, M: 4}, out, in, random24Indices(out, in, seed), idx); err != nil {
				return err
			}
			x, err := b.RandomTensor(m, in, seed)
			if err != nil {
				return err
			}
			defer b.Release(x)
			xs, err := b.Fetch(x)
			if err != nil {
				return err
			}
			want := make([]float64, m*out)
			for r := 0; r < m; r++ {
				for o := 0; o < out; o++ {
					var s float64
					for j := 0; j < in/2; j++ {
						s += float64(vals[o*in/2+j]) * float64(xs[r*in+(j/2)*4+int(idx[o*in/2+j])])
					}
					want[r*out+o] = s
				}
			}
			for _, path := range []string{"spmv", "generic", "cusparselt", "tc"} {
				y, err := b.Acquire(m, out)
				if err != nil {
					return err
				}
				err = l.ForwardPath(path, x, y, m)
				var got []float32
				if err == nil {
					got, err = b.Fetch(y)
				}
				b.Release(y)
				if err != nil {
					return fmt.Errorf("%dx%d %s: %w", out, in, path, err)
				}
				var num, den float64
				for k, w := range want {
					num += (float64(got[k]) - w) * (float64(got[k]) - w)
					den += w * w
				}
				if e := math.Sqrt(num / den); !(e <= 1e-2) {
					t.Errorf("%dx%d %s: relative L2 %.3g against the host", out, in, path, e)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}
