package runtime

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/slopeml/slope/convert"
	"github.com/slopeml/slope/testmodels"
)

func convertFrom(t *testing.T, in, nm, dtype string) *Model {
	t.Helper()
	out := filepath.Join(t.TempDir(), "m.slope")
	if _, err := convert.DenseToSlope(t.Context(), convert.Options{In: in, Out: out, NM: nm, DType: dtype}); err != nil {
		t.Fatalf("convert %s: %v", in, err)
	}
	m, err := Open(out, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// binDir is a HF directory holding only config.json and the fixture's fp16
// pytorch_model.bin (hub-style decoder.* keys).
func binDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, f := range []string{"config.json", "pytorch_model.bin"} {
		b, err := os.ReadFile(filepath.Join(testmodels.Dir(), f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// Every source form of the fixture, converted and run, reproduces the
// transformers logits: dense and 2:4 magnitude for the fp32 forms.
func TestEverySourceMatchesTransformers(t *testing.T) {
	ref, err := testmodels.LoadReference()
	if err != nil {
		t.Fatal(err)
	}
	dir := testmodels.Dir()
	ids := i32(ref.InputIDs)
	for _, src := range []struct{ name, in string }{
		{"safetensors", dir},
		{"dynamo onnx", filepath.Join(dir, "model.dynamo.onnx")},
		{"legacy onnx", filepath.Join(dir, "model.legacy.onnx")},
	} {
		for _, c := range []struct {
			nm   string
			want [][][]float32
		}{{"dense", ref.Logits}, {"2:4", ref.LogitsPruned24Magnitude}} {
			got, err := convertFrom(t, src.in, c.nm, "keep").Forward(ids, nil)
			if err != nil {
				t.Fatal(err)
			}
			d := maxDiff(got, c.want, nil)
			t.Logf("%s %s: max |Δlogit| = %.3g", src.name, c.nm, d)
			if !(d <= refTol) {
				t.Errorf("%s %s: logits differ from transformers by %g", src.name, c.nm, d)
			}
		}
	}
}

// The fp16 .bin holds the fp32 weights rounded to fp16. Its logits must
// equal exactly those of the safetensors converted to fp16 (the same
// weights), and stay within the error fp16 weights explain of the fp32
// reference: each weight moves by at most 2^-11 relative, so a logit
// (a sum of products through two layers, |logit| < ~4 here) moves by a
// few 1e-3 at most; 1e-2 is the bound.
func TestFP16BinMatchesTransformers(t *testing.T) {
	ref, err := testmodels.LoadReference()
	if err != nil {
		t.Fatal(err)
	}
	ids := i32(ref.InputIDs)
	bin, err := convertFrom(t, binDir(t), "dense", "keep").Forward(ids, nil)
	if err != nil {
		t.Fatal(err)
	}
	st16, err := convertFrom(t, testmodels.Dir(), "dense", "fp16").Forward(ids, nil)
	if err != nil {
		t.Fatal(err)
	}
	if d := maxDiff(bin, st16, nil); d != 0 {
		t.Errorf(".bin and fp16 safetensors logits differ by %g; the weights should be identical", d)
	}
	d := maxDiff(bin, ref.Logits, nil)
	t.Logf("fp16 .bin: max |Δlogit| vs fp32 transformers = %.3g", d)
	if !(d <= 1e-2) {
		t.Errorf("fp16 .bin logits differ from the fp32 reference by %g (bound 1e-2)", d)
	}
}
