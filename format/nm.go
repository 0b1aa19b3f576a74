package format

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/bits"
	"strconv"
	"strings"
	"sync"
)

// NM is an N:M structured-sparsity pattern: in every group of M consecutive
// elements along a row, exactly N are kept. Valid patterns satisfy
// 1 <= N < M <= 16.
//
// The nm encoding of a weight [rows, cols] pruned along cols stores the
// values section (the kept values of every row, in order: rows *
// cols*N/M elements) followed immediately by the index section: for each
// kept value its position inside its group (0..M-1), IndexBits bits each,
// as a bit stream that is LSB-first within each byte (bit i of a row's
// stream is bit i%8 of byte i/8 of that row). Each row of the index section
// is padded to whole bytes with zero bits. Inside a group the indices are
// strictly increasing.
type NM struct{ N, M int }

// nmMaxM is the largest group size a valid pattern may have.
const nmMaxM = 16

// ParseNM parses "N:M" (decimal digits only, e.g. "2:4") and validates the
// pattern. Errors wrap ErrPattern.
func ParseNM(s string) (NM, error) {
	ns, ms, ok := strings.Cut(s, ":")
	if !ok {
		return NM{}, fmt.Errorf("pattern %q: want N:M: %w", s, ErrPattern)
	}
	n, errN := nmParseSmall(ns)
	m, errM := nmParseSmall(ms)
	if errN != nil || errM != nil {
		return NM{}, fmt.Errorf("pattern %q: N and M must be decimal integers: %w", s, ErrPattern)
	}
	p := NM{N: n, M: m}
	if err := p.Validate(); err != nil {
		return NM{}, err
	}
	return p, nil
}

// nmParseSmall parses a short string of ASCII digits.
func nmParseSmall(s string) (int, error) {
	if s == "" || len(s) > 9 {
		return 0, strconv.ErrSyntax
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, strconv.ErrSyntax
		}
	}
	return strconv.Atoi(s)
}

// String formats the pattern as "N:M".
func (p NM) String() string { return strconv.Itoa(p.N) + ":" + strconv.Itoa(p.M) }

// Validate checks 1 <= N < M <= 16; errors wrap ErrPattern.
func (p NM) Validate() error {
	if p.N < 1 || p.N >= p.M || p.M > nmMaxM {
		return fmt.Errorf("pattern %s: need 1 <= N < M <= %d: %w", p, nmMaxM, ErrPattern)
	}
	return nil
}

// IndexBits is the number of bits per stored in-group index,
// ceil(log2 M): 1 for M=2, 2 for M=3..4, 3 for M=5..8, 4 for M=9..16.
// It returns 0 for M < 2.
func (p NM) IndexBits() int {
	if p.M < 2 {
		return 0
	}
	return bits.Len(uint(p.M - 1))
}

// KeptPerRow returns cols*N/M, the number of values kept per row. The
// pattern must be valid (ErrPattern) and cols a positive multiple of M
// (ErrShape): rows are never silently padded.
func (p NM) KeptPerRow(cols int) (int, error) {
	if err := p.Validate(); err != nil {
		return 0, err
	}
	if cols <= 0 || cols%p.M != 0 {
		return 0, fmt.Errorf("pattern %s: %d columns is not a positive multiple of %d: %w", p, cols, p.M, ErrShape)
	}
	return cols / p.M * p.N, nil
}

// IndexRowBytes returns the bytes of one row of the index section,
// ceil(KeptPerRow(cols)*IndexBits/8).
func (p NM) IndexRowBytes(cols int) (int, error) {
	kept, err := p.KeptPerRow(cols)
	if err != nil {
		return 0, err
	}
	b := p.IndexBits()
	if kept > (math.MaxInt-7)/b {
		return 0, fmt.Errorf("pattern %s: index row of %d columns overflows: %w", p, cols, ErrShape)
	}
	return (kept*b + 7) / 8, nil
}

// nmMul multiplies non-negative ints, reporting overflow of int64 and int.
func nmMul(a, b int64) (int64, bool) {
	if a < 0 || b < 0 {
		return 0, false
	}
	hi, lo := bits.Mul64(uint64(a), uint64(b))
	if hi != 0 || lo > math.MaxInt64 || lo > uint64(math.MaxInt) {
		return 0, false
	}
	return int64(lo), true
}

// NMSizes returns the exact byte sizes of the values section
// (rows*KeptPerRow*elemSize) and of the index section
// (rows*IndexRowBytes) of an nm tensor [rows, cols], with overflow-checked
// arithmetic. A bad pattern wraps ErrPattern; rows < 1, a bad cols, an
// elemSize < 1 or any overflow (of either size, their sum, or the dense
// element count rows*cols) wraps ErrShape.
func NMSizes(p NM, rows, cols, elemSize int) (valueBytes, indexBytes int64, err error) {
	g, err := nmGeometry(p, rows, cols)
	if err != nil {
		return 0, 0, err
	}
	if elemSize < 1 {
		return 0, 0, fmt.Errorf("pattern %s: element size %d: %w", p, elemSize, ErrShape)
	}
	vb, ok1 := nmMul(int64(g.total), int64(elemSize))
	ib, ok2 := nmMul(int64(rows), int64(g.rowBytes))
	if !ok1 || !ok2 || vb > math.MaxInt64-ib {
		return 0, 0, fmt.Errorf("pattern %s: [%d, %d] with %d-byte elements: sizes overflow: %w",
			p, rows, cols, elemSize, ErrShape)
	}
	return vb, ib, nil
}

// nmGeom is the checked geometry of an nm tensor [rows, cols].
type nmGeom struct {
	p         NM
	rows      int
	cols      int
	groups    int // groups per row, cols/M
	kept      int // kept values per row
	total     int // rows*kept
	bits      int // bits per index
	groupBits int // N*bits, the bits of one group's indices
	rowBytes  int // bytes of one packed index row
}

// nmGeometry validates the pattern and shape. Besides the per-row sizes it
// checks that rows*cols (the dense element count), rows*kept and
// rows*rowBytes fit an int.
func nmGeometry(p NM, rows, cols int) (nmGeom, error) {
	rowBytes, err := p.IndexRowBytes(cols)
	if err != nil {
		return nmGeom{}, err
	}
	if rows < 1 {
		return nmGeom{}, fmt.Errorf("pattern %s: %d rows: %w", p, rows, ErrShape)
	}
	if _, ok := nmMul(int64(rows), int64(cols)); !ok {
		return nmGeom{}, fmt.Errorf("pattern %s: [%d, %d] overflows: %w", p, rows, cols, ErrShape)
	}
	if _, ok := nmMul(int64(rows), int64(rowBytes)); !ok {
		return nmGeom{}, fmt.Errorf("pattern %s: [%d, %d] index section overflows: %w", p, rows, cols, ErrShape)
	}
	kept := cols / p.M * p.N
	b := p.IndexBits()
	return nmGeom{
		p: p, rows: rows, cols: cols,
		groups: cols / p.M, kept: kept, total: rows * kept,
		bits: b, groupBits: p.N * b, rowBytes: rowBytes,
	}, nil
}

// checkLen returns an ErrShape error when have != want.
func (g *nmGeom) checkLen(what string, have, want int) error {
	if have != want {
		return fmt.Errorf("pattern %s, [%d, %d]: %s has %d entries, want %d: %w",
			g.p, g.rows, g.cols, what, have, want, ErrShape)
	}
	return nil
}

// checkIdx validates unpacked indices: each < M and strictly increasing
// inside its group.
func (g *nmGeom) checkIdx(idx []uint8) error {
	// Rows in parallel; the error reported is the first row's, whatever
	// the core count.
	var mu sync.Mutex
	firstRow, firstErr := g.rows, error(nil)
	parallelFor(g.rows*g.kept, max(g.kept, 1), func(lo, hi int) {
		k := max(g.kept, 1)
		if r, err := g.checkIdxRows(idx, lo/k, hi/k); err != nil {
			mu.Lock()
			if r < firstRow {
				firstRow, firstErr = r, err
			}
			mu.Unlock()
		}
	})
	return firstErr
}

// checkIdxRows checks rows [r0, r1), returning the first bad row.
func (g *nmGeom) checkIdxRows(idx []uint8, r0, r1 int) (int, error) {
	n, m := g.p.N, uint8(g.p.M)
	if n == 2 {
		// Pairs: a group is valid when its first index is below its
		// second, and the second below M. The slow loop names the fault.
		for r := r0; r < r1; r++ {
			row := idx[r*g.kept : (r+1)*g.kept]
			for i := 0; i+1 < len(row); i += 2 {
				if row[i] >= row[i+1] || row[i+1] >= m {
					if bad, err := g.checkIdxRowsSlow(idx, r, r+1); err != nil {
						return bad, err
					}
					break
				}
			}
		}
		return r1, nil
	}
	return g.checkIdxRowsSlow(idx, r0, r1)
}

// checkIdxRowsSlow is checkIdxRows for any N, naming the bad slot.
func (g *nmGeom) checkIdxRowsSlow(idx []uint8, r0, r1 int) (int, error) {
	n, m := g.p.N, uint8(g.p.M)
	for r := r0; r < r1; r++ {
		row := idx[r*g.kept : (r+1)*g.kept]
		for gi := 0; gi < g.groups; gi++ {
			grp := row[gi*n : (gi+1)*n]
			prev := -1
			for k, v := range grp {
				if v >= m || int(v) <= prev {
					return r, g.idxError(r, gi, k, grp)
				}
				prev = int(v)
			}
		}
	}
	return r1, nil
}

// idxError describes a bad group (found at its k-th index).
func (g *nmGeom) idxError(row, group, k int, grp []uint8) error {
	if int(grp[k]) >= g.p.M {
		return fmt.Errorf("pattern %s: row %d, group %d: index %d at slot %d is >= M (%d): %w",
			g.p, row, group, grp[k], k, g.p.M, ErrIndex)
	}
	return fmt.Errorf("pattern %s: row %d, group %d: indices %v not strictly increasing at slot %d: %w",
		g.p, row, group, grp, k, ErrIndex)
}

// SplitNM splits a dense row-major [rows, cols] matrix by a keep mask of the
// same length, which must keep exactly N entries in every group of M
// (otherwise ErrIndex), into the kept values (rows*kept) and their in-group
// indices (rows*kept, each 0..M-1, increasing within a group).
func SplitNM(p NM, rows, cols int, dense []float32, keep []bool) (values []float32, idx []uint8, err error) {
	g, err := nmGeometry(p, rows, cols)
	if err != nil {
		return nil, nil, err
	}
	if err := g.checkLen("dense", len(dense), rows*cols); err != nil {
		return nil, nil, err
	}
	if err := g.checkLen("keep mask", len(keep), rows*cols); err != nil {
		return nil, nil, err
	}
	// Check the mask before allocating the outputs.
	keep = keep[:rows*cols]
	for base := 0; base < len(keep); base += p.M {
		c := 0
		for _, k := range keep[base : base+p.M] {
			if k {
				c++
			}
		}
		if c != p.N {
			return nil, nil, fmt.Errorf("pattern %s: row %d, group %d: keep mask keeps %d of %d, want %d: %w",
				p, base/cols, base%cols/p.M, c, p.M, p.N, ErrIndex)
		}
	}
	values = make([]float32, g.total)
	idx = make([]uint8, g.total)
	if p.N == 2 && p.M == 4 {
		parallelFor(len(keep), 4, func(lo, hi int) { split24(dense[lo:hi], keep[lo:hi], values[lo/2:hi/2], idx[lo/2:hi/2]) })
		return values, idx, nil
	}
	j := 0
	for base := 0; base < len(keep); base += p.M {
		for o, k := range keep[base : base+p.M] {
			if k {
				values[j] = dense[base+o]
				idx[j] = uint8(o)
				j++
			}
		}
	}
	return values, idx, nil
}

// ExpandNM is the inverse of SplitNM: it writes the dense [rows, cols]
// matrix with the kept values at their indices and zeros elsewhere. The
// indices are validated first (each < M, strictly increasing in a group;
// ErrIndex), so dense is untouched on error.
func ExpandNM(p NM, rows, cols int, values []float32, idx []uint8, dense []float32) error {
	g, err := nmGeometry(p, rows, cols)
	if err != nil {
		return err
	}
	if err := g.checkLen("values", len(values), g.total); err != nil {
		return err
	}
	if err := g.checkLen("indices", len(idx), g.total); err != nil {
		return err
	}
	if err := g.checkLen("dense", len(dense), rows*cols); err != nil {
		return err
	}
	if err := g.checkIdx(idx); err != nil {
		return err
	}
	clear(dense)
	for j, v := range values {
		grp := j / p.N // global group number
		dense[grp*p.M+int(idx[j])] = v
	}
	return nil
}

// PackNMIndices packs in-group indices (rows*kept, validated: ErrIndex)
// into the index section layout; dst must be exactly rows*IndexRowBytes
// bytes (ErrShape). Padding bits are written as zero.
func PackNMIndices(p NM, rows, cols int, idx []uint8, dst []byte) error {
	g, err := nmGeometry(p, rows, cols)
	if err != nil {
		return err
	}
	if err := g.checkLen("indices", len(idx), g.total); err != nil {
		return err
	}
	if err := g.checkLen("packed index bytes", len(dst), rows*g.rowBytes); err != nil {
		return err
	}
	if err := g.checkIdx(idx); err != nil {
		return err
	}
	b := uint(g.bits)
	k := max(g.kept, 1)
	parallelFor(rows*g.kept, k, func(lo, hi int) { packNMRows(&g, b, idx, dst, lo/k, hi/k) })
	return nil
}

// packNMRows packs the index rows [r0, r1).
func packNMRows(g *nmGeom, b uint, idx []uint8, dst []byte, r0, r1 int) {
	for r := r0; r < r1; r++ {
		out := dst[r*g.rowBytes : (r+1)*g.rowBytes]
		var acc uint64
		var nacc uint
		o := 0
		for _, v := range idx[r*g.kept : (r+1)*g.kept] {
			acc |= uint64(v) << nacc
			nacc += b
			if nacc >= 8 {
				out[o] = byte(acc)
				o++
				acc >>= 8
				nacc -= 8
			}
		}
		if nacc > 0 {
			out[o] = byte(acc)
			o++
		}
		clear(out[o:])
	}
}

// UnpackNMIndices unpacks and validates an index section: its length must
// be exactly rows*IndexRowBytes (ErrShape), every index < M and strictly
// increasing inside its group, and every padding bit zero (ErrIndex, naming
// row and group). idx must have rows*kept entries.
func UnpackNMIndices(p NM, rows, cols int, packed []byte, idx []uint8) error {
	g, err := nmGeometry(p, rows, cols)
	if err != nil {
		return err
	}
	if err := g.checkLen("indices", len(idx), g.total); err != nil {
		return err
	}
	if err := g.checkLen("packed index bytes", len(packed), rows*g.rowBytes); err != nil {
		return err
	}
	for r := 0; r < rows; r++ {
		if err := g.unpackRow(r, packed[r*g.rowBytes:(r+1)*g.rowBytes], idx[r*g.kept:(r+1)*g.kept]); err != nil {
			return err
		}
	}
	return nil
}

// unpackRow unpacks and validates packed index row r (rowBytes bytes) into
// out (kept entries).
func (g *nmGeom) unpackRow(r int, row []byte, out []uint8) error {
	if err := g.checkPadding(r, row); err != nil {
		return err
	}
	n, m := g.p.N, g.p.M
	mask := uint64(1)<<uint(g.bits) - 1
	pos := 0
	for gi := 0; gi < g.groups; gi++ {
		code := nmReadBits(row, pos, g.groupBits)
		pos += g.groupBits
		grp := out[gi*n : (gi+1)*n]
		prev := -1
		for k := range grp {
			v := int(code & mask)
			code >>= uint(g.bits)
			grp[k] = uint8(v)
			if v >= m || v <= prev {
				return g.idxError(r, gi, k, grp[:k+1])
			}
			prev = v
		}
	}
	return nil
}

// ValidateNMIndices performs UnpackNMIndices' checks on a packed index
// section without unpacking it: memory use is constant (per-pattern lookup
// tables, built once) and it works a row at a time, a byte or a 64-bit
// word per step.
func ValidateNMIndices(p NM, rows, cols int, packed []byte) error {
	g, err := nmGeometry(p, rows, cols)
	if err != nil {
		return err
	}
	if err := g.checkLen("packed index bytes", len(packed), rows*g.rowBytes); err != nil {
		return err
	}
	c := newNMRowChecker(&g)
	for r := 0; r < rows; r++ {
		if err := c.check(r, packed[r*g.rowBytes:(r+1)*g.rowBytes]); err != nil {
			return err
		}
	}
	return nil
}

// nmRowChecker validates packed index rows of one geometry.
type nmRowChecker struct {
	g         *nmGeom
	byteOK    []uint64 // nil unless whole bytes hold whole groups
	table     []uint64 // group bitset, or nil to use sw
	sw        nmSWAR
	perByte   int // groups per byte when byteOK != nil
	fullBytes int // leading bytes of a row checked with byteOK
	perLoad   int // groups per 64-bit load in the bulk loop
	gmask     uint64
}

func newNMRowChecker(g *nmGeom) nmRowChecker {
	t := nmTablesFor(g.p)
	c := nmRowChecker{
		g: g, byteOK: t.byteOK, table: t.groupOK, sw: t.swar,
		perLoad: 57 / g.groupBits, gmask: uint64(1)<<uint(g.groupBits) - 1,
	}
	if t.byteOK != nil {
		// With groups of 1, 2, 4 or 8 bits, whole bytes hold whole groups
		// and are checked with one lookup each.
		c.perByte = 8 / g.groupBits
		c.fullBytes = g.groups / c.perByte
	}
	return c
}

// check validates packed index row r.
func (c *nmRowChecker) check(r int, row []byte) error {
	g := c.g
	if err := g.checkPadding(r, row); err != nil {
		return err
	}
	for i, b := range row[:c.fullBytes] {
		if c.byteOK[b>>6]&(1<<(b&63)) == 0 {
			// Find the offending group for the message.
			for k := 0; k < c.perByte; k++ {
				code := uint64(b) >> uint(k*g.groupBits) & c.gmask
				if !nmGroupValid(g.p, g.bits, code) {
					return g.groupError(r, i*c.perByte+k, code)
				}
			}
		}
	}
	pos, gi := c.fullBytes*8, c.fullBytes*c.perByte
	w := uint(g.groupBits)
	table, sw, gmask := c.table, c.sw, c.gmask
	// Bulk: one unaligned 64-bit load yields at least 57 bits, that is
	// perLoad whole groups. The two loops are the table and the SWAR check,
	// written out so that nothing in them is a call.
	for perLoad := c.perLoad; perLoad > 0 && gi+perLoad <= g.groups && pos>>3+8 <= len(row); {
		v := binary.LittleEndian.Uint64(row[pos>>3:]) >> uint(pos&7)
		bad := -1
		if table != nil {
			for k := 0; k < perLoad; k++ {
				code := v & gmask
				v >>= w
				if table[code>>6]&(1<<(code&63)) == 0 {
					bad = k
					break
				}
			}
		} else {
			for k := 0; k < perLoad; k++ {
				code := v & gmask
				v >>= w
				even := code & sw.lanes
				odd := code >> sw.b & sw.lanes
				even2 := code >> (2 * sw.b) & sw.lanes
				if ((odd|sw.g1)-even-sw.one1)&sw.g1 != sw.g1 ||
					((even2|sw.g2)-odd-sw.one2)&sw.g2 != sw.g2 ||
					code>>sw.lastShift&sw.fieldMask > sw.maxAllowed {
					bad = k
					break
				}
			}
		}
		if bad >= 0 {
			return g.groupError(r, gi+bad, nmReadBits(row, pos+bad*g.groupBits, g.groupBits))
		}
		gi += perLoad
		pos += perLoad * g.groupBits
	}
	for ; gi < g.groups; gi++ {
		code := nmReadBits(row, pos, g.groupBits)
		pos += g.groupBits
		valid := false
		if table != nil {
			valid = table[code>>6]&(1<<(code&63)) != 0
		} else {
			valid = sw.valid(code)
		}
		if !valid {
			return g.groupError(r, gi, code)
		}
	}
	return nil
}

// checkPadding checks the unused high bits of a packed row's last byte.
func (g *nmGeom) checkPadding(r int, row []byte) error {
	used := (g.kept * g.bits) % 8
	if used == 0 || len(row) == 0 {
		return nil
	}
	if last := row[len(row)-1]; last>>uint(used) != 0 {
		return fmt.Errorf("pattern %s: row %d: padding bits of the last index byte %#02x are not zero: %w",
			g.p, r, last, ErrIndex)
	}
	return nil
}

// groupError decodes a group's code to describe why it is invalid.
func (g *nmGeom) groupError(r, gi int, code uint64) error {
	grp := make([]uint8, g.p.N)
	for k := range grp {
		grp[k] = uint8(code >> uint(k*g.bits) & (1<<uint(g.bits) - 1))
	}
	prev := -1
	for k, v := range grp {
		if int(v) >= g.p.M || int(v) <= prev {
			return g.idxError(r, gi, k, grp)
		}
		prev = int(v)
	}
	// Unreachable for a consistent table; still report rather than panic.
	return fmt.Errorf("pattern %s: row %d, group %d: invalid indices %v: %w", g.p, r, gi, grp, ErrIndex)
}

// nmReadBits reads w <= 64 bits starting at bit pos of the LSB-first
// stream b. The caller guarantees pos+w <= 8*len(b).
func nmReadBits(b []byte, pos, w int) uint64 {
	i, sh := pos>>3, uint(pos&7)
	var v uint64
	if i+8 <= len(b) {
		v = binary.LittleEndian.Uint64(b[i:]) >> sh
		if sh+uint(w) > 64 {
			// Only when the stream has a ninth byte (pos+w <= 8*len(b)).
			v |= uint64(b[i+8]) << (64 - sh)
		}
	} else {
		// Near the end of the row: at most 7 bytes remain, so at most
		// 56-sh bits are wanted.
		var tmp [8]byte
		copy(tmp[:], b[i:])
		v = binary.LittleEndian.Uint64(tmp[:]) >> sh
	}
	if w < 64 {
		v &= 1<<uint(w) - 1
	}
	return v
}

// nmGroupValid decodes a group's N indices from code and checks them.
func nmGroupValid(p NM, b int, code uint64) bool {
	mask := uint64(1)<<uint(b) - 1
	prev := -1
	for k := 0; k < p.N; k++ {
		v := int(code & mask)
		if v >= p.M || v <= prev {
			return false
		}
		prev = v
		code >>= uint(b)
	}
	return true
}

// nmTableMaxBits bounds the group codes that get a lookup table (a bitset of
// 2^bits entries: at most 8 KiB per pattern).
const nmTableMaxBits = 16

// nmPatternTables are the lookup tables of one pattern.
type nmPatternTables struct {
	groupOK []uint64 // bitset over group codes; nil when groups are too wide
	byteOK  []uint64 // bitset over bytes of whole groups; nil unless 8%groupBits == 0
	swar    nmSWAR   // used when groupOK is nil
}

// valid reports whether a group's code holds N strictly increasing indices
// below M.
func (t *nmPatternTables) valid(code uint64) bool {
	if t.groupOK != nil {
		return t.groupOK[code>>6]&(1<<(code&63)) != 0
	}
	return t.swar.valid(code)
}

// nmSWAR checks a whole group code at once ("SIMD within a register").
// With b-bit fields f0..f(N-1) packed from bit 0, masking with lanes keeps
// the even fields f0, f2, ... each in a 2b-bit lane (its upper b bits
// zero); shifting by b first gives the odd fields, by 2b the even fields
// from f2 on. Lane-wise (x | guard) - y - one, with the guard bit 2^b of
// each active lane, leaves the guard bit set exactly when x > y, and no
// active lane borrows from another (the value stays in [0, 2^(b+1)-2]);
// inactive lanes lie above the active ones, so their borrows only run
// upward, where nothing is checked.
type nmSWAR struct {
	b          uint
	lanes      uint64 // b ones at bit 2kb, for every lane
	g1, one1   uint64 // active lanes for f(2k+1) > f(2k)
	g2, one2   uint64 // active lanes for f(2k+2) > f(2k+1)
	lastShift  uint   // (N-1)*b
	fieldMask  uint64
	maxAllowed uint64 // M-1
}

func newNMSWAR(p NM) nmSWAR {
	b := uint(p.IndexBits())
	s := nmSWAR{b: b, lastShift: uint(p.N-1) * b, fieldMask: 1<<b - 1, maxAllowed: uint64(p.M - 1)}
	for k := 0; 2*uint(k)*b < 64; k++ {
		at := 2 * uint(k) * b
		s.lanes |= s.fieldMask << at
		if 2*k+1 <= p.N-1 {
			s.g1 |= 1 << (at + b)
			s.one1 |= 1 << at
		}
		if 2*k+2 <= p.N-1 {
			s.g2 |= 1 << (at + b)
			s.one2 |= 1 << at
		}
	}
	return s
}

func (s *nmSWAR) valid(code uint64) bool {
	even := code & s.lanes
	odd := code >> s.b & s.lanes
	even2 := code >> (2 * s.b) & s.lanes
	ok1 := ((odd|s.g1)-even-s.one1)&s.g1 == s.g1
	ok2 := ((even2|s.g2)-odd-s.one2)&s.g2 == s.g2
	return ok1 && ok2 && code>>s.lastShift&s.fieldMask <= s.maxAllowed
}

var nmTables [nmMaxM + 1][nmMaxM + 1]struct {
	once sync.Once
	t    nmPatternTables
}

// nmTablesFor returns the (cached) lookup tables of a valid pattern.
func nmTablesFor(p NM) *nmPatternTables {
	e := &nmTables[p.N][p.M]
	e.once.Do(func() {
		e.t.swar = newNMSWAR(p)
		b := p.IndexBits()
		w := p.N * b
		if w > nmTableMaxBits {
			return
		}
		set := make([]uint64, (1<<uint(w)+63)/64)
		// Enumerate the valid groups directly: strictly increasing N-subsets
		// of 0..M-1 (C(M, N) of them), rather than testing every code.
		var rec func(k, from int, code uint64)
		rec = func(k, from int, code uint64) {
			if k == p.N {
				set[code>>6] |= 1 << (code & 63)
				return
			}
			for v := from; v <= p.M-(p.N-k); v++ {
				rec(k+1, v+1, code|uint64(v)<<uint(k*b))
			}
		}
		rec(0, 0, 0)
		e.t.groupOK = set
		if 8%w != 0 {
			return
		}
		byteOK := make([]uint64, 4)
		for c := 0; c < 256; c++ {
			ok := true
			for k := 0; k < 8; k += w {
				code := uint64(c) >> uint(k) & (1<<uint(w) - 1)
				ok = ok && set[code>>6]&(1<<(code&63)) != 0
			}
			if ok {
				byteOK[c>>6] |= 1 << (c & 63)
			}
		}
		e.t.byteOK = byteOK
	})
	return &e.t
}

// pairs24[mask] are the two set positions of a 4-bit mask with exactly
// two bits set (other entries are unused).
var pairs24 = func() (t [16][2]uint8) {
	for m := 0; m < 16; m++ {
		k := 0
		for b := 0; b < 4 && k < 2; b++ {
			if m>>b&1 == 1 {
				t[m][k] = uint8(b)
				k++
			}
		}
	}
	return t
}()

// split24 is SplitNM's loop for 2:4 masks already checked to keep two of
// every four: branch-free on the mask.
func split24(dense []float32, keep []bool, values []float32, idx []uint8) {
	for g := 0; g < len(keep)/4; g++ {
		k := keep[4*g : 4*g+4 : 4*g+4]
		m := b2u(k[0]) | b2u(k[1])<<1 | b2u(k[2])<<2 | b2u(k[3])<<3
		pr := pairs24[m]
		values[2*g], values[2*g+1] = dense[4*g+int(pr[0])], dense[4*g+int(pr[1])]
		idx[2*g], idx[2*g+1] = pr[0], pr[1]
	}
}

func b2u(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}
