package convert

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"sync"

	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/format/slopepb"
)

// loaded is one source weight as DenseToSlope's loop gets it: decoded
// (t.Data), or, where it is stored in the dtype it has, its stored bytes
// (raw, t.Data nil) and, for a weight the fused 2:4 kernel prunes, the
// encodings that kernel produced.
type loaded struct {
	t    *Tensor
	raw  []byte
	half *half24Encoded
	cost int64 // bytes counted against the prefetch budget
}

// half24Encoded is the fused 2:4 kernel's output for one weight: the NM
// tensor's and the transpose mask's raw encodings.
type half24Encoded struct {
	nm, mask []byte
	res      prunedWeight
}

// check verifies that the weight's data fits its shape.
func (l *loaded) check() error {
	t, n := l.t, l.t.Numel()
	if l.raw == nil {
		if n != len(t.Data) {
			return fmt.Errorf("tensor %q (%s): %d values for shape %v", t.Name, t.SourceName, len(t.Data), t.Shape)
		}
		return nil
	}
	if es, err := format.ElemSize(t.DType); err != nil || n*es != len(l.raw) {
		return fmt.Errorf("tensor %q (%s): %d bytes of %s for shape %v", t.Name, t.SourceName, len(l.raw), t.DType, t.Shape)
	}
	return nil
}

// rawPlan says how DenseToSlope will store a weight, from its
// description: raw when its stored bytes serve as they are (a 16-bit float
// kept in its dtype, stored dense or pruned by the fused kernel), fused
// when the fused 2:4 kernel prunes it (as it is read).
type rawPlan func(t *Tensor) (raw, fused bool)

// weightLoader reads the source weights for DenseToSlope, in order.
type weightLoader struct {
	src    Source
	raws   rawSource // nil: every weight is decoded
	plan   rawPlan
	bufs   bufferPool
	budget *byteBudget // of the weights loaded ahead, when prefetching
}

func newWeightLoader(src Source, plan rawPlan) *weightLoader {
	l := &weightLoader{src: src, plan: plan}
	if rs, ok := src.(rawSource); ok && plan != nil {
		l.raws = rs
	}
	return l
}

// weightRead is how a weight will be read: stored (its description t,
// nil when the source does not know it without reading), raw or decoded,
// and pruned by the fused kernel.
type weightRead struct {
	t          *Tensor
	raw, fused bool
}

// describe looks a weight up once for its read and its cost.
func (l *weightLoader) describe(name string) weightRead {
	if l.raws == nil {
		return weightRead{}
	}
	t, ok := l.raws.StoredTensor(name)
	if !ok {
		return weightRead{}
	}
	raw, fused := l.plan(t)
	return weightRead{t: t, raw: raw, fused: fused}
}

// load reads one weight: raw (and pruned by the fused kernel) where the
// plan allows, else decoded.
func (l *weightLoader) load(name string) (*loaded, error) { return l.read(name, l.describe(name)) }

func (l *weightLoader) read(name string, d weightRead) (*loaded, error) {
	if d.raw {
		return l.loadRaw(d.t, d.fused)
	}
	t, err := l.src.Tensor(name)
	if err != nil {
		return nil, err
	}
	ld := &loaded{t: t}
	return ld, ld.check()
}

func (l *weightLoader) loadRaw(t *Tensor, fused bool) (*loaded, error) {
	h, ok := halfFloatOf(t.DType)
	if !ok {
		return nil, fmt.Errorf("tensor %q (%s): %s is not a 16-bit float", t.Name, t.SourceName, t.DType)
	}
	raw, err := l.raws.TensorRaw(t.Name, l.bufs.get(2*t.Numel()))
	if err != nil {
		return nil, err
	}
	ld := &loaded{t: t, raw: raw}
	if err := ld.check(); err != nil {
		return nil, err
	}
	if !fused {
		h.quietNaNs(raw) // as decoding and encoding back would
		return ld, nil
	}
	rows, cols := t.Shape[0], t.Shape[1]
	sz := half24SizesOf(cols)
	enc := &half24Encoded{nm: l.bufs.get(rows * (sz.values + sz.index)), mask: l.bufs.get(rows * sz.mask)}
	enc.res, err = h.prune24(rows, cols, raw, enc.nm, enc.mask)
	l.bufs.put(raw) // W itself is not stored
	if err != nil {
		return nil, fmt.Errorf("tensor %q (%s): %w", t.Name, t.SourceName, err)
	}
	ld.raw, ld.half = nil, enc
	return ld, nil
}

// release hands a weight's buffers back for the next weights to reuse,
// and its bytes back to the prefetch budget; the weight must not be used
// afterwards.
func (l *weightLoader) release(ld *loaded) {
	l.bufs.put(ld.raw)
	if ld.half != nil {
		l.bufs.put(ld.half.nm, ld.half.mask)
	}
	if l.budget != nil {
		l.budget.release(ld.cost)
	}
	*ld = loaded{}
}

// bufferPool recycles the loader's byte buffers between weights, so that
// they are not zeroed and faulted in afresh for every weight. It holds at
// most maxPooledBytes, dropping its largest buffers beyond that.
type bufferPool struct {
	mu    sync.Mutex
	free  [][]byte
	bytes int
}

var maxPooledBytes = 128 << 20 // (tests shrink it)

// get returns a buffer of n bytes with undefined contents: the smallest
// pooled one large enough, else a new one.
func (p *bufferPool) get(n int) []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	best := -1
	for i, b := range p.free {
		if cap(b) >= n && (best < 0 || cap(b) < cap(p.free[best])) {
			best = i
		}
	}
	if best < 0 {
		return make([]byte, n)
	}
	b := p.free[best]
	p.free = slices.Delete(p.free, best, best+1)
	p.bytes -= cap(b)
	return b[:n]
}

// put pools buffers (nil ones are ignored). When that drops a large
// buffer (an embedding's), it collects garbage at once, as hfSource.Tensor
// does, so that the buffer's memory is not held until the heap doubles.
func (p *bufferPool) put(bufs ...[]byte) {
	if p.pool(bufs) >= largeTensorBytes {
		runtime.GC()
	}
}

// pool adds bufs to the pool, dropping its largest buffers beyond
// maxPooledBytes, and returns the size of the largest dropped.
func (p *bufferPool) pool(bufs [][]byte) (dropped int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, b := range bufs {
		if cap(b) > 0 {
			p.free = append(p.free, b)
			p.bytes += cap(b)
		}
	}
	if p.bytes > maxPooledBytes {
		slices.SortFunc(p.free, func(a, b []byte) int { return cap(a) - cap(b) })
		for p.bytes > maxPooledBytes {
			last := len(p.free) - 1
			dropped = max(dropped, cap(p.free[last]))
			p.bytes -= cap(p.free[last])
			p.free[last] = nil
			p.free = p.free[:last]
		}
	}
	return dropped
}

// prefetchBytes bounds the bytes of the weights loaded ahead of the one
// being written (a single larger weight is loaded alone).
var prefetchBytes int64 = 128 << 20 // (tests shrink it)

// byteBudget counts the bytes of the weights loaded and not yet released.
type byteBudget struct {
	mu      sync.Mutex
	cond    *sync.Cond
	used    int64
	max     int64
	stopped bool
}

func newByteBudget(max int64) *byteBudget {
	b := &byteBudget{max: max}
	b.cond = sync.NewCond(&b.mu)
	return b
}

// acquire waits until n more bytes fit, or none are in use; it returns
// false, acquiring nothing, once stop is called.
func (b *byteBudget) acquire(n int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	for !b.stopped && b.used > 0 && b.used+n > b.max {
		b.cond.Wait()
	}
	if b.stopped {
		return false
	}
	b.used += n
	return true
}

func (b *byteBudget) release(n int64) {
	b.mu.Lock()
	b.used -= n
	b.mu.Unlock()
	b.cond.Broadcast()
}

func (b *byteBudget) stop() {
	b.mu.Lock()
	b.stopped = true
	b.mu.Unlock()
	b.cond.Broadcast()
}

// cost is what loading a weight adds to memory, for the prefetch budget:
// its stored bytes when it is read raw, its float32 values when decoded,
// and the whole budget when its size is not known beforehand (it is then
// loaded alone).
func (d weightRead) cost() int64 {
	switch {
	case d.t == nil:
		return prefetchBytes
	case d.raw:
		return 2 * int64(d.t.Numel())
	}
	return 4 * int64(d.t.Numel())
}

// prefetch loads names in order on another goroutine, ahead of the
// caller by up to prefetchBytes of weights, so that reading and pruning
// the next weights overlap writing the current one (a small weight, a
// bias, does not hold the next large one back). next returns the weights
// in order (after an error, nothing more is loaded); the caller releases
// each weight when done with it. stop, which must be called, ends the
// goroutine and waits for it.
func (l *weightLoader) prefetch(ctx context.Context, names []string) (next func() (*loaded, error), stop func()) {
	type item struct {
		ld  *loaded
		err error
	}
	l.budget = newByteBudget(prefetchBytes)
	ch := make(chan item, len(names))
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(ch)
		for _, name := range names {
			d := l.describe(name)
			cost := d.cost()
			if ctx.Err() != nil || !l.budget.acquire(cost) {
				return
			}
			ld, err := l.read(name, d)
			if err != nil {
				l.budget.release(cost)
				ch <- item{nil, err}
				return
			}
			ld.cost = cost
			ch <- item{ld, nil}
		}
	}()
	next = func() (*loaded, error) {
		it, ok := <-ch
		if !ok {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			return nil, fmt.Errorf("weight loader: no more weights")
		}
		return it.ld, it.err
	}
	var once sync.Once
	stop = func() {
		once.Do(func() {
			l.budget.stop()
			wg.Wait()
		})
	}
	return next, stop
}

// writeHalf24 writes a weight the fused kernel pruned: the NM tensor and
// its transpose mask, as writeMagnitude writes them. With keep, the
// result also holds the kept values, indices and transpose mask, decoded
// from the encodings (for the materialized transpose).
func writeHalf24(w *format.Writer, t *Tensor, dt slopepb.DType, p format.NM, enc *half24Encoded, keep bool) (prunedWeight, error) {
	out, in := t.Shape[0], t.Shape[1]
	fail := func(err error) (prunedWeight, error) {
		return prunedWeight{}, fmt.Errorf("tensor %q (%s): %w", t.Name, t.SourceName, err)
	}
	if err := w.WriteNMEncoded(t.Name, dt, p, out, in, enc.nm); err != nil {
		return fail(err)
	}
	if err := w.WriteTransposeMaskEncoded(TransposeMaskName(t.Name), t.Name, p, out, in, enc.mask); err != nil {
		return fail(err)
	}
	res := enc.res
	if keep {
		kept := out * (in / p.M * p.N)
		vb := 2 * kept
		res.rows = out
		res.values, res.idx, res.tkeep = make([]float32, kept), make([]uint8, kept), make([]bool, kept)
		if err := format.DecodeFloats(dt, enc.nm[:vb], res.values); err != nil {
			return fail(err)
		}
		if err := format.UnpackNMIndices(p, out, in, enc.nm[vb:], res.idx); err != nil {
			return fail(err)
		}
		if err := format.UnpackTransposeMask(p, out, in, enc.mask, res.tkeep); err != nil {
			return fail(err)
		}
	}
	return res, nil
}
