package convert

import (
	"bytes"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/slopeml/slope/format"
)

func TestMagnitudeMaskHand(t *testing.T) {
	p24 := format.NM{N: 2, M: 4}
	cases := []struct {
		p    format.NM
		w    []float32
		keep []int // kept positions
	}{
		{p24, []float32{1, -3, 2, 0.5}, []int{1, 2}},
		{p24, []float32{1, 1, 1, 1}, []int{0, 1}},
		{p24, []float32{0, 0, 0, 0}, []int{0, 1}},
		{p24, []float32{-2, 2, 1, 1}, []int{0, 1}},
		{p24, []float32{0.1, 0.2, -0.3, 0.3}, []int{2, 3}},
		{p24, []float32{float32(math.Inf(-1)), 5, 0, float32(math.Inf(1))}, []int{0, 3}},
		{p24, []float32{0, 0, 1, 0, 4, 3, 2, 1}, []int{0, 2, 4, 5}},
		{format.NM{N: 1, M: 2}, []float32{-1, 1, 2, -3}, []int{0, 3}},
		{format.NM{N: 3, M: 4}, []float32{1, 2, 3, 4}, []int{1, 2, 3}},
		{format.NM{N: 1, M: 4}, []float32{float32(math.Copysign(0, -1)), 0, 0, 0}, []int{0}},
	}
	for _, c := range cases {
		keep, err := MagnitudeMask(c.p, 1, len(c.w), c.w)
		if err != nil {
			t.Fatal(err)
		}
		var got []int
		for i, k := range keep {
			if k {
				got = append(got, i)
			}
		}
		if !slices.Equal(got, c.keep) {
			t.Errorf("%s %v: kept %v, want %v", c.p, c.w, got, c.keep)
		}
	}
}

// refMask sorts each group by (|w| descending, index ascending).
func refMask(p format.NM, w []float32) []bool {
	keep := make([]bool, len(w))
	for base := 0; base < len(w); base += p.M {
		ix := make([]int, p.M)
		for j := range ix {
			ix[j] = j
		}
		sort.SliceStable(ix, func(a, b int) bool {
			return math.Abs(float64(w[base+ix[a]])) > math.Abs(float64(w[base+ix[b]]))
		})
		for _, j := range ix[:p.N] {
			keep[base+j] = true
		}
	}
	return keep
}

func TestMagnitudeMaskRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, p := range []format.NM{{N: 1, M: 2}, {N: 2, M: 4}, {N: 1, M: 4}, {N: 3, M: 4}, {N: 2, M: 8}, {N: 4, M: 8}, {N: 5, M: 16}, {N: 15, M: 16}} {
		for trial := range 20 {
			rows, cols := 1+r.IntN(9), p.M*(1+r.IntN(6))
			w := make([]float32, rows*cols)
			for i := range w {
				if trial%2 == 0 {
					w[i] = float32(r.NormFloat64())
				} else {
					w[i] = float32(r.IntN(5) - 2) // many ties
				}
			}
			keep, err := MagnitudeMask(p, rows, cols, w)
			if err != nil {
				t.Fatal(err)
			}
			if want := refMask(p, w); !slices.Equal(keep, want) {
				t.Fatalf("%s [%d %d] %v: mask %v, want %v", p, rows, cols, w, keep, want)
			}
			if _, _, err := format.SplitNM(p, rows, cols, w, keep); err != nil {
				t.Fatalf("mask is not a valid %s mask: %v", p, err)
			}
		}
	}
}

func TestMagnitudeMaskErrors(t *testing.T) {
	p := format.NM{N: 2, M: 4}
	if _, err := MagnitudeMask(p, 1, 6, make([]float32, 6)); err == nil {
		t.Error("cols % M != 0 accepted")
	}
	if _, err := MagnitudeMask(p, 2, 4, make([]float32, 4)); err == nil {
		t.Error("short data accepted")
	}
	if _, err := MagnitudeMask(format.NM{N: 5, M: 4}, 1, 4, make([]float32, 4)); err == nil {
		t.Error("5:4 accepted")
	}
	w := []float32{1, 2, 3, 4, 1, float32(math.NaN()), 0, 0}
	if _, err := MagnitudeMask(p, 2, 4, w); err == nil {
		t.Error("NaN accepted")
	}
	if _, err := MagnitudeMask(p, -1, 4, nil); err == nil {
		t.Error("negative rows accepted")
	}
}

// The unrolled 2:4 path picks exactly what the general rank loop picks,
// ties (including +0 and -0) and all.
func TestMagnitudeRows24MatchesGeneral(t *testing.T) {
	rng := rand.New(rand.NewPCG(24, 4))
	const rows, cols = 37, 64
	w := make([]float32, rows*cols)
	for i := range w {
		switch rng.IntN(4) {
		case 0:
			w[i] = float32(rng.IntN(3) - 1) // many exact ties, +0
		case 1:
			w[i] = float32(math.Copysign(0, -1))
		default:
			w[i] = float32(rng.NormFloat64())
		}
	}
	fast := make([]bool, len(w))
	if err := magnitudeRows24(cols, w, fast, 0); err != nil {
		t.Fatal(err)
	}
	// The general loop, forced by a pattern value that is not 2:4 in type.
	general := make([]bool, len(w))
	var abs [16]uint32
	for base := 0; base < len(w); base += 4 {
		for j := 0; j < 4; j++ {
			abs[j] = math.Float32bits(w[base+j]) &^ (1 << 31)
		}
		for j := 0; j < 4; j++ {
			beaten := 0
			for i := 0; i < 4; i++ {
				if abs[i] > abs[j] || (abs[i] == abs[j] && i < j) {
					beaten++
				}
			}
			general[base+j] = beaten < 2
		}
	}
	for i := range w {
		if fast[i] != general[i] {
			t.Fatalf("element %d (group %v): fast %v, general %v", i, w[i/4*4:i/4*4+4], fast[i], general[i])
		}
	}
	w[5] = float32(math.NaN())
	if err := magnitudeRows24(cols, w, fast, 0); err == nil || !strings.Contains(err.Error(), "row 0, col 5") {
		t.Fatalf("NaN: %v", err)
	}
}

// The magnitude fast path writes the same file, and reports the same
// errors, as the general path, with and without a dtype conversion.
func TestWriteMagnitudeMatchesGeneral(t *testing.T) {
	const created = "2026-01-02T03:04:05Z"
	for _, dt := range []string{"keep", "fp16", "bf16"} {
		var files [2][]byte
		var errs [2][]WeightReport
		for k, fast := range []bool{true, false} {
			fastMagnitude = fast
			out := filepath.Join(t.TempDir(), "m.slope")
			res, err := DenseToSlope(t.Context(), Options{In: TinyLabel, Out: out, NM: "2:4", DType: dt, Created: created})
			fastMagnitude = true
			if err != nil {
				t.Fatal(err)
			}
			if files[k], err = os.ReadFile(out); err != nil {
				t.Fatal(err)
			}
			errs[k] = res.Weights
		}
		if !bytes.Equal(files[0], files[1]) {
			t.Fatalf("dtype %s: the fast path wrote a different file", dt)
		}
		for i := range errs[0] {
			if errs[0][i].RelErrPruned != errs[1][i].RelErrPruned {
				t.Fatalf("dtype %s: %s: error %v (fast) vs %v (general)", dt, errs[0][i].Name, errs[0][i].RelErrPruned, errs[1][i].RelErrPruned)
			}
		}
	}
}
