package convert

import (
	"fmt"
	"math"

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
	var abs [16]float32
	for base := 0; base < len(w); base += p.M {
		for j := 0; j < p.M; j++ {
			v := w[base+j]
			if v != v {
				return nil, fmt.Errorf("magnitude mask: NaN at row %d, col %d", (base+j)/cols, (base+j)%cols)
			}
			abs[j] = float32(math.Abs(float64(v)))
		}
		// N passes of selection: the largest not yet kept, strictly
		// greater wins, so among equals the lowest index is taken first.
		for range p.N {
			best := -1
			for j := 0; j < p.M; j++ {
				if keep[base+j] {
					continue
				}
				if best < 0 || abs[j] > abs[best] {
					best = j
				}
			}
			keep[base+best] = true
		}
	}
	return keep, nil
}

// ApplyMask returns a copy of w with the entries not kept set to zero.
func ApplyMask(w []float32, keep []bool) []float32 {
	out := make([]float32, len(w))
	for i, k := range keep {
		if k && i < len(w) {
			out[i] = w[i]
		}
	}
	return out
}
