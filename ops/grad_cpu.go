package ops

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"

	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/format/slopepb"
	"github.com/slopeml/slope/ops/cpu"
)

// CPU training: GradSteps for every op of version 1 (issue 6). Forward
// passes of steps with parameters compute from Param.Value with plain
// float32 loops (float64 where a reduction is short); steps without
// parameters reuse the inference kernels for their forward pass.

// transposeMaskSuffix names a weight's transpose mask (as
// convert.TransposeMaskName does; convert imports ops, so it is repeated
// here).
const transposeMaskSuffix = ".transpose_mask"

// MemParamStore is an in-memory ParamStore: dense tensors are decoded to
// float32, N:M weights to their kept values with their packed index
// section and transpose mask.
type MemParamStore struct {
	w      Weights
	mu     sync.Mutex
	params map[string]*Param
	order  []*Param
}

// NewParamStore makes a ParamStore over the tensors of w.
func NewParamStore(w Weights) *MemParamStore {
	return &MemParamStore{w: w, params: map[string]*Param{}}
}

// All lists the Params created so far, in creation order.
func (s *MemParamStore) All() []*Param {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*Param(nil), s.order...)
}

// Param implements ParamStore.
func (s *MemParamStore) Param(name string) (*Param, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p := s.params[name]; p != nil {
		return p, nil
	}
	p, err := loadParam(s.w, name)
	if err != nil {
		return nil, err
	}
	s.params[name] = p
	s.order = append(s.order, p)
	return p, nil
}

func loadParam(w Weights, name string) (*Param, error) {
	t, err := w.Lookup(name)
	if err != nil {
		return nil, err
	}
	if !format.IsFloat(t.Dtype) {
		return nil, fmt.Errorf("tensor %q has dtype %s: %w", name, t.Dtype, ErrUnsupported)
	}
	shape := make([]int, len(t.Shape))
	for i, d := range t.Shape {
		shape[i] = int(d)
	}
	if t.Encoding != slopepb.Encoding_NM {
		v, err := w.Dense(name)
		if err != nil {
			return nil, err
		}
		return &Param{Name: name, Value: v, Grad: make([]float32, len(v)), Shape: shape}, nil
	}
	v, err := w.NM(name)
	if err != nil {
		return nil, err
	}
	kept, err := v.Pattern.KeptPerRow(v.Cols)
	if err != nil {
		return nil, err
	}
	n := v.Rows * kept
	vals := make([]float32, n)
	if err := format.DecodeFloats(v.DType, v.Values, vals); err != nil {
		return nil, err
	}
	if err := format.ValidateNMIndices(v.Pattern, v.Rows, v.Cols, v.Indices); err != nil {
		return nil, err
	}
	nm := &NMParam{Pattern: v.Pattern, Rows: v.Rows, Cols: v.Cols, Indices: slices.Clone(v.Indices)}
	mname := name + transposeMaskSuffix
	if _, err := w.Lookup(mname); err == nil {
		if err := loadTransposeMask(w, mname, nm); err != nil {
			return nil, err
		}
	} else if !errors.Is(err, format.ErrNotFound) {
		return nil, err
	} else if v.Rows%v.Pattern.M == 0 {
		// No stored mask: double-prune by magnitude (the reference rule).
		keep, err := nm.MagnitudeTKeep(vals)
		if err != nil {
			return nil, err
		}
		if err := nm.SetTKeep(keep); err != nil {
			return nil, err
		}
	}
	return &Param{Name: name, Value: vals, Grad: make([]float32, n), Shape: shape, NM: nm}, nil
}

// NodeTransposeMask gives the N:M Param p of a SlopeLinear node the
// transpose mask the node names (input 3): ParamStore loads the one of
// the conventional name (weight + ".transpose_mask"), and a node may
// name another. A Param whose mask already came from that tensor keeps
// its mask (refreshed since, perhaps): binding the node again changes
// nothing.
func NodeTransposeMask(b Binding, p *Param) error {
	n := b.Node
	mname := n.Input(3)
	if mname == "" || mname == p.NM.TMaskFrom || mname == p.Name+transposeMaskSuffix {
		return nil
	}
	t, err := b.W.Lookup(mname)
	if err != nil {
		return fmt.Errorf("node %q: %w", n.Name, err)
	}
	if t.Encoding != slopepb.Encoding_NM_TRANSPOSE_MASK || t.TransposeOf != p.Name {
		return fmt.Errorf("node %q: tensor %q is %s of %q, want the transpose mask of %q: %w", n.Name, mname, t.Encoding, t.TransposeOf, p.Name, ErrBadNode)
	}
	if err := loadTransposeMask(b.W, mname, p.NM); err != nil {
		return fmt.Errorf("node %q: %w", n.Name, err)
	}
	return nil
}

// loadTransposeMask sets nm's transpose mask to the stored tensor mname,
// validated by unpacking it (size, padding bits).
func loadTransposeMask(w Weights, mname string, nm *NMParam) error {
	raw, err := w.Raw(mname)
	if err != nil {
		return err
	}
	kept, err := nm.Pattern.KeptPerRow(nm.Cols)
	if err != nil {
		return err
	}
	keep := make([]bool, nm.Rows*kept)
	if err := format.UnpackTransposeMask(nm.Pattern, nm.Rows, nm.Cols, raw, keep); err != nil {
		return fmt.Errorf("tensor %q: %w", mname, err)
	}
	nm.TMask, nm.TMaskFrom = slices.Clone(raw), mname
	return nil
}

// CPUGrad is the CPU backend with training support.
type CPUGrad struct{ *Registry }

// NewCPUGrad returns the CPU backend that also binds GradSteps.
func NewCPUGrad() *CPUGrad { return &CPUGrad{NewCPU()} }

// BindGrad implements GradBackend.
func (g *CPUGrad) BindGrad(b Binding, ps ParamStore) (GradStep, error) {
	n := b.Node
	switch n.OpType {
	case OpEmbedding:
		return bindEmbeddingGrad(b, ps)
	case OpLayerNorm:
		return bindLayerNormGrad(b, ps)
	case OpLinear:
		return bindLinearGrad(b, ps, false)
	case OpLMHead:
		return bindLinearGrad(b, ps, true)
	case OpSlopeLinear:
		return bindSlopeLinearGrad(b, ps)
	case OpCausalAttention:
		s, err := bindAttention(b)
		if err != nil {
			return nil, err
		}
		return &attentionGrad{attentionStep: s.(*attentionStep)}, nil
	case OpAdd:
		s, err := bindAdd(b)
		if err != nil {
			return nil, err
		}
		return &addGrad{addStep: s.(*addStep)}, nil
	case OpRelu, OpGelu, OpGeluTanh, OpSilu, OpTanh, OpSigmoid:
		s, err := bindActivation(b)
		if err != nil {
			return nil, err
		}
		return &activationGrad{activationStep: s.(*activationStep), back: activationBackward(n.OpType)}, nil
	}
	return nil, fmt.Errorf("node %q: backend %s has no gradient kernel for op %s: %w", n.Name, g.Name(), n.OpType, ErrUnsupported)
}

// param fetches weight input i as a Param and checks its shape (-1: any).
func param(b Binding, ps ParamStore, input int, want ...int) (*Param, error) {
	n := b.Node
	name := n.Input(input)
	if name == "" {
		return nil, n.errorf("input %d (a weight) is missing", input)
	}
	p, err := ps.Param(name)
	if err != nil {
		return nil, fmt.Errorf("node %q: %w", n.Name, err)
	}
	if len(p.Shape) != len(want) {
		return nil, n.errorf("weight %q has shape %v, want %d dims", name, p.Shape, len(want))
	}
	for i, w := range want {
		if w >= 0 && p.Shape[i] != w {
			return nil, n.errorf("weight %q has shape %v, want %v (-1: any)", name, p.Shape, want)
		}
	}
	return p, nil
}

func optionalParam(b Binding, ps ParamStore, input int, want ...int) (*Param, error) {
	if b.Node.Input(input) == "" {
		return nil, nil
	}
	return param(b, ps, input, want...)
}

func nonNil(ps ...*Param) []*Param {
	var out []*Param
	for _, p := range ps {
		if p != nil {
			out = append(out, p)
		}
	}
	return out
}

// Elementwise ops: forward from the inference kernels.

type activationGrad struct {
	*activationStep
	back func(gx, gy, x []float32) // gx[i] += gy[i]·f'(x[i]) over one range
}

func (s *activationGrad) Params() []*Param { return nil }

// Backward: gx[i] += gy[i]·f'(x[i]), all [rows, dim].
func (s *activationGrad) Backward(c *Call, in []*Value, _ *Value, gout *Value, gin []*Value) error {
	if gin[0] == nil {
		return nil
	}
	n := c.Rows() * s.dim
	x, gy, gx := in[0].Data[:n], gout.Data[:n], gin[0].Data[:n]
	parallelRows(n, c.Threads, func(lo, hi int) { s.back(gx[lo:hi], gy[lo:hi], x[lo:hi]) })
	return nil
}

// activationBackward returns op's gradient loop: for ReLU, f' is 1 or 0
// and gy·1 = gy and gy·0 exactly as the float64 product rounds them, with
// the factor made from the comparison instead of a branch on the sign of
// x, which the branch predictor cannot learn; the other ops multiply by
// their derivative in float64.
func activationBackward(op string) func(gx, gy, x []float32) {
	if op == OpRelu {
		return func(gx, gy, x []float32) {
			gy, gx = gy[:len(x)], gx[:len(x)]
			for i, v := range x {
				var one uint32
				if v > 0 {
					one = 0x3f800000 // 1.0
				}
				gx[i] += gy[i] * math.Float32frombits(one)
			}
		}
	}
	df := activationDeriv(op)
	return func(gx, gy, x []float32) {
		gy, gx = gy[:len(x)], gx[:len(x)]
		for i, v := range x {
			gx[i] += float32(float64(gy[i]) * df(float64(v)))
		}
	}
}

func activationDeriv(op string) func(float64) float64 {
	sigmoid := func(x float64) float64 { return 1 / (1 + math.Exp(-x)) }
	switch op { // (ReLU has its own loop in activationBackward)
	case OpGelu:
		return func(x float64) float64 {
			return 0.5*(1+math.Erf(x/math.Sqrt2)) + x*math.Exp(-x*x/2)/math.Sqrt(2*math.Pi)
		}
	case OpGeluTanh:
		return func(x float64) float64 {
			c := math.Sqrt(2 / math.Pi)
			t := math.Tanh(c * (x + 0.044715*x*x*x))
			return 0.5*(1+t) + 0.5*x*(1-t*t)*c*(1+3*0.044715*x*x)
		}
	case OpSilu:
		return func(x float64) float64 {
			s := sigmoid(x)
			return s * (1 + x*(1-s))
		}
	case OpTanh:
		return func(x float64) float64 {
			t := math.Tanh(x)
			return 1 - t*t
		}
	case OpSigmoid:
		return func(x float64) float64 {
			s := sigmoid(x)
			return s * (1 - s)
		}
	}
	return nil
}

type addGrad struct{ *addStep }

func (s *addGrad) Params() []*Param { return nil }

// Backward: ga += gy, gb += gy, all [rows, dim].
func (s *addGrad) Backward(c *Call, _ []*Value, _ *Value, gout *Value, gin []*Value) error {
	n := c.Rows() * s.dim
	for _, g := range gin[:2] {
		if g == nil {
			continue
		}
		d := g.Data[:n]
		for i, v := range gout.Data[:n] {
			d[i] += v
		}
	}
	return nil
}

// LayerNorm: y = (x-μ)/σ·w + b, σ = sqrt(var+eps), per row of [rows, dim].

type layerNormGrad struct {
	dim  int
	eps  float64
	w, b *Param // [dim] or nil
}

func bindLayerNormGrad(b Binding, ps ParamStore) (GradStep, error) {
	d, err := inDim(b, 0)
	if err != nil {
		return nil, err
	}
	eps, err := b.Node.LayerNormEpsilon()
	if err != nil {
		return nil, err
	}
	s := &layerNormGrad{dim: d, eps: float64(eps)}
	if s.w, err = optionalParam(b, ps, 1, d); err != nil {
		return nil, err
	}
	if s.b, err = optionalParam(b, ps, 2, d); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *layerNormGrad) OutDim() int      { return s.dim }
func (s *layerNormGrad) Params() []*Param { return nonNil(s.w, s.b) }

func (s *layerNormGrad) wb() (w, b []float32) {
	if s.w != nil {
		w = s.w.Value
	}
	if s.b != nil {
		b = s.b.Value
	}
	return w, b
}

// Forward: x [rows, dim] -> y [rows, dim].
func (s *layerNormGrad) Forward(c *Call, in []*Value, out *Value) error {
	x := in[0]
	if err := checkValue("layernorm input", x, c.Rows(), s.dim); err != nil {
		return err
	}
	w, b := s.wb()
	parallelRows(x.Rows, c.Threads, func(lo, hi int) {
		for r := lo; r < hi; r++ {
			layerNormRow(out.Row(r), x.Row(r), w, b, s.eps)
		}
	})
	return nil
}

// Linear and LMHead: y [rows, out] = x [rows, in]·Wᵀ + b, W [out, in].

type linearGrad struct {
	in, out int
	w, b    *Param
}

func bindLinearGrad(b Binding, ps ParamStore, head bool) (GradStep, error) {
	in, err := inDim(b, 0)
	if err != nil {
		return nil, err
	}
	s := &linearGrad{in: in}
	if s.w, err = param(b, ps, 1, -1, in); err != nil {
		return nil, err
	}
	if s.w.NM != nil {
		return nil, b.Node.errorf("weight %q is N:M, want a dense matrix", s.w.Name)
	}
	s.out = s.w.Shape[0]
	if !head {
		if s.b, err = optionalParam(b, ps, 2, s.out); err != nil {
			return nil, err
		}
	}
	return s, nil
}

func (s *linearGrad) OutDim() int      { return s.out }
func (s *linearGrad) Params() []*Param { return nonNil(s.w, s.b) }

func (s *linearGrad) Forward(c *Call, in []*Value, out *Value) error {
	x := in[0]
	if err := checkValue("linear input", x, c.Rows(), s.in); err != nil {
		return err
	}
	var bias []float32
	if s.b != nil {
		bias = s.b.Value
	}
	return linearForward(out.Data, x.Data, c.Rows(), s.in, s.out, s.w.Value, bias, c.Threads)
}

// Backward: gx [rows, in] += gy·W; gW [out, in] += gyᵀ·x; gb [out] += Σ_rows gy.
// The products run on the dense kernels, accumulating into gx and gW:
// gy·W with W's rows as the K dimension, gyᵀ·x as a GEMM of gyᵀ
// [out, rows] against x read as [K = rows, N = in].
func (s *linearGrad) Backward(c *Call, in []*Value, _ *Value, gout *Value, gin []*Value) error {
	x, m := in[0], c.Rows()
	if m == 0 {
		return nil
	}
	if gin[0] != nil {
		if err := addInputGrad(gin[0].Data, gout.Data, m, s.in, s.out, s.w.Value, c.Threads); err != nil {
			return err
		}
	}
	if err := addWeightGrad(s.w.Grad, gout.Data, x.Data, m, s.in, s.out, c.Threads); err != nil {
		return err
	}
	if s.b != nil {
		biasGrad(s.b.Grad, gout.Data, m, s.out)
	}
	return nil
}

// SlopeLinear: y [rows, out] = x [rows, in]·W_sᵀ + b + s·(x·L)·R with W_s
// N:M [out, in] (its kept values a Param), L [in, r], R [r, out].

type slopeLinearGrad struct {
	in, out, kept int
	w, b          *Param
	l, r          *Param // the adapter, or nil
	rank          int
	scale         float32
	cache         nmCache
}

func bindSlopeLinearGrad(b Binding, ps ParamStore) (GradStep, error) {
	n := b.Node
	in, err := inDim(b, 0)
	if err != nil {
		return nil, err
	}
	if mr, err := n.Int("merged_rank", 0); err != nil {
		return nil, err
	} else if mr != 0 {
		return nil, fmt.Errorf("node %q: training a merged adapter layout (merged_rank %d): %w", n.Name, mr, ErrUnsupported)
	}
	s := &slopeLinearGrad{in: in}
	if s.w, err = param(b, ps, 1, -1, in); err != nil {
		return nil, err
	}
	nm := s.w.NM
	if nm == nil {
		return nil, n.errorf("weight %q is not N:M", s.w.Name)
	}
	an, _ := n.Int("n", 0)
	am, _ := n.Int("m", 0)
	if int(an) != nm.Pattern.N || int(am) != nm.Pattern.M {
		return nil, n.errorf("attributes n:m = %d:%d, weight %q is %s", an, am, s.w.Name, nm.Pattern)
	}
	if err := NodeTransposeMask(b, s.w); err != nil {
		return nil, err
	}
	s.out = nm.Rows
	s.kept = len(s.w.Value) / nm.Rows
	if s.b, err = optionalParam(b, ps, 2, s.out); err != nil {
		return nil, err
	}
	if n.Input(4) != "" || n.Input(5) != "" {
		if s.l, err = param(b, ps, 4, in, -1); err != nil {
			return nil, err
		}
		s.rank = s.l.Shape[1]
		if s.r, err = param(b, ps, 5, s.rank, s.out); err != nil {
			return nil, err
		}
		if s.scale, err = adapterScale(b, 4); err != nil {
			return nil, err
		}
	}
	return s, nil
}

func (s *slopeLinearGrad) OutDim() int      { return s.out }
func (s *slopeLinearGrad) Params() []*Param { return nonNil(s.w, s.b, s.l, s.r) }

// xl computes x·L [rows, r] for row r into dst.
func (s *slopeLinearGrad) xl(dst, xr []float32) {
	clear(dst)
	for i, v := range xr {
		cpu.Axpy(dst, v, s.l.Value[i*s.rank:(i+1)*s.rank])
	}
}

func (s *slopeLinearGrad) Forward(c *Call, in []*Value, out *Value) error {
	x, m := in[0], c.Rows()
	if err := checkValue("slopelinear input", x, m, s.in); err != nil {
		return err
	}
	if m == 0 {
		return nil
	}
	var bias []float32
	if s.b != nil {
		bias = s.b.Value
	}
	y := out.Data[:m*s.out]
	s.cache.mu.Lock()
	sp, release, err := s.cache.forward(s.w.NM, s.w.Value, c.Threads)
	if err == nil {
		err = sp.Linear(y, x.Data[:m*s.in], m, bias, c.Threads)
		release()
	}
	s.cache.mu.Unlock()
	if err != nil {
		return err
	}
	if s.l != nil {
		return cpu.LowRankAdd(y, x.Data[:m*s.in], m, s.in, s.out, s.rank, s.l.Value, s.r.Value, s.scale, c.Threads)
	}
	return nil
}

// inputGradNM adds gy·W_dp into gx through the N:M kernels: W_dpᵀ [in, out]
// is N:M along out (NM_TRANSPOSE_MATERIALIZED), built from the kept values
// and the transpose mask. It returns false when W_dpᵀ is not N:M
// (rows % M != 0).
func (s *slopeLinearGrad) inputGradNM(c *Call, gx, gy []float32, m int) (bool, error) {
	s.cache.mu.Lock()
	defer s.cache.mu.Unlock()
	sp, release, ok, err := s.cache.transposeWeight(s.w.NM, s.w.Value, c.Threads)
	if err != nil || !ok {
		return false, err
	}
	defer release()
	if err := sp.LinearAdd(gx[:m*s.in], gy[:m*s.out], m, c.Threads); err != nil {
		return false, err
	}
	return true, nil
}

// Backward (SLoPe): gx [rows, in] += gy·W_dp + s·(gy·Rᵀ)·Lᵀ, W_dp holding
// the kept values with TKeep set; gW (kept values) += (gyᵀ·x) at W's
// positions; gb += Σ_rows gy; gR [r, out] += s·(x·L)ᵀ·gy;
// gL [in, r] += xᵀ·(s·gy·Rᵀ).
func (s *slopeLinearGrad) Backward(c *Call, in []*Value, _ *Value, gout *Value, gin []*Value) error {
	x, m := in[0], c.Rows()
	if m == 0 {
		return nil
	}
	if gin[0] != nil {
		done, err := s.inputGradNM(c, gin[0].Data, gout.Data, m)
		if err != nil {
			return err
		}
		if !done {
			// W_dpᵀ is not N:M: one product per kept value, with the masks
			// unpacked for this call.
			idx, err := s.w.NM.IdxCopy()
			if err != nil {
				return err
			}
			var tkeep []bool // nil: no transpose mask, every value kept
			if s.w.NM.TMask != nil {
				if tkeep, err = s.w.NM.TKeepCopy(); err != nil {
					return err
				}
			}
			p := s.w.NM.Pattern
			gx := gin[0]
			parallelRows(m, c.Threads, func(lo, hi int) {
				for r := lo; r < hi; r++ {
					gxr := gx.Row(r)
					for o, g := range gout.Row(r) {
						base := o * s.kept
						for k, w := range s.w.Value[base : base+s.kept] {
							if tkeep == nil || tkeep[base+k] {
								gxr[k/p.N*p.M+int(idx[base+k])] += g * w
							}
						}
					}
				}
			})
		}
	}
	// gW at W's kept positions only: Σ_rows gy[r][o]·x[r][col]
	// (cpu.NMWeightGrad: the dense gyᵀ·x gathered at the mask, up to
	// float32 rounding).
	nm := s.w.NM
	if err := cpu.NMWeightGrad(s.w.Grad, gout.Data[:m*s.out], x.Data[:m*s.in], m, nm.Pattern, s.out, s.in, nm.Indices, c.Threads); err != nil {
		return err
	}
	if s.b != nil {
		biasGrad(s.b.Grad, gout.Data, m, s.out)
	}
	if s.l == nil {
		return nil
	}
	// Adapter, one row at a time (the rank is small).
	xl := make([]float32, s.rank)
	gxl := make([]float32, s.rank)
	for r := 0; r < m; r++ {
		xr, gy := x.Row(r), gout.Row(r)
		s.xl(xl, xr)
		for k := range gxl {
			rk := s.r.Value[k*s.out : (k+1)*s.out]
			gxl[k] = s.scale * dot(rk, gy)
			cpu.Axpy(s.r.Grad[k*s.out:(k+1)*s.out], s.scale*xl[k], gy)
		}
		for i, v := range xr {
			li := i * s.rank
			cpu.Axpy(s.l.Grad[li:li+s.rank], v, gxl)
			if gin[0] != nil {
				gin[0].Data[r*s.in+i] += dot(s.l.Value[li:li+s.rank], gxl)
			}
		}
	}
	return nil
}

// Embedding: y [rows, H] = tok[id]·project_inᵀ (or tok[id]) + pos[p],
// tok [V, P], pos [Np, H], project_in [H, P].

type embeddingGrad struct {
	tok, pos, proj *Param
	vocab, p, h    int
	positions      int
	offset         int
}

func bindEmbeddingGrad(b Binding, ps ParamStore) (GradStep, error) {
	n := b.Node
	s := &embeddingGrad{}
	var err error
	if s.tok, err = param(b, ps, 2, -1, -1); err != nil {
		return nil, err
	}
	if s.pos, err = param(b, ps, 3, -1, -1); err != nil {
		return nil, err
	}
	if s.tok.NM != nil || s.pos.NM != nil {
		return nil, n.errorf("embedding tables must be dense")
	}
	s.vocab, s.p = s.tok.Shape[0], s.tok.Shape[1]
	s.positions, s.h = s.pos.Shape[0], s.pos.Shape[1]
	if s.offset, err = embeddingOffset(n, s.p, s.h, s.positions); err != nil {
		return nil, err
	}
	if n.Input(4) != "" {
		if s.proj, err = param(b, ps, 4, s.h, s.p); err != nil {
			return nil, err
		}
	}
	return s, nil
}

func (s *embeddingGrad) OutDim() int      { return s.h }
func (s *embeddingGrad) Params() []*Param { return nonNil(s.tok, s.pos, s.proj) }

// rowsOf resolves each row's token id and position row.
func (s *embeddingGrad) rowsOf(c *Call) (ids, pos []int, err error) {
	ids, pos = make([]int, c.Rows()), make([]int, c.Rows())
	if err := EmbeddingRows(c, s.vocab, s.offset, s.positions, func(r, id, p int) error {
		ids[r], pos[r] = id, p
		return nil
	}); err != nil {
		return nil, nil, err
	}
	return ids, pos, nil
}

func (s *embeddingGrad) Forward(c *Call, _ []*Value, out *Value) error {
	if err := checkValue("embedding output", out, c.Rows(), s.h); err != nil {
		return err
	}
	ids, pos, err := s.rowsOf(c)
	if err != nil {
		return err
	}
	for r, id := range ids {
		y := out.Row(r)
		e := s.tok.Value[id*s.p : (id+1)*s.p]
		if s.proj != nil {
			for o := range y {
				y[o] = dot(s.proj.Value[o*s.p:(o+1)*s.p], e)
			}
		} else {
			copy(y, e)
		}
		cpu.Axpy(y, 1, s.pos.Value[pos[r]*s.h:(pos[r]+1)*s.h])
	}
	return nil
}

// Backward: gpos[p] += gy; gtok[id] += gy·project_in (or gy);
// gproject_in [H, P] += gyᵀ·tok[id]. No activation inputs.
func (s *embeddingGrad) Backward(c *Call, _ []*Value, _ *Value, gout *Value, _ []*Value) error {
	ids, pos, err := s.rowsOf(c)
	if err != nil {
		return err
	}
	for r, id := range ids {
		gy := gout.Row(r)
		cpu.Axpy(s.pos.Grad[pos[r]*s.h:(pos[r]+1)*s.h], 1, gy)
		gt := s.tok.Grad[id*s.p : (id+1)*s.p]
		if s.proj == nil {
			cpu.Axpy(gt, 1, gy)
			continue
		}
		e := s.tok.Value[id*s.p : (id+1)*s.p]
		for o, g := range gy {
			cpu.Axpy(gt, g, s.proj.Value[o*s.p:(o+1)*s.p])
			cpu.Axpy(s.proj.Grad[o*s.p:(o+1)*s.p], g, e)
		}
	}
	return nil
}

// CausalAttention: q, k, v [rows, H] -> [rows, H]; per sequence and head
// P = softmax(scale·q·kᵀ) over the visible keys, O = P·V. The forward
// pass is the inference kernel's.

type attentionGrad struct{ *attentionStep }

func (s *attentionGrad) Params() []*Param { return nil }

var (
	_ GradBackend = (*CPUGrad)(nil)
	_ ParamStore  = (*MemParamStore)(nil)
)
