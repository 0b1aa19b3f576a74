package convert

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"math"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/format/slopepb"
	"github.com/slopeml/slope/testmodels"
	"github.com/slopeml/slope/tokenizer"
)

// Version is the converter version recorded in provenance when the binary
// carries no module version.
var Version = "0.1.0-dev"

// ToolName is the tool recorded in provenance.
const ToolName = "slope-convert"

// MaxAspectRatio: linear weights whose max(rows, cols)/min(rows, cols)
// exceeds it are left dense unless Options.PruneWide is set.
const MaxAspectRatio = 5

// EmbeddedPrefix starts a source name that OpenSource resolves to a model
// embedded in the binary (testmodels.Embedded).
const EmbeddedPrefix = "embedded:"

// DefaultLabel names the embedded default model (what In "" converts) in
// errors and provenance; TinyLabel names the embedded reference fixture,
// hf-opt-tiny-a, the tiny random OPT the tests compare against
// transformers with (usable as In too).
const (
	DefaultLabel = EmbeddedPrefix + testmodels.DefaultName
	TinyLabel    = EmbeddedPrefix + testmodels.TinyName
)

// Options configure DenseToSlope. Validation errors name the
// slope-convert flag of the option ("--nm-layers: ...").
type Options struct {
	// In is a checkpoint OpenSource accepts (a Hugging Face model
	// directory in any layout, an ONNX export, or an embedded model by
	// name); "" converts the embedded default model
	// (testmodels.DefaultName, DefaultLabel).
	In string
	// Out is the .slope file to write (required).
	Out string
	// Source, when set, is read instead of opening In (In then only
	// labels it, e.g. RandomSource for Init).
	Source Source
	// NM is the pattern for the decoder-layer linear weights, "N:M"
	// ("" means "2:4"), or "dense" to prune nothing.
	NM string
	// NMLayers overrides NM for ranges of decoder layers (ParseNMLayers),
	// e.g. "0-11=2:4,12-23=2:8" or "0=dense"; the ranges must lie inside
	// the model's layers.
	NMLayers string
	// PruneWide prunes linear weights whose aspect ratio exceeds
	// MaxAspectRatio too (they are left dense by default, as in SLoPe).
	PruneWide bool
	// DType of the stored float tensors: "keep" (or "") keeps each
	// tensor's source dtype; "fp32", "fp16", "bf16" convert.
	DType string
	// Compress stores tensors as zstd frames.
	Compress bool
	// Transpose is how each pruned weight's double-pruned transpose is
	// stored: TransposeMask ("" too), its mask only (one bit per kept
	// value; readers build W_dpᵀ from it), or TransposeMaterialize, the
	// mask and also W_dpᵀ itself as an NM_TRANSPOSE_MATERIALIZED tensor
	// named TransposeName(weight), for readers that want it ready.
	Transpose string

	// Rank gives every pruned weight a low-rank adapter of that rank;
	// RankFrac (exclusive with Rank) gives rank round(RankFrac *
	// hidden_size) instead. 0 for both: no adapters. The rank must be at
	// least 1 and at most min(in, out) of every pruned weight.
	Rank     int
	RankFrac float64
	// AdapterInit is AdapterInitSlope ("" too), AdapterInitSVD or
	// AdapterInitZero.
	AdapterInit string
	// MergeAdapters stores adapters in SLoPe's inference layout: Lᵀ is
	// appended to W as Rank extra rows and pruned N:M with it, and R is
	// stored alone (adapter.merged); the graph node gets merged_rank.
	// out + rank must then be a multiple of M. With svd, pruning L loses
	// part of the approximation; R is refit by least squares to the
	// pruned L.
	MergeAdapters bool
	// AdapterScale is the adapters' output scale (0 means 1).
	AdapterScale float32
	// Seed makes every random choice (slope init, svd sketches)
	// deterministic: the same options and source give the same file, bar
	// the creation time (see Created).
	Seed uint64
	// Created is the provenance creation time (RFC 3339); "" is the time
	// given by $SOURCE_DATE_EPOCH (seconds since 1970) when set, else now.
	Created string

	// Method prunes the weights: MethodMagnitude ("" too), MethodWanda or
	// MethodSparseGPT. The calibrated methods need Calib and prune the
	// decoder layers sequentially (see DenseToSlope).
	Method string
	// Calib is the calibration file of the calibrated methods: text,
	// encoded by the model's tokenizer (tokenizer.json, or vocab.json and
	// merges.txt, beside the source), or token ids (see CalibFormat).
	Calib string
	// CalibFormat is "auto" ("" too: by extension, .bin and .u16 are
	// little-endian uint16 ids, .u32 uint32 ids, anything else text),
	// "text", "u16" or "u32".
	CalibFormat string
	// CalibSamples (0: DefaultCalibSamples) windows of CalibSeqLen (0:
	// DefaultCalibSeqLen, at most the model's positions) tokens are drawn
	// from the calibration stream with Seed (LoadCalibration).
	CalibSamples, CalibSeqLen int
	// CalibChunk is the number of samples a calibration forward takes at
	// once (0: about 8192 tokens' worth). It bounds the activations'
	// memory and does not change the result.
	CalibChunk int

	// Progress, when set, is called after each source weight is written.
	Progress func(done, total int, name string)
	// LayerProgress, when set, is called after each decoder layer is
	// pruned by a calibrated method (before its tensors are written).
	LayerProgress func(LayerReport)
	// Command is recorded in provenance; "" records a description of the
	// options.
	Command string
}

// Result summarises a conversion.
type Result struct {
	Out string `json:"out"`
	// Tensors in the file (weights, transpose masks, materialized
	// transposes, adapter factors).
	Tensors int `json:"tensors"`
	// Transpose is TransposeMaterialize when every pruned weight's W_dpᵀ
	// is stored too (Options.Transpose), "" for masks only.
	Transpose string `json:"transpose,omitempty"`
	// Pruned is the number of weights stored N:M.
	Pruned int `json:"pruned"`
	// Adapted is the number of weights with an adapter, of rank Rank.
	Adapted     int     `json:"adapted,omitempty"`
	Rank        int     `json:"rank,omitempty"`
	AdapterInit string  `json:"adapter_init,omitempty"`
	Merged      bool    `json:"merged_adapters,omitempty"`
	Scale       float32 `json:"adapter_scale,omitempty"`
	Seed        uint64  `json:"seed"`
	// Method is the pruning method; with a calibrated one, Calib,
	// CalibSamples and CalibSeqLen describe the calibration data and
	// Layers the time spent on each decoder layer.
	Method       string        `json:"method"`
	Calib        string        `json:"calib,omitempty"`
	CalibSamples int           `json:"calib_samples,omitempty"`
	CalibSeqLen  int           `json:"calib_seqlen,omitempty"`
	Layers       []LayerReport `json:"layers,omitempty"`
	// SourceBytes is the size of the source files (bytes in).
	SourceBytes int64 `json:"source_bytes"`
	// DenseBytes is what the weights take stored dense in the output
	// dtypes; StoredBytes the bytes the file's tensors take (values,
	// indices, masks, materialized transposes, adapters, after
	// compression); FileBytes the file
	// size (bytes out).
	DenseBytes  int64 `json:"dense_bytes"`
	StoredBytes int64 `json:"stored_bytes"`
	FileBytes   int64 `json:"file_bytes"`
	// Ratio is FileBytes / SourceBytes.
	Ratio float64 `json:"ratio"`
	// Seconds the conversion took.
	Seconds float64 `json:"seconds"`
	// TransposeExtraZeros is the fraction of the pruned weights' entries
	// (rows*cols, over all of them) that the double pruning of the
	// transposes removes on top of the N:M pruning.
	TransposeExtraZeros float64 `json:"transpose_extra_zeros"`
	// Weights has one entry per source tensor, in file order: what was
	// done to it and, for pruned weights, the errors.
	Weights []WeightReport `json:"weights"`
	// Warnings from reading the source (e.g. ignored tensors).
	Warnings []string `json:"warnings,omitempty"`
}

// WeightReport is the choice made for one source tensor.
type WeightReport struct {
	Name  string `json:"name"`
	Shape []int  `json:"shape"`
	// Linear: a decoder-layer linear weight (a pruning candidate).
	Linear bool `json:"linear,omitempty"`
	// Choice is the pattern ("2:4") or "dense: <reason>".
	Choice string `json:"choice"`
	// Rank of its adapter (0: none).
	Rank int `json:"rank,omitempty"`
	// RelErrPruned is ‖W − W_s‖_F/‖W‖_F and RelErrAdapted
	// ‖W − (W_s + scale·(L·R)ᵀ)‖_F/‖W‖_F, with the values as stored
	// (in the output dtype; for merged adapters L as pruned); set for
	// pruned weights (RelErrAdapted with an adapter).
	RelErrPruned  float64 `json:"rel_err_pruned,omitempty"`
	RelErrAdapted float64 `json:"rel_err_adapted,omitempty"`
	// CalibRelErr is ‖X(W − W_s)ᵀ‖_F/‖XWᵀ‖_F on the weight's calibration
	// inputs X (calibrated methods; W_s as stored, without adapters), and
	// PruneSeconds the time its statistics and pruning took.
	CalibRelErr  float64 `json:"calib_rel_err,omitempty"`
	PruneSeconds float64 `json:"prune_seconds,omitempty"`
}

// ParseNMOption parses an N:M option value: "" is 2:4, "dense" means no
// pruning (dense true).
func ParseNMOption(s string) (p format.NM, dense bool, err error) {
	switch s {
	case "":
		return format.NM{N: 2, M: 4}, false, nil
	case "dense":
		return format.NM{}, true, nil
	}
	p, err = format.ParseNM(s)
	if err != nil {
		return format.NM{}, false, err
	}
	return p, false, nil
}

// ParseDTypeOption parses a dtype option value: "" or "keep" (keep true),
// "fp32", "fp16", "bf16" (or float32, float16, bfloat16).
func ParseDTypeOption(s string) (dt slopepb.DType, keep bool, err error) {
	switch strings.ToLower(s) {
	case "", "keep":
		return slopepb.DType_DTYPE_UNSPECIFIED, true, nil
	case "fp32", "float32", "f32":
		return slopepb.DType_FLOAT32, false, nil
	case "fp16", "float16", "f16", "half":
		return slopepb.DType_FLOAT16, false, nil
	case "bf16", "bfloat16":
		return slopepb.DType_BFLOAT16, false, nil
	}
	return 0, false, fmt.Errorf("dtype %q: want keep, fp32, fp16 or bf16", s)
}

// embeddedModel resolves in when it names an embedded model: "" (the
// default) or EmbeddedPrefix+NAME. ok is false for anything else; err is
// set for an embedded name that does not exist.
func embeddedModel(in string) (fsys fs.FS, label string, ok bool, err error) {
	name, found := strings.CutPrefix(in, EmbeddedPrefix)
	switch {
	case in == "":
		name = testmodels.DefaultName
	case !found:
		return nil, "", false, nil
	}
	f, ok := testmodels.Embedded(name)
	if !ok {
		return nil, "", false, fmt.Errorf("%s: no such embedded model (there are %s and %s)", in, DefaultLabel, TinyLabel)
	}
	return f, EmbeddedPrefix + name, true, nil
}

// modelFiles returns the folder of files beside the checkpoint in (an
// embedded model's root, the directory, or an .onnx file's directory),
// where its tokenizer files are looked for, and a name for it in errors.
// ok is false where there is none: an unknown embedded name, or a Source
// the caller gave (given) with no name ("": Init's random weights).
func modelFiles(in string, given bool) (fsys fs.FS, where string, ok bool) {
	if given && in == "" {
		return nil, "", false
	}
	if emb, label, isEmb, err := embeddedModel(in); isEmb || err != nil {
		return emb, label, err == nil
	}
	dir := in
	if st, err := os.Stat(in); err == nil && !st.IsDir() {
		dir = filepath.Dir(in)
	}
	return os.DirFS(dir), dir, true
}

// OpenSource opens the checkpoint at in:
//
//   - "" is the embedded default model (testmodels.DefaultName), and
//     "embedded:NAME" the embedded model NAME (DefaultLabel, TinyLabel);
//   - a directory holding Hugging Face weights (model.safetensors,
//     model.safetensors.index.json, pytorch_model.bin or
//     pytorch_model.bin.index.json) is a Hugging Face model directory
//     (OpenHFDir);
//   - an .onnx file, or a directory with no Hugging Face weights that holds
//     model.onnx or a single *.onnx file, is an ONNX model (OpenONNX).
//
// Anything else is an error saying what is accepted.
func OpenSource(in string) (Source, error) {
	if fsys, label, ok, err := embeddedModel(in); ok || err != nil {
		if err != nil {
			return nil, err
		}
		return OpenHF(fsys, label)
	}
	st, err := os.Stat(in)
	if err != nil {
		return nil, err
	}
	if st.IsDir() {
		onnx, err := onnxInDir(in)
		if err != nil {
			return nil, err
		}
		if onnx != "" {
			return OpenONNX(onnx)
		}
		return OpenHFDir(in)
	}
	switch ext := strings.ToLower(filepath.Ext(in)); ext {
	case ".onnx":
		return OpenONNX(in)
	case ".safetensors", ".bin", ".pt", ".pth", ".json":
		return nil, fmt.Errorf("%s: a %s file alone is not a model: give the Hugging Face directory that holds it with %s", in, ext, hfConfig)
	}
	return nil, fmt.Errorf("%s: not a model: give a Hugging Face model directory (%s with %s, %s, %s or %s) or an .onnx file",
		in, hfConfig, hfSafetensors, hfSafetensorsIndex, hfPytorchBin, hfPytorchBinIndex)
}

// onnxInDir returns the ONNX model of directory dir, or "" when dir holds
// Hugging Face weights (which take precedence) or no .onnx file. Without
// Hugging Face weights, model.onnx is the model, else the only *.onnx file;
// several of those are an error.
func onnxInDir(dir string) (string, error) {
	for _, l := range hfLayouts {
		if _, err := os.Stat(filepath.Join(dir, l.file())); err == nil {
			return "", nil
		}
	}
	if st, err := os.Stat(filepath.Join(dir, "model.onnx")); err == nil && !st.IsDir() {
		return filepath.Join(dir, "model.onnx"), nil
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return "", err
	}
	var found []string
	for _, e := range ents {
		if !e.IsDir() && strings.EqualFold(filepath.Ext(e.Name()), ".onnx") {
			found = append(found, e.Name())
		}
	}
	switch len(found) {
	case 0:
		return "", nil
	case 1:
		return filepath.Join(dir, found[0]), nil
	}
	return "", fmt.Errorf("%s: no Hugging Face weights and %d .onnx files (%s): give the .onnx file to convert",
		dir, len(found), strings.Join(found, ", "))
}

// pruneRule is what DenseToSlope asks of one weight.
type pruneRule struct {
	p         format.NM
	dense     bool
	override  *LayerNM // the --nm-layers item that chose p, if any
	pruneWide bool
	method    string // "" is magnitude
}

// pruneDecision tells whether a weight is pruned N:M, and why (not).
func pruneDecision(spec WeightSpec, known bool, t *Tensor, r pruneRule) (bool, string) {
	by := ""
	if r.override != nil {
		by = fmt.Sprintf(" (--nm-layers %d-%d=%s)", r.override.First, r.override.Last, r.override.Pattern())
	}
	switch {
	case !known || !spec.Linear:
		return false, "not a decoder-layer linear weight"
	case r.dense:
		return false, "pruning disabled (dense)" + by
	case len(t.Shape) != 2 || t.Shape[0] <= 0 || t.Shape[1] <= 0:
		return false, fmt.Sprintf("shape %v is not a matrix", t.Shape)
	}
	rows, cols := t.Shape[0], t.Shape[1]
	if lo, hi := min(rows, cols), max(rows, cols); hi > MaxAspectRatio*lo && !r.pruneWide {
		return false, fmt.Sprintf("aspect ratio %.3g (%d/%d) exceeds %d (--prune-wide prunes it)", float64(hi)/float64(lo), hi, lo, MaxAspectRatio)
	}
	p := r.p
	if cols%p.M != 0 {
		return false, fmt.Sprintf("in_features %d is not a multiple of %d", cols, p.M)
	}
	if rows%p.M != 0 {
		return false, fmt.Sprintf("out_features %d is not a multiple of %d (double-pruned transpose)", rows, p.M)
	}
	method := r.method
	if method == "" {
		method = MethodMagnitude
	}
	return true, fmt.Sprintf("decoder-layer linear weight, %s by %s%s; transpose double-pruned by magnitude", p, method, by)
}

// adapterPlan is the validated adapter part of Options.
type adapterPlan struct {
	rank   int
	init   string
	merged bool
	scale  float32
	seed   uint64
}

func planAdapters(o Options, hidden int64) (adapterPlan, error) {
	a := adapterPlan{merged: o.MergeAdapters, scale: o.AdapterScale, seed: o.Seed}
	switch {
	case o.Rank != 0 && o.RankFrac != 0:
		return a, errors.New("--rank and --rank-frac are mutually exclusive")
	case o.Rank < 0:
		return a, fmt.Errorf("--rank %d: the rank must be at least 1", o.Rank)
	case o.Rank > 0:
		a.rank = o.Rank
	case o.RankFrac != 0:
		if !(o.RankFrac > 0 && o.RankFrac <= 1) {
			return a, fmt.Errorf("--rank-frac %g: want a fraction of the hidden size in (0, 1]", o.RankFrac)
		}
		a.rank = int(math.Round(o.RankFrac * float64(hidden)))
		if a.rank < 1 {
			return a, fmt.Errorf("--rank-frac %g of hidden size %d gives rank %d: the rank must be at least 1", o.RankFrac, hidden, a.rank)
		}
	}
	if a.rank == 0 {
		if o.AdapterInit != "" || o.MergeAdapters {
			return a, errors.New("--adapter-init and --merge-adapters need --rank or --rank-frac")
		}
		return a, nil
	}
	var err error
	if a.init, err = ParseAdapterInit(o.AdapterInit); err != nil {
		return a, err
	}
	if a.scale == 0 {
		a.scale = 1
	}
	if math.IsNaN(float64(a.scale)) || math.IsInf(float64(a.scale), 0) {
		return a, fmt.Errorf("--adapter-scale %g: want a finite non-zero number", a.scale)
	}
	return a, nil
}

// rankFlag names the option that chose the rank, for errors.
func rankFlag(o Options, rank int) string {
	if o.RankFrac != 0 {
		return fmt.Sprintf("--rank-frac %g (rank %d)", o.RankFrac, rank)
	}
	return fmt.Sprintf("--rank %d", rank)
}

// createdTime is the provenance time: o.Created, else $SOURCE_DATE_EPOCH,
// else "" (the writer's now).
func createdTime(o Options) (string, error) {
	if o.Created != "" {
		if _, err := time.Parse(time.RFC3339, o.Created); err != nil {
			return "", fmt.Errorf("created time %q: %w", o.Created, err)
		}
		return o.Created, nil
	}
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		sec, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return "", fmt.Errorf("SOURCE_DATE_EPOCH %q: not a number of seconds", s)
		}
		return time.Unix(sec, 0).UTC().Format(time.RFC3339), nil
	}
	return "", nil
}

// DenseToSlope converts a dense checkpoint into a .slope file: the
// decoder layers' q, k, v, out_proj, fc1 and fc2 weights are pruned N:M by
// Method (magnitude: MagnitudeMask; wanda and sparsegpt layer by layer on
// calibration data, see the package doc; per layer with NMLayers) and
// stored NM with
// their double-pruned transpose masks (format.DoublePruneMagnitude),
// unless their shape rules it out (aspect ratio above MaxAspectRatio
// without PruneWide, rows or cols not a multiple of M; the reason is
// recorded in provenance and in the Result); every other tensor is stored
// dense. With a rank, every pruned weight gets a low-rank adapter
// (AdapterInit, MergeAdapters). One source tensor is held in memory at a
// time. On error or cancellation nothing is left at o.Out.
func DenseToSlope(ctx context.Context, o Options) (*Result, error) {
	start := time.Now()
	if o.Out == "" {
		return nil, errors.New("no output path (Options.Out)")
	}
	p, dense, err := ParseNMOption(o.NM)
	if err != nil {
		return nil, fmt.Errorf("--nm %q: %w", o.NM, err)
	}
	overrides, err := ParseNMLayers(o.NMLayers)
	if err != nil {
		return nil, err
	}
	outDT, keepDT, err := ParseDTypeOption(o.DType)
	if err != nil {
		return nil, err
	}
	materialize, err := ParseTransposeOption(o.Transpose)
	if err != nil {
		return nil, err
	}
	created, err := createdTime(o)
	if err != nil {
		return nil, err
	}
	if _, err := planAdapters(o, 1); err != nil && o.RankFrac == 0 {
		return nil, err // fail before opening the source when we can
	}
	method, err := ParseMethod(o.Method)
	if err != nil {
		return nil, err
	}
	cs, err := planCalib(o, method)
	if err != nil {
		return nil, err
	}
	src := o.Source
	if src == nil {
		if src, err = OpenSource(o.In); err != nil {
			return nil, fmt.Errorf("--in: %w", err)
		}
	}
	defer src.Close()
	tok, err := readSourceTokenizer(o)
	if err != nil {
		return nil, err
	}
	cfg := src.Config()
	if err := CheckNMLayers(overrides, int(cfg.NumHiddenLayers)); err != nil {
		return nil, err
	}
	ad, err := planAdapters(o, cfg.HiddenSize)
	if err != nil {
		return nil, err
	}
	specs := map[string]WeightSpec{}
	for _, s := range OPTWeights(cfg) {
		specs[s.Name] = s
	}
	ruleFor := func(name string) (pruneRule, WeightSpec, bool) {
		spec, known := specs[name]
		rule := pruneRule{p: p, dense: dense, pruneWide: o.PruneWide, method: method}
		if li, ok := layerOf(name); ok && known && spec.Linear {
			rule.p, rule.dense, rule.override = layerPattern(overrides, li, p, dense)
		}
		return rule, spec, known
	}
	var calib *calibrator
	var calibProv *slopepb.Calibration
	if cs != nil {
		if calib, calibProv, err = startCalibration(src, o, cs, tok, method, ruleFor, outDT, keepDT); err != nil {
			return nil, err
		}
	}
	names := src.Names()
	w, err := format.Create(o.Out, &format.WriterOptions{Compress: o.Compress, ZstdLevel: zstd.SpeedDefault, ExpectedTensors: 4 * len(names)})
	if err != nil {
		return nil, err
	}
	closed := false
	defer func() {
		if !closed {
			w.Abort()
		}
	}()

	res := &Result{Out: o.Out, Warnings: src.Warnings(), Seed: o.Seed, Method: method}
	if materialize {
		res.Transpose = TransposeMaterialize
	}
	if cs != nil {
		res.Calib, res.CalibSamples, res.CalibSeqLen = cs.Path, cs.Samples, cs.SeqLen
	}
	if ad.rank > 0 {
		res.Rank, res.AdapterInit, res.Merged, res.Scale = ad.rank, ad.init, ad.merged, ad.scale
	}
	// prov.Sources is filled at the end: sources may still be hashing
	// their files in the background.
	prov := &slopepb.Provenance{Tool: ToolName, ToolVersion: toolVersion(), Command: o.Command, Created: created, Calibration: calibProv}
	if prov.Command == "" {
		prov.Command = fmt.Sprintf("convert.DenseToSlope(in=%q, nm=%q, nm_layers=%q, prune_wide=%v, dtype=%q, compress=%v, rank=%d, adapter_init=%q, merge_adapters=%v, adapter_scale=%g, seed=%d, method=%q",
			o.In, o.NM, o.NMLayers, o.PruneWide, o.DType, o.Compress, ad.rank, ad.init, ad.merged, ad.scale, o.Seed, method)
		if cs != nil {
			prov.Command += fmt.Sprintf(", calib=%q, calib_format=%q, calib_samples=%d, calib_seqlen=%d", cs.Path, cs.Format, cs.Samples, cs.SeqLen)
		}
		if materialize {
			prov.Command += fmt.Sprintf(", transpose=%q", TransposeMaterialize)
		}
		prov.Command += ")"
	}
	sparse := map[string]format.NM{}
	adapters := map[string]GraphAdapter{}
	var removed, prunedEntries int64
	// Weights stored as 16-bit floats and kept in their dtype are read
	// raw: stored dense as they are, or pruned 2:4 by magnitude by the
	// fused kernel (half24.go). Without calibration or adapters, the next
	// weight is read (and pruned) while the current one is written.
	plan := func(t *Tensor) (raw, fused bool) {
		if _, half := halfFloatOf(t.DType); !rawHalf || !half || !keepDT && outDT != t.DType {
			return false, false
		}
		rule, spec, known := ruleFor(t.Name)
		if prune, _ := pruneDecision(spec, known, t, rule); !prune {
			return true, false
		}
		fused = fastMagnitude && rule.p == format.NM{N: 2, M: 4} && method == MethodMagnitude && calib == nil && ad.rank == 0
		return fused, fused
	}
	loader := newWeightLoader(src, plan)
	next := func(i int) (*loaded, error) { return loader.load(names[i]) }
	if loader.raws != nil && calib == nil && ad.rank == 0 {
		prefetched, stop := loader.prefetch(ctx, names)
		defer stop()
		next = func(int) (*loaded, error) { return prefetched() }
	}
	for i, name := range names {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("convert to %s: %w", o.Out, err)
		}
		ld, err := next(i)
		if err != nil {
			return nil, err
		}
		t := ld.t
		dt := outDT
		if keepDT {
			dt = t.DType
		}
		es, err := format.ElemSize(dt)
		if err != nil {
			return nil, fmt.Errorf("tensor %q: %w", name, err)
		}
		res.DenseBytes += int64(t.Numel()) * int64(es)
		rule, spec, known := ruleFor(name)
		prune, reason := pruneDecision(spec, known, t, rule)
		rep := WeightReport{Name: name, Shape: t.Shape, Linear: known && spec.Linear}
		tp := &slopepb.TensorProvenance{Name: name, SourceName: t.SourceName, Method: "none", Pattern: "dense",
			Reason: reason, SourceDtype: t.DType.String()}
		if prune {
			wp := rule.p
			pattern := wp.String()
			rank := 0
			if ad.rank > 0 {
				rank = ad.rank
				out, in := t.Shape[0], t.Shape[1]
				if rank > min(in, out) {
					return nil, fmt.Errorf("%s: weight %s %v: the rank must be at most min(in, out) = %d", rankFlag(o, rank), name, t.Shape, min(in, out))
				}
				if ad.merged && (out+rank)%wp.M != 0 {
					return nil, fmt.Errorf("--merge-adapters with %s: weight %s has out + rank = %d rows, not a multiple of %d (its transpose mask needs whole groups of rows): choose a rank that makes it one", rankFlag(o, rank), name, out+rank, wp.M)
				}
			}
			var pre *calibResult
			if calib != nil {
				li, _ := layerOf(name)
				if err := calib.ensure(ctx, li); err != nil {
					return nil, err
				}
				if pre = calib.take(name); pre == nil || pre.p != wp {
					return nil, fmt.Errorf("tensor %q: not pruned %s by the calibration pass", name, wp)
				}
				rep.CalibRelErr, rep.PruneSeconds = pre.relErr, pre.seconds
				tp.Reason += fmt.Sprintf("; calibrated on %s (%s, %d samples of %d tokens, seed %d): ‖X(W − W_s)ᵀ‖/‖XWᵀ‖ = %.4g on the calibration inputs",
					cs.Path, cs.Format, cs.Samples, cs.SeqLen, cs.Seed, pre.relErr)
			}
			var pw prunedWeight
			if ld.half != nil {
				pw, err = writeHalf24(w, t, dt, wp, ld.half, materialize)
			} else {
				pw, err = writePruned(w, t, dt, wp, ad, rank, pre, method, o.Seed)
			}
			if err == nil && materialize {
				err = writeMaterialized(w, t, dt, wp, t.Shape[1], pw)
			}
			pw.values, pw.idx, pw.tkeep = nil, nil, nil
			if err != nil {
				return nil, err
			}
			removed += pw.dropped
			prunedEntries += int64(t.Numel())
			sparse[name] = wp
			res.Pruned++
			rep.Choice, rep.RelErrPruned, rep.RelErrAdapted, rep.Rank = pattern, pw.errPruned, pw.errAdapted, rank
			tp.Method, tp.Pattern = method, pattern
			maskReason := "double-pruned transpose of " + name + ": " + pattern + " by magnitude along the output dim"
			if rank > 0 {
				res.Adapted++
				ga := GraphAdapter{R: AdapterRName(name)}
				desc := fmt.Sprintf("rank %d adapter, %s init, scale %g", rank, ad.init, ad.scale)
				if ad.merged {
					ga.MergedRank = rank
					tp.Reason += fmt.Sprintf("; merged %s: rows %d-%d are Lᵀ, pruned %s with W", desc, t.Shape[0], t.Shape[0]+rank-1, pattern)
					maskReason += " (the Lᵀ rows included)"
				} else {
					ga.L = AdapterLName(name)
					tp.Reason += "; " + desc
				}
				adapters[name] = ga
			}
			prov.Tensors = append(prov.Tensors, tp, &slopepb.TensorProvenance{
				Name: TransposeMaskName(name), SourceName: t.SourceName, Method: "magnitude", Pattern: pattern,
				Reason: maskReason, SourceDtype: t.DType.String()})
			if materialize {
				prov.Tensors = append(prov.Tensors, &slopepb.TensorProvenance{
					Name: TransposeName(name), SourceName: t.SourceName, Method: "magnitude", Pattern: pattern,
					Reason: "W_dpᵀ materialized (--transpose materialize): " + maskReason, SourceDtype: t.DType.String()})
			}
			if rank > 0 {
				factors := []string{AdapterLName(name), AdapterRName(name)}
				if ad.merged {
					factors = factors[1:]
				}
				for _, f := range factors {
					prov.Tensors = append(prov.Tensors, &slopepb.TensorProvenance{Name: f, SourceName: t.SourceName, Method: ad.init, Pattern: "dense",
						Reason: fmt.Sprintf("rank %d adapter of %s: %s", rank, name, initDescription(ad.init, ad.merged)), SourceDtype: t.DType.String()})
				}
			}
		} else {
			rep.Choice = "dense: " + reason
			shape := make([]uint64, len(t.Shape))
			for j, d := range t.Shape {
				shape[j] = uint64(d)
			}
			if ld.raw != nil {
				err = w.WriteDenseEncoded(name, dt, shape, ld.raw)
			} else {
				err = w.WriteDense(name, dt, shape, t.Data)
			}
			if err != nil {
				return nil, fmt.Errorf("tensor %q: %w", name, err)
			}
			prov.Tensors = append(prov.Tensors, tp)
		}
		loader.release(ld)
		res.Weights = append(res.Weights, rep)
		if o.Progress != nil {
			o.Progress(i+1, len(names), name)
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("convert to %s: %w", o.Out, err)
	}
	if calib != nil {
		res.Layers = calib.Reports
	}
	if ad.rank > 0 && res.Adapted == 0 {
		res.Warnings = append(res.Warnings, "adapters requested but no weight was pruned: none written")
	}
	graph, err := BuildOPTGraphAdapters(cfg, sparse, adapters)
	if err != nil {
		return nil, err
	}
	m := w.Manifest()
	m.Architecture = &slopepb.Architecture{Name: "opt", Config: &slopepb.Architecture_Opt{Opt: cfg}}
	m.Graph = graph
	m.OpsetImport = OpsetImports()
	prov.Sources = src.Files()
	for _, f := range prov.Sources {
		res.SourceBytes += int64(f.Size)
	}
	m.Provenance = prov
	label := o.In
	if label == "" {
		label = DefaultLabel
	}
	m.Metadata = map[string]string{"source": label}
	if warning, err := copyTokenizer(w, tok); err != nil {
		return nil, err
	} else if warning != "" {
		res.Warnings = append(res.Warnings, warning)
	}
	for _, t := range m.Tensors {
		res.StoredBytes += int64(t.Length)
	}
	res.Tensors = len(m.Tensors)
	closed = true
	if err := w.Close(); err != nil {
		return nil, err
	}
	if st, err := os.Stat(o.Out); err == nil {
		res.FileBytes = st.Size()
	}
	if res.SourceBytes > 0 {
		res.Ratio = float64(res.FileBytes) / float64(res.SourceBytes)
	}
	if prunedEntries > 0 {
		res.TransposeExtraZeros = float64(removed) / float64(prunedEntries)
	}
	res.Seconds = time.Since(start).Seconds()
	return res, nil
}

// initDescription says how an adapter was initialised, for provenance.
func initDescription(init string, merged bool) string {
	var s string
	switch init {
	case AdapterInitSlope:
		s = fmt.Sprintf("slope init (L ~ N(0, 1/in)·%g, R = 0)", SlopeInitGain)
	case AdapterInitZero:
		s = "zero init (L = 0, R = 0)"
	case AdapterInitSVD:
		s = "svd init (scale·L·R = best rank-r approximation of (W − W_s)ᵀ, randomized SVD)"
		if merged {
			s += "; L pruned with W, R refit by least squares"
		}
	}
	if merged {
		s += "; merged layout (Lᵀ stored as the weight's last rows)"
	}
	return s
}

// prunedWeight is what writePruned reports.
type prunedWeight struct {
	dropped               int64 // kept values the transpose mask drops
	errPruned, errAdapted float64
	// The stored weight (rows = out, or out + rank when merged): its
	// kept values (as stored), indices and transpose mask, for the
	// materialized transpose (writeHalf24 decodes them only when asked;
	// the caller drops them once the weight is written).
	rows   int
	values []float32
	idx    []uint8
	tkeep  []bool
}

// Transpose storage options (Options.Transpose).
const (
	TransposeMask        = "mask"
	TransposeMaterialize = "materialize"
)

// ParseTransposeOption checks Options.Transpose ("" is TransposeMask)
// and reports whether W_dpᵀ is materialized.
func ParseTransposeOption(s string) (materialize bool, err error) {
	switch s {
	case "", TransposeMask:
		return false, nil
	case TransposeMaterialize:
		return true, nil
	}
	return false, fmt.Errorf("--transpose %q: want %s or %s", s, TransposeMask, TransposeMaterialize)
}

// TransposeName is the name of the materialized double-pruned transpose
// W_dpᵀ of an N:M weight.
func TransposeName(weight string) string { return weight + ".transpose" }

// writeMaterialized writes W_dpᵀ [cols, rows] of the stored N:M weight
// (pw's values, indices and transpose mask) as an
// NM_TRANSPOSE_MATERIALIZED tensor in W's dtype.
func writeMaterialized(w *format.Writer, t *Tensor, dt slopepb.DType, p format.NM, cols int, pw prunedWeight) error {
	tv, ti, err := format.MaterializeTranspose(p, pw.rows, cols, pw.values, pw.idx, pw.tkeep)
	if err != nil {
		return fmt.Errorf("tensor %q (%s): materialized transpose: %w", t.Name, t.SourceName, err)
	}
	if err := w.WriteTransposeMaterialized(TransposeName(t.Name), t.Name, dt, p, pw.rows, cols, tv, ti); err != nil {
		return fmt.Errorf("tensor %q (%s): %w", t.Name, t.SourceName, err)
	}
	return nil
}

// writePruned writes t pruned N:M — by magnitude, or as pre (a
// calibrated method's W_s and mask) when it is not nil — and its
// double-pruned transpose mask, and, with rank > 0, its adapter (plain, or
// merged: Lᵀ appended to W as rank rows pruned with it by magnitude).
func writePruned(w *format.Writer, t *Tensor, dt slopepb.DType, p format.NM, ad adapterPlan, rank int, pre *calibResult, method string, seed uint64) (prunedWeight, error) {
	var res prunedWeight
	out, in := t.Shape[0], t.Shape[1]
	fail := func(err error) (prunedWeight, error) {
		return res, fmt.Errorf("tensor %q (%s): %w", t.Name, t.SourceName, err)
	}
	maskOf := func() ([]bool, error) {
		if method == MethodRandom {
			return RandomMask(p, out, in, weightRNG(seed, "mask:"+t.Name))
		}
		return MagnitudeMask(p, out, in, t.Data)
	}
	if pre == nil && rank == 0 && fastMagnitude {
		keep, err := maskOf()
		if err != nil {
			return fail(err)
		}
		return writeMagnitude(w, t, dt, p, keep)
	}
	var keep []bool
	var ws []float32
	if pre != nil {
		if len(pre.ws) != len(t.Data) || len(pre.keep) != len(t.Data) {
			return fail(fmt.Errorf("calibrated pruning has %d values for %d", len(pre.ws), len(t.Data)))
		}
		keep, ws = pre.keep, pre.ws
	} else {
		var err error
		if keep, err = maskOf(); err != nil {
			return fail(err)
		}
		ws = ApplyMask(t.Data, keep)
	}
	// Values read from a checkpoint of the stored dtype are already exact
	// in it; only converted or updated (SparseGPT) values need rounding.
	if pre != nil || t.DType != dt {
		roundToDType(dt, ws)
	}
	var err error
	var l, r []float32
	if rank > 0 {
		if l, r, err = adapterFactors(ad.init, t.Data, ws, out, in, rank, ad.scale, weightRNG(ad.seed, t.Name)); err != nil {
			return res, err
		}
		roundToDType(dt, l)
		roundToDType(dt, r)
	}
	// The stored values are W_s's (SparseGPT updates the kept ones).
	rows, data := out, ws
	if rank > 0 && ad.merged {
		// [W_s; Lᵀ] as one matrix: W's rows keep their mask, Lᵀ's rows
		// lose M-N of every M values by magnitude.
		rows = out + rank
		data = make([]float32, rows*in)
		copy(data, ws)
		for k := 0; k < rank; k++ {
			for i := 0; i < in; i++ {
				data[(out+k)*in+i] = l[i*rank+k]
			}
		}
		lkeep, err := MagnitudeMask(p, rank, in, data[out*in:])
		if err != nil {
			return fail(err)
		}
		keep = append(append(make([]bool, 0, rows*in), keep...), lkeep...)
		for k := 0; k < rank; k++ {
			for i := 0; i < in; i++ {
				if !keep[(out+k)*in+i] {
					l[i*rank+k] = 0
				}
			}
		}
		if ad.init == AdapterInitSVD {
			if r2, ok := refitR(t.Data, ws, out, in, rank, l, ad.scale); ok {
				r = r2
				roundToDType(dt, r)
			}
		}
	}
	values, idx, err := format.SplitNM(p, rows, in, data, keep)
	if err != nil {
		return fail(err)
	}
	if err := w.WriteNM(t.Name, dt, p, rows, in, values, idx); err != nil {
		return fail(err)
	}
	tkeep, err := format.DoublePruneMagnitude(p, rows, in, values, idx)
	if err != nil {
		return fail(fmt.Errorf("double pruning: %w", err))
	}
	if err := w.WriteTransposeMask(TransposeMaskName(t.Name), t.Name, p, rows, in, tkeep); err != nil {
		return fail(err)
	}
	res.rows, res.values, res.idx, res.tkeep = rows, values, idx, tkeep
	for _, k := range tkeep {
		if !k {
			res.dropped++
		}
	}
	switch {
	case rank > 0 && ad.merged:
		desc := &slopepb.Tensor{Name: AdapterRName(t.Name), Dtype: dt, Shape: []uint64{uint64(rank), uint64(out)}, Encoding: slopepb.Encoding_LOW_RANK,
			Adapter: &slopepb.AdapterParams{Weight: t.Name, Factor: slopepb.AdapterParams_R, Scale: ad.scale, Merged: true}}
		es, _ := format.ElemSize(dt)
		raw := make([]byte, len(r)*es)
		if err := format.EncodeFloats(dt, r, raw); err != nil {
			return fail(err)
		}
		if err := w.WriteTensor(desc, raw); err != nil {
			return fail(err)
		}
	case rank > 0:
		if err := w.WriteAdapter(t.Name, AdapterLName(t.Name), AdapterRName(t.Name), dt, in, out, rank, ad.scale, l, r); err != nil {
			return fail(err)
		}
	}
	res.errPruned, res.errAdapted = relErrors(t.Data, ws, out, in, rank, l, r, ad.scale)
	return res, nil
}

// fastMagnitude routes magnitude pruning without adapters through
// writeMagnitude (tests turn it off to compare with the general path).
var fastMagnitude = true

// rawHalf routes weights stored, and kept, as 16-bit floats through the
// raw paths: stored dense as read, or pruned 2:4 by magnitude by the fused
// kernel (tests turn it off to compare with the general path).
var rawHalf = true

// writeMagnitude is writePruned for a mask computed from W alone (magnitude
// or random) without adapters, the common case, without materialising
// W_s: the kept values go from W straight to the N:M encoding. Files and reported errors are the same as
// the general path's.
func writeMagnitude(w *format.Writer, t *Tensor, dt slopepb.DType, p format.NM, keep []bool) (prunedWeight, error) {
	var res prunedWeight
	out, in := t.Shape[0], t.Shape[1]
	fail := func(err error) (prunedWeight, error) {
		return res, fmt.Errorf("tensor %q (%s): %w", t.Name, t.SourceName, err)
	}
	values, idx, err := format.SplitNM(p, out, in, t.Data, keep)
	if err != nil {
		return fail(err)
	}
	if t.DType != dt {
		roundToDType(dt, values) // as stored: the transpose mask ranks these
	}
	if err := w.WriteNM(t.Name, dt, p, out, in, values, idx); err != nil {
		return fail(err)
	}
	tkeep, err := format.DoublePruneMagnitude(p, out, in, values, idx)
	if err != nil {
		return fail(fmt.Errorf("double pruning: %w", err))
	}
	if err := w.WriteTransposeMask(TransposeMaskName(t.Name), t.Name, p, out, in, tkeep); err != nil {
		return fail(err)
	}
	res.rows, res.values, res.idx, res.tkeep = out, values, idx, tkeep
	for _, k := range tkeep {
		if !k {
			res.dropped++
		}
	}
	// ‖W − W_s‖/‖W‖ with W_s's kept entries as stored, per row with
	// rowSquares as relErrors does (each row of W_s scattered from the
	// kept values and their in-group indices).
	kept := in * p.N / p.M
	rowW, rowP := make([]float64, out), make([]float64, out)
	if t.DType == dt {
		// The kept entries are stored as they are: W − W_s is W where
		// dropped, 0 where kept.
		parallel(out, 16, func(lo, hi int) {
			for o := lo; o < hi; o++ {
				rowW[o], rowP[o] = rowSquaresKept(t.Data[o*in:(o+1)*in], keep[o*in:(o+1)*in])
			}
		})
	} else {
		parallel(out, 16, func(lo, hi int) {
			ws := make([]float32, in) // zero between rows: the kept positions are reset
			cols := make([]int32, kept)
			for o := lo; o < hi; o++ {
				vs, ix := values[o*kept:(o+1)*kept], idx[o*kept:(o+1)*kept]
				if p.N == 2 && p.M == 4 {
					for j := range cols {
						cols[j] = int32(j>>1<<2) + int32(ix[j]&3)
					}
				} else {
					for j := range cols {
						cols[j] = int32((j/p.N)*p.M) + int32(ix[j])
					}
				}
				for j, c := range cols {
					ws[c] = vs[j]
				}
				rowW[o], rowP[o] = rowSquares(t.Data[o*in:(o+1)*in], ws)
				for _, c := range cols {
					ws[c] = 0
				}
			}
		})
	}
	res.errPruned = relErrOfRows(rowW, rowP)
	return res, nil
}

// relErrOfRows is ‖W − W_s‖/‖W‖ from per-row sums of squares of W (rowW)
// and of its dropped entries (rowP), summed in row order (0 for W = 0).
func relErrOfRows(rowW, rowP []float64) float64 {
	var nw, np float64
	for r := range rowW {
		nw += rowW[r]
		np += rowP[r]
	}
	if nw > 0 {
		return math.Sqrt(np / nw)
	}
	return 0
}

// roundToDType rounds x in place to the values dtype dt stores.
func roundToDType(dt slopepb.DType, x []float32) {
	switch dt {
	case slopepb.DType_FLOAT16:
		for i, v := range x {
			x[i] = format.Float16ToFloat32(format.Float32ToFloat16(v))
		}
	case slopepb.DType_BFLOAT16:
		for i, v := range x {
			x[i] = format.BFloat16ToFloat32(format.Float32ToBFloat16(v))
		}
	}
}

func toolVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return Version
}

// sourceTokenizer holds the tokenizer files found beside the source (its
// directory, an .onnx file's directory, or an embedded model's root; see
// modelFiles), read once: the calibration encodes its text with them and
// the container carries them. files and load are nil when the source has
// none; files is nil and load fails when its set is incomplete
// (vocab.json without merges.txt).
type sourceTokenizer struct {
	files map[string][]byte
	where string
	load  func() (*tokenizer.BPE, error) // parses files once
}

// readSourceTokenizer reads the tokenizer files beside the source of o. A
// source without them is fine: the model then runs on token ids.
func readSourceTokenizer(o Options) (*sourceTokenizer, error) {
	st := &sourceTokenizer{}
	fsys, where, ok := modelFiles(o.In, o.Source != nil)
	if !ok {
		return st, nil
	}
	files, err := tokenizer.ReadFS(fsys, where)
	if errors.Is(err, fs.ErrNotExist) {
		for _, name := range []string{"tokenizer.json", "vocab.json", "merges.txt"} {
			if _, serr := fs.Stat(fsys, name); serr == nil {
				// An incomplete set: said when stored or used, not
				// taken for no tokenizer.
				st.where, st.load = where, func() (*tokenizer.BPE, error) { return nil, err }
				return st, nil
			}
		}
		return st, nil
	}
	if err != nil {
		return nil, err
	}
	st.files, st.where = files, where
	st.load = sync.OnceValues(func() (*tokenizer.BPE, error) { return tokenizer.LoadFiles(files, where) })
	return st, nil
}

// copyTokenizer stores the source's tokenizer files, when it has them,
// in the container (checked to load first), so that the runtime can
// encode and decode text. A tokenizer the runtime cannot load, or an
// incomplete set of its files, is left out with a warning: the weights
// convert without it (text then needs token ids), as they do from a
// source with none.
func copyTokenizer(w *format.Writer, st *sourceTokenizer) (warning string, err error) {
	if st.load == nil {
		return "", nil
	}
	tok, err := st.load()
	if err != nil {
		return fmt.Sprintf("tokenizer in %s not stored: %v (slope run and score then take token ids)", st.where, err), nil
	}
	warning = strings.Join(tok.Warnings(), "; ") // stored all the same, as transformers loads it
	tk := &slopepb.Tokenizer{Type: format.TokenizerGPT2BPE, Files: map[string]string{}}
	for _, name := range slices.Sorted(maps.Keys(st.files)) {
		tensor := "tokenizer/" + name
		if err := w.WriteBytes(tensor, st.files[name]); err != nil {
			return "", fmt.Errorf("tokenizer %s: %w", filepath.Join(st.where, name), err)
		}
		tk.Files[name] = tensor
	}
	w.Manifest().Tokenizer = tk
	return warning, nil
}
