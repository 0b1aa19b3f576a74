package format

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
	"strings"
	"testing"
)

// tmtMagnitudeKeep prunes a dense [rows, cols] matrix N:M along rows by
// magnitude (ties to the lower column).
func tmtMagnitudeKeep(p NM, rows, cols int, dense []float32) []bool {
	keep := make([]bool, len(dense))
	for g := 0; g < rows*cols/p.M; g++ {
		pos := make([]int, p.M)
		for i := range pos {
			pos[i] = g*p.M + i
		}
		sort.SliceStable(pos, func(a, b int) bool {
			return math.Abs(float64(dense[pos[a]])) > math.Abs(float64(dense[pos[b]]))
		})
		for _, i := range pos[:p.N] {
			keep[i] = true
		}
	}
	return keep
}

// tmtRandomNMWeight makes a random nm weight: dense values (Gaussian) and the
// row-wise magnitude pruning of them.
func tmtRandomNMWeight(rng *rand.Rand, p NM, rows, cols int) (dense []float32, values []float32, idx []uint8, packed []byte) {
	dense = nmtRandomDense(rng, rows*cols)
	values, idx, err := SplitNM(p, rows, cols, dense, tmtMagnitudeKeep(p, rows, cols, dense))
	if err != nil {
		panic(err)
	}
	rb, _ := p.IndexRowBytes(cols)
	packed = make([]byte, rows*rb)
	if err := PackNMIndices(p, rows, cols, idx, packed); err != nil {
		panic(err)
	}
	return dense, values, idx, packed
}

// tmtDenseKeptByBoth returns W with only the entries kept by both its indices
// and keep, as a dense [rows, cols] matrix, plus the matching bool mask.
func tmtDenseKeptByBoth(p NM, rows, cols int, values []float32, idx []uint8, keep []bool) ([]float32, []bool) {
	kept := cols / p.M * p.N
	d := make([]float32, rows*cols)
	present := make([]bool, rows*cols)
	for r := 0; r < rows; r++ {
		for j := 0; j < kept; j++ {
			if keep[r*kept+j] {
				c := j/p.N*p.M + int(idx[r*kept+j])
				d[r*cols+c] = values[r*kept+j]
				present[r*cols+c] = true
			}
		}
	}
	return d, present
}

func TestTransposeMaskSizes(t *testing.T) {
	for _, c := range []struct {
		p              NM
		rows, cols     int
		rowBytes, size int
	}{
		{NM{2, 4}, 4, 4, 1, 4},
		{NM{2, 4}, 8, 16, 1, 8},
		{NM{2, 4}, 4, 20, 2, 8},
		{NM{1, 2}, 2, 2, 1, 2},
		{NM{4, 8}, 8, 32, 2, 16},
		{NM{15, 16}, 16, 16, 2, 32},
		{NM{2, 4}, 4096, 4096, 256, 4096 * 256},
	} {
		rb, err := TransposeMaskRowBytes(c.p, c.cols)
		if err != nil || rb != c.rowBytes {
			t.Errorf("TransposeMaskRowBytes(%s, %d) = %d, %v; want %d", c.p, c.cols, rb, err, c.rowBytes)
		}
		n, err := TransposeMaskSize(c.p, c.rows, c.cols)
		if err != nil || n != int64(c.size) {
			t.Errorf("TransposeMaskSize(%s, %d, %d) = %d, %v; want %d", c.p, c.rows, c.cols, n, err, c.size)
		}
	}
	for _, c := range []struct {
		p          NM
		rows, cols int
		want       error
	}{
		{NM{2, 4}, 6, 8, ErrShape},
		{NM{2, 4}, 0, 8, ErrShape},
		{NM{2, 4}, 4, 6, ErrShape},
		{NM{2, 4}, -4, 8, ErrShape},
		{NM{4, 4}, 4, 8, ErrPattern},
		{NM{1, 17}, 17, 17, ErrPattern},
		{NM{2, 4}, 1 << wideShift, 1 << wideShift, ErrShape},
	} {
		if _, err := TransposeMaskSize(c.p, c.rows, c.cols); !errors.Is(err, c.want) {
			t.Errorf("TransposeMaskSize(%v, %d, %d) = %v; want %v", c.p, c.rows, c.cols, err, c.want)
		}
	}
	if _, err := TransposeMaskRowBytes(NM{2, 4}, 6); !errors.Is(err, ErrShape) {
		t.Errorf("TransposeMaskRowBytes(2:4, 6) = %v", err)
	}
	if _, err := TransposeMaskRowBytes(NM{0, 4}, 8); !errors.Is(err, ErrPattern) {
		t.Errorf("TransposeMaskRowBytes(0:4, 8) = %v", err)
	}
}

func TestTransposeHandComputed(t *testing.T) {
	p := NM{2, 4}
	// Row-wise 2:4 weight; column 0 has three kept entries (rows 0, 1, 2).
	dense := []float32{
		1, 5, 0, 0,
		3, 6, 0, 0,
		2, 0, 7, 0,
		0, 0, 8, 9,
	}
	keepW := make([]bool, len(dense))
	for i, v := range dense {
		keepW[i] = v != 0
	}
	values, idx, err := SplitNM(p, 4, 4, dense, keepW)
	if err != nil {
		t.Fatal(err)
	}
	keep, err := DoublePruneMagnitude(p, 4, 4, values, idx)
	if err != nil {
		t.Fatal(err)
	}
	wantKeep := []bool{false, true, true, true, true, true, true, true}
	if fmt.Sprint(keep) != fmt.Sprint(wantKeep) {
		t.Fatalf("keep = %v, want %v", keep, wantKeep)
	}
	mask := make([]byte, 4)
	if err := PackTransposeMask(p, 4, 4, keep, mask); err != nil || !bytes.Equal(mask, []byte{0x02, 0x03, 0x03, 0x03}) {
		t.Fatalf("mask = % x, %v", mask, err)
	}
	packedIdx := make([]byte, 4)
	if err := PackNMIndices(p, 4, 4, idx, packedIdx); err != nil {
		t.Fatal(err)
	}
	if err := ValidateTransposeMask(p, 4, 4, packedIdx, mask); err != nil {
		t.Fatal(err)
	}
	// Keeping everything puts three entries into column 0 of row group 0.
	all := []byte{0x03, 0x03, 0x03, 0x03}
	err = ValidateTransposeMask(p, 4, 4, packedIdx, all)
	if !errors.Is(err, ErrMask) || !strings.Contains(err.Error(), "column 0 ") || !strings.Contains(err.Error(), "row group 0") {
		t.Fatalf("all-ones mask: %v", err)
	}
	tv, ti, err := MaterializeTranspose(p, 4, 4, values, idx, keep)
	if err != nil {
		t.Fatal(err)
	}
	// Column 0: rows 1, 2 -> [3 2] at [1 2]; column 1: rows 0, 1; column 2:
	// rows 2, 3; column 3: row 3 only, padded with a zero at row 0.
	if want := []float32{3, 2, 5, 6, 7, 8, 0, 9}; fmt.Sprint(tv) != fmt.Sprint(want) {
		t.Errorf("tValues = %v, want %v", tv, want)
	}
	if want := []uint8{1, 2, 0, 1, 2, 3, 0, 3}; !bytes.Equal(ti, want) {
		t.Errorf("tIdx = %v, want %v", ti, want)
	}
}

// tmtCheckDoublePruned asserts that keep has at most N per column group and,
// when exact, that it is the magnitude top-N with ties to the lower row.
func tmtCheckDoublePruned(t *testing.T, p NM, rows, cols int, values []float32, idx []uint8, keep []bool) {
	t.Helper()
	kept := cols / p.M * p.N
	type cand struct {
		row int
		v   float32
		pos int
	}
	for rg := 0; rg < rows/p.M; rg++ {
		byCol := make(map[int][]cand)
		for r := rg * p.M; r < rg*p.M+p.M; r++ {
			for j := 0; j < kept; j++ {
				c := j/p.N*p.M + int(idx[r*kept+j])
				byCol[c] = append(byCol[c], cand{r, values[r*kept+j], r*kept + j})
			}
		}
		for c, list := range byCol {
			sort.SliceStable(list, func(a, b int) bool {
				return math.Abs(float64(list[a].v)) > math.Abs(float64(list[b].v))
			})
			for i, e := range list {
				if want := i < p.N; keep[e.pos] != want {
					t.Fatalf("%s row group %d column %d: row %d (|%v|, rank %d) keep=%v", p, rg, c, e.row, e.v, i, keep[e.pos])
				}
			}
		}
	}
}

func TestTransposeDoublePruneRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(31, 41))
	patterns := []NM{{1, 2}, {2, 4}, {1, 4}, {3, 4}, {2, 8}, {4, 8}, {3, 5}, {5, 7}, {8, 16}, {15, 16}, {1, 16}}
	for _, p := range patterns {
		for _, rgCount := range []int{1, 2, 3} {
			for _, groups := range []int{1, 2, 5} {
				rows, cols := rgCount*p.M, groups*p.M
				name := fmt.Sprintf("%s [%d,%d]", p, rows, cols)
				_, values, idx, packedIdx := tmtRandomNMWeight(rng, p, rows, cols)
				keep, err := DoublePruneMagnitude(p, rows, cols, values, idx)
				if err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				tmtCheckDoublePruned(t, p, rows, cols, values, idx, keep)
				// Also a sparser keep: drop some more entries at random.
				for variant := 0; variant < 2; variant++ {
					k := append([]bool(nil), keep...)
					if variant == 1 {
						for i := range k {
							if rng.IntN(3) == 0 {
								k[i] = false
							}
						}
					}
					size, _ := TransposeMaskSize(p, rows, cols)
					mask := make([]byte, size)
					if err := PackTransposeMask(p, rows, cols, k, mask); err != nil {
						t.Fatalf("%s pack mask: %v", name, err)
					}
					if err := ValidateTransposeMask(p, rows, cols, packedIdx, mask); err != nil {
						t.Fatalf("%s validate mask: %v", name, err)
					}
					back := make([]bool, len(k))
					if err := UnpackTransposeMask(p, rows, cols, mask, back); err != nil {
						t.Fatalf("%s unpack mask: %v", name, err)
					}
					if fmt.Sprint(back) != fmt.Sprint(k) {
						t.Fatalf("%s: mask round trip changed the bits", name)
					}
					tmtCheckMaterialized(t, name, p, rows, cols, values, idx, k)
				}
			}
		}
	}
}

// tmtCheckMaterialized checks MaterializeTranspose against the dense transpose
// and the padding rule, and that the result packs into a valid nm tensor.
func tmtCheckMaterialized(t *testing.T, name string, p NM, rows, cols int, values []float32, idx []uint8, keep []bool) {
	t.Helper()
	tv, ti, err := MaterializeTranspose(p, rows, cols, values, idx, keep)
	if err != nil {
		t.Fatalf("%s materialize: %v", name, err)
	}
	// The transpose has shape [cols, rows].
	got := make([]float32, cols*rows)
	if err := ExpandNM(p, cols, rows, tv, ti, got); err != nil {
		t.Fatalf("%s expand transpose: %v", name, err)
	}
	want, present := tmtDenseKeptByBoth(p, rows, cols, values, idx, keep)
	for r := 0; r < rows; r++ {
		for c := 0; c < cols; c++ {
			if got[c*rows+r] != want[r*cols+c] {
				t.Fatalf("%s: transpose[%d][%d] = %v, want %v", name, c, r, got[c*rows+r], want[r*cols+c])
			}
		}
	}
	// Padding: each group's indices are the present rows plus the lowest
	// absent ones.
	keptT := rows / p.M * p.N
	for c := 0; c < cols; c++ {
		for g := 0; g < rows/p.M; g++ {
			var wantIdx []uint8
			need := p.N
			for o := 0; o < p.M; o++ {
				if present[(g*p.M+o)*cols+c] {
					need--
				}
			}
			for o := 0; o < p.M; o++ {
				if present[(g*p.M+o)*cols+c] {
					wantIdx = append(wantIdx, uint8(o))
				} else if need > 0 {
					need--
					wantIdx = append(wantIdx, uint8(o))
				}
			}
			if gotIdx := ti[c*keptT+g*p.N : c*keptT+g*p.N+p.N]; !bytes.Equal(gotIdx, wantIdx) {
				t.Fatalf("%s: transpose row %d group %d indices %v, want %v", name, c, g, gotIdx, wantIdx)
			}
		}
	}
	rb, _ := p.IndexRowBytes(rows)
	packed := make([]byte, cols*rb)
	if err := PackNMIndices(p, cols, rows, ti, packed); err != nil {
		t.Fatalf("%s pack transpose indices: %v", name, err)
	}
	if err := ValidateNMIndices(p, cols, rows, packed); err != nil {
		t.Fatalf("%s validate transpose indices: %v", name, err)
	}
}

func TestTransposeDoublePruneStatistic(t *testing.T) {
	// Gaussian W, 2:4 along rows: a column group of 4 rows holds K ~
	// Binomial(4, 1/2) kept entries, of which max(0, K-2) are dropped:
	// E = (4*1 + 1*2)/16 = 0.375 per 4 dense entries, 9.375% of W.
	p := NM{2, 4}
	rows, cols := 256, 256
	rng := rand.New(rand.NewPCG(2024, 7))
	_, values, idx, _ := tmtRandomNMWeight(rng, p, rows, cols)
	keep, err := DoublePruneMagnitude(p, rows, cols, values, idx)
	if err != nil {
		t.Fatal(err)
	}
	dropped := 0
	for _, k := range keep {
		if !k {
			dropped++
		}
	}
	frac := float64(dropped) / float64(rows*cols)
	if frac < 0.085 || frac > 0.10 {
		t.Errorf("double pruning dropped %.4f of the dense entries, want about 0.094", frac)
	}
	if fk := float64(dropped) / float64(len(keep)); fk < 0.17 || fk > 0.20 {
		t.Errorf("double pruning dropped %.4f of the kept values, want about 0.1875", fk)
	}
}

func TestTransposeDoublePruneTiesAndNaN(t *testing.T) {
	p := NM{1, 2}
	// W [4, 2]: every row keeps column 0. Values tie in magnitude in row
	// group 0; row group 1 has a NaN.
	dense := []float32{-2, 0, 2, 0, 1, 0, float32(math.NaN()), 0}
	keepW := []bool{true, false, true, false, true, false, true, false}
	values, idx, err := SplitNM(p, 4, 2, dense, keepW)
	if err != nil {
		t.Fatal(err)
	}
	keep, err := DoublePruneMagnitude(p, 4, 2, values, idx)
	if err != nil {
		t.Fatal(err)
	}
	if want := []bool{true, false, false, true}; fmt.Sprint(keep) != fmt.Sprint(want) {
		t.Errorf("keep = %v, want %v (ties to the lower row, NaN largest)", keep, want)
	}
}

func TestTransposeMaskErrors(t *testing.T) {
	p := NM{2, 4}
	rows, cols := 8, 8
	rng := rand.New(rand.NewPCG(9, 9))
	_, values, idx, packedIdx := tmtRandomNMWeight(rng, p, rows, cols)
	keep, _ := DoublePruneMagnitude(p, rows, cols, values, idx)
	size, _ := TransposeMaskSize(p, rows, cols)
	mask := make([]byte, size)
	if err := PackTransposeMask(p, rows, cols, keep, mask); err != nil {
		t.Fatal(err)
	}
	// Too many bits in a column group: set every bit of row group 1.
	over := append([]byte(nil), mask...)
	for r := 4; r < 8; r++ {
		over[r] = 0x0f
	}
	allKeep := append([]bool(nil), keep...)
	for i := 4 * 4; i < 8*4; i++ {
		allKeep[i] = true
	}
	// Find which column overflows first, independently.
	counts := make([]int, cols)
	wantCol := -1
	for r := 4; r < 8 && wantCol < 0; r++ {
		for j := 0; j < 4; j++ {
			c := j/2*4 + int(idx[r*4+j])
			if counts[c]++; counts[c] > 2 {
				wantCol = c
				break
			}
		}
	}
	if wantCol < 0 {
		t.Fatal("test setup: no overflowing column")
	}
	err := ValidateTransposeMask(p, rows, cols, packedIdx, over)
	if !errors.Is(err, ErrMask) || !strings.Contains(err.Error(), fmt.Sprintf("column %d ", wantCol)) || !strings.Contains(err.Error(), "row group 1") {
		t.Errorf("validate overfull mask: %v; want ErrMask at column %d, row group 1", err, wantCol)
	}
	if _, _, err := MaterializeTranspose(p, rows, cols, values, idx, allKeep); !errors.Is(err, ErrMask) || !strings.Contains(err.Error(), "row group 1") {
		t.Errorf("materialize overfull keep: %v", err)
	}
	// A non-zero padding bit (kept = 4 per row, so bits 4..7 are padding).
	for _, bit := range []byte{0x10, 0x80} {
		bad := append([]byte(nil), mask...)
		bad[5] |= bit
		if err := ValidateTransposeMask(p, rows, cols, packedIdx, bad); !errors.Is(err, ErrMask) || !strings.Contains(err.Error(), "row 5") {
			t.Errorf("validate padding %#x: %v", bit, err)
		}
		if err := UnpackTransposeMask(p, rows, cols, bad, make([]bool, len(keep))); !errors.Is(err, ErrMask) || !strings.Contains(err.Error(), "row 5") {
			t.Errorf("unpack padding %#x: %v", bit, err)
		}
	}
	// rows % M != 0.
	if err := ValidateTransposeMask(p, 6, cols, packedIdx[:6], mask[:6]); !errors.Is(err, ErrShape) {
		t.Errorf("validate rows=6: %v", err)
	}
	if err := PackTransposeMask(p, 6, cols, keep[:24], make([]byte, 6)); !errors.Is(err, ErrShape) {
		t.Errorf("pack rows=6: %v", err)
	}
	if err := UnpackTransposeMask(p, 6, cols, mask[:6], make([]bool, 24)); !errors.Is(err, ErrShape) {
		t.Errorf("unpack rows=6: %v", err)
	}
	if _, _, err := MaterializeTranspose(p, 6, cols, values[:24], idx[:24], keep[:24]); !errors.Is(err, ErrShape) {
		t.Errorf("materialize rows=6: %v", err)
	}
	if _, err := DoublePruneMagnitude(p, 6, cols, values[:24], idx[:24]); !errors.Is(err, ErrShape) {
		t.Errorf("double prune rows=6: %v", err)
	}
	// Wrong lengths.
	if err := ValidateTransposeMask(p, rows, cols, packedIdx, mask[:len(mask)-1]); !errors.Is(err, ErrShape) {
		t.Errorf("validate short mask: %v", err)
	}
	if err := ValidateTransposeMask(p, rows, cols, packedIdx, append(mask, 0)); !errors.Is(err, ErrShape) {
		t.Errorf("validate long mask: %v", err)
	}
	if err := ValidateTransposeMask(p, rows, cols, packedIdx[1:], mask); !errors.Is(err, ErrShape) {
		t.Errorf("validate short indices: %v", err)
	}
	if err := PackTransposeMask(p, rows, cols, keep[1:], mask); !errors.Is(err, ErrShape) {
		t.Errorf("pack short keep: %v", err)
	}
	if err := PackTransposeMask(p, rows, cols, keep, mask[1:]); !errors.Is(err, ErrShape) {
		t.Errorf("pack short dst: %v", err)
	}
	if err := UnpackTransposeMask(p, rows, cols, mask, make([]bool, len(keep)+1)); !errors.Is(err, ErrShape) {
		t.Errorf("unpack long keep: %v", err)
	}
	if _, _, err := MaterializeTranspose(p, rows, cols, values, idx, keep[1:]); !errors.Is(err, ErrShape) {
		t.Errorf("materialize short keep: %v", err)
	}
	if _, _, err := MaterializeTranspose(p, rows, cols, values[1:], idx, keep); !errors.Is(err, ErrShape) {
		t.Errorf("materialize short values: %v", err)
	}
	if _, err := DoublePruneMagnitude(p, rows, cols, values, idx[1:]); !errors.Is(err, ErrShape) {
		t.Errorf("double prune short idx: %v", err)
	}
	// Bad W indices are reported, not trusted.
	badIdx := append([]uint8(nil), idx...)
	badIdx[5] = badIdx[4]
	if _, _, err := MaterializeTranspose(p, rows, cols, values, badIdx, keep); !errors.Is(err, ErrIndex) {
		t.Errorf("materialize bad idx: %v", err)
	}
	if _, err := DoublePruneMagnitude(p, rows, cols, values, badIdx); !errors.Is(err, ErrIndex) {
		t.Errorf("double prune bad idx: %v", err)
	}
	badPacked := append([]byte(nil), packedIdx...)
	badPacked[3] = 0x00 // indices 0,0 | 0,0: not increasing
	if err := ValidateTransposeMask(p, rows, cols, badPacked, mask); !errors.Is(err, ErrIndex) {
		t.Errorf("validate mask with bad indices: %v", err)
	}
	// 3:5 indices may encode 5..7: must not index past the row.
	p35 := NM{3, 5}
	packed35 := make([]byte, 5*2)
	for r := 0; r < 5; r++ {
		packed35[r*2] = 0 | 1<<3 | 2<<6 // 0, 1, 2 (2 spills into the next byte)
		packed35[r*2+1] = 0
	}
	packed35[2*2] = 0 | 1<<3 | 3<<6 // row 2: 0, 1, 7 (7 = 0b111 spills)
	packed35[2*2+1] = 1
	if err := ValidateNMIndices(p35, 5, 5, packed35); !errors.Is(err, ErrIndex) {
		t.Fatalf("setup: %v", err)
	}
	if err := ValidateTransposeMask(p35, 5, 5, packed35, []byte{7, 7, 7, 7, 7}); !errors.Is(err, ErrIndex) || !strings.Contains(err.Error(), "row 2") {
		t.Errorf("validate mask with out-of-range index: %v", err)
	}
}

func BenchmarkValidateTransposeMask(b *testing.B) {
	p := NM{2, 4}
	rows, cols := 1024, 4096
	rng := rand.New(rand.NewPCG(1, 2))
	_, values, idx, packedIdx := tmtRandomNMWeight(rng, p, rows, cols)
	keep, _ := DoublePruneMagnitude(p, rows, cols, values, idx)
	size, _ := TransposeMaskSize(p, rows, cols)
	mask := make([]byte, size)
	if err := PackTransposeMask(p, rows, cols, keep, mask); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(mask) + len(packedIdx)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := ValidateTransposeMask(p, rows, cols, packedIdx, mask); err != nil {
			b.Fatal(err)
		}
	}
}

// TestTransposeMaskValidateMatchesReference checks ValidateTransposeMask
// on random keep bits (often breaking the limit) against a direct count,
// for every pattern and several shapes, including the row group and column
// it reports.
func TestTransposeMaskValidateMatchesReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(77, 78))
	for _, p := range nmtAllPatterns() {
		for trial := 0; trial < 12; trial++ {
			rows := p.M * (1 + rng.IntN(3))
			cols := p.M * (1 + rng.IntN(7))
			_, values, idx, packedIdx := tmtRandomNMWeight(rng, p, rows, cols)
			keep := make([]bool, len(values))
			density := []int{100, 90, 60, 30}[trial%4]
			for i := range keep {
				keep[i] = rng.IntN(100) < density
			}
			size, _ := TransposeMaskSize(p, rows, cols)
			mask := make([]byte, size)
			if err := PackTransposeMask(p, rows, cols, keep, mask); err != nil {
				t.Fatal(err)
			}
			_, present := tmtDenseKeptByBoth(p, rows, cols, values, idx, keep)
			want := ""
			for rg := 0; rg < rows/p.M && want == ""; rg++ {
				for c := 0; c < cols && want == ""; c++ {
					cnt := 0
					for o := 0; o < p.M; o++ {
						if present[(rg*p.M+o)*cols+c] {
							cnt++
						}
					}
					if cnt > p.N {
						want = fmt.Sprintf("keeps %d entries in column %d of row group %d ", cnt, c, rg)
					}
				}
			}
			err := ValidateTransposeMask(p, rows, cols, packedIdx, mask)
			switch {
			case want == "" && err != nil:
				t.Fatalf("%s [%d,%d]: %v; want valid", p, rows, cols, err)
			case want != "" && (!errors.Is(err, ErrMask) || !strings.Contains(err.Error(), want)):
				t.Fatalf("%s [%d,%d]: %v; want ErrMask with %q", p, rows, cols, err, want)
			}
			_, _, errM := MaterializeTranspose(p, rows, cols, values, idx, keep)
			if (errM == nil) != (want == "") || (errM != nil && !errors.Is(errM, ErrMask)) {
				t.Fatalf("%s [%d,%d]: materialize %v; reference %q", p, rows, cols, errM, want)
			}
			if want == "" {
				tmtCheckMaterialized(t, p.String(), p, rows, cols, values, idx, keep)
			}
		}
	}
}

// The branch-free 2:4 double pruning picks what the general ranking
// picks, ties between rows (and zeros) included.
func TestDoublePrune24MatchesGeneral(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 24))
	p := NM{N: 2, M: 4}
	for _, shape := range [][2]int{{4, 8}, {8, 64}, {36, 256}} {
		rows, cols := shape[0], shape[1]
		dense := make([]float32, rows*cols)
		for i := range dense {
			if rng.IntN(3) == 0 {
				dense[i] = float32(rng.IntN(3) - 1)
			} else {
				dense[i] = float32(rng.NormFloat64())
			}
		}
		keep := make([]bool, len(dense))
		for gi := 0; gi < len(dense)/4; gi++ {
			a := rng.IntN(4)
			b := (a + 1 + rng.IntN(3)) % 4
			keep[4*gi+a], keep[4*gi+b] = true, true
		}
		values, idx, err := SplitNM(p, rows, cols, dense, keep)
		if err != nil {
			t.Fatal(err)
		}
		g, err := tmGeometry(p, rows, cols)
		if err != nil {
			t.Fatal(err)
		}
		fast := make([]bool, len(values))
		general := make([]bool, len(values))
		doublePrune24(rows, cols, values, idx, fast)
		doublePruneGeneral(g, p, cols, values, idx, general)
		for i := range fast {
			if fast[i] != general[i] {
				t.Fatalf("%dx%d: value %d: fast %v, general %v", rows, cols, i, fast[i], general[i])
			}
		}
	}
}
