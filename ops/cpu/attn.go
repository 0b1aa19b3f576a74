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

// fitRows returns how many of rows rows of width n, ld floats apart, lie
// within a slice of length size: row j occupies [j*ld, j*ld+n).
func fitRows(rows, ld, n, size int) int {
	if rows <= 0 || ld < 0 || size < n {
		return 0
	}
	if ld == 0 {
		return rows
	}
	return min(rows, (size-n)/ld+1)
}

// DotRows sets out[j] = Σ_i q[i]·k[j*ld+i] over i < len(q) for j < rows:
// the dot products of one query with rows key rows stored ld floats apart
// (ld >= len(q) for disjoint rows; any ld >= 0 works). The contract is
// len(out) >= rows and len(k) >= (rows-1)*ld+len(q). Rows beyond it, those
// j with j >= len(out) or j*ld+len(q) > len(k), are not computed and
// out[j] stays as it was; rows <= 0 or ld < 0 compute nothing; an empty q
// gives 0 for each computed row. Nothing panics and nothing outside the
// rows' first len(q) elements of k is read.
//
// Each out[j] is computed in float32 in an order fixed by len(q) alone
// (the same bits whatever j, rows and ld, on a given CPU kind and build).
// The AVX2+FMA kernel does 4 rows per step: per row one 8-wide FMA chain
// over the even and one over the odd 8-blocks of each 16-block, a
// remaining full 8-block on the first chain and the zero-padded last
// len(q)%8 elements on the second, the chains added and the 8 lanes
// summed as ((l0+l1)+(l2+l3))+((l4+l5)+(l6+l7)), the 4 rows' sums
// sharing one horizontal reduction. The Go kernel computes each row as
// Dot's Go kernel does (4 scalar chains over blocks of 4, combined
// (0+1)+(2+3), then a scalar tail, every product rounded).
func DotRows(out, q, k []float32, ld, rows int) {
	n := len(q)
	rows = fitRows(min(rows, len(out)), ld, n, len(k))
	if rows == 0 {
		return
	}
	if n == 0 {
		clear(out[:rows])
		return
	}
	if asmOn() {
		dotRowsAsm(&out[0], &q[0], &k[0], ld, rows, n)
		return
	}
	dotRowsGo(out[:rows], q, k, ld)
}

// AxpyRows computes y[i] += Σ_j p[j]·v[j*ld+i] for i < len(y), j < rows:
// the p-weighted sum of rows value rows stored ld floats apart (any
// ld >= 0), added to y. The contract is len(p) >= rows and
// len(v) >= (rows-1)*ld+len(y); rows beyond it (j >= len(p) or
// j*ld+len(y) > len(v)) are left out, rows <= 0 or ld < 0 add nothing, an
// empty y is a no-op. Nothing panics and nothing outside y and the rows'
// first len(y) elements of v is read or written. Neither p nor v may
// overlap y.
//
// Every element accumulates over j ascending, one row at a time, exactly
// as rows calls Axpy(y, p[j], v[j*ld:]) would: with AVX2+FMA each step is
// y[i] = fma(p[j], v[j*ld+i], y[i]) (the kernel keeps blocks of up to 64
// elements of y in registers across the rows); the Go kernel rounds the
// product and then the sum. A row with p[j] = 0 still adds 0·v, so the
// caller must leave out rows whose values may be Inf or NaN.
func AxpyRows(y, p, v []float32, ld, rows int) {
	n := len(y)
	rows = fitRows(min(rows, len(p)), ld, n, len(v))
	if rows == 0 || n == 0 {
		return
	}
	if asmOn() {
		axpyRowsAsm(&y[0], &p[0], &v[0], ld, rows, n)
		return
	}
	axpyRowsGo(y, p[:rows], v, ld)
}

// dotRowsGo is the portable DotRows over len(out) rows that all fit.
func dotRowsGo(out, q, k []float32, ld int) {
	for j := range out {
		out[j] = dotGo(q, k[j*ld:j*ld+len(q)])
	}
}

// axpyRowsGo is the portable AxpyRows over len(p) rows that all fit.
func axpyRowsGo(y, p, v []float32, ld int) {
	for j, pj := range p {
		axpyGo(y, pj, v[j*ld:j*ld+len(y)])
	}
}
