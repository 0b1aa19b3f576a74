package ops

import (
	"fmt"
	"math"

	"github.com/slopeml/slope/ops/cpu"
)

type attentionStep struct {
	id         int // node ID: the cache slot
	dim, heads int
	headDim    int
	scale      float32
}

func bindAttention(b Binding) (Step, error) {
	d, heads, scale, err := AttentionShape(b)
	if err != nil {
		return nil, err
	}
	return &attentionStep{id: b.Node.ID, dim: d, heads: heads, headDim: d / heads, scale: scale}, nil
}

// AttentionShape checks a CausalAttention binding (q, k, v of one width d,
// num_heads dividing it) and returns d, the head count and the score
// scale (attribute scale, default 1/sqrt(d/heads)).
func AttentionShape(b Binding) (d, heads int, scale float32, err error) {
	n := b.Node
	for i := range 3 {
		di, err := inDim(b, i)
		if err != nil {
			return 0, 0, 0, err
		}
		if i > 0 && di != d {
			return 0, 0, 0, n.errorf("q, k, v widths differ (%v)", b.InDims)
		}
		d = di
	}
	h, err := n.Int("num_heads", 0)
	if err != nil {
		return 0, 0, 0, err
	}
	if h <= 0 || d%int(h) != 0 {
		return 0, 0, 0, n.errorf("num_heads %d does not divide width %d", h, d)
	}
	scale, err = n.Float("scale", float32(1/math.Sqrt(float64(d/int(h)))))
	return d, int(h), scale, err
}

func (s *attentionStep) OutDim() int { return s.dim }

func (s *attentionStep) Forward(c *Call, in []*Value, out *Value) error {
	rows := c.Rows()
	for i, v := range in[:3] {
		if err := checkValue(fmt.Sprintf("attention input %d", i), v, rows, s.dim); err != nil {
			return err
		}
	}
	total := c.Past + c.Seq
	if len(c.Mask) != c.Batch*total {
		return fmt.Errorf("attention: mask has %d entries, want %d", len(c.Mask), c.Batch*total)
	}
	// keys/values of every position so far: [Batch, stride, dim].
	keys, vals, stride := in[1].Data, in[2].Data, c.Seq
	if c.Cache != nil {
		if c.Batch != c.Cache.Batch || total > c.Cache.MaxLen {
			return fmt.Errorf("attention: %d sequences of %d tokens do not fit a cache of %d x %d", c.Batch, total, c.Cache.Batch, c.Cache.MaxLen)
		}
		l, err := c.Cache.layer(s.id, s.dim)
		if err != nil {
			return err
		}
		for b := 0; b < c.Batch; b++ {
			dst := (b*c.Cache.MaxLen + c.Past) * s.dim
			copy(l.k[dst:dst+c.Seq*s.dim], in[1].Data[b*c.Seq*s.dim:(b+1)*c.Seq*s.dim])
			copy(l.v[dst:dst+c.Seq*s.dim], in[2].Data[b*c.Seq*s.dim:(b+1)*c.Seq*s.dim])
		}
		keys, vals, stride = l.k, l.v, c.Cache.MaxLen
	} else if c.Past != 0 {
		return fmt.Errorf("attention: %d past tokens but no cache", c.Past)
	}
	q := in[0].Data
	if c.Seq >= gemmAttentionMin {
		return s.forwardGEMM(c, q, keys, vals, stride, out)
	}
	// Each goroutine takes a contiguous range of (sequence, head) pairs;
	// per query it walks the key and value rows in blocks of attendBlock
	// rows, all of its heads per block (cpu.DotRows / cpu.AxpyRows), so
	// each cached row is read whole while it is in cache.
	parallelRows(c.Batch*s.heads, c.Threads, func(lo, hi int) {
		nh := min(hi-lo, s.heads)
		scores := make([]float32, nh*total)
		stats := make([]float32, 2*nh)
		for b := lo / s.heads; b*s.heads < hi; b++ {
			hlo, hhi := max(lo-b*s.heads, 0), min(hi-b*s.heads, s.heads)
			mask := c.Mask[b*total : (b+1)*total]
			for t := 0; t < c.Seq; t++ {
				row := (b*c.Seq + t) * s.dim
				s.attendHeads(out.Data[row:row+s.dim], q[row:row+s.dim], keys, vals, b*stride, hlo, hhi, mask[:c.Past+t+1], scores, stats)
			}
		}
	})
	return nil
}

// attendBlock is the number of key rows attendHeads takes through all
// its heads before moving on: the rows' heads are adjacent in memory, so
// a block of rows (16·dim floats) comes from memory once and then serves
// the other heads from cache. Walking all rows one head at a time instead
// was slower once the cache outgrows L2 (about 25% at 256 tokens of
// OPT-125m's 12 layers).
const attendBlock = 16

// attendHeads computes heads hlo..hhi-1 of one query (q and y are the
// query's full rows) over the key/value rows base..base+len(mask)-1 whose
// mask is 1: per head softmax(scale·q·kᵀ)·v in float32 with the maximum
// subtracted. scores holds (hhi-hlo)·len(mask) values, stats 2·(hhi-hlo).
//
// The visible keys are taken in runs (masked keys, left padding in
// practice, are never read), each run in blocks of attendBlock rows; per
// block and head one DotRows call computes the scores and, after the
// softmax, one AxpyRows call accumulates the value rows. Per head the
// softmax sum and every output element accumulate over the keys in order.
func (s *attentionStep) attendHeads(y, q, keys, vals []float32, base, hlo, hhi int, mask []int32, scores, stats []float32) {
	n, hd, dim := len(mask), s.headDim, s.dim
	nh := hhi - hlo
	mx, sum := stats[:nh], stats[nh:2*nh]
	clear(y[hlo*hd : hhi*hd])
	// nextRun returns the run [a, b) of visible keys that starts first at
	// or after j (a = n when there is none).
	nextRun := func(j int) (a, b int) {
		for j < n && mask[j] == 0 {
			j++
		}
		a = j
		for j < n && mask[j] != 0 {
			j++
		}
		return a, j
	}
	// rows returns exactly head h's columns of rows a..b-1 of keys or vals.
	rows := func(kv []float32, a, b, h int) []float32 {
		return kv[(base+a)*dim+h*hd : (base+b-1)*dim+(h+1)*hd]
	}
	for a, b := nextRun(0); a < n; a, b = nextRun(b) {
		for j0 := a; j0 < b; j0 += attendBlock {
			j1 := min(j0+attendBlock, b)
			for h := hlo; h < hhi; h++ {
				sc := scores[(h-hlo)*n:]
				cpu.DotRows(sc[j0:j1], q[h*hd:(h+1)*hd], rows(keys, j0, j1, h), dim, j1-j0)
			}
		}
	}
	for i := range nh {
		sc := scores[i*n : (i+1)*n]
		m := float32(math.Inf(-1))
		for a, b := nextRun(0); a < n; a, b = nextRun(b) {
			for j := a; j < b; j++ {
				sc[j] *= s.scale
				m = max(m, sc[j])
			}
		}
		if math.IsInf(float64(m), -1) {
			return // no visible key (the mask is shared by all heads): a padded query
		}
		var t float32
		for a, b := nextRun(0); a < n; a, b = nextRun(b) {
			for j := a; j < b; j++ {
				sc[j] = expf(sc[j] - m)
				t += sc[j]
			}
		}
		mx[i], sum[i] = m, t
	}
	for a, b := nextRun(0); a < n; a, b = nextRun(b) {
		for j0 := a; j0 < b; j0 += attendBlock {
			j1 := min(j0+attendBlock, b)
			for h := hlo; h < hhi; h++ {
				sc := scores[(h-hlo)*n:]
				cpu.AxpyRows(y[h*hd:(h+1)*hd], sc[j0:j1], rows(vals, j0, j1, h), dim, j1-j0)
			}
		}
	}
	for h := hlo; h < hhi; h++ {
		inv := 1 / sum[h-hlo]
		yh := y[h*hd : (h+1)*hd]
		for e := range yh {
			yh[e] *= inv
		}
	}
}

// gemmAttentionMin is the number of new tokens from which attention runs
// as two GEMMs per head (prefill) instead of one query at a time.
const gemmAttentionMin = 8

// attnChunkRows is how many queries one pair of forwardGEMM's products
// takes: a chunk's score product covers only the keys up to its last
// query (attention is causal), so a prefill computes a little over half
// of the scores and of the value product's work.
const attnChunkRows = 64

// attnFwdBufs is one worker's buffers for forwardGEMM: the head's
// queries, keys and values gathered contiguously ([Seq, hd], [total, hd],
// [total, hd]), its output [Seq, hd], one chunk's scores and the two
// products' prepared operands.
type attnFwdBufs struct {
	q, k, v, o, s []float32
	inv           []float32 // one chunk's 1/Σexp per query (0: no visible key)
	kw, vw        cpu.DenseScratch
}

// forwardGEMM computes each (sequence, head) in chunks of attnChunkRows
// queries: S = Q·Kᵀ over the keys up to the chunk's last query, a masked
// softmax per row (cpu.ExpShiftSum's vector kernel where it runs, expf
// elsewhere), and O = P·V over the same keys, both
// products on the CPU linear kernels. keys/vals rows of sequence b start
// at b*stride.
func (s *attentionStep) forwardGEMM(c *Call, q, keys, vals []float32, stride int, out *Value) error {
	total := c.Past + c.Seq
	hd := s.headDim
	errs := make([]error, c.Batch*s.heads)
	parallelRows(c.Batch*s.heads, c.Threads, func(lo, hi int) {
		bf := &attnFwdBufs{
			q: make([]float32, c.Seq*hd), o: make([]float32, c.Seq*hd),
			k: make([]float32, total*hd), v: make([]float32, total*hd),
			s: make([]float32, min(attnChunkRows, c.Seq)*total), inv: make([]float32, attnChunkRows),
		}
		for bh := lo; bh < hi; bh++ {
			errs[bh] = s.headGEMM(c, bh/s.heads, bh%s.heads, q, keys, vals, stride, out, bf)
		}
	})
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

func (s *attentionStep) headGEMM(c *Call, b, h int, q, keys, vals []float32, stride int, out *Value, bf *attnFwdBufs) error {
	total := c.Past + c.Seq
	hd, off := s.headDim, h*s.headDim
	// The queries carry the scale, so the scores come out scaled.
	for t := 0; t < c.Seq; t++ {
		qt := bf.q[t*hd : (t+1)*hd]
		for e, x := range q[(b*c.Seq+t)*s.dim+off:][:hd] {
			qt[e] = x * s.scale
		}
	}
	mask := c.Mask[b*total : (b+1)*total]
	for j := 0; j < total; j++ {
		copy(bf.k[j*hd:(j+1)*hd], keys[(b*stride+j)*s.dim+off:])
		if mask[j] == 0 {
			// A masked key's weight is 0, and 0·NaN would be NaN: its value
			// row (whatever padding produced) takes no part.
			clear(bf.v[j*hd : (j+1)*hd])
			continue
		}
		copy(bf.v[j*hd:(j+1)*hd], vals[(b*stride+j)*s.dim+off:])
	}
	keysAll, err := bf.kw.PrepareF32(bf.k[:total*hd], total, hd)
	if err != nil {
		return err
	}
	for r0 := 0; r0 < c.Seq; r0 += attnChunkRows {
		nq := min(attnChunkRows, c.Seq-r0)
		nk := c.Past + r0 + nq // the keys the chunk's last query sees
		kd, err := keysAll.PrefixOut(nk)
		if err != nil {
			return err
		}
		sc := bf.s[:nq*nk]
		if err := kd.Linear(sc, bf.q[r0*hd:(r0+nq)*hd], nq, nil, 1); err != nil {
			return err
		}
		for t := 0; t < nq; t++ {
			row := sc[t*nk : (t+1)*nk]
			visible := c.Past + r0 + t + 1
			// The row keeps the exponentials; the output row is divided by
			// their sum after the value product.
			bf.inv[t] = 0 // no visible key: a padded query yields zeros
			if sum := softmaxExp(row[:visible], mask); sum > 0 {
				bf.inv[t] = float32(1 / sum)
			}
			clear(row[visible:])
		}
		vd, err := bf.vw.PrepareKN(bf.v[:nk*hd], nk, hd)
		if err != nil {
			return err
		}
		o := bf.o[r0*hd : (r0+nq)*hd]
		if err := vd.Linear(o, sc, nq, nil, 1); err != nil {
			return err
		}
		for t := range nq {
			inv := bf.inv[t]
			for e := range o[t*hd : (t+1)*hd] {
				o[t*hd+e] *= inv
			}
		}
	}
	for t := 0; t < c.Seq; t++ {
		copy(out.Data[(b*c.Seq+t)*s.dim+off:][:hd], bf.o[t*hd:(t+1)*hd])
	}
	return nil
}

// softmaxExp is a softmax's numerators for one query: row holds its
// scaled scores over its visible keys (mask[j] != 0: a real key), which
// become exp(score - max) at the real keys and 0 at the others; it
// returns their sum, or 0 (row all zero) when no key is real. The
// exponentials are cpu.ExpShiftSum's vector kernel where it runs and
// expf elsewhere (which beats ExpShiftSum's math.Exp loop); the sum is
// float64 either way.
func softmaxExp(row []float32, mask []int32) float64 {
	return softmaxExpWith(row, mask, cpu.ExpShiftSumVectorized())
}

// softmaxExpWith is softmaxExp with the exponentials on ExpShiftSum
// (vector) or on expf; the tests run both.
func softmaxExpWith(row []float32, mask []int32, vector bool) float64 {
	mx := float32(math.Inf(-1))
	for j := range row {
		if mask[j] != 0 {
			mx = max(mx, row[j])
		} else {
			row[j] = -math.MaxFloat32 // exp(-MaxFloat32 - mx) is 0
		}
	}
	if math.IsInf(float64(mx), -1) {
		clear(row)
		return 0
	}
	if vector {
		return cpu.ExpShiftSum(row, row, mx)
	}
	var sum float64
	for j, x := range row {
		row[j] = expf(x - mx)
		sum += float64(row[j])
	}
	return sum
}
