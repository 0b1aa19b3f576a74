package kernels

import (
	"slices"

	"github.com/slopeml/slope/cuda/driver"
)

// Launchers of the training ops' backward kernels (package ops' CPU
// GradSteps are the reference). t is the activation type (F32 or BF16),
// which activation gradients share; parameter gradients are fp32. Each
// adds into its gradient outputs and none uses atomics, so a gradient has
// the same bits on every run.

// backwardNames are the backward kernels' entry points (in Names).
var backwardNames = func() []string {
	names := []string{"col_sum_f32"}
	for _, t := range []string{"f32", "bf16"} {
		for _, k := range []string{"fill", "act_bwd", "layernorm_bwd", "col_sum_parts", "layernorm_bwd_parts", "embedding_bwd",
			"softmax_bwd", "cross_entropy"} {
			names = append(names, k+"_"+t)
		}
	}
	return names
}()

// colSumChunk is how many rows one thread of the column sums' first pass
// adds up.
const colSumChunk = 128

// ColSumParts is the number of fp32 values of scratch ColSum needs for
// rows x cols (LayerNormBackward: twice that).
func ColSumParts(rows, cols int) int { return max((rows+colSumChunk-1)/colSumChunk, 1) * cols }

// Fill sets n values of type t at p to v (rounded to t).
func (k *Set) Fill(s driver.Stream, t DType, p driver.Ptr, v float32, n int) error {
	a := &args{kernel: "fill_" + suffix(t)}
	a.dtype("T", t)
	a.pos("n", n)
	a.ptr("p", p)
	nn := a.fits("n", n)
	// 16 bytes per thread (the kernel's aligned path).
	return k.launch(a, a.kernel, driver.D1(blocks1D((nn*int64(t.Size())+15)/16)), driver.D1(threads), 0, s, p, v, nn)
}

// ActBackward adds gy[i]·act'(x[i]) into gx[i] for n elements of type t.
func (k *Set) ActBackward(s driver.Stream, t DType, gx, gy, x driver.Ptr, n int, act Act) error {
	a := &args{kernel: "act_bwd_" + suffix(t)}
	a.dtype("T", t)
	a.pos("n", n)
	a.ptr("gx", gx)
	a.ptr("gy", gy)
	a.ptr("x", x)
	a.act(act)
	nn := a.fits("n", n)
	return k.launch(a, a.kernel, driver.D1(blocks1D(nn)), driver.D1(threads), 0, s, gx, gy, x, nn, int32(act))
}

// LayerNormBackward adds LayerNorm's input gradient into gx [rows, dim]
// given gy and the forward's input in (all of type t), and its parameter
// gradients into ggamma and gbeta (fp32 [dim]; 0 skips both). gamma is
// the forward's fp32 [dim] scale or 0 (ones). stats (2*rows) and parts
// (2*ColSumParts(rows, dim)) are fp32 scratch.
func (k *Set) LayerNormBackward(s driver.Stream, t DType, gx, ggamma, gbeta, stats, parts, gy, in, gamma driver.Ptr, rows, dim int, eps float32) error {
	a := &args{kernel: "layernorm_bwd_" + suffix(t)}
	a.dtype("T", t)
	a.pos("rows", rows)
	a.pos("dim", dim)
	a.ptr("gx", gx)
	a.ptr("stats", stats)
	a.ptr("gy", gy)
	a.ptr("in", in)
	a.eps(eps)
	if (ggamma == 0) != (gbeta == 0) {
		a.fail("ggamma and gbeta must both be set or both be 0")
	}
	if ggamma != 0 {
		a.ptr("parts", parts)
	}
	r, dm := a.i32("rows", rows), a.i32("dim", dim)
	a.fits("in", rows, dim)
	if err := k.launch(a, a.kernel, driver.D1(rows), driver.D1(threads), 0, s, gx, stats, gy, in, gamma, r, dm, eps); err != nil {
		return err
	}
	if ggamma == 0 {
		return nil
	}
	chunks, grid := colSumGrid(rows, dim)
	p := &args{kernel: "layernorm_bwd_parts_" + suffix(t)}
	if err := k.launch(p, p.kernel, grid, driver.D1(threads), 0, s, parts, gy, in, stats, r, dm, int32(colSumChunk)); err != nil {
		return err
	}
	half := parts.Add(4 * chunks * dim)
	for _, c := range []struct{ out, parts driver.Ptr }{{ggamma, parts}, {gbeta, half}} {
		if err := k.colSumParts(s, c.out, c.parts, chunks, dim); err != nil {
			return err
		}
	}
	return nil
}

// colSumGrid is the launch of a column sums' first pass over rows x
// cols (col_sum_parts, layernorm_bwd_parts): a block of threads columns
// per chunk of colSumChunk rows, each chunk's sums one row of parts.
func colSumGrid(rows, cols int) (chunks int, grid driver.Dim3) {
	chunks = (rows + colSumChunk - 1) / colSumChunk
	return chunks, driver.Dim3{X: uint32((cols + threads - 1) / threads), Y: uint32(chunks), Z: 1}
}

// colSumParts adds the chunks x cols parts' column sums into out.
func (k *Set) colSumParts(s driver.Stream, out, parts driver.Ptr, chunks, cols int) error {
	a := &args{kernel: "col_sum_f32"}
	return k.launch(a, a.kernel, driver.D1((cols+threads-1)/threads), driver.D1(threads), 0, s, out, parts, int32(chunks), int32(cols))
}

// ColSum adds the column sums of y [rows, cols] (type t, row stride ldy)
// into out (fp32 [cols]), in an order fixed by rows (chunks of rows, then
// the chunks in order): a bias gradient. parts is ColSumParts(rows,
// cols) fp32 of scratch.
func (k *Set) ColSum(s driver.Stream, t DType, out, y, parts driver.Ptr, ldy, rows, cols int) error {
	a := &args{kernel: "col_sum_parts_" + suffix(t)}
	a.dtype("T", t)
	a.pos("rows", rows)
	a.pos("cols", cols)
	a.ld("ldy", ldy, cols)
	a.ptr("out", out)
	a.ptr("y", y)
	a.ptr("parts", parts)
	a.fits("y", rows, ldy)
	l, r, c := a.i32("ldy", ldy), a.i32("rows", rows), a.i32("cols", cols)
	chunks, grid := colSumGrid(rows, cols)
	if err := k.launch(a, a.kernel, grid, driver.D1(threads), 0, s, parts, y, l, r, c, int32(colSumChunk)); err != nil {
		return err
	}
	return k.colSumParts(s, out, parts, chunks, cols)
}

// EmbeddingBackward adds rows of gy (type t, [*, dim]) into rows of the
// table gradient g (fp32 [*, dim]): table row keys[u] gets gy's rows
// rows[start[u]] .. rows[start[u+1]-1], in that order (keys distinct; all
// int32 device arrays of n, n+1 and start[n] entries, grouped on the host
// by EmbeddingGroups).
func (k *Set) EmbeddingBackward(s driver.Stream, t DType, g, gy, keys, start, rows driver.Ptr, n, dim int) error {
	a := &args{kernel: "embedding_bwd_" + suffix(t)}
	a.dtype("T", t)
	a.pos("n", n)
	a.pos("dim", dim)
	for _, p := range []struct {
		n string
		p driver.Ptr
	}{{"g", g}, {"gy", gy}, {"keys", keys}, {"start", start}, {"rows", rows}} {
		a.ptr(p.n, p.p)
	}
	nn, dm := a.i32("n", n), a.i32("dim", dim)
	return k.launch(a, a.kernel, driver.D1(n), driver.D1(min(threads, roundUp(dim, 32))), 0, s, g, gy, keys, start, rows, nn, dm)
}

// EmbeddingGroups groups rows by key for EmbeddingBackward: the distinct
// keys in increasing order, start offsets (len(keys)+1) and the row
// numbers of each key in increasing order, concatenated.
func EmbeddingGroups(keyOfRow []int32) (keys, start, rows []int32) {
	count := map[int32]int32{}
	for _, k := range keyOfRow {
		count[k]++
	}
	for k := range count {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	start = make([]int32, len(keys)+1)
	at := map[int32]int32{}
	for i, k := range keys {
		at[k] = start[i]
		start[i+1] = start[i] + count[k]
	}
	rows = make([]int32, len(keyOfRow))
	for r, k := range keyOfRow {
		rows[at[k]] = int32(r)
		at[k]++
	}
	return keys, start, rows
}

// SoftmaxBackward writes ds = scale·p ⊙ (dp − Σ_j p·dp) per row of cols
// values: the gradient of the scores of a softmax whose probabilities are
// p, given dp = ∂L/∂p. p and ds [rows, cols] are of type t, dp fp32 (for
// F32, ds may alias dp).
func (k *Set) SoftmaxBackward(s driver.Stream, t DType, ds, p, dp driver.Ptr, rows, cols int, scale float32) error {
	a := &args{kernel: "softmax_bwd_" + suffix(t)}
	a.dtype("T", t)
	a.pos("rows", rows)
	a.pos("cols", cols)
	a.ptr("ds", ds)
	a.ptr("p", p)
	a.ptr("dp", dp)
	a.fits("p", rows, cols)
	r, c := a.i32("rows", rows), a.i32("cols", cols)
	return k.launch(a, a.kernel, driver.D1(rows), driver.D1(threads), 0, s, ds, p, dp, r, c, scale)
}

// CrossEntropy computes the next-token loss of each row of the logits y
// [rows, vocab] of type t: loss[r] (fp64 [rows]) = logsumexp(y[r]) −
// y[r][target[r]], 0 where target[r] < 0 (target: int32 [rows], not
// range-checked on the device). With grad it overwrites y with the
// gradient of scale·Σ loss (zero rows where target[r] < 0).
func (k *Set) CrossEntropy(s driver.Stream, t DType, y, loss, target driver.Ptr, rows, vocab int, scale float64, grad bool) error {
	a := &args{kernel: "cross_entropy_" + suffix(t)}
	a.dtype("T", t)
	a.pos("rows", rows)
	a.pos("vocab", vocab)
	a.ptr("y", y)
	a.ptr("loss", loss)
	a.ptr("target", target)
	a.align("loss", loss, 8)
	a.fits("y", rows, vocab)
	g := int32(0)
	if grad {
		g = 1
	}
	r, v := a.i32("rows", rows), a.i32("vocab", vocab)
	return k.launch(a, a.kernel, driver.D1(rows), driver.D1(threads), 0, s, y, loss, target, r, v, scale, g)
}
