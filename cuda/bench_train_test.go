package cuda

import (
	"testing"

	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/train"
)

// The benchmark's periodic stage runs as often as the trainer's default
// --mask-refresh.
func TestMaskRefreshStepsMatchesTrainer(t *testing.T) {
	if MaskRefreshSteps != train.DefaultMaskRefresh {
		t.Errorf("MaskRefreshSteps = %d, train.DefaultMaskRefresh = %d", MaskRefreshSteps, train.DefaultMaskRefresh)
	}
}

// randomTKeep24 is a valid transpose mask (at most 2 kept values in each
// column and group of 4 rows, as the format's check says) with empty,
// lone and full column groups, lone values in the group's last row among
// them.
func TestRandomTKeep24(t *testing.T) {
	const out, in = 64, 128
	p := format.NM{N: 2, M: 4}
	packed := random24Indices(out, in, 3)
	keep := randomTKeep24(packed, out, in, 3)
	idx := make([]uint8, out*in/2)
	if err := format.UnpackNMIndices(p, out, in, packed, idx); err != nil {
		t.Fatal(err)
	}
	bits := make([]bool, len(keep))
	for i, k := range keep {
		bits[i] = k == 1
	}
	n, err := format.TransposeMaskSize(p, out, in)
	if err != nil {
		t.Fatal(err)
	}
	mask := make([]byte, n)
	if err := format.PackTransposeMask(p, out, in, bits, mask); err != nil {
		t.Fatal(err)
	}
	if err := format.ValidateTransposeMask(p, out, in, packed, mask); err != nil {
		t.Fatalf("not a valid transpose mask: %v", err)
	}
	// Count the column groups by how many values they keep, and the lone
	// ones in row 3 of their group.
	var perGroup [3]int
	lone3 := 0
	k := in / 2
	for rg := 0; rg < out/4; rg++ {
		var cnt [in]int
		var last [in]int
		for q := 0; q < 4; q++ {
			r := 4*rg + q
			for j := 0; j < k; j++ {
				if keep[r*k+j] == 1 {
					c := j/2*4 + int(idx[r*k+j])
					cnt[c]++
					last[c] = q
				}
			}
		}
		for c := range cnt {
			if cnt[c] > 2 {
				t.Fatalf("row group %d, column %d keeps %d", rg, c, cnt[c])
			}
			perGroup[cnt[c]]++
			if cnt[c] == 1 && last[c] == 3 {
				lone3++
			}
		}
	}
	if perGroup[0] == 0 || perGroup[1] == 0 || perGroup[2] == 0 || lone3 == 0 {
		t.Errorf("column groups keeping 0/1/2: %v, lone in the last row: %d", perGroup, lone3)
	}
}

// hasZeroBF16 finds +0 and -0 and nothing else.
func TestHasZeroBF16(t *testing.T) {
	for _, c := range []struct {
		raw  []byte
		want bool
	}{
		{[]byte{0x80, 0x3f, 0x01, 0x00}, false}, // 1.0, the smallest subnormal
		{[]byte{0x80, 0x3f, 0x00, 0x00}, true},  // +0
		{[]byte{0x00, 0x80, 0x80, 0x3f}, true},  // -0
		{[]byte{0x00, 0x01}, false},             // a normal number with a zero low byte
		{nil, false},
	} {
		if got := hasZeroBF16(c.raw); got != c.want {
			t.Errorf("% x: %v, want %v", c.raw, got, c.want)
		}
	}
}
