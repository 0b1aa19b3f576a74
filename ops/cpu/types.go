package cpu

import (
	"fmt"
	"math"
	"math/bits"

	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/format/slopepb"
)

// DType is a weight storage dtype: FLOAT32, FLOAT16 or BFLOAT16.
type DType = slopepb.DType

// Weight storage dtypes.
const (
	Float32  = slopepb.DType_FLOAT32
	Float16  = slopepb.DType_FLOAT16
	BFloat16 = slopepb.DType_BFLOAT16
)

// DenseWeight views a dense weight [Out, In] in place (for example a
// zero-copy slice of an mmap'd container): Data holds Out*In raw
// little-endian elements of DType, row-major.
type DenseWeight struct {
	DType   DType
	Out, In int
	Data    []byte
}

// NMWeight views an N:M sparse weight [Out, In], pruned along In, in the
// container's raw layout (format.SPEC.md, "NM"): Values holds
// Out*In*N/M kept elements of DType, Indices the packed in-group indices
// (ceil(log2 M) bits each, LSB-first, each row padded to whole bytes).
type NMWeight struct {
	Pattern format.NM
	DType   DType
	Out, In int
	Values  []byte
	Indices []byte
}

// errShape formats an error wrapping format.ErrShape.
func errShape(op, f string, a ...any) error {
	return fmt.Errorf("cpu: %s: %s: %w", op, fmt.Sprintf(f, a...), format.ErrShape)
}

// elemSize returns the byte size of a float weight dtype.
func elemSize(op string, dt DType) (int, error) {
	switch dt {
	case Float32:
		return 4, nil
	case Float16, BFloat16:
		return 2, nil
	}
	return 0, errShape(op, "weight dtype %s is not FLOAT32, FLOAT16 or BFLOAT16", dt)
}

// mulOK returns a*b for non-negative a, b, and false on int overflow.
func mulOK(a, b int) (int, bool) {
	hi, lo := bits.Mul64(uint64(a), uint64(b))
	if hi != 0 || lo > math.MaxInt {
		return 0, false
	}
	return int(lo), true
}

// check validates the view: dtype, positive dims, and len(Data).
func (w *DenseWeight) check(op string) (esz int, err error) {
	if esz, err = elemSize(op, w.DType); err != nil {
		return 0, err
	}
	if w.Out < 1 || w.In < 1 {
		return 0, errShape(op, "dense weight [%d, %d]: dims must be >= 1", w.Out, w.In)
	}
	n, ok := mulOK(w.Out, w.In)
	if ok {
		n, ok = mulOK(n, esz)
	}
	if !ok {
		return 0, errShape(op, "dense weight [%d, %d] overflows", w.Out, w.In)
	}
	if len(w.Data) != n {
		return 0, errShape(op, "dense weight [%d, %d] %s: data has %d bytes, want %d",
			w.Out, w.In, w.DType, len(w.Data), n)
	}
	return esz, nil
}

// check validates the view: pattern, dtype, shape (In a multiple of M) and
// the byte lengths of both sections against format.NMSizes.
func (w *NMWeight) check(op string) (esz int, err error) {
	if esz, err = elemSize(op, w.DType); err != nil {
		return 0, err
	}
	if err := w.Pattern.Validate(); err != nil {
		return 0, fmt.Errorf("cpu: %s: %w", op, err)
	}
	vb, ib, err := format.NMSizes(w.Pattern, w.Out, w.In, esz)
	if err != nil {
		return 0, fmt.Errorf("cpu: %s: nm weight [%d, %d]: %w", op, w.Out, w.In, err)
	}
	if int64(len(w.Values)) != vb {
		return 0, errShape(op, "nm %s weight [%d, %d] %s: values have %d bytes, want %d",
			w.Pattern, w.Out, w.In, w.DType, len(w.Values), vb)
	}
	if int64(len(w.Indices)) != ib {
		return 0, errShape(op, "nm %s weight [%d, %d]: indices have %d bytes, want %d",
			w.Pattern, w.Out, w.In, len(w.Indices), ib)
	}
	return esz, nil
}

// checkIO validates the activation, output and bias slices of a linear
// layer with m rows.
func checkIO(op string, y, x []float32, m, in, out int, bias []float32) error {
	if m < 0 {
		return errShape(op, "m = %d is negative", m)
	}
	nx, ok1 := mulOK(m, in)
	ny, ok2 := mulOK(m, out)
	if !ok1 || !ok2 {
		return errShape(op, "m = %d rows overflow", m)
	}
	if len(x) != nx {
		return errShape(op, "x has %d elements, want m*In = %d*%d = %d", len(x), m, in, nx)
	}
	if len(y) != ny {
		return errShape(op, "y has %d elements, want m*Out = %d*%d = %d", len(y), m, out, ny)
	}
	if bias != nil && len(bias) != out {
		return errShape(op, "bias has %d elements, want Out = %d", len(bias), out)
	}
	return nil
}

// checkLowRank validates the arguments of LowRankAdd and LowRankAddRef.
func checkLowRank(op string, y, x []float32, m, in, out, r int, l, rr []float32) error {
	if in < 1 || out < 1 || r < 1 {
		return errShape(op, "in = %d, out = %d, r = %d: must be >= 1", in, out, r)
	}
	if y != nil || x != nil || m != 0 {
		if err := checkIO(op, y, x, m, in, out, nil); err != nil {
			return err
		}
	}
	nl, ok1 := mulOK(in, r)
	nr, ok2 := mulOK(r, out)
	if !ok1 || !ok2 {
		return errShape(op, "factors [%d, %d] and [%d, %d] overflow", in, r, r, out)
	}
	if len(l) != nl {
		return errShape(op, "L has %d elements, want in*r = %d*%d = %d", len(l), in, r, nl)
	}
	if len(rr) != nr {
		return errShape(op, "R has %d elements, want r*out = %d*%d = %d", len(rr), r, out, nr)
	}
	return nil
}

// ResolveThreads maps a thread count <= 0 to GOMAXPROCS (the kernels'
// convention for "all cores").
func ResolveThreads(t int) int {
	if t <= 0 {
		t = gomaxprocs()
	}
	return t
}
