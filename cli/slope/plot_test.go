package main

import (
	"bytes"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestPlotCommand: two small logs give one PNG; a bad log names its file.
func TestPlotCommand(t *testing.T) {
	dir := t.TempDir()
	for k, name := range []string{"dense.jsonl", "slope.jsonl"} {
		var b strings.Builder
		for s := 1; s <= 20; s++ {
			fmt.Fprintf(&b, `{"type":"step","step":%d,"loss":%g,"lr":0.001,"elapsed_s":0}`+"\n", s, 5-0.1*float64(s)+0.2*float64(k))
			if s%5 == 0 {
				fmt.Fprintf(&b, `{"type":"eval","step":%d,"loss":%g,"ppl":1,"elapsed_s":0}`+"\n", s, 5.1-0.1*float64(s)+0.2*float64(k))
			}
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(dir, "loss.png")
	code, stdout, stderr := runSlope("plot", filepath.Join(dir, "dense.jsonl"), filepath.Join(dir, "slope.jsonl"), "--out", out, "--width", "4", "--height", "3")
	if code != 0 || !strings.Contains(stdout, "2 runs") {
		t.Fatalf("exit %d: %s %s", code, stdout, stderr)
	}
	png, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(png, []byte("\x89PNG\r\n\x1a\n")) || len(png) < 5000 {
		t.Fatalf("%d bytes, prefix %q: not a plot PNG", len(png), png[:min(8, len(png))])
	}

	bad := filepath.Join(dir, "bad.jsonl")
	if err := os.WriteFile(bad, []byte(`{"type":"step","step":1,"loss":2}`+"\nnot json\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty.jsonl")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{bad, empty, filepath.Join(dir, "missing.jsonl")} {
		code, _, stderr = runSlope("plot", filepath.Join(dir, "dense.jsonl"), f, "--out", filepath.Join(dir, "x.png"))
		if code == 0 || !strings.Contains(stderr, filepath.Base(f)) {
			t.Fatalf("%s: exit %d, stderr %q", f, code, stderr)
		}
	}
	if code, _, _ := runSlope("plot", filepath.Join(dir, "dense.jsonl")); code != exitUsage {
		t.Fatalf("no --out: exit %d", code)
	}
}

// A resumed run's log repeats steps: the reader keeps each step's last
// record, in step order; a record without a loss, a width that is not a
// finite size and losses too large for an axis are handled.
func TestPlotEdges(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "run.jsonl")
	var b strings.Builder
	for _, s := range []int{1, 2, 3, 4, 2, 3, 4, 5} { // resumed after step 1
		fmt.Fprintf(&b, `{"type":"step","step":%d,"loss":%d,"elapsed_s":0}`+"\n", s, 10+s)
	}
	fmt.Fprintf(&b, `{"type":"step","step":6,"loss":1e308,"elapsed_s":0}`+"\n")
	if err := os.WriteFile(log, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := readRunLoss(log)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.train) != 5 || r.train[0].X != 1 || r.train[4].X != 5 {
		t.Fatalf("train points %v", r.train)
	}
	for i := 1; i < len(r.train); i++ {
		if r.train[i].X <= r.train[i-1].X {
			t.Fatalf("steps out of order: %v", r.train)
		}
	}
	out := filepath.Join(dir, "p.png")
	for _, w := range []string{"NaN", "+Inf", "1e9", "0"} {
		if code, _, stderr := runSlope("plot", log, "--out", out, "--width", w); code != exitUsage || !strings.Contains(stderr, "--width") {
			t.Errorf("--width %s: exit %d, %q", w, code, stderr)
		}
	}
	noLoss := filepath.Join(dir, "noloss.jsonl")
	if err := os.WriteFile(noLoss, []byte(`{"type":"step","step":1}`+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := readRunLoss(noLoss); err == nil || !strings.Contains(err.Error(), "noloss.jsonl:1") {
		t.Errorf("a record without a loss: %v", err)
	}
	if code, _, stderr := runSlope("plot", log, "--out", out); code != 0 {
		t.Errorf("plot: exit %d, %s", code, stderr)
	}
	// An --out in no image format, or that is one of the logs, is refused
	// before anything is written: the file is left as it was.
	other := filepath.Join(dir, "model.slope")
	if err := os.WriteFile(other, []byte("precious"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, o := range []string{other, log, filepath.Join(dir, ".", "run.jsonl")} {
		if code, _, stderr := runSlope("plot", log, "--out", o); code != exitUsage || !strings.Contains(stderr, "--out") {
			t.Errorf("--out %s: exit %d, %q", o, code, stderr)
		}
	}
	if b, err := os.ReadFile(other); err != nil || string(b) != "precious" {
		t.Errorf("refused --out changed: %q %v", b, err)
	}
	if r2, err := readRunLoss(log); err != nil || len(r2.train) != 5 {
		t.Errorf("the log after a refused --out: %v", err)
	}
	if code, _, _ := runSlope("plot", log, "--out", filepath.Join(dir, "x.foo")); code != exitUsage {
		t.Errorf("--out x.foo: exit %d", code)
	}
	if _, err := os.Stat(filepath.Join(dir, "x.foo")); err == nil {
		t.Error("a refused --out x.foo was created")
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Errorf("temporary file %s left", e.Name())
		}
	}
}

// TestExactTicks: on the narrow ranges of late-training loss curves (and
// on wide ones) no two major ticks read the same, and each label is its
// tick's value.
func TestExactTicks(t *testing.T) {
	for _, r := range [][2]float64{{6.21, 6.28}, {6.23, 6.28}, {2.0001, 2.0009}, {0, 10}, {-3, 250}, {1e-4, 3e-4}, {1e-12, 5e-12}, {6.2, 6.2000000002}} {
		seen := map[string]bool{}
		majors := 0
		for _, tk := range (exactTicks{}).Ticks(r[0], r[1]) {
			if tk.Label == "" {
				continue
			}
			majors++
			if seen[tk.Label] {
				t.Errorf("range %v: label %q twice", r, tk.Label)
			}
			seen[tk.Label] = true
			if v, err := strconv.ParseFloat(tk.Label, 64); err != nil || math.Abs(v-tk.Value) > 1e-6*(r[1]-r[0]) {
				t.Errorf("range %v: tick %v labelled %q", r, tk.Value, tk.Label)
			}
		}
		if majors < 2 {
			t.Errorf("range %v: %d labelled ticks", r, majors)
		}
	}
}
