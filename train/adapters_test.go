package train

import (
	"math"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"

	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/format/slopepb"
	"github.com/slopeml/slope/ops"
)

func stepAll(t *testing.T, tr *Trainer, batches [][][]int32) []float64 {
	t.Helper()
	var losses []float64
	for _, ids := range batches {
		l, err := tr.Step(ids)
		if err != nil {
			t.Fatal(err)
		}
		losses = append(losses, l)
	}
	return losses
}

func adapterParams(tr *Trainer) (l, r []*ops.Param) {
	for _, p := range tr.Params() {
		switch {
		case strings.HasSuffix(p.Name, adapterLSuffix):
			l = append(l, p)
		case strings.HasSuffix(p.Name, adapterRSuffix):
			r = append(r, p)
		}
	}
	return l, r
}

// TestLazyAdapters: adapters appear at the start step on every
// SlopeLinear with the loss unchanged (bit for bit), L and R train
// afterwards, and save/resume before and after the start is bit-identical
// to an uninterrupted run.
func TestLazyAdapters(t *testing.T) {
	fn := tinySlope(t)
	o := Options{LR: 5e-3, TotalSteps: 6, Clip: 1, MaskRefresh: 2, Threads: 2, Seed: 11, Rank: 2, AdapterStart: 3}
	rng := rand.New(rand.NewPCG(3, 4))
	vocab := openTrainer(t, fn, o).Vocab()
	var batches [][][]int32
	for range 6 {
		batches = append(batches, randBatch(rng, vocab, 2, 10))
	}
	probe := randBatch(rng, vocab, 2, 10)

	// Reference without adapters up to step 3, then added by hand.
	noAd := o
	noAd.AdapterStart = -1
	ref := openTrainer(t, fn, noAd)
	stepAll(t, ref, batches[:3])
	before, err := ref.Eval(probe)
	if err != nil {
		t.Fatal(err)
	}
	nParams := len(ref.Params())
	if err := ref.AddAdapters(); err != nil {
		t.Fatal(err)
	}
	after, err := ref.Eval(probe)
	if err != nil {
		t.Fatal(err)
	}
	if math.Float64bits(before) != math.Float64bits(after) {
		t.Fatalf("loss %v before adding adapters, %v after", before, after)
	}
	slope := 0
	for _, ps := range ref.plan {
		if ps.Node.OpType == ops.OpSlopeLinear {
			slope++
		}
	}
	if l, r := adapterParams(ref); len(l) != slope || len(r) != slope || len(ref.Params()) != nParams+2*slope || slope == 0 {
		t.Fatalf("%d L and %d R for %d SlopeLinear nodes", len(l), len(r), slope)
	}

	full := openTrainer(t, fn, o)
	want := stepAll(t, full, batches[:2])
	if full.AdaptersActive() {
		t.Fatal("adapters before the start step")
	}
	want = append(want, stepAll(t, full, batches[2:3])...)
	if !full.AdaptersActive() {
		t.Fatal("no adapters at the start step")
	}
	if got, err := full.Eval(probe); err != nil || math.Float64bits(got) != math.Float64bits(before) {
		t.Fatalf("loss at the start %v (%v), want %v", got, err, before)
	}
	ls, rs := adapterParams(full)
	l0 := make([][]float32, len(ls))
	for i, p := range ls {
		l0[i] = append([]float32(nil), p.Value...)
		if p.Shape[1] != 2 {
			t.Fatalf("%s: shape %v, want rank 2", p.Name, p.Shape)
		}
	}
	want = append(want, stepAll(t, full, batches[3:])...)
	nonzero := func(v []float32) bool {
		for _, x := range v {
			if x != 0 {
				return true
			}
		}
		return false
	}
	for i, p := range rs {
		if !nonzero(p.Value) {
			t.Fatalf("%s still zero after training", p.Name)
		}
		changed := false
		for j, x := range ls[i].Value {
			changed = changed || x != l0[i][j]
		}
		if !changed {
			t.Fatalf("%s did not train", ls[i].Name)
		}
	}

	// Save before (step 2) and after (step 4) the start; resume; finish.
	for _, at := range []int{2, 4} {
		a := openTrainer(t, fn, o)
		stepAll(t, a, batches[:at])
		ck := filepath.Join(t.TempDir(), "ck.slope")
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
		if s := f.Manifest().GetTraining().GetAdapterStartStep(); s != 3 {
			t.Fatalf("adapter_start_step %d, want 3", s)
		}
		lowRank := 0
		for _, d := range f.Manifest().Tensors {
			if d.Encoding == slopepb.Encoding_LOW_RANK {
				lowRank++
			}
		}
		if refs := len(graphAdapters(f.Manifest().GetGraph())); lowRank != refs || (at > 3) != (lowRank == 2*slope) {
			t.Fatalf("step %d: %d LOW_RANK tensors, graph references %d", at, lowRank, refs)
		}
		f.Close()
		b, err := Resume(ck, Options{Threads: 2})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		got := stepAll(t, b, batches[at:])
		for i := range got {
			if math.Float64bits(got[i]) != math.Float64bits(want[at+i]) {
				t.Fatalf("resumed at %d: loss of step %d %v, want %v", at, at+i, got[i], want[at+i])
			}
		}
		sameState(t, full, b)
	}
}

// TestAccum: a batch of 4 sequences accumulated as 2 (and 3, uneven)
// micro-batches gives the same loss and gradients as one pass, within
// float32 summation error: |Δloss| <= 1e-6 and, per gradient element,
// |Δg| <= 1e-5·max|g| (the largest gradient element of the model).
func TestAccum(t *testing.T) {
	fn := tinySlope(t)
	o := Options{Threads: 2}
	one := openTrainer(t, fn, o)
	ids := randBatch(rand.New(rand.NewPCG(5, 6)), one.Vocab(), 4, 12)
	want, err := one.lossAndGrad(ids)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []int{2, 3} {
		o.Accum = k
		acc := openTrainer(t, fn, o)
		got, err := acc.lossAndGrad(ids)
		if err != nil {
			t.Fatal(err)
		}
		if math.Abs(got-want) > 1e-6 {
			t.Fatalf("accum %d: loss %v, want %v", k, got, want)
		}
		var worst, mx float64
		for _, q := range one.Params() {
			for _, g := range q.Grad {
				mx = math.Max(mx, math.Abs(float64(g)))
			}
		}
		for i, p := range acc.Params() {
			q := one.Params()[i]
			for j := range p.Grad {
				d := math.Abs(float64(p.Grad[j] - q.Grad[j]))
				if d > 1e-5*mx {
					t.Fatalf("accum %d: %s grad[%d] %v, want %v", k, p.Name, j, p.Grad[j], q.Grad[j])
				}
				if mx > 0 {
					worst = math.Max(worst, d/mx)
				}
			}
		}
		t.Logf("accum %d: |Δloss| %.2g, worst |Δg|/max|g| %.2g", k, math.Abs(got-want), worst)
		if _, err := acc.Step(ids); err != nil {
			t.Fatal(err)
		}
	}
}

// TestAdapterStart: the resolved adapter start step.
func TestAdapterStart(t *testing.T) {
	for _, c := range []struct {
		o    Options
		want int
	}{
		{Options{TotalSteps: 1000}, -1}, // no rank: no adapters
		{Options{TotalSteps: 1000, Rank: 4}, 990},
		{Options{TotalSteps: 1000, RankFrac: 0.0625, AdapterStartFrac: 0.5}, 500},
		{Options{TotalSteps: 1000, Rank: 4, AdapterStart: 7}, 7},
		{Options{TotalSteps: 1000, Rank: 4, AdapterStart: -1}, -1},
		{Options{Rank: 4}, -1}, // a fraction of an unknown length
	} {
		if got := c.o.adapterStep(); got != c.want {
			t.Errorf("%+v: start %d, want %d", c.o, got, c.want)
		}
	}
}
