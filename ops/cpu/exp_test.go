package cpu

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

// ulpDiff is the distance in float32 ulps between a and b (both >= 0).
func ulpDiff(a, b float32) int64 {
	d := int64(math.Float32bits(a)) - int64(math.Float32bits(b))
	if d < 0 {
		d = -d
	}
	return d
}

// TestExpShiftSumVsRef: every path against float32(math.Exp) on random
// softmax rows (exponents from 0 down past the float32 underflow, lengths
// around the 16-lane blocks), values within 2 ulp, nothing read past n
// (NaN guards) or written past it (a sentinel), the float64 sum within 1e-6 of the reference's,
// the same bits on a second call, and src aliasing dst.
func TestExpShiftSumVsRef(t *testing.T) {
	paths(t, func(t *testing.T) {
		rng := rand.New(rand.NewPCG(3, 4))
		for _, n := range vecLens() {
			for _, spread := range []float32{1, 20, 120} {
				nan := float32(math.NaN())
				src := guarded(rng, n, 17, nan)
				shift := float32(rng.NormFloat64() * 5)
				for i := range src {
					src[i] = shift - spread*rng.Float32()
				}
				if n > 0 {
					src[rng.IntN(n)] = shift // the maximum itself: exp(0) = 1
				}
				// dst's padding is a value exp never gives: a store past n
				// changes it (src's NaN padding poisons a read past n).
				const pad = -7.5
				dst := guard(rng, n, 17, pad)
				sum := ExpShiftSum(dst, src, shift)
				ref := make([]float32, n)
				refSum := expShiftSumGo(ref, src, shift)
				what := fmt.Sprintf("n %d spread %g", n, spread)
				for i := range n {
					if d := ulpDiff(dst[i], ref[i]); d > 2 {
						t.Fatalf("%s: exp(%g - %g) = %g, want %g (%d ulp)", what, src[i], shift, dst[i], ref[i], d)
					}
				}
				for i := n; i < len(dst); i++ {
					if dst[i] != pad {
						t.Fatalf("%s: wrote dst[%d] past n", what, i)
					}
				}
				if math.IsNaN(sum) || math.Abs(sum-refSum) > 1e-6*refSum {
					t.Fatalf("%s: sum %v, want %v", what, sum, refSum)
				}
				if again := ExpShiftSum(dst, src, shift); again != sum {
					t.Fatalf("%s: second call %v, first %v", what, again, sum)
				}
				alias := append([]float32(nil), src...)
				if s := ExpShiftSum(alias, alias, shift); s != sum {
					t.Fatalf("%s: in place %v, want %v", what, s, sum)
				}
			}
		}
	})
}

// TestExpShiftSumEdges: -Inf and far-below-shift inputs give zero, a
// non-finite shift takes the reference path (NaN in, NaN out), and
// subnormal results stay within 2 ulp.
func TestExpShiftSumEdges(t *testing.T) {
	paths(t, func(t *testing.T) {
		src := []float32{float32(math.Inf(-1)), -200, -103.98, -100, -88, -87.3, 0, -1e-8}
		dst := make([]float32, len(src))
		ref := make([]float32, len(src))
		ExpShiftSum(dst, src, 0)
		expShiftSumGo(ref, src, 0)
		for i := range src {
			if ulpDiff(dst[i], ref[i]) > 2 {
				t.Errorf("exp(%g) = %g, want %g", src[i], dst[i], ref[i])
			}
		}
		if dst[0] != 0 || dst[1] != 0 {
			t.Errorf("exp(-Inf), exp(-200) = %g, %g, want 0", dst[0], dst[1])
		}
		// Above the shift (outside the softmax contract): the largest
		// finite results, then +Inf from where exp overflows float32, as
		// the reference (the vector kernels clamp the exponent at 100).
		big := []float32{88, 88.7, 89, 100, 177.8, 178, 1000, 3e38}
		bd, br := make([]float32, len(big)), make([]float32, len(big))
		ExpShiftSum(bd, big, 0)
		expShiftSumGo(br, big, 0)
		for i := range big {
			if math.IsInf(float64(br[i]), 1) != math.IsInf(float64(bd[i]), 1) || ulpDiff(bd[i], br[i]) > 2 {
				t.Errorf("exp(%g) = %g, want %g", big[i], bd[i], br[i])
			}
		}
		nan := float32(math.NaN())
		if s := ExpShiftSum(dst[:2], []float32{1, nan}, nan); !math.IsNaN(s) {
			t.Errorf("NaN shift: sum %v, want NaN", s)
		}
		inf := float32(math.Inf(1))
		if s := ExpShiftSum(dst[:2], []float32{1, inf}, inf); !math.IsNaN(s) {
			t.Errorf("+Inf shift with an +Inf input: sum %v, want NaN (Inf - Inf)", s)
		}
	})
}

// BenchmarkExpShiftSum: one softmax row of 8192 logits (a vocabulary's
// worth), the selected path against the float64 reference.
func BenchmarkExpShiftSum(b *testing.B) {
	rng := rand.New(rand.NewPCG(1, 2))
	src, dst := make([]float32, 8192), make([]float32, 8192)
	for i := range src {
		src[i] = -20 * rng.Float32()
	}
	b.Run("kernel", func(b *testing.B) {
		for b.Loop() {
			ExpShiftSum(dst, src, 0)
		}
	})
	b.Run("ref", func(b *testing.B) {
		for b.Loop() {
			expShiftSumGo(dst, src, 0)
		}
	})
}

// TestExpShiftSumAVX2MatchesAVX512: the AVX2 kernel computes each value
// by the AVX-512 kernel's operations (two exact-then-rounding products by
// powers of two in place of VSCALEFPS), so the values must have the same
// bits, subnormals included. Only a CPU with AVX-512 can run both; on
// others the test says so and skips.
func TestExpShiftSumAVX2MatchesAVX512(t *testing.T) {
	if !haveAVX512 {
		t.Skip("no AVX-512 on this CPU: only the AVX2 kernel can run (TestExpShiftSumVsRef checks it against the reference)")
	}
	defer func() { useAsm, useAVX512 = true, true }()
	rng := rand.New(rand.NewPCG(11, 12))
	for _, n := range vecLens() {
		src := make([]float32, n)
		for i := range src {
			src[i] = -110 * rng.Float32()
			if rng.IntN(8) == 0 { // above the shift too, up to past the clamp
				src[i] = 200 * rng.Float32()
			}
		}
		want, got := make([]float32, n), make([]float32, n)
		useAsm, useAVX512 = true, true
		ExpShiftSum(want, src, 0)
		useAVX512 = false
		ExpShiftSum(got, src, 0)
		for i := range n {
			if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
				t.Fatalf("n %d: exp(%g): AVX2 %g (%#x), AVX-512 %g (%#x)", n, src[i], got[i], math.Float32bits(got[i]), want[i], math.Float32bits(want[i]))
			}
		}
	}
}
