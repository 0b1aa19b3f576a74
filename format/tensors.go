package format

import (
	"fmt"

	"github.com/slopeml/slope/format/slopepb"
)

// Typed helpers over Writer.WriteTensor: each builds the raw encoding of
// SPEC.md from float32 data and writes it with dtype dt.

// WriteDense writes a DENSE float tensor of the given shape.
// Uncompressed tensors are encoded and written in chunks (no encoded copy
// of the whole tensor is held).
func (w *Writer) WriteDense(name string, dt slopepb.DType, shape []uint64, data []float32) error {
	desc := &slopepb.Tensor{Name: name, Dtype: dt, Shape: shape, Encoding: slopepb.Encoding_DENSE}
	if w.enc == nil && IsFloat(dt) {
		if err := checkCount(desc, len(data)); err != nil {
			return err
		}
		es, _ := ElemSize(dt)
		return w.writeDenseStreaming(desc, data, es)
	}
	raw, err := encodeFloats(desc, data)
	if err != nil {
		return err
	}
	return w.WriteTensor(desc, raw)
}

// WriteDenseEncoded writes a DENSE tensor of the given shape from its raw
// encoding (little-endian elements of dt).
func (w *Writer) WriteDenseEncoded(name string, dt slopepb.DType, shape []uint64, raw []byte) error {
	return w.WriteTensor(&slopepb.Tensor{Name: name, Dtype: dt, Shape: shape, Encoding: slopepb.Encoding_DENSE}, raw)
}

// WriteNM writes an NM tensor [rows, cols]: kept values and in-group
// indices, rows*cols*N/M of each, as SplitNM returns them.
func (w *Writer) WriteNM(name string, dt slopepb.DType, p NM, rows, cols int, values []float32, idx []uint8) error {
	return w.writeNM(nmDesc(name, dt, p, rows, cols), p, rows, cols, values, idx)
}

// WriteNMEncoded writes an NM tensor [rows, cols] from its raw encoding:
// the values section (little-endian elements of dt) followed by the packed
// index section (SPEC.md), as WriteNM would encode them.
func (w *Writer) WriteNMEncoded(name string, dt slopepb.DType, p NM, rows, cols int, raw []byte) error {
	return w.WriteTensor(nmDesc(name, dt, p, rows, cols), raw)
}

func nmDesc(name string, dt slopepb.DType, p NM, rows, cols int) *slopepb.Tensor {
	return &slopepb.Tensor{Name: name, Dtype: dt, Shape: []uint64{uint64(rows), uint64(cols)},
		Encoding: slopepb.Encoding_NM, Nm: &slopepb.NMParams{N: uint32(p.N), M: uint32(p.M)}}
}

// WriteTransposeMaterialized writes W_dpᵀ [cols, rows] of the NM weight
// named of ([rows, cols]), as MaterializeTranspose returns it.
func (w *Writer) WriteTransposeMaterialized(name, of string, dt slopepb.DType, p NM, rows, cols int, tValues []float32, tIdx []uint8) error {
	return w.writeNM(&slopepb.Tensor{Name: name, Dtype: dt, Shape: []uint64{uint64(cols), uint64(rows)},
		Encoding: slopepb.Encoding_NM_TRANSPOSE_MATERIALIZED, TransposeOf: of,
		Nm: &slopepb.NMParams{N: uint32(p.N), M: uint32(p.M)}}, p, cols, rows, tValues, tIdx)
}

func (w *Writer) writeNM(desc *slopepb.Tensor, p NM, rows, cols int, values []float32, idx []uint8) error {
	es, err := ElemSize(desc.Dtype)
	if err != nil {
		return fmt.Errorf("write %q: %w", desc.Name, err)
	}
	vb, ib, err := NMSizes(p, rows, cols, es)
	if err != nil {
		return fmt.Errorf("write %q: %w", desc.Name, err)
	}
	if int64(len(values))*int64(es) != vb || len(idx) != len(values) {
		return fmt.Errorf("write %q: %d values and %d indices, want %d of each for %s [%d %d]: %w",
			desc.Name, len(values), len(idx), vb/int64(es), p, rows, cols, ErrShape)
	}
	raw := make([]byte, vb+ib)
	if err := EncodeFloats(desc.Dtype, values, raw[:vb]); err != nil {
		return fmt.Errorf("write %q: %w", desc.Name, err)
	}
	if err := PackNMIndices(p, rows, cols, idx, raw[vb:]); err != nil {
		return fmt.Errorf("write %q: %w", desc.Name, err)
	}
	return w.WriteTensor(desc, raw)
}

// WriteTransposeMask writes the double-pruned transpose of the NM weight
// named of ([rows, cols], already written) as keep bits in its values order.
func (w *Writer) WriteTransposeMask(name, of string, p NM, rows, cols int, keep []bool) error {
	n, err := TransposeMaskSize(p, rows, cols)
	if err != nil {
		return fmt.Errorf("write %q: %w", name, err)
	}
	raw := make([]byte, n)
	if err := PackTransposeMask(p, rows, cols, keep, raw); err != nil {
		return fmt.Errorf("write %q: %w", name, err)
	}
	return w.WriteTransposeMaskEncoded(name, of, p, rows, cols, raw)
}

// WriteTransposeMaskEncoded is WriteTransposeMask from the packed mask
// (PackTransposeMask's bytes).
func (w *Writer) WriteTransposeMaskEncoded(name, of string, p NM, rows, cols int, mask []byte) error {
	return w.WriteTensor(&slopepb.Tensor{Name: name, Dtype: slopepb.DType_UINT8, Shape: []uint64{uint64(rows), uint64(cols)},
		Encoding: slopepb.Encoding_NM_TRANSPOSE_MASK, TransposeOf: of,
		Nm: &slopepb.NMParams{N: uint32(p.N), M: uint32(p.M)}}, mask)
}

// WriteAdapter writes the low-rank factors of weight ([out, in]):
// L [in, r] and R [r, out], row-major, with output scale.
func (w *Writer) WriteAdapter(weight, lName, rName string, dt slopepb.DType, in, out, rank int, scale float32, l, r []float32) error {
	for _, f := range []struct {
		name   string
		factor slopepb.AdapterParams_Factor
		shape  []uint64
		data   []float32
	}{
		{lName, slopepb.AdapterParams_L, []uint64{uint64(in), uint64(rank)}, l},
		{rName, slopepb.AdapterParams_R, []uint64{uint64(rank), uint64(out)}, r},
	} {
		desc := &slopepb.Tensor{Name: f.name, Dtype: dt, Shape: f.shape, Encoding: slopepb.Encoding_LOW_RANK,
			Adapter: &slopepb.AdapterParams{Weight: weight, Factor: f.factor, Scale: scale}}
		raw, err := encodeFloats(desc, f.data)
		if err != nil {
			return err
		}
		if err := w.WriteTensor(desc, raw); err != nil {
			return err
		}
	}
	return nil
}

func encodeFloats(desc *slopepb.Tensor, data []float32) ([]byte, error) {
	es, err := ElemSize(desc.Dtype)
	if err != nil {
		return nil, fmt.Errorf("write %q: %w", desc.Name, err)
	}
	if err := checkCount(desc, len(data)); err != nil {
		return nil, err
	}
	raw := make([]byte, len(data)*es)
	if err := EncodeFloats(desc.Dtype, data, raw); err != nil {
		return nil, fmt.Errorf("write %q: %w", desc.Name, err)
	}
	return raw, nil
}

// WriteBytes writes a byte string (e.g. a tokenizer file) as a 1-D DENSE
// UINT8 tensor.
func (w *Writer) WriteBytes(name string, data []byte) error {
	if len(data) == 0 {
		return fmt.Errorf("write %q: empty byte tensor: %w", name, ErrShape)
	}
	return w.WriteTensor(&slopepb.Tensor{Name: name, Dtype: slopepb.DType_UINT8, Shape: []uint64{uint64(len(data))},
		Encoding: slopepb.Encoding_DENSE}, data)
}

// checkCount: data holds exactly the elements of desc's shape.
func checkCount(desc *slopepb.Tensor, n int) error {
	want := uint64(1)
	for _, d := range desc.Shape {
		var ok bool
		if want, ok = mulU64(want, d); !ok {
			return fmt.Errorf("write %q: shape %v overflows: %w", desc.Name, desc.Shape, ErrLimit)
		}
	}
	if uint64(n) != want {
		return fmt.Errorf("write %q: %d values for shape %v: %w", desc.Name, n, desc.Shape, ErrShape)
	}
	return nil
}
