package ops

import (
	"fmt"

	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/format/slopepb"
)

// matrix is a bound weight that computes y[m, out] = x[m, in]·Wᵀ + bias.
type matrix interface {
	Linear(y, x []float32, m int, bias []float32, threads int) error
}

// denseMatrix is a weight decoded to float32 [out, in].
type denseMatrix struct {
	out, in int
	w       []float32
}

// Linear: each output element is one dot product over in, accumulated in
// float32 in index order (deterministic for any thread count).
func (d *denseMatrix) Linear(y, x []float32, m int, bias []float32, threads int) error {
	if len(x) < m*d.in || len(y) < m*d.out || (bias != nil && len(bias) != d.out) {
		return fmt.Errorf("linear: x %d, y %d, bias %d floats for m=%d, in=%d, out=%d", len(x), len(y), len(bias), m, d.in, d.out)
	}
	// Split over outputs: every row of W is read once per call.
	parallelRows(d.out, threads, func(lo, hi int) {
		for o := lo; o < hi; o++ {
			w := d.w[o*d.in : (o+1)*d.in]
			var b float32
			if bias != nil {
				b = bias[o]
			}
			for r := 0; r < m; r++ {
				y[r*d.out+o] = dot(w, x[r*d.in:(r+1)*d.in]) + b
			}
		}
	})
	return nil
}

// linearStep is Linear, SlopeLinear and LMHead: a bound matrix, a bias,
// and optionally a low-rank adapter.
type linearStep struct {
	in, out int
	mat     matrix
	bias    []float32
	// Adapter: y += scale·(x·L)·R with L [in, r], R [r, out].
	rank  int
	l, r  []float32
	scale float32
	// merged: the matrix has out+rank rows, the last rank of them Lᵀ.
	merged bool
	full   []float32 // scratch [rows, out+rank] for the merged layout
}

func (s *linearStep) OutDim() int { return s.out }

func (s *linearStep) Forward(c *Call, in []*Value, out *Value) error {
	x := in[0]
	m := c.Rows()
	if err := checkValue("linear input", x, m, s.in); err != nil {
		return err
	}
	if !s.merged {
		if err := s.mat.Linear(out.Data, x.Data, m, s.bias, c.Threads); err != nil {
			return err
		}
		if s.rank > 0 {
			lowRankAdd(out.Data, x.Data, m, s.in, s.out, s.rank, s.l, s.r, s.scale, c.Threads)
		}
		return nil
	}
	w := s.out + s.rank
	if len(s.full) < m*w {
		s.full = make([]float32, m*w)
	}
	if err := s.mat.Linear(s.full, x.Data, m, nil, c.Threads); err != nil {
		return err
	}
	// full = [x·Wᵀ | x·L]; y = x·Wᵀ + b + scale·(x·L)·R.
	for r := 0; r < m; r++ {
		row := s.full[r*w : (r+1)*w]
		y := out.Data[r*s.out : (r+1)*s.out]
		copy(y, row[:s.out])
		if s.bias != nil {
			for o := range y {
				y[o] += s.bias[o]
			}
		}
		xl := row[s.out:]
		for k, v := range xl {
			f := s.scale * v
			rr := s.r[k*s.out : (k+1)*s.out]
			for o := range y {
				y[o] += f * rr[o]
			}
		}
	}
	return nil
}

// lowRankAdd: y[m, out] += scale·(x[m, in]·L[in, r])·R[r, out].
func lowRankAdd(y, x []float32, m, in, out, rank int, l, r []float32, scale float32, threads int) {
	parallelRows(m, threads, func(lo, hi int) {
		t := make([]float32, rank)
		for row := lo; row < hi; row++ {
			xr := x[row*in : (row+1)*in]
			for k := range t {
				t[k] = 0
			}
			for i, v := range xr {
				li := l[i*rank : (i+1)*rank]
				for k := range t {
					t[k] += v * li[k]
				}
			}
			yr := y[row*out : (row+1)*out]
			for k, v := range t {
				f := scale * v
				rk := r[k*out : (k+1)*out]
				for o := range yr {
					yr[o] += f * rk[o]
				}
			}
		}
	})
}

func bindLinear(b Binding) (Step, error) {
	in, err := inDim(b, 0)
	if err != nil {
		return nil, err
	}
	w, shape, err := weight(b, 1, -1, in)
	if err != nil {
		return nil, err
	}
	s := &linearStep{in: in, out: shape[0], mat: &denseMatrix{out: shape[0], in: in, w: w}}
	if s.bias, err = optionalWeight(b, 2, s.out); err != nil {
		return nil, err
	}
	return s, nil
}

func bindLMHead(b Binding) (Step, error) {
	in, err := inDim(b, 0)
	if err != nil {
		return nil, err
	}
	w, shape, err := weight(b, 1, -1, in)
	if err != nil {
		return nil, err
	}
	return &linearStep{in: in, out: shape[0], mat: &denseMatrix{out: shape[0], in: in, w: w}}, nil
}

func bindSlopeLinear(b Binding) (Step, error) {
	n := b.Node
	in, err := inDim(b, 0)
	if err != nil {
		return nil, err
	}
	name := n.Input(1)
	t, err := b.W.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("node %q: %w", n.Name, err)
	}
	if t.Encoding != slopepb.Encoding_NM {
		return nil, n.errorf("weight %q is %s, SlopeLinear needs an NM weight", name, t.Encoding)
	}
	an, _ := n.Int("n", 0)
	am, _ := n.Int("m", 0)
	if p := (format.NM{N: int(an), M: int(am)}); p.N != int(t.Nm.GetN()) || p.M != int(t.Nm.GetM()) {
		return nil, n.errorf("attributes n:m = %s, weight %q is %d:%d", p, name, t.Nm.GetN(), t.Nm.GetM())
	}
	mergedRank, err := n.Int("merged_rank", 0)
	if err != nil {
		return nil, err
	}
	w, shape, err := weight(b, 1, -1, in)
	if err != nil {
		return nil, err
	}
	rows := shape[0]
	s := &linearStep{in: in, out: rows - int(mergedRank), mat: &denseMatrix{out: rows, in: in, w: w}}
	if mergedRank < 0 || s.out < 1 {
		return nil, n.errorf("merged_rank %d for a weight of %d rows", mergedRank, rows)
	}
	if s.bias, err = optionalWeight(b, 2, s.out); err != nil {
		return nil, err
	}
	switch {
	case mergedRank > 0:
		if n.Input(4) != "" || n.Input(5) == "" {
			return nil, n.errorf("merged_rank %d needs R and no L input", mergedRank)
		}
		s.merged, s.rank = true, int(mergedRank)
		if s.r, _, err = weight(b, 5, s.rank, s.out); err != nil {
			return nil, err
		}
		if s.scale, err = adapterScale(b, 5); err != nil {
			return nil, err
		}
	case n.Input(4) != "" || n.Input(5) != "":
		var ls []int
		if s.l, ls, err = weight(b, 4, in, -1); err != nil {
			return nil, err
		}
		s.rank = ls[1]
		if s.r, _, err = weight(b, 5, s.rank, s.out); err != nil {
			return nil, err
		}
		if s.scale, err = adapterScale(b, 4); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// adapterScale reads the scale stored with an adapter factor.
func adapterScale(b Binding, input int) (float32, error) {
	t, err := b.W.Lookup(b.Node.Input(input))
	if err != nil {
		return 0, err
	}
	if t.Adapter == nil {
		return 0, b.Node.errorf("input %d %q is not a LOW_RANK adapter factor", input, t.Name)
	}
	return t.Adapter.Scale, nil
}
