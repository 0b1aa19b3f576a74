package train

import (
	"bytes"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/format/slopepb"
	"github.com/slopeml/slope/runtime"
)

// sameState fails unless a and b have bit-identical Params, transpose
// masks, moments and step counts.
func sameState(t *testing.T, a, b *Trainer) {
	t.Helper()
	pa, pb := a.Params(), b.Params()
	if len(pa) != len(pb) || a.StepCount() != b.StepCount() {
		t.Fatalf("%d Params at step %d vs %d at step %d", len(pa), a.StepCount(), len(pb), b.StepCount())
	}
	bits := func(name string, x, y []float32) {
		if len(x) != len(y) {
			t.Fatalf("%s: %d vs %d values", name, len(x), len(y))
		}
		for j := range x {
			if math.Float32bits(x[j]) != math.Float32bits(y[j]) {
				t.Fatalf("%s[%d]: %v vs %v", name, j, x[j], y[j])
			}
		}
	}
	for i := range pa {
		if pa[i].Name != pb[i].Name {
			t.Fatalf("Param %d: %s vs %s", i, pa[i].Name, pb[i].Name)
		}
		bits(pa[i].Name, pa[i].Value, pb[i].Value)
		bits(pa[i].Name+Moment1Suffix, a.m[i], b.m[i])
		bits(pa[i].Name+Moment2Suffix, a.v[i], b.v[i])
		if pa[i].NM != nil && (!bytes.Equal(pa[i].NM.TMask, pb[i].NM.TMask) || !bytes.Equal(pa[i].NM.Indices, pb[i].NM.Indices)) {
			t.Fatalf("%s: transpose masks differ", pa[i].Name)
		}
	}
}

// TestCheckpointResume: 6 steps straight vs 3 steps, Save, Resume, 3
// steps end bit-identical (Params, masks, moments, losses); the
// checkpoint verifies and runs in the runtime.
func TestCheckpointResume(t *testing.T) {
	fn := tinySlope(t)
	// MaskRefresh 2 puts a refresh before the save (step 2) and leaves the
	// mask stale against the values at step 3.
	o := Options{LR: 5e-3, WarmupSteps: 2, TotalSteps: 6, Clip: 1, MaskRefresh: 2, Threads: 2, Seed: 9, WeightDecay: -1}
	rng := rand.New(rand.NewPCG(7, 8))
	var batches [][][]int32
	vocab := openTrainer(t, fn, o).Vocab()
	for range 6 {
		batches = append(batches, randBatch(rng, vocab, 2, 12))
	}
	full := openTrainer(t, fn, o)
	var want []float64
	for _, ids := range batches {
		l, err := full.Step(ids)
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, l)
	}

	a := openTrainer(t, fn, o)
	var got []float64
	for _, ids := range batches[:3] {
		l, err := a.Step(ids)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, l)
	}
	ck := filepath.Join(t.TempDir(), "ck.slope")
	pos := &slopepb.DataPosition{Source: "x.u16", Sha256: "ab", Epoch: 1, Offset: 5, ShuffleSeed: 9}
	a.SetDataPosition(pos)
	if err := a.Save(ck); err != nil {
		t.Fatal(err)
	}
	f, err := format.Open(ck, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Verify(nil); err != nil {
		t.Fatal(err)
	}
	ts := f.Manifest().GetTraining()
	if ts.GetStep() != 3 || ts.GetTotalSteps() != 6 || len(ts.GetSlots()) != len(a.Params()) || ts.GetOptimizer() != "adamw" {
		t.Fatalf("training state %v", ts)
	}
	src, err := format.Open(fn, nil)
	if err != nil {
		t.Fatal(err)
	}
	sm, cm := src.Manifest(), f.Manifest()
	if !proto.Equal(sm.GetGraph(), cm.GetGraph()) || !proto.Equal(sm.GetArchitecture(), cm.GetArchitecture()) ||
		len(sm.GetOpsetImport()) != len(cm.GetOpsetImport()) || !proto.Equal(sm.GetTokenizer(), cm.GetTokenizer()) {
		t.Fatal("graph, architecture, opset imports or tokenizer not copied")
	}
	src.Close()
	f.Close()

	b, err := Resume(ck, Options{Threads: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	if b.Options() != a.Options() {
		t.Fatalf("resumed options %+v, saved %+v", b.Options(), a.Options())
	}
	if p := b.DataPosition(); p.GetOffset() != 5 || p.GetEpoch() != 1 || p.GetSource() != "x.u16" {
		t.Fatalf("data position %v", p)
	}
	// Three steps of 2 sequences of 12 tokens: 11 predicted each.
	if n, ok := b.Tokens(); !ok || n != 3*2*11 {
		t.Fatalf("resumed tokens %d %v, want %d", n, ok, 3*2*11)
	}
	sameState(t, a, b)
	for _, ids := range batches[3:] {
		l, err := b.Step(ids)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, l)
	}
	for i := range want {
		if math.Float64bits(want[i]) != math.Float64bits(got[i]) {
			t.Fatalf("loss of step %d: %v uninterrupted, %v resumed", i+1, want[i], got[i])
		}
	}
	sameState(t, full, b)

	// The checkpoint runs in the runtime: its logits match Eval's loss.
	m, err := runtime.Open(ck, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	logits, err := m.Forward(batches[0], nil)
	if err != nil {
		t.Fatal(err)
	}
	var loss float64
	for bi, s := range batches[0] {
		for p := 0; p+1 < len(s); p++ {
			y := logits[bi][p]
			mx := math.Inf(-1)
			for _, v := range y {
				mx = math.Max(mx, float64(v))
			}
			var sum float64
			for _, v := range y {
				sum += math.Exp(float64(v) - mx)
			}
			loss += mx + math.Log(sum) - float64(y[s[p+1]])
		}
	}
	loss /= float64(len(batches[0]) * (len(batches[0][0]) - 1))
	ra, _ := Resume(ck, Options{Threads: 2})
	defer ra.Close()
	ev, err := ra.Eval(batches[0])
	if err != nil {
		t.Fatal(err)
	}
	if math.Abs(ev-loss) > 1e-4*math.Abs(ev) {
		t.Fatalf("runtime loss %g, trainer Eval %g", loss, ev)
	}
	t.Logf("6 steps: losses %v bit-identical after resume at step 3; runtime loss %.6f vs Eval %.6f", got, loss, ev)
}

// TestSaveAtomic: Save replaces an existing file; a Save that fails
// leaves it untouched and names the path.
func TestSaveAtomic(t *testing.T) {
	tr := openTrainer(t, tinySlope(t), Options{Threads: 2})
	dir := t.TempDir()
	ck := filepath.Join(dir, "ck.slope")
	if err := tr.Save(ck); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 1))
	if _, err := tr.Step(randBatch(rng, tr.Vocab(), 1, 8)); err != nil {
		t.Fatal(err)
	}
	if err := tr.Save(ck); err != nil {
		t.Fatal(err)
	}
	f, err := format.Open(ck, nil)
	if err != nil {
		t.Fatal(err)
	}
	if s := f.Manifest().GetTraining().GetStep(); s != 1 {
		t.Fatalf("replaced checkpoint at step %d, want 1", s)
	}
	f.Close()
	before, err := os.ReadFile(ck)
	if err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "missing", "ck.slope")
	if err := tr.Save(bad); err == nil || !strings.Contains(err.Error(), bad) {
		t.Fatalf("Save into a missing directory: %v", err)
	}
	after, err := os.ReadFile(ck)
	if err != nil || !slices.Equal(before, after) {
		t.Fatalf("existing checkpoint changed (%v)", err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("left behind: %v", entries)
	}
	if _, err := Resume(tinySlope(t), Options{}); err == nil {
		t.Fatal("Resume of a container without training state: no error")
	}
}

// TestMergeAdapterLR: resuming takes the checkpoint's adapter rate when
// none is given (0), and AdapterLROff turns it off.
func TestMergeAdapterLR(t *testing.T) {
	ts := &slopepb.TrainingState{Optimizer: OptimizerAdamW, Hyperparameters: map[string]float64{hpAdapterLR: 0.05}}
	for _, c := range []struct{ given, want float64 }{{0, 0.05}, {AdapterLROff, 0}, {0.2, 0.2}} {
		o, err := mergeOptions(ts, Options{AdapterLR: c.given})
		if err == nil {
			o, err = o.withDefaults()
		}
		if err != nil {
			t.Fatal(err)
		}
		if o.AdapterLR != c.want {
			t.Errorf("AdapterLR %g on a checkpoint with 0.05: %g, want %g", c.given, o.AdapterLR, c.want)
		}
	}
}
