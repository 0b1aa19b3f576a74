package convert

import (
	"context"
	"errors"
	"fmt"
	"github.com/slopeml/slope/format/slopepb"
	"github.com/slopeml/slope/ops/cpu"
	"math"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/slopeml/slope/format"
)

// Pruning methods (Options.Method).
const (
	// MethodMagnitude keeps the N largest |w| of every group of M.
	MethodMagnitude = "magnitude"
	// MethodWanda keeps the N largest |w_ij|·‖X_j‖₂ (Sun et al., 2023,
	// "A Simple and Effective Pruning Approach for Large Language Models").
	MethodWanda = "wanda"
	// MethodSparseGPT is the OBS-based one-shot pruning with weight
	// updates of Frantar & Alistarh, 2023, "SparseGPT: Massive Language
	// Models Can Be Accurately Pruned in One-Shot".
	MethodSparseGPT = "sparsegpt"
)

// ParseMethod checks a pruning method name ("" is magnitude).
func ParseMethod(s string) (string, error) {
	switch s {
	case "", MethodMagnitude:
		return MethodMagnitude, nil
	case MethodWanda, MethodSparseGPT, MethodRandom:
		return s, nil
	}
	return "", fmt.Errorf("--method %q: want magnitude, wanda, sparsegpt or random", s)
}

// ColumnNorms returns ‖X_j‖₂ for every column j of the row-major
// [rows, cols] calibration inputs x (one row per token), in float64.
func ColumnNorms(x []float32, rows, cols int) []float64 {
	sq := make([]float64, cols)
	addColumnSquares(sq, x, rows, cols)
	sqrtAll(sq)
	return sq
}

// WandaMask returns the N:M keep mask of the row-major [rows, cols] weight
// w by Wanda's score |w_ij|·norms[j] (norms: ColumnNorms of the layer's
// calibration inputs): in every group of M consecutive elements of a row
// the N of largest score are kept, ties going to the lower index (as
// MagnitudeMask). A NaN score is an error.
func WandaMask(p format.NM, rows, cols int, w []float32, norms []float64) ([]bool, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if rows < 0 || cols < 0 || cols%p.M != 0 || len(w) != rows*cols || len(norms) != cols {
		return nil, fmt.Errorf("wanda mask %s: %d values, %d norms for shape [%d %d] (cols a multiple of %d): %w", p, len(w), len(norms), rows, cols, p.M, format.ErrShape)
	}
	keep := make([]bool, len(w))
	var bad atomic.Int64
	bad.Store(-1)
	parallel(rows, 16, func(lo, hi int) {
		var s [16]float64
		for r := lo; r < hi; r++ {
			for base := 0; base < cols; base += p.M {
				for j := 0; j < p.M; j++ {
					v := math.Abs(float64(w[r*cols+base+j])) * norms[base+j]
					if v != v {
						bad.CompareAndSwap(-1, int64(r*cols+base+j))
					}
					s[j] = v
				}
				keepTop(p, s[:p.M], keep[r*cols+base:r*cols+base+p.M])
			}
		}
	})
	if i := bad.Load(); i >= 0 {
		return nil, fmt.Errorf("wanda mask: NaN score at row %d, col %d", int(i)/cols, int(i)%cols)
	}
	return keep, nil
}

// keepTop sets keep[j] for the N largest scores of a group, ties going
// to the lower index.
func keepTop(p format.NM, s []float64, keep []bool) {
	for j := range s {
		beaten := 0
		for i := range s {
			if s[i] > s[j] || (s[i] == s[j] && i < j) {
				beaten++
			}
		}
		keep[j] = beaten < p.N
	}
}

// Hessian accumulates XᵀX over calibration inputs with D columns, in
// float64: the layer Hessian of SparseGPT is (2/N)·XᵀX.
type Hessian struct {
	D int
	// N is the number of rows (tokens) added.
	N int
	// Sum is XᵀX, row-major [D, D] (both triangles), of the rows
	// multiplied so far: Flush adds the ones Add held back.
	Sum []float64
	// pending holds rows Add has not multiplied yet (fewer than
	// hessianRows), row-major.
	pending []float32

	// SparseGPT's factor of the damped inverse, kept for the weights that
	// share these inputs (q, k and v); Add drops it.
	factor     []float64
	factorDamp float64
}

// NewHessian makes an empty accumulator for inputs of width d.
func NewHessian(d int) *Hessian { return &Hessian{D: d, Sum: make([]float64, d*d)} }

// Add adds the rows of the row-major [rows, D] x. The rows are
// multiplied in chunks of hessianRows whatever the calls' sizes (rows
// short of a chunk wait for the next call or Flush), so Sum does not
// depend on how the rows were split between calls, nor on the number of
// cores.
//
// The product XᵀX runs on the CPU backend's float32 GEMM (SIMD, all
// cores) per chunk (each entry a float32 dot product over a chunk's rows,
// as PyTorch's reference implementation computes H over a batch), in
// blocks of hessianBlock output rows to bound memory, and is accumulated
// into Sum in float64, symmetrised from the lower triangle.
func (h *Hessian) Add(x []float32, rows int) error {
	h.factor = nil
	d := h.D
	if rows == 0 || d == 0 {
		return nil
	}
	if len(x) < rows*d {
		return fmt.Errorf("hessian: %d values for %d rows of %d", len(x), rows, d)
	}
	h.N += rows
	chunk := hessianRows * d
	for x = x[:rows*d]; len(x) > 0; {
		if len(h.pending) == 0 && len(x) >= chunk { // whole chunks straight from x
			if err := h.add(x[:chunk], hessianRows); err != nil {
				return err
			}
			x = x[chunk:]
			continue
		}
		if h.pending == nil {
			h.pending = make([]float32, 0, chunk)
		}
		k := min(len(x), chunk-len(h.pending))
		h.pending, x = append(h.pending, x[:k]...), x[k:]
		if len(h.pending) == chunk {
			if err := h.Flush(); err != nil {
				return err
			}
		}
	}
	return nil
}

// Flush multiplies the rows Add held back into Sum; SparseGPT does (its
// factor's first step), other readers of Sum must.
func (h *Hessian) Flush() error {
	if len(h.pending) == 0 {
		return nil
	}
	err := h.add(h.pending, len(h.pending)/h.D)
	h.pending = h.pending[:0]
	return err
}

// hessianRows is the chunk of rows Hessian.Add multiplies at once: the
// transposes and the GEMM's panels are sized by a chunk, not by every
// calibration token at once.
const hessianRows = 2048

func (h *Hessian) add(x []float32, rows int) error {
	d := h.D
	// Xᵀ [d, rows]: the "weight" (d outputs over rows inputs) and the
	// input rows of y = Xᵀ·(Xᵀ)ᵀ.
	xt := make([]float32, d*rows)
	parallel(d, 16, func(lo, hi int) {
		for t := 0; t < rows; t++ {
			r := x[t*d : (t+1)*d]
			for j := lo; j < hi; j++ {
				xt[j*rows+t] = r[j]
			}
		}
	})
	raw := make([]byte, 4*len(xt))
	if err := format.EncodeFloats(slopepb.DType_FLOAT32, xt, raw); err != nil {
		return fmt.Errorf("hessian: %w", err)
	}
	gemm, err := cpu.PrepareDense(cpu.DenseWeight{DType: cpu.Float32, Out: d, In: rows, Data: raw})
	if err != nil {
		return fmt.Errorf("hessian: %w", err)
	}
	raw = nil
	blk := min(d, hessianBlock)
	y := make([]float32, blk*d)
	for a0 := 0; a0 < d; a0 += blk {
		a1 := min(a0+blk, d)
		yy := y[:(a1-a0)*d]
		if err := gemm.Linear(yy, xt[a0*rows:a1*rows], a1-a0, nil, 0); err != nil {
			return fmt.Errorf("hessian: %w", err)
		}
		for a := a0; a < a1; a++ {
			row := yy[(a-a0)*d : (a-a0+1)*d]
			for b := 0; b <= a; b++ {
				v := float64(row[b])
				h.Sum[a*d+b] += v
				if a != b {
					h.Sum[b*d+a] += v
				}
			}
		}
	}
	return nil
}

// hessianBlock is the number of rows of XᵀX one GEMM call produces.
const hessianBlock = 512

func dot64(a, b []float64) float64 {
	var s float64
	for i, v := range a {
		s += v * b[i]
	}
	return s
}

// SparseGPTOptions tune SparseGPT; zero values are the paper's defaults.
type SparseGPTOptions struct {
	// BlockSize is the number of columns processed together before the
	// lazy update of the later columns (0: 128, rounded down to a multiple
	// of M).
	BlockSize int
	// Damp is the fraction of mean(diag H) added to H's diagonal (0:
	// 0.01).
	Damp float64
	// Context, when set, stops the rows' work early when it is done (the
	// call then returns its error).
	Context context.Context
}

// ErrNotPositiveDefinite is wrapped when a damped Hessian has no Cholesky
// factorisation.
var ErrNotPositiveDefinite = errors.New("Hessian is not positive definite")

// SparseGPT prunes the row-major [rows, cols] weight w N:M along cols
// given the calibration Hessian h of its inputs (a Hessian accumulator,
// H = (2/N)·XᵀX), and returns the pruned weight with its remaining
// values updated, and its keep mask. w is not modified.
//
// As in the paper: columns whose inputs were always zero get H_jj = 1; a
// damping of Damp·mean(diag H) is added to the diagonal; U is the upper
// Cholesky factor of H⁻¹ (H⁻¹ = UᵀU), computed in float64 as the inverse
// of the "reversed" Cholesky factor of H (H = V·Vᵀ with V upper, so
// U = V⁻¹). Columns are processed in blocks of BlockSize; at the start
// of every group of M columns the mask of the group is chosen, per row,
// keeping the N largest w_c²/U_cc² (ties to the lower index); then each
// column c is quantised to its masked value q and the error
// (w_c − q)/U_cc is propagated to the block's later columns through row c
// of U (the OBS update); the block's errors update the later blocks in
// one batch. Rows are independent and are processed in parallel, in
// float64.
func SparseGPT(p format.NM, rows, cols int, w []float32, h *Hessian, o SparseGPTOptions) ([]float32, []bool, error) {
	if err := p.Validate(); err != nil {
		return nil, nil, err
	}
	if rows < 0 || cols < 0 || cols%p.M != 0 || len(w) != rows*cols || h == nil || h.D != cols {
		d := -1
		if h != nil {
			d = h.D
		}
		return nil, nil, fmt.Errorf("sparsegpt %s: %d values for shape [%d %d] (cols a multiple of %d), Hessian of width %d: %w", p, len(w), rows, cols, p.M, d, format.ErrShape)
	}
	if h.N == 0 {
		return nil, nil, errors.New("sparsegpt: the Hessian has no calibration rows")
	}
	for i, v := range w {
		if v != v || math.IsInf(float64(v), 0) {
			return nil, nil, fmt.Errorf("sparsegpt: non-finite weight at row %d, col %d", i/cols, i%cols)
		}
	}
	bs := o.BlockSize
	if bs <= 0 {
		bs = 128
	}
	bs = max(bs/p.M, 1) * p.M
	damp := o.Damp
	if damp == 0 {
		damp = 0.01
	}
	u, err := sparseGPTFactor(h, damp)
	if err != nil {
		return nil, nil, err
	}
	// A dead input (its column of X always zero) carries no information:
	// its weights are zeroed before the selection, as in the reference
	// algorithm, so they never win a group over a live input (H_jj = 1 for
	// them would otherwise give them an arbitrary score).
	var dead []int
	for j := 0; j < cols; j++ {
		if h.Sum[j*cols+j] == 0 {
			dead = append(dead, j)
		}
	}
	ws := make([]float32, len(w))
	keep := make([]bool, len(w))
	const chunk = 8 // rows sharing each pass over U
	nchunks := (rows + chunk - 1) / chunk
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), max(nchunks, 1)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]float64, chunk*cols)
			errs := make([]float64, chunk*bs)
			for {
				ci := int(next.Add(1)) - 1
				if ci >= nchunks || o.Context != nil && o.Context.Err() != nil {
					return
				}
				r0, r1 := ci*chunk, min((ci+1)*chunk, rows)
				sparseGPTRows(p, w[r0*cols:r1*cols], ws[r0*cols:r1*cols], keep[r0*cols:r1*cols], r1-r0, cols, u, bs, buf, errs, dead)
			}
		}()
	}
	wg.Wait()
	if o.Context != nil {
		if err := o.Context.Err(); err != nil {
			return nil, nil, err
		}
	}
	return ws, keep, nil
}

// sparseGPTFactor returns U, the upper Cholesky factor of the inverse of
// the damped H = (2/N)·XᵀX, row-major [D, D] (zero below the diagonal),
// computed once per Hessian and damping (read-only to the callers).
func sparseGPTFactor(h *Hessian, damp float64) ([]float64, error) {
	if h.factor != nil && h.factorDamp == damp {
		return h.factor, nil
	}
	if err := h.Flush(); err != nil { // Sum complete (for SparseGPT's reads after this too)
		return nil, err
	}
	u, err := sparseGPTFactorOf(h, damp)
	if err != nil {
		return nil, err
	}
	h.factor, h.factorDamp = u, damp
	return u, nil
}

func sparseGPTFactorOf(h *Hessian, damp float64) ([]float64, error) {
	d := h.D
	a := make([]float64, d*d)
	scale := 2 / float64(h.N)
	for i, v := range h.Sum {
		a[i] = scale * v
	}
	var mean float64
	for j := 0; j < d; j++ {
		if a[j*d+j] == 0 {
			a[j*d+j] = 1 // a dead input: no information about its column
		}
		mean += a[j*d+j]
	}
	mean /= float64(d)
	for j := 0; j < d; j++ {
		a[j*d+j] += damp * mean
	}
	if err := reverseCholesky(a, d); err != nil {
		return nil, err
	}
	invertUpper(a, d)
	return a, nil
}

// reverseCholesky overwrites the symmetric positive definite a [d, d]
// with the upper triangular V of a = V·Vᵀ (the Cholesky factor of a with
// its index order reversed); the strict lower triangle is zeroed.
func reverseCholesky(a []float64, d int) error {
	for j := d - 1; j >= 0; j-- {
		rj := a[j*d+j+1 : (j+1)*d]
		s := a[j*d+j] - dot64(rj, rj)
		if !(s > 0) || math.IsInf(s, 0) {
			return fmt.Errorf("%w (pivot %d is %g)", ErrNotPositiveDefinite, j, s)
		}
		vjj := math.Sqrt(s)
		a[j*d+j] = vjj
		// V[i][j] = (a[i][j] − Σ_{k>j} V[i][k]·V[j][k]) / V[j][j], i < j.
		parallel(j, 64, func(lo, hi int) {
			for i := lo; i < hi; i++ {
				ri := a[i*d+j+1 : (i+1)*d]
				a[i*d+j] = (a[i*d+j] - dot64(ri, rj)) / vjj
			}
		})
	}
	for i := 1; i < d; i++ {
		clear(a[i*d : i*d+i])
	}
	return nil
}

// invertUpper overwrites the upper triangular, invertible v [d, d] with
// its inverse (upper triangular too): row i of V⁻¹ is
// (e_i − Σ_{k>i} V[i][k]·(V⁻¹)[k][:]) / V[i][i], computed from the last
// row up.
func invertUpper(v []float64, d int) {
	row := make([]float64, d)
	for i := d - 1; i >= 0; i-- {
		vii := v[i*d+i]
		vi := v[i*d : (i+1)*d]
		parallel(d-i, 64, func(lo, hi int) {
			lo, hi = lo+i, hi+i
			seg := row[lo:hi]
			clear(seg)
			if i >= lo && i < hi {
				row[i] = 1
			}
			for k := i + 1; k < d; k++ {
				c := vi[k]
				if c == 0 {
					continue
				}
				// Row k of V⁻¹ is zero before column k.
				from := max(lo, k)
				if from >= hi {
					break
				}
				uk := v[k*d+from : k*d+hi]
				dst := row[from:hi]
				for t, x := range uk {
					dst[t] -= c * x
				}
			}
			for t := lo; t < hi; t++ {
				row[t] /= vii
			}
		})
		copy(vi[i:], row[i:])
	}
}

// sparseGPTRows runs SparseGPT on nr rows of w (row-major, cols wide),
// writing the pruned rows to ws and their masks to keep. buf holds the
// rows in float64 and errs the current block's scaled errors. The dead
// columns' weights start at zero.
func sparseGPTRows(p format.NM, w, ws []float32, keep []bool, nr, cols int, u []float64, bs int, buf, errs []float64, dead []int) {
	for i, v := range w[:nr*cols] {
		buf[i] = float64(v)
	}
	for r := 0; r < nr; r++ {
		for _, j := range dead {
			buf[r*cols+j] = 0
		}
	}
	var score [16]float64
	for i1 := 0; i1 < cols; i1 += bs {
		i2 := min(i1+bs, cols)
		nb := i2 - i1
		for c := i1; c < i2; c++ {
			uc := u[c*cols : (c+1)*cols]
			if (c-i1)%p.M == 0 {
				// Choose the group's mask from the current values.
				for r := 0; r < nr; r++ {
					row := buf[r*cols:]
					for j := 0; j < p.M; j++ {
						dj := u[(c+j)*cols+c+j]
						score[j] = row[c+j] * row[c+j] / (dj * dj)
					}
					keepTop(p, score[:p.M], keep[r*cols+c:r*cols+c+p.M])
				}
			}
			dc := uc[c]
			for r := 0; r < nr; r++ {
				row := buf[r*cols : (r+1)*cols]
				e := 0.0
				if !keep[r*cols+c] {
					e = row[c] / dc
					row[c] = 0
				}
				errs[r*bs+c-i1] = e
				if e == 0 {
					continue
				}
				// OBS update of the block's later columns.
				rest := row[c+1 : i2]
				for t, x := range uc[c+1 : i2] {
					rest[t] -= e * x
				}
			}
		}
		if i2 == cols {
			break
		}
		// Lazy batch update of the later blocks: W[:, i2:] −= E·U[i1:i2, i2:].
		for k := 0; k < nb; k++ {
			uk := u[(i1+k)*cols+i2 : (i1+k+1)*cols]
			for r := 0; r < nr; r++ {
				e := errs[r*bs+k]
				if e == 0 {
					continue
				}
				dst := buf[r*cols+i2 : (r+1)*cols]
				for t, x := range uk {
					dst[t] -= e * x
				}
			}
		}
	}
	for i := range ws[:nr*cols] {
		if keep[i] {
			ws[i] = float32(buf[i])
		}
	}
}

// LayerError returns ‖X·Wᵀ − X·W_sᵀ‖_F for the row-major calibration
// inputs x [n, cols] and weights w, ws [rows, cols], in float64 (for
// tests and reports; O(n·rows·cols)).
func LayerError(x []float32, n int, w, ws []float32, rows, cols int) float64 {
	sums := make([]float64, rows)
	parallel(rows, 16, func(lo, hi int) {
		diff := make([]float64, cols)
		for o := lo; o < hi; o++ {
			for j := range diff {
				diff[j] = float64(w[o*cols+j]) - float64(ws[o*cols+j])
			}
			var s float64
			for t := 0; t < n; t++ {
				var y float64
				xr := x[t*cols : (t+1)*cols]
				for j, v := range xr {
					y += float64(v) * diff[j]
				}
				s += y * y
			}
			sums[o] = s
		}
	})
	var s float64
	for _, v := range sums {
		s += v
	}
	return math.Sqrt(s)
}
