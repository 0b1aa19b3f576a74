package format

import (
	"errors"
	"math"
	"strings"
	"testing"
)

func TestAdapterShapes(t *testing.T) {
	for _, c := range []struct {
		w, l, r []uint64
		rank    int
	}{
		{[]uint64{4096, 11008}, []uint64{11008, 16}, []uint64{16, 4096}, 16},
		{[]uint64{8, 4}, []uint64{4, 4}, []uint64{4, 8}, 4},
		{[]uint64{3, 5}, []uint64{5, 1}, []uint64{1, 3}, 1},
		{[]uint64{2, 2}, []uint64{2, 2}, []uint64{2, 2}, 2},
	} {
		got, err := ValidateAdapterShapes(c.w, c.l, c.r)
		if err != nil || got != c.rank {
			t.Errorf("ValidateAdapterShapes(%v, %v, %v) = %d, %v; want %d", c.w, c.l, c.r, got, err, c.rank)
		}
	}
	for _, c := range []struct {
		w, l, r []uint64
		frag    string
	}{
		{[]uint64{8, 4}, []uint64{8, 2}, []uint64{2, 8}, "L has 8 rows"},     // L is [out, r]
		{[]uint64{8, 4}, []uint64{4, 2}, []uint64{2, 4}, "R has 4 columns"},  // R is [r, in]
		{[]uint64{8, 4}, []uint64{4, 2}, []uint64{3, 8}, "rank mismatch"},    // r differs
		{[]uint64{8, 4}, []uint64{4, 0}, []uint64{0, 8}, "rank 0"},           // r = 0
		{[]uint64{8, 4}, []uint64{4, 5}, []uint64{5, 8}, "min(in, out) = 4"}, // r > in
		{[]uint64{3, 6}, []uint64{6, 4}, []uint64{4, 3}, "min(in, out) = 3"}, // r > out
		{[]uint64{8, 4, 1}, []uint64{4, 2}, []uint64{2, 8}, "2-D"},           // 3-D weight
		{[]uint64{8, 4}, []uint64{4}, []uint64{2, 8}, "2-D"},                 // 1-D L
		{[]uint64{8, 4}, []uint64{4, 2}, nil, "2-D"},                         // missing R
		{[]uint64{0, 4}, []uint64{4, 1}, []uint64{1, 0}, "min(in, out) = 0"}, // empty weight
		{[]uint64{math.MaxUint64, math.MaxUint64}, []uint64{math.MaxUint64, math.MaxUint64}, []uint64{math.MaxUint64, math.MaxUint64}, "fit"},
	} {
		_, err := ValidateAdapterShapes(c.w, c.l, c.r)
		if !errors.Is(err, ErrShape) {
			t.Errorf("ValidateAdapterShapes(%v, %v, %v) = %v; want ErrShape", c.w, c.l, c.r, err)
			continue
		}
		if !strings.Contains(err.Error(), c.frag) {
			t.Errorf("ValidateAdapterShapes(%v, %v, %v): message %q lacks %q", c.w, c.l, c.r, err, c.frag)
		}
	}
	// The message names all three shapes.
	_, err := ValidateAdapterShapes([]uint64{8, 4}, []uint64{4, 9}, []uint64{9, 8})
	if err == nil || !strings.Contains(err.Error(), "[8 4]") || !strings.Contains(err.Error(), "[4 9]") || !strings.Contains(err.Error(), "[9 8]") {
		t.Errorf("message %v does not give the shapes", err)
	}
}
