package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/format/slopepb"
	"github.com/slopeml/slope/ops/cpu"
)

// writeTokenFile writes n pseudo-random uint16 tokens below vocab.
func writeTokenFile(t *testing.T, path string, n, vocab int) {
	t.Helper()
	b := make([]byte, 2*n)
	x := uint32(12345)
	for i := range n {
		x = x*1664525 + 1013904223
		binary.LittleEndian.PutUint16(b[2*i:], uint16(x>>8)%uint16(vocab))
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func readLog(t *testing.T, path string) []trainRecord {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []trainRecord
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r trainRecord
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("log line %q: %v", sc.Text(), err)
		}
		out = append(out, r)
	}
	return out
}

// TestTrainCommand: 4 steps write a log and a checkpoint that verify
// accepts; 2 steps plus --resume to 4 end with the same losses and the
// same checkpoint tensors.
func TestTrainCommand(t *testing.T) {
	model := convertTiny(t, "2:4")
	dir := t.TempDir()
	data, val := filepath.Join(dir, "train.u16"), filepath.Join(dir, "val.u16")
	writeTokenFile(t, data, 2000, 50)
	writeTokenFile(t, val, 300, 50)
	common := []string{"--data", data, "--val", val, "--batch", "2", "--seq", "16", "--lr", "1e-3", "--warmup", "1",
		"--threads", "2", "--seed", "5", "--mask-refresh", "2", "--eval-every", "2"}
	full, fullLog := filepath.Join(dir, "full.slope"), filepath.Join(dir, "full.jsonl")
	// What a run killed while writing full.slope would have left.
	stale := filepath.Join(dir, ".full.slope.tmp-123")
	if err := os.WriteFile(stale, []byte("partial"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := runSlope(append([]string{"train", model, "--steps", "4", "--out", full, "--log", fullLog, "--save-every", "2"}, common...)...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) || !strings.Contains(stderr, "removed "+stale) {
		t.Errorf("stale temporary file: %v; stderr %q", err, stderr)
	}
	lines := 0
	for _, l := range strings.Split(stderr, "\n") {
		if strings.HasPrefix(l, "step ") && strings.Contains(l, "loss") && strings.Contains(l, "tokens/s") {
			lines++
		}
	}
	if !strings.Contains(stdout, "trained to step 4") || lines != 4 || !strings.Contains(stdout, "cpu: "+cpu.Kernels()+" kernels") {
		t.Fatalf("stdout %q\nstderr %q", stdout, stderr)
	}
	recs := readLog(t, fullLog)
	// One memory record, which has no loss to report.
	raw, err := os.ReadFile(fullLog)
	if err != nil {
		t.Fatal(err)
	}
	memLines := 0
	for _, l := range strings.Split(string(raw), "\n") {
		if strings.Contains(l, `"type":"memory"`) {
			memLines++
			if strings.Contains(l, `"loss"`) {
				t.Fatalf("memory record carries a loss: %s", l)
			}
		}
	}
	if memLines != 1 {
		t.Fatalf("%d memory records in %s", memLines, raw)
	}
	var steps, evals []trainRecord
	for _, r := range recs {
		switch r.Type {
		case "step":
			steps = append(steps, r)
		case "eval":
			evals = append(evals, r)
		}
	}
	if len(steps) != 4 || len(evals) != 2 || steps[3].Step != 4 || steps[0].LR != 1e-3 || evals[1].Step != 4 || evals[1].PPL <= 1 {
		t.Fatalf("log %+v", recs)
	}
	// Every step record says its epoch, the first one (0) too; an eval
	// record has none.
	if steps[0].Epoch == nil || *steps[0].Epoch != 0 || evals[0].Epoch != nil {
		t.Fatalf("epochs: step 1 %v, eval %v", steps[0].Epoch, evals[0].Epoch)
	}
	if code, out, errs := runSlope("verify", full); code != 0 || !strings.HasPrefix(out, "OK") {
		t.Fatalf("verify: exit %d %s %s", code, out, errs)
	}

	// The same run, interrupted after step 2 (--stop-after keeps the
	// schedule of --steps 4), then resumed.
	half, halfLog := filepath.Join(dir, "half.slope"), filepath.Join(dir, "half.jsonl")
	if code, _, stderr := runSlope(append([]string{"train", model, "--steps", "4", "--stop-after", "2", "--out", half, "--log", halfLog}, common...)...); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	resumed := filepath.Join(dir, "resumed.slope")
	code, _, stderr = runSlope("train", model, "--resume", half, "--data", data, "--val", val, "--batch", "2", "--seq", "16",
		"--threads", "2", "--eval-every", "2", "--steps", "4", "--out", resumed, "--log", halfLog)
	if code != 0 {
		t.Fatalf("resume: exit %d: %s", code, stderr)
	}
	var rsteps []trainRecord
	for _, r := range readLog(t, halfLog) {
		if r.Type == "step" {
			rsteps = append(rsteps, r)
		}
	}
	if len(rsteps) != 4 {
		t.Fatalf("resumed log has %d steps", len(rsteps))
	}
	for i := range steps {
		if *steps[i].Loss != *rsteps[i].Loss || steps[i].LR != rsteps[i].LR {
			t.Fatalf("step %d: loss %v lr %v uninterrupted, %v %v resumed", i+1, *steps[i].Loss, steps[i].LR, *rsteps[i].Loss, rsteps[i].LR)
		}
		// The token count runs on from the checkpoint's (2 x 16 per step).
		if want := int64(32 * (i + 1)); steps[i].Tokens != want || rsteps[i].Tokens != want {
			t.Fatalf("step %d: tokens %d uninterrupted, %d resumed, want %d", i+1, steps[i].Tokens, rsteps[i].Tokens, want)
		}
	}
	a, err := format.Open(full, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := format.Open(resumed, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if a.Manifest().GetTraining().GetStep() != 4 || b.Manifest().GetTraining().GetStep() != 4 {
		t.Fatal("checkpoints not at step 4")
	}
	for _, d := range a.Tensors() {
		x, err := a.Raw(d.Name)
		if err != nil {
			t.Fatal(err)
		}
		y, err := b.Raw(d.Name)
		if err != nil {
			t.Fatal(err)
		}
		if string(x) != string(y) {
			t.Fatalf("tensor %s differs between the uninterrupted and the resumed run", d.Name)
		}
	}
	if p, q := a.Manifest().GetTraining().GetData(), b.Manifest().GetTraining().GetData(); p.GetOffset() != q.GetOffset() || p.GetEpoch() != q.GetEpoch() || p.GetSha256() == "" {
		t.Fatalf("data positions %v and %v", p, q)
	}
}

// TestTrainUsage: bad command lines exit 2 naming the flag.
func TestTrainUsage(t *testing.T) {
	model := convertTiny(t, "2:4")
	data := filepath.Join(t.TempDir(), "d.u16")
	writeTokenFile(t, data, 100, 50)
	ok := []string{"train", model, "--data", data, "--steps", "1", "--out", filepath.Join(t.TempDir(), "o.slope")}
	for _, c := range []struct {
		args []string
		flag string
	}{
		{[]string{"train", model, "--steps", "1", "--out", "x.slope"}, "--data"},
		{[]string{"train", model, "--data", data, "--steps", "1"}, "--out"},
		{append(ok[:len(ok):len(ok)], "--steps", "0"), "--steps"},
		{append(ok[:len(ok):len(ok)], "--batch", "0"), "--batch"},
		{append(ok[:len(ok):len(ok)], "--seq", "1"), "--seq"},
		{append(ok[:len(ok):len(ok)], "--schedule", "step"), "--schedule"},
		{append(ok[:len(ok):len(ok)], "--lr", "-1"), "--lr"},
		{append(ok[:len(ok):len(ok)], "--save-every", "-1"), "--save-every"},
		{append(ok[:len(ok):len(ok)], "--bogus"), "bogus"},
		{append(ok[:len(ok):len(ok)], "--adapter-start", "1.5"), "--adapter-start"},
		{append(ok[:len(ok):len(ok)], "--adapter-start", "-3"), "--adapter-start"},
		{append(ok[:len(ok):len(ok)], "--rank-frac", "2"), "--rank-frac"},
		{append(ok[:len(ok):len(ok)], "--accum", "9"), "--accum"},
		{append(ok[:len(ok):len(ok)], "--accum", "0"), "--accum"},
		{append(ok[:len(ok):len(ok)], "--clip", "NaN"), "--clip"},
		{append(ok[:len(ok):len(ok)], "--weight-decay", "NaN"), "--weight-decay"},
		{append(ok[:len(ok):len(ok)], "--clip", "+Inf"), "--clip"},
		{append(ok[:len(ok):len(ok)], "--gpu-profile"), "--gpu-profile"},
		{append(ok[:len(ok):len(ok)], "--seq", "65"), "--seq"}, // the tiny model has 64 positions
		{append(ok[:len(ok):len(ok)], "--device", "tpu"), "--device"},
		{append(ok[:len(ok):len(ok)], "--rank", "2", "--rank-frac", "0.25"), "--rank-frac"},
		{append(ok[:len(ok):len(ok)], "--eval-every", "2"), "--val"},
		{append(ok[:len(ok):len(ok)], "--threads", "-1"), "--threads"},
		{append(ok[:len(ok):len(ok)], "--log", ok[len(ok)-1]), "--log"},
		{append(ok[:len(ok):len(ok)], "--log", data), "is --data"},
		{append(ok[:len(ok):len(ok)], "--log", model), "is MODEL"},
		{append(ok[:len(ok):len(ok)], "--adapter-start", "1.0"), "--adapter-start"},
		{[]string{"train"}, "MODEL"},
	} {
		code, _, stderr := runSlope(c.args...)
		if code != exitUsage || !strings.Contains(stderr, c.flag) {
			t.Errorf("%v: exit %d, %q", c.args[1:], code, stderr)
		}
	}
	// --out is checked before the first step: a directory, or a file that
	// is not a container (here the data), is refused.
	for _, o := range []string{t.TempDir(), data} {
		code, _, stderr := runSlope("train", model, "--data", data, "--steps", "2", "--out", o)
		if code == 0 || !strings.Contains(stderr, "--out "+o) || strings.Contains(stderr, "step 1") {
			t.Errorf("--out %s: exit %d, %q", o, code, stderr)
		}
	}
	// Adapters planned after the run's last step: said, not silent.
	code, _, stderr := runSlope(append(ok[:len(ok):len(ok)], "--rank", "2", "--adapter-start", "50", "--seq", "8", "--batch", "2")...)
	if code != 0 || !strings.Contains(stderr, "adapters join at step 50, after this run's last step (1)") {
		t.Errorf("--adapter-start 50 --steps 1: exit %d, %q", code, stderr)
	}
	// Adapters on a model without N:M weights are refused, not skipped.
	dense := convertTiny(t, "dense")
	code, _, stderr = runSlope("train", dense, "--data", data, "--steps", "1", "--rank", "2", "--out", filepath.Join(t.TempDir(), "d.slope"))
	if code != exitUsage || !strings.Contains(stderr, "no N:M weights") {
		t.Errorf("--rank on a dense model: exit %d, %q", code, stderr)
	}
	// So is a --data too small for one batch.
	small := filepath.Join(t.TempDir(), "d.u16")
	writeTokenFile(t, small, 12, 50)
	if code, _, stderr := runSlope("train", model, "--data", small, "--seq", "8", "--batch", "2", "--steps", "3", "--out", filepath.Join(t.TempDir(), "o.slope")); code == 0 || !strings.Contains(stderr, "--data") || strings.Contains(stderr, "step 1") {
		t.Errorf("small --data: exit %d, %q", code, stderr)
	}
	// A --val too small for one batch is refused before any step, and
	// writes nothing.
	val := filepath.Join(t.TempDir(), "v.u16")
	writeTokenFile(t, val, 12, 50)
	out := filepath.Join(t.TempDir(), "o.slope")
	code, stdout, stderr := runSlope("train", model, "--data", data, "--val", val, "--seq", "8", "--batch", "2", "--steps", "3", "--out", out)
	if code == 0 || !strings.Contains(stderr, "--val") || strings.Contains(stderr, "step 1") || stdout != "" {
		t.Errorf("small --val: exit %d, %q, %q", code, stdout, stderr)
	}
	if _, err := os.Stat(out); err == nil {
		t.Errorf("small --val: %s written", out)
	}
}

// TestTrainAdapters: --rank with --adapter-start 2 adds adapters at step
// 2 (LOW_RANK tensors in the checkpoint, referenced by the graph); --accum
// 2 runs; a run of 2 steps (saved as the adapters join) resumed to 4 ends
// identical to 4 steps straight.
func TestTrainAdapters(t *testing.T) {
	model := convertTiny(t, "2:4")
	dir := t.TempDir()
	data := filepath.Join(dir, "train.u16")
	writeTokenFile(t, data, 2000, 50)
	common := []string{"--data", data, "--batch", "2", "--seq", "8", "--lr", "1e-3", "--threads", "2", "--seed", "3",
		"--schedule", "constant", "--rank", "2", "--adapter-start", "2", "--accum", "2", "--print-every", "0"}
	full, half, resumed := filepath.Join(dir, "full.slope"), filepath.Join(dir, "half.slope"), filepath.Join(dir, "resumed.slope")
	if code, _, stderr := runSlope(append([]string{"train", model, "--steps", "4", "--out", full}, common...)...); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if code, _, stderr := runSlope(append([]string{"train", model, "--steps", "2", "--out", half}, common...)...); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if code, _, stderr := runSlope("train", model, "--data", data, "--batch", "2", "--seq", "8", "--threads", "2",
		"--steps", "4", "--resume", half, "--out", resumed, "--print-every", "0"); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	a, err := format.Open(full, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := format.Open(resumed, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if s := a.Manifest().GetTraining().GetAdapterStartStep(); s != 2 {
		t.Fatalf("adapter_start_step %d, want 2", s)
	}
	lowRank := 0
	for _, d := range a.Tensors() {
		if d.Adapter != nil {
			lowRank++
		}
		x, err := a.Raw(d.Name)
		if err != nil {
			t.Fatal(err)
		}
		y, err := b.Raw(d.Name)
		if err != nil {
			t.Fatal(err)
		}
		if string(x) != string(y) {
			t.Fatalf("tensor %s differs between the uninterrupted and the resumed run", d.Name)
		}
	}
	refs := 0
	for _, n := range a.Manifest().GetGraph().GetNode() {
		if n.OpType == "SlopeLinear" && len(n.Input) == 6 && n.Input[4] != "" && n.Input[5] != "" {
			refs += 2
		}
	}
	if lowRank == 0 || lowRank != refs {
		t.Fatalf("%d adapter tensors, the graph references %d", lowRank, refs)
	}
}

// TestTrainResumeKeepsDataShape: a resume without --batch and --seq
// continues with the checkpoint's data shape (it used to fall back to the
// flags' defaults silently) and ends bit-identical to an uninterrupted
// run; --seq given on the resume overrides it.
func TestTrainResumeKeepsDataShape(t *testing.T) {
	model := convertTiny(t, "2:4")
	base := t.TempDir()
	data := filepath.Join(base, "train.u16")
	writeTokenFile(t, data, 2000, 50)
	common := []string{"--data", data, "--lr", "1e-3", "--schedule", "constant", "--warmup", "1", "--threads", "1",
		"--seed", "3", "--print-every", "0"}
	shape := []string{"--batch", "3", "--seq", "12"}
	full := filepath.Join(base, "full.slope")
	if out, err := slopeCmd(append(append([]string{"train", model, "--out", full, "--steps", "4"}, common...), shape...)...).CombinedOutput(); err != nil {
		t.Fatalf("uninterrupted: %v\n%s", err, out)
	}
	part := filepath.Join(base, "part.slope")
	if out, err := slopeCmd(append(append([]string{"train", model, "--out", part, "--steps", "2"}, common...), shape...)...).CombinedOutput(); err != nil {
		t.Fatalf("first half: %v\n%s", err, out)
	}
	if out, err := slopeCmd(append([]string{"train", model, "--resume", part, "--out", part, "--steps", "4"}, common...)...).CombinedOutput(); err != nil {
		t.Fatalf("resume: %v\n%s", err, out)
	}
	want, got := readCheckpoint(t, full), readCheckpoint(t, part)
	if got.step != 4 || !proto.Equal(got.state, want.state) {
		t.Fatalf("resumed state (step %d)\n%v\nwant\n%v", got.step, got.state, want.state)
	}
	for name, w := range want.raw {
		if g, ok := got.raw[name]; !ok || !bytes.Equal(g, w) {
			t.Fatalf("tensor %s differs from the uninterrupted run's", name)
		}
	}
	// An explicit --seq wins and is recorded.
	other := filepath.Join(base, "other.slope")
	if out, err := slopeCmd(append([]string{"train", model, "--resume", part, "--out", other, "--steps", "5", "--seq", "8"}, common...)...).CombinedOutput(); err != nil {
		t.Fatalf("resume with --seq: %v\n%s", err, out)
	}
	hp := readCheckpoint(t, other).state.(*slopepb.TrainingState).GetHyperparameters()
	if hp["seq"] != 8 || hp["batch"] != 3 {
		t.Errorf("recorded data shape batch %v seq %v, want 3 and 8", hp["batch"], hp["seq"])
	}
}

// TestTrainSeqAtMaxPositions: --seq may equal the model's positions (the
// model reads --seq tokens of each --seq+1 window).
func TestTrainSeqAtMaxPositions(t *testing.T) {
	model := convertTiny(t, "2:4")
	data := filepath.Join(t.TempDir(), "d.u16")
	writeTokenFile(t, data, 200, 50)
	code, _, stderr := runSlope("train", model, "--data", data, "--steps", "1", "--batch", "2", "--seq", "64",
		"--out", filepath.Join(t.TempDir(), "o.slope"))
	if code != 0 {
		t.Fatalf("--seq 64 on a 64-position model: exit %d, %s", code, stderr)
	}
}

// TestTrainEvalAllWindows: --eval-batches 0 evaluates every window of
// --val, the last batch partial, weighting each batch by its windows: 3
// windows in batches of 2 give the loss of 3 batches of 1. The learning
// rate is too small to move a weight, so both runs evaluate one model.
func TestTrainEvalAllWindows(t *testing.T) {
	model := convertTiny(t, "2:4")
	dir := t.TempDir()
	data, val := filepath.Join(dir, "train.u16"), filepath.Join(dir, "val.u16")
	writeTokenFile(t, data, 400, 50)
	writeTokenFile(t, val, 3*17, 50) // 3 windows of --seq 16 + 1
	eval := func(batch string) (float64, string) {
		t.Helper()
		log := filepath.Join(dir, "b"+batch+".jsonl")
		code, _, stderr := runSlope("train", model, "--data", data, "--val", val, "--batch", batch, "--seq", "16", "--lr", "1e-30",
			"--steps", "1", "--eval-every", "1", "--eval-batches", "0", "--threads", "1", "--out", filepath.Join(dir, "b"+batch+".slope"), "--log", log)
		if code != 0 {
			t.Fatalf("--batch %s: exit %d: %s", batch, code, stderr)
		}
		for _, r := range readLog(t, log) {
			if r.Type == "eval" {
				return *r.Loss, stderr
			}
		}
		t.Fatalf("--batch %s: no eval record", batch)
		return 0, ""
	}
	two, stderr := eval("2")
	if !strings.Contains(stderr, "(2 batches)") {
		t.Fatalf("--batch 2 over 3 windows: want 2 batches evaluated\n%s", stderr)
	}
	one, _ := eval("1")
	if math.Abs(two-one) > 1e-6*math.Abs(one) {
		t.Fatalf("eval loss %.9g in batches of 2 (the last partial), %.9g in batches of 1", two, one)
	}
}
