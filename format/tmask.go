package format

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/bits"
	"sync"
)

// The double-pruned transpose. For an nm weight W [rows, cols] (N:M along
// each row), W_dp additionally keeps, for every column c and every group of
// M consecutive rows, at most N of W's kept entries; W_dpᵀ [cols, rows] is
// then N:M-sparse along its rows too (after padding with explicit zeros).
//
// A transpose mask stores W_dp as one bit per kept value of W, in W's values
// order (row-major over [rows, kept]); bit j of a row is bit j%8 of byte
// j/8 of that row (LSB first), and each row is padded to whole bytes with
// zero bits. rows must be a multiple of M.

// tmGeom is the checked geometry of a transpose mask over W [rows, cols].
type tmGeom struct {
	nmGeom
	rowGroups    int // rows/M
	maskRowBytes int // ceil(kept/8)
}

func tmGeometry(p NM, rows, cols int) (tmGeom, error) {
	g, err := nmGeometry(p, rows, cols)
	if err != nil {
		return tmGeom{}, err
	}
	if rows%p.M != 0 {
		return tmGeom{}, fmt.Errorf("pattern %s: transpose of [%d, %d] needs rows a multiple of %d: %w",
			p, rows, cols, p.M, ErrShape)
	}
	// rows*maskRowBytes <= rows*cols, which nmGeometry checked.
	return tmGeom{nmGeom: g, rowGroups: rows / p.M, maskRowBytes: (g.kept + 7) / 8}, nil
}

// TransposeMaskRowBytes returns the bytes of one mask row, ceil(kept/8)
// with kept = KeptPerRow(cols).
func TransposeMaskRowBytes(p NM, cols int) (int, error) {
	kept, err := p.KeptPerRow(cols)
	if err != nil {
		return 0, err
	}
	return kept/8 + (kept%8+7)/8, nil
}

// TransposeMaskSize returns the exact byte size of the transpose mask of
// an nm weight [rows, cols]: rows*TransposeMaskRowBytes(cols). rows must be
// a positive multiple of M (ErrShape).
func TransposeMaskSize(p NM, rows, cols int) (int64, error) {
	g, err := tmGeometry(p, rows, cols)
	if err != nil {
		return 0, err
	}
	return int64(rows) * int64(g.maskRowBytes), nil
}

// maskPaddingError checks the padding bits of mask row r.
func (g *tmGeom) maskPaddingError(r int, row []byte) error {
	used := g.kept % 8
	if used == 0 {
		return nil
	}
	if last := row[len(row)-1]; last>>uint(used) != 0 {
		return fmt.Errorf("pattern %s: transpose mask row %d: padding bits of the last byte %#02x are not zero: %w",
			g.p, r, last, ErrMask)
	}
	return nil
}

// PackTransposeMask packs keep bits (rows*kept, in W's values order) into
// dst, which must be exactly TransposeMaskSize bytes. It does not check the
// per-column limit, which needs W's indices: see ValidateTransposeMask.
func PackTransposeMask(p NM, rows, cols int, keep []bool, dst []byte) error {
	g, err := tmGeometry(p, rows, cols)
	if err != nil {
		return err
	}
	if err := g.checkLen("keep bits", len(keep), g.total); err != nil {
		return err
	}
	if err := g.checkLen("transpose mask bytes", len(dst), rows*g.maskRowBytes); err != nil {
		return err
	}
	kept := max(g.kept, 1)
	parallelFor(rows*g.kept, kept, func(lo, hi int) {
		for r := lo / kept; r < hi/kept; r++ {
			out := dst[r*g.maskRowBytes : (r+1)*g.maskRowBytes]
			clear(out)
			for j, k := range keep[r*g.kept : (r+1)*g.kept] {
				out[j>>3] |= b2u(k) << uint(j&7) // branch-free: the bits are random
			}
		}
	})
	return nil
}

// UnpackTransposeMask unpacks a transpose mask into keep bits (rows*kept,
// in W's values order), checking its length (ErrShape) and that its padding
// bits are zero (ErrMask).
func UnpackTransposeMask(p NM, rows, cols int, mask []byte, keep []bool) error {
	g, err := tmGeometry(p, rows, cols)
	if err != nil {
		return err
	}
	if err := g.checkLen("keep bits", len(keep), g.total); err != nil {
		return err
	}
	if err := g.checkLen("transpose mask bytes", len(mask), rows*g.maskRowBytes); err != nil {
		return err
	}
	for r := 0; r < rows; r++ {
		row := mask[r*g.maskRowBytes : (r+1)*g.maskRowBytes]
		if err := g.maskPaddingError(r, row); err != nil {
			return err
		}
		out := keep[r*g.kept : (r+1)*g.kept]
		for j := range out {
			out[j] = row[j>>3]>>uint(j&7)&1 != 0
		}
	}
	return nil
}

// ValidateTransposeMask checks a transpose mask against its weight's packed
// index section: lengths (ErrShape), mask padding bits zero, and for every
// column and group of M rows at most N kept bits (ErrMask, naming the row
// group and column). The indices are decoded (and checked, ErrIndex) one
// row at a time: memory is O(cols), not O(tensor).
func ValidateTransposeMask(p NM, rows, cols int, packedIdx, mask []byte) error {
	g, err := tmGeometry(p, rows, cols)
	if err != nil {
		return err
	}
	if err := g.checkLen("packed index bytes", len(packedIdx), rows*g.rowBytes); err != nil {
		return err
	}
	if err := g.checkLen("transpose mask bytes", len(mask), rows*g.maskRowBytes); err != nil {
		return err
	}
	checker := newNMRowChecker(&g.nmGeom)
	ot := tmOccupancyFor(p)
	n, m := p.N, p.M
	b := uint(g.bits)
	fmask := uint64(1)<<b - 1
	nmask := uint64(1)<<uint(n) - 1
	gbits := g.groupBits
	gmask := uint64(1)<<uint(gbits) - 1
	words := (cols + 63) / 64
	// occ: the columns the current row keeps, as a bitmap. planes: for
	// every column, the number of kept bits in the current row group,
	// bit-sliced (plane k holds bit k of every column's count); counts
	// reach at most M <= 16, so five planes suffice.
	occ := make([]uint64, words)
	var planes [5][]uint64
	for k := range planes {
		planes[k] = make([]uint64, words)
	}
	for r := 0; r < rows; r++ {
		mrow := mask[r*g.maskRowBytes : (r+1)*g.maskRowBytes]
		if err := g.maskPaddingError(r, mrow); err != nil {
			return err
		}
		irow := packedIdx[r*g.rowBytes : (r+1)*g.rowBytes]
		if err := checker.check(r, irow); err != nil {
			return err
		}
		clear(occ)
		gi := 0
		if ot.aligned {
			// Whole chunks of G groups: their indices are one aligned run
			// of 4 or 8 bits inside a byte, and their mask bits one of 2 or
			// 4 bits: one table lookup per chunk.
			nChunks := g.groups / ot.g
			cb, cm, ob := uint(ot.g*gbits), uint(ot.g*n), ot.g*m
			cbMask, cmMask := uint(1)<<cb-1, uint(1)<<cm-1
			for ci := 0; ci < nChunks; ci++ {
				mbit := uint(ci) * cm
				mb := uint(mrow[mbit>>3]) >> (mbit & 7) & cmMask
				if mb == 0 {
					continue
				}
				ibit := uint(ci) * cb
				ib := uint(irow[ibit>>3]) >> (ibit & 7) & cbMask
				o := uint64(ot.table[ib<<cm|mb])
				off := ci * ob
				w, sh := off>>6, uint(off&63)
				occ[w] |= o << sh
				if int(sh)+ob > 64 {
					occ[w+1] |= o >> (64 - sh)
				}
			}
			gi = nChunks * ot.g
		}
		for ipos, mpos := gi*gbits, gi*n; gi < g.groups; gi, ipos, mpos = gi+1, ipos+gbits, mpos+n {
			var mb uint64
			if mpos>>3+8 <= len(mrow) {
				mb = binary.LittleEndian.Uint64(mrow[mpos>>3:]) >> uint(mpos&7) & nmask
			} else {
				mb = nmReadBits(mrow, mpos, n)
			}
			if mb == 0 {
				continue
			}
			var code uint64
			if gbits <= 57 && ipos>>3+8 <= len(irow) {
				code = binary.LittleEndian.Uint64(irow[ipos>>3:]) >> uint(ipos&7) & gmask
			} else {
				code = nmReadBits(irow, ipos, gbits)
			}
			// The group's kept columns, as M bits.
			var o uint64
			if ot.g == 1 {
				o = uint64(ot.table[code<<uint(n)|mb])
			} else {
				for mb != 0 {
					k := uint(bits.TrailingZeros64(mb))
					mb &= mb - 1
					o |= 1 << (code >> (k * b) & fmask)
				}
			}
			off := gi * m
			w, sh := off>>6, uint(off&63)
			occ[w] |= o << sh
			if int(sh)+m > 64 {
				occ[w+1] |= o >> (64 - sh)
			}
		}
		// Add the row to the bit-sliced counters (a ripple-carry adder).
		p0, p1, p2, p3, p4 := planes[0], planes[1], planes[2], planes[3], planes[4]
		for w, x := range occ {
			c0 := p0[w] & x
			p0[w] ^= x
			c1 := p1[w] & c0
			p1[w] ^= c0
			c2 := p2[w] & c1
			p2[w] ^= c1
			c3 := p3[w] & c2
			p3[w] ^= c2
			p4[w] ^= c3
		}
		if r%m != m-1 {
			continue
		}
		// End of a row group: find columns whose count exceeds N.
		for w := range occ {
			var gt uint64
			eq := ^uint64(0)
			for k := 4; k >= 0; k-- {
				pk := planes[k][w]
				if n>>uint(k)&1 == 0 {
					gt |= eq & pk
					eq &^= pk
				} else {
					eq &= pk
				}
			}
			if gt != 0 {
				c := w*64 + bits.TrailingZeros64(gt)
				cnt := 0
				for k := range planes {
					cnt |= int(planes[k][w]>>uint(c&63)&1) << uint(k)
				}
				rg := r / m
				return fmt.Errorf("pattern %s: transpose mask keeps %d entries in column %d of row group %d (rows %d..%d), at most %d allowed: %w",
					p, cnt, c, rg, rg*m, rg*m+m-1, n, ErrMask)
			}
		}
		for k := range planes {
			clear(planes[k])
		}
	}
	return nil
}

// tmOccupancyMaxBits bounds the key of an occupancy table (2^12 entries of
// 4 bytes).
const tmOccupancyMaxBits = 12

// tmOccupancy maps the packed indices and mask bits of g consecutive groups
// to the set of their kept columns (g*M bits).
type tmOccupancy struct {
	g       int      // groups per lookup; 0: no table
	aligned bool     // g groups' indices fill 2, 4 or 8 bits, byte-aligned
	table   []uint32 // index bits << (g*N) | mask bits -> kept columns
}

var tmOccTables [nmMaxM + 1][nmMaxM + 1]struct {
	once sync.Once
	t    tmOccupancy
}

// tmOccupancyFor returns the (cached) occupancy table of a valid pattern.
// Where a group's index bits divide 8, g is the largest count of groups
// whose index bits still divide 8 and whose key fits; otherwise g is 1 if
// one group's key fits, else 0.
func tmOccupancyFor(p NM) *tmOccupancy {
	e := &tmOccTables[p.N][p.M]
	e.once.Do(func() {
		b := p.IndexBits()
		gb := p.N * b
		var t tmOccupancy
		if 8%gb == 0 {
			for g := 8 / gb; g >= 1; g /= 2 {
				if g*(gb+p.N) <= tmOccupancyMaxBits && g*p.M <= 32 {
					t.g, t.aligned = g, true
					break
				}
			}
		}
		if t.g == 0 && gb+p.N <= tmOccupancyMaxBits {
			t.g = 1
		}
		if t.g == 0 {
			e.t = t
			return
		}
		ib, mbits := t.g*gb, t.g*p.N
		t.table = make([]uint32, 1<<uint(ib+mbits))
		for code := 0; code < 1<<uint(ib); code++ {
			for mb := 0; mb < 1<<uint(mbits); mb++ {
				var o uint32
				for k := 0; k < mbits; k++ {
					if mb>>uint(k)&1 == 0 {
						continue
					}
					// Value k sits in group k/N of the chunk. An index >= M
					// (an invalid code, rejected before any lookup) is
					// dropped rather than let spill into the next group.
					if v := code >> uint(k*b) & (1<<uint(b) - 1); v < p.M {
						o |= 1 << uint(k/p.N*p.M+v)
					}
				}
				t.table[code<<uint(mbits)|mb] = o
			}
		}
		e.t = t
	})
	return &e.t
}

// checkInputs checks W's kept values and indices for MaterializeTranspose
// and DoublePruneMagnitude.
func (g *tmGeom) checkInputs(values []float32, idx []uint8) error {
	if err := g.checkLen("values", len(values), g.total); err != nil {
		return err
	}
	if err := g.checkLen("indices", len(idx), g.total); err != nil {
		return err
	}
	return g.checkIdx(idx)
}

// MaterializeTranspose builds W_dpᵀ [cols, rows] as an nm tensor with the
// same pattern along its columns (W's rows): its kept values and in-group
// indices, cols*(rows*N/M) of each, ready for PackNMIndices. In each group
// of M entries of a W_dpᵀ row, the entries of W kept by both W's indices
// and keep come first in index order; when fewer than N, zero-valued
// entries at the lowest unused indices fill the group up to exactly N.
// keep (rows*kept, W's values order) must keep at most N per column and
// row group (ErrMask); idx is validated (ErrIndex).
func MaterializeTranspose(p NM, rows, cols int, values []float32, idx []uint8, keep []bool) (tValues []float32, tIdx []uint8, err error) {
	g, err := tmGeometry(p, rows, cols)
	if err != nil {
		return nil, nil, err
	}
	if err := g.checkInputs(values, idx); err != nil {
		return nil, nil, err
	}
	if err := g.checkLen("keep bits", len(keep), g.total); err != nil {
		return nil, nil, err
	}
	n, m := p.N, p.M
	keptT := g.rowGroups * n // kept per row of W_dpᵀ
	// cols*keptT = cols*rows*N/M < rows*cols: fits.
	tValues = make([]float32, cols*keptT)
	tIdx = make([]uint8, cols*keptT)
	present := make([]uint16, cols) // per column: row offsets kept in this row group
	vals := make([]float32, cols*m) // per column and row offset: the value
	for rg := 0; rg < g.rowGroups; rg++ {
		for o := 0; o < m; o++ {
			r := rg*m + o
			base := r * g.kept
			for j := 0; j < g.kept; j++ {
				if !keep[base+j] {
					continue
				}
				c := j/n*m + int(idx[base+j])
				present[c] |= 1 << uint(o)
				vals[c*m+o] = values[base+j]
			}
		}
		for c := 0; c < cols; c++ {
			set := present[c]
			present[c] = 0
			if cnt := bits.OnesCount16(set); cnt > n {
				return nil, nil, fmt.Errorf("pattern %s: keep bits keep %d entries in column %d of row group %d (rows %d..%d), at most %d allowed: %w",
					p, cnt, c, rg, rg*m, rg*m+m-1, n, ErrMask)
			}
			kept := set
			for bits.OnesCount16(set) < n {
				set |= ^set & (set + 1) // the lowest unused offset
			}
			out := c*keptT + rg*n
			for s := 0; set != 0; s++ {
				o := bits.TrailingZeros16(set)
				set &= set - 1
				tIdx[out+s] = uint8(o)
				if kept&(1<<uint(o)) != 0 {
					tValues[out+s] = vals[c*m+o]
				}
			}
		}
	}
	return tValues, tIdx, nil
}

// DoublePruneMagnitude is the reference double-pruning rule: for every
// column and group of M rows it keeps the N entries of largest magnitude
// among W's kept entries there (all of them when there are at most N; ties
// go to the lower row; a NaN counts as larger than any number). It returns
// keep bits in W's values order, ready for PackTransposeMask.
func DoublePruneMagnitude(p NM, rows, cols int, values []float32, idx []uint8) (keep []bool, err error) {
	g, err := tmGeometry(p, rows, cols)
	if err != nil {
		return nil, err
	}
	if err := g.checkInputs(values, idx); err != nil {
		return nil, err
	}
	keep = make([]bool, g.total)
	if p.N == 2 && p.M == 4 {
		// Row groups are independent: split them over the cores.
		kept := cols / 2
		parallelFor(len(values), 4*kept, func(lo, hi int) {
			doublePrune24((hi-lo)/kept, cols, values[lo:hi], idx[lo:hi], keep[lo:hi])
		})
	} else {
		doublePruneGeneral(g, p, cols, values, idx, keep)
	}
	return keep, nil
}

// doublePruneGeneral is DoublePruneMagnitude for any pattern: per group
// of M rows, the kept values of each column ranked by magnitude.
func doublePruneGeneral(g tmGeom, p NM, cols int, values []float32, idx []uint8, keep []bool) {
	n, m := p.N, p.M
	cnt := make([]uint8, cols)
	cand := make([]int, cols*m) // per column: positions in values, in row order
	for rg := 0; rg < g.rowGroups; rg++ {
		for o := 0; o < m; o++ {
			base := (rg*m + o) * g.kept
			for j := 0; j < g.kept; j++ {
				c := j/n*m + int(idx[base+j])
				cand[c*m+int(cnt[c])] = base + j
				cnt[c]++
			}
		}
		for c := 0; c < cols; c++ {
			list := cand[c*m : c*m+int(cnt[c])]
			cnt[c] = 0
			if len(list) <= n {
				for _, pos := range list {
					keep[pos] = true
				}
				continue
			}
			// Rank each candidate: how many beat it (larger magnitude, or
			// equal magnitude and an earlier row). At most M candidates.
			var keys [16]uint32
			for i, pi := range list {
				keys[i] = tmMagnitudeKey(values[pi])
			}
			for i, pi := range list {
				ki := keys[i]
				beaten := 0
				for k := range list {
					if keys[k] > ki || (keys[k] == ki && k < i) {
						beaten++
					}
				}
				keep[pi] = beaten < n
			}
		}
	}
}

// tmMagnitudeKey orders float32 values by magnitude: the bits without the
// sign compare like |v| for numbers, and put NaNs above +Inf.
func tmMagnitudeKey(v float32) uint32 {
	return math.Float32bits(v) &^ (1 << 31)
}

// doublePrune24 is DoublePruneMagnitude for 2:4 (inputs already checked):
// per group of 4 rows, the kept values are laid out by column with key
// |v|+1 (0 for an absent entry, which then never beats a present one),
// and each present entry is kept when fewer than 2 present entries beat
// it (a larger key, or an equal one in an earlier row) — the same ranks
// as the general path, without branches on the data: results are computed
// for every (row, column) of the group, then gathered in values order.
func doublePrune24(rows, cols int, values []float32, idx []uint8, keep []bool) {
	kept := cols / 2
	keys := make([]uint32, 4*cols)
	res := make([]bool, 4*cols)
	for rg := 0; rg < rows/4; rg++ {
		clear(keys)
		for r := 0; r < 4; r++ {
			row := rg*4 + r
			vs := values[row*kept : (row+1)*kept]
			is := idx[row*kept : (row+1)*kept]
			kr := keys[r*cols : (r+1)*cols]
			for j := range vs {
				kr[j/2*4+int(is[j]&3)] = tmMagnitudeKey(vs[j]) + 1
			}
		}
		k0s, k1s, k2s, k3s := keys[:cols], keys[cols:2*cols], keys[2*cols:3*cols], keys[3*cols:4*cols]
		r0s, r1s, r2s, r3s := res[:cols], res[cols:2*cols], res[2*cols:3*cols], res[3*cols:4*cols]
		for c := 0; c < cols; c++ {
			k0, k1, k2, k3 := k0s[c], k1s[c], k2s[c], k3s[c]
			b01, b02, b03 := b2i(k0 >= k1), b2i(k0 >= k2), b2i(k0 >= k3)
			b12, b13, b23 := b2i(k1 >= k2), b2i(k1 >= k3), b2i(k2 >= k3)
			// Absent entries get a value too; it is never read.
			r0s[c] = (1-b01)+(1-b02)+(1-b03) < 2
			r1s[c] = b01+(1-b12)+(1-b13) < 2
			r2s[c] = b02+b12+(1-b23) < 2
			r3s[c] = b03+b13+b23 < 2
		}
		for r := 0; r < 4; r++ {
			row := rg*4 + r
			is := idx[row*kept : (row+1)*kept]
			ks := keep[row*kept : (row+1)*kept]
			rr := res[r*cols : (r+1)*cols]
			for j := range ks {
				ks[j] = rr[j/2*4+int(is[j]&3)]
			}
		}
	}
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}
