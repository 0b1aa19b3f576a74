package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"

	"github.com/slopeml/slope/cli/internal/interrupt"
	"github.com/slopeml/slope/cli/internal/outfile"
	"github.com/slopeml/slope/cuda"
	"github.com/slopeml/slope/internal/rusage"
	"github.com/slopeml/slope/ops/cpu"
	"github.com/slopeml/slope/train"
)

// trainGCPercent is the collector's target slope train runs with when
// GOGC is not set (see runTrain).
const trainGCPercent = 25

// trainFlags are the command line of slope train.
type trainFlags struct {
	data, val, out, resume, log, schedule    string
	steps, batch, seq, warmup, maskRefresh   int
	evalEvery, evalBatches, saveEvery, every int
	threads, rank, accum, stopAfter          int
	lr, clip, weightDecay                    float64
	rankFrac, adapterScale, adapterLR        float64
	adapterStart, device                     string
	seed                                     uint64
	gpuProfile                               bool
}

func newTrainCmd() *cobra.Command {
	var fl trainFlags
	cmd := &cobra.Command{
		Use:   "train MODEL.slope --data FILE --steps N --batch B --seq T --out CKPT.slope",
		Short: "Train a SLoPe model (on the CPU, or an NVIDIA GPU with --device) and write checkpoints",
		Long: "train runs next-token training of a .slope model on a token file (.u16/.bin:\n" +
			"uint16 little-endian, .u32: uint32) or on text encoded with the model's tokenizer\n" +
			"(each non-empty line one document: the config's bos_token_id before it, its line\n" +
			"break dropped, special tokens such as </s> recognised, as transformers' causal-LM\n" +
			"example treats a text file). Windows of --seq+1 tokens are visited in a seeded order,\n" +
			"reshuffled every epoch. --steps is the run's total step count: with --resume the\n" +
			"run continues from the checkpoint's step, weights, optimizer moments and data\n" +
			"position up to --steps, and ends bit-identical to an uninterrupted run with the\n" +
			"same --threads (hyper-parameters not given come from the checkpoint; MODEL is then\n" +
			"not read; a --seq other than the checkpoint's starts the data's next epoch, since\n" +
			"the recorded position counts windows of the old length). A line per\n" +
			"--print-every steps goes to stderr; --log writes a JSON line per step and eval, and\n" +
			"one with the memory use (training state, kernel buffers, peak RSS) at the end.\n" +
			"Checkpoints (complete .slope containers, written atomically) go to --out every\n" +
			"--save-every steps and at the end. Ctrl-C or SIGTERM end the run after the current\n" +
			"step: the checkpoint is written to --out (resume it with --resume) and slope exits\n" +
			"with status 130 (143 for SIGTERM); a second signal stops at once (--out then keeps\n" +
			"its previous checkpoint; the partial one, left under a hidden temporary name beside\n" +
			"it, is removed by the next slope train, slope init or slope-convert writing that\n" +
			"--out). The log's tokens count from step 0 across resumes. Unless GOGC is set, the\n" +
			"Go collector runs at GOGC=25 (the default 100 lets the heap, and the peak RSS,\n" +
			"reach twice the live size).\n\n" +
			"With --rank or --rank-frac, plain low-rank adapters (L small random, R zero, so the\n" +
			"loss is continuous) join every N:M layer at --adapter-start: a fraction of --steps\n" +
			"(default 0.99, SLoPe's final 1%: the first step at or past it, the last step at the\n" +
			"latest) or a step number. --accum K splits every batch into\n" +
			"K micro-batches whose gradients are accumulated before one optimizer step.",
		Args: exactArgs("MODEL"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runTrain(cmd, args[0], fl)
		},
	}
	f := cmd.Flags()
	f.StringVar(&fl.data, "data", "", "training data: a .u16/.bin/.u32 token file or text")
	f.StringVar(&fl.val, "val", "", "validation data (same kinds), evaluated every --eval-every steps")
	f.IntVar(&fl.steps, "steps", 0, "total optimizer steps of the run")
	f.IntVar(&fl.batch, "batch", 8, "sequences per step (with --resume: the checkpoint's unless given)")
	f.IntVar(&fl.seq, "seq", 128, "tokens per sequence (with --resume: the checkpoint's unless given)")
	f.Float64Var(&fl.lr, "lr", train.DefaultLR, "peak learning rate")
	f.IntVar(&fl.warmup, "warmup", 0, "linear warmup steps")
	f.StringVar(&fl.schedule, "schedule", train.ScheduleCosine, "learning-rate schedule after warmup: cosine, linear or constant")
	f.Float64Var(&fl.clip, "clip", 1, "global gradient-norm clip (0: none)")
	f.Float64Var(&fl.weightDecay, "weight-decay", train.DefaultWeightDecay, "AdamW decoupled weight decay of 2-D weights, adapter factors included; not of biases or LayerNorm (0: none)")
	f.IntVar(&fl.maskRefresh, "mask-refresh", train.DefaultMaskRefresh, "recompute the transpose masks every N steps (0: never)")
	f.IntVar(&fl.evalEvery, "eval-every", 0, "evaluate --val every N steps and at the end (0: only at the end)")
	f.IntVar(&fl.evalBatches, "eval-batches", 8, "batches of --val per evaluation (0: all of --val, the last batch partial when its windows do not fill it)")
	f.IntVar(&fl.saveEvery, "save-every", 0, "write --out every N steps (0: only at the end)")
	f.StringVar(&fl.out, "out", "", "checkpoint to write (.slope)")
	f.StringVar(&fl.resume, "resume", "", "checkpoint to continue from (instead of MODEL's weights)")
	f.Uint64Var(&fl.seed, "seed", 0, "seed of the data order and of the adapters' L (with --resume: of adapters added later only)")
	f.StringVar(&fl.log, "log", "", "JSONL log of every step and eval")
	f.IntVar(&fl.every, "print-every", 1, "print a progress line every N steps (0: none)")
	f.IntVar(&fl.threads, "threads", 0, "goroutines per op (0: GOMAXPROCS; results depend on it)")
	f.StringVar(&fl.device, "device", "cpu", "where to train: cpu, or cuda-f32 (NVIDIA GPU, float32: passes and AdamW on the GPU; checkpoints are the same either way); cuda (bf16 mixed precision: bf16 activations and products, fp32 master values, gradients and moments; 2:4 products on cuSPARSELt)")
	f.BoolVar(&fl.gpuProfile, "gpu-profile", false, "with --device cuda or cuda-f32: time each op's forward and backward, the loss and the optimizer's stages on the GPU (CUDA events) and print where a step's time goes")
	f.StringVar(&fl.adapterStart, "adapter-start", "", "when adapters join: a fraction of --steps (e.g. 0.99, the default) or a step (e.g. 990; 0: never)")
	f.IntVar(&fl.rank, "rank", 0, "adapter rank (adapters are added only with --rank or --rank-frac)")
	f.Float64Var(&fl.rankFrac, "rank-frac", 0, "adapter rank as a fraction of the hidden size (e.g. 0.0625)")
	f.Float64Var(&fl.adapterScale, "adapter-scale", 1, "adapter output scale")
	f.Float64Var(&fl.adapterLR, "adapter-lr", 0, "constant learning rate of the adapters (0: the schedule's, which is near its floor when lazy adapters join)")
	f.IntVar(&fl.accum, "accum", 1, "micro-batches per step (gradient accumulation; divides --batch into near-equal parts)")
	// --stop-after N ends the run after step N as an interruption would,
	// with the schedule of --steps: the checkpoint is written, the final
	// evaluation skipped (the resume tests use it).
	f.IntVar(&fl.stopAfter, "stop-after", 0, "stop after this step, as if interrupted (0: run to --steps)")
	if err := f.MarkHidden("stop-after"); err != nil {
		panic(err) // the flag is defined just above
	}
	return cmd
}

func checkTrainFlags(cmd *cobra.Command, fl trainFlags) error {
	for _, f := range []struct {
		name string
		v    int
	}{{"--warmup", fl.warmup}, {"--mask-refresh", fl.maskRefresh}, {"--eval-every", fl.evalEvery}, {"--eval-batches", fl.evalBatches},
		{"--save-every", fl.saveEvery}, {"--print-every", fl.every}, {"--rank", fl.rank}} {
		if f.v < 0 {
			return usagef(cmd, "%s must not be negative, got %d", f.name, f.v)
		}
	}
	if fl.device != "" && fl.device != "cpu" && !isGPU(fl.device) {
		return usagef(cmd, "--device %q: want cpu, cuda-f32 or cuda", fl.device)
	}
	if err := checkGPUProfile(cmd, fl.device, fl.gpuProfile); err != nil {
		return err
	}
	switch {
	case fl.data == "":
		return usagef(cmd, "--data is required")
	case fl.out == "":
		return usagef(cmd, "--out is required")
	case fl.steps <= 0:
		return usagef(cmd, "--steps must be positive, got %d", fl.steps)
	case fl.batch <= 0:
		return usagef(cmd, "--batch must be positive, got %d", fl.batch)
	case fl.seq < 2:
		return usagef(cmd, "--seq must be at least 2, got %d", fl.seq)
	case fl.lr <= 0 || math.IsNaN(fl.lr) || math.IsInf(fl.lr, 0):
		return usagef(cmd, "--lr must be positive, got %g", fl.lr)
	case fl.schedule != train.ScheduleCosine && fl.schedule != train.ScheduleLinear && fl.schedule != train.ScheduleConstant:
		return usagef(cmd, "--schedule %q: want cosine, linear or constant", fl.schedule)
	case !(fl.clip >= 0) || math.IsInf(fl.clip, 0):
		return usagef(cmd, "--clip must be finite and not negative, got %g", fl.clip)
	case !(fl.weightDecay >= 0) || math.IsInf(fl.weightDecay, 0):
		return usagef(cmd, "--weight-decay must be finite and not negative, got %g", fl.weightDecay)
	case fl.rankFrac < 0 || fl.rankFrac > 1 || math.IsNaN(fl.rankFrac):
		return usagef(cmd, "--rank-frac must be in [0, 1], got %g", fl.rankFrac)
	case fl.adapterScale == 0 || math.IsNaN(fl.adapterScale) || math.IsInf(fl.adapterScale, 0):
		return usagef(cmd, "--adapter-scale must be finite and non-zero, got %g", fl.adapterScale)
	case fl.adapterLR < 0 || math.IsNaN(fl.adapterLR) || math.IsInf(fl.adapterLR, 0):
		return usagef(cmd, "--adapter-lr must be finite and not negative, got %g", fl.adapterLR)
	case fl.accum < 1:
		return usagef(cmd, "--accum must be at least 1, got %d", fl.accum)
	case fl.stopAfter < 0:
		return usagef(cmd, "--stop-after must not be negative, got %d", fl.stopAfter)
	case fl.rank > 0 && fl.rankFrac > 0:
		return usagef(cmd, "--rank %d and --rank-frac %g: give one of them", fl.rank, fl.rankFrac)
	case fl.evalEvery > 0 && fl.val == "":
		return usagef(cmd, "--eval-every %d needs --val (the data to evaluate)", fl.evalEvery)
	}
	if _, _, err := parseAdapterStart(fl.adapterStart); err != nil {
		return usagef(cmd, "%v", err)
	}
	return nil
}

// parseAdapterStart reads --adapter-start: an integer is a step (0:
// never, returned as -1), anything else a fraction of the run in (0, 1)
// (a fraction of 1 would be after the last step: never; 0 says that).
func parseAdapterStart(s string) (step int, frac float64, err error) {
	if s == "" {
		return 0, 0, nil
	}
	if n, err := strconv.Atoi(s); err == nil {
		if n < 0 {
			return 0, 0, fmt.Errorf("--adapter-start %q: a step must not be negative", s)
		}
		if n == 0 {
			return -1, 0, nil
		}
		return n, 0, nil
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || !(f > 0 && f < 1) {
		return 0, 0, fmt.Errorf("--adapter-start %q: want a fraction in (0, 1) of --steps or a step number (0: never)", s)
	}
	return 0, f, nil
}

// trainOptions maps the flags to train.Options. When resuming, only the
// flags given are set: the rest come from the checkpoint.
func trainOptions(changed func(name string) bool, fl trainFlags, resume bool) train.Options {
	set := func(name string) bool { return !resume || changed(name) }
	o := train.Options{TotalSteps: fl.steps, Threads: fl.threads}
	if set("lr") {
		o.LR = fl.lr
	}
	if set("warmup") {
		o.WarmupSteps = fl.warmup
	}
	if set("schedule") {
		o.Schedule = fl.schedule
	}
	if set("warmup") && resume && fl.warmup == 0 {
		o.WarmupSteps = -1 // none, not the checkpoint's
	}
	if set("clip") {
		o.Clip = fl.clip
		if resume && o.Clip == 0 {
			o.Clip = -1 // none, not the checkpoint's
		}
	}
	if set("weight-decay") {
		o.WeightDecay = fl.weightDecay
		if o.WeightDecay == 0 {
			o.WeightDecay = -1
		}
	}
	if set("mask-refresh") {
		o.MaskRefresh = fl.maskRefresh
		if o.MaskRefresh == 0 {
			o.MaskRefresh = -1
		}
	}
	if set("seed") {
		o.Seed, o.SeedGiven = fl.seed, true
	}
	if set("rank") || set("rank-frac") {
		o.Rank, o.RankFrac = fl.rank, fl.rankFrac
		if resume && o.Rank == 0 && o.RankFrac == 0 {
			o.Rank = -1 // no adapters, not the checkpoint's
		}
	}
	if set("adapter-lr") {
		o.AdapterLR = fl.adapterLR
		if o.AdapterLR == 0 {
			o.AdapterLR = train.AdapterLROff // the schedule's, even when resuming a checkpoint that had one
		}
	}
	if set("adapter-scale") {
		o.AdapterScale = fl.adapterScale
	}
	if set("adapter-start") {
		o.AdapterStart, o.AdapterStartFrac, _ = parseAdapterStart(fl.adapterStart)
	}
	if set("accum") {
		o.Accum = fl.accum
	}
	if set("batch") {
		o.Batch = fl.batch
	}
	if set("seq") {
		o.Seq = fl.seq
	}
	return o
}

// trainRecord is one line of the JSONL log.
type trainRecord struct {
	Type       string   `json:"type"` // "step", "eval" or "memory"
	Step       int      `json:"step"`
	Loss       *float64 `json:"loss,omitempty"` // step and eval records; the memory record has none
	PPL        float64  `json:"ppl,omitempty"`
	LR         float64  `json:"lr,omitempty"`
	GradNorm   float64  `json:"grad_norm,omitempty"`
	Tokens     int64    `json:"tokens,omitempty"`
	TokensPerS float64  `json:"tokens_per_s,omitempty"`
	Epoch      *uint64  `json:"epoch,omitempty"` // step records only, epoch 0 too
	ElapsedS   float64  `json:"elapsed_s"`
	// The "memory" record (one, after the last step): the trainer's
	// memory (train.Memory) and the process's peak RSS, in bytes.
	StateBytes      int64 `json:"state_bytes,omitempty"`
	ValuesBytes     int64 `json:"values_bytes,omitempty"`
	GradsBytes      int64 `json:"grads_bytes,omitempty"`
	MomentsBytes    int64 `json:"moments_bytes,omitempty"`
	NMMetaBytes     int64 `json:"nm_meta_bytes,omitempty"`
	KernelBytes     int64 `json:"kernel_bytes,omitempty"`
	ActivationBytes int64 `json:"activation_bytes,omitempty"`
	PeakRSSBytes    int64 `json:"peak_rss_bytes,omitempty"`
}

// hasNM reports whether the trainer has an N:M weight.
func hasNM(tr *train.Trainer) bool {
	for _, p := range tr.Params() {
		if p.NM != nil {
			return true
		}
	}
	return false
}

// memoryRecord reports the trainer's memory and the peak RSS.
func memoryRecord(tr *train.Trainer, elapsed float64) trainRecord {
	m := tr.Memory()
	return trainRecord{Type: "memory", Step: tr.StepCount(), ElapsedS: elapsed,
		StateBytes: m.State(), ValuesBytes: m.Values, GradsBytes: m.Grads, MomentsBytes: m.Moments, NMMetaBytes: m.NMMeta,
		KernelBytes: m.Kernels, ActivationBytes: m.Activations, PeakRSSBytes: rusage.PeakRSS()}
}

func runTrain(cmd *cobra.Command, model string, fl trainFlags) (err error) {
	if err := checkTrainFlags(cmd, fl); err != nil {
		return err
	}
	// Before training, not when the first checkpoint is due. MODEL may be
	// --out (the run then replaces it; so may --resume).
	if err := outfile.CheckContainer("--out", fl.out, false, fl.data, fl.val); err != nil {
		return err
	}
	// The log is appended to: it must not be any of the run's other files.
	if fl.log != "" {
		for _, o := range []struct{ name, path string }{
			{"--out", fl.out}, {"MODEL", model}, {"--resume", fl.resume}, {"--data", fl.data}, {"--val", fl.val},
		} {
			if o.path != "" && outfile.SameFile(fl.log, o.path) {
				return usagef(cmd, "--log %s is %s: the log would be written into it", fl.log, o.name)
			}
		}
	}
	stderr := cmd.ErrOrStderr()
	// The trainer's heap is mostly long-lived float slices, and a step
	// still leaves about 25 MB of garbage at the bench model's size (ops'
	// prepared dense panels and scratch that the collector takes from the
	// pools), so the default GOGC=100, which lets the heap reach twice the
	// live size, puts the peak RSS far above the training state. A quarter
	// costs little collection work (the slices hold no pointers to scan).
	// GOGC in the environment still wins.
	if _, set := os.LookupEnv("GOGC"); !set {
		defer debug.SetGCPercent(debug.SetGCPercent(trainGCPercent))
	}
	o := trainOptions(cmd.Flags().Changed, fl, fl.resume != "")
	var gpu *cuda.Backend
	switch {
	case fl.device == "" || fl.device == "cpu":
	case isGPU(fl.device):
		if gpu, err = newGPU(fl.device, cuda.Options{Search: true, Profile: fl.gpuProfile}); err != nil {
			return err
		}
		defer gpu.Close()
		o.Backend = gpu
		mode := "float32"
		if fl.device == "cuda" {
			mode = "bf16 mixed precision"
		}
		fmt.Fprintf(stderr, "device %s (%s)\n", gpu.Device().Info, mode)
	}
	if fl.resume != "" && cmd.Flags().Changed("seed") {
		fmt.Fprintf(stderr, "note: with --resume the data order continues the checkpoint's; --seed %d only draws adapters added from now on\n", fl.seed)
	}
	var tr *train.Trainer
	if fl.resume != "" {
		tr, err = train.Resume(fl.resume, o)
	} else {
		tr, err = train.New(model, o)
	}
	if err != nil {
		return err
	}
	defer tr.Close()
	if (o.Rank > 0 || o.RankFrac > 0) && !hasNM(tr) {
		return usagef(cmd, "--rank/--rank-frac: the model has no N:M weights for adapters to join (adapters go on SLoPe linears only)")
	}
	if at, ok := tr.AdapterStartStep(); ok && !tr.AdaptersActive() && at >= fl.steps {
		// Not an error: the checkpoint records the plan, and a resumed run
		// with more --steps trains them.
		if at == fl.steps {
			fmt.Fprintf(stderr, "slope train: adapters join at step %d, this run's last: the checkpoint holds them untrained\n", at)
		} else {
			fmt.Fprintf(stderr, "slope train: adapters join at step %d, after this run's last step (%d): this run adds none\n", at, fl.steps)
		}
	}
	if o.Backend != nil && !tr.OnDevice() {
		return fmt.Errorf("--device %s: the model has an op without a device backward pass", fl.device)
	}
	if fl.device == "cuda" {
		lt, all, err := gpu.SparseLtForms()
		if err != nil {
			return err
		}
		switch {
		case all == 0:
		case lt == all:
			fmt.Fprintf(stderr, "2:4 weights with their products on cuSPARSELt: all %d\n", all)
		default:
			fmt.Fprintf(stderr, "2:4 weights with their products on cuSPARSELt: %d of %d (the others run expanded: cuSPARSELt not loaded, %s=0, or a shape or layout it refused)\n", lt, all, cuda.BF16SparseLtEnv)
		}
	}
	tr.SetNote("slope " + strings.Join(os.Args[1:], " "))
	tk, err := tr.Tokenizer()
	if err != nil {
		return err
	}
	seed := tr.Options().Seed
	if fl.resume != "" {
		// The data shape continues from the checkpoint unless given; a
		// checkpoint written before it was recorded keeps the flags.
		if ro := tr.Options(); ro.Batch > 0 && ro.Seq > 0 {
			fl.batch, fl.seq = ro.Batch, ro.Seq
		}
	}
	// --accum against the batch in effect (with --resume, the
	// checkpoint's unless given).
	if a := tr.Options().Accum; a > fl.batch {
		return usagef(cmd, "--accum %d: at most the batch of %d sequences", a, fl.batch)
	}
	if mp := tr.MaxPositions(); mp > 0 && fl.seq > mp {
		return usagef(cmd, "--seq %d: the model reads --seq tokens of each window (the window's last token is only a target), more than its %d positions; use --seq %d or less", fl.seq, mp, mp)
	}
	data, err := train.LoadData(fl.data, train.DataOptions{Seq: fl.seq, Seed: seed, Tokenizer: tk, BOS: tr.BOS(), Vocab: tr.Vocab()})
	if err != nil {
		return err
	}
	// A batch takes distinct windows: with fewer, a step would see some
	// of them twice.
	if data.Windows() < fl.batch {
		return fmt.Errorf("--data %s: %d windows of %d tokens, fewer than one batch of %d", fl.data, data.Windows(), fl.seq+1, fl.batch)
	}
	if p := tr.DataPosition(); fl.resume != "" && p != nil && p.GetSha256() != "" {
		if train.SeqChanged(p, fl.seq) {
			fmt.Fprintf(stderr, "slope train: the checkpoint's data position counts windows of --seq %d; with --seq %d it starts epoch %d of the data instead\n",
				p.GetSeq(), fl.seq, p.GetEpoch()+1)
		}
		if err := data.Seek(p); err != nil {
			return err
		}
	}
	var val *train.Data
	if fl.val != "" {
		if val, err = train.LoadData(fl.val, train.DataOptions{Seq: fl.seq, Tokenizer: tk, BOS: tr.BOS(), Vocab: tr.Vocab(), Sequential: true}); err != nil {
			return fmt.Errorf("--val: %w", err)
		}
		// Before training, not at the first evaluation (the end, without
		// --eval-every).
		if val.Windows() < fl.batch {
			return fmt.Errorf("--val %s: %d windows of %d tokens, fewer than one batch of %d", fl.val, val.Windows(), fl.seq+1, fl.batch)
		}
	}
	var logw io.Writer = io.Discard
	if fl.log != "" {
		mode := os.O_CREATE | os.O_WRONLY | os.O_TRUNC
		if fl.resume != "" {
			mode = os.O_CREATE | os.O_WRONLY | os.O_APPEND
		}
		lf, err := os.OpenFile(fl.log, mode, 0o644)
		if err != nil {
			return err
		}
		defer func() {
			if cerr := lf.Close(); err == nil {
				err = cerr
			}
		}()
		logw = lf
	}
	// A run killed while writing --out left its partial checkpoint under a
	// temporary name beside it; this run writes --out now.
	if err := outfile.RemoveStale("--out", fl.out, stderr); err != nil {
		return err
	}
	enc := json.NewEncoder(logw)
	prog := newTrainProgress(stderr, tr.StepCount(), fl.steps)
	defer prog.finish()
	start := time.Now()
	var tokens int64 // this run's
	// The log counts tokens from step 0 (the trainer keeps the count, and
	// checkpoints record it); a checkpoint written before they did has its
	// steps counted at the batch and seq in effect.
	if _, ok := tr.Tokens(); !ok {
		tr.SetTokens(int64(tr.StepCount()) * int64(fl.batch*fl.seq))
	}
	// stepTime sums the Step calls alone; firstTime is the first step's
	// (it warms the buffers up; every step has batch x seq tokens).
	var stepTime, firstTime float64
	var steps int
	profiled := 0 // steps in the GPU profile (since its reset)
	save := func() error {
		tr.SetDataPosition(data.Position())
		return tr.Save(fl.out)
	}
	evaluate := func() error {
		if val == nil {
			return nil
		}
		n := val.Windows() / fl.batch
		switch {
		case fl.evalBatches > 0:
			n = min(n, fl.evalBatches)
		case val.Windows()%fl.batch != 0:
			n++ // all of --val: the last batch is partial
		}
		// Every window has the same tokens, so the loss is the batches'
		// mean weighted by their windows (Eval runs each batch in the
		// --accum micro-batches).
		var sum float64
		windows := 0
		for b := range n {
			ids := make([][]int32, min(fl.batch, val.Windows()-b*fl.batch))
			for i := range ids {
				ids[i] = val.Window(b*fl.batch + i)
			}
			l, err := tr.Eval(ids)
			if err != nil {
				return err
			}
			sum += l * float64(len(ids))
			windows += len(ids)
		}
		loss := sum / float64(windows)
		if math.IsNaN(loss) || math.IsInf(loss, 0) { // JSON has no NaN: say so, not "unsupported value"
			return fmt.Errorf("eval at step %d: validation loss is %g", tr.StepCount(), loss)
		}
		prog.line(fmt.Sprintf("eval step %d: loss %.4f ppl %.2f (%d batches)", tr.StepCount(), loss, math.Exp(loss), n))
		rec := trainRecord{Type: "eval", Step: tr.StepCount(), Loss: &loss, ElapsedS: time.Since(start).Seconds()}
		if ppl := math.Exp(loss); !math.IsInf(ppl, 0) && !math.IsNaN(ppl) {
			rec.PPL = ppl // JSON has no Inf: a loss above ~709.78 records no ppl
		}
		return enc.Encode(rec)
	}
	if tr.StepCount() >= fl.steps {
		return fmt.Errorf("checkpoint is at step %d, --steps %d leaves nothing to do", tr.StepCount(), fl.steps)
	}
	last := fl.steps
	if fl.stopAfter > 0 {
		last = min(last, fl.stopAfter)
	}
	// Ctrl-C or SIGTERM end the run after the step in progress, with a
	// checkpoint. The first one restores the default handling at once, so
	// a second one stops the process (a checkpoint being written is then
	// left incomplete under a temporary name, and --out keeps its previous
	// contents).
	ctx, caught, stopSignals := interrupt.Watch(cmd.Context(), cmd.ErrOrStderr())
	defer stopSignals()
	for tr.StepCount() < last && ctx.Err() == nil {
		s := tr.StepCount()
		lr := tr.LR(s)
		ids := data.Next(fl.batch)
		t0 := time.Now()
		loss, err := tr.Step(ids)
		if err != nil {
			return err
		}
		dt := time.Since(t0).Seconds()
		n := int64(fl.batch * fl.seq)
		tokens += n
		total, _ := tr.Tokens()
		stepTime += dt
		profiled++
		if steps++; steps == 1 {
			firstTime = dt
			// The profile leaves out the first step's one-time work when
			// other steps follow.
			if tr.StepCount() < last {
				if err := gpu.ProfileReset(); err != nil { // nil gpu: none
					return err
				}
				profiled = 0
			}
		}
		rate := float64(n) / max(dt, 1e-9)
		rec := trainRecord{Type: "step", Step: s + 1, Loss: &loss, LR: lr, GradNorm: tr.GradNorm(), Tokens: total,
			TokensPerS: rate, Epoch: new(data.Epoch()), ElapsedS: time.Since(start).Seconds()}
		if err := enc.Encode(rec); err != nil {
			return err
		}
		if fl.every > 0 && (s+1)%fl.every == 0 {
			prog.step(s+1, loss, lr, rate)
		}
		if fl.evalEvery > 0 && (s+1)%fl.evalEvery == 0 && s+1 < fl.steps {
			if err := evaluate(); err != nil {
				return err
			}
		}
		if fl.saveEvery > 0 && (s+1)%fl.saveEvery == 0 && s+1 < last {
			if err := save(); err != nil {
				return err
			}
		}
	}
	// The GPU profile of the steps after the first (reset above), before
	// the checkpoint and the final evaluation add their work (evaluations
	// and saves during the run, --eval-every and --save-every, are in it).
	var profile bytes.Buffer
	if gpu.Profiling() && profiled > 0 {
		if err := gpu.ProfileReport(&profile, profiled, "step"); err != nil {
			return err
		}
	}
	// The checkpoint first: a failed final evaluation must not lose the
	// run.
	stopSignals()                    // the final save and evaluation stop at Ctrl-C as usual
	stopped := tr.StepCount() < last // by a signal
	if stopped {
		prog.line(fmt.Sprintf("interrupted after step %d: writing %s", tr.StepCount(), fl.out))
	}
	if err := save(); err != nil {
		return err
	}
	if stopped {
		return interrupt.Wrap(fmt.Errorf("interrupted after step %d; %s holds the run (continue it with --resume %s)", tr.StepCount(), fl.out, fl.out), caught)
	}
	if tr.StepCount() == fl.steps {
		if err := evaluate(); err != nil {
			return fmt.Errorf("%w (the checkpoint %s was written)", err, fl.out)
		}
	}
	mem := memoryRecord(tr, time.Since(start).Seconds())
	if err := enc.Encode(mem); err != nil {
		return err
	}
	out := cmd.OutOrStdout()
	fmt.Fprintf(out, "trained to step %d (%d tokens in %.1fs); wrote %s\n", tr.StepCount(), tokens, time.Since(start).Seconds(), fl.out)
	if stepTime > 0 {
		fmt.Fprintf(out, "steps: %.1f tokens/s", float64(tokens)/stepTime)
		if steps > 1 {
			fmt.Fprintf(out, ", %.1f tokens/s after the first", float64(tokens-int64(fl.batch*fl.seq))/(stepTime-firstTime))
		}
		fmt.Fprintln(out)
	}
	mib := func(b int64) float64 { return float64(b) / (1 << 20) }
	if tr.OnDevice() {
		// The state lives on the GPU (the host keeps copies of the values
		// and moments); the activations and buffers are the GPU's too.
		var free, total uint64
		used := "unknown"
		if err := gpu.Do(func() (err error) { free, total, err = gpu.Device().MemInfo(); return err }); err != nil {
			used += fmt.Sprintf(" (%v)", err) // the run itself succeeded
		} else {
			used = fmt.Sprintf("%.0f of %.0f MiB (all processes)", mib(int64(total-free)), mib(int64(total)))
		}
		fmt.Fprintf(out, "memory: training state %.2f MiB on the GPU (values %.2f, gradients %.2f, AdamW moments %.2f, N:M metadata %.2f); GPU memory in use at the end %s; peak RSS %.1f MiB\n",
			mib(mem.StateBytes), mib(mem.ValuesBytes), mib(mem.GradsBytes), mib(mem.MomentsBytes), mib(mem.NMMetaBytes),
			used, mib(mem.PeakRSSBytes))
		_, err := out.Write(profile.Bytes())
		return err
	}
	fmt.Fprintf(out, "cpu: %s kernels\n", cpu.Kernels())
	fmt.Fprintf(out, "memory: training state %.2f MiB (values %.2f, gradients %.2f, AdamW moments %.2f, N:M metadata %.2f); kernel buffers %.2f MiB, activations %.2f MiB; peak RSS %.1f MiB\n",
		mib(mem.StateBytes), mib(mem.ValuesBytes), mib(mem.GradsBytes), mib(mem.MomentsBytes), mib(mem.NMMetaBytes),
		mib(mem.KernelBytes), mib(mem.ActivationBytes), mib(mem.PeakRSSBytes))
	return nil
}

// trainProgress shows training progress on stderr: a bar with the step,
// loss, tokens/s and ETA on a terminal, else a line per printed step.
// The bar counts this run's steps (a resumed run's ETA comes from its own
// rate, not from the steps before it), the description the absolute step.
type trainProgress struct {
	w           io.Writer
	done, total int
	bar         *progressbar.ProgressBar
}

func newTrainProgress(w io.Writer, done, total int) *trainProgress {
	p := &trainProgress{w: w, done: done, total: total}
	if isTerminal(w) {
		p.bar = progressbar.NewOptions(max(total-done, 0), progressbar.OptionSetWriter(w),
			progressbar.OptionSetWidth(30), progressbar.OptionSetPredictTime(true), progressbar.OptionClearOnFinish(),
			progressbar.OptionSetDescription(fmt.Sprintf("step %d/%d", done, total)))
	}
	return p
}

func (p *trainProgress) step(step int, loss, lr, rate float64) {
	if p.bar == nil {
		fmt.Fprintf(p.w, "step %d/%d loss %.4f lr %.3g tokens/s %.0f\n", step, p.total, loss, lr, rate)
		return
	}
	p.bar.Describe(fmt.Sprintf("step %d/%d loss %.4f lr %.3g %.0f tok/s", step, p.total, loss, lr, rate))
	_ = p.bar.Set(step - p.done)
}

// line prints a line (above the bar on a terminal).
func (p *trainProgress) line(s string) {
	if p.bar != nil {
		_ = p.bar.Clear()
	}
	fmt.Fprintln(p.w, s)
	if p.bar != nil {
		_ = p.bar.RenderBlank()
	}
}

func (p *trainProgress) finish() {
	if p.bar != nil {
		_ = p.bar.Finish()
	}
}
