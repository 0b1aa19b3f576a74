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
// steps). cuSPARSELt's compress runs at about a twentieth of memory
// speed (2.3 ms for a 20480 x 5120 bf16 weight on an H200, against
// 0.6 ms for the AdamW pass over the same weight), so a trainer that
// compresses every step loses what the sparse products gain. NVIDIA does
// not document the compressed form; probing cuSPARSELt 0.8.0 (H200,
// both layouts, 32 x 64 to 5120 x 20480, compressing matrices whose kept
// values encode their own position) showed:
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
// transpose's). Because the layout is internal to the library,
// Handle.CheckValues verifies it on the device, for the handle's layout,
// before Weight.Values hands out the address; callers fall back to
// Recompress when it fails.

// ErrValuesLayout is wrapped when the compressed form's values part is
// not laid out as this package's documentation says (another
// cuSPARSELt), or has not been checked.
var ErrValuesLayout = errors.New("sparselt: compressed values layout not verified")

// CheckValues verifies the values layout of the handle's current Layout
// on the device (once per layout; later calls return the first result):
// it compresses a random 64 x 128 weight with empty, one-value and
// two-value groups, compares the values part with the layout above and
// the metadata with that of the same pattern compressed from other
// values. Call inside Do.
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
	err := h.checkValues(s)
	if err != nil {
		err = fmt.Errorf("%w (%s): %w", ErrValuesLayout, layout, err)
	}
	h.mu.Lock()
	if h.valuesChecked == nil {
		h.valuesChecked = map[Layout]error{}
	}
	h.valuesChecked[layout] = err
	h.mu.Unlock()
	return err
}

func (h *Handle) checkValues(s driver.Stream) error {
	const N, K = 64, 128
	r := rand.New(rand.NewPCG(2, 4))
	dense := make([]uint16, N*K)   // random nonzero values
	pattern := make([]uint16, N*K) // 1.0 at the same positions
	want := make([]uint16, N*K/2)
	for g := 0; g < N*K/4; g++ {
		var cols []int
		switch g % 4 { // two kept values mostly; some groups one or none
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
		w, err := h.NewWeight(s, p, N, K)
		if err != nil {
			return nil, err
		}
		defer w.Destroy()
		out := make([]byte, w.bytes)
		return out, h.d.CopyOut(unsafe.Pointer(&out[0]), w.comp, len(out))
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
		return fmt.Errorf("compressed form of %d bytes, smaller than its %d bytes of values", len(got), vb)
	}
	wantB := unsafe.Slice((*byte)(unsafe.Pointer(&want[0])), vb)
	if !bytes.Equal(got[:vb], wantB) {
		i := 0
		for got[i] == wantB[i] {
			i++
		}
		return fmt.Errorf("values part differs from the row-packed layout at byte %d", i)
	}
	if !bytes.Equal(got[vb:], fromPattern[vb:]) {
		return fmt.Errorf("metadata depends on the values, not only on the pattern")
	}
	return nil
}

// Values returns the address of w's values part (N·K/2 bf16, laid out as
// the package documentation says), which the caller may overwrite in
// place while the pattern stays that of the last compression. It fails
// with ErrValuesLayout unless Handle.CheckValues passed for w's layout.
func (w *Weight) Values() (driver.Ptr, error) {
	if w == nil || w.h == nil {
		return 0, fmt.Errorf("sparselt: Values of a destroyed weight")
	}
	w.h.mu.Lock()
	err, done := w.h.valuesChecked[w.layout]
	w.h.mu.Unlock()
	if !done {
		return 0, fmt.Errorf("%w: %v: call Handle.CheckValues first", ErrValuesLayout, w)
	}
	if err != nil {
		return 0, err
	}
	return w.comp, nil
}
