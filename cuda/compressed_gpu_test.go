package cuda

import (
	"fmt"
	"unsafe"

	"github.com/slopeml/slope/cuda/driver"
	"github.com/slopeml/slope/cuda/sparselt"
)

// formBytes copies a compressed form off the device.
func formBytes(b *Backend, w *sparselt.Weight) ([]byte, error) {
	p, err := w.Values()
	if err != nil {
		return nil, err
	}
	raw := make([]byte, w.Bytes())
	if err := b.dev.SyncStream(b.s); err != nil {
		return nil, err
	}
	return raw, b.dev.CopyOut(unsafe.Pointer(&raw[0]), p, len(raw))
}

// formsDiffer names which of a 2:4 weight's forms written in place (fwd:
// W [rows, cols]; bwd: W_dpᵀ [cols, rows]) differ, byte for byte, from
// cuSPARSELt's own compression of the weight expanded from its bf16 kept
// values vals, indices idx and transpose mask keep (through the bf16
// workspace dense, rows*cols). Call inside Do.
func formsDiffer(b *Backend, fwd, bwd *sparselt.Weight, dense, vals, idx, keep driver.Ptr, rows, cols int) ([]string, error) {
	var differ []string
	for _, f := range []struct {
		name   string
		form   *sparselt.Weight
		n, k   int
		expand func() error
	}{
		{"W", fwd, rows, cols, func() error { return b.k.NMExpand(b.s, BF16, dense, vals, idx, rows, cols, 2, 4) }},
		{"W_dpᵀ", bwd, cols, rows, func() error { return b.k.NMExpandT(b.s, BF16, dense, vals, idx, keep, rows, cols, 2, 4) }},
	} {
		got, err := formBytes(b, f.form)
		if err != nil {
			return nil, err
		}
		if err := f.expand(); err != nil {
			return nil, err
		}
		ref, err := b.sp.NewWeight(b.s, dense, f.n, f.k)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f.name, err)
		}
		want, err := formBytes(b, ref)
		if derr := ref.Destroy(); err == nil {
			err = derr
		}
		if err != nil {
			return nil, err
		}
		if string(got) != string(want) {
			differ = append(differ, f.name)
		}
	}
	return differ, nil
}
