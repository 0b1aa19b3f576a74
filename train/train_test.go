package train

import (
	"bytes"
	"math"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"testing"

	"github.com/slopeml/slope/convert"
	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/ops"
)

// tinySlope converts the embedded tiny OPT to SLoPe 2:4 (fp32).
func tinySlope(t *testing.T) string {
	t.Helper()
	fn := filepath.Join(t.TempDir(), "tiny.slope")
	if _, err := convert.DenseToSlope(t.Context(), convert.Options{In: convert.TinyLabel, Out: fn, NM: "2:4", DType: "fp32"}); err != nil {
		t.Fatal(err)
	}
	return fn
}

func openTrainer(t *testing.T, path string, o Options) *Trainer {
	t.Helper()
	tr, err := New(path, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	return tr
}

func randBatch(rng *rand.Rand, vocab, batch, seq int) [][]int32 {
	ids := make([][]int32, batch)
	for b := range ids {
		ids[b] = make([]int32, seq)
		for i := range ids[b] {
			ids[b][i] = int32(rng.IntN(vocab))
		}
	}
	return ids
}

// TestTrainTiny: 30 steps on one fixed batch halve the loss (at least);
// the N:M structure is intact, the transpose masks follow the values, and
// the N:M weights' optimizer state is half of a dense one.
func TestTrainTiny(t *testing.T) {
	tr := openTrainer(t, tinySlope(t), Options{LR: 1e-2, Schedule: ScheduleConstant, Clip: 1, MaskRefresh: 10, Threads: 2})
	type snap struct {
		idx   []uint8
		n     int
		tkeep []bool
	}
	before := map[string]snap{}
	nm := 0
	for _, p := range tr.Params() {
		if p.NM != nil {
			nm++
			before[p.Name] = snap{slices.Clone(p.NM.Indices), len(p.Value), mustKeep(t, p.NM)}
		}
	}
	if nm == 0 {
		t.Fatal("no N:M Params")
	}
	ids := randBatch(rand.New(rand.NewPCG(1, 2)), tr.Vocab(), 2, 16)
	var first, last float64
	for i := range 30 {
		loss, err := tr.Step(ids)
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = loss
		}
	}
	last, err := tr.Eval(ids)
	if err != nil {
		t.Fatal(err)
	}
	if again, err := tr.Eval(ids); err != nil || again != last {
		t.Fatalf("Eval is not repeatable: %g, then %g (%v)", last, again, err)
	}
	if tr.StepCount() != 30 {
		t.Fatalf("StepCount %d", tr.StepCount())
	}
	if !(last < 0.5*first) {
		t.Fatalf("loss %g -> %g after 30 steps, want below half", first, last)
	}
	changed := 0
	for _, p := range tr.Params() {
		if p.NM == nil {
			continue
		}
		b := before[p.Name]
		if !slices.Equal(b.idx, p.NM.Indices) || b.n != len(p.Value) || len(p.Grad) != b.n {
			t.Fatalf("%s: N:M structure changed", p.Name)
		}
		want, err := format.DoublePruneMagnitude(p.NM.Pattern, p.NM.Rows, p.NM.Cols, p.Value, mustIdx(t, p.NM))
		if err != nil {
			t.Fatal(err)
		}
		keep := mustKeep(t, p.NM)
		if !slices.Contains(keep, false) {
			t.Fatalf("%s: the transpose mask drops nothing", p.Name)
		}
		if slices.ContainsFunc(p.Grad, func(g float32) bool { return g != 0 }) {
			t.Fatalf("%s: gradients not zeroed", p.Name)
		}
		if !slices.Equal(want, keep) {
			t.Fatalf("%s: transpose mask after the refresh at step 30 is not the magnitude rule's", p.Name)
		}
		for i := range want {
			if want[i] != b.tkeep[i] {
				changed++
			}
		}
	}
	kept, dense := tr.NMOptimizerBytes()
	if ratio := float64(kept) / float64(dense); ratio != 0.5 {
		t.Fatalf("N:M optimizer memory %d of dense %d (%.3f), want 0.5", kept, dense, ratio)
	}
	t.Logf("loss %.4f -> %.4f (%.3fx) in 30 steps; %d transpose-mask bits moved; optimizer %d B (N:M weights %d of dense %d), whole model %.3fx dense",
		first, last, last/first, changed, tr.OptimizerBytes(), kept, dense, float64(tr.OptimizerBytes())/float64(tr.DenseOptimizerBytes()))
}

// TestGradient compares the trainer's loss gradient with central finite
// differences of Eval on a few coordinates of every Param. The transpose
// masks keep everything here, so SLoPe's input gradient is the exact one.
func TestGradient(t *testing.T) {
	tr := openTrainer(t, tinySlope(t), Options{Threads: 2})
	for _, p := range tr.Params() {
		if p.NM != nil {
			keep := mustKeep(t, p.NM)
			for i := range keep {
				keep[i] = true
			}
			if err := p.NM.SetTKeep(keep); err != nil {
				t.Fatal(err)
			}
		}
	}
	rng := rand.New(rand.NewPCG(3, 4))
	ids := randBatch(rng, tr.Vocab(), 2, 8)
	tr.zeroGrad()
	if _, err := tr.lossAndGrad(ids); err != nil {
		t.Fatal(err)
	}
	var worst, worstAbs float64
	checked := 0
	for _, p := range tr.Params() {
		g := slices.Clone(p.Grad)
		var ss float64
		for _, v := range g {
			ss += float64(v) * float64(v)
		}
		rms := math.Sqrt(ss / float64(len(g)))
		order := make([]int, len(g))
		for i := range order {
			order[i] = i
		}
		slices.SortFunc(order, func(a, b int) int {
			return -cmpAbs(g[a], g[b])
		})
		for _, j := range []int{order[0], order[1], rng.IntN(len(g))} {
			old := p.Value[j]
			const eps = 1e-3
			p.Value[j] = old + eps
			hi := p.Value[j]
			lp, err := tr.Eval(ids)
			if err != nil {
				t.Fatal(err)
			}
			p.Value[j] = old - eps
			lo := p.Value[j]
			lm, err := tr.Eval(ids)
			if err != nil {
				t.Fatal(err)
			}
			p.Value[j] = old
			num := (lp - lm) / float64(hi-lo)
			d := math.Abs(float64(g[j]) - num)
			scale := math.Abs(num) + rms
			worstAbs = math.Max(worstAbs, d)
			if scale > 1e-4 { // not the exactly-zero k_proj.bias gradients
				worst = math.Max(worst, d/scale)
			}
			checked++
			// float32 forward passes make the differences noisy (about
			// 1e-6 at the exactly-zero k_proj.bias gradients), and
			// ReLU kinks near eps cost up to ~1.5% on residual-stream
			// coordinates.
			if d > 0.03*scale+2e-5 {
				t.Errorf("%s[%d]: gradient %g, finite differences %g", p.Name, j, g[j], num)
			}
		}
	}
	t.Logf("%d Params, %d coordinates: largest error %.3g relative to |fd|+rms (where that exceeds 1e-4), %.3g absolute", len(tr.Params()), checked, worst, worstAbs)
}

func cmpAbs(a, b float32) int {
	x, y := math.Abs(float64(a)), math.Abs(float64(b))
	switch {
	case x < y:
		return -1
	case x > y:
		return 1
	}
	return 0
}

// TestSchedule checks the learning rate against hand-computed values.
func TestSchedule(t *testing.T) {
	for _, c := range []struct {
		sched string
		want  []float64
	}{
		// The peak once, at the warmup's last step; the floor at the last
		// step (3) and after.
		{ScheduleCosine, []float64{0.05, 0.1, 0.055, 0.01, 0.01}},
		{ScheduleLinear, []float64{0.05, 0.1, 0.055, 0.01, 0.01}},
		{ScheduleConstant, []float64{0.05, 0.1, 0.1, 0.1, 0.1}},
	} {
		o, err := Options{LR: 0.1, WarmupSteps: 2, TotalSteps: 4, Schedule: c.sched}.withDefaults()
		if err != nil {
			t.Fatal(err)
		}
		tr := &Trainer{o: o}
		for s, w := range c.want {
			if got := tr.LR(s); math.Abs(got-w) > 1e-12 {
				t.Errorf("%s: LR(%d) = %g, want %g", c.sched, s, got, w)
			}
		}
	}
	// Without a warmup the first step is at the peak and the last at the
	// floor; cosine and linear differ between: a third of the way at the
	// second of 4 steps.
	o, _ := Options{LR: 1, TotalSteps: 4}.withDefaults()
	tr := &Trainer{o: o}
	if got := tr.LR(0); got != 1 {
		t.Errorf("cosine LR(0), the first step without warmup = %g, want the peak 1", got)
	}
	if got, want := tr.LR(1), 0.1+0.9*0.5*(1+math.Cos(math.Pi/3)); math.Abs(got-want) > 1e-12 {
		t.Errorf("cosine LR(1) = %g, want %g", got, want)
	}
	if got := tr.LR(3); math.Abs(got-0.1) > 1e-12 {
		t.Errorf("cosine LR(3), the last step = %g, want 0.1", got)
	}
	o.Schedule = ScheduleLinear
	tr.o = o
	if got, want := tr.LR(1), 1-0.9/3; math.Abs(got-want) > 1e-12 {
		t.Errorf("linear LR(1) = %g, want %g", got, want)
	}
	if got := tr.LR(0); got != 1 {
		t.Errorf("linear LR(0) = %g, want 1", got)
	}
	// One step without warmup: at the peak.
	o, _ = Options{LR: 1, TotalSteps: 1}.withDefaults()
	if got := (&Trainer{o: o}).LR(0); got != 1 {
		t.Errorf("LR(0) of a 1-step run = %g, want 1", got)
	}
}

// TestAdamW follows one decayed scalar weight and one undecayed bias over
// 3 steps (warmup, bias correction, decoupled decay) against a float64
// reference written out here; a global-norm clip is checked on the way.
func TestAdamW(t *testing.T) {
	o, err := Options{LR: 0.1, WarmupSteps: 2, TotalSteps: 10, Schedule: ScheduleConstant, WeightDecay: 0.1, Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, Clip: 1}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	w := &ops.Param{Name: "w", Value: []float32{0.5}, Grad: make([]float32, 1), Shape: []int{1, 1}}
	b := &ops.Param{Name: "b", Value: []float32{-0.25}, Grad: make([]float32, 1), Shape: []int{1}}
	tr := &Trainer{o: o, params: []*ops.Param{w, b}, m: [][]float32{{0}, {0}}, v: [][]float32{{0}, {0}}, decay: []bool{true, false}}
	gw := []float64{0.3, -0.6, 0.9}
	gb := []float64{0.4, 1.6, -0.2} // the second step's norm 1.71 is clipped to 1
	lrs := []float64{0.05, 0.1, 0.1}
	// reference
	rw, rb := 0.5, -0.25
	var mw, vw, mb, vb float64
	for s := range 3 {
		g1, g2 := gw[s], gb[s]
		if n := math.Hypot(g1, g2); n > 1 {
			g1, g2 = g1/n, g2/n
		}
		k := float64(s + 1)
		bc1, bc2 := 1-math.Pow(0.9, k), 1-math.Pow(0.95, k)
		mw = 0.9*mw + 0.1*g1
		vw = 0.95*vw + 0.05*g1*g1
		mb = 0.9*mb + 0.1*g2
		vb = 0.95*vb + 0.05*g2*g2
		rw = rw - lrs[s]*0.1*rw - lrs[s]*(mw/bc1)/(math.Sqrt(vw/bc2)+1e-8)
		rb = rb - lrs[s]*(mb/bc1)/(math.Sqrt(vb/bc2)+1e-8)

		w.Grad[0], b.Grad[0] = float32(gw[s]), float32(gb[s])
		if err := tr.apply(); err != nil {
			t.Fatal(err)
		}
		if w.Grad[0] != 0 || b.Grad[0] != 0 {
			t.Fatal("gradients not zeroed after the step")
		}
		if math.Abs(float64(w.Value[0])-rw) > 1e-6 || math.Abs(float64(b.Value[0])-rb) > 1e-6 {
			t.Fatalf("step %d: w %g b %g, reference %g %g", s+1, w.Value[0], b.Value[0], rw, rb)
		}
	}
	if tr.StepCount() != 3 {
		t.Fatalf("StepCount %d", tr.StepCount())
	}
	if n := tr.GradNorm(); math.Abs(n-math.Hypot(0.9, 0.2)) > 1e-6 {
		t.Fatalf("GradNorm %g", n)
	}
}

// TestDeterminism: two trainers with the same seed and Threads end
// bit-identical after 5 steps (with transpose-mask refreshes).
func TestDeterminism(t *testing.T) {
	fn := tinySlope(t)
	o := Options{LR: 5e-3, WarmupSteps: 2, TotalSteps: 5, Clip: 1, MaskRefresh: 2, Threads: 2, Seed: 7}
	a, b := openTrainer(t, fn, o), openTrainer(t, fn, o)
	rng := rand.New(rand.NewPCG(5, 6))
	for range 5 {
		ids := randBatch(rng, a.Vocab(), 2, 12)
		la, err := a.Step(ids)
		if err != nil {
			t.Fatal(err)
		}
		lb, err := b.Step(ids)
		if err != nil {
			t.Fatal(err)
		}
		if math.Float64bits(la) != math.Float64bits(lb) {
			t.Fatalf("losses %v and %v differ", la, lb)
		}
	}
	pa, pb := a.Params(), b.Params()
	if len(pa) != len(pb) {
		t.Fatal("different Params")
	}
	for i := range pa {
		for j := range pa[i].Value {
			if math.Float32bits(pa[i].Value[j]) != math.Float32bits(pb[i].Value[j]) {
				t.Fatalf("%s[%d]: %v and %v", pa[i].Name, j, pa[i].Value[j], pb[i].Value[j])
			}
		}
		if pa[i].NM != nil && (!bytes.Equal(pa[i].NM.TMask, pb[i].NM.TMask) || !bytes.Equal(pa[i].NM.Indices, pb[i].NM.Indices)) {
			t.Fatalf("%s: transpose masks differ", pa[i].Name)
		}
	}
}

// TestBadBatch: ragged, too short and out-of-vocabulary batches fail
// without touching the Params.
func TestBadBatch(t *testing.T) {
	tr := openTrainer(t, tinySlope(t), Options{})
	for _, ids := range [][][]int32{nil, {{1}}, {{1, 2, 3}, {1, 2}}, {{1, int32(tr.Vocab())}}} {
		if _, err := tr.Step(ids); err == nil {
			t.Errorf("batch %v: no error", ids)
		}
	}
	if tr.StepCount() != 0 {
		t.Fatal("a failed step counted")
	}
	if _, err := New(filepath.Join(t.TempDir(), "none.slope"), Options{}); err == nil {
		t.Fatal("New of a missing file: no error")
	}
	if _, err := New(tinySlope(t), Options{Schedule: "step"}); err == nil {
		t.Fatal("unknown schedule: no error")
	}
}

// TestMemory: the training state of the 2:4 tiny model counts kept values
// only for its N:M weights (values, gradients and moments at half of the
// dense elements, plus the packed metadata: 2 bits of index and 1 of
// transpose mask per kept value, each row padded to bytes), and the
// kernel and activation buffers appear after a step.
func TestMemory(t *testing.T) {
	tr := openTrainer(t, tinySlope(t), Options{})
	m0 := tr.Memory()
	var vals, dense, kept, meta int64
	for _, p := range tr.Params() {
		vals += int64(len(p.Value))
		if p.NM != nil {
			kept += int64(len(p.Value))
			dense += int64(p.NM.Rows * p.NM.Cols)
			perRow := int64(len(p.Value) / p.NM.Rows)
			meta += int64(p.NM.Rows) * ((2*perRow+7)/8 + (perRow+7)/8)
		}
	}
	if kept == 0 || 2*kept != dense {
		t.Fatalf("kept %d of %d N:M elements, want half", kept, dense)
	}
	if m0.Values != 4*vals || m0.Grads != 4*vals || m0.Moments != 8*vals || m0.NMMeta != meta ||
		m0.State() != 16*vals+meta {
		t.Fatalf("memory %+v for %d values (%d kept N:M)", m0, vals, kept)
	}
	if m0.Activations != 0 {
		t.Fatalf("activations %d before any step", m0.Activations)
	}
	if _, err := tr.Step(randBatch(rand.New(rand.NewPCG(1, 1)), tr.Vocab(), 2, 8)); err != nil {
		t.Fatal(err)
	}
	if m1 := tr.Memory(); m1.State() != m0.State() || m1.Kernels <= 0 || m1.Activations <= 0 {
		t.Fatalf("after a step: %+v", m1)
	}
}

// TestAdapterLR: lazy adapters step with Options.AdapterLR, the other
// parameters with the schedule's rate (the first AdamW step moves each
// value by lr·g/(|g|+ε), plus decay for 2-D ones).
func TestAdapterLR(t *testing.T) {
	o, err := Options{LR: 1e-3, TotalSteps: 10, Schedule: ScheduleConstant, WeightDecay: -1, AdapterLR: 0.05}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	w := &ops.Param{Name: "w", Value: []float32{0.5}, Grad: []float32{0.3}, Shape: []int{1}}
	r := &ops.Param{Name: "r", Value: []float32{0}, Grad: []float32{-0.2}, Shape: []int{1}}
	tr := &Trainer{o: o, params: []*ops.Param{w, r}, m: [][]float32{{0}, {0}}, v: [][]float32{{0}, {0}},
		decay: []bool{false, false}, adapterNames: map[string]bool{"r": true}}
	tr.adamW(o.LR)
	if got, want := float64(w.Value[0]), 0.5-1e-3*0.3/(0.3+o.Eps); math.Abs(got-want) > 1e-7 {
		t.Errorf("w = %g, want %g (scheduled rate)", got, want)
	}
	if got, want := float64(r.Value[0]), 0.05*0.2/(0.2+o.Eps); math.Abs(got-want) > 1e-7 {
		t.Errorf("adapter r = %g, want %g (AdapterLR)", got, want)
	}
	if _, err := (Options{AdapterLR: -0.5}).withDefaults(); err == nil {
		t.Error("negative AdapterLR accepted") // (AdapterLROff, -1, is the one marker)
	}
}

// mustIdx returns nm's unpacked indices.
func mustIdx(t *testing.T, nm *ops.NMParam) []uint8 {
	t.Helper()
	idx, err := nm.IdxCopy()
	if err != nil {
		t.Fatal(err)
	}
	return idx
}

// mustKeep returns nm's unpacked transpose mask.
func mustKeep(t *testing.T, nm *ops.NMParam) []bool {
	t.Helper()
	keep, err := nm.TKeepCopy()
	if err != nil {
		t.Fatal(err)
	}
	return keep
}

// TestSumSquares: the gradient norm's sum of squares is within float64
// rounding of a plain loop, and the same bits for every thread count.
func TestSumSquares(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for _, n := range []int{0, 1, 5, sumSquaresChunk, sumSquaresChunk + 1, 3*sumSquaresChunk + 17} {
		g := make([]float32, n)
		var want float64
		for i := range g {
			g[i] = float32(rng.NormFloat64() * math.Pow(10, float64(rng.IntN(5)-2)))
			want += float64(g[i]) * float64(g[i])
		}
		first := sumSquares(g, 1)
		if math.Abs(first-want) > 1e-12*want {
			t.Fatalf("n %d: %v, want %v", n, first, want)
		}
		for _, threads := range []int{2, 3} {
			if got := sumSquares(g, threads); got != first {
				t.Fatalf("n %d threads %d: %v, threads 1 %v", n, threads, got, first)
			}
		}
	}
}

// TestForwardOverwritesBuffers: the activation buffers are reused without
// clearing, so every step's Forward must write its whole output: an
// evaluation after filling them with NaN equals one before.
func TestForwardOverwritesBuffers(t *testing.T) {
	tr := openTrainer(t, tinySlope(t), Options{Threads: 2})
	ids := randBatch(rand.New(rand.NewPCG(9, 9)), tr.Vocab(), 2, 8)
	want, err := tr.Eval(ids)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range tr.acts {
		for i := range b[:cap(b)] {
			b[:cap(b)][i] = float32(math.NaN())
		}
	}
	if got, err := tr.Eval(ids); err != nil || got != want {
		t.Fatalf("after poisoning the buffers: loss %v (%v), want %v", got, err, want)
	}
}

// TestRowMax: rowMax against a plain loop, NaN anywhere winning, on every
// length up to 9 (the unrolled loop's tails) and a logits row.
func TestRowMax(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	nan, inf := float32(math.NaN()), float32(math.Inf(1))
	if got := rowMax(nil); !math.IsInf(float64(got), -1) {
		t.Fatalf("rowMax(nil) = %g, want -Inf", got)
	}
	for n := 1; n <= 8193; n++ {
		if n == 10 {
			n = 8192
		}
		y := make([]float32, n)
		for i := range y {
			y[i] = float32(rng.NormFloat64())
		}
		if got, want := rowMax(y), rowMaxLoop(y); got != want {
			t.Fatalf("len %d: %g, want %g", n, got, want)
		}
		for _, special := range []float32{nan, inf} {
			at := rng.IntN(n)
			old := y[at]
			y[at] = special
			got := rowMax(y)
			if special != special && got == got || special == inf && got != inf {
				t.Fatalf("len %d, %g at %d: %g", n, special, at, got)
			}
			y[at] = old
		}
	}
}

// rowMaxLoop is the branching loop rowMax replaced (NaN wins, as with
// math.Max), its reference.
func rowMaxLoop(y []float32) float32 {
	mx := float32(math.Inf(-1))
	for _, v := range y {
		if v > mx || v != v {
			mx = v
			if v != v {
				break
			}
		}
	}
	return mx
}

// BenchmarkRowMax: rowMax against the loop it replaced, over a row of
// 8192 logits (bench/train.sh's vocabulary).
func BenchmarkRowMax(b *testing.B) {
	rng := rand.New(rand.NewPCG(1, 2))
	y := make([]float32, 8192)
	for i := range y {
		y[i] = float32(rng.NormFloat64())
	}
	var sink float32
	for _, k := range []struct {
		name string
		f    func([]float32) float32
	}{{"loop", rowMaxLoop}, {"chains", rowMax}} {
		b.Run(k.name, func(b *testing.B) {
			for b.Loop() {
				sink += k.f(y)
			}
		})
	}
	_ = sink
}
