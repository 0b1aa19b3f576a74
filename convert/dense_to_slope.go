package convert

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"

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
// exceeds it are left dense.
const MaxAspectRatio = 5

// DefaultLabel names the embedded default model in errors and provenance.
const DefaultLabel = "embedded:" + testmodels.DefaultName

// Options configure DenseToSlope.
type Options struct {
	// In is a checkpoint OpenSource accepts (a Hugging Face model
	// directory in any layout, or an ONNX export); "" converts the
	// embedded default model (testmodels.DefaultName).
	In string
	// Out is the .slope file to write (required).
	Out string
	// NM is the pattern for the decoder-layer linear weights, "N:M"
	// ("" means "2:4"), or "dense" to prune nothing.
	NM string
	// DType of the stored float tensors: "keep" (or "") keeps each
	// tensor's source dtype; "fp32", "fp16", "bf16" convert.
	DType string
	// Compress stores tensors as zstd frames.
	Compress bool
	// Progress, when set, is called after each source weight is written.
	Progress func(done, total int, name string)
	// Command is recorded in provenance; "" records a description of the
	// options.
	Command string
}

// Result summarises a conversion.
type Result struct {
	Out string `json:"out"`
	// Tensors in the file (weights and transpose masks).
	Tensors int `json:"tensors"`
	// Pruned is the number of weights stored N:M.
	Pruned int `json:"pruned"`
	// DenseBytes is what the weights take stored dense in the output
	// dtypes; StoredBytes the bytes the file's tensors take (values,
	// indices, masks, after compression); FileBytes the file size.
	DenseBytes  int64 `json:"dense_bytes"`
	StoredBytes int64 `json:"stored_bytes"`
	FileBytes   int64 `json:"file_bytes"`
	// TransposeExtraZeros is the fraction of the pruned weights' entries
	// (rows*cols, over all of them) that the double pruning of the
	// transposes removes on top of the N:M pruning.
	TransposeExtraZeros float64 `json:"transpose_extra_zeros"`
	// Warnings from reading the source (e.g. ignored tensors).
	Warnings []string `json:"warnings,omitempty"`
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

// OpenSource opens the checkpoint at in:
//
//   - "" is the embedded default model (testmodels.DefaultName);
//   - a directory holding Hugging Face weights (model.safetensors,
//     model.safetensors.index.json, pytorch_model.bin or
//     pytorch_model.bin.index.json) is a Hugging Face model directory
//     (OpenHFDir);
//   - an .onnx file, or a directory with no Hugging Face weights that holds
//     model.onnx or a single *.onnx file, is an ONNX model (OpenONNX).
//
// Anything else is an error saying what is accepted.
func OpenSource(in string) (Source, error) {
	if in == "" {
		return OpenHF(testmodels.DefaultFS(), DefaultLabel)
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

// pruneDecision tells whether a weight is pruned N:M, and why (not).
func pruneDecision(spec WeightSpec, known bool, t *Tensor, p format.NM, dense bool) (bool, string) {
	switch {
	case !known || !spec.Linear:
		return false, "not a decoder-layer linear weight"
	case dense:
		return false, "pruning disabled (dense)"
	case len(t.Shape) != 2 || t.Shape[0] <= 0 || t.Shape[1] <= 0:
		return false, fmt.Sprintf("shape %v is not a matrix", t.Shape)
	}
	rows, cols := t.Shape[0], t.Shape[1]
	if lo, hi := min(rows, cols), max(rows, cols); hi > MaxAspectRatio*lo {
		return false, fmt.Sprintf("aspect ratio %d:%d exceeds %d", hi, lo, MaxAspectRatio)
	}
	if cols%p.M != 0 {
		return false, fmt.Sprintf("in_features %d is not a multiple of %d", cols, p.M)
	}
	if rows%p.M != 0 {
		return false, fmt.Sprintf("out_features %d is not a multiple of %d (double-pruned transpose)", rows, p.M)
	}
	return true, fmt.Sprintf("decoder-layer linear weight, %s by magnitude; transpose double-pruned by magnitude", p)
}

// DenseToSlope converts a dense checkpoint into a .slope file: the
// decoder layers' q, k, v, out_proj, fc1 and fc2 weights are pruned N:M by
// magnitude (MagnitudeMask) and stored NM with their double-pruned
// transpose masks (format.DoublePruneMagnitude), unless their shape rules
// it out (aspect ratio above MaxAspectRatio, rows or cols not a multiple
// of M; the reason is recorded); every other tensor is stored dense. One
// source tensor is held in memory at a time. On error or cancellation
// nothing is left at o.Out.
func DenseToSlope(ctx context.Context, o Options) (*Result, error) {
	if o.Out == "" {
		return nil, errors.New("no output path (Options.Out)")
	}
	p, dense, err := ParseNMOption(o.NM)
	if err != nil {
		return nil, fmt.Errorf("N:M pattern: %w", err)
	}
	outDT, keepDT, err := ParseDTypeOption(o.DType)
	if err != nil {
		return nil, err
	}
	src, err := OpenSource(o.In)
	if err != nil {
		return nil, err
	}
	defer src.Close()
	cfg := src.Config()
	specs := map[string]WeightSpec{}
	for _, s := range OPTWeights(cfg) {
		specs[s.Name] = s
	}
	names := src.Names()
	w, err := format.Create(o.Out, &format.WriterOptions{Compress: o.Compress, ZstdLevel: zstd.SpeedDefault, ExpectedTensors: 2 * len(names)})
	if err != nil {
		return nil, err
	}
	closed := false
	defer func() {
		if !closed {
			w.Abort()
		}
	}()

	res := &Result{Out: o.Out, Warnings: src.Warnings()}
	prov := &slopepb.Provenance{Tool: ToolName, ToolVersion: toolVersion(), Sources: src.Files(), Command: o.Command}
	if prov.Command == "" {
		prov.Command = fmt.Sprintf("convert.DenseToSlope(in=%q, nm=%q, dtype=%q, compress=%v)", o.In, o.NM, o.DType, o.Compress)
	}
	pattern := "dense"
	if !dense {
		pattern = p.String()
	}
	sparse := map[string]format.NM{}
	var removed, prunedEntries int64
	for i, name := range names {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("convert to %s: %w", o.Out, err)
		}
		t, err := src.Tensor(name)
		if err != nil {
			return nil, err
		}
		if n := t.Numel(); n != len(t.Data) {
			return nil, fmt.Errorf("tensor %q (%s): %d values for shape %v", name, t.SourceName, len(t.Data), t.Shape)
		}
		dt := outDT
		if keepDT {
			dt = t.DType
		}
		es, err := format.ElemSize(dt)
		if err != nil {
			return nil, fmt.Errorf("tensor %q: %w", name, err)
		}
		res.DenseBytes += int64(len(t.Data)) * int64(es)
		spec, known := specs[name]
		prune, reason := pruneDecision(spec, known, t, p, dense)
		tp := &slopepb.TensorProvenance{Name: name, SourceName: t.SourceName, Method: "none", Pattern: "dense",
			Reason: reason, SourceDtype: t.DType.String()}
		if prune {
			rm, err := writePruned(w, t, dt, p)
			if err != nil {
				return nil, err
			}
			removed += rm
			prunedEntries += int64(len(t.Data))
			sparse[name] = p
			res.Pruned++
			tp.Method, tp.Pattern = "magnitude", pattern
			prov.Tensors = append(prov.Tensors, tp, &slopepb.TensorProvenance{
				Name: TransposeMaskName(name), SourceName: t.SourceName, Method: "magnitude", Pattern: pattern,
				Reason: "double-pruned transpose of " + name + ": " + pattern + " by magnitude along the output dim", SourceDtype: t.DType.String()})
		} else {
			shape := make([]uint64, len(t.Shape))
			for j, d := range t.Shape {
				shape[j] = uint64(d)
			}
			if err := w.WriteDense(name, dt, shape, t.Data); err != nil {
				return nil, fmt.Errorf("tensor %q: %w", name, err)
			}
			prov.Tensors = append(prov.Tensors, tp)
		}
		if o.Progress != nil {
			o.Progress(i+1, len(names), name)
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("convert to %s: %w", o.Out, err)
	}
	graph, err := BuildOPTGraph(cfg, sparse)
	if err != nil {
		return nil, err
	}
	m := w.Manifest()
	m.Architecture = &slopepb.Architecture{Name: "opt", Config: &slopepb.Architecture_Opt{Opt: cfg}}
	m.Graph = graph
	m.OpsetImport = OpsetImports()
	m.Provenance = prov
	label := o.In
	if label == "" {
		label = DefaultLabel
	}
	m.Metadata = map[string]string{"source": label}
	if err := copyTokenizer(w, o.In); err != nil {
		return nil, err
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
	if prunedEntries > 0 {
		res.TransposeExtraZeros = float64(removed) / float64(prunedEntries)
	}
	return res, nil
}

// writePruned writes t pruned N:M by magnitude and its double-pruned
// transpose mask; it returns how many kept values the mask drops.
func writePruned(w *format.Writer, t *Tensor, dt slopepb.DType, p format.NM) (int64, error) {
	rows, cols := t.Shape[0], t.Shape[1]
	keep, err := MagnitudeMask(p, rows, cols, t.Data)
	if err != nil {
		return 0, fmt.Errorf("tensor %q (%s): %w", t.Name, t.SourceName, err)
	}
	values, idx, err := format.SplitNM(p, rows, cols, t.Data, keep)
	if err != nil {
		return 0, fmt.Errorf("tensor %q: %w", t.Name, err)
	}
	if err := w.WriteNM(t.Name, dt, p, rows, cols, values, idx); err != nil {
		return 0, fmt.Errorf("tensor %q: %w", t.Name, err)
	}
	tkeep, err := format.DoublePruneMagnitude(p, rows, cols, values, idx)
	if err != nil {
		return 0, fmt.Errorf("tensor %q: double pruning: %w", t.Name, err)
	}
	if err := w.WriteTransposeMask(TransposeMaskName(t.Name), t.Name, p, rows, cols, tkeep); err != nil {
		return 0, fmt.Errorf("tensor %q: %w", t.Name, err)
	}
	var dropped int64
	for _, k := range tkeep {
		if !k {
			dropped++
		}
	}
	return dropped, nil
}

func toolVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return Version
}

// Tokenizer files copied into the container when the source has them:
// tokenizer.json, or else vocab.json with merges.txt (GPT-2 byte-level BPE).
var tokenizerFileSets = [][]string{{"tokenizer.json"}, {"vocab.json", "merges.txt"}}

// copyTokenizer stores the tokenizer files found beside the source (its
// directory, or the directory of an .onnx file) in the container, so that
// the runtime can encode and decode text. A source without them is fine:
// the model then runs on token ids.
func copyTokenizer(w *format.Writer, in string) error {
	if in == "" {
		return nil
	}
	dir := in
	if st, err := os.Stat(in); err == nil && !st.IsDir() {
		dir = filepath.Dir(in)
	}
	for _, set := range tokenizerFileSets {
		files := map[string][]byte{}
		for _, name := range set {
			b, err := os.ReadFile(filepath.Join(dir, name))
			if err != nil {
				break
			}
			files[name] = b
		}
		if len(files) != len(set) {
			continue
		}
		var err error
		if len(set) == 1 {
			_, err = tokenizer.LoadTokenizerJSON(files[set[0]])
		} else {
			_, err = tokenizer.LoadGPT2(files["vocab.json"], files["merges.txt"])
		}
		if err != nil {
			return fmt.Errorf("tokenizer in %s: %w", dir, err)
		}
		tk := &slopepb.Tokenizer{Type: format.TokenizerGPT2BPE, Files: map[string]string{}}
		for _, name := range set {
			tensor := "tokenizer/" + name
			if err := w.WriteBytes(tensor, files[name]); err != nil {
				return fmt.Errorf("tokenizer %s: %w", filepath.Join(dir, name), err)
			}
			tk.Files[name] = tensor
		}
		w.Manifest().Tokenizer = tk
		return nil
	}
	return nil
}
