package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/slopeml/slope/convert"
	"github.com/slopeml/slope/format"
)

// TestDenseToSlopeDefault: without --in the embedded default model (the
// King James mini model) is converted, with its tokenizer.
func TestDenseToSlopeDefault(t *testing.T) {
	out := filepath.Join(t.TempDir(), "kjv.slope")
	var stdout, stderr bytes.Buffer
	if code := run([]string{"dense-to-slope", "--out", out}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	for _, want := range []string{"wrote " + out, "tensors:", "24 weights pruned", "transpose extra zeros", "decoder.layers.3.fc2.weight", "bytes in/out"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, stdout.String())
		}
	}
	if !strings.Contains(stderr.String(), "converted 68/68 decoder.final_layer_norm.bias\n") {
		t.Errorf("no progress on stderr: %q", stderr.String())
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
	if cmd := m.Provenance.GetCommand(); cmd != "slope-convert dense-to-slope --out "+out {
		t.Errorf("command %q", cmd)
	}
	if src := m.Metadata["source"]; src != convert.DefaultLabel {
		t.Errorf("source %q, want %q", src, convert.DefaultLabel)
	}
	if tk := m.GetTokenizer(); tk == nil || tk.Files["vocab.json"] == "" || tk.Files["merges.txt"] == "" {
		t.Errorf("the default model's tokenizer did not travel: %v", tk)
	}
}

func TestDenseToSlopeJSON(t *testing.T) {
	out := filepath.Join(t.TempDir(), "tiny.slope")
	var stdout, stderr bytes.Buffer
	code := run([]string{"dense-to-slope", "--in", convert.TinyLabel, "--out", out, "--json", "--quiet", "--dtype", "fp16", "--compress", "zstd"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	if stderr.Len() != 0 {
		t.Errorf("--quiet wrote %q", stderr.String())
	}
	var res convert.Result
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		t.Fatalf("--json output %q: %v", stdout.String(), err)
	}
	if res.Out != out || res.Pruned != 12 || res.Tensors != 48 || res.StoredBytes <= 0 || res.TransposeExtraZeros <= 0 {
		t.Errorf("result %+v", res)
	}
	if _, err := os.Stat(out); err != nil {
		t.Error(err)
	}
}

func TestErrors(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		args []string
		want string
		code int
	}{
		{[]string{"dense-to-slope", "--in", convert.TinyLabel, "--out", filepath.Join(dir, "a.slope"), "--nm", "5:4"}, "--nm", 2},
		{[]string{"dense-to-slope", "--in", convert.TinyLabel, "--out", filepath.Join(dir, "a.slope"), "--dtype", "int8"}, "--dtype", 2},
		{[]string{"dense-to-slope", "--in", convert.TinyLabel, "--out", filepath.Join(dir, "a.slope"), "--compress", "gzip"}, "--compress", 2},
		{[]string{"dense-to-slope", "--in", convert.TinyLabel, "--out", filepath.Join(dir, "a.slope"), "--transpose", "both"}, "--transpose", 2},
		{[]string{"dense-to-slope", "--in", convert.TinyLabel, "--out", ""}, "--out", 1},
		{[]string{"dense-to-slope", "--in", filepath.Join(dir, "nope"), "--out", filepath.Join(dir, "a.slope")}, "nope", 1},
		{[]string{"dense-to-slope", "--bogus"}, "bogus", 2},
		{[]string{"frobnicate"}, "frobnicate", 2},
		{[]string{}, "missing command", 2},
		{[]string{"help", "frobnicate"}, `help: unknown command "frobnicate"`, 2},
		{[]string{"dense-to-slope", filepath.Join(dir, "hf"), "--out", filepath.Join(dir, "a.slope")}, "give the input with --in", 2},
	}
	for _, c := range cases {
		var stdout, stderr bytes.Buffer
		if code := run(c.args, &stdout, &stderr); code != c.code {
			t.Errorf("%v: exit %d, want %d", c.args, code, c.code)
		}
		msg := stderr.String()
		if !strings.HasPrefix(msg, "slope-convert: ") || !strings.Contains(msg, c.want) {
			t.Errorf("%v: stderr %q, want slope-convert: ...%s...", c.args, msg, c.want)
		}
		if hint := strings.Contains(msg, "--help' for usage."); hint != (c.code == 2) {
			t.Errorf("%v: stderr %q: the --help hint goes with usage errors only", c.args, msg)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "a.slope")); err == nil {
		t.Error("failed run left a file")
	}
}

// TestOutChecks: --out is checked before any work. A file that is not a
// .slope container is replaced only with --force, never when it is the
// input; a directory or a missing directory is refused; an earlier
// container is replaced.
func TestOutChecks(t *testing.T) {
	dir := t.TempDir()
	foreign := filepath.Join(dir, "model.onnx")
	if err := os.WriteFile(foreign, []byte("an ONNX model"), 0o644); err != nil {
		t.Fatal(err)
	}
	tiny := []string{"dense-to-slope", "--in", convert.TinyLabel, "--quiet"}
	for _, c := range []struct {
		args []string
		want string
	}{
		{append(tiny[:4:4], "--out", foreign), "--force"},
		{append(tiny[:4:4], "--out", dir), "is a directory"},
		{append(tiny[:4:4], "--out", filepath.Join(dir, "missing", "x.slope")), "cannot create files"},
		{[]string{"dense-to-slope", "--in", foreign, "--out", foreign, "--force"}, "is the input"},
	} {
		var stdout, stderr bytes.Buffer
		if code := run(c.args, &stdout, &stderr); code != 1 || !strings.Contains(stderr.String(), c.want) || !strings.Contains(stderr.String(), "--out") {
			t.Errorf("%v: exit %d, %q; want an --out error with %q", c.args, code, stderr.String(), c.want)
		}
	}
	if b, err := os.ReadFile(foreign); err != nil || string(b) != "an ONNX model" {
		t.Fatalf("the foreign file changed: %q %v", b, err)
	}
	// With --force it is replaced; a second run replaces the container.
	for range 2 {
		var stdout, stderr bytes.Buffer
		if code := run(append(tiny[:4:4], "--out", foreign, "--force"), &stdout, &stderr); code != 0 {
			t.Fatalf("exit %d: %s", code, stderr.String())
		}
		if code := run(append(tiny[:4:4], "--out", foreign), &stdout, &stderr); code != 0 {
			t.Fatalf("replacing a container: exit %d: %s", code, stderr.String())
		}
	}
	f, err := format.Open(foreign, nil)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
}

func TestDenseToSlopeCalibrated(t *testing.T) {
	dir := t.TempDir()
	ids := make([]byte, 4*400)
	for i := 0; i < 400; i++ {
		ids[4*i] = byte(i*7 + 3) // uint32 ids below 256
	}
	calib := filepath.Join(dir, "calib.u32")
	if err := os.WriteFile(calib, ids, 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "sgpt.slope")
	var stdout, stderr bytes.Buffer
	code := run([]string{"dense-to-slope", "--in", convert.TinyLabel, "--out", out, "--method", "sparsegpt", "--calib", calib, "--calib-samples", "4", "--calib-seqlen", "16", "--seed", "5"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	for _, want := range []string{"pruned layer 1/2 in", "pruned layer 2/2 in", "converted 36/36"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr.String())
		}
	}
	for _, want := range []string{"method:                sparsegpt, calibrated on " + calib + " (4 samples of 16 tokens, seed 5)", "calibrated pruning:    2 layers", "err calib"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, stdout.String())
		}
	}
	stdout.Reset()
	stderr.Reset()
	code = run([]string{"dense-to-slope", "--in", convert.TinyLabel, "--out", out, "--method", "wanda", "--calib", calib, "--calib-samples", "4", "--json", "--quiet"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	var res convert.Result
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		t.Fatal(err)
	}
	if res.Method != "wanda" || len(res.Layers) != 2 || res.Layers[0].Seconds <= 0 || res.CalibSeqLen != 64 || res.Pruned != 12 {
		t.Errorf("result %+v", res)
	}
	if !strings.Contains(stdout.String(), `"layers": [`) || !strings.Contains(stdout.String(), `"calib_rel_err"`) {
		t.Errorf("JSON lacks the layer times or calibration errors:\n%s", stdout.String())
	}
}

func TestCalibFlagErrors(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "a.slope")
	calib := filepath.Join(dir, "c.bin")
	if err := os.WriteFile(calib, make([]byte, 200), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		args []string
		want string
		code int
	}{
		{[]string{"--method", "obs"}, "--method", 2},
		{[]string{"--method", "wanda"}, "--calib FILE", 2},
		{[]string{"--method", "sparsegpt", "--calib", filepath.Join(dir, "missing.txt")}, "missing.txt", 1},
		{[]string{"--calib", calib}, "--calib", 2},
		{[]string{"--calib-samples", "4"}, "--calib-samples", 2},
		{[]string{"--method", "wanda", "--calib", calib, "--calib-samples", "0"}, "--calib-samples", 2},
		{[]string{"--method", "wanda", "--calib", calib, "--calib-seqlen", "1000"}, "--calib-seqlen", 1},
		{[]string{"--method", "wanda", "--calib", calib, "--calib-format", "csv"}, "--calib-format", 2},
		{[]string{"--method", "wanda", "--calib", calib, "--calib-seqlen", "64", "--calib-format", "u32"}, calib, 1},
	}
	for _, c := range cases {
		var stdout, stderr bytes.Buffer
		args := append([]string{"dense-to-slope", "--in", convert.TinyLabel, "--out", out}, c.args...)
		if code := run(args, &stdout, &stderr); code != c.code || !strings.Contains(stderr.String(), c.want) {
			t.Errorf("%v: exit %d, stderr %q, want %d and one naming %q", c.args, code, stderr.String(), c.code, c.want)
		}
	}
	if _, err := os.Stat(out); err == nil {
		t.Error("failed run left a file")
	}
}
