package cpu

import (
	"fmt"
	"math"

	"github.com/slopeml/slope/format"
)

// Training helpers: float32 weights that change every optimizer step are
// re-laid into an existing prepared weight's buffers instead of being
// prepared anew (which allocates, and for N:M weights unpacks the
// indices again), and the layouts the backward products need are built
// straight from row-major operands without an explicit transpose.
// A prepared weight being refilled must not be in use by another
// goroutine; the refill itself is single-threaded unless threads > 1.

// PrepareDenseF32 lays out the float32 weight w [out, in] (row-major) as
// PrepareDense does, reusing dst's buffer when dst is a float32 Dense of
// the same shape (dst may be nil), panels split over threads. It returns
// the prepared weight.
func PrepareDenseF32(dst *Dense, w []float32, out, in, threads int) (*Dense, error) {
	if out < 1 || in < 1 || len(w) != out*in {
		return nil, errShape("prepare dense f32", "weight [%d, %d] with %d elements", out, in, len(w))
	}
	d := reuseDense(dst, in, out)
	parallelRange(d.pan.np, ResolveThreads(threads), func(p0, p1 int) { fillPanelsF32(d.pan.w.f32, w, out, in, p0, p1) })
	return d, nil
}

// fillPanelsF32 writes panels [p0, p1) of the layout of w [out, in]
// (row-major) into f.
// A panel is the transpose of its rows of w (8x8 blocks with AVX2).
func fillPanelsF32(f, w []float32, out, in, p0, p1 int) {
	for p := p0; p < p1; p++ {
		rows := min(panelW, out-p*panelW)
		transposeLD(f[p*in*panelW:(p+1)*in*panelW], panelW, w[p*panelW*in:(p*panelW+rows)*in], rows, in, 1)
	}
}

// PrepareDenseKN prepares the weight W [n, k] whose transpose B = Wᵀ is
// given row-major [k, n] (so y = x·Wᵀ = x·B): panel p's row kk is
// b[kk*n+16p : kk*n+16p+16], a contiguous copy. It reuses dst's buffer
// when dst is a float32 Dense of the same shape (dst may be nil), and
// splits the panels over threads. The result equals
// PrepareDense of the transposed matrix.
func PrepareDenseKN(dst *Dense, b []float32, k, n, threads int) (*Dense, error) {
	if k < 1 || n < 1 || len(b) != k*n {
		return nil, errShape("prepare dense kn", "operand [%d, %d] with %d elements", k, n, len(b))
	}
	d := reuseDense(dst, k, n)
	parallelRange(d.pan.np, ResolveThreads(threads), func(p0, p1 int) { fillPanelsKN(d.pan.w.f32, b, k, n, p0, p1) })
	return d, nil
}

// fillPanelsKN writes panels [p0, p1) of the layout of the weight whose
// transpose is b [k, n] (row-major) into f.
func fillPanelsKN(f, b []float32, k, n, p0, p1 int) {
	for p := p0; p < p1; p++ {
		c0, c1 := p*panelW, min(p*panelW+panelW, n)
		pan := f[p*k*panelW : (p+1)*k*panelW]
		for kk := range k {
			copy(pan[kk*panelW:kk*panelW+c1-c0], b[kk*n+c0:kk*n+c1])
		}
	}
}

// reuseDense returns dst when it is a float32 Dense [out = n, in = k],
// else a new zeroed one. Padding lanes are never written, so they stay
// zero across refills.
func reuseDense(dst *Dense, k, n int) *Dense {
	np := (n + panelW - 1) / panelW
	if dst != nil && dst.pan.dt == Float32 && dst.pan.k == k && dst.pan.n == n && len(dst.pan.w.f32) == np*panelW*k {
		return dst
	}
	return &Dense{pan: panels{dt: Float32, k: k, n: n, np: np, w: wbuf{f32: make([]float32, np*panelW*k)}}}
}

// MulAdd adds x·Wᵀ into y: y [m, Out] += x [m, In]·Wᵀ, with the same
// kernels, blocking and per-element order as Linear (Linear starts each
// element from the bias or zero, MulAdd from y's value).
func (d *Dense) MulAdd(y, x []float32, m int, threads int) error {
	return d.product("dense muladd", y, x, m, nil, false, threads)
}

// SetValuesF32 replaces the kept values of a float32 Sparse with vals
// (Out*kept, in the NMWeight values order), keeping its indices: the
// result equals PrepareNM of the same indices and vals. Panels are split
// over threads.
func (s *Sparse) SetValuesF32(vals []float32, threads int) error {
	if err := s.f32Values(); err != nil {
		return err
	}
	if len(vals) != s.out*s.kept {
		return errShape("set values", "%d values, want Out*kept = %d*%d", len(vals), s.out, s.kept)
	}
	f := s.vals.f32
	// A panel is the transpose of its rows of vals (8x8 blocks with AVX2).
	parallelRange(s.np, ResolveThreads(threads), func(p0, p1 int) {
		for p := p0; p < p1; p++ {
			rows := min(spLanes, s.out-p*spLanes)
			transposeLD(f[p*s.kept*spLanes:(p+1)*s.kept*spLanes], spLanes,
				vals[p*spLanes*s.kept:(p*spLanes+rows)*s.kept], rows, s.kept, 1)
		}
	})
	if pad := s.np*spLanes - s.out; pad > 0 { // the last panel's unused lanes
		last := f[(s.np-1)*s.kept*spLanes:]
		for t := 0; t < s.kept; t++ {
			clear(last[t*spLanes+spLanes-pad : (t+1)*spLanes])
		}
	}
	return nil
}

// f32Values checks that s holds float32 values to refill.
func (s *Sparse) f32Values() error {
	if s == nil {
		return errNil
	}
	if s.dt != Float32 {
		return fmt.Errorf("cpu: set values: weight dtype %v, want float32", s.dt)
	}
	if s.vals.f32 == nil {
		return fmt.Errorf("cpu: set values: the weight has indices only (PrepareNMIndices: refill a WithValuesF32 view)")
	}
	return nil
}

// ValuesF32Len is the length of a float32 Sparse's values buffer (the
// panel layout, padding lanes included).
func (s *Sparse) ValuesF32Len() int { return s.np * s.kept * spLanes }

// WithValuesF32 returns a Sparse that shares s's indices and keeps its
// float32 values in buf (ValuesF32Len long, the caller's: fill it with
// SetValuesF32 or SetValuesPanelGatherF32 on the result before use). A
// trainer keeps one Sparse per weight for its static indices
// (PrepareNMIndices) and borrows value buffers per call from a pool,
// since the values are refilled at every call anyway.
func (s *Sparse) WithValuesF32(buf []float32) (*Sparse, error) {
	if s == nil {
		return nil, errNil
	}
	if s.dt != Float32 {
		return nil, fmt.Errorf("cpu: with values: weight dtype %v, want float32", s.dt)
	}
	if len(buf) != s.ValuesF32Len() {
		return nil, errShape("with values", "buffer of %d values, want %d", len(buf), s.ValuesF32Len())
	}
	v := *s
	v.vals = wbuf{f32: buf}
	return &v, nil
}

// NMWeightGrad adds an N:M weight's gradient at its kept positions only:
//
//	g[o*kept+t] += Σ_{r<m} gy[r*out+o]·x[r*in+c],  c = t/N*M + idx[o*kept+t]
//
// for gy [m, out] and x [m, in] row-major and W's in-group indices idx
// given packed as the container stores them (indices: out rows of
// p.IndexRowBytes(in) bytes, format.PackNMIndices): the dense gyᵀ·x
// gathered at W's mask, with half the products for 2:4. The 2:4
// assembly path reads each group's 4-bit code as it is (any bits are
// memory-safe; the loader validated them); the others unpack, and so
// check, the indices for the call. Four paths:
//
//   - 2:4 with AVX-512 or AVX2 (nmGrad24Pair): gyᵀ and xᵀ transposed;
//     per group of 4 columns the rows of W that keep the same two
//     columns go through one kernel (8 rows per call with AVX-512; with
//     AVX2 one call takes them all, 6 at a time), which streams those
//     two columns of xᵀ and each row's gyᵀ once (16- or 8-lane FMA
//     chains, a fixed lane-sum tree): within float32 rounding of the
//     dense product.
//   - AVX-512 and other patterns whose 16 kept positions span at most 32
//     columns (M <= 2N): an assembly kernel loads each row of x in
//     windows of 32 columns, permutes them into each output's 16 kept
//     columns (VPERMT2PS) and runs one FMA chain per kept value over the
//     rows in order, in K blocks of 512 rows added in order: exactly the
//     arithmetic of the dense GEMM (PrepareDenseKN(x) with gyᵀ as A,
//     out >= 4 rows) for those elements, so the result is bit-identical
//     to the dense product gathered at the mask.
//   - other assembly paths: gyᵀ and xᵀ transposed, then eight kept
//     positions of a row per AVX2 call (8-wide FMA chains over the rows
//     and a fixed lane-sum tree): within float32 rounding of the dense
//     product.
//   - without assembly: a Dot per kept position of the transposes.
//
// Windows of kept positions (or rows of W) are split over threads; each
// value is computed by one goroutine in a fixed order, so results do not
// depend on threads.
func NMWeightGrad(g, gy, x []float32, m int, p format.NM, out, in int, indices []byte, threads int) error {
	kept, err := nmGradCheck(g, gy, x, m, p, out, in)
	if err != nil {
		return err
	}
	rb, err := p.IndexRowBytes(in)
	if err != nil {
		return err
	}
	if len(indices) != out*rb {
		return errShape("nm weight grad", "%d index bytes for weight [%d, %d] (%d per row)", len(indices), out, in, rb)
	}
	if m == 0 || out == 0 {
		return nil
	}
	t := ResolveThreads(threads)
	if asmOn() && p == (format.NM{N: 2, M: 4}) {
		return nmGrad24Pair(g, gy, x, m, out, in, kept, indices, rb, t)
	}
	idx := make([]uint8, out*kept)
	if err := format.UnpackNMIndices(p, out, in, indices, idx); err != nil { // (checks them)
		return err
	}
	if asm512On() && 16%p.N == 0 && 16/p.N*p.M <= 32 {
		nmGradZ(g, gy, x, m, p, in, kept, idx, t)
		return nil
	}
	gyTb, xTb := GetF32(m*out), GetF32(m*in)
	defer PutF32(gyTb)
	defer PutF32(xTb)
	gyT, xT := *gyTb, *xTb
	if err := Transpose(gyT, gy, m, out, t); err != nil {
		return err
	}
	if err := Transpose(xT, x, m, in, t); err != nil {
		return err
	}
	m8 := m &^ 7
	if !asmOn() || m8 < 8 {
		parallelRange(out, t, func(o0, o1 int) {
			for o := o0; o < o1; o++ {
				a := gyT[o*m : (o+1)*m]
				for k := 0; k < kept; k++ {
					c := k/p.N*p.M + int(idx[o*kept+k])
					g[o*kept+k] += Dot(a, xT[c*m:(c+1)*m])
				}
			}
		})
		return nil
	}
	// Windows of 8 kept positions per row: their columns (8/N groups) are
	// the same for every row, so a window's rows of xᵀ stay in cache
	// while all the rows of W pass over them.
	windows := (kept + 7) / 8
	parallelRange(windows, t, func(w0, w1 int) {
		var offs [8]int64
		var sums [8]float32
		for win := w0; win < w1; win++ {
			t0 := win * 8
			w := min(8, kept-t0)
			for o := 0; o < out; o++ {
				ir := idx[o*kept : (o+1)*kept]
				for j := range 8 {
					k := t0 + min(j, w-1) // pad with the last position
					offs[j] = int64(4 * (k/p.N*p.M + int(ir[k])) * m)
				}
				a := gyT[o*m : (o+1)*m]
				sddmmAsm(&a[0], &xT[0], &offs, m8, &sums)
				gr := g[o*kept+t0 : o*kept+t0+w]
				for j := range gr {
					s := sums[j]
					if m8 < m {
						xr := xT[offs[j]/4 : offs[j]/4+int64(m)]
						for r := m8; r < m; r++ {
							s += a[r] * xr[r]
						}
					}
					gr[j] += s
				}
			}
		}
	})
	return nil
}

// nmGradZ is NMWeightGrad's AVX-512 path for patterns other than 2:4
// (see there).
func nmGradZ(g, gy, x []float32, m int, p format.NM, in, kept int, idx []uint8, t int) {
	out := len(gy) / m
	windows := (kept + 15) / 16
	parallelRange(windows, t, func(w0, w1 int) {
		var ix [4 * 16]int32
		var res, sum [4 * 16]float32
		for win := w0; win < w1; win++ {
			t0 := win * 16
			w := min(16, kept-t0)
			c0 := t0 / p.N * p.M
			nlo := min(max(in-c0, 0), 16)
			nhi := min(max(in-c0-16, 0), 16)
			masks := (1<<nlo - 1) | (1<<nhi-1)<<16
			for o := 0; o < out; o += 4 {
				r := min(4, out-o)
				for j := 0; j < r; j++ {
					ir := idx[(o+j)*kept : (o+j+1)*kept]
					for l := 0; l < 16; l++ {
						v := int32(0)
						if l < w {
							k := t0 + l
							v = int32(k/p.N*p.M + int(ir[k]) - c0)
						}
						ix[j*16+l] = v
					}
				}
				clear(sum[:r*16])
				// K blocks as the dense GEMM's: each block's chain from
				// zero, added to the sum in block order.
				for rb := 0; rb < m; rb += denseKC {
					n := min(denseKC, m-rb)
					sddmmZAsm(r, &gy[rb*out+o], out, &x[rb*in+c0], in, n, &ix[0], masks, &res[0])
					for i := range r * 16 {
						sum[i] += res[i]
					}
				}
				for j := 0; j < r; j++ {
					gr := g[(o+j)*kept+t0 : (o+j)*kept+t0+w]
					for l := range gr {
						gr[l] += sum[j*16+l]
					}
				}
			}
		}
	})
}

// pairChunkRows is how many rows of W nmGrad24Pair sorts by pattern at a
// time: their rows of gyᵀ (2 KB each at m = 512) stay in L2 while every
// group passes over them, and a pattern's share (about a sixth) fills
// whole kernel calls.
const pairChunkRows = 128

// nmGrad24Pair is NMWeightGrad's assembly path for 2:4. gy and x are
// transposed (rows ld floats apart); then for each chunk of rows of W and
// each group of 4 columns the rows are sorted by the two columns they
// keep there (the group's packed code, from a [byte][row] copy of the
// chunk's indices, so that a group's codes are one contiguous run: read
// in place they took a cache line per row, evicted between groups,
// 1.03-1.07x). The rows that keep the same two columns a, b form a
// segment, which one kernel runs, streaming xᵀ[a], xᵀ[b]
// and each row's gyᵀ once: two dot products per row (2 FMAs per 3 loads
// at 1 row, 16 per 10 at 8 rows per call). It writes each row's two sums
// into the group's slab of res ([group][row of the chunk][2]: 1 KiB per
// group at 128 rows, in L1 while it is written), and after the chunk's
// last group the slabs are added into g row by row. Written straight into
// g, a group's results touched one cache line per row (g's rows are kept
// floats apart), which the next group's rows of gyᵀ had pushed out of
// cache by the time it came back: on Zen 3 the slabs and the AVX2
// segment kernel ran 1.09-1.16x the per-call loop that added into g (at
// 4096x1024, 1024x4096, 1024x1024, 1024x256 and 256x256, m = 512, one
// thread; medians of 21 alternated calls, 2026-11-28; not measured with
// AVX-512). Every kept value is one kernel call's fixed-order dot
// product over the m rows, whatever the chunking and thread count.
func nmGrad24Pair(g, gy, x []float32, m, out, in, kept int, indices []byte, rb, t int) error {
	// Rows of the transposes ld floats apart: a multiple of 16, off the
	// powers of two (a 2 KB stride maps a column's cache lines into two
	// L1 sets, and the transposes then thrash).
	ld := (m + 15) &^ 15
	if ld%128 == 0 {
		ld += 16
	}
	gyTb, xTb := GetF32(ld*out), GetF32(ld*in)
	defer PutF32(gyTb)
	defer PutF32(xTb)
	gyT, xT := *gyTb, *xTb
	transposeLD(gyT, ld, gy, m, out, t)
	transposeLD(xT, ld, x, m, in, t)
	chunks := (out + pairChunkRows - 1) / pairChunkRows
	groups := kept / 2
	slab := 2*pairChunkRows + 16 // off the powers of two
	kern, seg := sddmmPairKernels(), !asm512On()
	parallelRange(chunks, t, func(c0, c1 int) {
		resb := GetF32(groups * slab)
		defer PutF32(resb)
		res := *resb
		var rows [16][pairChunkRows]int32 // by group code a + 4b
		var count [16]int
		codes := make([]byte, rb*pairChunkRows)
		for c := c0; c < c1; c++ {
			o0, o1 := c*pairChunkRows, min(out, (c+1)*pairChunkRows)
			for o := o0; o < o1; o++ {
				for j, b := range indices[o*rb : (o+1)*rb] {
					codes[j*pairChunkRows+o-o0] = b
				}
			}
			gyc := &gyT[o0*ld]
			for grp := 0; grp < groups; grp++ {
				count = [16]int{}
				shift := 4 * (grp & 1)
				for i, b := range codes[grp/2*pairChunkRows : grp/2*pairChunkRows+o1-o0] {
					// The group's 4-bit code: first kept column in bits
					// 0-1, second in bits 2-3.
					key := b >> shift & 15
					rows[key][count[key]] = int32(i)
					count[key]++
				}
				for key, n := range count {
					if n == 0 {
						continue
					}
					// A segment: with AVX2 one call of the segment kernel
					// (batches of 6 rows with the per-call kernels'
					// arithmetic, so the same bits); with AVX-512 the
					// per-call kernels, 8 rows a call.
					xa, xb := xT[(4*grp+key%4)*ld:], xT[(4*grp+key/4)*ld:]
					if seg {
						sddmmPairSegAsm(gyc, 4*ld, &rows[key][0], n, &xa[0], &xb[0], m, &res[grp*slab])
					} else {
						pairSegmentCalls(kern, gyc, 4*ld, rows[key][:n], xa, xb, m, res[grp*slab:])
					}
				}
			}
			// Row by row, so that g streams in order; a cache line of a
			// slab serves 8 consecutive rows (the slabs' stride is off the
			// powers of two, so their lines spread over L1's sets).
			for o := o0; o < o1; o++ {
				gr := g[o*kept : (o+1)*kept]
				s := res[2*(o-o0):]
				for grp := range groups {
					gr[2*grp] += s[grp*slab]
					gr[2*grp+1] += s[grp*slab+1]
				}
			}
		}
	})
	return nil
}

// pairSegmentCalls runs a segment through the per-call kernels kern (the
// one for r rows at kern[r-1]), len(kern) rows a call:
// out[2·rows[j]] and out[2·rows[j]+1] are the dot products of the row
// rows[j] of gy (rows ld bytes apart from gy) with xa and xb over m
// elements, as sddmmPairSegAVX2 sets them.
func pairSegmentCalls(kern []sddmmPairFn, gy *float32, ld int, rows []int32, xa, xb []float32, m int, out []float32) {
	var offs [sddmmPairMax]int64
	var res [2 * sddmmPairMax]float32
	for j := 0; j < len(rows); j += len(kern) {
		r := min(len(kern), len(rows)-j)
		for q, o := range rows[j : j+r] {
			offs[q] = int64(o) * int64(ld)
		}
		kern[r-1](gy, &offs[0], &xa[0], &xb[0], m, &res[0])
		for q, o := range rows[j : j+r] {
			out[2*o], out[2*o+1] = res[2*q], res[2*q+1]
		}
	}
}

// sddmmPairMax is the most rows one sddmmPair kernel call takes (the
// AVX-512 kernel's; the AVX2 one takes 6: len(sddmmPairKernels())).
const sddmmPairMax = 8

// sddmmPairFn is one pattern-pair kernel (see genSDDMMPair in asmgen).
type sddmmPairFn = func(gy *float32, rows *int64, xa, xb *float32, n int, out *float32)

// NMWeightGradRef is NMWeightGrad's reference: each sum in float64,
// rounded once and added.
func NMWeightGradRef(g, gy, x []float32, m int, p format.NM, out, in int, idx []uint8) error {
	kept, err := nmGradCheck(g, gy, x, m, p, out, in)
	if err != nil {
		return err
	}
	if len(idx) != out*kept {
		return errShape("nm weight grad", "%d indices for weight [%d, %d] (%d kept per row)", len(idx), out, in, kept)
	}
	for _, v := range idx {
		if int(v) >= p.M {
			return errShape("nm weight grad", "in-group index %d >= M = %d", v, p.M)
		}
	}
	for o := 0; o < out; o++ {
		for k := 0; k < kept; k++ {
			c := k/p.N*p.M + int(idx[o*kept+k])
			var s float64
			for r := 0; r < m; r++ {
				s += float64(gy[r*out+o]) * float64(x[r*in+c])
			}
			g[o*kept+k] += float32(s)
		}
	}
	return nil
}

// nmGradCheck checks NMWeightGrad's pattern and operand lengths and
// returns the kept values per row.
func nmGradCheck(g, gy, x []float32, m int, p format.NM, out, in int) (int, error) {
	const op = "nm weight grad"
	if p.N < 1 || p.M > 16 || p.N >= p.M || in%p.M != 0 || out < 0 || m < 0 {
		return 0, errShape(op, "pattern %s, weight [%d, %d], m = %d", p, out, in, m)
	}
	kept := in / p.M * p.N
	if len(g) != out*kept || len(gy) != m*out || len(x) != m*in {
		return 0, errShape(op, "g %d, gy %d, x %d elements for weight [%d, %d] (%d kept per row), m = %d",
			len(g), len(gy), len(x), out, in, kept, m)
	}
	return kept, nil
}

// Transpose writes dst [cols, rows] = srcᵀ for src [rows, cols]
// (row-major both). Column chunks of 256 are split over threads; within a
// chunk, strips of 8 rows are transposed 8x8 at a time (assembly) or
// element by element (the rows past the last strip, the columns past the
// last multiple of 8, and without the assembly).
func Transpose(dst, src []float32, rows, cols, threads int) error {
	if rows < 0 || cols < 0 || len(src) != rows*cols || len(dst) != rows*cols {
		return errShape("transpose", "src %d, dst %d elements for [%d, %d]", len(src), len(dst), rows, cols)
	}
	transposeLD(dst, rows, src, rows, cols, threads)
	return nil
}

// transposeLD is Transpose into rows of ldd >= rows floats:
// dst[c*ldd+r] = src[r*cols+c]; dst's elements past rows in each row are
// left as they are. len(dst) >= (cols-1)*ldd+rows is the caller's to
// ensure.
func transposeLD(dst []float32, ldd int, src []float32, rows, cols, threads int) {
	const chunk = 256
	chunks := (cols + chunk - 1) / chunk
	t := ResolveThreads(threads)
	if t == 1 || chunks == 1 { // (no closure: the refills call this per panel)
		for k := range chunks {
			transposeCols(dst, ldd, src, rows, cols, k*chunk, min(k*chunk+chunk, cols))
		}
		return
	}
	parallelRange(chunks, t, func(k0, k1 int) {
		for k := k0; k < k1; k++ {
			transposeCols(dst, ldd, src, rows, cols, k*chunk, min(k*chunk+chunk, cols))
		}
	})
}

// transposeCols is transposeLD for columns [c0, c1) on the caller's
// goroutine.
func transposeCols(dst []float32, ldd int, src []float32, rows, cols, c0, c1 int) {
	r := 0
	if n8 := (c1 - c0) / 8; asmOn() && n8 > 0 {
		for ; r+8 <= rows; r += 8 {
			transposeAsm(&dst[c0*ldd+r], ldd, &src[r*cols+c0], cols, n8)
		}
		for rr := 0; rr < r; rr++ { // the columns past the 8x8 blocks
			for c := c0 + n8*8; c < c1; c++ {
				dst[c*ldd+rr] = src[rr*cols+c]
			}
		}
	}
	for ; r < rows; r++ {
		s := src[r*cols+c0 : r*cols+c1]
		for j, v := range s {
			dst[(c0+j)*ldd+r] = v
		}
	}
}

// PanelGather is a Sparse's value refill from another slice, planned
// once: for each slot of the panel layout, the position of its value in
// that slice (-1: zero). Sparse.SetValuesPanelGatherF32 runs it.
type PanelGather struct {
	src   []int32 // per panel-layout slot
	nVals int     // the length of the slice it reads
}

// Bytes returns the memory the plan holds.
func (g *PanelGather) Bytes() int { return 4 * cap(g.src) }

// Slots returns how many slots of the panel layout the plan fills.
func (g *PanelGather) Slots() int { return len(g.src) }

// PanelGather plans a refill of s's values from another slice of nVals
// values: src holds, per kept value in the NMWeight values order
// (Out*kept), its position in that slice (-1: zero). The plan holds them
// in the panel layout's order, checked once.
func (s *Sparse) PanelGather(src []int32, nVals int) (*PanelGather, error) {
	if s == nil {
		return nil, errNil
	}
	if len(src) != s.out*s.kept {
		return nil, errShape("panel gather", "%d sources, want Out*kept = %d*%d", len(src), s.out, s.kept)
	}
	ps := make([]int32, s.np*s.kept*spLanes)
	for i := range ps {
		ps[i] = -1
	}
	for o := 0; o < s.out; o++ {
		dst := ps[(o/spLanes)*s.kept*spLanes+o%spLanes:]
		for t, j := range src[o*s.kept : (o+1)*s.kept] {
			if int(j) >= nVals || j < -1 {
				return nil, errShape("panel gather", "source %d of %d values", j, nVals)
			}
			dst[t*spLanes] = j
		}
	}
	// In the order SetValuesPanelGatherF32 fills the slots (tiles of
	// gatherPanels panels x gatherSteps steps), so that the plan streams.
	per := s.kept * spLanes
	tiled := make([]int32, 0, len(ps))
	for p0 := 0; p0 < s.np; p0 += gatherPanels {
		p1 := min(p0+gatherPanels, s.np)
		for st := 0; st < s.kept; st += gatherSteps {
			lo, n := st*spLanes, min(gatherSteps, s.kept-st)*spLanes
			for p := p0; p < p1; p++ {
				tiled = append(tiled, ps[p*per+lo:p*per+lo+n]...)
			}
		}
	}
	return &PanelGather{src: tiled, nVals: nVals}, nil
}

// SetValuesPanelGatherF32 sets s's values to vals[src[t]] (0 where
// src[t] < 0) by the plan: the result equals PrepareNM of the gathered
// values. len(vals) must be the plan's nVals; 16 values per AVX-512
// gather or 8 per AVX2 one (1.5-3x the Go loop's rate on Zen 3), the
// tiles below split over threads.
//
// The layout is [panel][step][8 lanes], and a W_dpᵀ panel's sources
// (8 columns of W) lie 16 bytes apart in every row of W, rows a
// power-of-two stride apart: filled panel by panel, each panel walked all
// of W's rows, whose lines fell into a few cache sets and were gone
// before the next panel wanted the rest of them. So the slots are filled
// in tiles of gatherPanels panels x gatherSteps steps, whose sources stay
// in cache across the tile's panels, and the plan holds its sources in
// that order, so that it streams.
func (s *Sparse) SetValuesPanelGatherF32(vals []float32, g *PanelGather, threads int) error {
	if s == nil || g == nil {
		return errNil
	}
	if err := s.f32Values(); err != nil {
		return err
	}
	f := s.vals.f32
	if len(g.src) != len(f) || len(vals) != g.nVals {
		return errShape("set values", "plan of %d slots from %d values, weight of %d slots from %d values", len(g.src), g.nVals, len(f), len(vals))
	}
	per := s.kept * spLanes // slots per panel
	if len(vals) == 0 || per == 0 {
		clear(f)
		return nil
	}
	// Work units: one tile each, split over threads.
	tilesPerBlock := (s.kept + gatherSteps - 1) / gatherSteps
	blocks := (s.np + gatherPanels - 1) / gatherPanels
	parallelRange(blocks*tilesPerBlock, ResolveThreads(threads), func(u0, u1 int) {
		for u := u0; u < u1; u++ {
			p0 := u / tilesPerBlock * gatherPanels
			p1 := min(p0+gatherPanels, s.np)
			lo := u % tilesPerBlock * gatherSteps * spLanes
			n := min(gatherSteps*spLanes, per-lo)
			// The plan holds block p0's panels whole (p0*per slots
			// before it), and within the block the tiles before this
			// one, each (p1-p0) panels of lo/spLanes steps in all.
			src := g.src[p0*per+(p1-p0)*lo:]
			for p := p0; p < p1; p++ {
				gatherRun(f[p*per+lo:p*per+lo+n], vals, src[:n])
				src = src[n:]
			}
		}
	})
	return nil
}

// Tiles of the planned gather: gatherSteps steps of gatherPanels panels
// (for 2:4, 32 rows of W by 512 columns: 32 KiB of sources, 512-byte
// runs of slots). Chosen by a sweep of 12 tile shapes with the Go loop
// at W [4096, 1024] on Zen 3 (2026-11-27, one scratch run of each): this
// one filled 270-342 million slots/s, 8 x 32 152-180, 32 x 16 about 200,
// 128 x 8 and 64 x 32 no more (panel by panel: 88-112).
// BenchmarkTransposeRefill (ops) times the refill as the trainer runs it.
const (
	gatherPanels = 64
	gatherSteps  = 16
)

// gatherRun sets dst[i] = vals[src[i]], 0 where src[i] < 0.
func gatherRun(dst, vals []float32, src []int32) {
	if asm512On() {
		gatherF32AVX512(&dst[0], &vals[0], &src[0], len(dst))
		return
	}
	done := 0
	if asmOn() {
		done = gatherF32AVX2(&dst[0], &vals[0], &src[0], len(dst))
	}
	// Branch-free (a filler's -1 would mispredict): the index clamped to
	// 0 and the loaded bits masked off for a filler.
	for i, j := range src[done:len(dst)] {
		i += done
		neg := j >> 31 // -1 for a filler, else 0
		dst[i] = math.Float32frombits(math.Float32bits(vals[j&^neg]) &^ uint32(neg))
	}
}

// DenseScratch prepares float32 right operands of changing shapes into
// one reused buffer, for products whose operand serves one call
// (attention's per-chunk products). The Dense a Prepare method returns
// is valid until the next Prepare on the same DenseScratch; the
// DenseScratch belongs to one goroutine.
type DenseScratch struct {
	buf []float32
	d   Dense
}

// panels sizes the buffer for a weight [n, k] and returns it, the unused
// lanes of its last panel zero (as PrepareDense leaves them).
func (s *DenseScratch) panels(k, n int) []float32 {
	np := (n + panelW - 1) / panelW
	size := np * panelW * k
	if cap(s.buf) < size {
		s.buf = make([]float32, size)
	}
	f := s.buf[:size]
	s.d = Dense{pan: panels{dt: Float32, k: k, n: n, np: np, w: wbuf{f32: f}}}
	if used := n - (np-1)*panelW; used < panelW {
		last := f[(np-1)*k*panelW:]
		for kk := range k {
			clear(last[kk*panelW+used : (kk+1)*panelW])
		}
	}
	return f
}

// PrepareF32 is PrepareDenseF32 of w [out, in] (row-major), on the
// calling goroutine.
func (s *DenseScratch) PrepareF32(w []float32, out, in int) (*Dense, error) {
	if out < 1 || in < 1 || len(w) != out*in {
		return nil, errShape("prepare dense f32", "weight [%d, %d] with %d elements", out, in, len(w))
	}
	f := s.panels(in, out) // sets s.d
	fillPanelsF32(f, w, out, in, 0, s.d.pan.np)
	return &s.d, nil
}

// PrepareKN is PrepareDenseKN of b [k, n] (the weight's transpose,
// row-major), on the calling goroutine.
func (s *DenseScratch) PrepareKN(b []float32, k, n int) (*Dense, error) {
	if k < 1 || n < 1 || len(b) != k*n {
		return nil, errShape("prepare dense kn", "operand [%d, %d] with %d elements", k, n, len(b))
	}
	f := s.panels(k, n) // sets s.d
	fillPanelsKN(f, b, k, n, 0, s.d.pan.np)
	return &s.d, nil
}
