// Package train is the core of the SLoPe trainer (issues 6 and 8): it
// binds a .slope container's graph as ops.GradSteps over float32 master
// Params, runs forward and backward for next-token cross-entropy, and
// updates the Params with AdamW whose moments exist only for the kept
// values of N:M weights. Every MaskRefresh steps the transpose masks (the
// double-pruned backward's masks) are recomputed by magnitude from the
// updated values; W's own masks never change.
//
// The ops run on the CPU backend, or on Options.Backend; a device
// backend (ops.DeviceGradBackend: the GPU) also holds the state and runs
// the loss and AdamW (device.go). The arithmetic is the same up to the
// rounding of the kernels, and checkpoints do not depend on the device.
//
// Save and Resume write and continue from checkpoints (checkpoint.go);
// Data feeds token windows in a resumable order (data.go).
//
// Lazy adapters (adapters.go) are added when the step count reaches
// Options' adapter start; Options.Accum accumulates gradients over
// micro-batches.
package train

import (
	"errors"
	"fmt"
	"math"
	"os"

	"google.golang.org/protobuf/proto"

	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/format/onnxpb"
	"github.com/slopeml/slope/format/slopepb"
	"github.com/slopeml/slope/ops"
	"github.com/slopeml/slope/ops/cpu"
)

// Schedules of the learning rate after warmup.
const (
	ScheduleCosine   = "cosine"
	ScheduleLinear   = "linear"
	ScheduleConstant = "constant"
)

// Options tune a Trainer. A zero field takes its default.
type Options struct {
	// LR is the peak learning rate (default 1e-4).
	LR float64
	// WarmupSteps ramps the rate linearly from LR/WarmupSteps at the
	// first step to LR at step WarmupSteps (default 0: no warmup, or a
	// resumed checkpoint's; < 0: none even then).
	WarmupSteps int
	// TotalSteps is the length of the run: after warmup the rate decays
	// over the remaining TotalSteps-WarmupSteps steps to 10% of LR
	// (cosine or linear) and stays there. 0: no decay.
	TotalSteps int
	// Schedule is "cosine" (default), "linear" or "constant".
	Schedule string
	// WeightDecay is AdamW's decoupled decay (default 0.1; < 0: none).
	// It applies to the 2-D Params only (linear and N:M weights, token
	// and position embeddings, the LM head, adapter factors); biases and
	// LayerNorm parameters are not decayed.
	WeightDecay float64
	// Beta1, Beta2, Eps are AdamW's (defaults 0.9, 0.95, 1e-8).
	Beta1, Beta2, Eps float64
	// Clip is the global gradient-norm bound over all Params (0: no
	// clipping, the default, or a resumed checkpoint's; < 0: none even
	// then).
	Clip float64
	// MaskRefresh recomputes the transpose masks every MaskRefresh steps
	// (default 100; < 0: never).
	MaskRefresh int
	// Threads bounds the goroutines of each op (<= 0: GOMAXPROCS).
	// Results are bit-identical for the same Threads.
	Threads int
	// Seed draws the lazy adapters' L (with each weight's name) and is
	// recorded for the data order; the step itself is deterministic.
	// A resume keeps the checkpoint's seed unless Seed is non-zero or
	// SeedGiven is set.
	Seed      uint64
	SeedGiven bool

	// AdapterStart is the step at which plain low-rank adapters are added
	// to every SlopeLinear (< 0: never; 0: AdapterStartFrac of
	// TotalSteps). Adapters are added only when Rank or RankFrac is set.
	AdapterStart int
	// AdapterStartFrac is the adapter start as a fraction of TotalSteps
	// when AdapterStart is 0 (default DefaultAdapterStartFrac, SLoPe's
	// 0.99: the final 1%): the first step s >= frac*TotalSteps, the last
	// step at the latest.
	AdapterStartFrac float64
	// Rank is the adapters' rank; RankFrac, used when Rank is 0, is the
	// rank as a fraction of the hidden size (rounded, at least 1). Both
	// 0: no adapters, or a resumed checkpoint's; Rank < 0: none even then.
	Rank     int
	RankFrac float64
	// AdapterScale is the adapters' output scale s (default 1).
	AdapterScale float64
	// AdapterLR, when positive, is the constant learning rate of the
	// adapter factors (lazily added or in the model) instead of the
	// schedule's, which is near its floor in the final 1% of steps where
	// SLoPe adds them. 0 takes a resumed checkpoint's; AdapterLROff means
	// the schedule's even then.
	AdapterLR float64

	// Accum splits every Step's batch into Accum micro-batches whose
	// gradients are accumulated before one optimizer step (default 1).
	Accum int

	// Backend binds the graph's ops (nil: the CPU backend,
	// ops.NewCPUGrad). When it is an ops.DeviceGradBackend (the cuda
	// backend with float32 activations) the passes, the loss and AdamW
	// run there and the host keeps copies of the state (device.go);
	// checkpoints do not depend on the backend. Close does not close it.
	Backend ops.GradBackend

	// Batch and Seq are the caller's data shape (sequences per step,
	// tokens per sequence). The trainer does not use them; checkpoints
	// record them so that a resume can continue with the same shape
	// (0: not recorded; Resume fills them from the checkpoint).
	Batch, Seq int
}

// AdapterLROff as Options.AdapterLR turns a resumed checkpoint's adapter
// rate off (0 keeps it).
const AdapterLROff = -1

// Defaults of Options.
const (
	DefaultLR          = 1e-4
	DefaultWeightDecay = 0.1
	DefaultBeta1       = 0.9
	DefaultBeta2       = 0.95
	DefaultEps         = 1e-8
	DefaultMaskRefresh = 100
	// MinLRFraction is where the cosine and linear schedules end.
	MinLRFraction = 0.1
)

func (o Options) withDefaults() (Options, error) {
	if o.LR == 0 {
		o.LR = DefaultLR
	}
	if o.Schedule == "" {
		o.Schedule = ScheduleCosine
	}
	switch o.Schedule {
	case ScheduleCosine, ScheduleLinear, ScheduleConstant:
	default:
		return o, fmt.Errorf("train: schedule %q: want cosine, linear or constant", o.Schedule)
	}
	if o.AdapterLR == AdapterLROff {
		o.AdapterLR = 0
	}
	switch {
	case o.WeightDecay == 0:
		o.WeightDecay = DefaultWeightDecay
	case o.WeightDecay < 0:
		o.WeightDecay = 0
	}
	if o.Beta1 == 0 {
		o.Beta1 = DefaultBeta1
	}
	if o.Beta2 == 0 {
		o.Beta2 = DefaultBeta2
	}
	if o.Eps == 0 {
		o.Eps = DefaultEps
	}
	if o.MaskRefresh == 0 {
		o.MaskRefresh = DefaultMaskRefresh
	}
	if o.AdapterScale == 0 {
		o.AdapterScale = DefaultAdapterScale
	}
	if o.Accum == 0 {
		o.Accum = 1
	}
	if o.WarmupSteps < 0 {
		o.WarmupSteps = 0 // "none", set over a resumed checkpoint's
	}
	if o.Rank < 0 {
		o.Rank, o.RankFrac = 0, 0
	}
	for _, f := range []struct {
		name string
		v    float64
	}{{"LR", o.LR}, {"WeightDecay", o.WeightDecay}, {"Beta1", o.Beta1}, {"Beta2", o.Beta2}, {"Eps", o.Eps}, {"Clip", o.Clip},
		{"AdapterStartFrac", o.AdapterStartFrac}, {"RankFrac", o.RankFrac}, {"AdapterScale", o.AdapterScale}, {"AdapterLR", o.AdapterLR}} {
		if math.IsNaN(f.v) || math.IsInf(f.v, 0) {
			return o, fmt.Errorf("train: option %s is %g: want a finite number", f.name, f.v)
		}
	}
	if o.Accum < 0 || o.RankFrac < 0 || o.RankFrac > 1 || o.AdapterStartFrac < 0 || o.AdapterStartFrac > 1 {
		return o, fmt.Errorf("train: invalid options %+v", o)
	}
	if o.LR < 0 || o.AdapterLR < 0 || o.Beta1 < 0 || o.Beta1 >= 1 || o.Beta2 < 0 || o.Beta2 >= 1 || o.Eps < 0 || o.TotalSteps < 0 {
		return o, fmt.Errorf("train: invalid options %+v", o)
	}
	return o, nil
}

// ErrModel is wrapped when a container's graph cannot be trained
// (ops.ErrGraph).
var ErrModel = ops.ErrGraph

// Trainer trains one container's Params in memory.
type Trainer struct {
	file   *format.File
	o      Options
	store  *ops.MemParamStore
	pstore *paramStore
	// weights are the container's tensors and the adapters added in
	// memory; graph is the graph bound (the container's, plus adapters).
	weights *overlay
	graph   *onnxpb.GraphProto
	// adapterNames are the adapter factors the graph references;
	// adapterAt is the step at which this trainer (or the run it resumed)
	// added them (-1: not added by the trainer).
	adapterNames map[string]bool
	adapterAt    int
	plan         []ops.Planned[ops.GradStep]
	dims         []int // per value slot
	logits       int   // slot of the logits
	vocab        int

	params []*ops.Param
	m, v   [][]float32 // AdamW moments, len(Value) each
	decay  []bool
	born   []int // step at which each Param joined (bias corrections)
	step   int
	// gradNorm is the global gradient norm of the last Step, before
	// clipping.
	gradNorm float64
	// gradScale is the clipping factor of the current update (1: none).
	gradScale float32

	// acts are the per-slot buffers of the forward values, grads the
	// buffers the backward pass recycles for the values' gradients,
	// glogits the loss gradient's; all reused by every pass (grown when a
	// batch needs more).
	acts, grads [][]float32
	glogits     []float32

	// dev is the backend when it holds the training state
	// (ops.DeviceGradBackend, every step a DeviceGradStep): opt then
	// holds the Params' values, gradients and moments, and the host's
	// copies are refreshed lazily (device.go).
	dev       ops.DeviceGradBackend
	opt       ops.DeviceOptimizer
	behind    behind          // which side's copy of the state is out of date
	adamSteps []cpu.AdamWStep // the device's AdamW updates of a step
	// The per-step host buffers of call and the loss (grown by reuse):
	// the input ids, the attention mask, the next-token targets, and each
	// row's loss.
	callIDs, callMask, ceTargets []int32
	ceLoss                       []float64

	dataPos *slopepb.DataPosition // recorded by Save, restored by Resume
	tokens  int64                 // tokens trained on since step 0 (-1: not known; Step counts them), recorded by Save, restored by Resume
	note    string                // provenance command of Save
	srcFile *slopepb.SourceFile   // the opened container, for Save
	srcStat os.FileInfo           // the opened container when it was opened (nil: unknown)
}

// New opens the container at path and binds its graph for training.
func New(path string, o Options) (*Trainer, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	f, err := format.Open(path, nil)
	if err != nil {
		return nil, err
	}
	t, err := newTrainer(f, o)
	if err == nil {
		err = t.maybeAddAdapters()
	}
	if err == nil {
		err = f.DropResident() // the Params hold their own copies now
	}
	if err != nil {
		if t != nil {
			err = errors.Join(err, t.closeDevice())
		}
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return t, nil
}

func newTrainer(f *format.File, o Options) (*Trainer, error) {
	t := &Trainer{file: f, o: o, store: ops.NewParamStore(f), adapterAt: -1}
	if st, err := os.Stat(f.Path()); err == nil {
		t.srcStat = st // Save hashes the file later, and checks it is this one
	}
	t.weights = &overlay{File: f, desc: map[string]*slopepb.Tensor{}, vals: map[string]*ops.Param{}}
	t.pstore = &paramStore{mem: t.store, extra: t.weights.vals}
	if g := f.Manifest().GetGraph(); g != nil {
		t.graph = proto.Clone(g).(*onnxpb.GraphProto)
	}
	if err := t.bind(); err != nil {
		return nil, errors.Join(err, t.closeDevice())
	}
	return t, nil
}

// Close releases the container.
func (t *Trainer) Close() error {
	return errors.Join(t.closeDevice(), t.file.Close())
}

// Options are the options in effect (defaults filled in).
func (t *Trainer) Options() Options { return t.o }

// StepCount is the number of optimizer steps taken.
func (t *Trainer) StepCount() int { return t.step }

// Params lists the trainable Params in binding order (shared Params,
// such as a tied LM head, once). With a device backend their values are
// current after SyncHost (Save, RefreshMasks and new adapters call it).
func (t *Trainer) Params() []*ops.Param { return t.params }

// Vocab is the number of logits per token.
func (t *Trainer) Vocab() int { return t.vocab }

// MaxPositions is the number of learned positions (the longest sequence
// the model takes; 0 when the container records no OPT config).
func (t *Trainer) MaxPositions() int {
	return int(t.file.Manifest().GetArchitecture().GetOpt().GetMaxPositionEmbeddings())
}

// GradNorm is the global gradient norm of the last Step before clipping.
func (t *Trainer) GradNorm() float64 { return t.gradNorm }

// OptimizerBytes is the memory of the AdamW moments: two float32 per
// stored value (kept values only for N:M weights).
func (t *Trainer) OptimizerBytes() int64 {
	var n int64
	for _, m := range t.m {
		n += 2 * 4 * int64(len(m))
	}
	return n
}

// DenseOptimizerBytes is what the moments would take were every N:M
// weight dense (two float32 per dense element).
func (t *Trainer) DenseOptimizerBytes() int64 {
	var n int64
	for _, p := range t.params {
		n += 2 * 4 * int64(denseLen(p))
	}
	return n
}

// NMOptimizerBytes is OptimizerBytes and DenseOptimizerBytes restricted
// to the N:M weights (kept = N/M of dense).
func (t *Trainer) NMOptimizerBytes() (kept, dense int64) {
	for _, p := range t.params {
		if p.NM != nil {
			kept += 2 * 4 * int64(len(p.Value))
			dense += 2 * 4 * int64(denseLen(p))
		}
	}
	return kept, dense
}

func denseLen(p *ops.Param) int {
	if p.NM != nil {
		return p.NM.Rows * p.NM.Cols
	}
	return len(p.Value)
}

// LR is the learning rate of 0-based step s.
func (t *Trainer) LR(s int) float64 {
	o := t.o
	if o.WarmupSteps > 0 && s < o.WarmupSteps {
		return o.LR * float64(s+1) / float64(o.WarmupSteps)
	}
	if o.Schedule == ScheduleConstant || o.TotalSteps <= max(o.WarmupSteps, 1) {
		return o.LR
	}
	// The decay starts after the warmup's last step (which is at LR) and
	// reaches the floor at the last step, TotalSteps-1. Without a warmup
	// the first step is at LR.
	var p float64
	if o.WarmupSteps > 0 {
		p = math.Min(1, float64(s-o.WarmupSteps+1)/float64(o.TotalSteps-o.WarmupSteps))
	} else {
		p = math.Min(1, float64(s)/float64(o.TotalSteps-1))
	}
	lo := MinLRFraction * o.LR
	if o.Schedule == ScheduleLinear {
		return o.LR - (o.LR-lo)*p
	}
	return lo + (o.LR-lo)*0.5*(1+math.Cos(math.Pi*p))
}

// checkBatch checks that a batch holds sequences of one length (at
// least 2) of ids inside the vocabulary.
func (t *Trainer) checkBatch(ids [][]int32) error {
	if len(ids) == 0 {
		return fmt.Errorf("train: empty batch")
	}
	seq := len(ids[0])
	if seq < 2 {
		return fmt.Errorf("train: sequences of %d tokens, want at least 2", seq)
	}
	for b, s := range ids {
		if len(s) != seq {
			return fmt.Errorf("train: sequence %d has %d tokens, sequence 0 %d", b, len(s), seq)
		}
		for _, id := range s {
			if id < 0 || int(id) >= t.vocab {
				return fmt.Errorf("train: token id %d outside the vocabulary of %d", id, t.vocab)
			}
		}
	}
	return nil
}

// call checks a batch and makes its Call: the model reads every
// sequence but its last token, and each position's target is the token
// after it (ids, mask and targets in reused buffers). The last token needs no
// forward pass: it predicts nothing, and causal attention keeps it from
// the earlier positions, so leaving it out changes no loss or gradient
// and keeps the row count a multiple of --seq (the GPU's 2:4 products
// pad rows to multiples of 64 or 256).
func (t *Trainer) call(ids [][]int32) (*ops.Call, []int32, error) {
	if err := t.checkBatch(ids); err != nil {
		return nil, nil, err
	}
	seq := len(ids[0])
	c := &ops.Call{Batch: len(ids), Seq: seq - 1, Threads: t.o.Threads}
	c.IDs = reuse(&t.callIDs, c.Rows())[:0]
	tg := reuse(&t.ceTargets, c.Rows())[:0]
	for _, s := range ids {
		c.IDs = append(c.IDs, s[:seq-1]...)
		tg = append(tg, s[1:]...)
	}
	c.Mask = reuse(&t.callMask, c.Rows())
	for i := range c.Mask {
		c.Mask[i] = 1
	}
	return c, tg, nil
}

// reuse returns (*buf)[:n], first growing *buf when it holds less.
func reuse[T any](buf *[]T, n int) []T {
	if cap(*buf) < n {
		*buf = make([]T, n)
	}
	return (*buf)[:n]
}

// threads is the goroutine count of the trainer's own loops.
func (t *Trainer) threads() int { return cpu.ResolveThreads(t.o.Threads) }

// buffer returns (*bufs)[slot][:n], growing the slot's buffer when it is
// too short; its contents are undefined: every step's Forward writes its
// whole output, as the runtime's sessions rely on too
// (TestForwardOverwritesBuffers).
func buffer(bufs *[][]float32, slot, n int) []float32 {
	if len(*bufs) <= slot {
		*bufs = append(*bufs, make([][]float32, slot+1-len(*bufs))...)
	}
	return reuse(&(*bufs)[slot], n)
}

// forward runs the plan, keeping every value (in the trainer's reused
// buffers: valid until the next forward pass).
func (t *Trainer) forward(c *ops.Call) ([]*ops.Value, error) {
	vals := make([]*ops.Value, len(t.dims))
	rows := c.Rows()
	for _, ps := range t.plan {
		in := make([]*ops.Value, len(ps.In))
		for i, s := range ps.In {
			in[i] = vals[s]
		}
		out := &ops.Value{Rows: rows, Dim: ps.Dim, Data: buffer(&t.acts, ps.Out, rows*ps.Dim)}
		if err := ps.Step.Forward(c, in, out); err != nil {
			return nil, fmt.Errorf("node %q: %w", ps.Node.Name, err)
		}
		vals[ps.Out] = out
	}
	return vals, nil
}

// crossEntropy is the summed loss of each row's logits against its
// target (call's); with grad it also returns ∂(sum/total)/∂logits, total
// being the number of predicted positions of the whole (accumulated)
// batch. Rows are spread
// over threads; each row's loss is computed alone (the float32 max, the
// exponentials and their float64 sum by cpu.ExpShiftSum, lse in float64)
// into the reused gradient buffer, and the rows' losses are summed in
// row order, so the result does not depend on the threads.
func (t *Trainer) crossEntropy(c *ops.Call, targets []int32, logits *ops.Value, grad bool, total int) (float64, *ops.Value) {
	g := &ops.Value{Rows: logits.Rows, Dim: logits.Dim, Data: reuse(&t.glogits, len(logits.Data))}
	inv := 1 / float64(total)
	rows := c.Batch * c.Seq
	losses := reuse(&t.ceLoss, rows)
	cpu.ParallelFor(rows, t.threads(), func(lo, hi int) {
		for r := lo; r < hi; r++ {
			// g's row: the softmax numerators, then the gradient.
			losses[r] = crossEntropyRow(g.Row(r), logits.Row(r), int(targets[r]), inv, grad)
		}
	})
	var loss float64
	for _, l := range losses {
		loss += l
	}
	if !grad {
		return loss, nil
	}
	return loss, g
}

// crossEntropyRow returns the loss of one row of logits y for target:
// the float32 max, the exponentials and their float64 sum by
// cpu.ExpShiftSum, the log-sum-exp in float64. With grad, e gets the
// gradient of inv·loss (e may not alias y; without grad it is scratch).
func crossEntropyRow(e, y []float32, target int, inv float64, grad bool) float64 {
	mx := rowMax(y)
	sum := cpu.ExpShiftSum(e, y, mx)
	loss := float64(mx) + math.Log(sum) - float64(y[target])
	if grad {
		sc := float32(inv / sum)
		for j := range e {
			e[j] *= sc
		}
		e[target] -= float32(inv)
	}
	return loss
}

// rowMax returns the largest value of y (-Inf when empty), NaN if any is
// NaN: four independent max chains (1.2-2.5x the branching loop over
// 8192 logits: BenchmarkRowMax), combined at the end. Which zero it returns for a maximum of
// ±0 does not matter to the loss: it is only subtracted and added.
func rowMax(y []float32) float32 {
	inf := float32(math.Inf(-1))
	m0, m1, m2, m3 := inf, inf, inf, inf
	i := 0
	for ; i+4 <= len(y); i += 4 {
		m0 = max(m0, y[i])
		m1 = max(m1, y[i+1])
		m2 = max(m2, y[i+2])
		m3 = max(m3, y[i+3])
	}
	for ; i < len(y); i++ {
		m0 = max(m0, y[i])
	}
	return max(max(m0, m1), max(m2, m3))
}

// backward runs the plan in reverse from the logits' gradient, adding
// into every Param's Grad.
func (t *Trainer) backward(c *ops.Call, vals []*ops.Value, glogits *ops.Value) error {
	rows := c.Rows()
	grads := make([]*ops.Value, len(t.dims))
	grads[t.logits] = glogits
	// Gradient buffers are recycled: a value's gradient is dead once its
	// producer's backward has run, and its buffer serves the next value
	// (zeroed: gradients accumulate). Which buffer a value gets does not
	// change any result.
	free := append([][]float32(nil), t.grads...)
	take := func(n int) []float32 {
		best := -1
		for k, b := range free {
			if cap(b) >= n && (best < 0 || cap(b) < cap(free[best])) {
				best = k
			}
		}
		if best < 0 {
			b := make([]float32, n)
			t.grads = append(t.grads, b)
			return b
		}
		b := free[best][:n]
		free = append(free[:best], free[best+1:]...)
		clear(b)
		return b
	}
	for i := len(t.plan) - 1; i >= 0; i-- {
		ps := t.plan[i]
		gout := grads[ps.Out]
		if gout == nil {
			continue // the output does not reach the loss
		}
		in := make([]*ops.Value, len(ps.In))
		gin := make([]*ops.Value, len(ps.In))
		for j, s := range ps.In {
			in[j] = vals[s]
			if grads[s] == nil {
				grads[s] = &ops.Value{Rows: rows, Dim: t.dims[s], Data: take(rows * t.dims[s])}
			}
			gin[j] = grads[s]
		}
		if err := ps.Step.Backward(c, in, vals[ps.Out], gout, gin); err != nil {
			return fmt.Errorf("node %q backward: %w", ps.Node.Name, err)
		}
		if ps.Out != t.logits {
			free = append(free, gout.Data[:cap(gout.Data)])
		}
		grads[ps.Out] = nil // no longer needed
	}
	return nil
}

// lossAndGrad computes the batch's mean loss and adds its gradient into
// the Params' Grads, over Accum micro-batches (sizes differing by at most
// one sequence; each micro-batch's gradient is weighted by its share of
// the predicted tokens, so the sum is the whole batch's gradient).
func (t *Trainer) lossAndGrad(ids [][]int32) (float64, error) { return t.lossAccum(ids, true) }

// lossAccum is the batch's mean loss over Accum micro-batches (sizes
// differing by at most one sequence), with grad adding its gradient too.
func (t *Trainer) lossAccum(ids [][]int32, grad bool) (float64, error) {
	k := min(t.o.Accum, len(ids))
	if k <= 1 {
		return t.loss(ids, grad)
	}
	if err := t.checkBatch(ids); err != nil { // before any micro-batch adds a gradient
		return 0, err
	}
	total := len(ids) * (len(ids[0]) - 1)
	var sum float64
	lo := 0
	for i := range k {
		hi := lo + len(ids)/k
		if i < len(ids)%k {
			hi++
		}
		s, err := t.lossSum(ids[lo:hi], grad, total)
		if err != nil {
			return 0, err
		}
		sum += s
		lo = hi
	}
	return sum / float64(total), nil
}

// Eval is the mean next-token cross-entropy of a batch of equal-length
// sequences, without updating anything, in the Accum micro-batches whose
// memory the run is sized for.
func (t *Trainer) Eval(ids [][]int32) (float64, error) {
	return t.lossAccum(ids, false)
}

// loss runs the forward pass of a batch and returns its mean next-token
// cross-entropy; with grad, it also runs the backward pass, adding into
// the Params' Grads.
func (t *Trainer) loss(ids [][]int32, grad bool) (float64, error) {
	if len(ids) == 0 {
		return t.lossSum(ids, grad, 1)
	}
	total := len(ids) * (len(ids[0]) - 1)
	s, err := t.lossSum(ids, grad, total)
	return s / float64(total), err
}

// lossSum is loss's summed cross-entropy, the gradient scaled by 1/total.
func (t *Trainer) lossSum(ids [][]int32, grad bool, total int) (float64, error) {
	c, targets, err := t.call(ids)
	if err != nil {
		return 0, err
	}
	if t.opt != nil {
		return t.lossSumDevice(c, targets, grad, total)
	}
	vals, err := t.forward(c)
	if err != nil {
		return 0, err
	}
	loss, g := t.crossEntropy(c, targets, vals[t.logits], grad, total)
	if grad {
		if err := t.backward(c, vals, g); err != nil {
			return 0, err
		}
	}
	return loss, nil
}

// Step takes one optimizer step on a batch of equal-length sequences
// (every token real) and returns the batch loss before the update. The
// gradients are zero between steps: Params start so, AdamW zeroes them
// as it reads them, and a failed step clears them. Its errors number the
// step from 1, as the log does.
func (t *Trainer) Step(ids [][]int32) (float64, error) {
	loss, err := t.lossAndGrad(ids)
	if err != nil {
		return 0, errors.Join(err, t.zeroGrad())
	}
	if math.IsNaN(loss) || math.IsInf(loss, 0) {
		return loss, errors.Join(fmt.Errorf("train: step %d: loss is %g", t.step+1, loss), t.zeroGrad())
	}
	if err := t.apply(); err != nil {
		return loss, err
	}
	if t.tokens >= 0 {
		t.tokens += int64(len(ids) * (len(ids[0]) - 1)) // the tokens predicted
	}
	return loss, nil
}

// apply clips the accumulated gradients, updates the Params (AdamW scales
// the gradients by the clipping factor and zeroes them as it reads them),
// counts the step and refreshes the transpose masks when due.
func (t *Trainer) apply() error {
	if err := t.clip(); err != nil {
		return errors.Join(err, t.zeroGrad())
	}
	if math.IsNaN(t.gradNorm) || math.IsInf(t.gradNorm, 0) {
		// An overflow in the backward pass with a finite loss: updating
		// would write NaN into the weights (and clipping would scale by 0).
		return errors.Join(fmt.Errorf("train: step %d: gradient norm is %g: not applied", t.step+1, t.gradNorm), t.zeroGrad())
	}
	if err := t.adamW(t.LR(t.step)); err != nil {
		// A device error: the state may be half updated, and the next
		// device call reports the device's condition.
		return errors.Join(err, t.zeroGrad())
	}
	t.step++
	if t.o.MaskRefresh > 0 && t.step%t.o.MaskRefresh == 0 {
		if err := t.RefreshMasks(); err != nil {
			return err
		}
	}
	return t.maybeAddAdapters()
}

// zeroGrad clears the gradients after a failed step.
func (t *Trainer) zeroGrad() error {
	for _, p := range t.params {
		clear(p.Grad)
	}
	if t.opt != nil {
		if err := t.dev.Do(t.opt.ZeroGrads); err != nil {
			return fmt.Errorf("train: clear the device gradients: %w", err)
		}
	}
	return nil
}

// clip measures the global gradient norm and sets the factor AdamW
// scales the gradients by: Clip/norm when the norm is larger than Clip,
// else 1.
func (t *Trainer) clip() error {
	var ss float64
	if t.opt != nil {
		if err := t.dev.Do(func() (err error) { ss, err = t.opt.SumSquares(); return err }); err != nil {
			return fmt.Errorf("train: gradient norm: %w", err)
		}
	} else {
		for _, p := range t.params {
			ss += sumSquares(p.Grad, t.threads())
		}
	}
	t.gradNorm = math.Sqrt(ss)
	t.gradScale = 1
	if !(t.o.Clip <= 0 || t.gradNorm <= t.o.Clip) {
		// A factor that rounds to 0 in float32 would read as "no scaling"
		// (cpu.AdamWStep's GradScale 0): keep the smallest positive one.
		t.gradScale = max(float32(t.o.Clip/t.gradNorm), math.SmallestNonzeroFloat32)
	}
	return nil
}

// sumSquaresChunk is how many values sumSquares sums per chunk.
const sumSquaresChunk = 1 << 16

// sumSquares returns Σ g[i]² in float64: per chunk of sumSquaresChunk
// values four interleaved sums, ((0+1)+(2+3)), the chunks' sums added in
// order. The chunks are split over threads; the order does not depend on
// their number.
func sumSquares(g []float32, threads int) float64 {
	chunks := (len(g) + sumSquaresChunk - 1) / sumSquaresChunk
	part := make([]float64, chunks)
	sum := func(lo, hi int) {
		for c := lo; c < hi; c++ {
			x := g[c*sumSquaresChunk : min((c+1)*sumSquaresChunk, len(g))]
			var a0, a1, a2, a3 float64
			i := 0
			for ; i+4 <= len(x); i += 4 {
				v := x[i : i+4 : i+4]
				a0 += float64(v[0]) * float64(v[0])
				a1 += float64(v[1]) * float64(v[1])
				a2 += float64(v[2]) * float64(v[2])
				a3 += float64(v[3]) * float64(v[3])
			}
			for ; i < len(x); i++ {
				a0 += float64(x[i]) * float64(x[i])
			}
			part[c] = (a0 + a1) + (a2 + a3)
		}
	}
	if chunks > 1 {
		cpu.ParallelFor(chunks, threads, sum)
	} else {
		sum(0, chunks)
	}
	var ss float64
	for _, p := range part {
		ss += p
	}
	return ss
}

// adamW updates every Param (step t.step+1 for the bias corrections,
// counted from the step at which the Param joined, for adapters):
//
//	m = β1·m + (1-β1)·g,  v = β2·v + (1-β2)·g²
//	w = w·(1 - lr·wd) - lr·(m/(1-β1ᵗ)) / (sqrt(v/(1-β2ᵗ)) + ε)
//
// (lr is Options.AdapterLR instead for lazy adapters when that is set)
// with wd = 0 for Params that are not 2-D. Moments are float32, the
// arithmetic float64 (cpu.AdamW: each operation rounded once, 8 values
// at a time with AVX-512, the same bits as the scalar loop).
func (t *Trainer) adamW(lr float64) error {
	o := t.o
	steps := t.adamSteps[:0] // the device's updates, reused step to step
	for k, p := range t.params {
		n := float64(t.step + 1)
		if k < len(t.born) {
			n -= float64(t.born[k])
		}
		bc1 := 1 - math.Pow(o.Beta1, n)
		bc2 := 1 - math.Pow(o.Beta2, n)
		wd := 0.0
		if t.decay[k] {
			wd = o.WeightDecay
		}
		lr := lr
		if o.AdapterLR > 0 && t.adapterNames[p.Name] {
			lr = o.AdapterLR
		}
		st := cpu.AdamWStep{Beta1: o.Beta1, Beta2: o.Beta2, BC1: bc1, BC2: bc2, LR: lr, Shrink: 1 - lr*wd, Eps: o.Eps,
			GradScale: t.gradScale, ZeroGrad: true}
		if t.opt != nil {
			steps = append(steps, st)
			continue
		}
		m, v := t.m[k], t.v[k]
		update := func(lo, hi int) {
			cpu.AdamW(p.Value[lo:hi], p.Grad[lo:hi], m[lo:hi], v[lo:hi], st)
		}
		// Elementwise: any split gives the same values.
		if n := len(p.Grad); n >= 1<<16 {
			cpu.ParallelFor(n, t.threads(), update)
		} else {
			update(0, n)
		}
	}
	if t.opt == nil {
		return nil
	}
	t.adamSteps = steps
	t.behind = hostBehind
	return t.dev.Do(func() error {
		for k, st := range steps {
			if err := t.opt.AdamW(k, st); err != nil {
				return fmt.Errorf("train: AdamW: %w", err)
			}
		}
		return nil
	})
}

// RefreshMasks recomputes every N:M weight's transpose mask (TMask) by
// magnitude from its current kept values (format.DoublePruneMagnitude).
// Weights whose rows are not a multiple of M keep everything.
func (t *Trainer) RefreshMasks() error {
	if t.opt != nil {
		// On the device when it can (2:4), from the device's values; the
		// host's masks follow at the next SyncHost.
		if err := t.toDevice(); err != nil {
			return err
		}
		err := t.dev.Do(t.opt.RefreshMasks)
		if err == nil {
			t.behind = hostBehind
			return nil
		}
		if !errors.Is(err, ops.ErrUnsupported) {
			return fmt.Errorf("train: transpose masks: %w", err)
		}
	}
	if err := t.SyncHost(); err != nil {
		return err
	}
	if t.opt != nil {
		t.behind = deviceBehind // the new masks go to the device
	}
	for _, p := range t.params {
		nm := p.NM
		if nm == nil || nm.Rows%nm.Pattern.M != 0 {
			continue
		}
		keep, err := nm.MagnitudeTKeep(p.Value)
		if err == nil {
			err = nm.SetTKeep(keep)
		}
		if err != nil {
			return fmt.Errorf("train: transpose mask of %q: %w", p.Name, err)
		}
	}
	return nil
}
