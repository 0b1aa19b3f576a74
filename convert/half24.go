package convert

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/bits"
	"sync"
	"sync/atomic"

	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/format/slopepb"
)

// The fused 2:4 kernel for weights stored, and kept, as 16-bit floats
// (fp16 or bf16): it reads the stored bits and produces, a group of 4
// rows at a time while it is in cache (select24Row, squares24Row,
// doublePrune24Half), the file's encodings of the NM weight (kept values
// and packed indices) and of its double-pruned transpose mask, and the
// per-row sums of squares of the relative error, without decoding to
// float32 and encoding back. It makes the same choices, bit for bit, as
// MagnitudeMask, format.SplitNM and format.DoublePruneMagnitude on the
// decoded values: for a non-NaN 16-bit float the bits with the sign
// cleared order like its magnitude (as float32's do), and decoding and
// re-encoding a non-NaN value gives back its bits.

// halfFloat is a 16-bit float dtype as the fused kernel sees it.
type halfFloat struct {
	// inf is the bits of +Inf: larger magnitude bits are NaNs.
	inf uint16
	// sq[k] is float64(v)² for the value v of magnitude bits k (exact:
	// 11 or 8 significant bits squared fit a float64's 53).
	sq *[1 << 15]float64
}

// halfFloatOf returns the fused kernel's view of dt, if it is fp16 or
// bf16.
func halfFloatOf(dt slopepb.DType) (halfFloat, bool) {
	switch dt {
	case slopepb.DType_FLOAT16:
		return halfFloat{inf: 0x7c00, sq: f16Squares()}, true
	case slopepb.DType_BFLOAT16:
		return halfFloat{inf: 0x7f80, sq: bf16Squares()}, true
	}
	return halfFloat{}, false
}

func squaresTable(decode func(uint16) float32) *[1 << 15]float64 {
	var t [1 << 15]float64
	for k := range t {
		v := float64(decode(uint16(k)))
		t[k] = v * v
	}
	return &t
}

var (
	f16Squares  = sync.OnceValue(func() *[1 << 15]float64 { return squaresTable(format.Float16ToFloat32) })
	bf16Squares = sync.OnceValue(func() *[1 << 15]float64 { return squaresTable(format.BFloat16ToFloat32) })
)

// quietNaNs sets the quiet bit of every NaN among the little-endian
// 16-bit floats of raw (bit 9 for fp16, bit 6 for bf16), as decoding to
// float32 and encoding back does; every other value is left as it is.
// It reports whether it changed anything.
func (h halfFloat) quietNaNs(raw []byte) bool {
	quiet := uint16(0x0200)
	if h.inf == 0x7f80 {
		quiet = 0x0040
	}
	changed := false
	for i := 0; i+2 <= len(raw); i += 2 {
		v := binary.LittleEndian.Uint16(raw[i:])
		if v&0x7fff > h.inf && v&quiet == 0 {
			binary.LittleEndian.PutUint16(raw[i:], v|quiet)
			changed = true
		}
	}
	return changed
}

// half24Sizes are the byte sizes of the encodings of a 2:4 weight [rows,
// cols] of 16-bit values: the NM tensor's values and index sections and
// the transpose mask, per row.
type half24Sizes struct {
	values, index, mask int
}

func half24SizesOf(cols int) half24Sizes {
	kept := cols / 2
	return half24Sizes{values: 2 * kept, index: (2*kept + 7) / 8, mask: (kept + 7) / 8}
}

// prune24 prunes the row-major [rows, cols] weight w (little-endian 16-bit
// floats of h's dtype; rows and cols multiples of 4) 2:4 by magnitude,
// ties to the lower index, and writes the NM tensor's raw encoding (values
// then packed indices, format.Writer.WriteNM's bytes) to nm and the
// transpose mask (format.DoublePruneMagnitude packed as
// format.Writer.WriteTransposeMask does) to mask. The rows are split over
// the cores in whole groups of 4. A NaN is an error naming the first one
// in row-major order, as MagnitudeMask's.
func (h halfFloat) prune24(rows, cols int, w, nm, mask []byte) (prunedWeight, error) {
	sz := half24SizesOf(cols)
	if rows%4 != 0 || cols%4 != 0 || cols == 0 || len(w) != 2*rows*cols ||
		len(nm) != rows*(sz.values+sz.index) || len(mask) != rows*sz.mask {
		return prunedWeight{}, fmt.Errorf("2:4 kernel: shape [%d %d] with %d, %d and %d bytes: %w", rows, cols, len(w), len(nm), len(mask), format.ErrShape)
	}
	values, index := nm[:rows*sz.values], nm[rows*sz.values:]
	rowW, rowP := make([]float64, rows), make([]float64, rows)
	groups := rows / 4
	var dropped atomic.Int64
	var nanRow atomic.Int64 // the first row with a NaN, whatever the split
	nanRow.Store(math.MaxInt64)
	parallel(groups, max(1, (1<<16)/cols), func(g0, g1 int) {
		lo, hi := 4*g0, 4*g1
		d, nan := h.prune24Rows(cols, w[2*lo*cols:2*hi*cols], values[lo*sz.values:hi*sz.values],
			index[lo*sz.index:hi*sz.index], mask[lo*sz.mask:hi*sz.mask], rowW[lo:hi], rowP[lo:hi])
		dropped.Add(d)
		for r := int64(lo + nan); nan >= 0; {
			if cur := nanRow.Load(); r >= cur || nanRow.CompareAndSwap(cur, r) {
				break
			}
		}
	})
	res := prunedWeight{dropped: dropped.Load()}
	if r := nanRow.Load(); r != math.MaxInt64 {
		return res, h.firstNaN(cols, w, int(r))
	}
	res.errPruned = relErrOfRows(rowW, rowP) // as writeMagnitude sums them
	return res, nil
}

// firstNaN is MagnitudeMask's error for the first NaN of w at or after
// row row0 in row-major order.
func (h halfFloat) firstNaN(cols int, w []byte, row0 int) error {
	for i := row0 * cols; 2*i+2 <= len(w); i++ {
		if binary.LittleEndian.Uint16(w[2*i:])&0x7fff > h.inf {
			return fmt.Errorf("magnitude mask: NaN at row %d, col %d", i/cols, i%cols)
		}
	}
	return fmt.Errorf("magnitude mask: NaN after row %d", row0) // not reached
}

// sel24 is a 2:4 selection: the kept in-group indices i0 < i1 of a group
// whose magnitudes compared as the table index says (see select24).
type sel24 struct {
	code   uint8  // the packed indices, i0 | i1<<2
	s0, s1 uint8  // 16*i0, 16*i1: the kept lanes' shifts in the group's word
	keep   uint64 // 0xffff in the kept lanes
}

// sel24Table[c] for c = b01 | b02<<1 | b03<<2 | b12<<3 | b13<<4 | b23<<5,
// bij = (|w_i| >= |w_j|): an entry is kept when fewer than 2 entries beat
// it (a larger magnitude, or an equal one at a lower index), as in
// magnitudeRows24.
var sel24Table = func() (t [64]sel24) {
	for c := range t {
		b := func(k int) int { return c >> k & 1 }
		b01, b02, b03, b12, b13, b23 := b(0), b(1), b(2), b(3), b(4), b(5)
		beaten := [4]int{
			(1 - b01) + (1 - b02) + (1 - b03),
			b01 + (1 - b12) + (1 - b13),
			b02 + b12 + (1 - b23),
			b03 + b13 + b23,
		}
		var kept []uint8
		for j, n := range beaten {
			if n < 2 {
				kept = append(kept, uint8(j))
			}
		}
		if len(kept) != 2 {
			continue // inconsistent comparisons: never looked up
		}
		t[c] = sel24{code: kept[0] | kept[1]<<2, s0: 16 * kept[0], s1: 16 * kept[1],
			keep: 0xffff<<(16*kept[0]) | 0xffff<<(16*kept[1])}
	}
	return t
}()

const (
	lanes16 = 0x0001000100010001 // 1 in every 16-bit lane
	high16  = 0x8000800080008000 // the top bit of every 16-bit lane
)

// prune24Rows is prune24 on whole groups of 4 rows: w holds them, the
// outputs their slices. It returns the dropped count and, when it met a
// NaN, the first row of the first group of 4 rows holding one (-1
// otherwise; the outputs are then incomplete).
func (h halfFloat) prune24Rows(cols int, w, values, index, mask []byte, rowW, rowP []float64) (dropped int64, nanRow int) {
	var nan int
	if simd, avx512 := prune24SIMDForm(cols); simd {
		if prune24SIMDRan != nil {
			prune24SIMDRan()
		}
		nan = h.prune24RowsSIMD(avx512, cols, w, values, index, mask, rowW, rowP)
	} else {
		nan = h.prune24RowsGo(cols, w, values, index, mask, rowW, rowP)
	}
	if nan >= 0 {
		return 0, nan
	}
	return countDropped(len(rowW), cols, mask), -1
}

// prune24RowsGo is prune24Rows's loop in Go: per group of 4 rows, each
// row's selections (sel24Table indices) and its column keys (|w|+1 where
// kept, 0 where dropped, per lane), then the transpose. It returns the
// first row of the first group of 4 rows holding a NaN, or -1.
func (h halfFloat) prune24RowsGo(cols int, w, values, index, mask []byte, rowW, rowP []float64) int {
	sz := half24SizesOf(cols)
	groups := cols / 4
	sel := make([]uint8, 4*groups)
	ck := make([]uint64, 4*groups)
	for rg := 0; 4*rg < len(rowW); rg++ {
		for o := range 4 {
			r := 4*rg + o
			row, rsel := w[2*r*cols:2*(r+1)*cols], sel[o*groups:(o+1)*groups]
			if !h.select24Row(row, values[r*sz.values:(r+1)*sz.values], index[r*sz.index:(r+1)*sz.index], rsel, ck[o*groups:(o+1)*groups]) {
				return 4 * rg
			}
			rowW[r], rowP[r] = h.squares24Row(row, rsel)
		}
		doublePrune24Half(groups, sel, ck, mask[4*rg*sz.mask:4*(rg+1)*sz.mask])
	}
	return -1
}

// countDropped is the number of kept entries of a 2:4 weight [rows,
// cols] that its transpose mask drops.
func countDropped(rows, cols int, mask []byte) int64 {
	kept := 0
	for _, b := range mask {
		kept += bits.OnesCount8(b) // padding bits are zero
	}
	return int64(rows*cols/2 - kept)
}

// prune24SIMDRan, when set (by the tests, which must see the SIMD
// kernels run, not only agree with the Go form), is called each time
// prune24Rows takes a SIMD kernel; it may be called from several
// goroutines at once.
var prune24SIMDRan func()

// prune24SIMDForm reports whether rows of cols values run on a SIMD
// kernel of this CPU (simd), and whether on the AVX-512 one: widths that
// are multiples of 32 there, of 16 on AVX2.
func prune24SIMDForm(cols int) (simd, avx512 bool) {
	avx512 = prune24AVX512 && cols%32 == 0
	return avx512 || prune24AVX2 && cols%16 == 0, avx512
}

// prune24RowsSIMD is prune24Rows's loop on the AVX-512 kernels (avx512;
// cols a multiple of 32) or the AVX2 ones (cols a multiple of 16): the
// same outputs and sums. It returns the first row of the first group of 4
// rows holding a NaN, or -1.
func (h halfFloat) prune24RowsSIMD(avx512 bool, cols int, w, values, index, mask []byte, rowW, rowP []float64) int {
	sz := half24SizesOf(cols)
	groups := cols / 4
	ck := make([]uint64, 4*groups)
	var bf16 uint64
	if h.inf == 0x7f80 {
		bf16 = 1
	}
	var sums [16]float64
	blocks := cols / 16
	if avx512 {
		blocks = cols / 32
	}
	// The kernels' kept-lane masks per row and block: 32 lanes (AVX-512)
	// or 16 (AVX2).
	var kept32 []uint32
	var kept16 []uint16
	if avx512 {
		kept32 = make([]uint32, 4*blocks)
	} else {
		kept16 = make([]uint16, 4*blocks)
	}
	for rg := 0; 4*rg < len(rowW); rg++ {
		for o := range 4 {
			r := 4*rg + o
			var ok bool
			if avx512 {
				ok = select24RowAVX512(&w[2*r*cols], blocks, uint64(h.inf), bf16, &values[r*sz.values], &index[r*sz.index],
					&ck[o*groups], &kept32[o*blocks], &sums, &index24LUT)
			} else {
				ok = select24RowAVX2(&w[2*r*cols], blocks, uint64(h.inf), bf16, &values[r*sz.values], &index[r*sz.index],
					&ck[o*groups], &kept16[o*blocks], &sums, &shuffle24LUT, &index24LUT)
			}
			if !ok {
				return 4 * rg
			}
			rowW[r], rowP[r] = sumTree8((*[8]float64)(sums[:8])), sumTree8((*[8]float64)(sums[8:]))
		}
		m := &mask[4*rg*sz.mask]
		if avx512 {
			tmask24AVX512(&ck[0], &kept32[0], blocks, 8*groups, 4*blocks, m, sz.mask)
		} else {
			tmask24AVX2(&ck[0], &kept16[0], blocks, 8*groups, 2*blocks, m, sz.mask)
		}
	}
	return -1
}

// shuffle24LUT maps a byte of kept bits (the two groups of 4 16-bit values
// in a 128-bit lane, 2 bits set in each nibble) to the VPSHUFB control
// that moves their 4 kept values, in order, to the lane's low 8 bytes.
var shuffle24LUT = func() (t [256][16]uint8) {
	for b := range t {
		k := 0
		for i := range 8 {
			if b>>i&1 == 1 && k < 4 {
				t[b][2*k], t[b][2*k+1] = uint8(2*i), uint8(2*i+1)
				k++
			}
		}
		for j := 2 * k; j < 16; j++ {
			t[b][j] = 0x80
		}
	}
	return t
}()

// index24LUT maps a byte of kept bits (two groups of 4, 2 bits set in
// each nibble) to their packed index byte (i0 | i1<<2 per group, the
// first group in the low nibble).
var index24LUT = func() (t [256]uint8) {
	code := func(n int) uint8 {
		var c, k uint8
		for j := range 4 {
			if n>>j&1 == 1 {
				c |= uint8(j) << (2 * k)
				k++
			}
		}
		return c
	}
	for b := range t {
		t[b] = code(b&15) | code(b>>4)<<4
	}
	return t
}()

// select24Row prunes one row 2:4: it writes its kept values and packed
// indices and records each group's selection and column keys. It returns
// false at a NaN.
func (h halfFloat) select24Row(w, values, index []byte, sel []uint8, ck []uint64) bool {
	nan := uint64(0x7fff-h.inf) * lanes16 // pushes a NaN's magnitude into its lane's top bit
	n := len(sel)
	w, values, ck = w[:8*n], values[:4*n], ck[:n]
	g := 0
	for ; g+2 <= n; g += 2 {
		x0, x1 := binary.LittleEndian.Uint64(w[8*g:]), binary.LittleEndian.Uint64(w[8*g+8:])
		k0, k1 := x0&^high16, x1&^high16
		if ((k0+nan)|(k1+nan))&high16 != 0 {
			return false
		}
		c0, c1 := select24(k0), select24(k1)
		s0, s1 := &sel24Table[c0], &sel24Table[c1]
		binary.LittleEndian.PutUint64(values[4*g:], s0.pick(x0)|s1.pick(x1)<<32)
		index[g>>1] = s0.code | s1.code<<4
		sel[g], sel[g+1] = c0, c1
		ck[g], ck[g+1] = (k0+lanes16)&s0.keep, (k1+lanes16)&s1.keep
	}
	if g < n { // an odd group count: the last index byte is half padding
		x := binary.LittleEndian.Uint64(w[8*g:])
		k := x &^ high16
		if (k+nan)&high16 != 0 {
			return false
		}
		c := select24(k)
		s := &sel24Table[c]
		binary.LittleEndian.PutUint32(values[4*g:], uint32(s.pick(x)))
		index[g>>1] = s.code
		sel[g], ck[g] = c, (k+lanes16)&s.keep
	}
	return true
}

// select24 returns the sel24Table index of a group with magnitude lanes
// k (all below 0x8000): the six comparisons at once, lane-wise against k
// rotated by one, two and three lanes.
func select24(k uint64) uint8 {
	kh := k | high16
	x := ((kh-bits.RotateLeft64(k, -16))>>15)&lanes16 | // k0>=k1, k1>=k2, k2>=k3, -
		((kh-bits.RotateLeft64(k, -32))>>14)&(2*lanes16) | // k0>=k2, k1>=k3, -, -
		((kh-bits.RotateLeft64(k, 16))>>13)&(4*lanes16) // k0>=k3, -, -, -
	return uint8(x&7 | x>>13&0x18 | x>>27&0x20)
}

// pick returns the kept lanes of a group's word x: the first in the low
// 16 bits, the second above.
func (s *sel24) pick(x uint64) uint64 {
	return uint64(uint16(x>>(s.s0&63))) | uint64(uint16(x>>(s.s1&63)))<<16
}

// squares24Row returns the sums of squares of a row and of its dropped
// entries (the selections sel), added as rowSquares adds them for the
// stored kept entries: element i into partial sum i%8 (group g's lanes
// into sums 4·(g%2)+j), a dropped entry's square times 1, a kept one's
// times 0 (the +0 of (v - v)², and NaN for an infinite v, as there).
func (h halfFloat) squares24Row(w []byte, sel []uint8) (sw, sp float64) {
	sq := h.sq
	w = w[:8*len(sel)]
	var a, b [8]float64
	for g, c := range sel {
		k := binary.LittleEndian.Uint64(w[8*g:]) &^ high16
		s0, s1, s2, s3 := sq[k&0x7fff], sq[k>>16&0x7fff], sq[k>>32&0x7fff], sq[k>>48&0x7fff]
		f := &drop24[c&63]
		o := 4 * (g & 1)
		a[o] += s0
		a[o+1] += s1
		a[o+2] += s2
		a[o+3] += s3
		b[o] += s0 * f[0]
		b[o+1] += s1 * f[1]
		b[o+2] += s2 * f[2]
		b[o+3] += s3 * f[3]
	}
	return sumTree8(&a), sumTree8(&b)
}

// drop24[c] is 1 for the lanes sel24Table[c] drops, 0 for those it keeps.
var drop24 = func() (t [64][4]float64) {
	for c, s := range sel24Table {
		for j := range 4 {
			if s.keep>>(16*j)&1 == 0 {
				t[c][j] = 1
			}
		}
	}
	return t
}()

// doublePrune24Half is doublePrune24 on one group of 4 rows, from their
// selections and column keys (sel and ck, groups entries per row): in
// every column the kept entries of largest key are kept, at most 2, ties
// to the lower row. It writes the 4 rows of the transpose mask (in each
// row's values order).
func doublePrune24Half(groups int, sel []uint8, ck []uint64, mask []byte) {
	mrow := len(mask) / 4
	sel0, sel1, sel2, sel3 := sel[:groups], sel[groups:2*groups], sel[2*groups:3*groups], sel[3*groups:4*groups]
	ck0, ck1, ck2, ck3 := ck[:groups], ck[groups:2*groups], ck[2*groups:3*groups], ck[3*groups:4*groups]
	m0, m1, m2, m3 := mask[:mrow], mask[mrow:2*mrow], mask[2*mrow:3*mrow], mask[3*mrow:4*mrow]
	var acc uint32 // the rows' mask bits of up to 4 groups, a byte per row
	for g := range sel0 {
		c0, c1, c2, c3 := ck0[g], ck1[g], ck2[g], ck3[g]
		// Lane-wise ci >= cj (keys are below 0x8000), as 0 or 1 per lane.
		b01, b02, b03 := ge16(c0, c1), ge16(c0, c2), ge16(c0, c3)
		b12, b13, b23 := ge16(c1, c2), ge16(c1, c3), ge16(c2, c3)
		// Per lane, how many rows beat each row; kept when below 2 (bit 1
		// of the complement set).
		t0 := ^(3*lanes16 - b01 - b02 - b03)
		t1 := ^(b01 + 2*lanes16 - b12 - b13)
		t2 := ^(b02 + b12 + lanes16 - b23)
		t3 := ^(b03 + b13 + b23)
		sh := uint32(2 * (g & 3))
		acc |= (uint32(pair24(sel0[g], t0)) | uint32(pair24(sel1[g], t1))<<8 |
			uint32(pair24(sel2[g], t2))<<16 | uint32(pair24(sel3[g], t3))<<24) << sh
		if g&3 == 3 || g == groups-1 {
			m0[g>>2], m1[g>>2], m2[g>>2], m3[g>>2] = uint8(acc), uint8(acc>>8), uint8(acc>>16), uint8(acc>>24)
			acc = 0
		}
	}
}

// pair24 returns the transpose-mask bits of a group's two kept values
// (selection c): bit 1 of t's kept lanes.
func pair24(c uint8, t uint64) uint8 {
	// Bit 1 of lane j moves to bit 48+j: lane j's bit at 16j, times
	// 2^(48-15j); the other products land on distinct bits elsewhere.
	t4 := (t >> 1 & lanes16) * (1<<48 | 1<<33 | 1<<18 | 1<<3) >> 48 & 15
	return pair24Table[uint(c&63)<<4|uint(t4)]
}

// pair24Table[c<<4|t4] is bits i0 and i1 of t4, for sel24Table[c]'s kept
// indices i0 < i1.
var pair24Table = func() (t [64 << 4]uint8) {
	for c, s := range sel24Table {
		i0, i1 := s.code&3, s.code>>2
		for t4 := range 16 {
			t[c<<4|t4] = uint8(t4>>i0&1 | t4>>i1&1<<1)
		}
	}
	return t
}()

// ge16 compares the 16-bit lanes of a and b, all below 0x8000: 1 in a
// lane where a's is >= b's, else 0.
func ge16(a, b uint64) uint64 { return ((a | high16) - b) >> 15 & lanes16 }
