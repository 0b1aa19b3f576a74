package cuda

import (
	"errors"
	"fmt"
	"unsafe"

	"github.com/slopeml/slope/cuda/driver"
	"github.com/slopeml/slope/cuda/sparselt"
	"github.com/slopeml/slope/format"
)

// SLoPe's sparse products in bf16 training (issue 8, step 2 of the plan
// in docs/CUDA.md): a 2:4 weight's forward and input-gradient products run
// on cuSPARSELt, from two compressed forms made once from their patterns
// and whose values are written in place, as BenchTrain does (see
// bench_train.go and package sparselt's CheckValues and VerifyValues):
//
//   - W's form holds the bf16 kept values the products read: the
//     devParam's act copy points into it (the portable values have the
//     layout of its values part), so AdamW's bf16 output and push's
//     conversion write it, and the generic kernels read it too;
//   - W_dpᵀ's form gets its values from W's (nm_pack_t24) after every
//     change of them, and its pattern compressed again when the transpose
//     mask changes.
//
// On by default in bf16 training when cuSPARSELt loaded; BF16SparseLtEnv=0
// turns it off. When a check refuses a layout or shape, the weight keeps
// the expanded products.

// BF16SparseLtEnv, set to 0, makes bf16 training run the 2:4 products
// expanded (one dense cuBLASLt product each) instead of on cuSPARSELt.
const BF16SparseLtEnv = "SLOPE_GPU_BF16_SPARSELT"

// nmForms are a 2:4 weight's two cuSPARSELt forms in training.
type nmForms struct {
	fwd *sparselt.Weight // W [rows, cols]; its values part is the devParam's act
	bwd *sparselt.Weight // W_dpᵀ [cols, rows]
}

// wantForms reports whether d gets cuSPARSELt forms.
func (b *Backend) wantForms(d *devParam) bool {
	nm := d.p.NM
	return b.ltTraining && nm != nil &&
		nm.Pattern == (format.NM{N: 2, M: 4}) && nm.Rows%4 == 0 && nm.TMask != nil &&
		sparselt.Supported(nm.Rows, nm.Cols) == nil && sparselt.Supported(nm.Cols, nm.Rows) == nil
}

// refused reports the errors after which a weight keeps the expanded
// products instead of failing: a layout or shape the checks refuse, a
// pattern cuSPARSELt does not take.
func refused(err error) bool {
	return errors.Is(err, sparselt.ErrValuesLayout) || errors.Is(err, sparselt.ErrNotPruned) || errors.Is(err, sparselt.ErrUnsupported)
}

// makeForms gives d its forms when the layout checks pass (nil error and
// no forms when one refuses). d's values and mask must be on the device.
// Call inside Do.
func (b *Backend) makeForms(d *devParam) (err error) {
	nm := d.p.NM
	rows, cols, n := nm.Rows, nm.Cols, len(d.p.Value)
	if err := b.sp.CheckValues(b.s); err != nil {
		if refused(err) {
			return nil
		}
		return err
	}
	if b.sp.ShapeRefused(rows, cols) != nil || b.sp.ShapeRefused(cols, rows) != nil {
		return nil
	}
	f := &nmForms{}
	defer func() {
		if f != nil { // not adopted
			err = errors.Join(err, f.destroy())
		}
		if refused(err) {
			err = nil // the expanded products stay
		}
	}()
	// The dense bf16 workspace, then the pattern's ones after it.
	dense, err := b.gradScratch(1, 4*rows*cols)
	if err != nil {
		return err
	}
	ones := dense.Add(2 * rows * cols)
	for _, c := range []struct {
		form      **sparselt.Weight
		transpose bool
	}{{&f.fwd, false}, {&f.bwd, true}} {
		if err := b.compressPattern24(c.form, dense, ones, d.idx, d.keep, rows, cols, c.transpose); err != nil {
			return err
		}
	}
	vals, err := f.fwd.Values()
	if err != nil {
		return err
	}
	// The layout check, once per shape, on values that are all nonzero
	// (an exactly-zero kept value would make cuSPARSELt's own compression,
	// the yardstick, differ from the pattern's): W's form, then W_dpᵀ's
	// packed from it, each against cuSPARSELt's compression of the
	// expanded weight.
	synth := make([]byte, 2*n)
	for i := 0; i < n; i++ {
		v := format.Float32ToBFloat16(1 + float32(i%251)/256)
		synth[2*i], synth[2*i+1] = byte(v), byte(v>>8)
	}
	if err := b.dev.SyncStream(b.s); err != nil {
		return err
	}
	if err := b.dev.CopyIn(vals, unsafe.Pointer(&synth[0]), len(synth)); err != nil {
		return err
	}
	if err := b.k.NMExpand(b.s, BF16, dense, vals, d.idx, rows, cols, 2, 4); err != nil {
		return err
	}
	if err := f.fwd.VerifyValues(b.s, dense); err != nil {
		return err
	}
	if err := b.packT24(f.bwd, vals, d.idx, d.keep, rows, cols); err != nil {
		return err
	}
	if err := b.k.NMExpandT(b.s, BF16, dense, vals, d.idx, d.keep, rows, cols, 2, 4); err != nil {
		return err
	}
	if err := f.bwd.VerifyValues(b.s, dense); err != nil {
		return err
	}
	// The weight's own values, W's form's values part becoming act.
	if err := b.dev.CopyDevice(vals, d.act, 2*n, b.s); err != nil {
		return err
	}
	if err := b.packT24(f.bwd, vals, d.idx, d.keep, rows, cols); err != nil {
		return err
	}
	if d.act != d.val && !d.actShared {
		if err := b.dev.Free(d.act); err != nil {
			return err
		}
	}
	d.act, d.actShared, d.forms = vals, true, f
	f = nil
	return nil
}

// compressPattern24 compresses the pattern of a 2:4 weight W [rows, cols]
// with portable indices idx, or with transpose that of W_dpᵀ [cols, rows]
// (transpose mask keep, one byte per kept value), into *form: 1.0 at every
// kept position, so that the metadata follows the mask even where a kept
// value is exactly zero. The pattern is written into dense (bf16 [rows,
// cols]) with ones (rows*cols/2 bf16) as its values. *form is made when
// nil and recompressed otherwise, which may move its values (fetch
// Values again). Call inside Do.
func (b *Backend) compressPattern24(form **sparselt.Weight, dense, ones, idx, keep driver.Ptr, rows, cols int, transpose bool) error {
	if err := b.k.Fill(b.s, BF16, ones, 1, rows*cols/2); err != nil {
		return err
	}
	n, k := rows, cols
	var err error
	if transpose {
		n, k = cols, rows
		err = b.k.NMExpandT(b.s, BF16, dense, ones, idx, keep, rows, cols, 2, 4)
	} else {
		err = b.k.NMExpand(b.s, BF16, dense, ones, idx, rows, cols, 2, 4)
	}
	if err != nil {
		return err
	}
	if *form != nil {
		return (*form).Recompress(b.s, dense)
	}
	if *form, err = b.sp.NewWeight(b.s, dense, n, k); err != nil {
		return fmt.Errorf("cuSPARSELt pattern [%d, %d]: %w", n, k, err)
	}
	return nil
}

// packT24 writes W_dpᵀ's values into its form bwd from W's bf16 kept
// values vals (nm_pack_t24; W [rows, cols], indices idx, mask keep).
func (b *Backend) packT24(bwd *sparselt.Weight, vals, idx, keep driver.Ptr, rows, cols int) error {
	dst, err := bwd.Values()
	if err != nil {
		return err
	}
	return b.k.NMPackT24(b.s, dst, vals, idx, keep, rows, cols)
}

// valuesChanged brings W_dpᵀ's form up to date after W's values changed
// (AdamW, a load), and after the transpose mask changed when maskChanged
// (its pattern compressed again first). Call inside Do.
func (b *Backend) valuesChanged(d *devParam, maskChanged bool) error {
	if d.forms == nil {
		return nil
	}
	what := "W_dpᵀ values (cuSPARSELt form)"
	if maskChanged {
		what = "W_dpᵀ pattern and values (cuSPARSELt form)"
	}
	return b.timed(what, func() error { return b.formsUpdate(d, maskChanged) })
}

func (b *Backend) formsUpdate(d *devParam, maskChanged bool) error {
	f, nm := d.forms, d.p.NM
	if maskChanged {
		dense, err := b.gradScratch(1, 4*nm.Rows*nm.Cols)
		if err != nil {
			return err
		}
		if err := b.compressPattern24(&f.bwd, dense, dense.Add(2*nm.Rows*nm.Cols), d.idx, d.keep, nm.Rows, nm.Cols, true); err != nil {
			return fmt.Errorf("param %q: %w", d.p.Name, err)
		}
	}
	return b.packT24(f.bwd, d.act, d.idx, d.keep, nm.Rows, nm.Cols)
}

func (f *nmForms) destroy() error {
	var errs []error
	for _, w := range []*sparselt.Weight{f.fwd, f.bwd} {
		if w != nil {
			errs = append(errs, w.Destroy())
		}
	}
	f.fwd, f.bwd = nil, nil
	return errors.Join(errs...)
}

// sparseFits reports whether w's product of m rows can run from x into y
// (tensors of this backend with ld widths): cuSPARSELt reads and writes
// padded rows.
func sparseFits(w *sparselt.Weight, m int, y *tensor, ldY int, x *tensor, ldX int) bool {
	pm := w.PadM(m)
	return pm <= x.capRows && pm <= y.capRows && w.Fits(m, y.p, ldY, x.p, ldX) == nil
}

// SparseLtForms reports how many of the 2:4 weights bound for training
// on this backend run their products on cuSPARSELt (lt), and how many
// 2:4 weights there are (all): the others run them expanded (float32
// activations, BF16SparseLtEnv=0, or a layout or shape the checks
// refused).
func (b *Backend) SparseLtForms() (lt, all int, err error) {
	err = b.dev.Do(func() error {
		for _, d := range b.params {
			if nm := d.p.NM; nm != nil && nm.Pattern == (format.NM{N: 2, M: 4}) {
				all++
				if d.forms != nil {
					lt++
				}
			}
		}
		return nil
	})
	return lt, all, err
}
