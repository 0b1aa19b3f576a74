package format

import (
	"fmt"
	"math"
)

// ValidateAdapterShapes checks the shapes of a low-rank adapter pair for a
// weight of shape [out, in]: L must be [in, r] and R [r, out] with
// 1 <= r <= min(in, out). It returns r; any mismatch wraps ErrShape with a
// message giving the three shapes.
func ValidateAdapterShapes(weightShape, lShape, rShape []uint64) (rank int, err error) {
	bad := func(why string) (int, error) {
		return 0, fmt.Errorf("adapter shapes: weight %v, L %v, R %v: %s: %w", weightShape, lShape, rShape, why, ErrShape)
	}
	if len(weightShape) != 2 || len(lShape) != 2 || len(rShape) != 2 {
		return bad("weight [out, in], L [in, r] and R [r, out] must all be 2-D")
	}
	out, in := weightShape[0], weightShape[1]
	r := lShape[1]
	if lShape[0] != in {
		return bad(fmt.Sprintf("L has %d rows, want in = %d", lShape[0], in))
	}
	if rShape[1] != out {
		return bad(fmt.Sprintf("R has %d columns, want out = %d", rShape[1], out))
	}
	if rShape[0] != r {
		return bad(fmt.Sprintf("rank mismatch: L has %d columns, R has %d rows", r, rShape[0]))
	}
	if r < 1 || r > min(in, out) {
		return bad(fmt.Sprintf("rank %d not in [1, min(in, out) = %d]", r, min(in, out)))
	}
	if r > math.MaxInt {
		return bad(fmt.Sprintf("rank %d does not fit an int", r))
	}
	return int(r), nil
}
