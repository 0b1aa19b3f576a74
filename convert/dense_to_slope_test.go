package convert

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/format/slopepb"
)

func TestDenseToSlopeDefault(t *testing.T) {
	out := filepath.Join(t.TempDir(), "tiny.slope")
	calls := 0
	res, err := DenseToSlope(t.Context(), Options{In: TinyLabel, Out: out, Progress: func(done, total int, name string) {
		calls++
		if done != calls || total != 36 || name == "" {
			t.Errorf("progress(%d, %d, %q) at call %d", done, total, name, calls)
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	if calls != 36 || res.Pruned != 12 || res.Tensors != 48 || res.Out != out {
		t.Errorf("result %+v after %d progress calls", res, calls)
	}
	if res.TransposeExtraZeros < 0.05 || res.TransposeExtraZeros > 0.13 {
		t.Errorf("transpose extra zeros %g outside [0.05, 0.13]", res.TransposeExtraZeros)
	}
	if res.StoredBytes >= res.DenseBytes || res.FileBytes < res.StoredBytes {
		t.Errorf("stored %d, dense %d, file %d", res.StoredBytes, res.DenseBytes, res.FileBytes)
	}

	f, err := format.Open(out, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Verify(nil); err != nil {
		t.Fatal(err)
	}
	m := f.Manifest()
	if m.Architecture.GetName() != "opt" || m.Architecture.GetOpt().GetHiddenSize() != 64 {
		t.Errorf("architecture %v", m.Architecture)
	}
	pv := m.Provenance
	if pv.GetTool() != "slope-convert" || pv.GetToolVersion() == "" || len(pv.GetSources()) != 2 || pv.GetCommand() == "" ||
		len(pv.GetTensors()) != 48 || pv.GetCreated() == "" {
		t.Errorf("provenance %v", pv)
	}
	if len(m.Graph.GetNode()) == 0 || len(m.OpsetImport) != 1 {
		t.Error("no graph")
	}
	provBy := map[string]*slopepb.TensorProvenance{}
	for _, tp := range pv.GetTensors() {
		provBy[tp.Name] = tp
	}

	src, err := OpenSource(TinyLabel)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	p := format.NM{N: 2, M: 4}
	for _, name := range src.Names() {
		orig, err := src.Tensor(name)
		if err != nil {
			t.Fatal(err)
		}
		got, err := f.Dense(name)
		if err != nil {
			t.Fatal(err)
		}
		desc, _ := f.Lookup(name)
		want := orig.Data
		linear := strings.HasSuffix(name, "_proj.weight") || strings.HasSuffix(name, "fc1.weight") || strings.HasSuffix(name, "fc2.weight")
		if linear {
			if desc.Encoding != slopepb.Encoding_NM {
				t.Errorf("%s stored %s, want NM", name, desc.Encoding)
				continue
			}
			keep, err := MagnitudeMask(p, orig.Shape[0], orig.Shape[1], orig.Data)
			if err != nil {
				t.Fatal(err)
			}
			want = ApplyMask(orig.Data, keep)
			checkTransposeMask(t, f, name, p)
			if tp := provBy[name]; tp.GetMethod() != "magnitude" || tp.GetPattern() != "2:4" || tp.GetSourceName() != "model."+name {
				t.Errorf("provenance of %s: %v", name, tp)
			}
		} else {
			if desc.Encoding != slopepb.Encoding_DENSE {
				t.Errorf("%s stored %s, want DENSE", name, desc.Encoding)
			}
			if tp := provBy[name]; tp.GetMethod() != "none" || tp.GetReason() == "" || tp.GetSourceDtype() != "FLOAT32" {
				t.Errorf("provenance of %s: %v", name, tp)
			}
		}
		if !equalF32(got, want) {
			t.Errorf("%s: stored values differ from the (masked) source", name)
		}
	}
}

// checkTransposeMask: at most N surviving values in every column group of
// M rows, and at least one dropped somewhere.
func checkTransposeMask(t *testing.T, f *format.File, name string, p format.NM) {
	t.Helper()
	keep, err := f.TransposeMask(TransposeMaskName(name))
	if err != nil {
		t.Fatal(err)
	}
	v, err := f.NM(name)
	if err != nil {
		t.Fatal(err)
	}
	kept, _ := p.KeptPerRow(v.Cols)
	idx := make([]uint8, v.Rows*kept)
	if err := format.UnpackNMIndices(p, v.Rows, v.Cols, v.Indices, idx); err != nil {
		t.Fatal(err)
	}
	count := map[[2]int]int{} // (row group, col) -> survivors
	dropped := 0
	for r := 0; r < v.Rows; r++ {
		for j := 0; j < kept; j++ {
			i := r*kept + j
			if !keep[i] {
				dropped++
				continue
			}
			col := (j/p.N)*p.M + int(idx[i])
			count[[2]int{r / p.M, col}]++
		}
	}
	for k, n := range count {
		if n > p.N {
			t.Errorf("%s: column %d, row group %d keeps %d > %d", name, k[1], k[0], n, p.N)
		}
	}
	if dropped == 0 {
		t.Errorf("%s: double pruning dropped nothing", name)
	}
}

func TestDenseToSlopeOptions(t *testing.T) {
	dir := t.TempDir()
	// bf16 + zstd.
	out := filepath.Join(dir, "bf16.slope")
	res, err := DenseToSlope(t.Context(), Options{In: TinyLabel, Out: out, DType: "bf16", Compress: true, NM: "4:8"})
	if err != nil {
		t.Fatal(err)
	}
	f, err := format.Open(out, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Verify(nil); err != nil {
		t.Fatal(err)
	}
	ln, _ := f.Lookup("decoder.final_layer_norm.weight")
	q, _ := f.Lookup("decoder.layers.0.self_attn.q_proj.weight")
	if ln.Dtype != slopepb.DType_BFLOAT16 || q.Dtype != slopepb.DType_BFLOAT16 || q.Nm.GetN() != 4 || q.Nm.GetM() != 8 {
		t.Errorf("ln %v, q %v", ln, q)
	}
	src, _ := OpenSource(TinyLabel)
	defer src.Close()
	e, _ := src.Tensor("decoder.embed_tokens.weight")
	got, _ := f.Dense("decoder.embed_tokens.weight")
	for i := range got {
		if want := format.BFloat16ToFloat32(format.Float32ToBFloat16(e.Data[i])); got[i] != want {
			t.Fatalf("embed_tokens[%d] = %g, want %g", i, got[i], want)
		}
	}
	var numel int64
	for _, n := range src.Names() {
		x, _ := src.Tensor(n)
		numel += int64(len(x.Data))
	}
	if res.DenseBytes != 2*numel || res.Pruned != 12 {
		t.Errorf("result %+v, want dense bytes %d", res, 2*numel)
	}

	// dense: nothing pruned, no masks.
	out = filepath.Join(dir, "dense.slope")
	res, err = DenseToSlope(t.Context(), Options{In: TinyLabel, Out: out, NM: "dense"})
	if err != nil {
		t.Fatal(err)
	}
	if res.Pruned != 0 || res.Tensors != 36 || res.TransposeExtraZeros != 0 {
		t.Errorf("dense result %+v", res)
	}
	fd, err := format.Open(out, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer fd.Close()
	for _, n := range fd.Manifest().Graph.Node {
		if n.OpType == "SlopeLinear" {
			t.Fatal("dense model has SlopeLinear nodes")
		}
	}

	// Errors.
	for _, o := range []Options{
		{Out: filepath.Join(dir, "a.slope"), NM: "5:4"},
		{Out: filepath.Join(dir, "b.slope"), DType: "fp8"},
		{Out: ""},
		{Out: filepath.Join(dir, "c.slope"), In: filepath.Join(dir, "missing")},
		{Out: filepath.Join(dir, "no-such-dir", "d.slope")},
	} {
		if _, err := DenseToSlope(t.Context(), o); err == nil {
			t.Errorf("%+v accepted", o)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "a.slope")); err == nil {
		t.Error("failed conversion left a file")
	}
}

func TestDenseToSlopeCancel(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "x.slope")
	ctx, cancel := context.WithCancel(t.Context())
	_, err := DenseToSlope(ctx, Options{In: TinyLabel, Out: out, Progress: func(done, total int, name string) {
		if done == 5 {
			cancel()
		}
	}})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("error %v, want context.Canceled", err)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 0 {
		t.Errorf("cancelled conversion left %v", ents)
	}
}

func TestPruneDecision(t *testing.T) {
	p := format.NM{N: 2, M: 4}
	lin := WeightSpec{Linear: true}
	cases := []struct {
		shape []int
		ok    bool
		want  string
	}{
		{[]int{64, 64}, true, "magnitude"},
		{[]int{256, 64}, true, "magnitude"},
		{[]int{384, 64}, false, "aspect ratio"},
		{[]int{64, 66}, false, "in_features"},
		{[]int{66, 64}, false, "out_features"},
	}
	for _, c := range cases {
		ok, reason := pruneDecision(lin, true, &Tensor{Shape: c.shape}, pruneRule{p: p})
		if ok != c.ok || !strings.Contains(reason, c.want) {
			t.Errorf("%v: %v %q", c.shape, ok, reason)
		}
	}
	if ok, _ := pruneDecision(WeightSpec{}, true, &Tensor{Shape: []int{64, 64}}, pruneRule{p: p}); ok {
		t.Error("non-linear pruned")
	}
}

// TestDenseToSlopeFloat16Source: an F16 checkpoint kept as FLOAT16.
func TestDenseToSlopeFloat16Source(t *testing.T) {
	src, err := OpenSource(TinyLabel)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	var ts []stTensor
	for _, n := range src.Names() {
		x, err := src.Tensor(n)
		if err != nil {
			t.Fatal(err)
		}
		ts = append(ts, stTensor{x.SourceName, x.Shape, x.Data})
	}
	dir := t.TempDir()
	m := fixtureFS(t)
	if err := os.WriteFile(filepath.Join(dir, "config.json"), m["config.json"].Data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "model.safetensors"), encodeSTAs(ts, "F16"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "h.slope")
	res, err := DenseToSlope(t.Context(), Options{In: dir, Out: out})
	if err != nil {
		t.Fatal(err)
	}
	f, err := format.Open(out, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Verify(nil); err != nil {
		t.Fatal(err)
	}
	for _, d := range f.Tensors() {
		if d.Encoding != slopepb.Encoding_NM_TRANSPOSE_MASK && d.Dtype != slopepb.DType_FLOAT16 {
			t.Errorf("%s stored %s, want FLOAT16 (keep)", d.Name, d.Dtype)
		}
	}
	for _, tp := range f.Manifest().Provenance.Tensors {
		if tp.SourceDtype != "FLOAT16" {
			t.Errorf("%s: source dtype %s", tp.Name, tp.SourceDtype)
		}
	}
	if p := f.Manifest().Provenance.Sources; len(p) != 2 || p[1].Path != filepath.Join(dir, "model.safetensors") {
		t.Errorf("sources %v", p)
	}
	if res.Pruned != 12 || res.DenseBytes != 548352/2 {
		t.Errorf("result %+v", res)
	}
}
