package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/format/onnxpb"
	"github.com/slopeml/slope/format/slopepb"
)

// writeTiny writes a small container: a FLOAT16 embedding, a 2:4 NM weight
// [8, 16] with its transpose mask and a rank-2 adapter, and a bias.
func writeTiny(t *testing.T) string {
	t.Helper()
	const rows, cols, rank = 8, 16, 2
	path := filepath.Join(t.TempDir(), "tiny.slope")
	w, err := format.Create(path, &format.WriterOptions{Alignment: 64})
	if err != nil {
		t.Fatal(err)
	}
	m := w.Manifest()
	m.Architecture = &slopepb.Architecture{Name: "opt", Config: &slopepb.Architecture_Opt{Opt: &slopepb.OPTConfig{
		VocabSize: 4, HiddenSize: cols, NumHiddenLayers: 1, NumAttentionHeads: 1, FfnDim: rows,
		MaxPositionEmbeddings: 8, ActivationFunction: "relu", LayerNormEps: 1e-5,
	}}}
	m.OpsetImport = []*onnxpb.OperatorSetIdProto{{Domain: format.GraphDomain, Version: 1}}
	m.Graph = &onnxpb.GraphProto{
		Input: []*onnxpb.ValueInfoProto{{Name: "input_ids"}},
		Node: []*onnxpb.NodeProto{
			{OpType: "Embedding", Domain: format.GraphDomain, Input: []string{"input_ids", "embed"}, Output: []string{"h"}},
			{OpType: "SlopeLinear", Domain: format.GraphDomain, Input: []string{"h", "fc.weight", "fc.bias"}, Output: []string{"y"}},
		},
		Output: []*onnxpb.ValueInfoProto{{Name: "y"}},
	}
	m.Provenance = &slopepb.Provenance{Tool: "main_test", ToolVersion: "0", Created: "2025-01-01T00:00:00Z",
		Sources: []*slopepb.SourceFile{{Path: "src.safetensors", Size: 99, Format: "safetensors"}},
		Tensors: []*slopepb.TensorProvenance{{Name: "fc.weight", Method: "magnitude", Pattern: "2:4", Reason: "linear weight"}}}

	kept := cols / 2
	vals := make([]float32, rows*kept)
	idx := make([]uint8, rows*kept)
	keep := make([]bool, rows*kept)
	for i := range vals {
		vals[i] = float32(i%5) - 2
		idx[i] = uint8(i % 2) // positions 0 and 1 of each group of 4
		keep[i] = (i/kept)%4 < 2
	}
	ones := func(n int) []float32 {
		v := make([]float32, n)
		for i := range v {
			v[i] = 1
		}
		return v
	}
	p := format.NM{N: 2, M: 4}
	for _, err := range []error{
		w.WriteDense("embed", slopepb.DType_FLOAT16, []uint64{4, cols}, ones(4*cols)),
		w.WriteNM("fc.weight", slopepb.DType_FLOAT16, p, rows, cols, vals, idx),
		w.WriteTransposeMask("fc.weight.tmask", "fc.weight", p, rows, cols, keep),
		w.WriteAdapter("fc.weight", "fc.lora_l", "fc.lora_r", slopepb.DType_FLOAT16, cols, rows, rank, 1, ones(cols*rank), ones(rank*rows)),
		w.WriteDense("fc.bias", slopepb.DType_FLOAT32, []uint64{rows}, ones(rows)),
	} {
		if err != nil {
			w.Abort()
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

func runSlope(args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = run(args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestInspectText(t *testing.T) {
	path := writeTiny(t)
	code, out, errs := runSlope("inspect", path)
	if code != 0 {
		t.Fatalf("exit %d, stderr %q", code, errs)
	}
	for _, want := range []string{
		"architecture", "opt", "hidden_size", "layer_norm_eps",
		"2 nodes", "input_ids", "Embedding 1, SlopeLinear 1",
		"embed", "fc.weight", "fc.weight.tmask", "fc.lora_l", "fc.lora_r", "fc.bias",
		"NM 2:4", "LOW_RANK L", "0.5625", // 8*8*2 + 8*2 = 144 of 8*16*2 = 256
		"totals", "all", "provenance", "main_test 0", "src.safetensors", "magnitude", "linear weight",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("inspect output lacks %q:\n%s", want, out)
		}
	}
	if errs != "" {
		t.Errorf("stderr %q", errs)
	}
}

func TestInspectJSON(t *testing.T) {
	path := writeTiny(t)
	code, out, errs := runSlope("inspect", "--json", path)
	if code != 0 {
		t.Fatalf("exit %d, stderr %q", code, errs)
	}
	var s format.Summary
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatalf("%v:\n%s", err, out)
	}
	if len(s.Tensors) != 6 || s.Totals.Tensors != 6 {
		t.Fatalf("%d tensors (totals %d), want 6", len(s.Tensors), s.Totals.Tensors)
	}
	if s.Tensors[1].Name != "fc.weight" || s.Tensors[1].RatioToFP16 != 0.5625 || s.Tensors[1].Pattern != "2:4" {
		t.Errorf("fc.weight summary %+v", s.Tensors[1])
	}
	if s.Architecture != "opt" || s.GraphNodes != 2 || s.ProvenanceMap["tool"] != "main_test" {
		t.Errorf("summary %+v", s)
	}
}

func TestVerify(t *testing.T) {
	path := writeTiny(t)
	code, out, errs := runSlope("verify", path)
	if code != 0 || !strings.HasPrefix(out, "OK: 6 tensors, ") || !strings.Contains(out, " bytes verified") {
		t.Fatalf("good file: exit %d, stdout %q, stderr %q", code, out, errs)
	}
	if code, out, errs := runSlope("verify", "--quiet", path); code != 0 || out != "" || errs != "" {
		t.Fatalf("good file, --quiet: exit %d, stdout %q, stderr %q", code, out, errs)
	}

	// Flip one byte inside fc.weight's stored bytes.
	f, err := format.Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	tt, err := f.Lookup("fc.weight")
	if err != nil {
		t.Fatal(err)
	}
	off := f.FileOffset(tt) + tt.Length/3
	f.Close()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	data[off] ^= 0x40
	bad := filepath.Join(t.TempDir(), "bad.slope")
	if err := os.WriteFile(bad, data, 0o644); err != nil {
		t.Fatal(err)
	}

	// In process, through the command tree: the error names the tensor.
	root := newRootCmd(&bytes.Buffer{}, &bytes.Buffer{})
	root.SetArgs([]string{"verify", bad})
	err = root.Execute()
	if err == nil || !strings.Contains(err.Error(), `"fc.weight"`) {
		t.Fatalf("corrupt file: err %v, want one naming fc.weight", err)
	}
	code, out, errs = runSlope("verify", bad)
	if code != 1 || out != "" || !strings.HasPrefix(errs, "slope: ") || !strings.Contains(errs, "fc.weight") ||
		!strings.Contains(errs, "offset") {
		t.Fatalf("corrupt file: exit %d, stdout %q, stderr %q", code, out, errs)
	}
}

func TestErrors(t *testing.T) {
	path := writeTiny(t)
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"inspect"}, exitUsage, "missing FILE"},
		{[]string{"verify"}, exitUsage, "missing FILE"},
		{[]string{"inspect", path, path}, exitUsage, "unexpected argument"},
		{[]string{"inspect", "--bogus", path}, exitUsage, "bogus"},
		{[]string{"version", "x"}, exitUsage, "unexpected argument"},
		{[]string{"frobnicate"}, exitUsage, "unknown command"},
		{[]string{}, exitUsage, "missing command"},
		{[]string{"help", "bogus"}, exitUsage, `help: unknown command "bogus"`},
		{[]string{"help", "inspect", "x"}, exitUsage, "help: unknown command"},
		{[]string{"inspect", filepath.Join(t.TempDir(), "nope.slope")}, exitError, "nope.slope"},
		{[]string{"verify", "main.go"}, exitError, "main.go"},
	} {
		code, out, errs := runSlope(tc.args...)
		if code != tc.code || !strings.HasPrefix(errs, "slope: ") || !strings.Contains(errs, tc.want) {
			t.Errorf("slope %q: exit %d, stderr %q; want exit %d and an error containing %q", tc.args, code, errs, tc.code, tc.want)
		}
		if out != "" {
			t.Errorf("slope %q: stdout %q", tc.args, out)
		}
	}
}

func TestVersion(t *testing.T) {
	code, out, _ := runSlope("version")
	if code != 0 || !strings.HasPrefix(out, "slope "+version) {
		t.Fatalf("exit %d, stdout %q", code, out)
	}
	if code, out, _ := runSlope("--help"); code != 0 || !strings.Contains(out, "inspect") {
		t.Fatalf("--help: exit %d, stdout %q", code, out)
	}
	for _, args := range [][]string{{"help"}, {"help", "train"}} {
		code, out, errs := runSlope(args...)
		if code != 0 || errs != "" || !strings.Contains(out, "Usage:") {
			t.Fatalf("slope %q: exit %d, stdout %q, stderr %q", args, code, out, errs)
		}
	}
	if _, out, _ := runSlope("help", "train"); !strings.Contains(out, "--resume") {
		t.Fatalf("slope help train: %q is not train's help", out)
	}
}
