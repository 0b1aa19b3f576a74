package export

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"

	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/format/slopepb"
)

// Targets of Export.
const (
	ToHF   = "hf"
	ToONNX = "onnx"
)

// ExternalDataThreshold: an ONNX export whose weights take more bytes
// than this stores them in a side file (FILE.onnx.data), as a protobuf
// message cannot exceed 2 GiB.
const ExternalDataThreshold = 2_000_000_000

// Options configure Export. Errors about them name the `slope export`
// flag they come from.
type Options struct {
	// To is ToHF or ToONNX.
	To string
	// Out is the directory (hf) or .onnx file (onnx) to write.
	Out string
	// DType of the written weights: "" or "keep" writes each tensor in the
	// dtype it is stored in; "fp32", "fp16", "bf16" convert.
	DType string
	// Force replaces an existing Out (a non-empty directory, a file).
	Force bool
	// WithPast (onnx): the decoder-with-past graph (past_key_values.*
	// inputs, present.* outputs).
	WithPast bool
	// ExternalData (onnx): always store the weights in Out + ".data";
	// without it they go there only past ExternalDataThreshold bytes.
	ExternalData bool
	// Context, when set, stops the export between tensors once it is
	// done (Ctrl-C); the error wraps its cause and nothing is left.
	Context context.Context
}

// Report says what Export wrote.
type Report struct {
	In    string   `json:"in"`
	Out   string   `json:"out"`
	To    string   `json:"to"`
	Files []string `json:"files"`
	// Tensors written and their bytes (as stored in the output).
	Tensors int   `json:"tensors"`
	Bytes   int64 `json:"bytes"`
	// Densified is the number of N:M weights written dense (zeros at the
	// pruned positions); Merged the number of adapters folded into them.
	Densified int `json:"densified"`
	Merged    int `json:"merged_adapters"`
	// External (onnx): the weights are in a side file.
	External bool `json:"external_data,omitempty"`
	// Warnings: things the target cannot represent.
	Warnings []string `json:"warnings,omitempty"`
}

// Export writes the model of the container at in as o.To says. Nothing
// is left under o.Out's name unless it succeeds: the output is written
// beside it (Out + ".tmp") and renamed into place.
func Export(in string, o Options) (*Report, error) {
	if o.Out == "" {
		return nil, errors.New("--out: missing (a directory for --to hf, a .onnx file for --to onnx)")
	}
	// "dir/" and "dir" are the same output (the staging sibling is named
	// after it); the file system's root and "." or ".." are no output.
	o.Out = filepath.Clean(o.Out)
	if b := filepath.Base(o.Out); b == "." || b == ".." || b == string(filepath.Separator) {
		return nil, fmt.Errorf("--out %s: name a new directory or file", o.Out)
	}
	// --force must never remove the input: not as the output, nor as the
	// staging sibling or the ONNX side file that an export replaces.
	for _, p := range []string{o.Out, o.Out + ".tmp", o.Out + ".data"} {
		if holdsInput(p, in) {
			return nil, fmt.Errorf("--out %s: %s is, or holds, the input %s", o.Out, p, in)
		}
	}
	outDT, err := parseDType(o.DType)
	if err != nil {
		return nil, err
	}
	switch o.To {
	case ToHF:
		if o.WithPast || o.ExternalData {
			return nil, errors.New("--with-past and --external-data apply to --to onnx only")
		}
	case ToONNX:
	default:
		return nil, fmt.Errorf("--to %q: want hf or onnx", o.To)
	}
	m, err := Open(in)
	if err != nil {
		return nil, err
	}
	defer m.Close()
	m.outDT = outDT
	if o.To == ToHF {
		return m.writeHF(o)
	}
	return m.writeONNX(o)
}

// parseDType parses --dtype ("" or keep: DTYPE_UNSPECIFIED).
func parseDType(s string) (slopepb.DType, error) {
	switch strings.ToLower(s) {
	case "", "keep":
		return slopepb.DType_DTYPE_UNSPECIFIED, nil
	case "fp32", "float32", "f32":
		return slopepb.DType_FLOAT32, nil
	case "fp16", "float16", "f16":
		return slopepb.DType_FLOAT16, nil
	case "bf16", "bfloat16":
		return slopepb.DType_BFLOAT16, nil
	}
	return 0, fmt.Errorf("--dtype %q: want keep, fp32, fp16 or bf16", s)
}

// Model is an opened OPT container seen as dense weights.
type Model struct {
	f      *format.File
	cfg    *slopepb.OPTConfig
	oc     ONNXConfig
	names  []string
	shapes [][]int
	// adapters of each adapted weight
	adapters map[string]*adapter
	outDT    slopepb.DType
}

type adapter struct {
	l, r   *slopepb.Tensor // l nil in the merged layout
	rank   int
	scale  float32
	merged bool
}

// Open opens the container at path for export: it must hold an OPT
// architecture and every weight of OPTForCausalLM under its canonical
// name (see ONNXWeightShapes), dense or N:M, with or without adapters.
func Open(path string) (*Model, error) {
	f, err := format.Open(path, nil)
	if err != nil {
		return nil, err
	}
	m, err := newModel(f)
	if err != nil {
		f.Close()
		return nil, err
	}
	return m, nil
}

// Close releases the container.
func (m *Model) Close() error { return m.f.Close() }

// Config is the container's OPT config.
func (m *Model) Config() *slopepb.OPTConfig { return m.cfg }

// ONNXConfig is the container's config in the ONNX writer's terms.
func (m *Model) ONNXConfig() ONNXConfig { return m.oc }

// Names lists the weights of the model (canonical decoder.* names and,
// untied, lm_head.weight), in model order.
func (m *Model) Names() []string { return m.names }

func newModel(f *format.File) (*Model, error) {
	man := f.Manifest()
	path := f.Path()
	arch := man.GetArchitecture()
	if arch == nil || arch.GetOpt() == nil {
		name := "none"
		if arch != nil && arch.Name != "" {
			name = arch.Name
		}
		return nil, fmt.Errorf("%s: architecture %s: export needs an OPT model (architecture.opt)", path, name)
	}
	c := arch.GetOpt()
	oc := ONNXConfig{
		Vocab: int(c.VocabSize), Hidden: int(c.HiddenSize), Heads: int(c.NumAttentionHeads), Layers: int(c.NumHiddenLayers),
		FFN: int(c.FfnDim), MaxPos: int(c.MaxPositionEmbeddings), ProjDim: int(c.WordEmbedProjDim),
		PreLN: c.DoLayerNormBefore, RemoveFinalLayerNorm: c.RemoveFinalLayerNorm, Tied: c.TieWordEmbeddings,
		NoBias: !c.EnableBias, NoLayerNormAffine: !c.LayerNormElementwiseAffine, Activation: c.ActivationFunction, Eps: c.LayerNormEps,
	}
	if oc.RemoveFinalLayerNorm && !oc.PreLN {
		oc.RemoveFinalLayerNorm = false // no final LayerNorm either way
	}
	if err := oc.check(); err != nil {
		return nil, fmt.Errorf("%s: OPT config: %w", path, err)
	}
	m := &Model{f: f, cfg: c, oc: oc, adapters: map[string]*adapter{}}
	m.names, m.shapes = ONNXWeightShapes(oc)
	for _, t := range man.Tensors {
		if t.Encoding != slopepb.Encoding_LOW_RANK || t.Adapter == nil {
			continue
		}
		a := m.adapters[t.Adapter.Weight]
		if a == nil {
			a = &adapter{}
			m.adapters[t.Adapter.Weight] = a
		}
		a.scale = t.Adapter.Scale
		if t.Adapter.Merged {
			a.merged = true
		}
		if t.Adapter.Factor == slopepb.AdapterParams_L {
			a.l = t
		} else {
			a.r = t
		}
	}
	for i, n := range m.names {
		t, err := f.Lookup(n)
		if err != nil {
			return nil, fmt.Errorf("%s: weight %q of the OPT config is missing: %w", path, n, err)
		}
		rows := m.shapes[i][0]
		if a := m.adapters[n]; a != nil {
			if a.r == nil || len(a.r.Shape) != 2 || (!a.merged && a.l == nil) {
				return nil, fmt.Errorf("%s: weight %q: incomplete adapter", path, n)
			}
			a.rank = int(a.r.Shape[0])
			if a.merged {
				rows += a.rank
			}
		}
		want := append([]int{rows}, m.shapes[i][1:]...)
		if !equalInts(uintsToInts(t.Shape), want) {
			return nil, fmt.Errorf("%s: weight %q has shape %v, want %v for the OPT config", path, n, t.Shape, want)
		}
		switch t.Encoding {
		case slopepb.Encoding_DENSE, slopepb.Encoding_NM:
		default:
			return nil, fmt.Errorf("%s: weight %q is %s: export reads DENSE and NM weights", path, n, t.Encoding)
		}
		if !format.IsFloat(t.Dtype) {
			return nil, fmt.Errorf("%s: weight %q is %s, not a float tensor", path, n, t.Dtype)
		}
	}
	return m, nil
}

func uintsToInts(s []uint64) []int {
	out := make([]int, len(s))
	for i, d := range s {
		out[i] = int(d)
	}
	return out
}

// header is weight i's name, shape and output dtype.
func (m *Model) header(i int) (TensorHeader, error) {
	t, err := m.f.Lookup(m.names[i])
	if err != nil {
		return TensorHeader{}, err
	}
	dt := m.outDT
	if dt == slopepb.DType_DTYPE_UNSPECIFIED {
		dt = t.Dtype
	}
	return TensorHeader{Name: m.names[i], Shape: m.shapes[i], DType: DTypeName(dt)}, nil
}

// Headers lists every weight with the dtype it is written in.
func (m *Model) Headers() ([]TensorHeader, error) {
	hs := make([]TensorHeader, len(m.names))
	for i := range hs {
		var err error
		if hs[i], err = m.header(i); err != nil {
			return nil, err
		}
	}
	return hs, nil
}

// Weight returns the dense values of a weight (float32, [out, in] for
// linear layers): an N:M weight expanded with zeros at its pruned
// positions, and its adapter, if any, merged in as W + scale·(L·R)ᵀ (in
// the merged layout Lᵀ is the weight's last rank rows, which are dropped).
func (m *Model) Weight(name string) ([]float32, error) {
	w, err := m.f.Dense(name)
	if err != nil {
		return nil, err
	}
	a := m.adapters[name]
	if a == nil {
		return w, nil
	}
	t, _ := m.f.Lookup(name)
	in := int(t.Shape[1])
	out := int(a.r.Shape[1])
	r := a.rank
	rv, err := m.f.Float32s(a.r.Name)
	if err != nil {
		return nil, err
	}
	var l []float32 // [in, r]
	if a.merged {
		l = make([]float32, in*r)
		for k := 0; k < r; k++ {
			row := w[(out+k)*in : (out+k+1)*in]
			for i, v := range row {
				l[i*r+k] = v
			}
		}
		w = w[:out*in]
	} else if l, err = m.f.Float32s(a.l.Name); err != nil {
		return nil, err
	}
	mergeLowRank(w, out, in, r, l, rv, a.scale)
	return w, nil
}

// mergeLowRank adds scale·(L·R)ᵀ to w [out, in] in place, with L [in, r]
// and R [r, out], summing in float64.
func mergeLowRank(w []float32, out, in, r int, l, rv []float32, scale float32) {
	workers := min(runtime.GOMAXPROCS(0), max(out, 1))
	chunk := (out + workers - 1) / workers
	var wg sync.WaitGroup
	for lo := 0; lo < out; lo += chunk {
		hi := min(lo+chunk, out)
		wg.Add(1)
		go func() {
			defer wg.Done()
			col := make([]float64, r)
			for o := lo; o < hi; o++ {
				for k := 0; k < r; k++ {
					col[k] = float64(rv[k*out+o])
				}
				row := w[o*in : (o+1)*in]
				for i := range row {
					var s float64
					li := l[i*r : (i+1)*r]
					for k, c := range col {
						s += float64(li[k]) * c
					}
					row[i] = float32(float64(row[i]) + float64(scale)*s)
				}
			}
		}()
	}
	wg.Wait()
}

// counts returns the number of N:M weights and of adapters among the
// exported weights.
func (m *Model) counts() (densified, merged int) {
	for _, n := range m.names {
		if t, err := m.f.Lookup(n); err == nil && t.Encoding == slopepb.Encoding_NM {
			densified++
		}
		if m.adapters[n] != nil {
			merged++
		}
	}
	return densified, merged
}

func (m *Model) warnings() []string {
	var w []string
	if eps := m.cfg.LayerNormEps; eps != 0 && math.Abs(float64(eps)-1e-5) > 1e-12 {
		w = append(w, fmt.Sprintf("LayerNorm epsilon %g: OPT's config.json cannot record it (transformers uses 1e-5)", eps))
	}
	for name := range m.adapters {
		if !m.isWeight(name) {
			w = append(w, fmt.Sprintf("adapter of %q, not a model weight: not exported", name))
		}
	}
	// W + s·L·R is rounded once to the written dtype; in 16 bits that moves
	// the logits visibly away from the runtime's (which adds the adapter's
	// product in float32).
	rounded := map[string]int{}
	for i, name := range m.names {
		if m.adapters[name] == nil {
			continue
		}
		if h, err := m.header(i); err == nil && (h.DType == "F16" || h.DType == "BF16") {
			rounded[h.DType]++
		}
	}
	for _, dt := range slices.Sorted(maps.Keys(rounded)) {
		w = append(w, fmt.Sprintf("%d adapters merged into %s weights: the merged values are rounded to %s, so the exported model's logits differ from slope's by that rounding (--dtype fp32 keeps them)", rounded[dt], dt, dt))
	}
	return w
}

func (m *Model) isWeight(name string) bool { return slices.Contains(m.names, name) }

// holdsInput reports whether the path p is the file in (by name, or the
// same file under another name or link) or a directory above it.
func holdsInput(p, in string) bool {
	ai, err1 := filepath.Abs(in)
	ap, err2 := filepath.Abs(p)
	if err1 == nil && err2 == nil {
		if rel, err := filepath.Rel(ap, ai); err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
			return true
		}
	}
	si, err1 := os.Stat(in)
	sp, err2 := os.Stat(p)
	return err1 == nil && err2 == nil && os.SameFile(si, sp)
}

// staging creates the temporary sibling Out + ".tmp" (a directory) that
// the output is written into, after checking that Out may be written.
func staging(out string, force, outIsDir bool) (string, error) {
	st, err := os.Stat(out)
	switch {
	case err == nil && outIsDir && !st.IsDir():
		return "", fmt.Errorf("--out %s: a file exists there; --to hf writes a directory", out)
	case err == nil && !outIsDir && st.IsDir():
		return "", fmt.Errorf("--out %s: a directory exists there; --to onnx writes a file", out)
	case err == nil && outIsDir:
		ents, err := os.ReadDir(out)
		if err != nil {
			return "", fmt.Errorf("--out %s: %w", out, err)
		}
		if len(ents) > 0 && !force {
			return "", fmt.Errorf("--out %s: the directory exists and is not empty (--force replaces it)", out)
		}
	case err == nil && !force:
		return "", fmt.Errorf("--out %s: the file exists (--force replaces it)", out)
	case err != nil && !errors.Is(err, os.ErrNotExist):
		return "", fmt.Errorf("--out %s: %w", out, err)
	}
	tmp := out + ".tmp"
	if _, err := os.Lstat(tmp); err == nil {
		if !force {
			return "", fmt.Errorf("--out %s: %s exists (left by an interrupted export?): remove it or use --force", out, tmp)
		}
		if err := os.RemoveAll(tmp); err != nil {
			return "", err
		}
	}
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return "", fmt.Errorf("--out %s: %w", out, err)
	}
	return tmp, nil
}

// writeHF writes the Hugging Face directory.
func (m *Model) writeHF(o Options) (rep *Report, err error) {
	hs, err := m.Headers()
	if err != nil {
		return nil, err
	}
	tmp, err := staging(o.Out, o.Force, true)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			os.RemoveAll(tmp)
		}
	}()
	rep = &Report{In: m.f.Path(), Out: o.Out, To: ToHF, Tensors: len(hs), Warnings: m.warnings()}
	rep.Densified, rep.Merged = m.counts()
	// torch_dtype: the dtype of the most bytes.
	bytesOf := map[string]int64{}
	stored := make([]TensorHeader, len(hs))
	for i, h := range hs {
		n, err := h.Bytes()
		if err != nil {
			return nil, err
		}
		bytesOf[h.DType] += n
		rep.Bytes += n
		stored[i] = h
		if strings.HasPrefix(h.Name, "decoder.") {
			stored[i].Name = "model." + h.Name
		}
	}
	main := ""
	for dt, n := range bytesOf {
		if main == "" || n > bytesOf[main] || (n == bytesOf[main] && dt < main) {
			main = dt
		}
	}
	cj, err := ConfigJSON(m.cfg, TorchDTypeName(main), filepath.Base(m.f.Path()))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", m.f.Path(), err)
	}
	files := map[string][]byte{"config.json": cj}
	tk, err := m.f.TokenizerFiles()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", m.f.Path(), err)
	}
	for name, b := range tk {
		if name == "" || filepath.Base(name) != name || name == "." || name == ".." || name == "config.json" || name == "model.safetensors" {
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("tokenizer file %q: not a plain file name, skipped", name))
			continue
		}
		files[name] = b
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(tmp, name), b, 0o644); err != nil {
			return nil, err
		}
		rep.Files = append(rep.Files, name)
	}
	err = WriteSafetensorsFunc(filepath.Join(tmp, "model.safetensors"), stored, map[string]string{"format": "pt"}, func(i int) ([]float32, error) {
		return m.weightUnlessDone(o.Context, hs[i].Name)
	})
	if err != nil {
		return nil, err
	}
	rep.Files = append(rep.Files, "model.safetensors")
	slices.Sort(rep.Files)
	// Durable before the rename, as the container writer's output is.
	for _, name := range rep.Files {
		if err := syncPath(filepath.Join(tmp, name)); err != nil {
			return nil, err
		}
	}
	if err := syncPath(tmp); err != nil {
		return nil, err
	}
	// A signal after the last tensor still stops the export: nothing is
	// replaced yet.
	if err := doneCause(o.Context); err != nil {
		return nil, fmt.Errorf("export stopped before replacing %s: %w", o.Out, err)
	}
	if err := os.RemoveAll(o.Out); err != nil {
		return nil, fmt.Errorf("--out %s: %w", o.Out, err)
	}
	if err := os.Rename(tmp, o.Out); err != nil {
		return nil, err
	}
	return rep, syncPath(filepath.Dir(o.Out))
}

// doneCause is ctx's cause once it is done, else nil (nil ctx: never).
func doneCause(ctx context.Context) error {
	if ctx == nil {
		return nil
	}
	return context.Cause(ctx)
}

// weightUnlessDone is m.Weight(name), or ctx's error once ctx is done.
func (m *Model) weightUnlessDone(ctx context.Context, name string) ([]float32, error) {
	if err := doneCause(ctx); err != nil {
		return nil, fmt.Errorf("export stopped before %s: %w", name, err)
	}
	return m.Weight(name)
}

// syncPath fsyncs a file or directory.
func syncPath(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync %s: %w", path, err)
	}
	return nil
}

// writeONNX writes the .onnx file (and its side file).
func (m *Model) writeONNX(o Options) (rep *Report, err error) {
	hs, err := m.Headers()
	if err != nil {
		return nil, err
	}
	sideOut := o.Out + ".data"
	if _, err := os.Lstat(sideOut); err == nil && !o.Force {
		return nil, fmt.Errorf("--out %s: %s exists (--force replaces it)", o.Out, sideOut)
	}
	tmp, err := staging(o.Out, o.Force, false)
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	rep = &Report{In: m.f.Path(), Out: o.Out, To: ToONNX, Tensors: len(hs), Warnings: m.warnings()}
	rep.Densified, rep.Merged = m.counts()
	for _, h := range hs {
		n, err := h.Bytes()
		if err != nil {
			return nil, err
		}
		rep.Bytes += n
	}
	base := filepath.Base(o.Out)
	rep.External = o.ExternalData || rep.Bytes > ExternalDataThreshold
	opts := ONNXOptions{WithPast: o.WithPast, ExternalData: rep.External, ExternalName: base + ".data"}
	if err := WriteOPTONNXFunc(filepath.Join(tmp, base), m.oc, hs, func(i int) ([]float32, error) {
		return m.weightUnlessDone(o.Context, hs[i].Name)
	}, opts); err != nil {
		return nil, err
	}
	for _, f := range []string{base, base + ".data"} {
		if f == base || rep.External {
			if err := syncPath(filepath.Join(tmp, f)); err != nil {
				return nil, err
			}
		}
	}
	// A signal after the last tensor still stops the export: nothing is
	// replaced yet.
	if err := doneCause(o.Context); err != nil {
		return nil, fmt.Errorf("export stopped before replacing %s: %w", o.Out, err)
	}
	// The model file first, then its side file: a failure between the two
	// leaves the new model without weights (an error says so), never an
	// old model with the new weights.
	if o.Force {
		if err := os.RemoveAll(o.Out); err != nil {
			return nil, fmt.Errorf("--out %s: %w", o.Out, err)
		}
	}
	if err := os.Rename(filepath.Join(tmp, base), o.Out); err != nil {
		return nil, err
	}
	if rep.External {
		if err := os.Rename(filepath.Join(tmp, base+".data"), sideOut); err != nil {
			return nil, fmt.Errorf("--out %s: the model is written but its weights are not: %w", o.Out, err)
		}
	} else if _, err := os.Lstat(sideOut); err == nil {
		os.Remove(sideOut) // a stale side file of the model replaced (--force)
	}
	if err := syncPath(filepath.Dir(o.Out)); err != nil {
		return nil, err
	}
	rep.Files = []string{base}
	if rep.External {
		rep.Files = append(rep.Files, base+".data")
	}
	return rep, nil
}
