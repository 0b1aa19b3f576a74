package ops

import (
	"encoding/binary"
	"math"
	"slices"
	"sync"
	"unsafe"

	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/ops/cpu"
)

// GEMM helpers of the CPU training steps: the matrix products of Linear,
// LMHead and SlopeLinear (forward, input and weight gradients) run through
// the inference kernels of ops/cpu, whose weights are prepared from the
// current float32 values at every call (preparing is O(weights), small
// next to the products). The kernels compute every output element on one
// goroutine in a fixed order, so results do not depend on the thread count.

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

// transposeInto writes dst [cols, rows] = srcᵀ for src [rows, cols], in
// tiles of 32x32 spread over threads by row tiles of dst.
func transposeInto(dst, src []float32, rows, cols, threads int) {
	const tb = 32
	tiles := (cols + tb - 1) / tb
	parallelRows(tiles, threads, func(lo, hi int) {
		for ct := lo; ct < hi; ct++ {
			c0, c1 := ct*tb, min(ct*tb+tb, cols)
			for r0 := 0; r0 < rows; r0 += tb {
				r1 := min(r0+tb, rows)
				for c := c0; c < c1; c++ {
					d := dst[c*rows : (c+1)*rows]
					for r := r0; r < r1; r++ {
						d[r] = src[r*cols+c]
					}
				}
			}
		}
	})
}

// transposed returns srcᵀ [cols, rows] in a new slice.
func transposed(src []float32, rows, cols, threads int) []float32 {
	dst := make([]float32, rows*cols)
	transposeInto(dst, src, rows, cols, threads)
	return dst
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

// addInto adds src into dst elementwise, spread over threads.
func addInto(dst, src []float32, threads int) {
	n := len(src)
	parallelRows((n+4095)/4096, threads, func(lo, hi int) {
		d, s := dst[lo*4096:min(hi*4096, n)], src[lo*4096:min(hi*4096, n)]
		for i, v := range s {
			d[i] += v
		}
	})
}

// weightGrad computes the dense weight gradient g [out, in] = gyᵀ·x for
// gy [m, out] and x [m, in] (a GEMM with K = m): a = gyᵀ [out, m], the
// weight xᵀ [in, m]. m must be >= 1.
func weightGrad(gy, x []float32, m, in, out, threads int) ([]float32, error) {
	gyT := transposed(gy[:m*out], m, out, threads)
	xT := transposed(x[:m*in], m, in, threads)
	g := make([]float32, out*in)
	if err := denseMul(g, gyT, out, m, in, xT, nil, threads); err != nil {
		return nil, err
	}
	return g, nil
}

// biasGrad adds Σ_rows gy into gb, row by row (the order of the loops it
// replaces).
func biasGrad(gb, gy []float32, m, out int) {
	for r := 0; r < m; r++ {
		for o, v := range gy[r*out : (r+1)*out] {
			gb[o] += v
		}
	}
}

// nmCache holds what a SlopeLinear's prepared weights derive from its
// static mask: W's packed indices and, per transpose mask, the layout of
// W_dpᵀ (NM_TRANSPOSE_MATERIALIZED: [in, out], N:M along out).
type nmCache struct {
	mu     sync.Mutex
	idx    []uint8 // the Idx the packed indices were built from
	packed []byte
	// W_dpᵀ: tKeep the TKeep it was built from, tPacked its packed
	// indices, tSrc per kept slot of W_dpᵀ the position in W's values
	// (-1: a zero filler).
	tKeep   []bool
	tPacked []byte
	tSrc    []int32
}

// packedIdx returns W's packed indices, rebuilt only when Idx changed.
func (c *nmCache) packedIdx(nm *NMParam) ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.packed != nil && slices.Equal(c.idx, nm.Idx) {
		return c.packed, nil
	}
	rb, err := nm.Pattern.IndexRowBytes(nm.Cols)
	if err != nil {
		return nil, err
	}
	buf := make([]byte, nm.Rows*rb)
	if err := format.PackNMIndices(nm.Pattern, nm.Rows, nm.Cols, nm.Idx, buf); err != nil {
		return nil, err
	}
	c.idx = slices.Clone(nm.Idx)
	c.packed = buf
	c.tKeep = nil // the transpose derives from Idx too
	return buf, nil
}

// transpose returns the packed indices of W_dpᵀ and the source of each of
// its kept values, rebuilt when TKeep (or Idx) changed. ok is false when
// the transpose cannot be an N:M weight (Rows not a multiple of M, or a
// column group keeping more than N).
func (c *nmCache) transpose(nm *NMParam) (packed []byte, src []int32, ok bool, err error) {
	if _, err := c.packedIdx(nm); err != nil {
		return nil, nil, false, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.tKeep != nil && slices.Equal(c.tKeep, nm.TKeep) {
		return c.tPacked, c.tSrc, c.tSrc != nil, nil
	}
	c.tKeep = slices.Clone(nm.TKeep)
	c.tPacked, c.tSrc = nil, nil
	p, rows, cols := nm.Pattern, nm.Rows, nm.Cols
	if rows%p.M != 0 || cols%p.M != 0 {
		return nil, nil, false, nil
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
				if !nm.TKeep[base+j] {
					continue
				}
				col := j/n*m + int(nm.Idx[base+j])
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
	c.tPacked, c.tSrc = buf, tSrc
	return buf, tSrc, true, nil
}
