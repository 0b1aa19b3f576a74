package cuda

import (
	"errors"
	"fmt"

	"github.com/slopeml/slope/cuda/blaslt"
	"github.com/slopeml/slope/cuda/driver"
	"github.com/slopeml/slope/cuda/kernels"
	"github.com/slopeml/slope/cuda/sparselt"
	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/format/slopepb"
	"github.com/slopeml/slope/ops"
)

// deviceWeight uploads weight input i (as dt), once per tensor name.
func (b *Backend) deviceWeight(bd ops.Binding, input int, dt DType, want ...int) (driver.Ptr, []int, error) {
	name := bd.Node.Input(input)
	key := weightKey{bd.W, name, fmt.Sprint("dense", dt)}
	data, shape, err := ops.WeightF32(bd, input, want...)
	if err != nil {
		return 0, nil, err
	}
	p, err := b.uploadFloats(key, data, dt)
	return p, shape, err
}

// optionalF32 uploads an optional float32 vector of n values, or fill
// when the input is omitted and fill is not nil.
func (b *Backend) optionalF32(bd ops.Binding, input, n int, fill *float32) (driver.Ptr, error) {
	if bd.Node.Input(input) == "" {
		if fill == nil {
			return 0, nil
		}
		v := make([]float32, n)
		for i := range v {
			v[i] = *fill
		}
		return b.uploadBytesF32(v)
	}
	p, _, err := b.deviceWeight(bd, input, F32, n)
	return p, err
}

func (b *Backend) uploadBytesF32(v []float32) (driver.Ptr, error) {
	raw := make([]byte, 4*len(v))
	if err := format.EncodeFloats(slopepb.DType_FLOAT32, v, raw); err != nil {
		return 0, err
	}
	return b.uploadBytes(raw)
}

func (b *Backend) blasType(dt DType) blaslt.DType {
	if dt == F32 {
		return blaslt.F32
	}
	return blaslt.BF16
}

func checkT(what string, t ops.Tensor, rows, dim int) error {
	if t.Rows() != rows || t.Dim() != dim {
		return fmt.Errorf("%s is %d x %d, want %d x %d", what, t.Rows(), t.Dim(), rows, dim)
	}
	return nil
}

// --- Embedding ---

type embeddingStep struct {
	b                     *Backend
	tok, pos              driver.Ptr // [V, P] and [Np, H], activation type
	vocab, hid, positions int
	proj                  int        // P (== H without project_in)
	projIn                driver.Ptr // [H, P] or 0
	zeroRow               driver.Ptr // max(P, H) zeros (project_in only)
	offset                int
	hostInts              []int32
}

func (b *Backend) bindEmbedding(bd ops.Binding) (ops.Step, error) {
	n := bd.Node
	tok, ts, err := b.deviceWeight(bd, 2, b.act, -1, -1)
	if err != nil {
		return nil, err
	}
	pos, ps, err := b.deviceWeight(bd, 3, b.act, -1, -1)
	if err != nil {
		return nil, err
	}
	off, err := n.Int("position_offset", 2)
	if err != nil {
		return nil, err
	}
	if off < 0 || int(off) >= ps[0] {
		return nil, fmt.Errorf("node %q: position_offset %d outside the %d positions: %w", n.Name, off, ps[0], ops.ErrBadNode)
	}
	s := &embeddingStep{b: b, tok: tok, pos: pos, vocab: ts[0], proj: ts[1], hid: ps[1], positions: ps[0], offset: int(off)}
	if n.Input(4) != "" {
		// project_in [H, P]: y = tok[id]·projInᵀ + pos[p].
		if s.projIn, _, err = b.deviceWeight(bd, 4, b.act, s.hid, s.proj); err != nil {
			return nil, err
		}
		zero, err := b.dev.Alloc(max(s.proj, s.hid) * b.act.Size())
		if err != nil {
			return nil, err
		}
		if err := b.dev.Memset8(zero, 0, max(s.proj, s.hid)*b.act.Size()); err != nil {
			return nil, err
		}
		s.zeroRow = zero
	} else if s.proj != s.hid {
		return nil, fmt.Errorf("node %q: token embedding width %d differs from position width %d without project_in: %w", n.Name, s.proj, s.hid, ops.ErrBadNode)
	}
	return b.wrap(s), nil
}

func (s *embeddingStep) OutDim() int { return s.hid }

// rowInts resolves the call's rows on the host: each row's token id, then
// each row's position row (offset included), then rows zeros (row 0 of a
// zero table), in a buffer reused by the next call.
func (s *embeddingStep) rowInts(c *ops.Call) ([]int32, error) {
	rows := c.Rows()
	if cap(s.hostInts) < 3*rows {
		s.hostInts = make([]int32, 3*rows)
	}
	ints := s.hostInts[:3*rows]
	clear(ints[2*rows:])
	if err := ops.EmbeddingRows(c, s.vocab, s.offset, s.positions, func(r, id, p int) error {
		ints[r], ints[rows+r] = int32(id), int32(p)
		return nil
	}); err != nil {
		return nil, err
	}
	return ints, nil
}

func (s *embeddingStep) ForwardDevice(c *ops.Call, _ []ops.Tensor, out ops.Tensor) error {
	rows := c.Rows()
	if err := checkT("embedding output", out, rows, s.hid); err != nil {
		return err
	}
	ints, err := s.rowInts(c)
	if err != nil {
		return err
	}
	b := s.b
	p, err := b.putInts(&b.ints, ints)
	if err != nil {
		return err
	}
	ids, positions, zeros := p, p.Add(4*rows), p.Add(8*rows)
	y := asTensor(out).p
	if s.projIn == 0 {
		return b.k.Embedding(b.s, b.act, y, ids, positions, s.tok, s.pos, rows, s.hid)
	}
	tmp, err := b.scratchT(0, rows, s.proj)
	if err != nil {
		return err
	}
	// tmp = tok[ids] (+ the zero row), y = tmp·projInᵀ, y += pos[positions].
	if err := b.k.Embedding(b.s, b.act, tmp, ids, zeros, s.tok, s.zeroRow, rows, s.proj); err != nil {
		return err
	}
	at := b.blasType(b.act)
	if err := b.lt.Run(b.s, &blaslt.Gemm{M: rows, N: s.hid, K: s.proj, A: tmp, LdA: s.proj, B: s.projIn, LdB: s.proj, TransB: true,
		D: y, LdD: s.hid, Alpha: 1, AB: at, Out: at}); err != nil {
		return fmt.Errorf("embedding project_in: %w", err)
	}
	pr, err := b.scratchT(1, rows, s.hid)
	if err != nil {
		return err
	}
	if err := b.k.Embedding(b.s, b.act, pr, positions, zeros, s.pos, s.zeroRow, rows, s.hid); err != nil {
		return err
	}
	return b.k.Add(b.s, b.act, y, y, pr, rows*s.hid)
}

// --- LayerNorm, Add, activations ---

type layerNormStep struct {
	b           *Backend
	dim         int
	gamma, beta driver.Ptr
	eps         float32
}

// layerNormShape reads a LayerNorm node's width and epsilon.
func layerNormShape(bd ops.Binding) (dim int, eps float32, err error) {
	if dim, err = ops.InDim(bd, 0); err != nil {
		return 0, 0, err
	}
	eps, err = bd.Node.LayerNormEpsilon()
	return dim, eps, err
}

func (b *Backend) bindLayerNorm(bd ops.Binding) (ops.Step, error) {
	d, eps, err := layerNormShape(bd)
	if err != nil {
		return nil, err
	}
	one, zero := float32(1), float32(0)
	s := &layerNormStep{b: b, dim: d, eps: eps}
	if s.gamma, err = b.optionalF32(bd, 1, d, &one); err != nil {
		return nil, err
	}
	if s.beta, err = b.optionalF32(bd, 2, d, &zero); err != nil {
		return nil, err
	}
	return b.wrap(s), nil
}

func (s *layerNormStep) OutDim() int { return s.dim }

func (s *layerNormStep) ForwardDevice(c *ops.Call, in []ops.Tensor, out ops.Tensor) error {
	if err := checkT("layernorm input", in[0], c.Rows(), s.dim); err != nil {
		return err
	}
	return s.b.k.LayerNorm(s.b.s, s.b.act, asTensor(out).p, asTensor(in[0]).p, s.gamma, s.beta, c.Rows(), s.dim, s.eps)
}

type addStep struct {
	b   *Backend
	dim int
}

func (b *Backend) bindAdd(bd ops.Binding) (ops.Step, error) {
	d0, err := ops.InDim(bd, 0)
	if err != nil {
		return nil, err
	}
	d1, err := ops.InDim(bd, 1)
	if err != nil {
		return nil, err
	}
	if d0 != d1 {
		return nil, fmt.Errorf("node %q: adds widths %d and %d: %w", bd.Node.Name, d0, d1, ops.ErrBadNode)
	}
	return b.wrap(&addStep{b: b, dim: d0}), nil
}

func (s *addStep) OutDim() int { return s.dim }

func (s *addStep) ForwardDevice(c *ops.Call, in []ops.Tensor, out ops.Tensor) error {
	for i := range 2 {
		if err := checkT(fmt.Sprintf("add input %d", i), in[i], c.Rows(), s.dim); err != nil {
			return err
		}
	}
	return s.b.k.Add(s.b.s, s.b.act, asTensor(out).p, asTensor(in[0]).p, asTensor(in[1]).p, c.Rows()*s.dim)
}

type activationStep struct {
	b   *Backend
	dim int
	act kernels.Act
}

var activations = map[string]kernels.Act{
	ops.OpRelu: kernels.ActRelu, ops.OpGelu: kernels.ActGelu, ops.OpGeluTanh: kernels.ActGeluTanh,
	ops.OpSilu: kernels.ActSilu, ops.OpTanh: kernels.ActTanh, ops.OpSigmoid: kernels.ActSigmoid,
}

func (b *Backend) bindActivation(bd ops.Binding) (ops.Step, error) {
	d, err := ops.InDim(bd, 0)
	if err != nil {
		return nil, err
	}
	a, ok := activations[bd.Node.OpType]
	if !ok {
		return nil, fmt.Errorf("node %q: activation %s: %w", bd.Node.Name, bd.Node.OpType, ops.ErrUnsupported)
	}
	return b.wrap(&activationStep{b: b, dim: d, act: a}), nil
}

func (s *activationStep) OutDim() int { return s.dim }

func (s *activationStep) ForwardDevice(c *ops.Call, in []ops.Tensor, out ops.Tensor) error {
	if err := checkT("activation input", in[0], c.Rows(), s.dim); err != nil {
		return err
	}
	return s.b.k.Act(s.b.s, s.b.act, asTensor(out).p, asTensor(in[0]).p, c.Rows()*s.dim, s.act)
}

// --- Linear, LMHead, SlopeLinear ---

// linearStep computes y[M, out] = x[M, in]·Wᵀ + bias (+ scale·(x·L)·R).
type linearStep struct {
	b       *Backend
	name    string
	in, out int
	bias    driver.Ptr // float32 [out] or 0
	biasAct driver.Ptr // the bias in the activation type (library epilogues), or 0
	ltBias  bool       // cuSPARSELt adds the bias itself

	// Dense weight [out, in] in the activation type.
	w driver.Ptr

	// N:M weight [rows, in] (rows = out + merged rank).
	nm        bool
	rows      int
	pat       format.NM
	vals, idx driver.Ptr
	valType   DType
	sp        *sparselt.Weight // 2:4 bf16 via cuSPARSELt, or nil
	// valsShared: vals points into sp's compressed form (its values part,
	// which is the portable values' layout; see compress24), not to a
	// buffer of its own.
	valsShared bool
	spmv       bool       // the custom 2:4 kernel applies
	tc         bool       // the sparse-tensor-core kernel applies (tcv, tci on the device)
	tcv, tci   driver.Ptr // the 2:4 weight in spmm24tc's streaming layout
	rank       int
	merged     bool
	l, r       driver.Ptr // L [in, rank] (unmerged), R [rank, out]
	scale      float32
	// force pins the N:M path ("spmv", "cusparselt", "generic"; "" is
	// the automatic choice), for cross-checks and benchmarks.
	force string
}

func (s *linearStep) OutDim() int { return s.out }

func (b *Backend) bindLinear(bd ops.Binding) (ops.Step, error) {
	in, err := ops.InDim(bd, 0)
	if err != nil {
		return nil, err
	}
	w, shape, err := b.deviceWeight(bd, 1, b.act, -1, in)
	if err != nil {
		return nil, err
	}
	s := &linearStep{b: b, name: bd.Node.Name, in: in, out: shape[0], w: w}
	if bd.Node.OpType == ops.OpLinear {
		if err := b.bindBias(bd, s); err != nil {
			return nil, err
		}
	}
	return b.wrap(s), nil
}

func (b *Backend) bindSlopeLinear(bd ops.Binding) (ops.Step, error) {
	n := bd.Node
	in, err := ops.InDim(bd, 0)
	if err != nil {
		return nil, err
	}
	name := n.Input(1)
	t, err := bd.W.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("node %q: %w", n.Name, err)
	}
	if t.Encoding != slopepb.Encoding_NM {
		return nil, fmt.Errorf("node %q: weight %q is %s, SlopeLinear needs an NM weight: %w", n.Name, name, t.Encoding, ops.ErrBadNode)
	}
	v, err := bd.W.NM(name)
	if err != nil {
		return nil, fmt.Errorf("node %q: %w", n.Name, err)
	}
	if v.Cols != in {
		return nil, fmt.Errorf("node %q: weight %q is [%d %d], the input has width %d: %w", n.Name, name, v.Rows, v.Cols, in, ops.ErrBadNode)
	}
	an, _ := n.Int("n", 0)
	am, _ := n.Int("m", 0)
	if int(an) != v.Pattern.N || int(am) != v.Pattern.M {
		return nil, fmt.Errorf("node %q: attributes n:m = %d:%d, weight %q is %s: %w", n.Name, an, am, name, v.Pattern, ops.ErrBadNode)
	}
	mergedRank, err := n.Int("merged_rank", 0)
	if err != nil {
		return nil, err
	}
	s := &linearStep{b: b, name: n.Name, in: in, nm: true, rows: v.Rows, pat: v.Pattern, out: v.Rows - int(mergedRank)}
	if mergedRank < 0 || s.out < 1 {
		return nil, fmt.Errorf("node %q: merged_rank %d for a weight of %d rows: %w", n.Name, mergedRank, v.Rows, ops.ErrBadNode)
	}
	if err := b.bindBias(bd, s); err != nil {
		return nil, err
	}
	s.merged = mergedRank > 0
	if err := b.uploadNM(s, name, v); err != nil {
		return nil, fmt.Errorf("node %q: weight %q: %w", n.Name, name, err)
	}
	switch {
	case mergedRank > 0:
		if n.Input(4) != "" || n.Input(5) == "" {
			return nil, fmt.Errorf("node %q: merged_rank %d needs R and no L input: %w", n.Name, mergedRank, ops.ErrBadNode)
		}
		s.merged, s.rank = true, int(mergedRank)
		if s.r, _, err = b.deviceWeight(bd, 5, b.act, s.rank, s.out); err != nil {
			return nil, err
		}
		if s.scale, err = ops.AdapterScale(bd, 5); err != nil {
			return nil, err
		}
	case n.Input(4) != "" || n.Input(5) != "":
		var ls []int
		if s.l, ls, err = b.deviceWeight(bd, 4, b.act, in, -1); err != nil {
			return nil, err
		}
		s.rank = ls[1]
		if s.r, _, err = b.deviceWeight(bd, 5, b.act, s.rank, s.out); err != nil {
			return nil, err
		}
		if s.scale, err = ops.AdapterScale(bd, 4); err != nil {
			return nil, err
		}
	}
	return b.wrap(s), nil
}

// bindBias uploads a linear's optional bias (input 2): float32 for the
// kernels, and in the activation type for the library epilogues.
func (b *Backend) bindBias(bd ops.Binding, s *linearStep) error {
	var err error
	if s.bias, err = b.optionalF32(bd, 2, s.out, nil); err != nil || s.bias == 0 {
		return err
	}
	s.biasAct, _, err = b.deviceWeight(bd, 2, b.act, s.out)
	return err
}

// uploadNM puts an N:M weight on the device: the portable values and
// indices (read by the N:M kernels) and, for 2:4 bf16 with cuSPARSELt,
// the library's compressed form (compress24: made on the device, sharing
// the values with the portable form where it can).
func (b *Backend) uploadNM(s *linearStep, name string, v *format.NMView) error {
	// Values in the activation type's precision class: bf16 stays bf16;
	// fp16 and fp32 become fp32 (exact) in f32 mode and bf16 otherwise.
	vt := b.act
	if v.DType == slopepb.DType_BFLOAT16 {
		vt = BF16
	}
	var raw []byte
	if (vt == BF16 && v.DType == slopepb.DType_BFLOAT16) || (vt == F32 && v.DType == slopepb.DType_FLOAT32) {
		raw = v.Values
	} else {
		es, _ := format.ElemSize(v.DType)
		f := make([]float32, len(v.Values)/es)
		if err := format.DecodeFloats(v.DType, v.Values, f); err != nil {
			return err
		}
		raw = make([]byte, len(f)*vt.Size())
		dst := slopepb.DType_FLOAT32
		if vt == BF16 {
			dst = slopepb.DType_BFLOAT16
		}
		if err := format.EncodeFloats(dst, f, raw); err != nil {
			return err
		}
	}
	var err error
	s.valType = vt
	if s.vals, err = b.uploadBytes(raw); err != nil {
		return err
	}
	if s.idx, err = b.uploadBytes(v.Indices); err != nil {
		return err
	}
	is24 := v.Pattern.N == 2 && v.Pattern.M == 4 && vt == BF16
	s.spmv = is24 && v.Cols%64 == 0 && b.opts.SpMVMaxRows > 0
	valsBytes := int64(len(raw))
	if is24 && b.sp != nil && sparselt.Supported(v.Rows, v.Cols) == nil {
		// Share the values with cuSPARSELt's form when the portable form
		// stays (not in low-memory mode, nor when the tensor-core form
		// replaces it: see dropUnusedPortable).
		tcOnly := b.tcShapeOK(v.Rows, v.Cols) && b.opts.TCMaxRows > 0 && b.opts.SpMVMaxRows <= 0
		share := !b.opts.LowMemory && !tcOnly && !hasZeroBF16(raw)
		w, err := b.compress24(s, v.Rows, v.Cols, share)
		if err != nil {
			return fmt.Errorf("cuSPARSELt: %w", err)
		}
		if s.valsShared {
			b.WeightBytes -= valsBytes
			valsBytes = 0
		}
		if err := s.setLtBias(w); err != nil {
			return err
		}
		if err := b.dev.SyncStream(b.s); err != nil {
			return err
		}
		s.sp = w
		b.WeightBytes += w.Bytes()
		if b.opts.LowMemory {
			// Only cuSPARSELt's form stays: every product runs there.
			for _, p := range []driver.Ptr{s.vals, s.idx} {
				if err := b.dev.Free(p); err != nil {
					return err
				}
			}
			b.WeightBytes -= int64(len(raw) + len(v.Indices))
			s.vals, s.idx, s.spmv = 0, 0, false
			return nil
		}
	}
	if is24 && b.tcShapeOK(v.Rows, v.Cols) && b.opts.TCMaxRows > 0 {
		if err := b.uploadTC(s, raw, v.Indices, v.Rows, v.Cols); err != nil {
			return err
		}
	}
	return b.dropUnusedPortable(s, valsBytes+int64(len(v.Indices)))
}

// setLtBias puts the step's bias into cuSPARSELt's epilogue of its form
// w when the epilogue passed its check at New (not for the merged
// adapter layout, whose first product is wider than the bias).
func (s *linearStep) setLtBias(w *sparselt.Weight) error {
	if !s.b.ltBias || s.biasAct == 0 || s.merged {
		return nil
	}
	if err := w.SetBias(s.biasAct); err != nil {
		return err
	}
	s.ltBias = true
	return nil
}

// compress24 makes the cuSPARSELt form of the 2:4 bf16 weight [rows,
// cols] whose portable values and indices are on the device (s.vals,
// s.idx). With share, when cuSPARSELt's values layout checks out
// (sparselt.Handle.CheckValues, and Weight.VerifyValues for the first
// weight of each shape), the form is compressed from the weight's
// pattern and the portable values are copied into its values part,
// which has their layout; s.vals then points there (s.valsShared) and
// its own buffer is freed, so the N:M kernels and cuSPARSELt read one
// copy of the values. Otherwise (without share, when a check fails, or
// when the sharing path meets a device error, which is logged) the form
// is compressed from the expanded weight and s.vals keeps its buffer.
// The caller passes share false for a weight with a kept value that is
// exactly zero: cuSPARSELt's own compression of it (VerifyValues' yardstick)
// differs from the pattern's there, which would read as a layout mismatch
// for the whole shape. The caller takes the freed bytes off WeightBytes.
func (b *Backend) compress24(s *linearStep, rows, cols int, share bool) (*sparselt.Weight, error) {
	dense, err := b.dev.Alloc(rows * cols * 2)
	if err != nil {
		return nil, err
	}
	defer b.dev.Free(dense)
	expand := func() error { return b.k.NMExpand(b.s, BF16, dense, s.vals, s.idx, rows, cols, 2, 4) }
	if share {
		w, err := b.shareValues(s, dense, expand, rows, cols)
		if err == nil && w != nil {
			return w, nil
		}
		if err != nil && !errors.Is(err, sparselt.ErrValuesLayout) {
			b.opts.Log(fmt.Sprintf("cuda: %s: 2:4 values not shared with cuSPARSELt (%v); two copies kept", s.name, err))
		}
	}
	if err := expand(); err != nil {
		return nil, err
	}
	return b.sp.NewWeight(b.s, dense, rows, cols)
}

// shareValues is compress24's sharing path: the form made from the
// pattern, with the portable values written in place and s.vals moved
// there. It returns nil and an error (ErrValuesLayout for a layout the
// checks refuse) when it does not share; it leaves s as it found it then.
func (b *Backend) shareValues(s *linearStep, dense driver.Ptr, expand func() error, rows, cols int) (*sparselt.Weight, error) {
	if err := b.sp.CheckValues(b.s); err != nil {
		return nil, err
	}
	if err := b.sp.ShapeRefused(rows, cols); err != nil {
		return nil, err // this shape failed VerifyValues before
	}
	// The form from the pattern (a kept value that is 0 must not change
	// the metadata).
	kept := rows * cols / 2
	ones, err := b.dev.Alloc(2 * kept)
	if err != nil {
		return nil, err
	}
	defer b.dev.Free(ones)
	var w *sparselt.Weight
	if err := b.compressPattern24(&w, dense, ones, s.idx, 0, rows, cols, false); err != nil {
		return nil, err
	}
	fail := func(err error) (*sparselt.Weight, error) {
		return nil, errors.Join(err, w.Destroy())
	}
	p, err := w.Values()
	if err != nil {
		return fail(err)
	}
	if err := b.dev.CopyDevice(p, s.vals, 2*kept, b.s); err != nil {
		return fail(err)
	}
	if err := expand(); err != nil {
		return fail(err)
	}
	if err := w.VerifyValues(b.s, dense); err != nil {
		return fail(err)
	}
	if err := b.dev.SyncStream(b.s); err != nil {
		return fail(err)
	}
	if err := b.dev.Free(s.vals); err != nil {
		return fail(err)
	}
	s.vals, s.valsShared = p, true
	return w, nil
}

// hasZeroBF16 reports whether little-endian bf16 values hold ±0.
func hasZeroBF16(raw []byte) bool {
	for i := 0; i+1 < len(raw); i += 2 {
		if raw[i] == 0 && raw[i+1]&0x7f == 0 {
			return true
		}
	}
	return false
}

// tcShapeOK reports whether a 2:4 weight [rows, cols] can have the
// tensor-core kernel's form: bf16 mode (the kernel rounds x to bf16),
// rows % 16 == 0 and cols % 64 == 0.
func (b *Backend) tcShapeOK(rows, cols int) bool {
	return b.act == BF16 && cols%64 == 0 && rows%16 == 0
}

// uploadTC adds a 2:4 bf16 weight's streaming layout (spmm24tc's form),
// made on the host from the portable values and indices.
func (b *Backend) uploadTC(s *linearStep, vals, idx []byte, rows, cols int) error {
	tv, ti, err := kernels.SpMM24TCLayout(vals, idx, rows, cols)
	if err != nil {
		return fmt.Errorf("%s: %w", s.name, err)
	}
	if s.tcv, err = b.uploadBytes(tv); err != nil {
		return err
	}
	if s.tci, err = b.uploadBytes(ti); err != nil {
		return err
	}
	s.tc = true
	return nil
}

// dropUnusedPortable frees the portable form (bytes) of a 2:4 weight that
// no path reads: the tensor-core kernel takes the decode sizes (the decode
// kernel is off) and cuSPARSELt the rest.
func (b *Backend) dropUnusedPortable(s *linearStep, bytes int64) error {
	if s.vals == 0 || !s.tc || s.sp == nil || b.opts.SpMVMaxRows > 0 || s.force != "" {
		return nil
	}
	ps := []driver.Ptr{s.vals, s.idx}
	if s.valsShared {
		ps = ps[1:] // the values are cuSPARSELt's
	}
	for _, p := range ps {
		if err := b.dev.Free(p); err != nil {
			return err
		}
	}
	b.WeightBytes -= bytes
	s.vals, s.idx, s.spmv, s.valsShared = 0, 0, false, false
	return nil
}

// scratchT returns scratch slot i of at least rows x dim activations.
func (b *Backend) scratchT(i, rows, dim int) (driver.Ptr, error) {
	return b.grow(&b.scratch[i], max(rows, 1)*dim*b.act.Size())
}

func (s *linearStep) ForwardDevice(c *ops.Call, in []ops.Tensor, out ops.Tensor) error {
	b := s.b
	m := c.Rows()
	if err := checkT("linear input", in[0], m, s.in); err != nil {
		return err
	}
	x, y := asTensor(in[0]), asTensor(out)
	es := b.act.Size()
	at := b.blasType(b.act)
	if !s.nm {
		if err := b.lt.Run(b.s, &blaslt.Gemm{M: m, N: s.out, K: s.in, A: x.p, LdA: s.in, B: s.w, LdB: s.in, TransB: true,
			D: y.p, LdD: s.out, Alpha: 1, AB: at, Out: at, Bias: s.biasAct}); err != nil {
			return fmt.Errorf("linear %s: %w", s.name, err)
		}
		return nil
	}
	// The N:M product goes to target [m, rows] (ld rows): y itself unless
	// merged, where the adapter product below reads it.
	target, ld := y.p, s.out
	if s.merged {
		var err error
		if target, err = b.scratchT(0, padRows(m), s.rows); err != nil {
			return err
		}
		ld = s.rows
	}
	// The bias is fused into the product where the path allows.
	var kernelBias driver.Ptr
	if !s.merged {
		kernelBias = s.bias
	}
	biasDone := s.merged // the adapter product adds it
	var err error
	ltFits := s.sp != nil && s.sp.PadM(m) <= x.capRows && (s.merged || s.sp.PadM(m) <= y.capRows) &&
		s.sp.Fits(m, target, ld, x.p, s.in) == nil
	switch {
	case s.force == "spmv" || (s.force == "" && s.spmv && m <= min(b.opts.SpMVMaxRows, kernels.SpMV24MaxM)):
		if s.vals == 0 {
			return fmt.Errorf("slope linear %s: the decode kernel's form is not on the device", s.name)
		}
		err = b.k.SpMV24(b.s, b.act, target, ld, x.p, s.in, s.vals, s.idx, kernelBias, m, s.rows, s.in)
		biasDone = true
	case s.force == "tc" || (s.force == "" && s.tc && m <= min(b.opts.TCMaxRows, kernels.SpMM24TCMaxM)):
		if !s.tc {
			return fmt.Errorf("slope linear %s: the tensor-core kernel's form is not on the device", s.name)
		}
		var ws, cnt driver.Ptr
		if ws, cnt, err = b.tcWorkspace(s.rows, s.in); err == nil {
			err = b.k.SpMM24TC(b.s, b.act, target, ld, x.p, s.in, s.tcv, s.tci, kernelBias, ws, cnt, m, s.rows, s.in, b.tcGrid())
		}
		biasDone = true
	case s.force == "cusparselt" || (s.force == "" && ltFits):
		if !ltFits {
			return fmt.Errorf("slope linear %s: cuSPARSELt does not apply (%d rows)", s.name, m)
		}
		err = s.sp.Matmul(b.s, target, ld, x.p, s.in, m, 0)
		biasDone = biasDone || s.ltBias
	default:
		if s.vals == 0 {
			return fmt.Errorf("slope linear %s: only cuSPARSELt's form is on the device and it does not apply (%d rows)", s.name, m)
		}
		err = b.k.SpMMNM(b.s, s.valType, b.act, target, ld, x.p, s.in, s.vals, s.idx, kernelBias, m, s.rows, s.in, s.pat.N, s.pat.M)
		biasDone = true
	}
	if err != nil {
		return fmt.Errorf("slope linear %s: %w", s.name, err)
	}
	switch {
	case s.merged:
		// y = target[:, :out] + scale·target[:, out:]·R + bias, one product.
		if err := b.lt.Run(b.s, &blaslt.Gemm{M: m, N: s.out, K: s.rank, A: target.Add(s.out * es), LdA: s.rows,
			B: s.r, LdB: s.out, C: target, LdC: s.rows, D: y.p, LdD: s.out, Alpha: s.scale, Beta: 1,
			AB: at, Out: at, Bias: s.biasAct}); err != nil {
			return fmt.Errorf("slope linear %s: adapter: %w", s.name, err)
		}
	case s.rank > 0:
		t, err := b.scratchT(1, m, s.rank)
		if err != nil {
			return err
		}
		if err := b.lt.Run(b.s, &blaslt.Gemm{M: m, N: s.rank, K: s.in, A: x.p, LdA: s.in, B: s.l, LdB: s.rank,
			D: t, LdD: s.rank, Alpha: 1, AB: at, Out: at}); err != nil {
			return fmt.Errorf("slope linear %s: adapter x·L: %w", s.name, err)
		}
		if err := b.lt.Run(b.s, &blaslt.Gemm{M: m, N: s.out, K: s.rank, A: t, LdA: s.rank, B: s.r, LdB: s.out,
			D: y.p, LdD: s.out, Alpha: s.scale, Beta: 1, AB: at, Out: at}); err != nil {
			return fmt.Errorf("slope linear %s: adapter ·R: %w", s.name, err)
		}
	}
	if !biasDone && s.bias != 0 {
		return b.k.BiasAct(b.s, b.act, y.p, s.out, s.bias, m, s.out, kernels.ActNone)
	}
	return nil
}

// --- CausalAttention ---

type attentionStep struct {
	b                   *Backend
	id                  int
	dim, heads, headDim int
	scale               float32
}

func (b *Backend) bindAttention(bd ops.Binding) (ops.Step, error) {
	d, heads, scale, err := ops.AttentionShape(bd)
	if err != nil {
		return nil, err
	}
	return b.wrap(&attentionStep{b: b, id: bd.Node.ID, dim: d, heads: heads, headDim: d / heads, scale: scale}), nil
}

func (s *attentionStep) OutDim() int { return s.dim }

// gemmAttentionMin: from this many new tokens on, attention runs as two
// batched GEMMs per sequence (tensor cores) around a masked softmax.
const gemmAttentionMin = 16

// FusedAttentionEnv, set to 1, turns Options.FusedAttention on.
const FusedAttentionEnv = "SLOPE_GPU_FUSED_ATTENTION"

// fusedOK reports whether this attention can run in the fused kernels
// (Options.FusedAttention, bf16, a head size they take); fusedAttention
// checks the buffers' alignments.
func (s *attentionStep) fusedOK() bool {
	return s.b.opts.FusedAttention && s.b.act == BF16 && kernels.AttnFusedOK(s.headDim)
}

// fusedAttention reports whether this call's forward runs in
// kernels.AttnFused: fusedOK, and the buffers aligned for it.
func (s *attentionStep) fusedAttention(q, kc, vc, o driver.Ptr) bool {
	return s.fusedOK() && kernels.AttnFusedAligned(o, q, kc, vc)
}

// defaultAttentionChunk is Options.AttentionChunk's default: at 2048
// tokens, 8 chunks compute 56% of the scores a single product would.
const defaultAttentionChunk = 256

// attnChunk is the number of queries per attention product.
func (b *Backend) attnChunk() int {
	if b.opts.AttentionChunk > 0 {
		return b.opts.AttentionChunk
	}
	return defaultAttentionChunk
}

func (s *attentionStep) ForwardDevice(c *ops.Call, in []ops.Tensor, out ops.Tensor) error {
	b := s.b
	rows := c.Rows()
	for i := range 3 {
		if err := checkT(fmt.Sprintf("attention input %d", i), in[i], rows, s.dim); err != nil {
			return err
		}
	}
	total := c.Past + c.Seq
	if b.maskLd != total {
		return fmt.Errorf("attention: the call's mask covers %d tokens, want %d (Begin not called?)", b.maskLd, total)
	}
	q := asTensor(in[0]).p
	kc, vc, maxLen := asTensor(in[1]).p, asTensor(in[2]).p, c.Seq
	if c.DeviceCache != nil {
		kv, ok := c.DeviceCache.(*kvCache)
		if !ok {
			return fmt.Errorf("attention: cache of another backend (%T)", c.DeviceCache)
		}
		if c.Batch != kv.batch || total > kv.maxLen {
			return fmt.Errorf("attention: %d sequences of %d tokens do not fit a cache of %d x %d", c.Batch, total, kv.batch, kv.maxLen)
		}
		l, err := kv.layer(s.id, s.dim)
		if err != nil {
			return err
		}
		for i, dst := range []driver.Ptr{l.k, l.v} {
			if err := b.k.KVAppend(b.s, b.act, dst, asTensor(in[1+i]).p, c.Batch, c.Seq, c.Past, kv.maxLen, s.dim); err != nil {
				return err
			}
		}
		kc, vc, maxLen = l.k, l.v, kv.maxLen
	} else if c.Past != 0 {
		return fmt.Errorf("attention: %d past tokens but no cache", c.Past)
	}
	o := asTensor(out).p
	if c.Seq < gemmAttentionMin {
		return b.k.AttnSmall(b.s, b.act, o, q, kc, vc, b.mask.p, b.maskLd, c.Batch, c.Seq, c.Past, maxLen, s.heads, s.headDim, s.scale)
	}
	if s.fusedAttention(q, kc, vc, o) {
		if err := b.k.AttnFused(b.s, o, q, kc, vc, b.mask.p, b.maskLd, c.Batch, c.Seq, c.Past, maxLen, s.heads, s.headDim, s.scale); err != nil {
			return err
		}
		b.fusedAttentionCalls++
		return nil
	}
	es, chunk := b.act.Size(), min(b.attnChunk(), c.Seq)
	scores, err := b.grow(&b.scratch[2], 4*s.heads*chunk*total)
	if err != nil {
		return err
	}
	probs, err := b.grow(&b.scratch[3], es*s.heads*chunk*total)
	if err != nil {
		return err
	}
	at := b.blasType(b.act)
	for bt := 0; bt < c.Batch; bt++ {
		// Queries [r0, r0+n) of this sequence see keys [0, keys).
		for r0 := 0; r0 < c.Seq; r0 += chunk {
			n := min(chunk, c.Seq-r0)
			keys := c.Past + r0 + n
			// scores[h] = Q_h · K_hᵀ  ([n, keys] per head)
			if err := b.lt.Run(b.s, &blaslt.Gemm{M: n, N: keys, K: s.headDim,
				A: q.Add((bt*c.Seq + r0) * s.dim * es), LdA: s.dim, StrideA: int64(s.headDim),
				B: kc.Add(bt * maxLen * s.dim * es), LdB: s.dim, StrideB: int64(s.headDim), TransB: true,
				D: scores, LdD: keys, StrideD: int64(n * keys), Batch: s.heads,
				Alpha: 1, AB: at, Out: blaslt.F32}); err != nil {
				return fmt.Errorf("attention scores: %w", err)
			}
			if err := b.k.SoftmaxCausal(b.s, b.act, probs, scores, b.mask.p, b.maskLd, bt, s.heads, n, c.Past+r0, s.scale); err != nil {
				return err
			}
			// out_h = P_h · V_h  ([n, headDim] per head)
			if err := b.lt.Run(b.s, &blaslt.Gemm{M: n, N: s.headDim, K: keys,
				A: probs, LdA: keys, StrideA: int64(n * keys),
				B: vc.Add(bt * maxLen * s.dim * es), LdB: s.dim, StrideB: int64(s.headDim),
				D: o.Add((bt*c.Seq + r0) * s.dim * es), LdD: s.dim, StrideD: int64(s.headDim), Batch: s.heads,
				Alpha: 1, AB: at, Out: at}); err != nil {
				return fmt.Errorf("attention values: %w", err)
			}
		}
	}
	return nil
}

// kvCache is the device key/value cache of one session.
type kvCache struct {
	b             *Backend
	batch, maxLen int
	layers        map[int]*kvLayer
}

type kvLayer struct {
	dim  int
	k, v driver.Ptr
}

func (c *kvCache) layer(id, dim int) (*kvLayer, error) {
	if l := c.layers[id]; l != nil {
		if l.dim != dim {
			return nil, fmt.Errorf("attention: the cache's layer %d holds width %d, not %d", id, l.dim, dim)
		}
		return l, nil
	}
	n := c.batch * c.maxLen * dim * c.b.act.Size()
	k, err := c.b.dev.Alloc(n)
	if err != nil {
		return nil, fmt.Errorf("key cache: %w", err)
	}
	v, err := c.b.dev.Alloc(n)
	if err != nil {
		c.b.dev.Free(k)
		return nil, fmt.Errorf("value cache: %w", err)
	}
	l := &kvLayer{dim: dim, k: k, v: v}
	c.layers[id] = l
	return l, nil
}

// Release implements ops.DeviceCache.
func (c *kvCache) Release() error { return c.b.dev.Do(c.ReleaseInside) }

// ReleaseInside is Release for callers already inside Do.
func (c *kvCache) ReleaseInside() error {
	{
		var first error
		for id, l := range c.layers {
			for _, p := range []driver.Ptr{l.k, l.v} {
				if err := c.b.dev.Free(p); err != nil && first == nil {
					first = err
				}
			}
			delete(c.layers, id)
		}
		return first
	}
}

// NewCache implements ops.DeviceBackend.
func (b *Backend) NewCache(batch, maxLen int) (ops.DeviceCache, error) {
	if batch <= 0 || maxLen <= 0 {
		return nil, fmt.Errorf("cuda: cache of %d x %d", batch, maxLen)
	}
	return &kvCache{b: b, batch: batch, maxLen: maxLen, layers: map[int]*kvLayer{}}, nil
}
