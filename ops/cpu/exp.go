package cpu

import "math"

// ExpShiftSum sets dst[i] = exp(src[i] - shift) in float32 for
// i < len(src) and returns the sum of the dst values, accumulated in
// float64: the numerator and denominator of a softmax whose maximum is
// shift (the caller passes max(src), so every exponent is <= 0). It
// needs len(dst) >= len(src); dst and src may be the same slice.
//
// The exponent is the float32 difference src[i] - shift (rounded, as a
// float32 softmax computes it). With AVX-512 a polynomial kernel
// computes 16 values at a time (within 2 ulp of the correctly rounded
// exp of that difference for finite src <= shift; results that round
// below the smallest subnormal are zero) and sums in two float64 chains;
// with AVX2 and FMA (no AVX-512) its 8-lane form gives each value the
// same bits and sums in its own fixed order (above shift, outside the
// softmax's use, both clamp the exponent at 100: results past float32's
// range are +Inf, as the reference's); otherwise, and whenever
// shift is not finite, each value is
// float32(math.Exp(float64(src[i] - shift))) (NaN and infinities as
// math.Exp gives them) summed in order. Either way the
// result depends only on the inputs, not on the caller's thread split.
func ExpShiftSum(dst, src []float32, shift float32) float64 {
	if len(dst) < len(src) {
		panic("cpu: ExpShiftSum: dst shorter than src")
	}
	if len(src) == 0 {
		return 0
	}
	if asmOn() && !math.IsInf(float64(shift), 0) && shift == shift {
		if asm512On() {
			return expShiftSumAVX512(&dst[0], &src[0], len(src), shift)
		}
		return expShiftSumAVX2(&dst[0], &src[0], len(src), shift)
	}
	return expShiftSumGo(dst, src, shift)
}

// ExpShiftSumVectorized reports whether ExpShiftSum runs a vector kernel
// (AVX-512, or AVX2 with FMA) on this CPU for finite shifts: callers with
// a faster scalar exponential of their own keep it otherwise.
func ExpShiftSumVectorized() bool { return asmOn() }

// expShiftSumGo is ExpShiftSum's reference and portable path.
func expShiftSumGo(dst, src []float32, shift float32) float64 {
	dst = dst[:len(src)]
	var sum float64
	for i, v := range src {
		e := float32(math.Exp(float64(v - shift)))
		dst[i] = e
		sum += float64(e)
	}
	return sum
}
