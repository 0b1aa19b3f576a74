package ops

import (
	"fmt"
	"math"
)

// LayerNorm

type layerNormStep struct {
	dim  int
	w, b []float32 // nil when the LayerNorm has no affine parameters
	eps  float64
}

func bindLayerNorm(b Binding) (Step, error) {
	d, err := inDim(b, 0)
	if err != nil {
		return nil, err
	}
	eps, err := b.Node.LayerNormEpsilon()
	if err != nil {
		return nil, err
	}
	s := &layerNormStep{dim: d, eps: float64(eps)}
	if s.w, err = optionalWeight(b, 1, d); err != nil {
		return nil, err
	}
	if s.b, err = optionalWeight(b, 2, d); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *layerNormStep) OutDim() int { return s.dim }

func (s *layerNormStep) Forward(c *Call, in []*Value, out *Value) error {
	x := in[0]
	if err := checkValue("layernorm input", x, c.Rows(), s.dim); err != nil {
		return err
	}
	if err := checkValue("layernorm output", out, c.Rows(), s.dim); err != nil {
		return err
	}
	parallelRows(x.Rows, c.Threads, func(lo, hi int) {
		for r := lo; r < hi; r++ {
			layerNormRow(out.Row(r), x.Row(r), s.w, s.b, s.eps)
		}
	})
	return nil
}

// layerNormRow: mean and variance in float64 (two passes), then
// (x-mean)/sqrt(var+eps)*w + b.
func layerNormRow(y, x, w, b []float32, eps float64) {
	var mean float64
	for _, v := range x {
		mean += float64(v)
	}
	mean /= float64(len(x))
	var vr float64
	for _, v := range x {
		d := float64(v) - mean
		vr += d * d
	}
	inv := 1 / math.Sqrt(vr/float64(len(x))+eps)
	for i, v := range x {
		z := (float64(v) - mean) * inv
		if w != nil {
			z *= float64(w[i])
		}
		if b != nil {
			z += float64(b[i])
		}
		y[i] = float32(z)
	}
}

// Activations

type activationStep struct {
	dim int
	f   func(float32) float32
}

// Activation returns the scalar function of an activation op.
func Activation(op string) (func(float32) float32, bool) {
	switch op {
	case OpRelu:
		return func(x float32) float32 { return max(x, 0) }, true
	case OpGelu:
		return func(x float32) float32 {
			return float32(0.5 * float64(x) * (1 + math.Erf(float64(x)/math.Sqrt2)))
		}, true
	case OpGeluTanh:
		return func(x float32) float32 {
			v := float64(x)
			return float32(0.5 * v * (1 + math.Tanh(math.Sqrt(2/math.Pi)*(v+0.044715*v*v*v))))
		}, true
	case OpSilu:
		return func(x float32) float32 { return float32(float64(x) / (1 + math.Exp(-float64(x)))) }, true
	case OpTanh:
		return func(x float32) float32 { return float32(math.Tanh(float64(x))) }, true
	case OpSigmoid:
		return func(x float32) float32 { return float32(1 / (1 + math.Exp(-float64(x)))) }, true
	}
	return nil, false
}

func bindActivation(b Binding) (Step, error) {
	d, err := inDim(b, 0)
	if err != nil {
		return nil, err
	}
	f, ok := Activation(b.Node.OpType)
	if !ok {
		return nil, fmt.Errorf("node %q: activation %s: %w", b.Node.Name, b.Node.OpType, ErrUnsupported)
	}
	return &activationStep{dim: d, f: f}, nil
}

func (s *activationStep) OutDim() int { return s.dim }

func (s *activationStep) Forward(c *Call, in []*Value, out *Value) error {
	if err := checkValue("activation input", in[0], c.Rows(), s.dim); err != nil {
		return err
	}
	if err := checkValue("activation output", out, c.Rows(), s.dim); err != nil {
		return err
	}
	x := in[0].Data[:c.Rows()*s.dim]
	y := out.Data[:len(x)]
	parallelRows(len(x), c.Threads, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			y[i] = s.f(x[i])
		}
	})
	return nil
}

// Add

type addStep struct{ dim int }

func bindAdd(b Binding) (Step, error) {
	d0, err := inDim(b, 0)
	if err != nil {
		return nil, err
	}
	d1, err := inDim(b, 1)
	if err != nil {
		return nil, err
	}
	if d0 != d1 {
		return nil, b.Node.errorf("adds widths %d and %d", d0, d1)
	}
	return &addStep{dim: d0}, nil
}

func (s *addStep) OutDim() int { return s.dim }

func (s *addStep) Forward(c *Call, in []*Value, out *Value) error {
	for i, v := range in[:2] {
		if err := checkValue(fmt.Sprintf("add input %d", i), v, c.Rows(), s.dim); err != nil {
			return err
		}
	}
	if err := checkValue("add output", out, c.Rows(), s.dim); err != nil {
		return err
	}
	n := c.Rows() * s.dim
	a, b, y := in[0].Data[:n], in[1].Data[:n], out.Data[:n]
	for i := range y {
		y[i] = a[i] + b[i]
	}
	return nil
}
