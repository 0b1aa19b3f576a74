package cpu

import (
	"math"
	"math/bits"
	"runtime"
	"sync"
	"unsafe"

	"github.com/slopeml/slope/format"
)

// useAsm selects the assembly kernels where the CPU has them; tests set it
// to false to run the portable Go kernels on the same machine. useAVX512
// likewise gates the AVX-512F sparse GEMM kernel (else the AVX2 one runs).
var useAsm, useAVX512 = true, true

// asmOn reports whether the AVX2+FMA kernels run.
func asmOn() bool { return useAsm && haveAVX2FMA }

// Kernels names the kernel set this process runs, for reports: "AVX-512"
// (the AVX2+FMA kernels plus the AVX-512 ones), "AVX2+FMA (no AVX-512)",
// or the portable Go kernels and why.
func Kernels() string {
	switch {
	case asm512On():
		return "AVX-512"
	case asmOn():
		return "AVX2+FMA (no AVX-512)"
	case !useAsm:
		return "portable Go (assembly disabled)"
	case !haveAsmBuild:
		return "portable Go (no assembly for this build)"
	}
	return "portable Go (the CPU lacks AVX2 or FMA)"
}

// asm512On reports whether the AVX-512F sparse GEMM kernel runs.
func asm512On() bool { return asmOn() && useAVX512 && haveAVX512 }

// asmDT reports whether the AVX2 kernels run for weights of dtype dt
// (FLOAT16 also needs F16C).
func asmDT(dt DType) bool {
	if dt == Float16 {
		return useAsm && haveF16C
	}
	return asmOn()
}

func gomaxprocs() int { return runtime.GOMAXPROCS(0) }

// wbuf holds weight elements: f32 for FLOAT32, u16 (raw bits) for FLOAT16
// and BFLOAT16.
type wbuf struct {
	f32 []float32
	u16 []uint16
}

func (b *wbuf) len() int {
	if b.f32 != nil {
		return len(b.f32)
	}
	return len(b.u16)
}

// at returns a pointer to element i (which must exist).
func (b *wbuf) at(i int) unsafe.Pointer {
	if b.f32 != nil {
		return unsafe.Pointer(&b.f32[i])
	}
	return unsafe.Pointer(&b.u16[i])
}

func (b *wbuf) bytes() int {
	return 4*len(b.f32) + 2*len(b.u16)
}

// bf16 widens bfloat16 bits (exactly; NaNs keep their payload).
func bf16(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }

var (
	f16Once  sync.Once
	f16Table *[1 << 16]float32
)

// f16Tab returns the FLOAT16 -> float32 table of the Go kernels (256 KiB,
// built on first use).
func f16Tab() *[1 << 16]float32 {
	f16Once.Do(func() {
		t := new([1 << 16]float32)
		for i := range t {
			t[i] = format.Float16ToFloat32(uint16(i))
		}
		f16Table = t
	})
	return f16Table
}

// need panics when an internal size invariant before an assembly call
// does not hold (a bug in this package, never a user error: those are
// checked and returned first).
func need(ok bool) {
	if !ok {
		panic("cpu: internal error: kernel bounds")
	}
}

// ---- scratch buffers ----

var (
	f32Pools [64]sync.Pool // *[]float32 with cap >= 1<<class
	u32Pool  sync.Pool     // *[]uint32
)

// GetF32 returns a scratch buffer of n float32s (contents undefined) from
// pools by power-of-two size class, so that buffers of different sizes
// do not evict each other; PutF32 gives it back. The kernels and the
// training steps share them.
func GetF32(n int) *[]float32 {
	class := bits.Len(uint(max(n, 1) - 1)) // the smallest 1<<class >= n
	if p, ok := f32Pools[class].Get().(*[]float32); ok {
		*p = (*p)[:n]
		return p
	}
	b := make([]float32, n, 1<<class)
	return &b
}

// PutF32 returns a buffer to the pool of the largest class its capacity
// covers (any slice may be given back).
func PutF32(p *[]float32) {
	if c := cap(*p); c > 0 {
		f32Pools[bits.Len(uint(c))-1].Put(p)
	}
}

func getU32(n int) *[]uint32 {
	if v, _ := u32Pool.Get().(*[]uint32); v != nil && cap(*v) >= n {
		*v = (*v)[:n]
		return v
	}
	s := make([]uint32, n)
	return &s
}

func putU32(s *[]uint32) { u32Pool.Put(s) }

// parallelRange is ParallelFor (the kernels' name for it).
func parallelRange(n, t int, fn func(lo, hi int)) { ParallelFor(n, t, fn) }

// initRow sets c[j0:j1] to bias[j0:j1], or to zero without bias.
func initRow(c []float32, j0, j1 int, bias []float32) {
	if bias != nil {
		copy(c[j0:j1], bias[j0:j1])
	} else {
		clear(c[j0:j1])
	}
}

// ---- dense kernels ----

// gemvPanels adds x·W_p to y[16p:16p+16] for np panels of 16 outputs
// stored [k][16] from element off of w.
func gemvPanels(dt DType, x []float32, w *wbuf, off, k, np int, y []float32) {
	need(np >= 1 && k >= 1 && len(x) >= k && len(y) >= 16*np && off >= 0 && w.len() >= off+np*k*16)
	if asmDT(dt) {
		gemvAsm(dt, &x[0], w.at(off), k, np, &y[0])
		return
	}
	gemvGo(dt, x, w, off, k, np, y)
}

func gemvGo(dt DType, x []float32, w *wbuf, off, k, np int, y []float32) {
	x = x[:k]
	var tab *[1 << 16]float32
	if dt == Float16 {
		tab = f16Tab()
	}
	for p := 0; p < np; p++ {
		var acc [16]float32
		base := off + p*k*16
		switch dt {
		case Float32:
			ws := w.f32[base : base+k*16]
			for kk, xv := range x {
				row := ws[kk*16 : kk*16+16 : kk*16+16]
				for j := range acc {
					acc[j] += xv * row[j]
				}
			}
		case BFloat16:
			ws := w.u16[base : base+k*16]
			for kk, xv := range x {
				row := ws[kk*16 : kk*16+16 : kk*16+16]
				for j := range acc {
					acc[j] += xv * bf16(row[j])
				}
			}
		default:
			ws := w.u16[base : base+k*16]
			for kk, xv := range x {
				row := ws[kk*16 : kk*16+16 : kk*16+16]
				for j := range acc {
					acc[j] += xv * tab[row[j]]
				}
			}
		}
		yp := y[p*16 : p*16+16 : p*16+16]
		for j := range acc {
			yp[j] += acc[j]
		}
	}
}

// gemmTile adds A·B to C for mr <= 6 rows: A rows lda apart (k used), B a
// [k][16] fp32 panel, C rows ldc apart (16 used).
func gemmTile(mr int, a []float32, lda int, b []float32, k int, c []float32, ldc int) {
	need(mr >= 1 && mr <= 6 && k >= 1 && lda >= k && ldc >= 16 &&
		len(a) >= (mr-1)*lda+k && len(b) >= 16*k && len(c) >= (mr-1)*ldc+16)
	if asmOn() {
		gemmTileAsm(mr, &a[0], lda, &b[0], k, &c[0], ldc)
		return
	}
	gemmTileGo(mr, a, lda, b, k, c, ldc)
}

func gemmTileGo(mr int, a []float32, lda int, b []float32, k int, c []float32, ldc int) {
	b = b[:16*k]
	for r := 0; r < mr; r++ {
		var acc [16]float32
		ar := a[r*lda : r*lda+k]
		for kk, av := range ar {
			row := b[kk*16 : kk*16+16 : kk*16+16]
			for j := range acc {
				acc[j] += av * row[j]
			}
		}
		cr := c[r*ldc : r*ldc+16 : r*ldc+16]
		for j := range acc {
			cr[j] += acc[j]
		}
	}
}

// widen converts len(dst) FLOAT16/BFLOAT16 elements to float32.
func widen(dt DType, dst []float32, src []uint16) {
	n := len(dst)
	need(len(src) >= n)
	done := 0
	if asmDT(dt) && n >= 8 {
		done = n &^ 7
		cvtAsm(dt, &dst[0], unsafe.Pointer(&src[0]), done)
	}
	if dt == BFloat16 {
		for i := done; i < n; i++ {
			dst[i] = bf16(src[i])
		}
		return
	}
	tab := f16Tab()
	for i := done; i < n; i++ {
		dst[i] = tab[src[i]]
	}
}

// ---- sparse kernels ----

// spLayout describes a prepared sparse weight's panel layout (see Sparse).
type spLayout struct {
	dt     DType
	p      format.NM
	quad   bool // 2:4: one index word per group, bf16 values in lane pairs
	groups int
}

// wordsPerPanel returns the index words of one panel.
func (lay *spLayout) wordsPerPanel() int {
	if lay.quad {
		return lay.groups
	}
	return lay.groups * lay.p.N
}

// spmvPanels adds the product of np sparse panels of 8 outputs (values
// from element voff of vals, index words from ioff of idx) with x to
// y[8p:8p+8]. The generic AVX2 kernel (M <= 8) reads x up to 8 floats past
// groups*M: x must have groups*M+8 elements for it.
func spmvPanels(lay *spLayout, x []float32, vals *wbuf, voff int, idx []uint32, ioff, np int, y []float32) {
	kept := lay.groups * lay.p.N
	need(np >= 1 && lay.groups >= 1 && len(x) >= lay.groups*lay.p.M && len(y) >= 8*np &&
		vals.len() >= voff+np*kept*8 && len(idx) >= ioff+np*lay.wordsPerPanel())
	if asmDT(lay.dt) {
		if lay.quad {
			spmv24Asm(lay.dt, &x[0], vals.at(voff), &idx[ioff], lay.groups, np, &y[0])
			return
		}
		if lay.p.M <= 8 {
			need(len(x) >= lay.groups*lay.p.M+8)
			spmvAsm(lay.dt, lay.p.N, &x[0], vals.at(voff), &idx[ioff], lay.groups, lay.p.M, np, &y[0])
			return
		}
	}
	spmvGo(lay, x, vals, voff, idx, ioff, np, y)
}

// spmvGo is the portable sparse GEMV on the same layouts.
func spmvGo(lay *spLayout, x []float32, vals *wbuf, voff int, idx []uint32, ioff, np int, y []float32) {
	var tab *[1 << 16]float32
	if lay.dt == Float16 {
		tab = f16Tab()
	}
	n, m, groups := lay.p.N, lay.p.M, lay.groups
	kept := groups * n
	wpp := lay.wordsPerPanel()
	// val returns the value of lane l at kept position t of the panel
	// whose values start at vb.
	val := func(vb, t, l int) float32 {
		switch {
		case lay.dt == Float32:
			return vals.f32[vb+t*8+l]
		case lay.dt == BFloat16 && lay.quad:
			return bf16(vals.u16[vb+(t/2*8+l)*2+t%2])
		case lay.dt == BFloat16:
			return bf16(vals.u16[vb+t*8+l])
		}
		return tab[vals.u16[vb+t*8+l]]
	}
	for q := 0; q < np; q++ {
		var acc [8]float32
		words := idx[ioff+q*wpp : ioff+(q+1)*wpp]
		vb := voff + q*kept*8
		for g := 0; g < groups; g++ {
			xg := x[g*m : g*m+m]
			for s := 0; s < n; s++ {
				t := g*n + s
				var wd uint32
				if lay.quad {
					wd = words[g] >> (2 * s) & 0x33333333
				} else {
					wd = words[t]
				}
				for l := range acc {
					acc[l] += val(vb, t, l) * xg[wd>>(4*l)&15]
				}
			}
		}
		yq := y[q*8 : q*8+8 : q*8+8]
		for l := range acc {
			yq[l] += acc[l]
		}
	}
}

// spPrep expands one sparse panel (kept = groups*N steps; values from
// element voff of src, index words idx) into the scratch form of the
// sparse GEMM kernels: off[8t+l] = (g*M + idx) << sh, the byte offset of
// the gathered row in a transposed block with 2^sh-byte rows, and
// vals[8t+l] the float32 value. Only the assembly path uses it.
func spPrep(lay *spLayout, off []uint32, vals []float32, idx []uint32, src *wbuf, voff, sh int) {
	kept := lay.groups * lay.p.N
	need(lay.groups >= 1 && len(off) >= 8*kept && len(vals) >= 8*kept &&
		len(idx) >= lay.wordsPerPanel() && src.len() >= voff+8*kept && sh >= 2 && sh <= 8)
	if lay.quad {
		spPrep24Asm(lay.dt, &off[0], &vals[0], &idx[0], src.at(voff), lay.groups, 4<<sh, 30-sh)
		return
	}
	spPrepAsm(lay.dt, &off[0], &vals[0], &idx[0], src.at(voff), lay.groups, lay.p.N, lay.p.M<<sh, 28-sh)
}

// spmmTile runs a sparse GEMM micro-kernel for r outputs, lanes
// l0..l0+r-1 of a panel scratch (off, vals: 8 per step), and mb rows of
// the transposed block xt (rows of ld floats; in rows), accumulating into
// yt[j*mb+i] (one FMA chain per element, continued across calls). ld = 32: the AVX2 kernel (r <= 3, mb a multiple of 8);
// ld = 64: the AVX-512 kernel (r <= 4, mb a multiple of 16).
func spmmTile(ld, mb, r, l0 int, xt []float32, in int, off []uint32, vals []float32, steps int, yt []float32) {
	need(r >= 1 && l0 >= 0 && l0+r <= 8 && mb >= 8 && mb <= ld && steps >= 1 &&
		len(xt) >= in*ld && len(off) >= 8*steps && len(vals) >= 8*steps && len(yt) >= r*mb)
	if ld == 64 {
		need(r <= 4 && mb%16 == 0)
		spmmZAsm(mb, r, &xt[0], &off[l0], &vals[0], l0, steps, &yt[0])
		return
	}
	need(ld == 32 && r <= 3 && mb%8 == 0 && (r < 3 || l0 <= 4)) // R3 reads lanes l0..l0+3
	spmmAsm(mb, r, &xt[0], &off[l0], &vals[0], l0, steps, &yt[0])
}

// spmmPanels runs the AVX2 sparse GEMM micro-kernels over pn full panels
// (8 lanes each) of a panel group's scratch in one call: panel k's steps
// start at off[k*pstride:] and vals[k*pstride:], its accumulators at
// yt[k*8*mb:] ([lane][row]), each panel's lanes in the tiles spmmTile
// would run (0-2, 3-5, 6-7), with the same bits.
func spmmPanels(mb int, xt []float32, in int, off []uint32, vals []float32, pstride, pn, steps int, yt []float32) {
	need(mb >= 8 && mb <= 32 && mb%8 == 0 && pn >= 1 && steps >= 1 && pstride >= 8*steps &&
		len(xt) >= in*32 && len(off) >= (pn-1)*pstride+8*steps && len(vals) >= (pn-1)*pstride+8*steps &&
		len(yt) >= pn*spLanes*mb)
	spmmPanelsAsm(mb, &xt[0], &off[0], &vals[0], 4*pstride, pn, steps, &yt[0])
}

// spmmPanelsOn routes the AVX2 sparse GEMM's full panels through
// spmmPanels (tests turn it off to compare with the per-tile calls).
var spmmPanelsOn = true

// transposeBlock writes blk[c*ld + r] = x[(r0+r)*in + c] for r < rows
// (<= ld), c < in, and zeroes the rows' tail lanes up to a multiple of pad.
func transposeBlock(blk, x []float32, r0, rows, in, ld, pad int) {
	need(len(blk) >= in*ld && len(x) >= (r0+rows)*in && rows <= ld)
	r := 0
	c8 := in &^ 7
	if asmOn() && c8 > 0 {
		for ; r+8 <= rows; r += 8 {
			transposeAsm(&blk[r], ld, &x[(r0+r)*in], in, c8/8)
		}
	}
	for ; r < rows; r++ {
		xr := x[(r0+r)*in : (r0+r+1)*in]
		for c := 0; c < c8; c++ {
			blk[c*ld+r] = xr[c]
		}
	}
	for r := 0; r < rows; r++ {
		xr := x[(r0+r)*in : (r0+r+1)*in]
		for c := c8; c < in; c++ {
			blk[c*ld+r] = xr[c]
		}
	}
	if end := min(ld, (rows+pad-1)/pad*pad); end > rows {
		for c := 0; c < in; c++ {
			clear(blk[c*ld+rows : c*ld+end])
		}
	}
}

// storeLanes writes y[i*ldy + l] = bias[l] + yt[l*mb + i] (without bias:
// yt[l*mb + i]; with add: y[i*ldy + l] += yt[l*mb + i], bias ignored) for
// i < rows, l < lanes (<= 8): the micro-kernels' [lane][row] results into
// row-major y.
func storeLanes(y []float32, ldy int, yt []float32, mb, rows, lanes int, bias *[8]float32, add bool) {
	need(lanes <= 8 && rows <= mb && len(yt) >= lanes*mb && (rows == 0 || len(y) >= (rows-1)*ldy+lanes))
	i := 0
	if asmOn() && lanes == 8 {
		for ; i+8 <= rows; i += 8 {
			switch {
			case add:
				transposeAddAsm(&y[i*ldy], ldy, &yt[i], mb, 1)
			case bias != nil:
				transposeBiasAsm(&y[i*ldy], ldy, &yt[i], mb, 1, &bias[0])
			default:
				transposeAsm(&y[i*ldy], ldy, &yt[i], mb, 1)
			}
		}
	}
	for ; i < rows; i++ {
		yr := y[i*ldy : i*ldy+lanes]
		switch {
		case add:
			for l := range yr {
				yr[l] += yt[l*mb+i]
			}
		case bias == nil:
			for l := range yr {
				yr[l] = yt[l*mb+i]
			}
		default:
			for l := range yr {
				yr[l] = bias[l] + yt[l*mb+i]
			}
		}
	}
}
