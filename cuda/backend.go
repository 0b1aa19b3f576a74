package cuda

import (
	"errors"
	"fmt"
	"os"
	"unsafe"

	"github.com/slopeml/slope/cuda/blaslt"
	"github.com/slopeml/slope/cuda/driver"
	"github.com/slopeml/slope/cuda/kernels"
	"github.com/slopeml/slope/cuda/sparselt"
	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/format/slopepb"
	"github.com/slopeml/slope/ops"
)

// DType is the type of activations on the device.
type DType = kernels.DType

// Activation types.
const (
	F32  = kernels.F32
	BF16 = kernels.BF16
)

// Options configure New.
type Options struct {
	// Ordinal is the GPU (0: the first).
	Ordinal int
	// Activations is the activation type: BF16 (the fast path: bf16
	// weights, cuSPARSELt and the 2:4 decode kernel) or F32 (every op in
	// float32 with float32 weights: the mode that agrees with the CPU
	// backend to 1e-5).
	Activations DType
	// SpMVMaxRows: 2:4 products of at most this many rows use the custom
	// decode kernel (0 means 4, where it beats cuSPARSELt; negative:
	// never; the kernel takes at most 16 rows, larger values act as 16).
	SpMVMaxRows int
	// TCMaxRows: in bf16 mode, 2:4 products of more than SpMVMaxRows and
	// at most this many rows (<= 16) use the sparse-tensor-core kernel
	// spmm24tc, whose weight form is then uploaded too (and the portable
	// form dropped when SpMVMaxRows < 1 and cuSPARSELt takes the rest).
	// 0 (the default) and negative mean never. See SetForms and
	// docs/CUDA.md for what each choice costs and measured.
	TCMaxRows int
	// TCBlocks is spmm24tc's grid (0: two blocks per SM, the kernel's
	// occupancy); see kernels.SpMM24TCPlan.
	TCBlocks int
	// NoSparseLt keeps cuSPARSELt out (2:4 products of many rows then
	// use the generic N:M kernel).
	NoSparseLt bool
	// Search runs cuSPARSELt's algorithm search once per shape.
	Search bool
	// Profile times each step's forward (inference and training) and
	// backward with CUDA events (profile.go; ProfileReport).
	Profile bool
	// AttentionChunk is how many queries one attention product of many
	// tokens covers (0: defaultAttentionChunk). Each chunk's products see
	// only the keys up to its last query, so a causal prefill or training
	// step computes a little over half of the scores, and the scores'
	// scratch holds one chunk.
	AttentionChunk int
	// FusedAttention runs bf16 causal attention of many tokens in one
	// flash-style kernel on the tensor cores (kernels.AttnFused; head
	// sizes 64 and 128) instead of chunked products around a softmax.
	// The training backward then runs fused too
	// (kernels.AttnFusedBackward). Off by default until measured on a
	// GPU: written and checked against Go emulations only (docs/CUDA.md).
	// FusedAttentionEnv=1 turns it on too.
	FusedAttention bool
	// LowMemory keeps only cuSPARSELt's compressed form of a 2:4 weight
	// when it applies (0.56x of dense bf16 instead of 0.63x with the
	// decode kernel's indices beside it, their values shared, or 1.13x
	// when they are not); decode-sized products then run on cuSPARSELt
	// too.
	LowMemory bool
	// Log receives one-line notices (library fallbacks); nil: stderr.
	Log func(string)
}

// Forms names a choice of the device forms of 2:4 bf16 weights, and so
// of the kernels decode-sized products run on (Options.SetForms).
type Forms string

const (
	// FormsDecode: the portable form (decode kernel, 1-4 rows) and
	// cuSPARSELt's (more rows): 0.63x the bytes of dense bf16 when the
	// two share their values (compress24), else 1.13x. The default.
	FormsDecode Forms = "decode"
	// FormsBatch: the streaming form (tensor-core kernel, 1-16 rows) and
	// cuSPARSELt's: 1.13x; faster than FormsDecode from 2 rows, slower
	// at 1.
	FormsBatch Forms = "batch"
	// FormsAll: all three (decode kernel for 1 row, tensor-core kernel
	// for 2-16): 1.19x with shared values, else 1.69x.
	FormsAll Forms = "all"
	// FormsLowMemory: cuSPARSELt's form only (LowMemory): 0.56x.
	FormsLowMemory Forms = "low-memory"
)

// SetForms sets SpMVMaxRows, TCMaxRows and LowMemory for f. FormsBatch
// (for weights that got both the tensor-core and cuSPARSELt forms) and
// FormsLowMemory (for weights that got cuSPARSELt's) drop the portable
// form the generic kernel reads: a product that then falls to no other
// kernel (more rows than the tensor-core kernel takes, and a cuSPARSELt
// plan that does not fit that many rows) is an error. FormsDecode and
// FormsAll keep the portable form.
func (o *Options) SetForms(f Forms) error {
	switch f {
	case FormsDecode, "":
		o.SpMVMaxRows, o.TCMaxRows, o.LowMemory = 0, 0, false
	case FormsBatch:
		o.SpMVMaxRows, o.TCMaxRows, o.LowMemory = -1, kernels.SpMM24TCMaxM, false
	case FormsAll:
		o.SpMVMaxRows, o.TCMaxRows, o.LowMemory = 1, kernels.SpMM24TCMaxM, false
	case FormsLowMemory:
		o.SpMVMaxRows, o.TCMaxRows, o.LowMemory = 0, 0, true
	default:
		return fmt.Errorf("unknown forms %q (want %s, %s, %s or %s)", f, FormsDecode, FormsBatch, FormsAll, FormsLowMemory)
	}
	return nil
}

// Backend runs the ai.slope ops on one NVIDIA GPU. It implements
// ops.Backend and ops.DeviceBackend.
type Backend struct {
	opts Options
	reg  *ops.Registry
	dev  *driver.Device
	k    *kernels.Set
	lt   *blaslt.Handle
	sp   *sparselt.Handle // nil without cuSPARSELt
	// ltBias: cuSPARSELt's bias epilogue passed the self-check at New.
	ltBias bool
	act    DType
	s      driver.Stream
	// ltTraining: 2:4 weights bound for training get cuSPARSELt forms
	// (bf16 activations, cuSPARSELt loaded, BF16SparseLtEnv not 0; set
	// once at New).
	ltTraining bool
	// fusedAttentionCalls and fusedAttentionBackwards count the attention
	// forwards and backwards the fused kernels ran (Options.
	// FusedAttention), for the tests that require them to run.
	fusedAttentionCalls, fusedAttentionBackwards int

	// Weights uploaded once, by tensor name and device type.
	weights     map[weightKey]driver.Ptr
	WeightBytes int64 // bytes of weights on the device

	// Per call: the mask [batch, maskLd] on the device.
	mask    devBuf
	maskLd  int
	ints    devBuf // ids and positions of the embedding
	pool    map[int][]*tensor
	scratch [4]devBuf
	// spmm24tc's partial sums and counters (the counters are zeroed when
	// allocated; every launch leaves them zero).
	tcWS, tcCnt devBuf
	hostKV      map[*ops.KVCache]*kvCache
	hostBufs    []byte

	// Training (grad.go): the Params' device mirrors and the backward
	// passes' scratch buffers.
	params   map[*ops.Param]*devParam
	gscratch [7]devBuf
	ce       devBuf // cross-entropy losses and targets
	zeroBuf  devBuf // zeros (Backend.zeros)
	// optimizers counts the open DeviceOptimizers (host-facing training
	// calls are refused while one holds the state).
	optimizers int
	prof       *profiler // nil without Options.Profile
}

// weightKey names an uploaded weight: its container, tensor and the
// form it was uploaded in.
type weightKey struct {
	src  ops.Weights
	name string
	as   string
}

// devBuf is a grow-only device buffer.
type devBuf struct {
	p     driver.Ptr
	bytes int
}

func (b *Backend) grow(buf *devBuf, bytes int) (driver.Ptr, error) {
	if buf.bytes >= bytes {
		return buf.p, nil
	}
	// cuMemFree waits for the device's pending work (it synchronizes:
	// see the CUDA driver API's notes on synchronous behavior), so kernels
	// still reading the old buffer on b.s finish before it goes.
	if err := b.dev.Free(buf.p); err != nil {
		return 0, err
	}
	buf.p, buf.bytes = 0, 0
	p, err := b.dev.Alloc(bytes)
	if err != nil {
		return 0, err
	}
	buf.p, buf.bytes = p, bytes
	return p, nil
}

// tcWorkspace returns spmm24tc's workspace for rows x cols (0, 0 when
// its launch needs none).
func (b *Backend) tcWorkspace(rows, cols int) (ws, cnt driver.Ptr, err error) {
	wb, cb := b.k.SpMM24TCWorkspace(rows, cols, b.tcGrid())
	if wb == 0 {
		return 0, 0, nil
	}
	if ws, err = b.grow(&b.tcWS, wb); err != nil {
		return 0, 0, err
	}
	if b.tcCnt.bytes < cb {
		// Rare (a larger weight): wait for launches using the old
		// counters, and make the zeroing land before the next launch.
		if err := b.dev.Synchronize(); err != nil {
			return 0, 0, err
		}
		if cnt, err = b.grow(&b.tcCnt, cb); err != nil {
			return 0, 0, err
		}
		if err := b.dev.Memset32(cnt, 0, cb/4); err != nil {
			return 0, 0, err
		}
		if err := b.dev.Synchronize(); err != nil {
			return 0, 0, err
		}
	}
	return ws, b.tcCnt.p, nil
}

// tcGrid is spmm24tc's grid: Options.TCBlocks, or two blocks per SM.
func (b *Backend) tcGrid() int {
	if b.opts.TCBlocks > 0 {
		return b.opts.TCBlocks
	}
	return 2 * max(b.dev.Info.SMs, 1)
}

// SetTCBlocks changes Options.TCBlocks (benchmarks sweep it). Call
// inside Do.
func (b *Backend) SetTCBlocks(n int) { b.opts.TCBlocks = n }

// SetDecodeRows changes Options.SpMVMaxRows and TCMaxRows (0, 0: the
// defaults); benchmarks compare settings. The forms a weight keeps are
// chosen when it is bound, so set them before binding; the row limits
// are read at every product. Call inside Do.
func (b *Backend) SetDecodeRows(spmvMax, tcMax int) {
	if spmvMax == 0 {
		spmvMax = defaultSpMVMaxRows
	}
	b.opts.SpMVMaxRows, b.opts.TCMaxRows = spmvMax, tcMax
}

// defaultSpMVMaxRows is Options.SpMVMaxRows' default.
const defaultSpMVMaxRows = 4

// New opens GPU opts.Ordinal, loads the kernels and the libraries.
// Errors wrap driver.ErrNoDevice when there is no usable GPU.
func New(opts Options) (*Backend, error) {
	if opts.Activations != F32 && opts.Activations != BF16 {
		return nil, fmt.Errorf("cuda: activations must be f32 or bf16")
	}
	if opts.SpMVMaxRows == 0 {
		opts.SpMVMaxRows = defaultSpMVMaxRows
	}
	if os.Getenv(FusedAttentionEnv) == "1" {
		opts.FusedAttention = true
	}
	if opts.Log == nil {
		opts.Log = func(s string) { fmt.Fprintln(os.Stderr, s) }
	}
	dev, err := driver.Open(opts.Ordinal)
	if err != nil {
		return nil, err
	}
	b := &Backend{opts: opts, dev: dev, act: opts.Activations,
		weights: map[weightKey]driver.Ptr{}, pool: map[int][]*tensor{}, hostKV: map[*ops.KVCache]*kvCache{}}
	err = dev.Do(func() error {
		if dev.Major < 8 {
			return fmt.Errorf("%w: %s is sm_%d%d; bf16 kernels need sm_80 or newer", driver.ErrNoDevice, dev.Name, dev.Major, dev.Minor)
		}
		var err error
		if b.k, err = kernels.Load(dev); err != nil {
			return err
		}
		if b.s, err = dev.NewStream(); err != nil {
			return err
		}
		if opts.Profile {
			b.prof = newProfiler(dev, b.s)
		}
		if b.lt, err = blaslt.New(dev); err != nil {
			return err
		}
		if !opts.NoSparseLt && b.act == BF16 {
			sp, err := sparselt.New(dev)
			if err != nil {
				opts.Log(fmt.Sprintf("cuda: cuSPARSELt unavailable, 2:4 products of many rows use the generic kernel: %v", err))
			} else {
				sp.Search = opts.Search
				b.sp = sp
				b.ltTraining = os.Getenv(BF16SparseLtEnv) != "0"
				ok, err := b.checkLtBias()
				b.ltBias = ok && err == nil
				if !b.ltBias {
					opts.Log(fmt.Sprintf("cuda: cuSPARSELt's bias epilogue failed its self-check (%v); biases are added by a kernel", err))
				}
			}
		}
		return nil
	})
	if err != nil {
		dev.Close()
		return nil, err
	}
	b.reg = ops.NewRegistry("cuda")
	b.reg.Register(ops.OpEmbedding, b.bindEmbedding)
	b.reg.Register(ops.OpLayerNorm, b.bindLayerNorm)
	b.reg.Register(ops.OpLinear, b.bindLinear)
	b.reg.Register(ops.OpLMHead, b.bindLinear)
	b.reg.Register(ops.OpSlopeLinear, b.bindSlopeLinear)
	b.reg.Register(ops.OpCausalAttention, b.bindAttention)
	b.reg.Register(ops.OpAdd, b.bindAdd)
	for _, op := range []string{ops.OpRelu, ops.OpGelu, ops.OpGeluTanh, ops.OpSilu, ops.OpTanh, ops.OpSigmoid} {
		b.reg.Register(op, b.bindActivation)
	}
	return b, nil
}

// LtBiasFused reports whether cuSPARSELt adds biases itself (its bias
// epilogue passed the self-check at New).
func (b *Backend) LtBiasFused() bool { return b.ltBias }

// Device returns the GPU.
func (b *Backend) Device() *driver.Device { return b.dev }

// Stream is the stream all work is queued on.
func (b *Backend) Stream() driver.Stream { return b.s }

// Kernels returns the loaded kernels (for benchmarks).
func (b *Backend) Kernels() *kernels.Set { return b.k }

// BLAS returns the cuBLASLt handle.
func (b *Backend) BLAS() *blaslt.Handle { return b.lt }

// SparseLt returns the cuSPARSELt handle, nil when unavailable.
func (b *Backend) SparseLt() *sparselt.Handle { return b.sp }

// Name implements ops.Backend.
func (b *Backend) Name() string {
	if b.act == F32 {
		return "cuda-f32"
	}
	return "cuda"
}

// Bind implements ops.Backend; weights are uploaded here, once.
func (b *Backend) Bind(bd ops.Binding) (ops.Step, error) {
	var st ops.Step
	err := b.dev.Do(func() error {
		var err error
		st, err = b.reg.Bind(bd)
		return err
	})
	if h, ok := st.(hostStep); ok && b.prof != nil {
		h.deviceStep = &timedStep{deviceStep: h.deviceStep, b: b, label: profileGroup(bd.Node.OpType, bd.Node.Name)}
		st = h
	}
	return st, err
}

// Do implements ops.DeviceBackend.
func (b *Backend) Do(fn func() error) error { return b.dev.Do(fn) }

// Close releases the device (all memory goes with the context).
func (b *Backend) Close() error {
	err := b.dev.Do(func() error {
		var errs []error
		if b.prof != nil {
			errs = append(errs, b.prof.destroy())
		}
		if b.sp != nil {
			errs = append(errs, b.sp.Destroy())
		}
		if b.lt != nil {
			errs = append(errs, b.lt.Destroy())
		}
		return errors.Join(errs...)
	})
	return errors.Join(err, b.dev.Close())
}

// tensor is an activation on the device.
type tensor struct {
	rows, dim, capRows int
	p                  driver.Ptr
	// zeroed: Zero cleared the tensor and no backward pass has added
	// into it since (hostGradStep.BackwardDevice clears it), so the
	// first product into it may overwrite (beta 0) instead of adding.
	zeroed bool
}

func (t *tensor) Rows() int { return t.rows }
func (t *tensor) Dim() int  { return t.dim }

// padRows rounds a tensor's row capacity so that cuSPARSELt's padded
// row counts (sparselt.Weight.PadM) always fit.
func padRows(rows int) int {
	q := 64
	if rows > 2048 {
		q = 256
	}
	return (rows + q - 1) / q * q
}

// Acquire implements ops.DeviceBackend.
func (b *Backend) Acquire(rows, dim int) (ops.Tensor, error) {
	free := b.pool[dim]
	for i := len(free) - 1; i >= 0; i-- {
		if free[i].capRows >= rows {
			t := free[i]
			b.pool[dim] = append(free[:i], free[i+1:]...)
			t.rows, t.zeroed = rows, false
			return t, nil
		}
	}
	capRows := padRows(rows)
	p, err := b.dev.Alloc(capRows * dim * b.act.Size())
	if err != nil {
		return nil, fmt.Errorf("activation of %d x %d: %w", rows, dim, err)
	}
	return &tensor{rows: rows, dim: dim, capRows: capRows, p: p}, nil
}

// Release implements ops.DeviceBackend.
func (b *Backend) Release(t ops.Tensor) {
	if dt, ok := t.(*tensor); ok && dt != nil {
		b.pool[dt.dim] = append(b.pool[dt.dim], dt)
	}
}

// Begin implements ops.DeviceBackend: it uploads the mask.
func (b *Backend) Begin(c *ops.Call) error {
	total := c.Past + c.Seq
	if len(c.Mask) != c.Batch*total {
		return fmt.Errorf("cuda: mask has %d entries, want %d", len(c.Mask), c.Batch*total)
	}
	// The previous call's kernels may still read the mask.
	if err := b.dev.SyncStream(b.s); err != nil {
		return err
	}
	p, err := b.grow(&b.mask, 4*max(len(c.Mask), 1))
	if err != nil {
		return err
	}
	b.maskLd = total
	if len(c.Mask) > 0 {
		if err := b.dev.CopyIn(p, unsafe.Pointer(&c.Mask[0]), 4*len(c.Mask)); err != nil {
			return err
		}
	}
	return nil
}

// GatherRows implements ops.DeviceBackend.
func (b *Backend) GatherRows(dst, src ops.Tensor, rows []int) error {
	d, s := dst.(*tensor), src.(*tensor)
	if d.dim != s.dim || d.rows != len(rows) {
		return fmt.Errorf("cuda: gather %d rows of width %d into %d x %d", len(rows), s.dim, d.rows, d.dim)
	}
	w := s.dim * b.act.Size()
	for i, r := range rows {
		if r < 0 || r >= s.rows {
			return fmt.Errorf("cuda: gather row %d of %d", r, s.rows)
		}
		if err := b.dev.CopyDevice(d.p.Add(i*w), s.p.Add(r*w), w, b.s); err != nil {
			return err
		}
	}
	return nil
}

// Download implements ops.DeviceBackend.
func (b *Backend) Download(t ops.Tensor, out *ops.Value) error {
	dt := t.(*tensor)
	n := dt.rows * dt.dim
	out.Rows, out.Dim = dt.rows, dt.dim
	if cap(out.Data) < n {
		out.Data = make([]float32, n)
	}
	out.Data = out.Data[:n]
	return b.download(dt.p, out.Data)
}

// download copies n = len(dst) activations at p into dst.
func (b *Backend) download(p driver.Ptr, dst []float32) error {
	if len(dst) == 0 {
		return nil
	}
	if err := b.dev.SyncStream(b.s); err != nil {
		return err
	}
	if b.act == F32 {
		return b.dev.CopyOut(unsafe.Pointer(&dst[0]), p, 4*len(dst))
	}
	raw := b.hostBytes(2 * len(dst))
	if err := b.dev.CopyOut(unsafe.Pointer(&raw[0]), p, len(raw)); err != nil {
		return err
	}
	return format.DecodeFloats(slopepb.DType_BFLOAT16, raw, dst)
}

// upload copies float32 host values to p as activations.
func (b *Backend) upload(p driver.Ptr, src []float32) error {
	if len(src) == 0 {
		return nil
	}
	if err := b.dev.SyncStream(b.s); err != nil {
		return err
	}
	if b.act == F32 {
		return b.dev.CopyIn(p, unsafe.Pointer(&src[0]), 4*len(src))
	}
	raw := b.hostBytes(2 * len(src))
	if err := format.EncodeFloats(slopepb.DType_BFLOAT16, src, raw); err != nil {
		return err
	}
	return b.dev.CopyIn(p, unsafe.Pointer(&raw[0]), len(raw))
}

func (b *Backend) hostBytes(n int) []byte {
	if cap(b.hostBufs) < n {
		b.hostBufs = make([]byte, n)
	}
	return b.hostBufs[:n]
}

// uploadFloats puts float32 values on the device as type dt (F32 or
// BF16), cached under key.
func (b *Backend) uploadFloats(key weightKey, vals []float32, dt DType) (driver.Ptr, error) {
	if p, ok := b.weights[key]; ok {
		return p, nil
	}
	var raw []byte
	if dt == F32 {
		raw = unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(vals))), 4*len(vals))
	} else {
		raw = make([]byte, 2*len(vals))
		if err := format.EncodeFloats(slopepb.DType_BFLOAT16, vals, raw); err != nil {
			return 0, err
		}
	}
	p, err := b.uploadBytes(raw)
	if err != nil {
		return 0, fmt.Errorf("weight %q: %w", key.name, err)
	}
	b.weights[key] = p
	return p, nil
}

// putInts copies v into buf (grown as needed) once the stream's earlier
// work, which may still read buf, is done, and returns buf's address.
func (b *Backend) putInts(buf *devBuf, v []int32) (driver.Ptr, error) {
	p, err := b.grow(buf, max(4*len(v), 4))
	if err != nil {
		return 0, err
	}
	if err := b.dev.SyncStream(b.s); err != nil {
		return 0, err
	}
	if len(v) == 0 {
		return p, nil
	}
	return p, b.dev.CopyIn(p, ptrOf(v), 4*len(v))
}

// uploadBytes copies raw bytes to new device memory (counted as weights).
func (b *Backend) uploadBytes(raw []byte) (driver.Ptr, error) {
	p, err := b.dev.Alloc(len(raw))
	if err != nil {
		return 0, err
	}
	if len(raw) > 0 {
		if err := b.dev.CopyIn(p, unsafe.Pointer(&raw[0]), len(raw)); err != nil {
			return 0, err
		}
	}
	b.WeightBytes += int64(len(raw))
	return p, nil
}

// hostStep adapts a device step to ops.Step: inputs are uploaded, the
// output downloaded (for the conformance suite and host callers).
type hostStep struct {
	b *Backend
	deviceStep
}

type deviceStep interface {
	OutDim() int
	ForwardDevice(c *ops.Call, in []ops.Tensor, out ops.Tensor) error
}

// hostCall runs fn inside Do for a host-facing call: after before (if
// not nil) and Begin(c), with in uploaded into pool tensors; fn may add
// tensors of its own to held, and all go back to the pool after it.
func (b *Backend) hostCall(c *ops.Call, in []*ops.Value, before func() error, fn func(tin []ops.Tensor, held *[]ops.Tensor) error) error {
	return b.dev.Do(func() error {
		if before != nil {
			if err := before(); err != nil {
				return err
			}
		}
		if err := b.Begin(c); err != nil {
			return err
		}
		var held []ops.Tensor
		defer func() {
			for _, t := range held {
				b.Release(t)
			}
		}()
		tin, err := b.uploadValues(c, in, &held, "input")
		if err != nil {
			return err
		}
		return fn(tin, &held)
	})
}

func (h hostStep) Forward(c *ops.Call, in []*ops.Value, out *ops.Value) error {
	b := h.b
	return b.hostCall(c, in, nil, func(tin []ops.Tensor, held *[]ops.Tensor) error {
		t, err := b.Acquire(c.Rows(), h.OutDim())
		if err != nil {
			return err
		}
		*held = append(*held, t)
		cc := *c
		if c.Cache != nil && c.DeviceCache == nil {
			kv := b.hostKV[c.Cache]
			if kv == nil {
				kv = &kvCache{b: b, batch: c.Cache.Batch, maxLen: c.Cache.MaxLen, layers: map[int]*kvLayer{}}
				b.hostKV[c.Cache] = kv
			}
			cc.DeviceCache = kv
		}
		if err := h.ForwardDevice(&cc, tin, t); err != nil {
			return err
		}
		if out.Rows != c.Rows() || out.Dim != h.OutDim() || len(out.Data) < c.Rows()*h.OutDim() {
			return fmt.Errorf("cuda: output is %d x %d, want %d x %d", out.Rows, out.Dim, c.Rows(), h.OutDim())
		}
		return b.download(t.(*tensor).p, out.Data[:c.Rows()*h.OutDim()])
	})
}

func (b *Backend) wrap(s deviceStep) ops.Step { return hostStep{b: b, deviceStep: s} }

func asTensor(t ops.Tensor) *tensor { return t.(*tensor) }

// checkLtBias runs cuSPARSELt's bias epilogue once on a zero 2:4 weight
// (32 x 64, 16 rows): the output must equal the bf16 bias exactly. It
// reports false, not an error, when the library computes something else.
func (b *Backend) checkLtBias() (ok bool, err error) {
	const n, k, m = 32, 64, 16
	d := b.dev
	var bufs []driver.Ptr
	defer func() {
		for _, p := range bufs {
			d.Free(p)
		}
	}()
	alloc := func(bytes int) (driver.Ptr, error) {
		p, err := d.Alloc(bytes)
		if err == nil {
			bufs = append(bufs, p)
			err = d.Memset8(p, 0, bytes)
		}
		return p, err
	}
	dense, err := alloc(n * k * 2)
	if err != nil {
		return false, err
	}
	bias := make([]float32, n)
	for i := range bias {
		bias[i] = float32(i)*0.25 - 3
	}
	raw := make([]byte, 2*n)
	if err := format.EncodeFloats(slopepb.DType_BFLOAT16, bias, raw); err != nil {
		return false, err
	}
	bp, err := alloc(len(raw))
	if err != nil {
		return false, err
	}
	if err := d.CopyIn(bp, unsafe.Pointer(&raw[0]), len(raw)); err != nil {
		return false, err
	}
	w, err := b.sp.NewWeight(b.s, dense, n, k)
	if err != nil {
		return false, fmt.Errorf("cuSPARSELt self-check: %w", err)
	}
	defer w.Destroy()
	if err := w.SetBias(bp); err != nil {
		return false, err
	}
	x, err := alloc(w.PadM(m) * k * 2)
	if err != nil {
		return false, err
	}
	y, err := alloc(w.PadM(m) * n * 2)
	if err != nil {
		return false, err
	}
	if err := w.Matmul(b.s, y, n, x, k, m, 0); err != nil {
		return false, err // logged by the caller, which adds biases itself then
	}
	if err := d.SyncStream(b.s); err != nil {
		return false, err
	}
	got := make([]byte, m*n*2)
	if err := d.CopyOut(unsafe.Pointer(&got[0]), y, len(got)); err != nil {
		return false, err
	}
	for r := 0; r < m; r++ {
		for c := 0; c < n; c++ {
			if got[2*(r*n+c)] != raw[2*c] || got[2*(r*n+c)+1] != raw[2*c+1] {
				return false, nil
			}
		}
	}
	return true, nil
}
