package cuda

import (
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"sync"
	"unsafe"

	"github.com/slopeml/slope/cuda/driver"
	"github.com/slopeml/slope/cuda/kernels"
	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/format/slopepb"
	"github.com/slopeml/slope/ops"
)

// This file builds layers with random weights directly on the device,
// without a container, for benchmarks at shapes too large to write as
// files (bench/cmd/gpubench). The layers run the same steps as models.

// LinearKind selects how a benchmark linear layer is stored.
type LinearKind int

const (
	// Dense is a bf16 [out, in] weight through cuBLASLt.
	Dense LinearKind = iota
	// Sparse24 is a 2:4 weight through the backend's own choice per row
	// count (decode kernel or cuSPARSELt).
	Sparse24
	// Sparse24Lt forces cuSPARSELt at every row count.
	Sparse24Lt
	// Sparse24Generic forces the generic N:M kernel.
	Sparse24Generic
	// Sparse24SpMV forces the 2:4 decode kernel (any row count).
	Sparse24SpMV
	// Sparse24TC forces the sparse-tensor-core kernel (M <= 16).
	Sparse24TC
	// Sparse24All keeps every form (portable, streaming, cuSPARSELt) so
	// that ForwardPath can compare all paths on one weight.
	Sparse24All
)

// BenchLinear is a linear layer y = x·Wᵀ + b (+ adapters) on the device.
type BenchLinear struct {
	step *linearStep
	// Bytes is the weight's device memory: the form the chosen kind
	// reads (dense matrix; portable 2:4 values and indices; cuSPARSELt's
	// compressed matrix), adapters included.
	Bytes int64
	// PortableBytes, TCBytes and LtBytes split a 2:4 weight's memory by
	// form (0: not kept).
	PortableBytes, TCBytes, LtBytes int64
}

// randomBF16 fills n bf16 values N(0, scale²) in parallel.
func randomBF16(n int, scale float64, seed uint64) []byte {
	out := make([]byte, 2*n)
	workers := runtime.GOMAXPROCS(0)
	chunk := (n + workers - 1) / workers
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		lo, hi := w*chunk, min(n, (w+1)*chunk)
		if lo >= hi {
			break
		}
		wg.Add(1)
		go func(lo, hi int, w int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			for i := lo; i < hi; i++ {
				v := format.Float32ToBFloat16(float32(rng.NormFloat64() * scale))
				out[2*i], out[2*i+1] = byte(v), byte(v>>8)
			}
		}(lo, hi, w)
	}
	wg.Wait()
	return out
}

// random24Indices makes the portable 2:4 index bytes of rows x cols
// (one byte per 8 columns: two groups, two 2-bit indices each).
func random24Indices(rows, cols int, seed uint64) []byte {
	pairs := [6][2]byte{{0, 1}, {0, 2}, {0, 3}, {1, 2}, {1, 3}, {2, 3}}
	out := make([]byte, rows*cols/8)
	rng := rand.New(rand.NewPCG(seed, 99))
	for i := range out {
		a, b := pairs[rng.IntN(6)], pairs[rng.IntN(6)]
		out[i] = a[0] | a[1]<<2 | b[0]<<4 | b[1]<<6
	}
	return out
}

// NewBenchLinear makes a random linear layer of out x in (bf16
// activations only) with an optional bias and, for sparse kinds, merged
// adapters of rank (0: none). Call inside Do.
func (b *Backend) NewBenchLinear(kind LinearKind, out, in, rank int, bias bool, seed uint64) (*BenchLinear, error) {
	if b.act != BF16 {
		return nil, fmt.Errorf("bench layers need bf16 activations")
	}
	s := &linearStep{b: b, name: fmt.Sprintf("bench %dx%d", out, in), in: in, out: out}
	bl := &BenchLinear{step: s}
	before := b.WeightBytes
	scale := 1 / math.Sqrt(float64(in))
	var err error
	if bias {
		bv := make([]float32, out)
		for i := range bv {
			bv[i] = float32(i%7) * 0.01
		}
		if s.bias, err = b.uploadBytesF32(bv); err != nil {
			return nil, err
		}
		raw := make([]byte, 2*len(bv))
		if err := format.EncodeFloats(slopepb.DType_BFLOAT16, bv, raw); err != nil {
			return nil, err
		}
		if s.biasAct, err = b.uploadBytes(raw); err != nil {
			return nil, err
		}
	}
	if kind == Dense {
		if rank != 0 {
			return nil, fmt.Errorf("dense bench layers take no adapters")
		}
		if s.w, err = b.uploadBytes(randomBF16(out*in, scale, seed)); err != nil {
			return nil, err
		}
		bl.Bytes = b.WeightBytes - before
		return bl, nil
	}
	if in%8 != 0 {
		return nil, fmt.Errorf("2:4 bench layer: in %d not a multiple of 8", in)
	}
	rows := out + rank
	s.nm, s.rows, s.pat, s.valType = true, rows, format.NM{N: 2, M: 4}, BF16
	vals, idx := randomBF16(rows*in/2, scale*1.4, seed), random24Indices(rows, in, seed)
	if s.vals, err = b.uploadBytes(vals); err != nil {
		return nil, err
	}
	if s.idx, err = b.uploadBytes(idx); err != nil {
		return nil, err
	}
	bl.PortableBytes = b.WeightBytes - before
	if (kind == Sparse24TC || kind == Sparse24All || kind == Sparse24 && b.opts.TCMaxRows > 0) && b.tcShapeOK(rows, in) {
		at := b.WeightBytes
		if err := b.uploadTC(s, vals, idx, rows, in); err != nil {
			return nil, err
		}
		bl.TCBytes = b.WeightBytes - at
	}
	if rank > 0 {
		s.merged, s.rank, s.scale = true, rank, 1
		if s.r, err = b.uploadBytes(randomBF16(rank*out, 0.01, seed+1)); err != nil {
			return nil, err
		}
	}
	s.spmv = (kind == Sparse24 && b.opts.SpMVMaxRows > 0 || kind == Sparse24All) && in%64 == 0
	switch kind {
	case Sparse24SpMV:
		s.force = "spmv"
	case Sparse24TC:
		s.force = "tc"
	case Sparse24Generic:
		s.force = "generic"
	case Sparse24Lt:
		s.force = "cusparselt"
	}
	if kind == Sparse24 || kind == Sparse24Lt || kind == Sparse24All {
		if b.sp == nil {
			return nil, fmt.Errorf("cuSPARSELt is not available")
		}
		share := kind != Sparse24Lt && !hasZeroBF16(vals) &&
			!(kind == Sparse24 && s.tc && b.opts.SpMVMaxRows <= 0) // the portable form stays
		if s.sp, err = b.compress24(s, rows, in, share); err != nil {
			return nil, err
		}
		if s.valsShared {
			// The portable values live in cuSPARSELt's form now.
			b.WeightBytes -= int64(len(vals))
			bl.PortableBytes -= int64(len(vals))
		}
		if err := s.setLtBias(s.sp); err != nil {
			return nil, err
		}
		if err := b.dev.SyncStream(b.s); err != nil {
			return nil, err
		}
		bl.LtBytes = s.sp.Bytes()
		b.WeightBytes += bl.LtBytes
		if kind == Sparse24Lt {
			// Only cuSPARSELt's form stays (Options.LowMemory).
			for _, p := range []driver.Ptr{s.vals, s.idx} {
				if err := b.dev.Free(p); err != nil {
					return nil, err
				}
			}
			s.vals, s.idx = 0, 0
			b.WeightBytes -= bl.PortableBytes
			bl.PortableBytes = 0
		}
	}
	if kind == Sparse24 {
		if err := b.dropUnusedPortable(s, bl.PortableBytes); err != nil {
			return nil, err
		}
		if s.vals == 0 {
			bl.PortableBytes = 0
		}
	}
	bl.Bytes = b.WeightBytes - before
	return bl, nil
}

// Forward runs y[m, out] = layer(x[m, in]); x and y hold at least
// PadRows(m) rows. Call inside Do.
func (l *BenchLinear) Forward(x, y ops.Tensor, m int) error {
	c := &ops.Call{Batch: 1, Seq: m}
	return l.step.ForwardDevice(c, []ops.Tensor{x}, y)
}

// ValuesShared reports whether the 2:4 layer's N:M kernels read their
// values from cuSPARSELt's compressed form (Backend.compress24).
func (l *BenchLinear) ValuesShared() bool { return l.step.valsShared }

// Out and In are the layer's widths.
func (l *BenchLinear) Out() int { return l.step.out }
func (l *BenchLinear) In() int  { return l.step.in }

// Timer measures device time between events on the backend's stream.
type Timer struct {
	b          *Backend
	start, end *driver.Event
}

// NewTimer makes a timer. Call inside Do.
func (b *Backend) NewTimer() (*Timer, error) {
	s, err := b.dev.NewEvent()
	if err != nil {
		return nil, err
	}
	e, err := b.dev.NewEvent()
	if err != nil {
		return nil, err
	}
	return &Timer{b: b, start: s, end: e}, nil
}

// Time runs fn reps times after warm warm-up runs and returns the mean
// device milliseconds per run.
func (t *Timer) Time(warm, reps int, fn func() error) (float64, error) {
	for range warm {
		if err := fn(); err != nil {
			return 0, err
		}
	}
	if err := t.start.Record(t.b.s); err != nil {
		return 0, err
	}
	for range reps {
		if err := fn(); err != nil {
			return 0, err
		}
	}
	if err := t.end.Record(t.b.s); err != nil {
		return 0, err
	}
	if err := t.end.Synchronize(); err != nil {
		return 0, err
	}
	ms, err := t.end.Since(t.start)
	return float64(ms) / float64(reps), err
}

// RandomTensor acquires rows x dim activations filled with N(0,1) bf16
// values. Call inside Do.
func (b *Backend) RandomTensor(rows, dim int, seed uint64) (ops.Tensor, error) {
	t, err := b.Acquire(rows, dim)
	if err != nil {
		return nil, err
	}
	raw := randomBF16(asTensor(t).capRows*dim, 1, seed)
	if err := b.dev.CopyIn(asTensor(t).p, unsafe.Pointer(&raw[0]), len(raw)); err != nil {
		return nil, err
	}
	return t, nil
}

// Fetch downloads a tensor as float32. Call inside Do.
func (b *Backend) Fetch(t ops.Tensor) ([]float32, error) {
	v := &ops.Value{}
	err := b.Download(t, v)
	return v.Data, err
}

// BenchLayer is one OPT decoder layer (pre-LayerNorm, ReLU MLP) with
// random weights, its six linears dense or 2:4.
type BenchLayer struct {
	b                    *Backend
	d, ffn               int
	ln1, ln2             *layerNormStep
	q, k, v, o, fc1, fc2 *BenchLinear
	attn                 *attentionStep
	relu                 *activationStep
	add                  *addStep
	// WeightBytes is the device memory of the six linear weights.
	WeightBytes int64
	call        *ops.Call
}

// NewBenchLayer builds a decoder layer of width d, MLP width ffn, heads
// heads. Call inside Do.
func (b *Backend) NewBenchLayer(kind LinearKind, d, ffn, heads, rank int, seed uint64) (*BenchLayer, error) {
	l := &BenchLayer{b: b, d: d, ffn: ffn}
	one := make([]float32, d)
	for i := range one {
		one[i] = 1
	}
	g, err := b.uploadBytesF32(one)
	if err != nil {
		return nil, err
	}
	z, err := b.uploadBytesF32(make([]float32, d))
	if err != nil {
		return nil, err
	}
	l.ln1 = &layerNormStep{b: b, dim: d, gamma: g, beta: z, eps: 1e-5}
	l.ln2 = &layerNormStep{b: b, dim: d, gamma: g, beta: z, eps: 1e-5}
	mk := func(out, in int, s uint64) (*BenchLinear, error) {
		return b.NewBenchLinear(kind, out, in, rank, true, s)
	}
	for i, p := range []struct {
		dst     **BenchLinear
		out, in int
	}{{&l.q, d, d}, {&l.k, d, d}, {&l.v, d, d}, {&l.o, d, d}, {&l.fc1, ffn, d}, {&l.fc2, d, ffn}} {
		if *p.dst, err = mk(p.out, p.in, seed+uint64(i)*7); err != nil {
			return nil, err
		}
		l.WeightBytes += (*p.dst).Bytes
	}
	l.attn = &attentionStep{b: b, id: 0, dim: d, heads: heads, headDim: d / heads, scale: float32(1 / math.Sqrt(float64(d/heads)))}
	l.relu = &activationStep{b: b, dim: ffn, act: kernels.ActRelu}
	l.add = &addStep{b: b, dim: d}
	return l, nil
}

// Prepare sets the call that Forward runs: batch sequences of seq new
// tokens after past cached ones (all real), and uploads its mask. cache
// must come from NewCache. Call inside Do.
func (l *BenchLayer) Prepare(batch, seq, past int, cache ops.DeviceCache) error {
	total := past + seq
	c := &ops.Call{Batch: batch, Seq: seq, Past: past, DeviceCache: cache, Mask: make([]int32, batch*total)}
	for i := range c.Mask {
		c.Mask[i] = 1
	}
	l.call = c
	return l.b.Begin(c)
}

// Forward runs the layer on x [batch*seq, d] for the prepared call,
// writing y. Call inside Do.
func (l *BenchLayer) Forward(x, y ops.Tensor) error {
	b, c := l.b, l.call
	if c == nil {
		return fmt.Errorf("bench layer: Prepare first")
	}
	batch, seq := c.Batch, c.Seq
	rows := batch * seq
	var t [10]ops.Tensor
	for i := range t {
		dim := l.d
		if i == 8 {
			dim = l.ffn
		}
		var err error
		if t[i], err = b.Acquire(rows, dim); err != nil {
			return err
		}
		defer b.Release(t[i])
	}
	h, q, k, v, a, o, r1, h2, f, f2 := t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], t[8], t[9]
	steps := []func() error{
		func() error { return l.ln1.ForwardDevice(c, []ops.Tensor{x}, h) },
		func() error { return l.q.step.ForwardDevice(c, []ops.Tensor{h}, q) },
		func() error { return l.k.step.ForwardDevice(c, []ops.Tensor{h}, k) },
		func() error { return l.v.step.ForwardDevice(c, []ops.Tensor{h}, v) },
		func() error { return l.attn.ForwardDevice(c, []ops.Tensor{q, k, v}, a) },
		func() error { return l.o.step.ForwardDevice(c, []ops.Tensor{a}, o) },
		func() error { return l.add.ForwardDevice(c, []ops.Tensor{x, o}, r1) },
		func() error { return l.ln2.ForwardDevice(c, []ops.Tensor{r1}, h2) },
		func() error { return l.fc1.step.ForwardDevice(c, []ops.Tensor{h2}, f) },
		func() error { return l.relu.ForwardDevice(c, []ops.Tensor{f}, f) },
		func() error { return l.fc2.step.ForwardDevice(c, []ops.Tensor{f}, f2) },
		func() error { return l.add.ForwardDevice(c, []ops.Tensor{r1, f2}, y) },
	}
	for _, s := range steps {
		if err := s(); err != nil {
			return err
		}
	}
	return nil
}

// ZeroCache allocates every layer of cache (for attention layer id 0)
// and zeroes it. Call inside Do.
func (b *Backend) ZeroCache(cache ops.DeviceCache, d int) error {
	kv := cache.(*kvCache)
	l, err := kv.layer(0, d)
	if err != nil {
		return err
	}
	n := kv.batch * kv.maxLen * d * b.act.Size()
	if err := b.dev.Memset8(l.k, 0, n); err != nil {
		return err
	}
	return b.dev.Memset8(l.v, 0, n)
}

// ForwardPath is Forward with the N:M path pinned: "spmv" (the 2:4
// decode kernel), "cusparselt" or "generic". Call inside Do.
func (l *BenchLinear) ForwardPath(path string, x, y ops.Tensor, m int) error {
	old := l.step.force
	l.step.force = path
	defer func() { l.step.force = old }()
	return l.Forward(x, y, m)
}

// FreeBenchLinear releases a bench layer's weights. Call inside Do.
func (b *Backend) FreeBenchLinear(l *BenchLinear) error {
	s := l.step
	var first error
	vals := s.vals
	if s.valsShared {
		vals = 0 // cuSPARSELt's form holds them
	}
	for _, p := range []driver.Ptr{s.w, vals, s.idx, s.tcv, s.tci, s.r, s.l, s.bias, s.biasAct} {
		if err := b.dev.Free(p); err != nil && first == nil {
			first = err
		}
	}
	if s.sp != nil {
		if err := s.sp.Destroy(); err != nil && first == nil {
			first = err
		}
	}
	b.WeightBytes -= l.Bytes
	*s = linearStep{}
	return first
}

// FreeBenchLayer releases a bench decoder layer's weights. Call inside Do.
func (b *Backend) FreeBenchLayer(l *BenchLayer) error {
	var first error
	for _, bl := range []*BenchLinear{l.q, l.k, l.v, l.o, l.fc1, l.fc2} {
		if err := b.FreeBenchLinear(bl); err != nil && first == nil {
			first = err
		}
	}
	for _, p := range []driver.Ptr{l.ln1.gamma, l.ln1.beta} {
		if err := b.dev.Free(p); err != nil && first == nil {
			first = err
		}
	}
	return first
}
