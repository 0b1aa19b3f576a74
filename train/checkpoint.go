package train

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"os"
	"strconv"

	"google.golang.org/protobuf/proto"

	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/format/slopepb"
	"github.com/slopeml/slope/ops"
)

// Checkpoints (issue 6, deliverable 3). A checkpoint is a complete .slope
// container: the opened container's architecture, graph, opset imports,
// tokenizer and metadata; every Param as float32 master values (N:M
// weights with their current transpose masks); the AdamW moments as
// DENSE FLOAT32 tensors named in TrainingState.slots; and the step,
// hyper-parameters, RNG state and data position. It runs in the runtime
// like any container, and Resume continues training from it exactly.

// Moment tensor name suffixes.
const (
	Moment1Suffix = ".adam_m"
	Moment2Suffix = ".adam_v"
)

// OptimizerAdamW is TrainingState.optimizer of this trainer.
const OptimizerAdamW = "adamw"

// Hyper-parameter keys of TrainingState.hyperparameters.
const (
	hpLR              = "lr"
	hpBeta1           = "beta1"
	hpBeta2           = "beta2"
	hpEps             = "eps"
	hpWeightDecay     = "weight_decay"
	hpClip            = "clip"
	hpWarmup          = "warmup_steps"
	hpMaskRefresh     = "mask_refresh"
	hpAdapterRank     = "adapter_rank"
	hpAdapterRankFrac = "adapter_rank_frac"
	hpAdapterScale    = "adapter_scale"
	hpAccum           = "accum"
	hpBatch           = "batch"
	hpAdapterLR       = "adapter_lr"
	hpSeq             = "seq"
	extraSchedule     = "schedule"
	extraSeed         = "seed"
	extraTokens       = "tokens" // decimal: tokens trained since step 0
)

// SetDataPosition sets the data position the next Save records (nil:
// none).
func (t *Trainer) SetDataPosition(p *slopepb.DataPosition) { t.dataPos = p }

// DataPosition is the data position restored by Resume or last set.
func (t *Trainer) DataPosition() *slopepb.DataPosition { return t.dataPos }

// SetTokens sets the count of tokens trained on since step 0 (n < 0: not
// known), which Step then advances and Save records.
func (t *Trainer) SetTokens(n int64) { t.tokens = n }

// Tokens is the count of tokens trained on since step 0 (each step adds
// its predicted tokens: sequences x (length - 1)); ok is false when it is
// not known: a Trainer resumed from a checkpoint written before the count
// was recorded (SetTokens can then set an estimate). A new Trainer's
// count starts at 0.
func (t *Trainer) Tokens() (n int64, ok bool) { return t.tokens, t.tokens >= 0 }

// SetNote sets the provenance command that Save records (for instance
// the command line of a training run).
func (t *Trainer) SetNote(note string) { t.note = note }

// transposeMaskSuffix is the name under which ops' ParamStore looks for
// an N:M weight's transpose mask.
const transposeMaskSuffix = ".transpose_mask"

// Save writes a checkpoint to path. The write is atomic: on any error
// nothing is left under path (an earlier file there is untouched), and
// the error names path.
func (t *Trainer) Save(path string) (err error) {
	if err := t.SyncHost(); err != nil {
		return err
	}
	src := t.file.Manifest()
	w, err := format.Create(path, &format.WriterOptions{ExpectedTensors: len(src.Tensors) + 2*len(t.params)})
	if err != nil {
		return fmt.Errorf("train: save: %w", err)
	}
	defer func() {
		if err != nil {
			w.Abort()
			err = fmt.Errorf("train: save %s: %w", path, err)
		}
	}()
	written := map[string]bool{}
	skip := map[string]bool{} // stale tensors of the source: old moments
	for _, s := range src.GetTraining().GetSlots() {
		skip[s.Moment1], skip[s.Moment2] = true, true
	}
	// Transposes of each N:M weight in the source.
	transposes := map[string][]*slopepb.Tensor{}
	for _, d := range src.Tensors {
		if d.TransposeOf != "" {
			transposes[d.TransposeOf] = append(transposes[d.TransposeOf], d)
		}
	}
	for _, p := range t.params {
		if err := t.writeParam(w, p, transposes[p.Name], written); err != nil {
			return err
		}
	}
	// Everything else the source holds (tokenizer files, tensors that are
	// not trained) is copied as it is.
	for _, d := range src.Tensors {
		if written[d.Name] || skip[d.Name] {
			continue
		}
		if err := w.CopyTensor(t.file, d); err != nil {
			return err
		}
		written[d.Name] = true
	}
	ts := &slopepb.TrainingState{
		Step:       uint64(t.step),
		TotalSteps: uint64(t.o.TotalSteps),
		Optimizer:  OptimizerAdamW,
		Hyperparameters: map[string]float64{
			hpLR: t.o.LR, hpBeta1: t.o.Beta1, hpBeta2: t.o.Beta2, hpEps: t.o.Eps,
			hpWeightDecay: t.o.WeightDecay, hpClip: t.o.Clip,
			hpWarmup: float64(t.o.WarmupSteps), hpMaskRefresh: float64(t.o.MaskRefresh),
			hpAdapterRank: float64(t.o.Rank), hpAdapterRankFrac: t.o.RankFrac, hpAdapterScale: t.o.AdapterScale,
			hpAccum: float64(t.o.Accum),
		},
		RngState: binary.LittleEndian.AppendUint64(nil, t.o.Seed),
		Extra:    map[string]string{extraSchedule: t.o.Schedule, extraSeed: strconv.FormatUint(t.o.Seed, 10)},
	}
	if t.o.AdapterLR > 0 {
		ts.Hyperparameters[hpAdapterLR] = t.o.AdapterLR
	}
	if t.o.Batch > 0 && t.o.Seq > 0 {
		ts.Hyperparameters[hpBatch], ts.Hyperparameters[hpSeq] = float64(t.o.Batch), float64(t.o.Seq)
	}
	// The step at which this run (or the one it resumed) added adapters,
	// or the planned one; nothing for adapters that came with the model
	// (they train from step 0, and a resume must not re-date them).
	switch {
	case t.adapterAt >= 0:
		ts.AdapterStartStep = uint64(t.adapterAt)
	case !t.AdaptersActive():
		if s := t.o.adapterStep(); s >= 0 {
			ts.AdapterStartStep = uint64(s)
		}
	}
	if t.dataPos != nil {
		ts.Data = proto.Clone(t.dataPos).(*slopepb.DataPosition)
	}
	if t.tokens >= 0 {
		ts.Extra[extraTokens] = strconv.FormatInt(t.tokens, 10)
	}
	for k, p := range t.params {
		m1, m2 := p.Name+Moment1Suffix, p.Name+Moment2Suffix
		for _, mm := range []struct {
			name string
			data []float32
		}{{m1, t.m[k]}, {m2, t.v[k]}} {
			if err := w.WriteDense(mm.name, slopepb.DType_FLOAT32, []uint64{uint64(len(mm.data))}, mm.data); err != nil {
				return err
			}
		}
		ts.Slots = append(ts.Slots, &slopepb.OptimizerSlot{Parameter: p.Name, Moment1: m1, Moment2: m2})
	}
	m := w.Manifest()
	m.Architecture = cloneOf(src.Architecture)
	m.Graph = cloneOf(t.graph)
	for _, o := range src.OpsetImport {
		m.OpsetImport = append(m.OpsetImport, cloneOf(o))
	}
	m.Metadata = maps.Clone(src.Metadata)
	m.Tokenizer = cloneOf(src.Tokenizer)
	m.Training = ts
	prov := cloneOf(src.Provenance)
	if prov == nil {
		prov = &slopepb.Provenance{}
	}
	prov.Created = ""
	note := t.note
	if note == "" {
		note = "slope train"
	}
	prov.Command = fmt.Sprintf("%s (checkpoint at step %d of %s)", note, t.step, t.file.Path())
	if sf, err := t.sourceFile(); err == nil {
		prov.Sources = append(prov.Sources, sf)
	} else {
		prov.Command += fmt.Sprintf(" (source not recorded: %v)", err)
	}
	m.Provenance = prov
	return w.Close()
}

func cloneOf[T proto.Message](m T) T {
	var zero T
	if any(m) == any(zero) {
		return m
	}
	return proto.Clone(m).(T)
}

// writeParam writes one Param as float32 (N:M with its transpose mask,
// adapter factors as LOW_RANK, others DENSE).
func (t *Trainer) writeParam(w *format.Writer, p *ops.Param, trans []*slopepb.Tensor, written map[string]bool) error {
	if written[p.Name] {
		return nil
	}
	written[p.Name] = true
	shape := make([]uint64, len(p.Shape))
	for i, d := range p.Shape {
		shape[i] = uint64(d)
	}
	if nm := p.NM; nm != nil {
		idx, err := nm.IdxCopy()
		if err != nil {
			return fmt.Errorf("%q: %w", p.Name, err)
		}
		if err := w.WriteNM(p.Name, slopepb.DType_FLOAT32, nm.Pattern, nm.Rows, nm.Cols, p.Value, idx); err != nil {
			return err
		}
		mask := func(name string) error {
			if nm.TMask == nil {
				return fmt.Errorf("%q: no transpose mask to write as %q (rows %d not a multiple of %d)", p.Name, name, nm.Rows, nm.Pattern.M)
			}
			return w.WriteTransposeMaskEncoded(name, p.Name, nm.Pattern, nm.Rows, nm.Cols, nm.TMask)
		}
		wroteMask := false
		for _, d := range trans {
			written[d.Name] = true
			switch d.Encoding {
			case slopepb.Encoding_NM_TRANSPOSE_MASK:
				if err := mask(d.Name); err != nil {
					return err
				}
				wroteMask = wroteMask || d.Name == p.Name+transposeMaskSuffix
			case slopepb.Encoding_NM_TRANSPOSE_MATERIALIZED:
				keep, err := nm.TKeepCopy()
				if err != nil {
					return fmt.Errorf("transpose of %q: %w", p.Name, err)
				}
				tv, ti, err := format.MaterializeTranspose(nm.Pattern, nm.Rows, nm.Cols, p.Value, idx, keep)
				if err != nil {
					return fmt.Errorf("transpose of %q: %w", p.Name, err)
				}
				if err := w.WriteTransposeMaterialized(d.Name, p.Name, slopepb.DType_FLOAT32, nm.Pattern, nm.Rows, nm.Cols, tv, ti); err != nil {
					return err
				}
			}
		}
		if !wroteMask && nm.Rows%nm.Pattern.M == 0 {
			// The mask the trainer uses now (it may lag the magnitude
			// rule until the next refresh), so that resuming is exact.
			name := p.Name + transposeMaskSuffix
			if err := mask(name); err != nil {
				return err
			}
			written[name] = true
		}
		return nil
	}
	desc := &slopepb.Tensor{Name: p.Name, Dtype: slopepb.DType_FLOAT32, Shape: shape, Encoding: slopepb.Encoding_DENSE}
	if sd, err := t.weights.Lookup(p.Name); err == nil && sd.Encoding == slopepb.Encoding_LOW_RANK {
		desc.Encoding = slopepb.Encoding_LOW_RANK
		desc.Adapter = cloneOf(sd.Adapter)
	}
	if desc.Encoding == slopepb.Encoding_DENSE {
		return w.WriteDense(p.Name, slopepb.DType_FLOAT32, shape, p.Value)
	}
	raw := make([]byte, 4*len(p.Value))
	if err := format.EncodeFloats(slopepb.DType_FLOAT32, p.Value, raw); err != nil {
		return err
	}
	return w.WriteTensor(desc, raw)
}

// sourceFile describes the opened container for the provenance (its
// SHA-256 computed once).
func (t *Trainer) sourceFile() (*slopepb.SourceFile, error) {
	if t.srcFile == nil {
		path := t.file.Path()
		// Hashed at the first Save, from the path: it must still be the
		// file that was opened.
		if t.srcStat != nil {
			st, err := os.Stat(path)
			if err != nil {
				return nil, err
			}
			if !os.SameFile(st, t.srcStat) || st.Size() != t.srcStat.Size() || !st.ModTime().Equal(t.srcStat.ModTime()) {
				return nil, fmt.Errorf("%s changed since it was opened", path)
			}
		}
		sum, size, err := fileSHA256(path)
		if err != nil {
			return nil, err
		}
		t.srcFile = &slopepb.SourceFile{Path: path, Size: uint64(size), Sha256: sum, Format: "slope"}
	}
	return cloneOf(t.srcFile), nil
}

func fileSHA256(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// ErrNoTrainingState is returned by Resume for a container that is not a
// checkpoint.
var ErrNoTrainingState = errors.New("train: container has no training state (not a checkpoint)")

// Resume opens a checkpoint written by Save and restores the Params (the
// stored values), the AdamW moments, the step count, the data position
// and, for every zero field of o, the checkpoint's hyper-parameters,
// schedule, total steps and seed. Threads is never restored: pass the
// same Threads for a bit-identical continuation.
func Resume(path string, o Options) (*Trainer, error) {
	f, err := format.Open(path, nil)
	if err != nil {
		return nil, err
	}
	t, err := resume(f, o)
	if err == nil {
		err = f.DropResident() // the Params and moments hold their own copies now
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

// resume frees the device state of the trainer it made when it fails.
func resume(f *format.File, o Options) (t *Trainer, err error) {
	ts := f.Manifest().GetTraining()
	if ts == nil {
		return nil, ErrNoTrainingState
	}
	if ts.Optimizer != OptimizerAdamW {
		return nil, fmt.Errorf("train: optimizer %q, want %q", ts.Optimizer, OptimizerAdamW)
	}
	o, err = mergeOptions(ts, o)
	if err != nil {
		return nil, fmt.Errorf("train: %s: %w", f.Path(), err)
	}
	if o, err = o.withDefaults(); err != nil {
		return nil, err
	}
	if t, err = newTrainer(f, o); err != nil {
		return nil, err
	}
	made := t
	defer func() {
		if err != nil {
			err = errors.Join(err, made.closeDevice())
			t = nil
		}
	}()
	idx := map[string]int{}
	for k, p := range t.params {
		idx[p.Name] = k
	}
	restored := 0
	seen := make([]bool, len(t.params))
	for _, s := range ts.Slots {
		k, ok := idx[s.Parameter]
		if !ok {
			return nil, fmt.Errorf("train: optimizer slot of %q, which is not a trained Param", s.Parameter)
		}
		if seen[k] {
			return nil, fmt.Errorf("train: two optimizer slots for %q", s.Parameter)
		}
		seen[k] = true
		for _, mm := range []struct {
			name string
			dst  []float32
		}{{s.Moment1, t.m[k]}, {s.Moment2, t.v[k]}} {
			v, err := f.Float32s(mm.name)
			if err != nil {
				return nil, err
			}
			if len(v) != len(mm.dst) {
				return nil, fmt.Errorf("train: moment %q has %d values, %q stores %d", mm.name, len(v), s.Parameter, len(mm.dst))
			}
			copy(mm.dst, v)
		}
		restored++
	}
	if restored != len(t.params) {
		return nil, fmt.Errorf("train: %d optimizer slots for %d Params", restored, len(t.params))
	}
	t.step = int(ts.Step)
	if ts.Data != nil {
		t.dataPos = proto.Clone(ts.Data).(*slopepb.DataPosition)
	}
	t.tokens = -1
	if v, ok := ts.Extra[extraTokens]; ok {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return nil, fmt.Errorf("train: training state: tokens %q is not a count", v)
		}
		t.tokens = n
	}
	if t.AdaptersActive() && ts.AdapterStartStep > 0 && int(ts.AdapterStartStep) <= t.step {
		// Added by the run that wrote the checkpoint.
		t.adapterAt = int(ts.AdapterStartStep)
		for k, p := range t.params {
			if t.adapterNames[p.Name] {
				t.born[k] = t.adapterAt
			}
		}
	}
	if err := t.maybeAddAdapters(); err != nil {
		return nil, err
	}
	return t, nil
}

// mergeOptions fills o's unset fields from the training state (zero,
// except the sentinels the options document: Clip < 0, WarmupSteps < 0,
// Rank < 0, WeightDecay < 0, MaskRefresh < 0, AdapterLROff and SeedGiven
// say "set, to none or 0"). It refuses a hyper-parameter that is not a
// finite number, or an integer one out of range.
func mergeOptions(ts *slopepb.TrainingState, o Options) (Options, error) {
	hp := ts.Hyperparameters
	for k, v := range hp {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return o, fmt.Errorf("checkpoint hyper-parameter %s is %g", k, v)
		}
	}
	f := func(dst *float64, key string) {
		if v, ok := hp[key]; ok && *dst == 0 {
			*dst = v
		}
	}
	var err error
	i := func(dst *int, key string) {
		v, ok := hp[key]
		if !ok || *dst != 0 || err != nil {
			return
		}
		if v != math.Trunc(v) || v < math.MinInt32 || v > math.MaxInt32 {
			err = fmt.Errorf("checkpoint hyper-parameter %s is %g: want an integer", key, v)
			return
		}
		*dst = int(v)
	}
	f(&o.LR, hpLR)
	f(&o.Beta1, hpBeta1)
	f(&o.Beta2, hpBeta2)
	f(&o.Eps, hpEps)
	f(&o.Clip, hpClip)
	if v, ok := hp[hpWeightDecay]; ok && o.WeightDecay == 0 {
		o.WeightDecay = v
		if v == 0 {
			o.WeightDecay = -1 // none
		}
	}
	i(&o.WarmupSteps, hpWarmup)
	i(&o.MaskRefresh, hpMaskRefresh)
	if o.TotalSteps == 0 {
		o.TotalSteps = int(ts.TotalSteps)
	}
	rankGiven := o.Rank != 0 || o.RankFrac != 0
	if _, ok := hp[hpAdapterRank]; ok && !rankGiven {
		i(&o.Rank, hpAdapterRank)
		o.RankFrac = hp[hpAdapterRankFrac]
	}
	f(&o.AdapterScale, hpAdapterScale)
	f(&o.AdapterLR, hpAdapterLR)
	i(&o.Accum, hpAccum)
	i(&o.Batch, hpBatch)
	i(&o.Seq, hpSeq)
	if err != nil {
		return o, err
	}
	if o.AdapterStart == 0 && o.AdapterStartFrac == 0 && (o.Rank > 0 || o.RankFrac > 0) {
		switch {
		case ts.AdapterStartStep > 0:
			o.AdapterStart = int(ts.AdapterStartStep)
		case !rankGiven:
			o.AdapterStart = -1 // none was planned (or they came with the model)
		}
		// A rank given now, on a checkpoint without planned adapters,
		// starts at the default fraction of the run.
	}
	if o.Schedule == "" {
		o.Schedule = ts.Extra[extraSchedule]
	}
	if o.Seed == 0 && !o.SeedGiven && len(ts.RngState) == 8 {
		o.Seed = binary.LittleEndian.Uint64(ts.RngState)
	}
	return o, nil
}
