package convert

import (
	"math"
	"path/filepath"
	"strings"
	"testing"

	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/format/slopepb"
	"github.com/slopeml/slope/testmodels"
)

// nmFloats decodes an NM (or materialized transpose) tensor of f.
func nmFloats(t *testing.T, f *format.File, name string) (v *format.NMView, vals []float32, idx []uint8) {
	t.Helper()
	v, err := f.NM(name)
	if err != nil {
		t.Fatal(err)
	}
	kept := v.Rows * (v.Cols / v.Pattern.M * v.Pattern.N)
	vals, idx = make([]float32, kept), make([]uint8, kept)
	if err := format.DecodeFloats(v.DType, v.Values, vals); err != nil {
		t.Fatal(err)
	}
	if err := format.UnpackNMIndices(v.Pattern, v.Rows, v.Cols, v.Indices, idx); err != nil {
		t.Fatal(err)
	}
	return v, vals, idx
}

// checkMaterialized checks that every N:M weight of the file at path has
// a materialized transpose, in its dtype, equal to
// format.MaterializeTranspose of the stored weight and transpose mask.
// It returns how many it checked.
func checkMaterialized(t *testing.T, path string) int {
	t.Helper()
	f, err := format.Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Verify(nil); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, d := range f.Tensors() {
		if d.Encoding != slopepb.Encoding_NM {
			continue
		}
		w, vals, idx := nmFloats(t, f, d.Name)
		keep, err := f.TransposeMask(TransposeMaskName(d.Name))
		if err != nil {
			t.Fatal(err)
		}
		wantV, wantI, err := format.MaterializeTranspose(w.Pattern, w.Rows, w.Cols, vals, idx, keep)
		if err != nil {
			t.Fatal(err)
		}
		tn := TransposeName(d.Name)
		td, err := f.Lookup(tn)
		if err != nil {
			t.Fatalf("%s: %v", d.Name, err)
		}
		if td.Encoding != slopepb.Encoding_NM_TRANSPOSE_MATERIALIZED || td.TransposeOf != d.Name || td.Dtype != d.Dtype {
			t.Fatalf("%s: %s %s of %q, want NM_TRANSPOSE_MATERIALIZED %s of %q", tn, td.Encoding, td.Dtype, td.TransposeOf, d.Dtype, d.Name)
		}
		tv, gotV, gotI := nmFloats(t, f, tn)
		if tv.Rows != w.Cols || tv.Cols != w.Rows {
			t.Fatalf("%s: [%d %d], want [%d %d]", tn, tv.Rows, tv.Cols, w.Cols, w.Rows)
		}
		for i := range wantV {
			if math.Float32bits(gotV[i]) != math.Float32bits(wantV[i]) || gotI[i] != wantI[i] {
				t.Fatalf("%s: kept value %d: %g at %d, want %g at %d", tn, i, gotV[i], gotI[i], wantV[i], wantI[i])
			}
		}
		n++
	}
	return n
}

// --transpose materialize stores W_dpᵀ beside every mask, on each write
// path: magnitude from float32 (the embedded model), the fused 16-bit
// kernel (an fp16 checkpoint), and the general path (adapters, plain and
// merged); the default stores none; a bad value is refused by name.
func TestTransposeMaterialize(t *testing.T) {
	dir, _, _ := genDir(t, "pre-ln-tied", "F16", testmodels.Layout{Format: "safetensors"})
	for _, c := range []struct {
		name string
		o    Options
	}{
		{"embedded fp32", Options{}},
		{"fp16 fused", Options{In: dir}},
		{"fp16 to bf16", Options{In: dir, DType: "bf16"}},
		{"adapters", Options{Rank: 2, AdapterInit: AdapterInitSVD}},
		{"merged adapters", Options{In: dir, Rank: 4, MergeAdapters: true}},
	} {
		o := c.o
		if o.In == "" {
			o.In = TinyLabel
		}
		o.Transpose = TransposeMaterialize
		o.Out = filepath.Join(t.TempDir(), "m.slope")
		res, err := DenseToSlope(t.Context(), o)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if res.Transpose != TransposeMaterialize {
			t.Errorf("%s: Result.Transpose %q", c.name, res.Transpose)
		}
		if n := checkMaterialized(t, o.Out); n == 0 || n != res.Pruned {
			t.Errorf("%s: %d materialized transposes for %d pruned weights", c.name, n, res.Pruned)
		}
	}
	o := Options{In: TinyLabel, Out: filepath.Join(t.TempDir(), "m.slope")}
	if _, err := DenseToSlope(t.Context(), o); err != nil {
		t.Fatal(err)
	}
	f, err := format.Open(o.Out, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, d := range f.Tensors() {
		if d.Encoding == slopepb.Encoding_NM_TRANSPOSE_MATERIALIZED {
			t.Errorf("default conversion wrote %s", d.Name)
		}
	}
	o.Transpose = "both"
	if _, err := DenseToSlope(t.Context(), o); err == nil || !strings.Contains(err.Error(), "--transpose") {
		t.Errorf("--transpose both: %v", err)
	}
}
