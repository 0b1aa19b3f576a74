package ops

import (
	"fmt"
	"math"

	"github.com/slopeml/slope/ops/cpu"
)

// attnBufs holds one worker's per-(sequence, head) buffers of the
// attention backward: q, k, v, dO [T, hd] gathered contiguously, one
// chunk's score matrices [attnChunkRows, T] (and a transpose), a [T, hd]
// product and the dK, dV sums [T, hd].
type attnBufs struct {
	q, k, v, do   []float32
	p, dp, ds, tT []float32
	prod, dk, dv  []float32
	// w holds the products' prepared right operands: K and V as weights
	// (packed once per head; a chunk reads a prefix), then a chunk's
	// operands of dQ and of dK, dV.
	w [4]cpu.DenseScratch
}

func newAttnBufs(seq, hd int) *attnBufs {
	n, ct := seq*hd, min(attnChunkRows, seq)*seq
	f := make([]float32, 7*n+4*ct)
	cut := func(k int) []float32 { s := f[:k:k]; f = f[k:]; return s }
	return &attnBufs{
		q: cut(n), k: cut(n), v: cut(n), do: cut(n), prod: cut(n), dk: cut(n), dv: cut(n),
		p: cut(ct), dp: cut(ct), ds: cut(ct), tT: cut(ct),
	}
}

// Backward recomputes P = softmax(scale·Q·Kᵀ) over the visible keys per
// sequence and head (the score product on the GEMM kernels, the softmax's
// exponentials by softmaxExp as in the forward, normalised in float64),
// then with dO = gy's head slice:
// dV = Pᵀ·dO, dP = dO·Vᵀ, dS = P ⊙ (dP − rowsum(dP ⊙ P)),
// dQ = scale·dS·K, dK = scale·dSᵀ·Q, each a GEMM on the ops/cpu kernels
// run on the worker's goroutine (so results depend on nothing but the
// inputs). As in the forward, the queries go in chunks of attnChunkRows
// whose products cover only the keys up to their last query; dK and dV
// add up over the chunks in order. A query with no visible key gets zero
// gradient.
func (s *attentionGrad) Backward(c *Call, in []*Value, _ *Value, gout *Value, gin []*Value) error {
	if c.Past != 0 || c.Cache != nil {
		return fmt.Errorf("attention backward: needs whole sequences (past %d, cache %v)", c.Past, c.Cache != nil)
	}
	seq, hd, dim := c.Seq, s.headDim, s.dim
	if len(c.Mask) != c.Batch*seq {
		return fmt.Errorf("attention: mask has %d entries, want %d", len(c.Mask), c.Batch*seq)
	}
	if seq == 0 || hd == 0 || (gin[0] == nil && gin[1] == nil && gin[2] == nil) {
		return nil
	}
	q, k, v := in[0].Data, in[1].Data, in[2].Data
	sc := float64(s.scale)
	errs := make([]error, c.Batch*s.heads)
	parallelRows(c.Batch*s.heads, c.Threads, func(lo, hi int) {
		bf := newAttnBufs(seq, hd)
		for bh := lo; bh < hi; bh++ {
			errs[bh] = s.backwardHead(bf, c, bh, q, k, v, gout.Data, gin, sc, seq, hd, dim)
		}
	})
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

func (s *attentionGrad) backwardHead(bf *attnBufs, c *Call, bh int, q, k, v, gy []float32, gin []*Value, sc float64, seq, hd, dim int) error {
	b, h := bh/s.heads, bh%s.heads
	mask := c.Mask[b*seq : (b+1)*seq]
	gather := func(dst, src []float32) {
		for j := 0; j < seq; j++ {
			copy(dst[j*hd:(j+1)*hd], src[(b*seq+j)*dim+h*hd:][:hd])
		}
	}
	// scatterAdd adds rows [r0, r0+n) of the head's [T, hd] src into dst.
	scatterAdd := func(dst, src []float32, r0, n int) {
		for j := r0; j < r0+n; j++ {
			d := dst[(b*seq+j)*dim+h*hd:][:hd]
			for e, x := range src[(j-r0)*hd : (j-r0+1)*hd] {
				d[e] += x
			}
		}
	}
	gather(bf.q, q)
	gather(bf.k, k)
	gather(bf.v, v)
	gather(bf.do, gy)
	// Masked positions take no part, as keys or as queries (their weights
	// and dS rows are 0, and 0·NaN is NaN): zero their rows, whatever
	// padding produced.
	for j := 0; j < seq; j++ {
		if mask[j] == 0 {
			for _, x := range [][]float32{bf.q, bf.k, bf.v, bf.do} {
				clear(x[j*hd : (j+1)*hd])
			}
		}
	}
	clear(bf.dk)
	clear(bf.dv)
	// K and V as weights [T, hd], packed once; chunk r0 reads their first
	// nk rows (PrefixOut), as the forward does.
	kAll, err := bf.w[0].PrepareF32(bf.k[:seq*hd], seq, hd)
	if err != nil {
		return err
	}
	vAll, err := bf.w[1].PrepareF32(bf.v[:seq*hd], seq, hd)
	if err != nil {
		return err
	}
	sc32 := float32(sc)
	for r0 := 0; r0 < seq; r0 += attnChunkRows {
		nq := min(attnChunkRows, seq-r0)
		nk := r0 + nq // the keys the chunk's last query sees
		p, dp, ds := bf.p[:nq*nk], bf.dp[:nq*nk], bf.ds[:nq*nk]
		qc, doc := bf.q[r0*hd:(r0+nq)*hd], bf.do[r0*hd:(r0+nq)*hd]
		// S = Q·Kᵀ; dP = dO·Vᵀ.
		for _, pr := range []struct {
			y, x []float32
			w    *cpu.Dense
		}{{p, qc, kAll}, {dp, doc, vAll}} {
			d, err := pr.w.PrefixOut(nk)
			if err != nil {
				return err
			}
			if err := d.Linear(pr.y, pr.x, nq, nil, 1); err != nil {
				return err
			}
		}
		// Softmax per row over the visible keys, then dS (scaled).
		for t := 0; t < nq; t++ {
			i := r0 + t
			p, dp, ds := p[t*nk:(t+1)*nk], dp[t*nk:(t+1)*nk], ds[t*nk:(t+1)*nk]
			// P = softmax(sc·S) over the visible keys.
			for j := range p[:i+1] {
				p[j] *= sc32
			}
			sum := softmaxExp(p[:i+1], mask)
			if sum == 0 { // no visible key
				clear(p)
				clear(ds)
				continue
			}
			inv := 1 / sum
			for j, x := range p[:i+1] {
				p[j] = float32(float64(x) * inv)
			}
			var pdp float64
			for j, pj := range p[:i+1] {
				pdp += float64(pj) * float64(dp[j])
			}
			clear(p[i+1:])
			for j := 0; j <= i; j++ {
				if mask[j] != 0 {
					ds[j] = float32(float64(p[j]) * (float64(dp[j]) - pdp) * sc)
				} else {
					ds[j] = 0
				}
			}
			clear(ds[i+1:])
		}
		if gin[0] != nil { // dQ = dS·K: K [nk, hd] row-major is the [K, N] operand
			d, err := bf.w[2].PrepareKN(bf.k[:nk*hd], nk, hd)
			if err != nil {
				return err
			}
			if err := d.Linear(bf.prod[:nq*hd], ds[:nq*nk], nq, nil, 1); err != nil {
				return err
			}
			scatterAdd(gin[0].Data, bf.prod, r0, nq)
		}
		// addATB adds aᵀ·b ([nk, hd]; a [nq, nk], b [nq, hd] the [K, N]
		// operand) into sum.
		addATB := func(sum, a, b []float32) error {
			transposeInto(bf.tT, a, nq, nk, 1)
			d, err := bf.w[3].PrepareKN(b[:nq*hd], nq, hd)
			if err != nil {
				return err
			}
			return d.MulAdd(sum[:nk*hd], bf.tT[:nk*nq], nk, 1)
		}
		if gin[1] != nil { // dK = dSᵀ·Q
			if err := addATB(bf.dk, ds, qc); err != nil {
				return err
			}
		}
		if gin[2] != nil { // dV = Pᵀ·dO
			if err := addATB(bf.dv, p, doc); err != nil {
				return err
			}
		}
	}
	if gin[1] != nil {
		scatterAdd(gin[1].Data, bf.dk, 0, seq)
	}
	if gin[2] != nil {
		scatterAdd(gin[2].Data, bf.dv, 0, seq)
	}
	return nil
}

// Backward: with x̂ = (x-μ)/σ and g = gy·w,
// gx = (g - mean(g) - x̂·mean(g·x̂))/σ; gw += Σ_rows gy·x̂; gb += Σ_rows gy.
// Rows are spread over threads for gx (per-row float64 statistics); the
// parameter gradients are then summed per column over the rows in row
// order, columns spread over threads, so no result depends on the thread
// count.
func (s *layerNormGrad) Backward(c *Call, in []*Value, _ *Value, gout *Value, gin []*Value) error {
	x := in[0]
	d := s.dim
	rows := c.Rows()
	if rows == 0 || d == 0 {
		return nil
	}
	w, _ := s.wb()
	mean := make([]float64, rows)
	inv := make([]float64, rows)
	parallelRows(rows, c.Threads, func(lo, hi int) {
		for r := lo; r < hi; r++ {
			xr, gy := x.Row(r)[:d], gout.Row(r)[:d]
			var mu, vr float64
			for _, v := range xr {
				mu += float64(v)
			}
			mu /= float64(d)
			for _, v := range xr {
				t := float64(v) - mu
				vr += t * t
			}
			iv := 1 / math.Sqrt(vr/float64(d)+s.eps)
			mean[r], inv[r] = mu, iv
			if gin[0] == nil {
				continue
			}
			var mg, mgx float64
			if w != nil {
				w := w[:d]
				for i, v := range xr {
					g := float64(gy[i]) * float64(w[i])
					mg += g
					mgx += g * ((float64(v) - mu) * iv)
				}
			} else {
				for i, v := range xr {
					g := float64(gy[i])
					mg += g
					mgx += g * ((float64(v) - mu) * iv)
				}
			}
			mg /= float64(d)
			mgx /= float64(d)
			gx := gin[0].Row(r)[:d]
			if w != nil {
				w := w[:d]
				for i, v := range xr {
					xh := (float64(v) - mu) * iv
					gx[i] += float32((float64(gy[i])*float64(w[i]) - mg - xh*mgx) * iv)
				}
			} else {
				for i, v := range xr {
					xh := (float64(v) - mu) * iv
					gx[i] += float32((float64(gy[i]) - mg - xh*mgx) * iv)
				}
			}
		}
	})
	if s.w == nil && s.b == nil {
		return nil
	}
	const cb = 64
	parallelRows((d+cb-1)/cb, c.Threads, func(lo, hi int) {
		c0, c1 := lo*cb, min(hi*cb, d)
		for r := 0; r < rows; r++ {
			gy := gout.Row(r)[c0:c1]
			if s.w != nil {
				gw := s.w.Grad[c0:c1]
				xr := x.Row(r)[c0:c1]
				mu, iv := mean[r], inv[r]
				for i, g := range gy {
					gw[i] += float32(float64(g) * ((float64(xr[i]) - mu) * iv))
				}
			}
			if s.b != nil {
				gb := s.b.Grad[c0:c1]
				for i, g := range gy {
					gb[i] += g
				}
			}
		}
	})
	return nil
}
