package cpu

// Attention helpers: the decode path computes, per head, the dot product
// of the query with each cached key (Dot) and accumulates the
// probability-weighted value rows (Axpy). Typical lengths are the head
// dimension (64, 128), but any length works.

// Dot returns Σ a[i]·b[i] over the common prefix of a and b: the contract
// is len(b) >= len(a); when b is shorter only its length is used (the sum
// runs over i < min(len(a), len(b))), nothing panics and nothing past
// either slice is read. An empty prefix gives 0.
//
// Accumulation is float32 in an order fixed by the length, so the same
// inputs give the same bits on every call (on a given CPU kind and build:
// the AVX2+FMA kernel runs 4 8-wide FMA chains over blocks of 32, one over
// blocks of 8, a fixed horizontal sum and a scalar FMA tail; the Go kernel
// runs 4 scalar chains over blocks of 4, then a scalar tail, rounding every
// product).
func Dot(a, b []float32) float32 {
	n := min(len(a), len(b))
	if n == 0 {
		return 0
	}
	if asmOn() {
		return dotAsm(&a[0], &b[0], n)
	}
	return dotGo(a[:n], b[:n])
}

// Axpy computes y[i] += alpha·x[i] over the common prefix of y and x: the
// contract is len(x) >= len(y); when x is shorter only y[:len(x)] is
// updated and the rest of y is left as is; nothing panics and nothing past
// either slice is read or written. x and y must not overlap unless they
// are the same slice.
//
// The AVX2+FMA kernel computes each element as fma(alpha, x[i], y[i]) (one
// rounding); the Go kernel rounds the product and then the sum. Either
// way the result of an element depends only on its inputs.
func Axpy(y []float32, alpha float32, x []float32) {
	n := min(len(y), len(x))
	if n == 0 {
		return
	}
	if asmOn() {
		axpyAsm(&y[0], alpha, &x[0], n)
		return
	}
	axpyGo(y[:n], alpha, x[:n])
}

// dotGo is the portable Dot over len(a) <= len(b) elements: 4 independent
// accumulators over blocks of 4, combined (0+1)+(2+3), then a scalar tail.
// The explicit float32 conversions forbid fusing into FMAs, so the result
// is the same on every architecture.
func dotGo(a, b []float32) float32 {
	b = b[:len(a)]
	var s0, s1, s2, s3 float32
	i := 0
	for ; i+4 <= len(a); i += 4 {
		aa := a[i : i+4 : i+4]
		bb := b[i : i+4 : i+4]
		s0 += float32(aa[0] * bb[0])
		s1 += float32(aa[1] * bb[1])
		s2 += float32(aa[2] * bb[2])
		s3 += float32(aa[3] * bb[3])
	}
	s := (s0 + s1) + (s2 + s3)
	for ; i < len(a); i++ {
		s += float32(a[i] * b[i])
	}
	return s
}

// axpyGo is the portable Axpy over len(y) <= len(x) elements, unrolled by 4.
func axpyGo(y []float32, alpha float32, x []float32) {
	x = x[:len(y)]
	i := 0
	for ; i+4 <= len(y); i += 4 {
		yy := y[i : i+4 : i+4]
		xx := x[i : i+4 : i+4]
		yy[0] += float32(alpha * xx[0])
		yy[1] += float32(alpha * xx[1])
		yy[2] += float32(alpha * xx[2])
		yy[3] += float32(alpha * xx[3])
	}
	for ; i < len(y); i++ {
		y[i] += float32(alpha * x[i])
	}
}
