package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestExportCommand(t *testing.T) {
	model := convertTiny(t, "2:4")
	dir := filepath.Join(t.TempDir(), "hf")
	code, stdout, stderr := runSlope("export", model, "--to", "hf", "--out", dir, "--dtype", "fp16")
	if code != 0 || !strings.Contains(stdout, "12 N:M weights densified") {
		t.Fatalf("export hf: exit %d, %q %s", code, stdout, stderr)
	}
	for _, f := range []string{"config.json", "model.safetensors"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Error(err)
		}
	}
	// An existing non-empty directory needs --force.
	code, _, stderr = runSlope("export", model, "--to", "hf", "--out", dir)
	if code != exitError || !strings.Contains(stderr, "--force") || !strings.Contains(stderr, dir) {
		t.Errorf("export over a directory: exit %d, %s", code, stderr)
	}
	if code, _, stderr = runSlope("export", model, "--to", "hf", "--out", dir, "--force"); code != 0 {
		t.Errorf("--force: exit %d, %s", code, stderr)
	}
	onnx := filepath.Join(t.TempDir(), "m.onnx")
	code, stdout, stderr = runSlope("export", model, "--to", "onnx", "--out", onnx, "--with-past", "--external-data", "--json")
	var rep struct {
		Files    []string `json:"files"`
		External bool     `json:"external_data"`
	}
	if code != 0 || json.Unmarshal([]byte(stdout), &rep) != nil || !rep.External || len(rep.Files) != 2 {
		t.Fatalf("export onnx: exit %d, %q %s", code, stdout, stderr)
	}
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"export", model, "--out", dir}, exitUsage, "--to is required"},
		{[]string{"export", model, "--to", "hf"}, exitUsage, "--out is required"},
		{[]string{"export", model, "--to", "tflite", "--out", dir}, exitUsage, `--to "tflite"`},
		{[]string{"export", model, "--to", "hf", "--out", dir, "--dtype", "int4"}, exitUsage, `--dtype "int4"`},
		{[]string{"export", model, "--to", "hf", "--out", dir, "--with-past"}, exitUsage, "--with-past"},
		{[]string{"export", "--to", "hf", "--out", dir}, exitUsage, "missing FILE"},
		{[]string{"export", filepath.Join(t.TempDir(), "no.slope"), "--to", "hf", "--out", dir + "2"}, exitError, "no.slope"},
	} {
		code, _, stderr := runSlope(c.args...)
		if code != c.code || !strings.Contains(stderr, c.want) {
			t.Errorf("%v: exit %d, stderr %q; want %d and %q", c.args[1:], code, stderr, c.code, c.want)
		}
	}
	code, stdout, _ = runSlope("export", "--help")
	if code != 0 || !strings.Contains(stdout, "--with-past") || !strings.Contains(stdout, "W_s + scale·(L·R)ᵀ") {
		t.Errorf("help: %d %q", code, stdout)
	}
}
