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

func TestDenseToSlopeDefault(t *testing.T) {
	out := filepath.Join(t.TempDir(), "tiny.slope")
	var stdout, stderr bytes.Buffer
	if code := run([]string{"dense-to-slope", "--out", out}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	for _, want := range []string{"wrote " + out, "tensors:", "12 weights pruned", "transpose extra zeros", "decoder.layers.1.fc2.weight", "bytes in/out"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, stdout.String())
		}
	}
	if !strings.Contains(stderr.String(), "converted 36/36 decoder.final_layer_norm.bias\n") {
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
	if cmd := f.Manifest().Provenance.GetCommand(); cmd != "slope-convert dense-to-slope --out "+out {
		t.Errorf("command %q", cmd)
	}
}

func TestDenseToSlopeJSON(t *testing.T) {
	out := filepath.Join(t.TempDir(), "tiny.slope")
	var stdout, stderr bytes.Buffer
	code := run([]string{"dense-to-slope", "--out", out, "--json", "--quiet", "--dtype", "fp16", "--compress", "zstd"}, &stdout, &stderr)
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
	}{
		{[]string{"dense-to-slope", "--out", filepath.Join(dir, "a.slope"), "--nm", "5:4"}, "--nm"},
		{[]string{"dense-to-slope", "--out", filepath.Join(dir, "a.slope"), "--dtype", "int8"}, "--dtype"},
		{[]string{"dense-to-slope", "--out", filepath.Join(dir, "a.slope"), "--compress", "gzip"}, "--compress"},
		{[]string{"dense-to-slope", "--out", ""}, "--out"},
		{[]string{"dense-to-slope", "--in", filepath.Join(dir, "nope"), "--out", filepath.Join(dir, "a.slope")}, "nope"},
		{[]string{"dense-to-slope", "--bogus"}, "bogus"},
		{[]string{"frobnicate"}, "frobnicate"},
	}
	for _, c := range cases {
		var stdout, stderr bytes.Buffer
		if code := run(c.args, &stdout, &stderr); code != 1 {
			t.Errorf("%v: exit %d", c.args, code)
		}
		msg := stderr.String()
		if !strings.HasPrefix(msg, "slope-convert: ") || !strings.Contains(msg, c.want) {
			t.Errorf("%v: stderr %q, want slope-convert: ...%s...", c.args, msg, c.want)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "a.slope")); err == nil {
		t.Error("failed run left a file")
	}
}
