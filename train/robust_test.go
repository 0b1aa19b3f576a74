package train

import (
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/slopeml/slope/convert"
	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/format/slopepb"
	"github.com/slopeml/slope/ops"
)

// Options that are not finite numbers are refused by name.
func TestOptionsRejectNonFinite(t *testing.T) {
	nan, inf := math.NaN(), math.Inf(1)
	for _, c := range []struct {
		name string
		o    Options
	}{
		{"LR", Options{LR: inf}}, {"Clip", Options{Clip: nan}}, {"WeightDecay", Options{WeightDecay: nan}},
		{"Beta1", Options{Beta1: nan}}, {"Eps", Options{Eps: inf}}, {"AdapterLR", Options{AdapterLR: nan}},
		{"AdapterScale", Options{AdapterScale: inf}}, {"RankFrac", Options{RankFrac: nan}},
	} {
		if _, err := c.o.withDefaults(); err == nil || !strings.Contains(err.Error(), c.name) {
			t.Errorf("%s: %v", c.name, err)
		}
	}
}

// A gradient norm that is not finite (an overflow with a finite loss)
// is not applied: the values stay, the gradients are cleared, the step
// is not counted; a clipping factor that rounds to 0 in float32 stays
// positive (0 would mean "no scaling" to AdamW).
func TestNonFiniteGradientNotApplied(t *testing.T) {
	for _, clip := range []float64{0, 1} {
		o, err := Options{LR: 0.1, Clip: clip}.withDefaults()
		if err != nil {
			t.Fatal(err)
		}
		w := &ops.Param{Name: "w", Value: []float32{0.5, 0.25}, Grad: []float32{float32(math.Inf(1)), 0.1}, Shape: []int{2}}
		tr := &Trainer{o: o, params: []*ops.Param{w}, m: [][]float32{{0, 0}}, v: [][]float32{{0, 0}}, decay: []bool{false}, born: []int{0}}
		if err := tr.apply(); err == nil || !strings.Contains(err.Error(), "gradient norm") {
			t.Errorf("clip %g: %v", clip, err)
		}
		if w.Value[0] != 0.5 || w.Value[1] != 0.25 || w.Grad[0] != 0 || w.Grad[1] != 0 || tr.step != 0 {
			t.Errorf("clip %g: values %v, gradients %v, step %d after a refused update", clip, w.Value, w.Grad, tr.step)
		}
	}
	o, _ := Options{LR: 0.1, Clip: 1e-30}.withDefaults()
	w := &ops.Param{Name: "w", Value: []float32{0.5}, Grad: []float32{1e30}, Shape: []int{1}}
	tr := &Trainer{o: o, params: []*ops.Param{w}}
	tr.clip()
	if !(tr.gradScale > 0) {
		t.Errorf("clipping factor %g for a norm of %g and a bound of %g", tr.gradScale, tr.gradNorm, o.Clip)
	}
}

// rewriteCheckpoint copies the checkpoint ck to out with its manifest's
// training state edited by edit.
func rewriteCheckpoint(t *testing.T, ck, out string, edit func(*slopepb.TrainingState)) {
	t.Helper()
	if err := format.Rewrite(ck, out, func(m *slopepb.Manifest) { edit(m.Training) }); err != nil {
		t.Fatal(err)
	}
}

// Resume refuses a checkpoint with two optimizer slots for one Param, or
// a hyper-parameter that is not a finite number or not an integer where
// one is due.
func TestResumeRejectsBadTrainingState(t *testing.T) {
	fn := tinySlope(t)
	tr := openTrainer(t, fn, Options{Threads: 1})
	ids := randBatch(rand.New(rand.NewPCG(1, 2)), tr.Vocab(), 2, 8)
	if _, err := tr.Step(ids); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ck := filepath.Join(dir, "ck.slope")
	if err := tr.Save(ck); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name, want string
		edit       func(*slopepb.TrainingState)
	}{
		{"duplicate slot", "two optimizer slots", func(ts *slopepb.TrainingState) {
			ts.Slots[1] = proto.Clone(ts.Slots[0]).(*slopepb.OptimizerSlot)
		}},
		{"NaN lr", hpLR, func(ts *slopepb.TrainingState) { ts.Hyperparameters[hpLR] = math.NaN() }},
		{"fractional mask refresh", hpMaskRefresh, func(ts *slopepb.TrainingState) { ts.Hyperparameters[hpMaskRefresh] = 2.5 }},
		{"huge warmup", hpWarmup, func(ts *slopepb.TrainingState) { ts.Hyperparameters[hpWarmup] = 1e30 }},
		{"bad token count", "tokens", func(ts *slopepb.TrainingState) { ts.Extra[extraTokens] = "-3" }},
	} {
		bad := filepath.Join(dir, strings.ReplaceAll(c.name, " ", "_")+".slope")
		rewriteCheckpoint(t, ck, bad, c.edit)
		r, err := Resume(bad, Options{Threads: 1})
		if err == nil {
			r.Close()
			t.Errorf("%s: resumed", c.name)
			continue
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v", c.name, err)
		}
	}
	// A checkpoint written before the token count was recorded resumes
	// with the count unknown.
	old := filepath.Join(dir, "old.slope")
	rewriteCheckpoint(t, ck, old, func(ts *slopepb.TrainingState) { delete(ts.Extra, extraTokens) })
	r, err := Resume(old, Options{Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if n, ok := r.Tokens(); ok {
		t.Errorf("tokens %d known without a record", n)
	}
}

// A model that comes with adapters, trained with a Rank option too,
// resumes bit-identically: the checkpoint must not date its adapters to
// the planned start step.
func TestResumeModelAdapters(t *testing.T) {
	fn := filepath.Join(t.TempDir(), "ad.slope")
	if _, err := convert.DenseToSlope(t.Context(), convert.Options{In: convert.TinyLabel, Out: fn, NM: "2:4", DType: "fp32", Rank: 2}); err != nil {
		t.Fatal(err)
	}
	o := Options{LR: 5e-3, TotalSteps: 6, Threads: 1, Rank: 2, AdapterStart: 2, Schedule: ScheduleConstant}
	rng := rand.New(rand.NewPCG(3, 3))
	full := openTrainer(t, fn, o)
	if !full.AdaptersActive() {
		t.Fatal("the model has no adapters")
	}
	var batches [][][]int32
	for range 6 {
		batches = append(batches, randBatch(rng, full.Vocab(), 2, 8))
	}
	for _, b := range batches {
		if _, err := full.Step(b); err != nil {
			t.Fatal(err)
		}
	}
	a := openTrainer(t, fn, o)
	for _, b := range batches[:3] {
		if _, err := a.Step(b); err != nil {
			t.Fatal(err)
		}
	}
	ck := filepath.Join(t.TempDir(), "ck.slope")
	if err := a.Save(ck); err != nil {
		t.Fatal(err)
	}
	r, err := Resume(ck, Options{Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for _, b := range batches[3:] {
		if _, err := r.Step(b); err != nil {
			t.Fatal(err)
		}
	}
	sameState(t, full, r)
}

// Resuming: the sentinels set a value to none over the checkpoint's; a
// rank given now on a checkpoint without planned adapters starts them at
// the default fraction; a seed given as 0 is kept.
func TestMergeOptionsSentinels(t *testing.T) {
	ts := &slopepb.TrainingState{Optimizer: OptimizerAdamW, TotalSteps: 100, RngState: []byte{7, 0, 0, 0, 0, 0, 0, 0},
		Hyperparameters: map[string]float64{hpClip: 1, hpWarmup: 5, hpAdapterRank: 2}}
	merge := func(o Options) Options {
		t.Helper()
		o, err := mergeOptions(ts, o)
		if err == nil {
			o, err = o.withDefaults()
		}
		if err != nil {
			t.Fatal(err)
		}
		return o
	}
	if o := merge(Options{}); o.Clip != 1 || o.WarmupSteps != 5 || o.Rank != 2 || o.Seed != 7 || o.AdapterStart != -1 {
		t.Errorf("nothing given: %+v", o)
	}
	if o := merge(Options{Clip: -1, WarmupSteps: -1, Rank: -1, SeedGiven: true}); o.Clip > 0 || o.WarmupSteps != 0 || o.Rank != 0 || o.Seed != 0 {
		t.Errorf("none given: %+v", o)
	}
	delete(ts.Hyperparameters, hpAdapterRank)
	if o := merge(Options{Rank: 3}); o.Rank != 3 || o.AdapterStart != 0 || o.adapterStep() != 99 {
		t.Errorf("a rank given on a checkpoint without adapters: %+v, start %d", o, o.adapterStep())
	}
}

// The adapters join at the first step s >= frac*steps, not moved past a
// whole step by float64 rounding (0.57*100 = 56.99999999999999), and at
// the latest at the last step.
func TestAdapterStepFraction(t *testing.T) {
	for _, c := range []struct {
		frac  float64
		total int
		want  int
	}{{0.57, 100, 57}, {0.29, 100, 29}, {0.99, 1000, 990}, {0.5, 3, 2}, {0.99, 150, 149}, {0.99, 250, 248},
		{0.99, 1, 0}, {0.999, 100, 99}, {0.01, 100, 1}, {1e-9, 100, 1}} {
		o := Options{Rank: 1, AdapterStartFrac: c.frac, TotalSteps: c.total}
		if got := o.adapterStep(); got != c.want {
			t.Errorf("%g of %d steps: %d, want %d", c.frac, c.total, got, c.want)
		}
	}
}

// The source is hashed at the first Save, from its path: a file replaced
// in the meantime is not recorded as the source (the provenance says
// why), one left alone is.
func TestSaveSourceReplaced(t *testing.T) {
	for _, replace := range []bool{false, true} {
		fn := tinySlope(t)
		tr := openTrainer(t, fn, Options{Threads: 1})
		if replace {
			other := tinySlope(t)
			if err := os.Rename(other, fn); err != nil {
				t.Fatal(err)
			}
		}
		ck := filepath.Join(t.TempDir(), "ck.slope")
		if err := tr.Save(ck); err != nil {
			t.Fatal(err)
		}
		f, err := format.Open(ck, nil)
		if err != nil {
			t.Fatal(err)
		}
		p := f.Manifest().GetProvenance()
		f.Close()
		recorded := false
		for _, s := range p.GetSources() {
			recorded = recorded || (s.GetPath() == fn && s.GetSha256() != "")
		}
		if recorded == replace || replace != strings.Contains(p.GetCommand(), "source not recorded") {
			t.Errorf("replaced %v: sources %v, command %q", replace, p.GetSources(), p.GetCommand())
		}
	}
}
