package ops

import (
	"fmt"

	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/format/slopepb"
	"github.com/slopeml/slope/ops/cpu"
)

// matrix is a bound weight that computes y[m, out] = x[m, in]·Wᵀ + bias.
type matrix interface {
	Linear(y, x []float32, m int, bias []float32, threads int) error
}

// denseMatrix prepares a DENSE float weight [out, in] for the CPU
// kernels, from its bytes in place (one repack into kernel panels, at
// bind time).
func denseMatrix(b Binding, input, in int) (matrix, int, error) {
	n := b.Node
	name := n.Input(input)
	t, err := b.W.Lookup(name)
	if err != nil {
		return nil, 0, fmt.Errorf("node %q: %w", n.Name, err)
	}
	if t.Encoding != slopepb.Encoding_DENSE || len(t.Shape) != 2 || int(t.Shape[1]) != in {
		return nil, 0, n.errorf("weight %q is %s %v, want a DENSE [out, %d] matrix", name, t.Encoding, t.Shape, in)
	}
	raw, err := b.W.Raw(name)
	if err != nil {
		return nil, 0, fmt.Errorf("node %q: %w", n.Name, err)
	}
	d, err := cpu.PrepareDense(cpu.DenseWeight{DType: t.Dtype, Out: int(t.Shape[0]), In: in, Data: raw})
	if err != nil {
		return nil, 0, fmt.Errorf("node %q: weight %q: %w", n.Name, name, err)
	}
	return d, int(t.Shape[0]), nil
}

// sparseMatrix prepares an NM weight for the CPU kernels.
func sparseMatrix(b Binding, input, in int) (matrix, int, error) {
	n := b.Node
	name := n.Input(input)
	v, err := b.W.NM(name)
	if err != nil {
		return nil, 0, fmt.Errorf("node %q: %w", n.Name, err)
	}
	if v.Cols != in {
		return nil, 0, n.errorf("weight %q is [%d %d], the input has width %d", name, v.Rows, v.Cols, in)
	}
	sp, err := cpu.PrepareNM(cpu.NMWeight{Pattern: v.Pattern, DType: v.DType, Out: v.Rows, In: v.Cols, Values: v.Values, Indices: v.Indices})
	if err != nil {
		return nil, 0, fmt.Errorf("node %q: weight %q: %w", n.Name, name, err)
	}
	return sp, v.Rows, nil
}

// linearStep is Linear, SlopeLinear and LMHead: a bound matrix, a bias,
// and optionally a low-rank adapter.
type linearStep struct {
	in, out int
	mat     matrix
	bias    []float32
	// Adapter: y += scale·(x·L)·R with L [in, r], R [r, out].
	rank    int
	adapter *cpu.LowRank
	r       []float32 // R, for the merged layout
	scale   float32
	// merged: the matrix has out+rank rows, the last rank of them Lᵀ.
	merged bool
}

func (s *linearStep) OutDim() int { return s.out }

func (s *linearStep) Forward(c *Call, in []*Value, out *Value) error {
	x := in[0]
	m := c.Rows()
	if err := checkValue("linear input", x, m, s.in); err != nil {
		return err
	}
	if err := checkValue("linear output", out, m, s.out); err != nil {
		return err
	}
	// Exactly m rows: the values may have spare capacity.
	xd, yd := x.Data[:m*s.in], out.Data[:m*s.out]
	if !s.merged {
		if err := s.mat.Linear(yd, xd, m, s.bias, c.Threads); err != nil {
			return err
		}
		if s.adapter != nil {
			return s.adapter.Add(yd, xd, m, s.scale, c.Threads)
		}
		return nil
	}
	// The scratch comes from the pool per call: a step is shared by every
	// session of a Model, which may run concurrently.
	w := s.out + s.rank
	buf := cpu.GetF32(m * w)
	defer cpu.PutF32(buf)
	full := (*buf)[:m*w]
	if err := s.mat.Linear(full, xd, m, nil, c.Threads); err != nil {
		return err
	}
	// full = [x·Wᵀ | x·L]; y = x·Wᵀ + b + scale·(x·L)·R.
	for r := 0; r < m; r++ {
		row := full[r*w : (r+1)*w]
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

func bindLinear(b Binding) (Step, error) {
	in, err := inDim(b, 0)
	if err != nil {
		return nil, err
	}
	mat, out, err := denseMatrix(b, 1, in)
	if err != nil {
		return nil, err
	}
	s := &linearStep{in: in, out: out, mat: mat}
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
	mat, out, err := denseMatrix(b, 1, in)
	if err != nil {
		return nil, err
	}
	return &linearStep{in: in, out: out, mat: mat}, nil
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
	mat, rows, err := sparseMatrix(b, 1, in)
	if err != nil {
		return nil, err
	}
	s := &linearStep{in: in, out: rows - int(mergedRank), mat: mat}
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
		l, ls, err := weight(b, 4, in, -1)
		if err != nil {
			return nil, err
		}
		s.rank = ls[1]
		r, _, err := weight(b, 5, s.rank, s.out)
		if err != nil {
			return nil, err
		}
		if s.scale, err = adapterScale(b, 4); err != nil {
			return nil, err
		}
		if s.adapter, err = cpu.PrepareLowRank(in, s.out, s.rank, l, r); err != nil {
			return nil, fmt.Errorf("node %q: adapter: %w", n.Name, err)
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
