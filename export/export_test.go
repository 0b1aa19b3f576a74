package export_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/slopeml/slope/convert"
	"github.com/slopeml/slope/export"
	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/runtime"
	"github.com/slopeml/slope/testmodels"
)

// toSlope converts the checkpoint in ("" is the embedded tiny model) with
// o (Out and In set here) and returns the container's path.
func toSlope(t *testing.T, in string, o convert.Options) string {
	t.Helper()
	o.In = in
	if in == "" {
		o.In = convert.TinyLabel
	}
	o.Out = filepath.Join(t.TempDir(), "m.slope")
	o.Created = "2025-01-01T00:00:00Z"
	if _, err := convert.DenseToSlope(t.Context(), o); err != nil {
		t.Fatal(err)
	}
	return o.Out
}

// exportTo exports the container at in and returns the output path.
func exportTo(t *testing.T, in string, o export.Options) string {
	t.Helper()
	name := "hf"
	if o.To == export.ToONNX {
		name = "model.onnx"
	}
	o.Out = filepath.Join(t.TempDir(), name)
	if _, err := export.Export(in, o); err != nil {
		t.Fatal(err)
	}
	return o.Out
}

// sameTensors fails unless the containers at a and b hold the same
// tensors (names, dtypes, shapes, encodings, patterns) with the same raw
// bytes, and report whether any NM tensor was compared.
func sameTensors(t *testing.T, a, b string) (nm int) {
	t.Helper()
	fa, err := format.Open(a, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer fa.Close()
	fb, err := format.Open(b, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer fb.Close()
	ta, tb := fa.Tensors(), fb.Tensors()
	if len(ta) != len(tb) {
		t.Fatalf("%d tensors, then %d", len(ta), len(tb))
	}
	for i, x := range ta {
		y := tb[i]
		if x.Name != y.Name || x.Dtype != y.Dtype || !slices.Equal(x.Shape, y.Shape) || x.Encoding != y.Encoding ||
			x.GetNm().GetN() != y.GetNm().GetN() || x.GetNm().GetM() != y.GetNm().GetM() {
			t.Fatalf("tensor %d: %s %s %v %s %v, then %s %s %v %s %v", i, x.Name, x.Dtype, x.Shape, x.Encoding, x.Nm, y.Name, y.Dtype, y.Shape, y.Encoding, y.Nm)
		}
		ra, err := fa.Raw(x.Name)
		if err != nil {
			t.Fatal(err)
		}
		rb, err := fb.Raw(y.Name)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(ra, rb) {
			t.Errorf("tensor %s (%s): raw bytes differ", x.Name, x.Encoding)
		}
		if x.Encoding == 2 { // NM
			nm++
		}
	}
	return nm
}

// TestRoundTripHF: dense → slope → export hf → slope again with the same
// options gives bit-identical tensors (values, N:M indices, transpose
// masks), for the tiny model dense and 2:4, fp32 and bf16.
func TestRoundTripHF(t *testing.T) {
	for _, c := range []convert.Options{
		{NM: "dense"},
		{NM: "dense", DType: "bf16"},
		{NM: "2:4"},
		{NM: "2:4", DType: "fp16"},
		{NM: "4:8"},
	} {
		t.Run(c.NM+"-"+c.DType, func(t *testing.T) {
			a := toSlope(t, "", c)
			dir := exportTo(t, a, export.Options{To: export.ToHF})
			b := toSlope(t, dir, c)
			nm := sameTensors(t, a, b)
			if c.NM != "dense" && nm != 12 {
				t.Errorf("%d NM tensors compared, want 12", nm)
			}
		})
	}
}

// TestRoundTripFamilies: the same 2:4 round trip on every OPT variant
// (post-LN with project_in/out, untied head, no final LayerNorm, no
// biases, gelu, non-affine LayerNorms), with exact zeros planted in the
// weights: groups of four zeros, a kept zero beside pruned zeros, a -0.
// Magnitude pruning keeps the N largest |w|, ties to the lower index; the
// pruned positions come back as +0, so a kept value beats each of them
// (it is larger, or it is a zero too and has the lower index: it won that
// tie the first time) and re-pruning keeps the same positions.
func TestRoundTripFamilies(t *testing.T) {
	fams := testmodels.ConfigFamilies()
	for _, name := range slices.Sorted(func(yield func(string) bool) {
		for k := range fams {
			if !yield(k) {
				return
			}
		}
	}) {
		t.Run(name, func(t *testing.T) {
			cfg := fams[name]
			ws := testmodels.GenWeights(cfg, 11, "F32")
			for i := range ws {
				if !strings.HasSuffix(ws[i].Name, "q_proj.weight") && !strings.HasSuffix(ws[i].Name, "fc2.weight") {
					continue
				}
				d := ws[i].Data
				copy(d[0:4], []float32{0, 0, 0, 0})
				copy(d[4:8], []float32{0, 0, 0, 0.5})
				copy(d[8:12], []float32{0.25, float32(math.Copysign(0, -1)), 0, 0})
				copy(d[12:16], []float32{0, 0.1, 0, float32(math.Copysign(0, -1))})
			}
			src := filepath.Join(t.TempDir(), "src")
			if err := testmodels.WriteHFDir(src, cfg, ws, testmodels.Layout{Format: "safetensors", KeyPrefix: "model."}); err != nil {
				t.Fatal(err)
			}
			o := convert.Options{NM: "2:4"}
			a := toSlope(t, src, o)
			dir := exportTo(t, a, export.Options{To: export.ToHF})
			if _, err := os.Stat(filepath.Join(dir, "model.safetensors")); err != nil {
				t.Fatal(err)
			}
			if nm := sameTensors(t, a, toSlope(t, dir, o)); nm == 0 {
				t.Error("no NM tensor compared")
			}
		})
	}
}

// forward runs a container in the runtime.
func forward(t *testing.T, path string, ids [][]int32) [][][]float32 {
	t.Helper()
	m, err := runtime.Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	l, err := m.Forward(ids, nil)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// maxDiff is the largest |a - b| (over positions whose mask is 1 when
// mask is given); +Inf for a NaN or a shape mismatch, so that no
// "d > tol" check passes them.
func maxDiff(a, b [][][]float32, mask ...[][]int32) float64 {
	var d float64
	if len(a) != len(b) {
		return math.Inf(1)
	}
	for i := range a {
		if len(a[i]) != len(b[i]) {
			return math.Inf(1)
		}
		for j := range a[i] {
			if len(mask) > 0 && mask[0][i][j] == 0 {
				continue
			}
			if len(a[i][j]) != len(b[i][j]) {
				return math.Inf(1)
			}
			for k := range a[i][j] {
				e := math.Abs(float64(a[i][j][k]) - float64(b[i][j][k]))
				if math.IsNaN(e) {
					return math.Inf(1)
				}
				d = max(d, e)
			}
		}
	}
	return d
}

func testIDs(vocab int) [][]int32 {
	ids := make([][]int32, 2)
	for b := range ids {
		for t := 0; t < 12; t++ {
			ids[b] = append(ids[b], int32((7*t+31*b+3)%vocab))
		}
	}
	return ids
}

// TestExportAdapters: a 2:4 container with svd adapters (plain and merged
// layout) exported to hf has dense weights W_s + scale·(L·R)ᵀ whose
// logits, re-converted dense and run in the runtime, match the adapted
// container's within 1e-4.
func TestExportAdapters(t *testing.T) {
	for _, merged := range []bool{false, true} {
		t.Run(fmt.Sprintf("merged=%v", merged), func(t *testing.T) {
			a := toSlope(t, "", convert.Options{NM: "2:4", Rank: 4, AdapterInit: "svd", MergeAdapters: merged})
			dir := exportTo(t, a, export.Options{To: export.ToHF})
			d := toSlope(t, dir, convert.Options{NM: "dense"})
			ids := testIDs(512)
			want := forward(t, a, ids)
			diff := maxDiff(want, forward(t, d, ids))
			t.Logf("max |Δlogit| adapted container vs dense export: %.3g", diff)
			if !(diff <= 1e-4) {
				t.Errorf("max |Δlogit| %.3g > 1e-4", diff)
			}
			// Without adapters the export differs: the adapters were merged.
			p := toSlope(t, "", convert.Options{NM: "2:4"})
			if maxDiff(forward(t, p, ids), want) < 1e-3 {
				t.Error("the adapters change nothing: the test checks nothing")
			}
		})
	}
}

// repoRoot is the module root (this package's parent directory).
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// ortPackage finds onnxruntime-node: $ORT_PATH, then .cache/npm/ort (the
// tests' copy, installed by scripts/testdata.sh), then .cache/ort
// (bench/ort.sh's). A missing node or package fails the test.
func ortPackage(t *testing.T) (node, pkg string) {
	t.Helper()
	const how = "install it with scripts/testdata.sh (run by scripts/test): npm install --prefix .cache/npm/ort onnxruntime-node@1.30.0 --onnxruntime-node-install=skip; or set ORT_PATH to an onnxruntime-node package directory"
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatalf("node (Node.js) not found in PATH: the ONNX Runtime check needs it and onnxruntime-node; %s", how)
	}
	if p := os.Getenv("ORT_PATH"); p != "" {
		if _, err := os.Stat(filepath.Join(p, "package.json")); err != nil {
			t.Fatalf("ORT_PATH=%s is not an onnxruntime-node package directory: %v; %s", p, err, how)
		}
		return node, p
	}
	root := repoRoot(t)
	cands := []string{"",
		filepath.Join(root, ".cache", "npm", "ort", "node_modules", "onnxruntime-node"),
		filepath.Join(root, ".cache", "ort", "node_modules", "onnxruntime-node")}
	for _, c := range cands {
		if c == "" {
			continue
		}
		if _, err := os.Stat(filepath.Join(c, "package.json")); err == nil {
			return node, c
		}
	}
	t.Fatalf("onnxruntime-node not found (looked in %s): %s", strings.Join(cands[1:], ", "), how)
	return "", ""
}

// ortLogits runs the ONNX model in ONNX Runtime via testdata/ort_run.mjs.
func ortLogits(t *testing.T, model string, ids [][]int32, prefill int) (logits [][][]float32, inputs, outputs []string) {
	t.Helper()
	return ortLogitsMasked(t, model, ids, nil, prefill)
}

// ortLogitsMasked is ortLogits with an attention mask for a with-past
// model (nil: every token).
func ortLogitsMasked(t *testing.T, model string, ids, mask [][]int32, prefill int) (logits [][][]float32, inputs, outputs []string) {
	t.Helper()
	node, pkg := ortPackage(t)
	r := map[string]any{"model": model, "ids": ids, "prefill": prefill}
	if mask != nil {
		r["mask"] = mask
	}
	req, _ := json.Marshal(r)
	rp := filepath.Join(t.TempDir(), "req.json")
	if err := os.WriteFile(rp, req, 0o644); err != nil {
		t.Fatal(err)
	}
	script, _ := filepath.Abs(filepath.Join("testdata", "ort_run.mjs"))
	cmd := exec.Command(node, script, rp)
	cmd.Env = append(os.Environ(), "ORT_PATH="+pkg)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("ONNX Runtime on %s: %v\n%s", model, err, stderr.String())
	}
	var res struct {
		Logits  [][][]float32 `json:"logits"`
		Inputs  []string      `json:"inputs"`
		Outputs []string      `json:"outputs"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("ort_run output: %v", err)
	}
	return res.Logits, res.Inputs, res.Outputs
}

// TestExportONNXRuntime: export --to onnx (plain, --with-past, external
// data, bf16 weights) of the tiny model runs in ONNX Runtime and its
// logits match the runtime's on the container within 1e-4.
func TestExportONNXRuntime(t *testing.T) {
	for _, c := range []struct {
		name string
		conv convert.Options
		exp  export.Options
	}{
		{"dense", convert.Options{NM: "dense"}, export.Options{}},
		{"dense-past", convert.Options{NM: "dense"}, export.Options{WithPast: true}},
		{"2:4-svd-merged-past", convert.Options{NM: "2:4", Rank: 4, AdapterInit: "svd", MergeAdapters: true}, export.Options{WithPast: true}},
		{"2:4-svd-external", convert.Options{NM: "2:4", Rank: 4, AdapterInit: "svd"}, export.Options{ExternalData: true}},
		{"2:4-bf16-past", convert.Options{NM: "2:4", DType: "bf16"}, export.Options{WithPast: true}},
	} {
		t.Run(c.name, func(t *testing.T) {
			a := toSlope(t, "", c.conv)
			c.exp.To = export.ToONNX
			model := exportTo(t, a, c.exp)
			if _, err := os.Stat(model + ".data"); (err == nil) != c.exp.ExternalData {
				t.Errorf("side file: %v, want one: %v", err, c.exp.ExternalData)
			}
			ids := testIDs(512)
			got, ins, outs := ortLogits(t, model, ids, 5)
			if c.exp.WithPast {
				if !slices.Contains(ins, "past_key_values.1.value") || !slices.Contains(outs, "present.0.key") {
					t.Errorf("with-past model: inputs %v outputs %v", ins, outs)
				}
			} else if len(ins) != 1 {
				t.Errorf("inputs %v, want input_ids", ins)
			}
			diff := maxDiff(forward(t, a, ids), got)
			t.Logf("max |Δlogit| ONNX Runtime vs runtime: %.3g", diff)
			if !(diff <= 1e-4) {
				t.Errorf("max |Δlogit| %.3g > 1e-4", diff)
			}
		})
	}
}

// TestExportONNXRuntimePadded: a with-past export in ONNX Runtime, fed a
// left-padded batch and its attention mask (prefill, then one token at a
// time), matches the runtime's logits on the real tokens.
func TestExportONNXRuntimePadded(t *testing.T) {
	a := toSlope(t, "", convert.Options{NM: "2:4"})
	model := exportTo(t, a, export.Options{To: export.ToONNX, WithPast: true})
	ids := testIDs(512)
	mask := make([][]int32, len(ids))
	for b := range ids {
		mask[b] = make([]int32, len(ids[b]))
		for p := range mask[b] {
			mask[b][p] = 1
			if b == 1 && p < 3 {
				ids[b][p], mask[b][p] = 1, 0 // left padding
			}
		}
	}
	got, _, _ := ortLogitsMasked(t, model, ids, mask, 6)
	m, err := runtime.Open(a, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	want, err := m.Forward(ids, mask)
	if err != nil {
		t.Fatal(err)
	}
	diff := maxDiff(want, got, mask)
	t.Logf("max |Δlogit| on real tokens, padded batch: %.3g", diff)
	if !(diff <= 1e-4) {
		t.Errorf("max |Δlogit| %.3g > 1e-4", diff)
	}
}

// TestExportONNXFamilies runs every OPT variant's export in ONNX Runtime
// (no-affine LayerNorms, project_in/out, untied head, gelu, ...).
func TestExportONNXFamilies(t *testing.T) {
	fams := testmodels.ConfigFamilies()
	names := make([]string, 0, len(fams))
	for k := range fams {
		names = append(names, k)
	}
	sort.Strings(names)
	for i, name := range names {
		t.Run(name, func(t *testing.T) {
			cfg := fams[name]
			src := filepath.Join(t.TempDir(), "src")
			if err := testmodels.WriteHFDirGen(src, cfg, 5, "F32", testmodels.Layout{Format: "safetensors", KeyPrefix: "model."}); err != nil {
				t.Fatal(err)
			}
			a := toSlope(t, src, convert.Options{NM: "2:4"})
			model := exportTo(t, a, export.Options{To: export.ToONNX, WithPast: i%2 == 0})
			ids := testIDs(cfg.Vocab)
			for b := range ids {
				ids[b] = ids[b][:cfg.MaxPos/2]
			}
			got, _, _ := ortLogits(t, model, ids, 3)
			diff := maxDiff(forward(t, a, ids), got)
			t.Logf("max |Δlogit|: %.3g", diff)
			if !(diff <= 1e-4) {
				t.Errorf("max |Δlogit| %.3g > 1e-4", diff)
			}
		})
	}
}

// TestExportHFLayout checks the directory: keys, dtypes, config.json.
func TestExportHFLayout(t *testing.T) {
	a := toSlope(t, "", convert.Options{NM: "2:4"})
	dir := exportTo(t, a, export.Options{To: export.ToHF, DType: "bf16"})
	b, err := os.ReadFile(filepath.Join(dir, "model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	n := int(b[0]) | int(b[1])<<8 | int(b[2])<<16
	var hdr map[string]json.RawMessage
	if err := json.Unmarshal(b[8:8+n], &hdr); err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		if k == "__metadata__" {
			continue
		}
		if !strings.HasPrefix(k, "model.decoder.") {
			t.Errorf("key %q: want model.decoder.* (tied: no lm_head.weight)", k)
		}
		if !strings.Contains(string(v), `"dtype":"BF16"`) {
			t.Errorf("%s: %s, want BF16", k, v)
		}
	}
	cj, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := convert.ParseOPTConfig("config.json", cj)
	if err != nil {
		t.Fatal(err)
	}
	if c.HiddenSize != 64 || !c.TieWordEmbeddings || !bytes.Contains(cj, []byte(`"torch_dtype": "bfloat16"`)) || !bytes.Contains(cj, []byte(`"OPTForCausalLM"`)) {
		t.Errorf("config.json:\n%s", cj)
	}
	// Pruned weights are dense with zeros: half of each 2:4 weight.
	f, err := format.Open(a, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, err := export.Open(a)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	w, err := m.Weight("decoder.layers.0.fc1.weight")
	if err != nil {
		t.Fatal(err)
	}
	zeros := 0
	for _, v := range w {
		if v == 0 {
			zeros++
		}
	}
	if zeros < len(w)/2 {
		t.Errorf("%d zeros of %d", zeros, len(w))
	}
}

// TestExportOutput: an existing non-empty directory or file is refused
// without Force and replaced with it; nothing is left beside the output.
func TestExportOutput(t *testing.T) {
	a := toSlope(t, "", convert.Options{NM: "2:4"})
	dir := filepath.Join(t.TempDir(), "out")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// An empty directory is fine.
	if _, err := export.Export(a, export.Options{To: export.ToHF, Out: dir}); err != nil {
		t.Fatal(err)
	}
	_, err := export.Export(a, export.Options{To: export.ToHF, Out: dir})
	if err == nil || !strings.Contains(err.Error(), "--force") || !strings.Contains(err.Error(), dir) {
		t.Errorf("second export: %v, want a refusal naming %s and --force", err, dir)
	}
	if err := os.WriteFile(filepath.Join(dir, "stale.txt"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := export.Export(a, export.Options{To: export.ToHF, Out: dir, Force: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "stale.txt")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("--force kept the old directory's files: %v", err)
	}
	if _, err := os.Stat(dir + ".tmp"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("staging directory left: %v", err)
	}
	onnx := filepath.Join(t.TempDir(), "m.onnx")
	for i, o := range []export.Options{{}, {}, {Force: true}} {
		o.To, o.Out = export.ToONNX, onnx
		_, err := export.Export(a, o)
		if (err != nil) != (i == 1) {
			t.Errorf("onnx export %d: %v", i, err)
		}
	}
	for _, c := range []struct {
		o    export.Options
		want string
	}{
		{export.Options{To: "tflite", Out: onnx + "2"}, "--to"},
		{export.Options{To: export.ToHF}, "--out"},
		{export.Options{To: export.ToHF, Out: dir + "2", DType: "int8"}, "--dtype"},
		{export.Options{To: export.ToHF, Out: dir + "3", WithPast: true}, "--with-past"},
		{export.Options{To: export.ToONNX, Out: dir, Force: true}, "directory"},
	} {
		if _, err := export.Export(a, c.o); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want an error about %s", c.o, err, c.want)
		}
	}
	if _, err := export.Export(filepath.Join(t.TempDir(), "none.slope"), export.Options{To: export.ToHF, Out: dir + "4"}); err == nil || !strings.Contains(err.Error(), "none.slope") {
		t.Errorf("missing input: %v", err)
	}
	// A trailing slash names the same directory (it once put the staging
	// directory inside it and removed both).
	keep := filepath.Join(t.TempDir(), "keep")
	if err := os.MkdirAll(keep, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(keep, "a.txt"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := export.Export(a, export.Options{To: export.ToHF, Out: keep + "/"}); err == nil || !strings.Contains(err.Error(), "--force") {
		t.Errorf("non-empty %s/ without --force: %v", keep, err)
	}
	if _, err := os.Stat(filepath.Join(keep, "a.txt")); err != nil {
		t.Errorf("the refused export touched %s: %v", keep, err)
	}
	if _, err := export.Export(a, export.Options{To: export.ToHF, Out: keep + "/", Force: true}); err != nil {
		t.Errorf("%s/ with --force: %v", keep, err)
	} else if _, err := os.Stat(filepath.Join(keep, "config.json")); err != nil {
		t.Errorf("%s/ with --force: %v", keep, err)
	}
	// An existing side file is not replaced without --force; the input is
	// never an output, even with --force.
	side := filepath.Join(t.TempDir(), "x.onnx")
	if err := os.WriteFile(side+".data", []byte("precious"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := export.Export(a, export.Options{To: export.ToONNX, Out: side, ExternalData: true}); err == nil || !strings.Contains(err.Error(), ".data") {
		t.Errorf("existing side file: %v", err)
	}
	if b, _ := os.ReadFile(side + ".data"); string(b) != "precious" {
		t.Errorf("existing side file replaced: %q", b)
	}
	for _, out := range []string{a, filepath.Dir(a)} {
		if _, err := export.Export(a, export.Options{To: export.ToHF, Out: out, Force: true}); err == nil || !strings.Contains(err.Error(), "input") {
			t.Errorf("--out %s --force over the input: %v", out, err)
		}
	}
	if _, err := os.Stat(a); err != nil {
		t.Errorf("the input is gone: %v", err)
	}
	// Nor the staging sibling (OUT.tmp) or the side file (OUT.data) an
	// export would replace, under the input's name or a hard link to it.
	tmpIn := filepath.Join(t.TempDir(), "x.tmp")
	dataIn := filepath.Join(t.TempDir(), "y.onnx.data")
	for _, p := range []string{tmpIn, dataIn} {
		if err := os.Link(a, p); err != nil {
			t.Fatal(err)
		}
	}
	linkedOut := filepath.Join(t.TempDir(), "z")
	if err := os.Link(a, linkedOut+".tmp"); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		in, to, out string
	}{
		{tmpIn, export.ToHF, strings.TrimSuffix(tmpIn, ".tmp")},
		{dataIn, export.ToONNX, strings.TrimSuffix(dataIn, ".data")},
		{a, export.ToHF, linkedOut}, // z.tmp is a hard link to the input
	} {
		_, err := export.Export(c.in, export.Options{To: c.to, Out: c.out, Force: true})
		if err == nil || !strings.Contains(err.Error(), "input") {
			t.Errorf("--to %s --out %s --force, input %s: %v, want a refusal", c.to, c.out, c.in, err)
		}
		if _, err := os.Stat(c.in); err != nil {
			t.Errorf("input %s removed: %v", c.in, err)
		}
	}
	if _, err := os.Stat(linkedOut + ".tmp"); err != nil {
		t.Errorf("the hard link to the input was removed: %v", err)
	}
}

// TestExportCancelled: an export whose context is done (Ctrl-C in slope
// export) fails with the context's error and leaves nothing: no output,
// no staging OUT.tmp, no side file.
func TestExportCancelled(t *testing.T) {
	a := toSlope(t, "", convert.Options{NM: "2:4"})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	base := t.TempDir()
	for _, o := range []export.Options{
		{To: export.ToHF, Out: filepath.Join(base, "hf")},
		{To: export.ToONNX, Out: filepath.Join(base, "m.onnx")},
		{To: export.ToONNX, Out: filepath.Join(base, "x.onnx"), ExternalData: true},
	} {
		o.Context = ctx
		if _, err := export.Export(a, o); !errors.Is(err, context.Canceled) {
			t.Errorf("%s (external %v): %v, want context.Canceled", o.To, o.ExternalData, err)
		}
	}
	if ents, _ := os.ReadDir(base); len(ents) > 0 {
		t.Errorf("cancelled exports left %v", ents)
	}
}

// lateCancel is a context that is cancelled once Err has been asked
// after more than n calls: an export's signal that comes after its last
// tensor was read.
type lateCancel struct {
	context.Context
	n, calls int
}

func (c *lateCancel) Err() error {
	if c.calls++; c.calls > c.n {
		return context.Canceled
	}
	return nil
}

// TestExportCancelledLate: a signal after the last tensor (while the
// file is encoded, written and synced) still stops the export, and
// leaves nothing.
func TestExportCancelledLate(t *testing.T) {
	a := toSlope(t, "", convert.Options{NM: "2:4"})
	m, err := export.Open(a)
	if err != nil {
		t.Fatal(err)
	}
	hs, err := m.Headers()
	m.Close()
	if err != nil {
		t.Fatal(err)
	}
	base := t.TempDir()
	for _, o := range []export.Options{
		{To: export.ToHF, Out: filepath.Join(base, "hf")},
		{To: export.ToONNX, Out: filepath.Join(base, "x.onnx"), ExternalData: true},
	} {
		o.Context = &lateCancel{Context: context.Background(), n: len(hs)}
		if _, err := export.Export(a, o); !errors.Is(err, context.Canceled) {
			t.Errorf("%s: %v, want context.Canceled", o.To, err)
		}
	}
	if ents, _ := os.ReadDir(base); len(ents) > 0 {
		t.Errorf("cancelled exports left %v", ents)
	}
}

// TestRoundTripTokenizer: the container's tokenizer files are written to
// the directory byte for byte, and come back in the second conversion.
func TestRoundTripTokenizer(t *testing.T) {
	src := t.TempDir()
	cfg := testmodels.ConfigFamilies()["untied-head"]
	cfg.Vocab = 50272
	if err := testmodels.WriteHFDirGen(src, cfg, 3, "F16", testmodels.Layout{Format: "safetensors", KeyPrefix: "model."}); err != nil {
		t.Fatal(err)
	}
	if err := testmodels.WriteGPT2Tokenizer(src); err != nil {
		t.Fatal(err)
	}
	o := convert.Options{NM: "2:4"}
	a := toSlope(t, src, o)
	dir := exportTo(t, a, export.Options{To: export.ToHF})
	for _, name := range []string{"vocab.json", "merges.txt"} {
		want, err := os.ReadFile(filepath.Join(src, name))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s: %d bytes (%v), want the source's %d", name, len(got), err, len(want))
		}
	}
	cj, _ := os.ReadFile(filepath.Join(dir, "config.json"))
	if !bytes.Contains(cj, []byte(`"torch_dtype": "float16"`)) || !bytes.Contains(cj, []byte(`"tie_word_embeddings": false`)) {
		t.Errorf("config.json:\n%s", cj)
	}
	sameTensors(t, a, toSlope(t, dir, o))
}

// TestExportWarnsRoundedMerge: adapters merged into 16-bit weights (the
// default --dtype keep of a bf16 container) are said to be rounded;
// written in fp32 they are not.
func TestExportWarnsRoundedMerge(t *testing.T) {
	a := toSlope(t, "", convert.Options{NM: "2:4", DType: "bf16", Rank: 2})
	for _, c := range []struct {
		dtype string
		warn  bool
	}{{"", true}, {"fp32", false}} {
		rep, err := export.Export(a, export.Options{To: export.ToONNX, Out: filepath.Join(t.TempDir(), "m.onnx"), DType: c.dtype})
		if err != nil {
			t.Fatal(err)
		}
		warned := slices.ContainsFunc(rep.Warnings, func(w string) bool { return strings.Contains(w, "merged into BF16 weights") })
		if warned != c.warn || rep.Merged == 0 {
			t.Errorf("--dtype %q: warnings %q (%d merged), want the rounding warning: %v", c.dtype, rep.Warnings, rep.Merged, c.warn)
		}
	}
}
