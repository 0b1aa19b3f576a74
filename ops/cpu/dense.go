package cpu

import (
	"encoding/binary"
	"errors"
	"math"
)

// Blocking parameters of the dense kernels.
const (
	panelW      = 16      // outputs per dense panel (two YMM registers)
	gemmMR      = 6       // rows of the dense micro-kernel
	gemmMinRows = 4       // m below this runs GEMVs
	denseKC     = 512     // K block of the dense GEMM: a 32 KiB fp32 B block
	gemmMC      = 96      // row block of the dense GEMM over a large A: 16 tiles, 192 KiB of A per K block (L2)
	gemmStreamA = 4 << 20 // bytes of A above which the dense GEMM blocks its rows
)

// BlockedRows is the number of rows from which Linear runs its blocked
// GEMM: from there on, a row's outputs do not depend on the other rows of
// the call (below it, GEMVs with another summation order run), so a
// caller that splits its rows into calls of at least BlockedRows gets the
// bits of one call.
const BlockedRows = gemmMinRows

// DenseKBlock is the K block of the blocked dense GEMM: with K at most
// DenseKBlock, each output element of MulAdd is its prior value plus one
// FMA chain (the bits of y0 + Linear's product); longer K adds one chain
// per block, in block order.
const DenseKBlock = denseKC

// Dense is a dense weight prepared for Linear: panels of 16 outputs,
// [ceil(Out/16)][In][16] elements of the stored dtype (zero-padded
// outputs). It is immutable and safe for concurrent use, except that the
// training helpers (PrepareDenseF32, PrepareDenseKN) may refill a Dense
// their caller owns.
type Dense struct {
	pan panels
}

// panels is a matrix used as the right operand B[k][n] of C += A·B (a
// weight Wᵀ or a low-rank factor), stored as np panels [k][16] of 16
// columns, the columns past n zero.
type panels struct {
	dt   DType
	k, n int
	np   int
	w    wbuf
}

// PrepareDense copies a dense weight into the panel layout of the kernels.
// Memory: ceil(Out/16)*16*In elements of the stored dtype (the raw size
// plus at most 15 padding rows).
func PrepareDense(w DenseWeight) (*Dense, error) {
	const op = "prepare dense"
	esz, err := w.check(op)
	if err != nil {
		return nil, err
	}
	np := (w.Out + panelW - 1) / panelW
	n, ok := mulOK(np*panelW, w.In)
	if !ok {
		return nil, errShape(op, "dense weight [%d, %d]: padded size overflows", w.Out, w.In)
	}
	d := &Dense{pan: panels{dt: w.DType, k: w.In, n: w.Out, np: np}}
	in := w.In
	if esz == 4 {
		f := make([]float32, n)
		for o := 0; o < w.Out; o++ {
			dst := f[(o/panelW)*in*panelW+o%panelW:]
			src := w.Data[o*in*4 : (o+1)*in*4]
			for k := 0; k < in; k++ {
				dst[k*panelW] = math.Float32frombits(binary.LittleEndian.Uint32(src[4*k:]))
			}
		}
		d.pan.w.f32 = f
	} else {
		u := make([]uint16, n)
		for o := 0; o < w.Out; o++ {
			dst := u[(o/panelW)*in*panelW+o%panelW:]
			src := w.Data[o*in*2 : (o+1)*in*2]
			for k := 0; k < in; k++ {
				dst[k*panelW] = binary.LittleEndian.Uint16(src[2*k:])
			}
		}
		d.pan.w.u16 = u
	}
	return d, nil
}

// Out returns the output dimension.
func (d *Dense) Out() int { return d.pan.n }

// PrefixOut returns a view of d restricted to its first n outputs
// (1 <= n <= Out), sharing d's panels: a product through it computes
// those outputs of d's, bit for bit. The lanes of its last panel past n
// hold d's next outputs, which no product reads into an output.
func (d *Dense) PrefixOut(n int) (*Dense, error) {
	if d == nil {
		return nil, errNil
	}
	if n < 1 || n > d.pan.n {
		return nil, errShape("dense prefix", "%d outputs of %d", n, d.pan.n)
	}
	np := (n + panelW - 1) / panelW
	v := &Dense{pan: panels{dt: d.pan.dt, k: d.pan.k, n: n, np: np}}
	size := np * panelW * d.pan.k
	if d.pan.dt == Float32 {
		v.pan.w.f32 = d.pan.w.f32[:size]
	} else {
		v.pan.w.u16 = d.pan.w.u16[:size]
	}
	return v, nil
}

// In returns the input dimension.
func (d *Dense) In() int { return d.pan.k }

// DType returns the weight storage dtype.
func (d *Dense) DType() DType { return d.pan.dt }

// Bytes returns the memory held by the prepared weight.
func (d *Dense) Bytes() int { return d.pan.w.bytes() }

var errNil = errors.New("cpu: nil prepared weight")

// Linear computes y = x·Wᵀ (+ bias if non-nil). x is [m, In] row-major,
// y is [m, Out]; threads <= 0 means runtime.GOMAXPROCS(0).
func (d *Dense) Linear(y, x []float32, m int, bias []float32, threads int) error {
	return d.product("dense linear", y, x, m, bias, true, threads)
}

// product checks the operands and runs the panels' GEMM: y = x·Wᵀ (+ bias)
// with init, y += x·Wᵀ without.
func (d *Dense) product(op string, y, x []float32, m int, bias []float32, init bool, threads int) error {
	if d == nil {
		return errNil
	}
	if err := checkIO(op, y, x, m, d.pan.k, d.pan.n, bias); err != nil {
		return err
	}
	if m == 0 {
		return nil
	}
	d.pan.mulAdd(y, d.pan.n, x, d.pan.k, m, bias, init, ResolveThreads(threads))
	return nil
}

// mulAdd computes C[i][0:n] += A[i]·B for i < m, where A rows are lda
// floats apart (k used) and C rows ldc apart; with init, C[i][0:n] is
// first set to bias (or zero). Below gemmMinRows rows it runs one GEMV per
// row over the panels; otherwise the blocked GEMM. Work is split over
// panels, or over row tiles when there are fewer panels than goroutines;
// either way each element is computed by one goroutine in a fixed order.
func (b *panels) mulAdd(c []float32, ldc int, a []float32, lda, m int, bias []float32, init bool, t int) {
	if m < gemmMinRows {
		parallelRange(b.np, t, func(p0, p1 int) { b.gemvBlock(c, ldc, a, lda, m, p0, p1, bias, init) })
		return
	}
	tiles := (m + gemmMR - 1) / gemmMR
	if b.np >= t || tiles == 1 {
		parallelRange(b.np, t, func(p0, p1 int) { b.gemmBlock(c, ldc, a, lda, 0, m, p0, p1, bias, init) })
		return
	}
	parallelRange(tiles, t, func(t0, t1 int) {
		b.gemmBlock(c, ldc, a, lda, t0*gemmMR, min(t1*gemmMR, m), 0, b.np, bias, init)
	})
}

// gemvBlock runs the GEMVs of panels [p0, p1) for the m rows.
func (b *panels) gemvBlock(c []float32, ldc int, a []float32, lda, m, p0, p1 int, bias []float32, init bool) {
	full := p1
	if p1*panelW > b.n {
		full = p1 - 1
	}
	for i := 0; i < m; i++ {
		ci := c[i*ldc : i*ldc+b.n]
		ai := a[i*lda : i*lda+b.k]
		if init {
			initRow(ci, p0*panelW, min(p1*panelW, b.n), bias)
		}
		if full > p0 {
			gemvPanels(b.dt, ai, &b.w, p0*b.k*panelW, b.k, full-p0, ci[p0*panelW:full*panelW])
		}
		if full < p1 {
			var tmp [panelW]float32
			gemvPanels(b.dt, ai, &b.w, full*b.k*panelW, b.k, 1, tmp[:])
			for j := range b.n - full*panelW {
				ci[full*panelW+j] += tmp[j]
			}
		}
	}
}

// gemmBlock computes rows [r0, r1) of panels [p0, p1): per panel and K
// block, the fp32 B block (the panel itself, or widened once into a
// scratch buffer) is multiplied with every 6-row tile. When the rows' A
// operand exceeds gemmStreamA bytes (the LM head's input and weight
// gradients, for instance), sweeping all of it once per panel would
// stream it from memory, so the rows are taken in blocks of gemmMC (as in
// GotoBLAS: per row block and K block, the A block stays in L2 while every
// panel's B block passes). Each C element accumulates one FMA chain per K
// block, added to C in K-block order, whatever the order of the loops.
func (b *panels) gemmBlock(c []float32, ldc int, a []float32, lda, r0, r1, p0, p1 int, bias []float32, init bool) {
	if init {
		for r := r0; r < r1; r++ {
			initRow(c[r*ldc:r*ldc+b.n], p0*panelW, min(p1*panelW, b.n), bias)
		}
	}
	t := gemmTiles{b: b, c: c, ldc: ldc, a: a, lda: lda}
	if b.dt != Float32 {
		conv := GetF32(min(denseKC, b.k) * panelW)
		defer PutF32(conv)
		t.conv = *conv
	}
	if (r1-r0)*b.k*4 <= gemmStreamA {
		for p := p0; p < p1; p++ {
			for kb := 0; kb < b.k; kb += denseKC {
				t.run(p, kb, r0, r1)
			}
		}
		return
	}
	for rb := r0; rb < r1; rb += gemmMC {
		for kb := 0; kb < b.k; kb += denseKC {
			for p := p0; p < p1; p++ {
				t.run(p, kb, rb, min(rb+gemmMC, r1))
			}
		}
	}
}

// gemmTiles holds one gemmBlock call's operands.
type gemmTiles struct {
	b    *panels
	c    []float32
	ldc  int
	a    []float32
	lda  int
	conv []float32 // the widened B block of a 16-bit panel
	// tmp takes a partial panel's tile (a local array would escape to
	// the heap through the assembly call, once per run).
	tmp [gemmMR * panelW]float32
}

// run adds the product of rows [r0, r1) of A's K block kb with panel p's
// into C, one 6-row tile at a time.
func (t *gemmTiles) run(p, kb, r0, r1 int) {
	b := t.b
	kl := min(denseKC, b.k-kb)
	valid := min(panelW, b.n-p*panelW)
	off := (p*b.k + kb) * panelW
	var bb []float32
	if b.dt == Float32 {
		bb = b.w.f32[off : off+kl*panelW]
	} else {
		bb = t.conv[:kl*panelW]
		widen(b.dt, bb, b.w.u16[off:off+kl*panelW])
	}
	tmp := t.tmp[:]
	for r := r0; r < r1; r += gemmMR {
		mr := min(gemmMR, r1-r)
		ar := t.a[r*t.lda+kb:]
		if valid == panelW {
			gemmTile(mr, ar, t.lda, bb, kl, t.c[r*t.ldc+p*panelW:], t.ldc)
			continue
		}
		clear(tmp)
		gemmTile(mr, ar, t.lda, bb, kl, tmp, panelW)
		for rr := 0; rr < mr; rr++ {
			cr := t.c[(r+rr)*t.ldc+p*panelW:]
			for j := 0; j < valid; j++ {
				cr[j] += tmp[rr*panelW+j]
			}
		}
	}
}
