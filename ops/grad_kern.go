package ops

import (
	"bytes"
	"encoding/binary"
	"math"
	"sync"
	"unsafe"

	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/ops/cpu"
)

// GEMM helpers of the CPU training steps: the matrix products of Linear,
// LMHead and SlopeLinear (forward, input and weight gradients) run through
// the kernels of ops/cpu, whose weights are laid out from the current
// float32 values at every call (O(weights), small next to the products)
// into reused buffers: pooled dense panels, each SlopeLinear's prepared
// N:M weights (indices built once per mask). The kernels compute every
// output element on one goroutine in a fixed order, so results do not
// depend on the thread count.

// nativeLE reports whether float32 slices are little-endian in memory (and
// can be handed to the kernels' weight views without a copy).
var nativeLE = binary.NativeEndian.Uint16([]byte{1, 0}) == 1

// f32Bytes returns v as little-endian FLOAT32 bytes: a view of v on
// little-endian machines (the kernels' Prepare functions only read it),
// else a copy.
func f32Bytes(v []float32) []byte {
	if len(v) == 0 {
		return nil
	}
	if nativeLE {
		return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(v))), 4*len(v))
	}
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return b
}

// transposeInto writes dst [cols, rows] = srcᵀ for src [rows, cols]
// (cpu.Transpose: 8x8 blocks in assembly, column chunks over threads).
func transposeInto(dst, src []float32, rows, cols, threads int) {
	if err := cpu.Transpose(dst[:rows*cols], src[:rows*cols], rows, cols, threads); err != nil {
		panic(err) // the callers size both slices
	}
}

// denseMul computes y [m, out] = x [m, in]·wᵀ (+ bias) with w [out, in]
// float32 row-major, through cpu.PrepareDense and cpu Linear. m may be 0.
func denseMul(y, x []float32, m, in, out int, w, bias []float32, threads int) error {
	if m == 0 || in == 0 || out == 0 {
		if in == 0 && m > 0 {
			for r := 0; r < m; r++ {
				if bias != nil {
					copy(y[r*out:(r+1)*out], bias)
				} else {
					clear(y[r*out : (r+1)*out])
				}
			}
		}
		return nil
	}
	d, err := cpu.PrepareDense(cpu.DenseWeight{DType: cpu.Float32, Out: out, In: in, Data: f32Bytes(w[:out*in])})
	if err != nil {
		return err
	}
	return d.Linear(y[:m*out], x[:m*in], m, bias, threads)
}

// Scratch memory of the training products, shared by all steps (a step
// holds none between calls): float32 buffers from cpu.GetF32's size-class
// pools, and prepared dense weights by shape (refilled from the current
// values at every call, so Params edited between calls are always seen).
var densePools sync.Map // [2]int{k, n} -> *sync.Pool of *cpu.Dense

func densePool(k, n int) *sync.Pool {
	p, _ := densePools.LoadOrStore([2]int{k, n}, &sync.Pool{})
	return p.(*sync.Pool)
}

// getDense returns a pooled float32 Dense [out = n, in = k] or nil (the
// Prepare functions then allocate one); putDense gives it back.
func getDense(k, n int) *cpu.Dense {
	d, _ := densePool(k, n).Get().(*cpu.Dense)
	return d
}

func putDense(d *cpu.Dense) { densePool(d.In(), d.Out()).Put(d) }

// linearForward computes y [m, out] = x [m, in]·wᵀ (+ bias) with w
// [out, in], as denseMul does, on pooled panels.
func linearForward(y, x []float32, m, in, out int, w, bias []float32, threads int) error {
	if m == 0 || in == 0 || out == 0 {
		return denseMul(y, x, m, in, out, w, bias, threads)
	}
	d, err := cpu.PrepareDenseF32(getDense(in, out), w[:out*in], out, in, threads)
	if err != nil {
		return err
	}
	defer putDense(d)
	return d.Linear(y[:m*out], x[:m*in], m, bias, threads)
}

// addInputGrad adds gy [m, out]·w into gx [m, in] for w [out, in]: the
// GEMM with B = w read row-major as [K = out, N = in] (no transpose),
// accumulating straight into gx.
func addInputGrad(gx, gy []float32, m, in, out int, w []float32, threads int) error {
	if m == 0 || in == 0 || out == 0 {
		return nil
	}
	d, err := cpu.PrepareDenseKN(getDense(out, in), w[:out*in], out, in, threads)
	if err != nil {
		return err
	}
	defer putDense(d)
	return d.MulAdd(gx[:m*in], gy[:m*out], m, threads)
}

// addWeightGrad adds gyᵀ·x [out, in] into g for gy [m, out], x [m, in]
// (m >= 1): A = gyᵀ (transposed into scratch), B = x read row-major as
// [K = m, N = in]. (weightGrad is its reference.)
func addWeightGrad(g, gy, x []float32, m, in, out int, threads int) error {
	gyT := cpu.GetF32(m * out)
	defer cpu.PutF32(gyT)
	transposeInto(*gyT, gy[:m*out], m, out, threads)
	d, err := cpu.PrepareDenseKN(getDense(m, in), x[:m*in], m, in, threads)
	if err != nil {
		return err
	}
	defer putDense(d)
	return d.MulAdd(g[:out*in], *gyT, out, threads)
}

// biasGrad adds Σ_rows gy into gb, row by row (per element the order of
// the loops it replaced: gb[o] += gy[r][o] for r = 0, 1, ...): one
// cpu.AxpyRows with weights 1, whose FMA by 1 rounds as the add does, and
// which holds blocks of gb in registers across the rows.
func biasGrad(gb, gy []float32, m, out int) {
	if m == 0 || out == 0 {
		return
	}
	ones := cpu.GetF32(m)
	defer cpu.PutF32(ones)
	for i := range *ones {
		(*ones)[i] = 1
	}
	cpu.AxpyRows(gb[:out], *ones, gy[:m*out], out, m)
}

// nmCache holds a SlopeLinear's prepared N:M weights and what they derive
// from its masks: W (indices fixed by Idx, which is static: the cache is
// keyed on the Idx slice itself) and, per transpose mask, W_dpᵀ
// (NM_TRANSPOSE_MATERIALIZED: [in, out], N:M along out). The values are
// refilled from the Param at every call, so edits between calls are
// seen; the transpose layout is rebuilt when TMask's content changes
// (the trainer refreshes it in place).
type nmCache struct {
	mu sync.Mutex
	// W: idxOf is the Indices it was built from (identity, not content).
	idxOf *byte
	idxN  int
	fw    *cpu.Sparse
	// W_dpᵀ: tBuilt whether it was built, from TMask tMask; bw the
	// prepared weight (nil when W_dpᵀ is not N:M) and tGather its values'
	// refill from W's (per slot of the panel layout the position in W's
	// values, -1: a zero filler).
	tMask   []byte
	tBuilt  bool
	tGather *cpu.PanelGather
	bw      *cpu.Sparse
}

// sync keys the cache on nm.Indices, dropping what was built from other
// indices (caller holds mu).
func (c *nmCache) sync(nm *NMParam) {
	if c.idxN == len(nm.Indices) && (len(nm.Indices) == 0 || c.idxOf == &nm.Indices[0]) {
		return
	}
	c.fw, c.bw, c.tGather, c.tBuilt = nil, nil, nil, false
	c.idxN, c.idxOf = len(nm.Indices), nil
	if len(nm.Indices) > 0 {
		c.idxOf = &nm.Indices[0]
	}
}

// A SlopeLinear's prepared weights keep only their indices between calls
// (cpu.PrepareNMIndices): the values are refilled at every call anyway,
// so each call borrows a pooled buffer for them (withValues) and gives it
// back when its product is done. Between steps a 2:4 layer then holds
// about 4.6 bytes per kept value for W and W_dpᵀ together (their index
// words, 0.25 bytes each, W_dpᵀ's refill plan, 4, and the mask it was
// built from) instead of 12.6.

// withValues returns a view of sp on a pooled values buffer and the
// function that returns the buffer.
func withValues(sp *cpu.Sparse) (*cpu.Sparse, func(), error) {
	buf := cpu.GetF32(sp.ValuesF32Len())
	v, err := sp.WithValuesF32(*buf)
	if err != nil {
		cpu.PutF32(buf)
		return nil, nil, err
	}
	return v, func() { cpu.PutF32(buf) }, nil
}

// forward returns W prepared for the N:M kernels with the current values
// vals, on a borrowed buffer (release gives it back): the indices are
// prepared (and checked) on first use or when Indices was replaced.
func (c *nmCache) forward(nm *NMParam, vals []float32, threads int) (w *cpu.Sparse, release func(), err error) {
	c.sync(nm)
	if c.fw == nil {
		sp, err := cpu.PrepareNMIndices(nm.Pattern, nm.Rows, nm.Cols, nm.Indices)
		if err != nil {
			return nil, nil, err
		}
		c.fw = sp
	}
	v, release, err := withValues(c.fw)
	if err != nil {
		return nil, nil, err
	}
	if err := v.SetValuesF32(vals, threads); err != nil {
		release()
		return nil, nil, err
	}
	return v, release, nil
}

// transposeWeight returns W_dpᵀ prepared with the current values vals on a
// borrowed buffer (release gives it back), its layout rebuilt when TMask
// (or Indices) changed. ok is false when the transpose cannot be an N:M
// weight (Rows not a multiple of M, or a column group keeping more than
// N).
func (c *nmCache) transposeWeight(nm *NMParam, vals []float32, threads int) (w *cpu.Sparse, release func(), ok bool, err error) {
	c.sync(nm)
	if !c.tBuilt || (nm.TMask == nil) != (c.tMask == nil) || !bytes.Equal(nm.TMask, c.tMask) {
		c.tBuilt, c.tGather, c.bw = false, nil, nil
		packed, src, ok, err := transposeLayout(nm)
		if err != nil {
			return nil, nil, false, err
		}
		if ok {
			sp, err := cpu.PrepareNMIndices(nm.Pattern, nm.Cols, nm.Rows, packed)
			if err != nil {
				return nil, nil, false, err
			}
			g, err := sp.PanelGather(src, len(vals))
			if err != nil {
				return nil, nil, false, err
			}
			c.bw, c.tGather = sp, g
		}
		c.tMask = nil
		if nm.TMask != nil {
			c.tMask = append([]byte{}, nm.TMask...)
		}
		c.tBuilt = true
	}
	if c.bw == nil {
		return nil, nil, false, nil
	}
	v, release, err := withValues(c.bw)
	if err != nil {
		return nil, nil, false, err
	}
	if err := v.SetValuesPanelGatherF32(vals, c.tGather, threads); err != nil {
		release()
		return nil, nil, false, err
	}
	return v, release, true, nil
}

// transposeLayout builds W_dpᵀ's packed indices and the source of each
// of its kept values (an index into W's values, -1 for a zero filler) from
// the indices and the transpose mask. ok is false when the transpose cannot be an N:M weight
// (Rows not a multiple of M, or a column group keeping more than N).
func transposeLayout(nm *NMParam) (packed []byte, src []int32, ok bool, err error) {
	p, rows, cols := nm.Pattern, nm.Rows, nm.Cols
	if rows%p.M != 0 || cols%p.M != 0 {
		return nil, nil, false, nil
	}
	idx, err := nm.IdxCopy() // validates Indices
	if err != nil {
		return nil, nil, false, err
	}
	tkeep, err := nm.TKeepCopy()
	if err != nil {
		return nil, nil, false, err
	}
	n, m := p.N, p.M
	kept := cols / m * n   // per row of W
	rowGroups := rows / m  // groups along each row of W_dpᵀ
	keptT := rowGroups * n // per row of W_dpᵀ
	tIdx := make([]uint8, cols*keptT)
	tSrc := make([]int32, cols*keptT)
	present := make([]uint16, cols)
	from := make([]int32, cols*m)
	for rg := 0; rg < rowGroups; rg++ {
		for o := 0; o < m; o++ {
			base := (rg*m + o) * kept
			for j := 0; j < kept; j++ {
				if !tkeep[base+j] {
					continue
				}
				col := j/n*m + int(idx[base+j])
				present[col] |= 1 << uint(o)
				from[col*m+o] = int32(base + j)
			}
		}
		for col := 0; col < cols; col++ {
			set := present[col]
			present[col] = 0
			survivors := set
			cnt := 0
			for s := set; s != 0; s &= s - 1 {
				cnt++
			}
			if cnt > n {
				return nil, nil, false, nil
			}
			// Fill with the lowest unused offsets up to exactly n.
			for f := 0; cnt < n; f++ {
				if set&(1<<uint(f)) == 0 {
					set |= 1 << uint(f)
					cnt++
				}
			}
			out := col*keptT + rg*n
			s := 0
			for o := 0; o < m; o++ {
				if set&(1<<uint(o)) == 0 {
					continue
				}
				tIdx[out+s] = uint8(o)
				if survivors&(1<<uint(o)) != 0 {
					tSrc[out+s] = from[col*m+o]
				} else {
					tSrc[out+s] = -1
				}
				s++
			}
		}
	}
	rb, err := p.IndexRowBytes(rows)
	if err != nil {
		return nil, nil, false, err
	}
	buf := make([]byte, cols*rb)
	if err := format.PackNMIndices(p, cols, rows, tIdx, buf); err != nil {
		return nil, nil, false, err
	}
	return buf, tSrc, true, nil
}

// CacheBytes is the memory a CPU GradStep holds besides its Params
// between calls: a SlopeLinear's prepared N:M weights (W and W_dpᵀ) and
// what derives from its masks (0 for steps that hold none, and for other
// backends' steps). Scratch memory shared by all steps is not included.
func CacheBytes(s GradStep) int64 {
	if c, ok := s.(interface{ cacheBytes() int64 }); ok {
		return c.cacheBytes()
	}
	return 0
}

func (c *nmCache) bytes() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := int64(cap(c.tMask))
	if c.tGather != nil {
		n += int64(c.tGather.Bytes())
	}
	for _, s := range []*cpu.Sparse{c.fw, c.bw} {
		if s != nil {
			n += int64(s.Bytes())
		}
	}
	return n
}

func (s *slopeLinearGrad) cacheBytes() int64 { return s.cache.bytes() }
