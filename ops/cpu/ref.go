package cpu

import (
	"fmt"

	"github.com/slopeml/slope/format"
)

// The reference implementations below decode the weights with the format
// package, accumulate in float64 in the natural order and round once.
// They are the specification the fast kernels are tested against.

// LinearDenseRef computes y = x·Wᵀ (+ bias) straight from the raw view.
func LinearDenseRef(y, x []float32, m int, w DenseWeight, bias []float32) error {
	const op = "dense linear reference"
	if _, err := w.check(op); err != nil {
		return err
	}
	if err := checkIO(op, y, x, m, w.In, w.Out, bias); err != nil {
		return err
	}
	wf := make([]float32, w.Out*w.In)
	if err := format.DecodeFloats(w.DType, w.Data, wf); err != nil {
		return fmt.Errorf("cpu: %s: %w", op, err)
	}
	for i := 0; i < m; i++ {
		xr := x[i*w.In : (i+1)*w.In]
		for o := 0; o < w.Out; o++ {
			wr := wf[o*w.In : (o+1)*w.In]
			var s float64
			for k, xv := range xr {
				s += float64(xv) * float64(wr[k])
			}
			if bias != nil {
				s += float64(bias[o])
			}
			y[i*w.Out+o] = float32(s)
		}
	}
	return nil
}

// LinearNMRef computes y = x·Wᵀ (+ bias) straight from the raw N:M view;
// the index section is fully validated (format.UnpackNMIndices).
func LinearNMRef(y, x []float32, m int, w NMWeight, bias []float32) error {
	const op = "nm linear reference"
	if _, err := w.check(op); err != nil {
		return err
	}
	if err := checkIO(op, y, x, m, w.In, w.Out, bias); err != nil {
		return err
	}
	p := w.Pattern
	kept := w.In / p.M * p.N
	vals := make([]float32, w.Out*kept)
	if err := format.DecodeFloats(w.DType, w.Values, vals); err != nil {
		return fmt.Errorf("cpu: %s: %w", op, err)
	}
	idx := make([]uint8, w.Out*kept)
	if err := format.UnpackNMIndices(p, w.Out, w.In, w.Indices, idx); err != nil {
		return fmt.Errorf("cpu: %s: %w", op, err)
	}
	for i := 0; i < m; i++ {
		xr := x[i*w.In : (i+1)*w.In]
		for o := 0; o < w.Out; o++ {
			var s float64
			for t := 0; t < kept; t++ {
				c := t/p.N*p.M + int(idx[o*kept+t])
				s += float64(xr[c]) * float64(vals[o*kept+t])
			}
			if bias != nil {
				s += float64(bias[o])
			}
			y[i*w.Out+o] = float32(s)
		}
	}
	return nil
}

// LowRankAddRef computes y += scale·(x·L)·R with x [m, in], L [in, r]
// and R [r, out] row-major, in float64.
func LowRankAddRef(y, x []float32, m, in, out, r int, l, rr []float32, scale float32) error {
	const op = "low-rank add reference"
	if err := checkLowRank(op, y, x, m, in, out, r, l, rr); err != nil {
		return err
	}
	t := make([]float64, r)
	for i := 0; i < m; i++ {
		for j := range t {
			var s float64
			for k := 0; k < in; k++ {
				s += float64(x[i*in+k]) * float64(l[k*r+j])
			}
			t[j] = s
		}
		for o := 0; o < out; o++ {
			var s float64
			for j, tv := range t {
				s += tv * float64(rr[j*out+o])
			}
			y[i*out+o] = float32(float64(y[i*out+o]) + float64(scale)*s)
		}
	}
	return nil
}
