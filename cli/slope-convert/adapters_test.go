package main

import (
	"bytes"
	"encoding/json"
	"io"
	"path/filepath"
	"strings"
	"testing"

	"github.com/slopeml/slope/convert"
	"github.com/slopeml/slope/format"
)

func TestDenseToSlopeAdapterFlags(t *testing.T) {
	out := filepath.Join(t.TempDir(), "a.slope")
	var stdout, stderr bytes.Buffer
	args := []string{"dense-to-slope", "--in", convert.TinyLabel, "--out", out, "--nm-layers", "1=4:8", "--rank-frac", "0.125", "--adapter-init", "svd",
		"--merge-adapters", "--adapter-scale", "0.5", "--seed", "9", "--json", "--quiet"}
	if code := run(args, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	if stderr.Len() != 0 {
		t.Errorf("--quiet wrote %q", stderr.String())
	}
	var res convert.Result
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		t.Fatal(err)
	}
	if res.Rank != 8 || res.AdapterInit != "svd" || !res.Merged || res.Scale != 0.5 || res.Seed != 9 || res.Adapted != 12 ||
		len(res.Weights) != 36 || res.SourceBytes <= 0 || res.Ratio <= 0 || res.Seconds <= 0 {
		t.Errorf("result %+v", res)
	}
	for _, w := range res.Weights {
		if w.Rank == 8 && !(w.RelErrAdapted > 0 && w.RelErrAdapted < w.RelErrPruned) {
			t.Errorf("%s: errors %g / %g", w.Name, w.RelErrPruned, w.RelErrAdapted)
		}
	}
	f, err := format.Open(out, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Verify(nil); err != nil {
		t.Fatal(err)
	}
	d, _ := f.Lookup("decoder.layers.1.fc2.weight")
	if d.Nm.GetM() != 8 || d.Shape[0] != 64+8 {
		t.Errorf("layer 1 fc2: %v %v", d.Nm, d.Shape)
	}
}

// TestDenseToSlopeTextSummary: the per-weight errors are in the text
// summary (not with --quiet).
func TestDenseToSlopeTextSummary(t *testing.T) {
	out := filepath.Join(t.TempDir(), "a.slope")
	for _, quiet := range []bool{false, true} {
		var stdout, stderr bytes.Buffer
		args := []string{"dense-to-slope", "--in", convert.TinyLabel, "--out", out, "--rank", "4", "--adapter-init", "svd"}
		if quiet {
			args = append(args, "--quiet")
		}
		if code := run(args, &stdout, &stderr); code != 0 {
			t.Fatalf("exit %d: %s", code, stderr.String())
		}
		s := stdout.String()
		for _, want := range []string{"adapters:              12 of rank 4, svd init, plain layout", "bytes in/out"} {
			if !strings.Contains(s, want) {
				t.Errorf("summary lacks %q:\n%s", want, s)
			}
		}
		if has := strings.Contains(s, "err adapted") && strings.Contains(s, "decoder.layers.0.fc1.weight"); has == quiet {
			t.Errorf("quiet %v: per-weight table present %v:\n%s", quiet, has, s)
		}
		if quiet != (stderr.Len() == 0) {
			t.Errorf("quiet %v: stderr %q", quiet, stderr.String())
		}
	}
}

// TestProgressBar: a terminal gets a progress bar instead of lines.
func TestProgressBar(t *testing.T) {
	old := isTerminal
	isTerminal = func(io.Writer) bool { return true }
	defer func() { isTerminal = old }()
	var buf bytes.Buffer
	p := newProgress(&buf)
	for i := 1; i <= 3; i++ {
		p.tensor(i, 3, "w")
		if i == 1 {
			p.layer(convert.LayerReport{Layer: 0, Layers: 2, Seconds: 0.5, Weights: []string{"a"}})
		}
	}
	if s := buf.String(); strings.Contains(s, "converted") || !strings.Contains(s, "\r") || !strings.Contains(s, "pruned layer 1/2 in 0.50s (1 weights)\n") {
		t.Errorf("terminal progress %q", s)
	}
}

// TestAdapterFlagErrors: mistakes in the flags are usage errors (exit
// status 2); the ones that need the model (a rank or layer range it does
// not have) fail the conversion (1).
func TestAdapterFlagErrors(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "a.slope")
	for _, c := range []struct {
		args []string
		want string
		code int
	}{
		{[]string{"--rank", "4", "--rank-frac", "0.1"}, "--rank and --rank-frac are mutually exclusive", 2},
		{[]string{"--rank", "0"}, "--rank 0", 2},
		{[]string{"--rank-frac", "2"}, "--rank-frac 2", 2},
		{[]string{"--adapter-init", "svd"}, "--adapter-init needs --rank", 2},
		{[]string{"--merge-adapters"}, "--merge-adapters needs --rank", 2},
		{[]string{"--adapter-scale", "2"}, "--adapter-scale needs --rank", 2},
		{[]string{"--rank", "4", "--adapter-init", "pca"}, "--adapter-init \"pca\"", 2},
		{[]string{"--rank", "4", "--adapter-scale", "0"}, "--adapter-scale 0", 2},
		{[]string{"--rank", "100"}, "--rank 100: weight", 1},
		{[]string{"--rank", "2", "--merge-adapters"}, "--merge-adapters with --rank 2", 1},
		{[]string{"--nm-layers", "0-3=2:4"}, "--nm-layers: layers 0-3", 1},
		{[]string{"--nm-layers", "0=3:2"}, "--nm-layers \"0=3:2\"", 2},
		{[]string{"--nm-layers", "x"}, "--nm-layers \"x\"", 2},
		{[]string{"--seed", "-1"}, "seed", 2},
	} {
		var stdout, stderr bytes.Buffer
		args := append([]string{"dense-to-slope", "--in", convert.TinyLabel, "--out", out}, c.args...)
		if code := run(args, &stdout, &stderr); code != c.code || !strings.Contains(stderr.String(), c.want) {
			t.Errorf("%v: exit %d, stderr %q, want %d and %q", c.args, code, stderr.String(), c.code, c.want)
		}
	}
}
