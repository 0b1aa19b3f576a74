package sparselt

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"unsafe"

	"github.com/slopeml/slope/cuda/driver"
)

// # The values part of the compressed form
//
// Training changes a 2:4 weight's values every step and its pattern
// rarely (W's never; the double-pruned transpose's every --mask-refresh
// steps). cuSPARSELt's compress runs at about 150 GB/s, a thirtieth of
// the H200's memory bandwidth (2.3 ms for a 20480 x 5120 bf16 weight,
// against 0.6 ms for the AdamW pass over the same weight), so a trainer
// that compresses every step loses what the sparse products gain. NVIDIA
// does not document the compressed form. Probing cuSPARSELt 0.8.0 on an
// H200 (compressing matrices whose kept values encode their own
// position: both layouts from 32 x 64 to 4096 x 1024, and the column
// layout at 5120 x 20480 with full groups) showed:
//
//   - the first N·K/2 bf16 of the form are W's kept values row by row:
//     row r, group g (columns 4g..4g+3) in elements r·K/2 + 2g and
//     r·K/2 + 2g + 1;
//   - a group's two kept values come in increasing column order; a group
//     with one nonzero holds it in the second element when it is in
//     column 4g+3 and in the first otherwise; unused elements are 0;
//   - the rest of the form (the metadata) depends only on which entries
//     are nonzero, not on their values.
//
// So once a weight is compressed from its pattern (any nonzero value at
// every kept position), its values can be written in place (the portable
// 2:4 values are exactly this order; kernels.NMPackT24 writes the
// transpose's). Because the layout is internal to the library, it is
// checked twice before a caller relies on it: Handle.CheckValues on
// small weights of several shapes (once per layout, before Weight.Values
// hands out an address), and Weight.VerifyValues on the caller's first
// weight of each shape, against cuSPARSELt's own compression of it.
// Callers fall back to Recompress when either fails.

// ErrValuesLayout is wrapped when the compressed form's values part is
// not laid out as this package's documentation says (another
// cuSPARSELt, or a shape the check has not seen), or has not been
// checked.
var ErrValuesLayout = errors.New("sparselt: compressed values layout not verified")

// valuesKey is a layout and weight shape VerifyValues has seen.
type valuesKey struct {
	layout Layout
	N, K   int
}

// errMismatch marks the check failures that are verdicts on the layout
// (cached, wrapped in ErrValuesLayout), as opposed to failed device
// calls (returned as they are, not cached).
type errMismatch struct{ msg string }

func (e *errMismatch) Error() string { return e.msg }

// CheckValues verifies the values layout of the handle's current Layout
// on the device, once per layout: for weights of 64 x 128, 96 x 160,
// 160 x 288 and 544 x 1056 (one and several tiles of any plausible
// blocking, K/2 not a multiple of 64), with empty, one-value and
// two-value groups, it compares the values part with the layout above
// and the metadata with that of the same pattern compressed from other
// values. A mismatch is an error wrapping ErrValuesLayout and is
// remembered; a failed device call is returned as it is and the check
// runs again next time. Call inside Do.
func (h *Handle) CheckValues(s driver.Stream) error {
	if h == nil || h.h == nil {
		return fmt.Errorf("sparselt: CheckValues on a destroyed handle")
	}
	layout := h.Layout
	h.mu.Lock()
	res, done := h.valuesChecked[layout]
	h.mu.Unlock()
	if done {
		return res
	}
	var err error
	for i, sh := range [][2]int{{64, 128}, {96, 160}, {160, 288}, {544, 1056}} {
		if err = h.checkValues(s, layout, sh[0], sh[1], uint64(i)); err != nil {
			break
		}
	}
	var mm *errMismatch
	if err != nil && !errors.As(err, &mm) {
		return fmt.Errorf("sparselt: values layout check (%s): %w", layout, err)
	}
	if err != nil {
		err = fmt.Errorf("%w (%s): %w", ErrValuesLayout, layout, err)
	}
	h.mu.Lock()
	h.valuesChecked[layout] = err
	h.mu.Unlock()
	return err
}

// checkValues is CheckValues on one random N x K weight.
func (h *Handle) checkValues(s driver.Stream, layout Layout, N, K int, seed uint64) error {
	r := rand.New(rand.NewPCG(2, 4+seed))
	dense := make([]uint16, N*K)   // random nonzero values
	pattern := make([]uint16, N*K) // 1.0 at the same positions
	want := make([]uint16, N*K/2)
	for g := 0; g < N*K/4; g++ {
		var cols []int
		switch r.IntN(4) { // two kept values mostly; some groups one or none
		case 0, 1:
			p := r.Perm(4)[:2]
			cols = []int{min(p[0], p[1]), max(p[0], p[1])}
		case 2:
			cols = []int{r.IntN(4)}
		}
		for i, c := range cols {
			v := 0x3F80 | uint16(1+r.IntN(0x7F)) | uint16(r.IntN(2))<<15
			dense[4*g+c], pattern[4*g+c] = v, 0x3F80
			slot := i
			if len(cols) == 1 && c == 3 {
				slot = 1
			}
			want[2*g+slot] = v
		}
	}
	compress := func(bits []uint16) ([]byte, error) {
		p, err := h.d.Alloc(2 * len(bits))
		if err != nil {
			return nil, err
		}
		defer h.d.Free(p)
		if err := h.d.CopyIn(p, unsafe.Pointer(&bits[0]), 2*len(bits)); err != nil {
			return nil, err
		}
		w, err := h.newWeight(s, p, N, K, layout)
		if err != nil {
			return nil, err
		}
		defer w.Destroy()
		return w.download()
	}
	got, err := compress(dense)
	if err != nil {
		return err
	}
	fromPattern, err := compress(pattern)
	if err != nil {
		return err
	}
	vb := N * K // bytes of the values part
	if len(got) < vb {
		return &errMismatch{fmt.Sprintf("%d x %d: compressed form of %d bytes, smaller than its %d bytes of values", N, K, len(got), vb)}
	}
	wantB := unsafe.Slice((*byte)(unsafe.Pointer(&want[0])), vb)
	if !bytes.Equal(got[:vb], wantB) {
		i := 0
		for got[i] == wantB[i] {
			i++
		}
		return &errMismatch{fmt.Sprintf("%d x %d: values part differs from the row-packed layout at byte %d", N, K, i)}
	}
	if !bytes.Equal(got[vb:], fromPattern[vb:]) {
		return &errMismatch{fmt.Sprintf("%d x %d: metadata depends on the values, not only on the pattern", N, K)}
	}
	return nil
}

// download copies w's compressed form to the host (synchronous).
func (w *Weight) download() ([]byte, error) {
	out := make([]byte, w.bytes)
	if err := w.h.d.Synchronize(); err != nil {
		return nil, err
	}
	return out, w.h.d.CopyOut(unsafe.Pointer(&out[0]), w.comp, len(out))
}

// Values returns the address of w's values part (N·K/2 bf16, laid out as
// the package documentation says), which the caller may overwrite in
// place while the pattern stays that of the last compression. It fails
// with ErrValuesLayout unless Handle.CheckValues passed for w's layout,
// or when VerifyValues found w's shape laid out otherwise.
func (w *Weight) Values() (driver.Ptr, error) {
	if w == nil || w.h == nil {
		return 0, fmt.Errorf("sparselt: Values of a destroyed weight")
	}
	w.h.mu.Lock()
	err, done := w.h.valuesChecked[w.layout]
	shapeErr := w.h.valuesShapes[valuesKey{w.layout, w.N, w.K}]
	w.h.mu.Unlock()
	switch {
	case !done:
		return 0, fmt.Errorf("%w: %v: call Handle.CheckValues first", ErrValuesLayout, w)
	case err != nil:
		return 0, err
	case shapeErr != nil:
		return 0, shapeErr
	}
	return w.comp, nil
}

// ShapeRefused returns the error VerifyValues remembered for a weight of
// N x K in the handle's current layout (nil when it passed or has not
// run), so that a caller can skip the in-place path before building it.
func (h *Handle) ShapeRefused(N, K int) error {
	if h == nil {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.valuesShapes[valuesKey{h.Layout, N, K}]
}

// VerifyValues checks, once per layout and shape, a form whose values
// were written in place: it compresses dense (the same weight expanded,
// row-major bf16 [N,K] on the device) with cuSPARSELt into a scratch
// form and compares the two byte for byte (inside Do; it waits for s). A
// mismatch wraps ErrValuesLayout and is remembered for the shape, so that
// Values refuses later weights of it. A kept value that is exactly zero
// makes cuSPARSELt's metadata differ from the pattern's, which reads as
// a mismatch: the caller then recompresses, which is slower, not wrong.
func (w *Weight) VerifyValues(s driver.Stream, dense driver.Ptr) error {
	if w == nil || w.h == nil {
		return fmt.Errorf("sparselt: VerifyValues of a destroyed weight")
	}
	h, key := w.h, valuesKey{w.layout, w.N, w.K}
	h.mu.Lock()
	res, done := h.valuesShapes[key]
	h.mu.Unlock()
	if done {
		return res
	}
	ref, err := h.newWeight(s, dense, w.N, w.K, w.layout)
	if err != nil {
		return fmt.Errorf("sparselt: verify values of %v: %w", w, err)
	}
	want, err := ref.download()
	if derr := ref.Destroy(); err == nil {
		err = derr
	}
	if err != nil {
		return fmt.Errorf("sparselt: verify values of %v: %w", w, err)
	}
	got, err := w.download()
	if err != nil {
		return fmt.Errorf("sparselt: verify values of %v: %w", w, err)
	}
	if !bytes.Equal(got, want) {
		res = fmt.Errorf("%w: %v: the form written in place differs from cuSPARSELt's compression of the same weight", ErrValuesLayout, w)
	}
	h.mu.Lock()
	h.valuesShapes[key] = res
	h.mu.Unlock()
	return res
}
