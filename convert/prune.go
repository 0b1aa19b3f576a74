package convert

import (
	"fmt"
	"math"
	"runtime"
	"sync"

	"github.com/slopeml/slope/format"
)

// MagnitudeMask returns the N:M keep mask of a row-major [rows, cols]
// matrix w: in every group of M consecutive elements of a row (along cols,
// the input dim of a linear weight) the N of largest |w| are kept, ties
// going to the lower index. cols must be a multiple of M. A NaN in w is an
// error (its magnitude has no order), naming its position.
func MagnitudeMask(p format.NM, rows, cols int, w []float32) ([]bool, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if rows < 0 || cols < 0 || cols%p.M != 0 {
		return nil, fmt.Errorf("magnitude mask %s: shape [%d %d]: cols must be a multiple of %d: %w", p, rows, cols, p.M, format.ErrShape)
	}
	if rows != 0 && cols > math.MaxInt/rows || len(w) != rows*cols {
		return nil, fmt.Errorf("magnitude mask %s: %d values for shape [%d %d]: %w", p, len(w), rows, cols, format.ErrShape)
	}
	keep := make([]bool, len(w))
	// Rows are independent: split them over the cores. Each group is
	// decided by ranks (how many entries beat an entry, a strictly larger
	// |w| or an equal one at a lower index), which has no data-dependent
	// loops; an entry is kept when fewer than N beat it.
	workers := min(runtime.GOMAXPROCS(0), max(rows, 1))
	chunk := (rows + workers - 1) / max(workers, 1)
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for k := 0; k < workers; k++ {
		lo, hi := k*chunk, min((k+1)*chunk, rows)
		if lo >= hi {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[k] = magnitudeRows(p, cols, w[lo*cols:hi*cols], keep[lo*cols:hi*cols], lo)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return keep, nil
}

// magnitudeRows fills keep for whole rows of w; row0 is the first row's
// index (for errors).
func magnitudeRows(p format.NM, cols int, w []float32, keep []bool, row0 int) error {
	if p.N == 2 && p.M == 4 {
		return magnitudeRows24(cols, w, keep, row0)
	}
	var abs [16]uint32 // |w| as ordered bit patterns (non-NaN floats order like their bits)
	for base := 0; base < len(w); base += p.M {
		for j := 0; j < p.M; j++ {
			v := w[base+j]
			if v != v {
				return fmt.Errorf("magnitude mask: NaN at row %d, col %d", row0+(base+j)/cols, (base+j)%cols)
			}
			abs[j] = math.Float32bits(v) &^ (1 << 31)
		}
		for j := 0; j < p.M; j++ {
			beaten := 0
			for i := 0; i < p.M; i++ {
				if abs[i] > abs[j] || (abs[i] == abs[j] && i < j) {
					beaten++
				}
			}
			keep[base+j] = beaten < p.N
		}
	}
	return nil
}

// ApplyMask returns a copy of w with the entries not kept set to zero.
func ApplyMask(w []float32, keep []bool) []float32 {
	out := make([]float32, len(w))
	keep = keep[:min(len(keep), len(w))]
	parallel(len(keep), 1<<18, func(lo, hi int) {
		for i, k := range keep[lo:hi] {
			// Branch-free (the mask is random): the bits AND an all-ones
			// or all-zeros word; a dropped entry becomes +0.
			out[lo+i] = math.Float32frombits(math.Float32bits(w[lo+i]) & -uint32(b2i(k)))
		}
	})
	return out
}

// magnitudeRows24 is magnitudeRows for 2:4, unrolled: the same ranks (an
// entry is kept when fewer than 2 entries beat it: a strictly larger |w|,
// or an equal one at a lower index).
func magnitudeRows24(cols int, w []float32, keep []bool, row0 int) error {
	keep = keep[:len(w)]
	for base := 0; base+4 <= len(w); base += 4 {
		g := w[base : base+4 : base+4]
		k0, k1, k2, k3 := absKey(g[0]), absKey(g[1]), absKey(g[2]), absKey(g[3])
		if k0 > 0x7f800000 || k1 > 0x7f800000 || k2 > 0x7f800000 || k3 > 0x7f800000 {
			for j, v := range g {
				if v != v {
					return fmt.Errorf("magnitude mask: NaN at row %d, col %d", row0+(base+j)/cols, (base+j)%cols)
				}
			}
		}
		// beaten_j counts i != j with k_i > k_j, or k_i == k_j and i < j.
		b01, b02, b03 := b2i(k0 >= k1), b2i(k0 >= k2), b2i(k0 >= k3) // 0 beats (or ties ahead of) 1, 2, 3
		b12, b13, b23 := b2i(k1 >= k2), b2i(k1 >= k3), b2i(k2 >= k3)
		beaten0 := (1 - b01) + (1 - b02) + (1 - b03)
		beaten1 := b01 + (1 - b12) + (1 - b13)
		beaten2 := b02 + b12 + (1 - b23)
		beaten3 := b03 + b13 + b23
		kk := keep[base : base+4 : base+4]
		kk[0], kk[1], kk[2], kk[3] = beaten0 < 2, beaten1 < 2, beaten2 < 2, beaten3 < 2
	}
	return nil
}

func absKey(v float32) uint32 { return math.Float32bits(v) &^ (1 << 31) }

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}
