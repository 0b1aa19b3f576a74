package format

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
)

// Sizes for overflow cases that hold on 32- and 64-bit platforms alike:
// halfInt squared is a quarter of the int range, and (1 << wideShift)
// squared overflows it (2^31 and 2^40 on 64-bit platforms).
const (
	halfInt   = 1 << (strconv.IntSize/2 - 1)
	wideShift = strconv.IntSize/2 + 8
)

// nmtAllPatterns lists every valid pattern 1 <= N < M <= 16.
func nmtAllPatterns() []NM {
	var ps []NM
	for m := 2; m <= 16; m++ {
		for n := 1; n < m; n++ {
			ps = append(ps, NM{n, m})
		}
	}
	return ps
}

// nmtRandomKeep returns a keep mask with exactly N true per group of M.
func nmtRandomKeep(rng *rand.Rand, p NM, rows, cols int) []bool {
	keep := make([]bool, rows*cols)
	for g := 0; g < rows*cols/p.M; g++ {
		perm := rng.Perm(p.M)
		for _, k := range perm[:p.N] {
			keep[g*p.M+k] = true
		}
	}
	return keep
}

func nmtRandomDense(rng *rand.Rand, n int) []float32 {
	d := make([]float32, n)
	for i := range d {
		d[i] = float32(rng.NormFloat64())
		if d[i] == 0 {
			d[i] = 1
		}
	}
	return d
}

// nmtRefPack packs indices bit by bit, the obvious way.
func nmtRefPack(p NM, rows, cols int, idx []uint8) []byte {
	kept := cols / p.M * p.N
	b := p.IndexBits()
	rb := (kept*b + 7) / 8
	out := make([]byte, rows*rb)
	for r := 0; r < rows; r++ {
		for j := 0; j < kept; j++ {
			for k := 0; k < b; k++ {
				if idx[r*kept+j]>>k&1 == 1 {
					bit := j*b + k
					out[r*rb+bit/8] |= 1 << (bit % 8)
				}
			}
		}
	}
	return out
}

// nmtRefValidate checks packed indices bit by bit; it returns "" when valid,
// else a short reason.
func nmtRefValidate(p NM, rows, cols int, packed []byte) string {
	kept := cols / p.M * p.N
	b := p.IndexBits()
	rb := (kept*b + 7) / 8
	if len(packed) != rows*rb {
		return "length"
	}
	for r := 0; r < rows; r++ {
		row := packed[r*rb : (r+1)*rb]
		for bit := kept * b; bit < rb*8; bit++ {
			if row[bit/8]>>(bit%8)&1 != 0 {
				return "padding"
			}
		}
		for g := 0; g < kept/p.N; g++ {
			prev := -1
			for k := 0; k < p.N; k++ {
				v := 0
				for i := 0; i < b; i++ {
					bit := (g*p.N+k)*b + i
					v |= int(row[bit/8]>>(bit%8)&1) << i
				}
				if v >= p.M || v <= prev {
					return fmt.Sprintf("row %d, group %d", r, g)
				}
				prev = v
			}
		}
	}
	return ""
}

func TestNMParseString(t *testing.T) {
	for _, p := range nmtAllPatterns() {
		got, err := ParseNM(p.String())
		if err != nil || got != p {
			t.Errorf("ParseNM(%q) = %v, %v", p.String(), got, err)
		}
	}
	if s := (NM{2, 4}).String(); s != "2:4" {
		t.Errorf("String = %q", s)
	}
	for _, s := range []string{"", "2", "2:", ":4", "2:4:", "2:4:8", "a:4", "2:b", " 2:4", "2:4 ", "+2:4", "-1:4",
		"2.0:4", "0:4", "4:4", "5:4", "1:17", "2:1", "0:0", "99999999999999999999:4", "2:0x10", "１:2"} {
		if p, err := ParseNM(s); !errors.Is(err, ErrPattern) {
			t.Errorf("ParseNM(%q) = %v, %v; want ErrPattern", s, p, err)
		}
	}
}

func TestNMValidate(t *testing.T) {
	for n := -2; n <= 18; n++ {
		for m := -2; m <= 18; m++ {
			want := n >= 1 && n < m && m <= 16
			err := NM{n, m}.Validate()
			if (err == nil) != want {
				t.Errorf("Validate(%d:%d) = %v, want ok=%v", n, m, err, want)
			}
			if err != nil && !errors.Is(err, ErrPattern) {
				t.Errorf("Validate(%d:%d) = %v, want ErrPattern", n, m, err)
			}
		}
	}
}

func TestNMIndexBits(t *testing.T) {
	want := map[int]int{2: 1, 3: 2, 4: 2, 5: 3, 6: 3, 7: 3, 8: 3, 9: 4, 12: 4, 16: 4}
	for m, b := range want {
		if got := (NM{1, m}).IndexBits(); got != b {
			t.Errorf("IndexBits(M=%d) = %d, want %d", m, got, b)
		}
	}
	for _, p := range nmtAllPatterns() {
		b := p.IndexBits()
		if 1<<b < p.M || 1<<(b-1) >= p.M {
			t.Errorf("IndexBits(%s) = %d is not ceil(log2 M)", p, b)
		}
	}
}

func TestNMKeptPerRowAndIndexRowBytes(t *testing.T) {
	cases := []struct {
		p              NM
		cols           int
		kept, rowBytes int
	}{
		{NM{2, 4}, 4, 2, 1},
		{NM{2, 4}, 8, 4, 1},
		{NM{2, 4}, 12, 6, 2},
		{NM{1, 2}, 6, 3, 1},
		{NM{1, 2}, 16, 8, 1},
		{NM{1, 2}, 18, 9, 2},
		{NM{2, 8}, 16, 4, 2},
		{NM{4, 8}, 8, 4, 2},
		{NM{15, 16}, 16, 15, 8},
		{NM{3, 5}, 5, 3, 2},
		{NM{2, 4}, 4096, 2048, 512},
	}
	for _, c := range cases {
		k, err := c.p.KeptPerRow(c.cols)
		if err != nil || k != c.kept {
			t.Errorf("%s KeptPerRow(%d) = %d, %v; want %d", c.p, c.cols, k, err, c.kept)
		}
		rb, err := c.p.IndexRowBytes(c.cols)
		if err != nil || rb != c.rowBytes {
			t.Errorf("%s IndexRowBytes(%d) = %d, %v; want %d", c.p, c.cols, rb, err, c.rowBytes)
		}
	}
	for _, cols := range []int{0, -4, 2, 5, 6, 4097} {
		if _, err := (NM{2, 4}).KeptPerRow(cols); !errors.Is(err, ErrShape) {
			t.Errorf("KeptPerRow(%d) = %v; want ErrShape", cols, err)
		}
		if _, err := (NM{2, 4}).IndexRowBytes(cols); !errors.Is(err, ErrShape) {
			t.Errorf("IndexRowBytes(%d) = %v; want ErrShape", cols, err)
		}
	}
	for _, p := range []NM{{0, 4}, {4, 4}, {1, 17}, {2, 1}} {
		if _, err := p.KeptPerRow(16 * 17); !errors.Is(err, ErrPattern) {
			t.Errorf("%v KeptPerRow = %v; want ErrPattern", p, err)
		}
		if _, err := p.IndexRowBytes(16 * 17); !errors.Is(err, ErrPattern) {
			t.Errorf("%v IndexRowBytes = %v; want ErrPattern", p, err)
		}
	}
	// Huge column counts must not overflow silently.
	huge := math.MaxInt / 16 * 16
	if _, err := (NM{15, 16}).IndexRowBytes(huge); !errors.Is(err, ErrShape) {
		t.Errorf("IndexRowBytes(huge) = %v; want ErrShape", err)
	}
}

func TestNMSizes(t *testing.T) {
	vb, ib, err := NMSizes(NM{2, 4}, 3, 8, 2)
	if err != nil || vb != 3*4*2 || ib != 3*1 {
		t.Errorf("NMSizes(2:4, 3, 8, 2) = %d, %d, %v", vb, ib, err)
	}
	vb, ib, err = NMSizes(NM{4, 8}, 4096, 11008, 2)
	if err != nil || vb != 4096*5504*2 || ib != 4096*((5504*3+7)/8) {
		t.Errorf("NMSizes(4:8, 4096, 11008, 2) = %d, %d, %v", vb, ib, err)
	}
	vb, ib, err = NMSizes(NM{1, 2}, 5, 6, 4)
	if err != nil || vb != 5*3*4 || ib != 5 {
		t.Errorf("NMSizes(1:2, 5, 6, 4) = %d, %d, %v", vb, ib, err)
	}
	for _, c := range []struct {
		p                    NM
		rows, cols, elemSize int
		want                 error
	}{
		{NM{2, 4}, 0, 8, 2, ErrShape},
		{NM{2, 4}, -1, 8, 2, ErrShape},
		{NM{2, 4}, 1, 6, 2, ErrShape},
		{NM{2, 4}, 1, 0, 2, ErrShape},
		{NM{2, 4}, 1, 8, 0, ErrShape},
		{NM{2, 4}, 1, 8, -2, ErrShape},
		{NM{4, 4}, 1, 8, 2, ErrPattern},
		{NM{1, 17}, 1, 17, 2, ErrPattern},
		{NM{0, 4}, 1, 8, 2, ErrPattern},
		{NM{2, 4}, halfInt - 1, halfInt, 8, ErrShape},                          // dense count ok, bytes ~2^IntSize
		{NM{2, 4}, 1 << wideShift, 1 << wideShift, 2, ErrShape},                // dense count overflows
		{NM{2, 4}, 1, math.MaxInt - math.MaxInt%4, 8, ErrShape},                // values bytes overflow
		{NM{15, 16}, 2 * halfInt, 2 * halfInt, 1, ErrShape},                    // rows*cols overflows
		{NM{1, 2}, 1 << 20, (math.MaxInt >> 20) &^ 1, math.MaxInt32, ErrShape}, // values overflow
	} {
		if _, _, err := NMSizes(c.p, c.rows, c.cols, c.elemSize); !errors.Is(err, c.want) {
			t.Errorf("NMSizes(%v, %d, %d, %d) = %v; want %v", c.p, c.rows, c.cols, c.elemSize, err, c.want)
		}
	}
}

func TestNMRoundTripAllPatterns(t *testing.T) {
	rng := rand.New(rand.NewPCG(10, 20))
	for _, p := range nmtAllPatterns() {
		for rows := 1; rows <= 5; rows++ {
			for _, groups := range []int{1, 2, 3, 5, 8, 17} {
				cols := groups * p.M
				dense := nmtRandomDense(rng, rows*cols)
				keep := nmtRandomKeep(rng, p, rows, cols)
				values, idx, err := SplitNM(p, rows, cols, dense, keep)
				if err != nil {
					t.Fatalf("%s [%d,%d] split: %v", p, rows, cols, err)
				}
				rb, _ := p.IndexRowBytes(cols)
				packed := make([]byte, rows*rb)
				for i := range packed {
					packed[i] = 0xAA // Pack must overwrite everything
				}
				if err := PackNMIndices(p, rows, cols, idx, packed); err != nil {
					t.Fatalf("%s [%d,%d] pack: %v", p, rows, cols, err)
				}
				if want := nmtRefPack(p, rows, cols, idx); !bytes.Equal(packed, want) {
					t.Fatalf("%s [%d,%d] pack = % x, reference % x", p, rows, cols, packed, want)
				}
				if err := ValidateNMIndices(p, rows, cols, packed); err != nil {
					t.Fatalf("%s [%d,%d] validate: %v", p, rows, cols, err)
				}
				idx2 := make([]uint8, len(idx))
				if err := UnpackNMIndices(p, rows, cols, packed, idx2); err != nil {
					t.Fatalf("%s [%d,%d] unpack: %v", p, rows, cols, err)
				}
				if !bytes.Equal(idx, idx2) {
					t.Fatalf("%s [%d,%d] unpack = %v, want %v", p, rows, cols, idx2, idx)
				}
				out := make([]float32, rows*cols)
				for i := range out {
					out[i] = 42 // Expand must overwrite everything
				}
				if err := ExpandNM(p, rows, cols, values, idx2, out); err != nil {
					t.Fatalf("%s [%d,%d] expand: %v", p, rows, cols, err)
				}
				for i := range out {
					want := float32(0)
					if keep[i] {
						want = dense[i]
					}
					if out[i] != want {
						t.Fatalf("%s [%d,%d] element %d = %v, want %v", p, rows, cols, i, out[i], want)
					}
				}
				// Indices are in-group positions, increasing.
				for j, v := range idx {
					if int(v) >= p.M || (j%p.N != 0 && v <= idx[j-1]) {
						t.Fatalf("%s: split index %d = %d not canonical", p, j, v)
					}
				}
			}
		}
	}
}

func TestNMHandComputed(t *testing.T) {
	const a, b, c, d = 1.5, -2, 3.25, 4
	cases := []struct {
		p      NM
		rows   int
		dense  []float32
		values []float32
		idx    []uint8
		packed []byte
	}{
		{ // the example of the format description
			p: NM{2, 4}, rows: 1,
			dense:  []float32{a, 0, b, 0, 0, c, 0, d},
			values: []float32{a, b, c, d}, idx: []uint8{0, 2, 1, 3},
			packed: []byte{0xD8},
		},
		{ // 1:2, three groups: bits 1,0,1 then five padding bits
			p: NM{1, 2}, rows: 1,
			dense:  []float32{0, a, b, 0, 0, c},
			values: []float32{a, b, c}, idx: []uint8{1, 0, 1},
			packed: []byte{0x05},
		},
		{ // 1:2, two rows: each row padded on its own
			p: NM{1, 2}, rows: 2,
			dense:  []float32{0, a, b, 0, 0, c, d, 0, d, 0, 0, a},
			values: []float32{a, b, c, d, d, a}, idx: []uint8{1, 0, 1, 0, 0, 1},
			packed: []byte{0x05, 0x04},
		},
		{ // 1:4: indices 2,3,0 -> 10 11 00
			p: NM{1, 4}, rows: 1,
			dense:  []float32{0, 0, a, 0, 0, 0, 0, b, c, 0, 0, 0},
			values: []float32{a, b, c}, idx: []uint8{2, 3, 0},
			packed: []byte{0x0E},
		},
		{ // 2:8: indices 1,6,0,7 at 3 bits: 1 | 6<<3 | 0<<6 | 7<<9 = 0xE31
			p: NM{2, 8}, rows: 1,
			dense:  []float32{0, a, 0, 0, 0, 0, b, 0, c, 0, 0, 0, 0, 0, 0, d},
			values: []float32{a, b, c, d}, idx: []uint8{1, 6, 0, 7},
			packed: []byte{0x31, 0x0E},
		},
		{ // 4:8: indices 0,3,5,6: 0 | 3<<3 | 5<<6 | 6<<9 = 0xD58
			p: NM{4, 8}, rows: 1,
			dense:  []float32{a, 0, 0, b, 0, c, d, 0},
			values: []float32{a, b, c, d}, idx: []uint8{0, 3, 5, 6},
			packed: []byte{0x58, 0x0D},
		},
	}
	for _, tc := range cases {
		cols := len(tc.dense) / tc.rows
		keep := make([]bool, len(tc.dense))
		for i, v := range tc.dense {
			keep[i] = v != 0
		}
		values, idx, err := SplitNM(tc.p, tc.rows, cols, tc.dense, keep)
		if err != nil {
			t.Fatalf("%s split: %v", tc.p, err)
		}
		if fmt.Sprint(values) != fmt.Sprint(tc.values) || !bytes.Equal(idx, tc.idx) {
			t.Errorf("%s split = %v %v, want %v %v", tc.p, values, idx, tc.values, tc.idx)
		}
		packed := make([]byte, len(tc.packed))
		if err := PackNMIndices(tc.p, tc.rows, cols, idx, packed); err != nil || !bytes.Equal(packed, tc.packed) {
			t.Errorf("%s pack = % x, %v; want % x", tc.p, packed, err, tc.packed)
		}
		if err := ValidateNMIndices(tc.p, tc.rows, cols, tc.packed); err != nil {
			t.Errorf("%s validate: %v", tc.p, err)
		}
		got := make([]uint8, len(tc.idx))
		if err := UnpackNMIndices(tc.p, tc.rows, cols, tc.packed, got); err != nil || !bytes.Equal(got, tc.idx) {
			t.Errorf("%s unpack = %v, %v; want %v", tc.p, got, err, tc.idx)
		}
		dense := make([]float32, len(tc.dense))
		if err := ExpandNM(tc.p, tc.rows, cols, tc.values, tc.idx, dense); err != nil || fmt.Sprint(dense) != fmt.Sprint(tc.dense) {
			t.Errorf("%s expand = %v, %v; want %v", tc.p, dense, err, tc.dense)
		}
	}
}

// nmtCheckBadPacked asserts that both UnpackNMIndices and ValidateNMIndices
// reject packed with want, and that the message contains every fragment.
func nmtCheckBadPacked(t *testing.T, p NM, rows, cols int, packed []byte, want error, frags ...string) {
	t.Helper()
	kept, _ := p.KeptPerRow(cols)
	errV := ValidateNMIndices(p, rows, cols, packed)
	errU := UnpackNMIndices(p, rows, cols, packed, make([]uint8, rows*kept))
	for name, err := range map[string]error{"validate": errV, "unpack": errU} {
		if !errors.Is(err, want) {
			t.Errorf("%s %s % x: %v; want %v", p, name, packed, err, want)
			continue
		}
		for _, f := range frags {
			if !strings.Contains(err.Error(), f) {
				t.Errorf("%s %s % x: message %q lacks %q", p, name, packed, err, f)
			}
		}
	}
}

func TestNMIndexErrors(t *testing.T) {
	// 3:5 uses 3 bits per index, so 5, 6, 7 are encodable but out of range.
	p := NM{3, 5}
	for _, bad := range []uint8{5, 6, 7} {
		idx := []uint8{0, 1, 2, 0, 1, bad} // row 0 group 0 ok, group 1 bad
		packed := nmtRefPack(p, 1, 10, idx)
		nmtCheckBadPacked(t, p, 1, 10, packed, ErrIndex, "row 0", "group 1", ">= M")
		if err := PackNMIndices(p, 1, 10, idx, make([]byte, len(packed))); !errors.Is(err, ErrIndex) {
			t.Errorf("pack out-of-range %d: %v", bad, err)
		}
		if err := ExpandNM(p, 1, 10, make([]float32, 6), idx, make([]float32, 10)); !errors.Is(err, ErrIndex) {
			t.Errorf("expand out-of-range %d: %v", bad, err)
		}
	}
	// Duplicate and decreasing indices, in the second row.
	for _, c := range []struct {
		p   NM
		idx []uint8
	}{
		{NM{2, 4}, []uint8{0, 1, 2, 3, 1, 1, 0, 3}}, // duplicate in row 1 group 0
		{NM{2, 4}, []uint8{0, 1, 2, 3, 0, 1, 3, 2}}, // decreasing in row 1 group 1
		{NM{4, 8}, []uint8{0, 1, 2, 3, 7, 6, 5, 4}},
		{NM{15, 16}, append(nmtSeq(15), append([]uint8{0, 1}, nmtSeq(13)...)...)},
		{NM{7, 16}, append(nmtSeq(7), 0, 1, 2, 3, 4, 5, 5)},
	} {
		groupsPerRow := 1
		if c.p.M == 4 {
			groupsPerRow = 2
		}
		cols := groupsPerRow * c.p.M
		packed := nmtRefPack(c.p, 2, cols, c.idx)
		nmtCheckBadPacked(t, c.p, 2, cols, packed, ErrIndex, "row 1", "not strictly increasing")
		if err := PackNMIndices(c.p, 2, cols, c.idx, make([]byte, len(packed))); !errors.Is(err, ErrIndex) {
			t.Errorf("%s pack bad indices: %v", c.p, err)
		}
		if err := ExpandNM(c.p, 2, cols, make([]float32, len(c.idx)), c.idx, make([]float32, 2*cols)); !errors.Is(err, ErrIndex) {
			t.Errorf("%s expand bad indices: %v", c.p, err)
		}
	}
	// Non-zero padding bits.
	for _, c := range []struct {
		p      NM
		cols   int
		packed []byte
	}{
		{NM{1, 2}, 6, []byte{0x05 | 0x08}},
		{NM{1, 2}, 6, []byte{0x05 | 0x80}},
		{NM{2, 4}, 12, []byte{0xD8, 0x08 | 0x10}},
		{NM{2, 8}, 16, []byte{0x31, 0x0E | 0x10}},
		{NM{4, 8}, 8, []byte{0x58, 0x0D | 0x80}},
	} {
		nmtCheckBadPacked(t, c.p, 1, c.cols, c.packed, ErrIndex, "row 0", "padding")
	}
	// Padding bit in the second row only.
	nmtCheckBadPacked(t, NM{1, 2}, 2, 6, []byte{0x05, 0x25}, ErrIndex, "row 1", "padding")
	// Wrong packed lengths.
	good := []byte{0xD8, 0xD8}
	nmtCheckBadPacked(t, NM{2, 4}, 2, 8, good[:1], ErrShape)
	nmtCheckBadPacked(t, NM{2, 4}, 2, 8, append(good, 0), ErrShape)
	nmtCheckBadPacked(t, NM{2, 4}, 2, 8, nil, ErrShape)
	// Bad shapes and patterns.
	for _, c := range []struct {
		p          NM
		rows, cols int
		want       error
	}{
		{NM{2, 4}, 1, 6, ErrShape},
		{NM{2, 4}, 0, 8, ErrShape},
		{NM{2, 4}, 1, 0, ErrShape},
		{NM{4, 4}, 1, 8, ErrPattern},
		{NM{5, 4}, 1, 8, ErrPattern},
		{NM{1, 17}, 1, 17, ErrPattern},
		{NM{0, 4}, 1, 8, ErrPattern},
	} {
		if err := ValidateNMIndices(c.p, c.rows, c.cols, []byte{0xD8}); !errors.Is(err, c.want) {
			t.Errorf("Validate %v [%d,%d]: %v; want %v", c.p, c.rows, c.cols, err, c.want)
		}
		if err := UnpackNMIndices(c.p, c.rows, c.cols, []byte{0xD8}, make([]uint8, 2)); !errors.Is(err, c.want) {
			t.Errorf("Unpack %v [%d,%d]: %v; want %v", c.p, c.rows, c.cols, err, c.want)
		}
		if err := PackNMIndices(c.p, c.rows, c.cols, []uint8{0, 1}, make([]byte, 1)); !errors.Is(err, c.want) {
			t.Errorf("Pack %v [%d,%d]: %v; want %v", c.p, c.rows, c.cols, err, c.want)
		}
		if _, _, err := SplitNM(c.p, c.rows, c.cols, make([]float32, 4), make([]bool, 4)); !errors.Is(err, c.want) {
			t.Errorf("Split %v [%d,%d]: %v; want %v", c.p, c.rows, c.cols, err, c.want)
		}
		if err := ExpandNM(c.p, c.rows, c.cols, make([]float32, 2), []uint8{0, 1}, make([]float32, 4)); !errors.Is(err, c.want) {
			t.Errorf("Expand %v [%d,%d]: %v; want %v", c.p, c.rows, c.cols, err, c.want)
		}
	}
	// Slice lengths.
	p = NM{2, 4}
	if err := UnpackNMIndices(p, 1, 8, []byte{0xD8}, make([]uint8, 3)); !errors.Is(err, ErrShape) {
		t.Errorf("unpack short idx: %v", err)
	}
	if err := PackNMIndices(p, 1, 8, []uint8{0, 2, 1}, make([]byte, 1)); !errors.Is(err, ErrShape) {
		t.Errorf("pack short idx: %v", err)
	}
	if err := PackNMIndices(p, 1, 8, []uint8{0, 2, 1, 3}, make([]byte, 2)); !errors.Is(err, ErrShape) {
		t.Errorf("pack long dst: %v", err)
	}
	if err := PackNMIndices(p, 1, 8, []uint8{0, 2, 1, 3}, nil); !errors.Is(err, ErrShape) {
		t.Errorf("pack nil dst: %v", err)
	}
	if err := ExpandNM(p, 1, 8, make([]float32, 3), []uint8{0, 2, 1, 3}, make([]float32, 8)); !errors.Is(err, ErrShape) {
		t.Errorf("expand short values: %v", err)
	}
	if err := ExpandNM(p, 1, 8, make([]float32, 4), []uint8{0, 2, 1, 3}, make([]float32, 7)); !errors.Is(err, ErrShape) {
		t.Errorf("expand short dense: %v", err)
	}
	if _, _, err := SplitNM(p, 1, 8, make([]float32, 7), make([]bool, 8)); !errors.Is(err, ErrShape) {
		t.Errorf("split short dense: %v", err)
	}
	if _, _, err := SplitNM(p, 1, 8, make([]float32, 8), make([]bool, 9)); !errors.Is(err, ErrShape) {
		t.Errorf("split long keep: %v", err)
	}
	// Expand leaves dense untouched on error.
	dense := []float32{9, 9, 9, 9, 9, 9, 9, 9}
	_ = ExpandNM(p, 1, 8, []float32{1, 2, 3, 4}, []uint8{0, 2, 3, 3}, dense)
	for _, v := range dense {
		if v != 9 {
			t.Fatalf("ExpandNM wrote dense before failing: %v", dense)
		}
	}
}

func nmtSeq(n int) []uint8 {
	s := make([]uint8, n)
	for i := range s {
		s[i] = uint8(i)
	}
	return s
}

func TestNMSplitKeepMaskErrors(t *testing.T) {
	p := NM{2, 4}
	dense := make([]float32, 16)
	for _, c := range []struct {
		keep  []bool
		frags []string
	}{
		{[]bool{true, true, false, false, true, true, true, false, true, false, true, false, true, false, false, true}, []string{"row 0", "group 1", "keeps 3"}},
		{[]bool{true, true, false, false, true, true, false, false, true, false, false, false, true, false, false, true}, []string{"row 1", "group 0", "keeps 1"}},
		{[]bool{true, true, false, false, true, true, false, false, true, false, true, false, false, false, false, false}, []string{"row 1", "group 1", "keeps 0"}},
		{[]bool{true, true, true, true, true, true, false, false, true, false, true, false, true, false, false, true}, []string{"row 0", "group 0", "keeps 4"}},
	} {
		_, _, err := SplitNM(p, 2, 8, dense, c.keep)
		if !errors.Is(err, ErrIndex) {
			t.Errorf("split %v: %v; want ErrIndex", c.keep, err)
			continue
		}
		for _, f := range c.frags {
			if !strings.Contains(err.Error(), f) {
				t.Errorf("split error %q lacks %q", err, f)
			}
		}
	}
}

// TestNMValidateMatchesReference feeds random and mutated packed bytes to
// ValidateNMIndices and UnpackNMIndices and compares the verdict (and the
// row/group named) with a bit-by-bit reference, for every pattern.
func TestNMValidateMatchesReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for _, p := range nmtAllPatterns() {
		for trial := 0; trial < 40; trial++ {
			rows := 1 + rng.IntN(3)
			cols := p.M * (1 + rng.IntN(9))
			kept, _ := p.KeptPerRow(cols)
			rb, _ := p.IndexRowBytes(cols)
			var packed []byte
			if trial%2 == 0 {
				packed = make([]byte, rows*rb)
				for i := range packed {
					packed[i] = byte(rng.Uint32())
				}
			} else {
				// A valid section with one flipped bit (possibly padding).
				_, idx, _ := SplitNM(p, rows, cols, make([]float32, rows*cols), nmtRandomKeep(rng, p, rows, cols))
				packed = nmtRefPack(p, rows, cols, idx)
				bit := rng.IntN(len(packed) * 8)
				packed[bit/8] ^= 1 << (bit % 8)
			}
			want := nmtRefValidate(p, rows, cols, packed)
			errV := ValidateNMIndices(p, rows, cols, packed)
			errU := UnpackNMIndices(p, rows, cols, packed, make([]uint8, rows*kept))
			for name, err := range map[string]error{"validate": errV, "unpack": errU} {
				switch {
				case want == "" && err != nil:
					t.Fatalf("%s [%d,%d] %s % x: %v; reference says valid", p, rows, cols, name, packed, err)
				case want != "" && !errors.Is(err, ErrIndex):
					t.Fatalf("%s [%d,%d] %s % x: %v; reference says %s", p, rows, cols, name, packed, err, want)
				case want == "padding" && !strings.Contains(err.Error(), "padding"):
					t.Fatalf("%s [%d,%d] %s % x: %v; reference says bad padding", p, rows, cols, name, packed, err)
				case strings.HasPrefix(want, "row") && !strings.Contains(err.Error(), want+":"):
					t.Fatalf("%s [%d,%d] %s % x: %v; reference says %s", p, rows, cols, name, packed, err, want)
				}
			}
		}
	}
}

func FuzzNMValidate(f *testing.F) {
	f.Add(uint8(2), uint8(4), uint8(1), uint8(2), []byte{0xD8, 0xD8})
	f.Add(uint8(3), uint8(5), uint8(2), uint8(1), []byte{0xff, 0x01, 0x10, 0x02})
	f.Add(uint8(15), uint8(16), uint8(1), uint8(1), []byte{0x10, 0x32, 0x54, 0x76, 0x98, 0xba, 0xdc, 0x0e})
	f.Fuzz(func(t *testing.T, n, m, rows, groups uint8, packed []byte) {
		p := NM{int(n%17) + 1, int(m % 17)}
		r, cols := int(rows%4)+1, (int(groups%8)+1)*p.M
		errV := ValidateNMIndices(p, r, cols, packed)
		if p.Validate() != nil {
			if !errors.Is(errV, ErrPattern) {
				t.Fatalf("%v: %v", p, errV)
			}
			return
		}
		kept, _ := p.KeptPerRow(cols)
		errU := UnpackNMIndices(p, r, cols, packed, make([]uint8, r*kept))
		want := nmtRefValidate(p, r, cols, packed)
		if (want == "") != (errV == nil) || (errV == nil) != (errU == nil) {
			t.Fatalf("%s [%d,%d] % x: validate %v, unpack %v, reference %q", p, r, cols, packed, errV, errU, want)
		}
	})
}

func BenchmarkValidateNMIndices(b *testing.B) {
	for _, p := range []NM{{2, 4}, {4, 8}, {8, 16}} {
		b.Run(p.String(), func(b *testing.B) {
			rng := rand.New(rand.NewPCG(1, 1))
			rows, cols := 1024, 4096
			_, idx, _ := SplitNM(p, rows, cols, make([]float32, rows*cols), nmtRandomKeep(rng, p, rows, cols))
			rb, _ := p.IndexRowBytes(cols)
			packed := make([]byte, rows*rb)
			if err := PackNMIndices(p, rows, cols, idx, packed); err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(len(packed)))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := ValidateNMIndices(p, rows, cols, packed); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestNMGroupCheckers compares the table and SWAR group checks with the
// plain decoding loop, on valid groups, valid groups with one field
// changed, and random codes, for every pattern.
func TestNMGroupCheckers(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	for _, p := range nmtAllPatterns() {
		b := p.IndexBits()
		w := p.N * b
		tabs := nmTablesFor(p)
		swar := newNMSWAR(p)
		check := func(code uint64) {
			want := nmGroupValid(p, b, code)
			if got := swar.valid(code); got != want {
				t.Fatalf("%s: SWAR says %v for code %#x, loop says %v", p, got, code, want)
			}
			if got := tabs.valid(code); got != want {
				t.Fatalf("%s: table check says %v for code %#x, loop says %v", p, got, code, want)
			}
		}
		if w <= 16 {
			for code := uint64(0); code < 1<<w; code++ {
				check(code)
			}
			continue
		}
		for trial := 0; trial < 3000; trial++ {
			perm := rng.Perm(p.M)[:p.N]
			sortU := make([]int, len(perm))
			copy(sortU, perm)
			for i := 1; i < len(sortU); i++ {
				for j := i; j > 0 && sortU[j] < sortU[j-1]; j-- {
					sortU[j], sortU[j-1] = sortU[j-1], sortU[j]
				}
			}
			var code uint64
			for k, v := range sortU {
				code |= uint64(v) << (k * b)
			}
			check(code)
			k := rng.IntN(p.N)
			mutated := code&^(uint64(1<<b-1)<<(k*b)) | uint64(rng.IntN(1<<b))<<(k*b)
			check(mutated)
			check(rng.Uint64() & (1<<w - 1))
		}
	}
}
