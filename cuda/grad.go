package cuda

import (
	"errors"
	"fmt"
	"slices"
	"unsafe"

	"github.com/slopeml/slope/cuda/blaslt"
	"github.com/slopeml/slope/cuda/driver"
	"github.com/slopeml/slope/cuda/kernels"
	"github.com/slopeml/slope/ops"
	"github.com/slopeml/slope/ops/cpu"
)

// Training on the GPU (issue 8). With float32 activations
// (Options.Activations F32, `--device cuda-f32`) or bf16 ones (mixed
// precision, `--device cuda`), Backend is an ops.GradBackend and an
// ops.DeviceGradBackend:
//
//   - Each op binds as a deviceGradStep: the inference step's forward run
//     on the Params' device values (N:M from expandForwardMin rows as an
//     expanded dense product), and BackwardDevice, which follows package
//     ops' conventions on device tensors: it ADDS ∂L/∂in into gin (nil: not
//     wanted) and each parameter's gradient into its device gradient. Our
//     kernels use no atomics.
//   - Params live on the device as float32 values and gradients
//     (devParam), one per ops.Param, so a tied embedding and LM head share
//     them; N:M ones also hold their indices and transpose mask.
//   - The optimizer (deviceOptimizer) adds the AdamW moments and runs the
//     gradient norm, AdamW and the 2:4 transpose-mask refresh there;
//     train.Trainer drives it (train/device.go).
//   - The step BindGrad returns (hostGradStep) is also an ops.GradStep on
//     host Values: it copies the Params' host values and masks in before
//     each call and adds the device gradients into the host Grads after
//     Backward, so the shared gradient suite (ops/opstest.RunGrad) runs
//     it. Those calls are refused while an optimizer holds the state.
//
// With bf16 activations (mixed precision) the Params keep fp32 values,
// gradients and moments, and a bf16 copy (devParam.act) that the forward
// and the products read; activations and their gradients are bf16, the
// products accumulate in fp32 (TestTrainGPUBF16TracksCPU checks it against
// the CPU trainer). Its 2:4 products run on cuSPARSELt (grad_sparse.go),
// the other N:M ones expanded, as in float32.
//
// Not yet: the merged adapter layout (ErrUnsupported, as on the CPU).

// devParam is an ops.Param on the device.
type devParam struct {
	p         *ops.Param
	val, grad driver.Ptr // float32, len(p.Value) each
	// act is the values in the activation type, which the forward kernels
	// and products read: val itself with float32 activations, a bf16 copy
	// with bf16 ones (converted by push, written by AdamW).
	act driver.Ptr
	// forms: a 2:4 weight's cuSPARSELt forms (grad_sparse.go), whose W
	// form's values part act then is (actShared).
	forms     *nmForms
	actShared bool
	// N:M weights: the packed portable indices (static) and the transpose
	// mask, one byte per kept value (all ones when the Param has none),
	// uploaded from keepOf.
	idx, keep driver.Ptr
	keepOf    []byte // the TMask bytes keep holds (nil: all ones)
	keepSet   bool
	// gradStale: the gradient is zero but grad's memory was not cleared
	// (after allocation, ZeroGrads and each AdamW step): the first
	// product into it overwrites it instead of adding (gradBeta), and
	// every other writer or reader clears it first (freshGrad). This
	// saves a pass over every gradient per step (0.94 ms of a 15.3 ms
	// dense OPT-13B layer step on an H200).
	gradStale bool
}

// gradBeta is the beta of a product that adds into d's gradient: 0 when
// the gradient is stale (the product overwrites it, and it is fresh
// after), else 1. Call right before enqueueing the product.
func (d *devParam) gradBeta() float32 {
	if d.gradStale {
		d.gradStale = false
		return 0
	}
	return 1
}

// freshGrad clears the stale gradients among ds (nil entries skipped),
// so that kernels may add into them. Call inside Do.
func (b *Backend) freshGrad(ds ...*devParam) error {
	for _, d := range ds {
		if d != nil && d.gradStale {
			if err := b.k.Fill(b.s, F32, d.grad, 0, len(d.p.Value)); err != nil {
				return fmt.Errorf("param %q: clear the gradient: %w", d.p.Name, err)
			}
			d.gradStale = false
		}
	}
	return nil
}

// deviceGradStep is a device step with a backward pass.
type deviceGradStep interface {
	deviceStep
	// BackwardDevice adds ∂L/∂in into gin (entries may be nil) and the
	// parameter gradients into the devParams' grad, given the forward's
	// inputs and output and gout = ∂L/∂out. Call inside Do.
	BackwardDevice(c *ops.Call, in []ops.Tensor, out, gout ops.Tensor, gin []ops.Tensor) error
	devParams() []*devParam
}

// BindGrad implements ops.GradBackend.
func (b *Backend) BindGrad(bd ops.Binding, ps ops.ParamStore) (ops.GradStep, error) {
	var st deviceGradStep
	err := b.dev.Do(func() error {
		var err error
		st, err = b.bindGrad(bd, ps)
		return err
	})
	if err != nil {
		return nil, err
	}
	if b.prof != nil {
		st = &timedGradStep{deviceGradStep: st, b: b, label: profileGroup(bd.Node.OpType, bd.Node.Name)}
	}
	return hostGradStep{b: b, deviceGradStep: st}, nil
}

func (b *Backend) bindGrad(bd ops.Binding, ps ops.ParamStore) (deviceGradStep, error) {
	n := bd.Node
	switch n.OpType {
	case ops.OpEmbedding:
		return b.bindEmbeddingGrad(bd, ps)
	case ops.OpLayerNorm:
		return b.bindLayerNormGrad(bd, ps)
	case ops.OpLinear, ops.OpLMHead:
		return b.bindLinearGrad(bd, ps)
	case ops.OpSlopeLinear:
		return b.bindSlopeLinearGrad(bd, ps)
	case ops.OpCausalAttention:
		d, heads, scale, err := ops.AttentionShape(bd)
		if err != nil {
			return nil, err
		}
		return &attentionGradStep{&attentionStep{b: b, id: n.ID, dim: d, heads: heads, headDim: d / heads, scale: scale}}, nil
	case ops.OpAdd:
		st, err := b.bindAdd(bd)
		if err != nil {
			return nil, err
		}
		return &addGradStep{st.(hostStep).deviceStep.(*addStep)}, nil
	case ops.OpRelu, ops.OpGelu, ops.OpGeluTanh, ops.OpSilu, ops.OpTanh, ops.OpSigmoid:
		st, err := b.bindActivation(bd)
		if err != nil {
			return nil, err
		}
		return &activationGradStep{st.(hostStep).deviceStep.(*activationStep)}, nil
	}
	return nil, fmt.Errorf("node %q: backend %s has no gradient kernel for op %s: %w", n.Name, b.Name(), n.OpType, ops.ErrUnsupported)
}

// gradParam returns weight input i of the node as a device Param,
// checking its shape (-1: any); optional inputs may be omitted (nil).
func (b *Backend) gradParam(bd ops.Binding, ps ops.ParamStore, input int, optional bool, want ...int) (*devParam, error) {
	n := bd.Node
	name := n.Input(input)
	if name == "" {
		if optional {
			return nil, nil
		}
		return nil, fmt.Errorf("node %q: input %d (a weight) is missing: %w", n.Name, input, ops.ErrBadNode)
	}
	p, err := ps.Param(name)
	if err != nil {
		return nil, fmt.Errorf("node %q: %w", n.Name, err)
	}
	if len(p.Shape) != len(want) {
		return nil, fmt.Errorf("node %q: weight %q has shape %v, want %d dims: %w", n.Name, name, p.Shape, len(want), ops.ErrBadNode)
	}
	for i, w := range want {
		if w >= 0 && p.Shape[i] != w {
			return nil, fmt.Errorf("node %q: weight %q has shape %v, want %v (-1: any): %w", n.Name, name, p.Shape, want, ops.ErrBadNode)
		}
	}
	return b.deviceParam(p)
}

// deviceParam returns p's device mirror, allocating it on first use.
func (b *Backend) deviceParam(p *ops.Param) (*devParam, error) {
	if d := b.params[p]; d != nil {
		return d, nil
	}
	if len(p.Value) == 0 || len(p.Grad) != len(p.Value) {
		return nil, fmt.Errorf("param %q: %d values and %d gradients", p.Name, len(p.Value), len(p.Grad))
	}
	d := &devParam{p: p}
	err := func() (err error) {
		if d.val, err = b.dev.Alloc(4 * len(p.Value)); err != nil {
			return err
		}
		if d.grad, err = b.dev.Alloc(4 * len(p.Value)); err != nil {
			return err
		}
		d.gradStale = true
		d.act = d.val
		if b.act != F32 {
			if d.act, err = b.dev.Alloc(b.act.Size() * len(p.Value)); err != nil {
				return err
			}
		}
		if p.NM != nil {
			if d.idx, err = b.dev.Alloc(len(p.NM.Indices)); err != nil {
				return fmt.Errorf("indices: %w", err)
			}
			if err := b.dev.CopyIn(d.idx, unsafe.Pointer(&p.NM.Indices[0]), len(p.NM.Indices)); err != nil {
				return fmt.Errorf("indices: %w", err)
			}
			if d.keep, err = b.dev.Alloc(len(p.Value)); err != nil {
				return fmt.Errorf("transpose mask: %w", err)
			}
		}
		if err := b.push(d); err != nil {
			return err
		}
		if b.wantForms(d) {
			return b.makeForms(d)
		}
		return nil
	}()
	if err != nil {
		return nil, errors.Join(fmt.Errorf("param %q: %w", p.Name, err), d.free(b))
	}
	if b.params == nil {
		b.params = map[*ops.Param]*devParam{}
	}
	b.params[p] = d
	return d, nil
}

// push copies the host Param's values (and, when changed, its transpose
// mask) to the device, and brings the activation-type copy and the
// cuSPARSELt forms up to date. Call inside Do.
func (b *Backend) push(d *devParam) error {
	if err := b.dev.SyncStream(b.s); err != nil {
		return err
	}
	if err := b.dev.CopyIn(d.val, unsafe.Pointer(&d.p.Value[0]), 4*len(d.p.Value)); err != nil {
		return fmt.Errorf("param %q: %w", d.p.Name, err)
	}
	if d.act != d.val {
		if err := b.k.Convert(b.s, F32, b.act, d.act, d.val, len(d.p.Value)); err != nil {
			return fmt.Errorf("param %q: %w", d.p.Name, err)
		}
	}
	nm := d.p.NM
	if nm == nil {
		return nil
	}
	if d.keepSet && slices.Equal(nm.TMask, d.keepOf) && (nm.TMask == nil) == (d.keepOf == nil) {
		return b.valuesChanged(d, false)
	}
	keep, err := nm.TKeepCopy()
	if err != nil {
		return fmt.Errorf("param %q: %w", d.p.Name, err)
	}
	raw := make([]byte, len(keep))
	for i, k := range keep {
		if k {
			raw[i] = 1
		}
	}
	// The mask buffer may still be read by queued kernels.
	if err := b.dev.SyncStream(b.s); err != nil {
		return err
	}
	if err := b.dev.CopyIn(d.keep, unsafe.Pointer(&raw[0]), len(raw)); err != nil {
		return fmt.Errorf("param %q: transpose mask: %w", d.p.Name, err)
	}
	// Marked uploaded only once the forms follow it too: a failed
	// recompress uploads it again at the next push.
	if err := b.valuesChanged(d, true); err != nil {
		d.keepSet = false
		return err
	}
	d.keepOf, d.keepSet = slices.Clone(nm.TMask), true
	return nil
}

// hostGradStep adapts a deviceGradStep to ops.GradStep (see the top of
// this file).
type hostGradStep struct {
	b *Backend
	deviceGradStep
}

func (h hostGradStep) Params() []*ops.Param {
	var out []*ops.Param
	for _, d := range h.devParams() {
		out = append(out, d.p)
	}
	return out
}

// pushAll copies every Param of the step to the device.
func (h hostGradStep) pushAll() error {
	for _, d := range h.devParams() {
		if err := h.b.push(d); err != nil {
			return err
		}
	}
	return nil
}

// uploadValues copies host values into new pool tensors (nil stays nil).
// The same Value given twice gets one tensor (the CPU trainer passes one
// gradient buffer for both inputs of x + x).
func (b *Backend) uploadValues(c *ops.Call, vs []*ops.Value, held *[]ops.Tensor, what string) ([]ops.Tensor, error) {
	out := make([]ops.Tensor, len(vs))
	for i, v := range vs {
		if v == nil {
			continue
		}
		if j := slices.Index(vs[:i], v); j >= 0 {
			out[i] = out[j]
			continue
		}
		if v.Rows != c.Rows() || len(v.Data) < v.Rows*v.Dim {
			return nil, fmt.Errorf("cuda: %s %d is %d x %d (%d values) for %d rows", what, i, v.Rows, v.Dim, len(v.Data), c.Rows())
		}
		t, err := b.Acquire(v.Rows, v.Dim)
		if err != nil {
			return nil, err
		}
		*held = append(*held, t)
		if err := b.upload(t.(*tensor).p, v.Data[:v.Rows*v.Dim]); err != nil {
			return nil, err
		}
		out[i] = t
	}
	return out, nil
}

// errDeviceState refuses host-facing training calls while a
// DeviceOptimizer holds the state: they copy the host's values in and
// reset the device gradients.
var errDeviceState = errors.New("cuda: host-facing training call while a device optimizer holds the Params (use ForwardDevice and BackwardDevice)")

func (h hostGradStep) Forward(c *ops.Call, in []*ops.Value, out *ops.Value) error {
	if err := h.b.dev.Do(func() error {
		if h.b.optimizers > 0 {
			return errDeviceState
		}
		return h.pushAll()
	}); err != nil {
		return err
	}
	return hostStep{b: h.b, deviceStep: h.deviceGradStep}.Forward(c, in, out)
}

func (h hostGradStep) Backward(c *ops.Call, in []*ops.Value, out, gout *ops.Value, gin []*ops.Value) error {
	b := h.b
	before := func() error {
		if b.optimizers > 0 {
			return errDeviceState
		}
		return h.pushAll()
	}
	return b.hostCall(c, in, before, func(tin []ops.Tensor, held *[]ops.Tensor) error {
		touts, err := b.uploadValues(c, []*ops.Value{out, gout}, held, "output")
		if err != nil {
			return err
		}
		if touts[1] == nil || touts[1].Dim() != h.OutDim() {
			return fmt.Errorf("cuda: backward needs the output gradient, %d wide", h.OutDim())
		}
		tgin, err := b.uploadValues(c, gin, held, "input gradient")
		if err != nil {
			return err
		}
		// This op's Param gradients alone, from zero (gradStale), then
		// added into the host's.
		params := h.devParams()
		for _, d := range params {
			d.gradStale = true
		}
		if err := h.BackwardDevice(c, tin, touts[0], touts[1], tgin); err != nil {
			return err
		}
		if err := b.freshGrad(params...); err != nil { // a Param the pass did not reach
			return err
		}
		for i, t := range tgin {
			if t != nil && slices.Index(gin[:i], gin[i]) < 0 {
				if err := b.download(t.(*tensor).p, gin[i].Data[:gin[i].Rows*gin[i].Dim]); err != nil {
					return err
				}
			}
		}
		if err := b.dev.SyncStream(b.s); err != nil {
			return err
		}
		for _, d := range params {
			g := make([]float32, len(d.p.Grad))
			if err := b.dev.CopyOut(unsafe.Pointer(&g[0]), d.grad, 4*len(g)); err != nil {
				return err
			}
			for i, v := range g {
				d.p.Grad[i] += v
			}
		}
		return nil
	})
}

// BackwardDevice runs the step's backward pass, then marks its input
// gradients as added into (tensor.zeroed).
func (h hostGradStep) BackwardDevice(c *ops.Call, in []ops.Tensor, out, gout ops.Tensor, gin []ops.Tensor) error {
	err := h.deviceGradStep.BackwardDevice(c, in, out, gout, gin)
	for _, g := range gin {
		if g != nil {
			asTensor(g).zeroed = false
		}
	}
	return err
}

// gradScratch returns backward scratch buffer i of at least bytes.
func (b *Backend) gradScratch(i, bytes int) (driver.Ptr, error) {
	return b.grow(&b.gscratch[i], max(bytes, 4))
}

func ptrOr0(t ops.Tensor) driver.Ptr {
	if t == nil {
		return 0
	}
	return asTensor(t).p
}

// --- Embedding ---

type embeddingGradStep struct {
	*embeddingStep
	tok, pos, projP *devParam // projP: project_in [H, P], or nil
}

func (b *Backend) bindEmbeddingGrad(bd ops.Binding, ps ops.ParamStore) (deviceGradStep, error) {
	n := bd.Node
	tok, err := b.gradParam(bd, ps, 2, false, -1, -1)
	if err != nil {
		return nil, err
	}
	pos, err := b.gradParam(bd, ps, 3, false, -1, -1)
	if err != nil {
		return nil, err
	}
	if tok.p.NM != nil || pos.p.NM != nil {
		return nil, fmt.Errorf("node %q: embedding tables must be dense: %w", n.Name, ops.ErrBadNode)
	}
	off, err := n.Int("position_offset", 2)
	if err != nil {
		return nil, err
	}
	s := &embeddingStep{b: b, tok: tok.act, pos: pos.act, vocab: tok.p.Shape[0], proj: tok.p.Shape[1],
		hid: pos.p.Shape[1], positions: pos.p.Shape[0], offset: int(off)}
	if off < 0 || int(off) >= s.positions {
		return nil, fmt.Errorf("node %q: position_offset %d outside the %d positions: %w", n.Name, off, s.positions, ops.ErrBadNode)
	}
	g := &embeddingGradStep{embeddingStep: s, tok: tok, pos: pos}
	if n.Input(4) != "" {
		// project_in [H, P]: y = tok[id]·projInᵀ + pos[p].
		if g.projP, err = b.gradParam(bd, ps, 4, false, s.hid, s.proj); err != nil {
			return nil, err
		}
		s.projIn = g.projP.act
	} else if s.proj != s.hid {
		return nil, fmt.Errorf("node %q: token embedding width %d differs from position width %d without project_in: %w", n.Name, s.proj, s.hid, ops.ErrBadNode)
	}
	return g, nil
}

// zeros returns n float32 zeros on the device (a buffer shared by the
// backend's training steps and grown on demand: fetch it per call).
func (b *Backend) zeros(n int) (driver.Ptr, error) {
	if b.zeroBuf.bytes >= 4*n {
		return b.zeroBuf.p, nil
	}
	p, err := b.grow(&b.zeroBuf, 4*n)
	if err != nil {
		return 0, err
	}
	return p, b.k.Fill(b.s, F32, p, 0, n) // zero bits: zeros of any type up to 4n bytes
}

// ForwardDevice is embeddingStep's, with the zero table of project_in's
// gather fetched for the call.
func (s *embeddingGradStep) ForwardDevice(c *ops.Call, in []ops.Tensor, out ops.Tensor) error {
	if s.projP != nil {
		z, err := s.b.zeros(max(s.proj, s.hid))
		if err != nil {
			return err
		}
		s.zeroRow = z
	}
	return s.embeddingStep.ForwardDevice(c, in, out)
}

func (s *embeddingGradStep) devParams() []*devParam {
	if s.projP != nil {
		return []*devParam{s.tok, s.pos, s.projP}
	}
	return []*devParam{s.tok, s.pos}
}

// BackwardDevice: gpos[p] += gy and gtok[id] += gy for every row (with
// project_in: gtok[id] += gy·projIn and gprojIn [H, P] += gyᵀ·tok[id]), the
// rows of one table row added in row order (kernels.EmbeddingGroups).
func (s *embeddingGradStep) BackwardDevice(c *ops.Call, _ []ops.Tensor, _, gout ops.Tensor, _ []ops.Tensor) error {
	if c.Rows() == 0 {
		return nil
	}
	b, rows := s.b, c.Rows()
	if err := checkT("embedding output gradient", gout, rows, s.hid); err != nil {
		return err
	}
	ints, err := s.rowInts(c)
	if err != nil {
		return err
	}
	type group struct {
		keys, start, rows []int32
		g                 driver.Ptr
	}
	var groups [2]group
	total := 0
	for i, tab := range []struct {
		keyOf []int32
		g     driver.Ptr
	}{{ints[:rows], s.tok.grad}, {ints[rows : 2*rows], s.pos.grad}} {
		k, st, rs := kernels.EmbeddingGroups(tab.keyOf)
		groups[i] = group{k, st, rs, tab.g}
		total += len(k) + len(st) + len(rs)
	}
	// The groups, then (project_in) the ids and rows zeros for the
	// gather of tok[ids].
	host := make([]int32, 0, total+2*rows)
	for _, g := range groups {
		host = append(append(append(host, g.keys...), g.start...), g.rows...)
	}
	host = append(append(host, ints[:rows]...), ints[2*rows:3*rows]...)
	p, err := b.putInts(&b.gscratch[0], host)
	if err != nil {
		return err
	}
	gy := asTensor(gout).p
	tokGrad := gy // the rows added into the token table
	if s.projP != nil {
		// u = gy·projIn [rows, P] into the token table; gprojIn += gyᵀ·E
		// with E = tok[ids] [rows, P] (gathered as the forward does).
		es := b.act.Size()
		u, err := b.gradScratch(2, es*rows*s.proj)
		if err != nil {
			return err
		}
		e, err := b.gradScratch(3, es*rows*s.proj)
		if err != nil {
			return err
		}
		ids := p.Add(4 * total)
		if err := b.gemmAct("embedding project_in input gradient", blaslt.Gemm{M: rows, N: s.proj, K: s.hid, A: gy, LdA: s.hid,
			B: s.projP.act, LdB: s.proj, D: u, LdD: s.proj, Alpha: 1}); err != nil {
			return err
		}
		z, err := b.zeros(s.proj)
		if err != nil {
			return err
		}
		if err := b.k.Embedding(b.s, b.act, e, ids, ids.Add(4*rows), s.tok.act, z, rows, s.proj); err != nil {
			return err
		}
		if err := b.gemmGrad("embedding project_in weight gradient", blaslt.Gemm{M: s.hid, N: s.proj, K: rows, A: gy, LdA: s.hid, TransA: true,
			B: e, LdB: s.proj, D: s.projP.grad, LdD: s.proj, Alpha: 1, Beta: s.projP.gradBeta()}); err != nil {
			return err
		}
		tokGrad = u
	}
	if err := b.freshGrad(s.tok, s.pos); err != nil {
		return err
	}
	for i, g := range groups {
		keys, start := p, p.Add(4*len(g.keys))
		rs := start.Add(4 * len(g.start))
		src, dim := gy, s.hid
		if i == 0 {
			src, dim = tokGrad, s.proj
		}
		if err := b.k.EmbeddingBackward(b.s, b.act, g.g, src, keys, start, rs, len(g.keys), dim); err != nil {
			return err
		}
		p = rs.Add(4 * len(g.rows))
	}
	return nil
}

// --- LayerNorm, Add, activations ---

type layerNormGradStep struct {
	*layerNormStep
	gammaP, betaP *devParam // nil when the node omits them
}

func (b *Backend) bindLayerNormGrad(bd ops.Binding, ps ops.ParamStore) (deviceGradStep, error) {
	d, eps, err := layerNormShape(bd)
	if err != nil {
		return nil, err
	}
	s := &layerNormGradStep{layerNormStep: &layerNormStep{b: b, dim: d, eps: eps}}
	if s.gammaP, err = b.gradParam(bd, ps, 1, true, d); err != nil {
		return nil, err
	}
	if s.betaP, err = b.gradParam(bd, ps, 2, true, d); err != nil {
		return nil, err
	}
	// An omitted gamma or beta is 0: the kernels read 1 and 0.
	if s.gammaP != nil {
		s.gamma = s.gammaP.val
	}
	if s.betaP != nil {
		s.beta = s.betaP.val
	}
	return s, nil
}

func (s *layerNormGradStep) devParams() []*devParam {
	var out []*devParam
	for _, d := range []*devParam{s.gammaP, s.betaP} {
		if d != nil {
			out = append(out, d)
		}
	}
	return out
}

func (s *layerNormGradStep) BackwardDevice(c *ops.Call, in []ops.Tensor, _, gout ops.Tensor, gin []ops.Tensor) error {
	if c.Rows() == 0 {
		return nil
	}
	b, rows := s.b, c.Rows()
	if err := checkT("layernorm input", in[0], rows, s.dim); err != nil {
		return err
	}
	stats, err := b.gradScratch(0, 8*rows)
	if err != nil {
		return err
	}
	gx := ptrOr0(gin[0])
	if gx == 0 { // only the parameters' gradients are wanted
		if gx, err = b.gradScratch(1, b.act.Size()*rows*s.dim); err != nil {
			return err
		}
	}
	var gg, gb, parts driver.Ptr
	if s.gammaP != nil || s.betaP != nil {
		// Column-sum scratch, then room for the gradient of an omitted
		// gamma or beta (computed and dropped).
		np := 2 * kernels.ColSumParts(rows, s.dim)
		if parts, err = b.gradScratch(5, 4*(np+s.dim)); err != nil {
			return err
		}
		gg, gb = parts.Add(4*np), parts.Add(4*np)
		if err := b.freshGrad(s.gammaP, s.betaP); err != nil {
			return err
		}
		if s.gammaP != nil {
			gg = s.gammaP.grad
		}
		if s.betaP != nil {
			gb = s.betaP.grad
		}
	}
	return b.k.LayerNormBackward(b.s, b.act, gx, gg, gb, stats, parts, asTensor(gout).p, asTensor(in[0]).p, s.gamma, rows, s.dim, s.eps)
}

type addGradStep struct{ *addStep }

func (s *addGradStep) devParams() []*devParam { return nil }

// BackwardDevice: gin[i] += gout.
func (s *addGradStep) BackwardDevice(c *ops.Call, _ []ops.Tensor, _, gout ops.Tensor, gin []ops.Tensor) error {
	if c.Rows() == 0 {
		return nil
	}
	for _, g := range gin {
		if g != nil {
			if err := s.b.k.Add(s.b.s, s.b.act, asTensor(g).p, asTensor(g).p, asTensor(gout).p, c.Rows()*s.dim); err != nil {
				return err
			}
		}
	}
	return nil
}

type activationGradStep struct{ *activationStep }

func (s *activationGradStep) devParams() []*devParam { return nil }

// BackwardDevice: gx += gy·act'(x).
func (s *activationGradStep) BackwardDevice(c *ops.Call, in []ops.Tensor, _, gout ops.Tensor, gin []ops.Tensor) error {
	if c.Rows() == 0 {
		return nil
	}
	if gin[0] == nil {
		return nil
	}
	if err := checkT("activation input", in[0], c.Rows(), s.dim); err != nil {
		return err
	}
	return s.b.k.ActBackward(s.b.s, s.b.act, asTensor(gin[0]).p, asTensor(gout).p, asTensor(in[0]).p, c.Rows()*s.dim, s.act)
}

// --- Linear, LMHead, SlopeLinear ---

type linearGradStep struct {
	*linearStep
	wP, biasP, lP, rP *devParam // the Params behind linearStep's pointers
}

func (b *Backend) bindLinearGrad(bd ops.Binding, ps ops.ParamStore) (deviceGradStep, error) {
	in, err := ops.InDim(bd, 0)
	if err != nil {
		return nil, err
	}
	s := &linearGradStep{}
	if s.wP, err = b.gradParam(bd, ps, 1, false, -1, in); err != nil {
		return nil, err
	}
	if s.wP.p.NM != nil {
		return nil, fmt.Errorf("node %q: weight %q is N:M; %s needs a dense weight: %w", bd.Node.Name, s.wP.p.Name, bd.Node.OpType, ops.ErrBadNode)
	}
	out := s.wP.p.Shape[0]
	s.linearStep = &linearStep{b: b, name: bd.Node.Name, in: in, out: out, w: s.wP.act}
	if bd.Node.OpType == ops.OpLinear {
		if s.biasP, err = b.gradParam(bd, ps, 2, true, out); err != nil {
			return nil, err
		}
		if s.biasP != nil {
			s.bias, s.biasAct = s.biasP.val, s.biasP.act
		}
	}
	return s, nil
}

func (b *Backend) bindSlopeLinearGrad(bd ops.Binding, ps ops.ParamStore) (deviceGradStep, error) {
	n := bd.Node
	in, err := ops.InDim(bd, 0)
	if err != nil {
		return nil, err
	}
	if mr, err := n.Int("merged_rank", 0); err != nil {
		return nil, err
	} else if mr != 0 {
		return nil, fmt.Errorf("node %q: training a merged adapter layout (merged_rank %d): %w", n.Name, mr, ops.ErrUnsupported)
	}
	s := &linearGradStep{}
	if s.wP, err = b.gradParam(bd, ps, 1, false, -1, in); err != nil {
		return nil, err
	}
	nm := s.wP.p.NM
	if nm == nil {
		return nil, fmt.Errorf("node %q: weight %q is not N:M: %w", n.Name, s.wP.p.Name, ops.ErrBadNode)
	}
	an, _ := n.Int("n", 0)
	am, _ := n.Int("m", 0)
	if int(an) != nm.Pattern.N || int(am) != nm.Pattern.M {
		return nil, fmt.Errorf("node %q: attributes n:m = %d:%d, weight %q is %s: %w", n.Name, an, am, s.wP.p.Name, nm.Pattern, ops.ErrBadNode)
	}
	if err := ops.NodeTransposeMask(bd, s.wP.p); err != nil {
		return nil, err
	}
	out := nm.Rows
	s.linearStep = &linearStep{b: b, name: n.Name, in: in, out: out, nm: true, rows: out, pat: nm.Pattern,
		vals: s.wP.act, idx: s.wP.idx, valType: b.act}
	if s.biasP, err = b.gradParam(bd, ps, 2, true, out); err != nil {
		return nil, err
	}
	if s.biasP != nil {
		s.bias, s.biasAct = s.biasP.val, s.biasP.act
	}
	if f := s.wP.forms; f != nil {
		// The bias goes into W's cuSPARSELt form's epilogue when that
		// passed its check at New (set before the form's first product);
		// every product through the form adds it, so a form serves one
		// bias.
		switch {
		case f.fwd.Bias() != 0 && f.fwd.Bias() != s.biasAct:
			return nil, fmt.Errorf("node %q: weight %q already carries another node's bias in its cuSPARSELt form: %w", n.Name, s.wP.p.Name, ops.ErrUnsupported)
		case b.ltBias && s.biasAct != 0 && f.fwd.Bias() == 0 && !f.fwd.HasPlans():
			if err := f.fwd.SetBias(s.biasAct); err != nil {
				return nil, fmt.Errorf("node %q: %w", n.Name, err)
			}
		}
	}
	if n.Input(4) != "" || n.Input(5) != "" {
		if s.lP, err = b.gradParam(bd, ps, 4, false, in, -1); err != nil {
			return nil, err
		}
		s.rank = s.lP.p.Shape[1]
		if s.rP, err = b.gradParam(bd, ps, 5, false, s.rank, out); err != nil {
			return nil, err
		}
		if s.scale, err = ops.AdapterScale(bd, 4); err != nil {
			return nil, err
		}
		s.l, s.r = s.lP.act, s.rP.act
	}
	return s, nil
}

func (s *linearGradStep) devParams() []*devParam {
	var out []*devParam
	for _, d := range []*devParam{s.wP, s.biasP, s.lP, s.rP} {
		if d != nil {
			out = append(out, d)
		}
	}
	return out
}

// expandForwardMin is the smallest row count from which a training
// step's N:M forward expands W densely and runs one cuBLASLt product
// instead of the generic N:M kernel: in float32 there are no sparse
// tensor cores, and the dense product is faster once the expansion (one
// pass over W) is shared by enough rows.
const expandForwardMin = 64

// ForwardDevice is linearStep's, except for N:M weights from
// expandForwardMin rows (see there).
func (s *linearGradStep) ForwardDevice(c *ops.Call, in []ops.Tensor, out ops.Tensor) error {
	m := c.Rows()
	if !s.nm || m < expandForwardMin {
		return s.linearStep.ForwardDevice(c, in, out)
	}
	b := s.b
	if err := checkT("linear input", in[0], m, s.in); err != nil {
		return err
	}
	x, y := asTensor(in[0]).p, asTensor(out).p
	if f := s.wP.forms; f != nil && sparseFits(f.fwd, m, asTensor(out), s.out, asTensor(in[0]), s.in) {
		// cuSPARSELt (bf16 training; grad_sparse.go), with the bias in its
		// epilogue (bindSlopeLinearGrad) or by a kernel after it.
		if err := b.timed("product (cuSPARSELt)", func() error { return f.fwd.Matmul(b.s, y, s.out, x, s.in, m, 0) }); err != nil {
			return fmt.Errorf("slope linear %s: %w", s.name, err)
		}
		if s.bias != 0 && f.fwd.Bias() != s.biasAct {
			if err := b.timed("bias", func() error {
				return b.k.BiasAct(b.s, b.act, y, s.out, s.bias, m, s.out, kernels.ActNone)
			}); err != nil {
				return err
			}
		}
	} else {
		w, err := b.gradScratch(1, 4*s.out*s.in)
		if err != nil {
			return err
		}
		if err := b.timed("expand W", func() error {
			return b.k.NMExpand(b.s, b.act, w, s.wP.act, s.wP.idx, s.out, s.in, s.pat.N, s.pat.M)
		}); err != nil {
			return err
		}
		if err := b.timed("product (expanded W)", func() error {
			return b.gemmAct("slope linear "+s.name+" (expanded)", blaslt.Gemm{M: m, N: s.out, K: s.in, A: x, LdA: s.in,
				B: w, LdB: s.in, TransB: true, D: y, LdD: s.out, Alpha: 1, Bias: s.biasAct})
		}); err != nil {
			return err
		}
	}
	if s.rank == 0 {
		return nil
	}
	return b.timed("adapters", func() error { return s.adapterForward(m, x, y) })
}

// adapterForward adds scale·(x·L)·R into y [m, out].
func (s *linearGradStep) adapterForward(m int, x, y driver.Ptr) error {
	b := s.b
	// y += scale·(x·L)·R
	t, err := b.gradScratch(2, b.act.Size()*m*s.rank)
	if err != nil {
		return err
	}
	if err := b.gemmAct("slope linear "+s.name+" adapter x·L", blaslt.Gemm{M: m, N: s.rank, K: s.in, A: x, LdA: s.in,
		B: s.lP.act, LdB: s.rank, D: t, LdD: s.rank, Alpha: 1}); err != nil {
		return err
	}
	return b.gemmAct("slope linear "+s.name+" adapter ·R", blaslt.Gemm{M: m, N: s.out, K: s.rank, A: t, LdA: s.rank,
		B: s.rP.act, LdB: s.out, D: y, LdD: s.out, Alpha: s.scale, Beta: 1})
}

// gemmAct runs one product of activation-type operands into an
// activation-type output (activations and their gradients; see
// blaslt.Gemm). Accumulation is fp32 either way.
func (b *Backend) gemmAct(what string, g blaslt.Gemm) error {
	at := b.blasType(b.act)
	return b.gemmTyped(what, g, at, at)
}

// gemmGrad runs one product of activation-type operands into a float32
// output (the gradients of Params).
func (b *Backend) gemmGrad(what string, g blaslt.Gemm) error {
	return b.gemmTyped(what, g, b.blasType(b.act), blaslt.F32)
}

func (b *Backend) gemmTyped(what string, g blaslt.Gemm, ab, out blaslt.DType) error {
	g.AB, g.Out = ab, out
	if err := b.lt.Run(b.s, &g); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// BackwardDevice, for x [m, in], gy [m, out]:
//   - dense: gx += gy·W; gW [out, in] += gyᵀ·x;
//   - N:M (SLoPe): gx += gy·W_dp, W_dp the kept values whose transpose
//     mask is set (W_dpᵀ [in, out] expanded densely, then one product);
//     gW (kept values) += (gyᵀ·x) at W's positions (a dense product, then
//     nm_gather);
//   - gb [out] += Σ_rows gy;
//   - adapters: with t = x·L [m, r] and u = s·gy·Rᵀ [m, r]: gR += s·tᵀ·gy,
//     gL += xᵀ·u, gx += u·Lᵀ.
func (s *linearGradStep) BackwardDevice(c *ops.Call, in []ops.Tensor, _, gout ops.Tensor, gin []ops.Tensor) error {
	if c.Rows() == 0 {
		return nil
	}
	b, m := s.b, c.Rows()
	if err := checkT("linear input", in[0], m, s.in); err != nil {
		return err
	}
	if err := checkT("linear output gradient", gout, m, s.out); err != nil {
		return err
	}
	x, gy, gx := asTensor(in[0]).p, asTensor(gout).p, ptrOr0(gin[0])
	// The first product into gx adds to it, or overwrites it when it is
	// known to be zero: cuSPARSELt's 2:4 input gradient took 0.53 ms with
	// beta 1 and 0.39 with beta 0 (H200, OPT-13B fc1 and fc2 shapes at
	// 2048 rows).
	var beta float32 = 1
	if gx != 0 && asTensor(gin[0]).zeroed {
		beta = 0
	}
	if !s.nm {
		if gx != 0 {
			if err := b.timed("dX product", func() error {
				return b.gemmAct("linear "+s.name+" input gradient", blaslt.Gemm{M: m, N: s.in, K: s.out, A: gy, LdA: s.out,
					B: s.wP.act, LdB: s.in, D: gx, LdD: s.in, Alpha: 1, Beta: beta})
			}); err != nil {
				return err
			}
		}
		if err := b.timed("dW product", func() error {
			return b.gemmGrad("linear "+s.name+" weight gradient", blaslt.Gemm{M: s.out, N: s.in, K: m, A: gy, LdA: s.out, TransA: true,
				B: x, LdB: s.in, D: s.wP.grad, LdD: s.in, Alpha: 1, Beta: s.wP.gradBeta()})
		}); err != nil {
			return err
		}
	} else {
		p := s.pat
		tmp, err := b.gradScratch(1, 4*s.out*s.in)
		if err != nil {
			return err
		}
		if f := s.wP.forms; gx != 0 && f != nil && m >= expandForwardMin && sparseFits(f.bwd, m, asTensor(gin[0]), s.in, asTensor(gout), s.out) {
			// gx += gy·W_dp on cuSPARSELt (bf16 training; grad_sparse.go).
			if err := b.timed("dX product (cuSPARSELt W_dp)", func() error { return f.bwd.Matmul(b.s, gx, s.in, gy, s.out, m, beta) }); err != nil {
				return fmt.Errorf("slope linear %s input gradient: %w", s.name, err)
			}
		} else if gx != 0 {
			if err := b.timed("expand W_dpᵀ", func() error {
				return b.k.NMExpandT(b.s, b.act, tmp, s.wP.act, s.wP.idx, s.wP.keep, s.out, s.in, p.N, p.M)
			}); err != nil {
				return err
			}
			if err := b.timed("dX product (expanded W_dp)", func() error {
				return b.gemmAct("slope linear "+s.name+" input gradient (W_dp)", blaslt.Gemm{M: m, N: s.in, K: s.out, A: gy, LdA: s.out,
					B: tmp, LdB: s.out, TransB: true, D: gx, LdD: s.in, Alpha: 1, Beta: beta})
			}); err != nil {
				return err
			}
		}
		// The scratch holds W_dpᵀ (activation type), then the fp32 dW.
		if err := b.timed("dW product (dense)", func() error {
			return b.gemmGrad("slope linear "+s.name+" weight gradient", blaslt.Gemm{M: s.out, N: s.in, K: m, A: gy, LdA: s.out, TransA: true,
				B: x, LdB: s.in, D: tmp, LdD: s.in, Alpha: 1})
		}); err != nil {
			return err
		}
		if err := b.timed("dW gather (kept values)", func() error {
			return b.k.NMGather(b.s, F32, s.wP.grad, tmp, s.in, s.wP.idx, s.out, s.in, p.N, p.M, s.wP.gradBeta() != 0)
		}); err != nil {
			return err
		}
	}
	if s.biasP != nil {
		if err := b.freshGrad(s.biasP); err != nil {
			return err
		}
		parts, err := b.gradScratch(5, 4*kernels.ColSumParts(m, s.out))
		if err != nil {
			return err
		}
		if err := b.timed("bias gradient", func() error { return b.k.ColSum(b.s, b.act, s.biasP.grad, gy, parts, s.out, m, s.out) }); err != nil {
			return err
		}
	}
	if s.lP == nil {
		return nil
	}
	return b.timed("adapters", func() error { return s.adapterBackward(m, x, gy, gx) })
}

// adapterBackward adds the adapters' gradients, and their part of gx
// when gx is wanted (see BackwardDevice).
func (s *linearGradStep) adapterBackward(m int, x, gy, gx driver.Ptr) error {
	b, r := s.b, s.rank
	t, err := b.gradScratch(2, b.act.Size()*m*r)
	if err != nil {
		return err
	}
	u, err := b.gradScratch(3, b.act.Size()*m*r)
	if err != nil {
		return err
	}
	for _, g := range []struct {
		what  string
		param *devParam // the Param whose fp32 gradient it adds into, or nil
		g     blaslt.Gemm
	}{
		{"x·L", nil, blaslt.Gemm{M: m, N: r, K: s.in, A: x, LdA: s.in, B: s.lP.act, LdB: r, D: t, LdD: r, Alpha: 1}},
		{"gR", s.rP, blaslt.Gemm{M: r, N: s.out, K: m, A: t, LdA: r, TransA: true, B: gy, LdB: s.out, D: s.rP.grad, LdD: s.out, Alpha: s.scale}},
		{"gy·Rᵀ", nil, blaslt.Gemm{M: m, N: r, K: s.out, A: gy, LdA: s.out, B: s.rP.act, LdB: s.out, TransB: true, D: u, LdD: r, Alpha: s.scale}},
		{"gL", s.lP, blaslt.Gemm{M: s.in, N: r, K: m, A: x, LdA: s.in, TransA: true, B: u, LdB: r, D: s.lP.grad, LdD: r, Alpha: 1}},
	} {
		run := b.gemmAct
		if g.param != nil {
			run = b.gemmGrad
			g.g.Beta = g.param.gradBeta() // right before its product is queued
		}
		if err := run("slope linear "+s.name+" adapter "+g.what, g.g); err != nil {
			return err
		}
	}
	if gx == 0 {
		return nil
	}
	return b.gemmAct("slope linear "+s.name+" adapter input gradient", blaslt.Gemm{M: m, N: s.in, K: r, A: u, LdA: r,
		B: s.lP.act, LdB: r, TransB: true, D: gx, LdD: s.in, Alpha: 1, Beta: 1})
}

// --- CausalAttention ---

type attentionGradStep struct{ *attentionStep }

// fusedBackward reports whether a backward runs in
// kernels.AttnFusedBackward: fusedOK, and the buffers aligned for it.
func (s *attentionGradStep) fusedBackward(q, k, v, gy, o, gq, gk, gv driver.Ptr) bool {
	return s.fusedOK() && kernels.AttnFusedBackwardAligned(gq, gk, gv, q, k, v, o, gy)
}

func (s *attentionGradStep) devParams() []*devParam { return nil }

// BackwardDevice recomputes P = softmax(scale·Q·Kᵀ) over the visible keys
// per sequence and head (the forward's products and softmax), then, with
// dO = gy's head slice: dP = dO·Vᵀ, dS = scale·P ⊙ (dP − rowsum(dP ⊙ P)),
// dQ += dS·K, dK += dSᵀ·Q, dV += Pᵀ·dO: batched products over the heads,
// one sequence at a time, in chunks of queries (Options.AttentionChunk)
// that see only the keys up to their last query, as the forward's. A
// query with no visible key gets zero gradient. With
// Options.FusedAttention (fusedBackward) the fused kernels run instead,
// from the forward's output out.
func (s *attentionGradStep) BackwardDevice(c *ops.Call, in []ops.Tensor, out, gout ops.Tensor, gin []ops.Tensor) error {
	if c.Rows() == 0 {
		return nil
	}
	b := s.b
	if c.Past != 0 || c.DeviceCache != nil || c.Cache != nil {
		return fmt.Errorf("attention backward: needs whole sequences (past %d)", c.Past)
	}
	rows, seq, dim, hd, heads := c.Rows(), c.Seq, s.dim, s.headDim, s.heads
	for i := range 3 {
		if err := checkT(fmt.Sprintf("attention input %d", i), in[i], rows, dim); err != nil {
			return err
		}
	}
	if b.maskLd != seq {
		return fmt.Errorf("attention backward: the call's mask covers %d tokens, want %d (Begin not called?)", b.maskLd, seq)
	}
	q, k, v, gy := asTensor(in[0]).p, asTensor(in[1]).p, asTensor(in[2]).p, asTensor(gout).p
	gq, gk, gv := ptrOr0(gin[0]), ptrOr0(gin[1]), ptrOr0(gin[2])
	if out != nil && s.fusedBackward(q, k, v, gy, asTensor(out).p, gq, gk, gv) {
		// The fused kernels (Options.FusedAttention): P from each row's
		// log-sum-exp, which the first finds, with dout·out per row.
		stats, err := b.gradScratch(4, 2*4*heads*rows) // the chunked path's dP
		if err != nil {
			return err
		}
		if err := b.timed("fused backward", func() error {
			return b.k.AttnFusedBackward(b.s, gq, gk, gv, stats, stats.Add(4*heads*rows), q, k, v, asTensor(out).p, gy, b.mask.p,
				c.Batch, seq, heads, hd, s.scale)
		}); err != nil {
			return err
		}
		b.fusedAttentionBackwards++
		return nil
	}
	es, chunk := b.act.Size(), min(b.attnChunk(), seq)
	n := heads * chunk * seq // the largest chunk's scores
	scores, err := b.grow(&b.scratch[2], 4*n)
	if err != nil {
		return err
	}
	probs, err := b.grow(&b.scratch[3], es*n)
	if err != nil {
		return err
	}
	dp, err := b.gradScratch(4, 4*n)
	if err != nil {
		return err
	}
	// dS in the activation type for its products: in place of dP with
	// float32 activations, its own buffer otherwise.
	ds := dp
	if b.act != F32 {
		if ds, err = b.gradScratch(6, es*n); err != nil {
			return err
		}
	}
	for bt := 0; bt < c.Batch; bt++ {
		seqAt := func(p driver.Ptr) driver.Ptr { return p.Add(bt * seq * dim * es) } // the sequence's first token
		// Queries [r0, r0+nq) of the sequence see keys [0, keys), as in
		// the forward.
		for r0 := 0; r0 < seq; r0 += chunk {
			nq := min(chunk, seq-r0)
			keys := r0 + nq
			sq := int64(nq * keys)
			rowAt := func(p driver.Ptr) driver.Ptr { return p.Add((bt*seq + r0) * dim * es) } // the chunk's first query
			if err := b.timed("scores Q·Kᵀ (again)", func() error {
				return b.gemmGrad("attention scores", blaslt.Gemm{M: nq, N: keys, K: hd, A: rowAt(q), LdA: dim, StrideA: int64(hd),
					B: seqAt(k), LdB: dim, StrideB: int64(hd), TransB: true, D: scores, LdD: keys, StrideD: sq, Batch: heads, Alpha: 1})
			}); err != nil {
				return err
			}
			if err := b.timed("softmax (again)", func() error {
				return b.k.SoftmaxCausal(b.s, b.act, probs, scores, b.mask.p, b.maskLd, bt, heads, nq, r0, s.scale)
			}); err != nil {
				return err
			}
			if err := b.timed("dP = dO·Vᵀ", func() error {
				return b.gemmGrad("attention dP", blaslt.Gemm{M: nq, N: keys, K: hd, A: rowAt(gy), LdA: dim, StrideA: int64(hd),
					B: seqAt(v), LdB: dim, StrideB: int64(hd), TransB: true, D: dp, LdD: keys, StrideD: sq, Batch: heads, Alpha: 1})
			}); err != nil {
				return err
			}
			if err := b.timed("softmax backward", func() error {
				return b.k.SoftmaxBackward(b.s, b.act, ds, probs, dp, heads*nq, keys, s.scale)
			}); err != nil {
				return err
			}
			// dQ[chunk] += dS·K, dK += dSᵀ·Q[chunk], dV += Pᵀ·dO[chunk], each
			// when wanted (dS and P are [nq, keys] per head).
			for _, g := range []struct {
				what string
				to   driver.Ptr
				at   func(driver.Ptr) driver.Ptr // where in to the product's rows start
				g    blaslt.Gemm
			}{
				{"attention dQ", gq, rowAt, blaslt.Gemm{M: nq, K: keys, A: ds, B: seqAt(k)}},
				{"attention dK", gk, seqAt, blaslt.Gemm{M: keys, K: nq, A: ds, TransA: true, B: rowAt(q)}},
				{"attention dV", gv, seqAt, blaslt.Gemm{M: keys, K: nq, A: probs, TransA: true, B: rowAt(gy)}},
			} {
				if g.to == 0 {
					continue
				}
				p := g.g
				p.N, p.LdA, p.StrideA, p.LdB, p.StrideB = hd, keys, sq, dim, int64(hd)
				p.D, p.LdD, p.StrideD, p.Batch, p.Alpha, p.Beta = g.at(g.to), dim, int64(hd), heads, 1, 1
				if err := b.timed("dQ, dK, dV products", func() error { return b.gemmAct(g.what, p) }); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

var _ ops.GradBackend = (*Backend)(nil)

// --- Device training state (ops.DeviceGradBackend) ---

// CrossEntropy implements ops.DeviceGradBackend.
func (b *Backend) CrossEntropy(logits ops.Tensor, targets []int32, scale float64, grad bool, loss []float64) error {
	y := asTensor(logits)
	rows := y.rows
	if len(targets) != rows || len(loss) != rows {
		return fmt.Errorf("cuda: cross-entropy of %d rows with %d targets and %d losses", rows, len(targets), len(loss))
	}
	if rows == 0 {
		return nil
	}
	for r, t := range targets {
		if int(t) >= y.dim {
			return fmt.Errorf("cuda: cross-entropy target %d of row %d outside the %d logits", t, r, y.dim)
		}
	}
	// The losses (fp64, 8-byte aligned), then the targets.
	p, err := b.grow(&b.ce, 12*rows)
	if err != nil {
		return err
	}
	if err := b.dev.SyncStream(b.s); err != nil {
		return err
	}
	tp := p.Add(8 * rows)
	if err := b.dev.CopyIn(tp, ptrOf(targets), 4*rows); err != nil {
		return err
	}
	if err := b.timed("loss (cross-entropy)", func() error {
		return b.k.CrossEntropy(b.s, b.act, y.p, p, tp, rows, y.dim, scale, grad)
	}); err != nil {
		return err
	}
	if err := b.dev.SyncStream(b.s); err != nil {
		return err
	}
	return b.dev.CopyOut(unsafe.Pointer(&loss[0]), p, 8*rows)
}

// Zero implements ops.DeviceGradBackend.
func (b *Backend) Zero(t ops.Tensor) error {
	dt := asTensor(t)
	if dt.rows*dt.dim == 0 {
		return nil
	}
	if err := b.timed("zero activation gradients", func() error { return b.k.Fill(b.s, b.act, dt.p, 0, dt.rows*dt.dim) }); err != nil {
		return err
	}
	dt.zeroed = true
	return nil
}

// deviceOptimizer is the training state of Params on the GPU: their
// devParams (values, gradients, transpose masks) and AdamW moments.
type deviceOptimizer struct {
	b      *Backend
	params []*devParam
	m, v   []driver.Ptr
	sum    driver.Ptr // one float64, SumSquares's accumulator
	parts  driver.Ptr // kernels.SumSquaresParts float64, its scratch
	// counted: this optimizer is in Backend.optimizers.
	counted bool
	// masksNew: RefreshMasks changed the device's transpose masks, which
	// Store copies out.
	masksNew bool
}

// NewOptimizer implements ops.DeviceGradBackend: params must be Params of
// steps this backend bound (or are bound now). The moments start at zero.
func (b *Backend) NewOptimizer(params []*ops.Param) (_ ops.DeviceOptimizer, err error) {
	o := &deviceOptimizer{b: b}
	defer func() {
		if err != nil {
			o.Close()
		}
	}()
	if o.sum, err = b.dev.Alloc(8); err != nil {
		return nil, err
	}
	if o.parts, err = b.dev.Alloc(8 * kernels.SumSquaresParts); err != nil {
		return nil, err
	}
	for _, p := range params {
		d, err := b.deviceParam(p)
		if err != nil {
			return nil, err
		}
		o.params = append(o.params, d)
		for _, mv := range []*[]driver.Ptr{&o.m, &o.v} {
			q, err := b.dev.Alloc(4 * len(p.Value))
			if err != nil {
				return nil, fmt.Errorf("param %q: moments: %w", p.Name, err)
			}
			*mv = append(*mv, q)
			if err := b.k.Fill(b.s, F32, q, 0, len(p.Value)); err != nil {
				return nil, err
			}
		}
	}
	if err := o.ZeroGrads(); err != nil {
		return nil, err
	}
	b.optimizers++
	o.counted = true
	return o, nil
}

func (o *deviceOptimizer) check(m, v [][]float32) error {
	if len(m) != len(o.params) || len(v) != len(o.params) {
		return fmt.Errorf("cuda: %d and %d moments for %d params", len(m), len(v), len(o.params))
	}
	for k, d := range o.params {
		if len(m[k]) != len(d.p.Value) || len(v[k]) != len(d.p.Value) {
			return fmt.Errorf("cuda: param %q: moments of %d and %d values, want %d", d.p.Name, len(m[k]), len(v[k]), len(d.p.Value))
		}
	}
	return nil
}

// Load implements ops.DeviceOptimizer: the host's state, masks included,
// replaces the device's.
func (o *deviceOptimizer) Load(m, v [][]float32) error {
	if err := o.check(m, v); err != nil {
		return err
	}
	o.masksNew = false
	b := o.b
	for k, d := range o.params {
		if err := b.push(d); err != nil {
			return err
		}
		for i, src := range [][]float32{m[k], v[k]} {
			if err := b.dev.CopyIn([]driver.Ptr{o.m[k], o.v[k]}[i], unsafe.Pointer(&src[0]), 4*len(src)); err != nil {
				return fmt.Errorf("param %q: moments: %w", d.p.Name, err)
			}
		}
	}
	return nil
}

// Store implements ops.DeviceOptimizer.
func (o *deviceOptimizer) Store(m, v [][]float32) error {
	if err := o.check(m, v); err != nil {
		return err
	}
	b := o.b
	if err := b.dev.SyncStream(b.s); err != nil {
		return err
	}
	for k, d := range o.params {
		for _, c := range []struct {
			dst []float32
			src driver.Ptr
		}{{d.p.Value, d.val}, {m[k], o.m[k]}, {v[k], o.v[k]}} {
			if err := b.dev.CopyOut(unsafe.Pointer(&c.dst[0]), c.src, 4*len(c.dst)); err != nil {
				return fmt.Errorf("param %q: %w", d.p.Name, err)
			}
		}
	}
	if o.masksNew {
		return o.storeMasks()
	}
	return nil
}

// RefreshMasks implements ops.DeviceOptimizer with nm_tmask24 (2:4 only).
func (o *deviceOptimizer) RefreshMasks() error {
	var nms []*devParam
	for _, d := range o.params {
		nm := d.p.NM
		if nm == nil || nm.Rows%nm.Pattern.M != 0 {
			continue
		}
		if nm.Pattern.N != 2 || nm.Pattern.M != 4 {
			return fmt.Errorf("cuda: transpose masks of %s weights (%q) on the device: %w", nm.Pattern, d.p.Name, ops.ErrUnsupported)
		}
		nms = append(nms, d)
	}
	// From here the device's masks are the newer ones, even if a launch
	// fails part way: Store copies them out, and push uploads the host's
	// again only after that.
	o.masksNew = o.masksNew || len(nms) > 0
	return o.b.timed("transpose-mask refresh", func() error { return o.refreshMasks(nms) })
}

func (o *deviceOptimizer) refreshMasks(nms []*devParam) error {
	for _, d := range nms {
		nm := d.p.NM
		d.keepSet = false
		if err := o.b.k.NMTMask24(o.b.s, d.keep, d.val, d.idx, nm.Rows, nm.Cols); err != nil {
			return fmt.Errorf("param %q: %w", d.p.Name, err)
		}
		if err := o.b.valuesChanged(d, true); err != nil {
			return err
		}
	}
	return nil
}

// storeMasks copies the device's transpose masks into the host Params
// (after RefreshMasks).
func (o *deviceOptimizer) storeMasks() error {
	for _, d := range o.params {
		nm := d.p.NM
		if nm == nil || nm.Rows%nm.Pattern.M != 0 {
			continue
		}
		raw := make([]byte, len(d.p.Value))
		if err := o.b.dev.CopyOut(unsafe.Pointer(&raw[0]), d.keep, len(raw)); err != nil {
			return fmt.Errorf("param %q: transpose mask: %w", d.p.Name, err)
		}
		keep := make([]bool, len(raw))
		for i, v := range raw {
			keep[i] = v != 0
		}
		if err := nm.SetTKeep(keep); err != nil {
			return fmt.Errorf("param %q: %w", d.p.Name, err)
		}
		d.keepOf, d.keepSet = slices.Clone(nm.TMask), true
	}
	o.masksNew = false
	return nil
}

// ZeroGrads implements ops.DeviceOptimizer: the gradients become stale
// (devParam.gradStale), cleared by their next writer.
func (o *deviceOptimizer) ZeroGrads() error {
	for _, d := range o.params {
		d.gradStale = true
	}
	return nil
}

// SumSquares implements ops.DeviceOptimizer (in float64, in an order
// fixed by the Params' sizes: the same bits on every run).
func (o *deviceOptimizer) SumSquares() (float64, error) {
	b := o.b
	if err := b.timed("gradient norm", func() error {
		if err := b.k.Fill(b.s, F32, o.sum, 0, 2); err != nil { // +0.0 is all zero bits
			return err
		}
		for _, d := range o.params {
			if d.gradStale {
				continue // zero
			}
			if err := b.k.SumSquares(b.s, o.sum, o.parts, d.grad, len(d.p.Value)); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		return 0, err
	}
	if err := b.dev.SyncStream(b.s); err != nil {
		return 0, err
	}
	var ss float64
	return ss, b.dev.CopyOut(unsafe.Pointer(&ss), o.sum, 8)
}

// AdamW implements ops.DeviceOptimizer with the adamw_f32 kernel (the CPU
// trainer's arithmetic, bit for bit).
func (o *deviceOptimizer) AdamW(k int, st cpu.AdamWStep) error {
	if k < 0 || k >= len(o.params) {
		return fmt.Errorf("cuda: AdamW of param %d of %d", k, len(o.params))
	}
	d, b := o.params[k], o.b
	h := kernels.AdamWStep{Beta1: st.Beta1, Beta2: st.Beta2, BC1: st.BC1, BC2: st.BC2, LR: st.LR, Shrink: st.Shrink, Eps: st.Eps, GradScale: st.GradScale}
	var wbf driver.Ptr // the bf16 copy the products read, rewritten by the update
	if d.act != d.val {
		wbf = d.act
	}
	label := "AdamW dense"
	if d.p.NM != nil {
		label = "AdamW N:M (kept values)"
	}
	return b.timed(label, func() error {
		if err := b.freshGrad(d); err != nil { // a Param without gradient this step
			return err
		}
		if err := b.k.AdamW(b.s, d.val, d.grad, o.m[k], o.v[k], wbf, len(d.p.Value), h); err != nil {
			return fmt.Errorf("param %q: %w", d.p.Name, err)
		}
		if err := b.valuesChanged(d, false); err != nil {
			return err
		}
		d.gradStale = st.ZeroGrad
		return nil
	})
}

// Close implements ops.DeviceOptimizer. The Params' values and gradients
// stay on the device with the steps that use them.
func (o *deviceOptimizer) Close() error {
	if o.b == nil {
		return nil
	}
	var errs []error
	for _, p := range append(append([]driver.Ptr{o.sum, o.parts}, o.m...), o.v...) {
		if p != 0 {
			errs = append(errs, o.b.dev.Free(p))
		}
	}
	if o.counted {
		o.b.optimizers--
	}
	o.m, o.v, o.sum, o.parts, o.params, o.b = nil, nil, 0, 0, nil, nil
	return errors.Join(errs...)
}

// ReleaseParams implements ops.DeviceGradBackend: it frees the device
// mirrors of params (values, gradients, indices, transpose masks). Steps
// bound with them must not run again.
func (b *Backend) ReleaseParams(params []*ops.Param) error {
	var errs []error
	for _, p := range params {
		if d := b.params[p]; d != nil {
			errs = append(errs, d.free(b))
			delete(b.params, p)
		}
	}
	return errors.Join(errs...)
}

func (d *devParam) free(b *Backend) error {
	var errs []error
	if d.forms != nil {
		errs = append(errs, d.forms.destroy()) // act is inside W's form
		d.forms = nil
	}
	ptrs := []driver.Ptr{d.val, d.grad, d.idx, d.keep}
	if d.act != d.val && !d.actShared {
		ptrs = append(ptrs, d.act)
	}
	for _, p := range ptrs {
		if p != 0 {
			errs = append(errs, b.dev.Free(p))
		}
	}
	d.val, d.grad, d.idx, d.keep, d.act = 0, 0, 0, 0, 0
	return errors.Join(errs...)
}

var (
	_ ops.DeviceGradBackend = (*Backend)(nil)
	_ ops.DeviceGradStep    = hostGradStep{}
)
