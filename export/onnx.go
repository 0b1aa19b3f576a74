package export

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/format/onnxpb"
	"github.com/slopeml/slope/format/slopepb"
)

// ONNXOpset is the ai.onnx opset of the graphs WriteOPTONNX writes
// (LayerNormalization needs 17, Gelu 20).
const ONNXOpset = 20

// ONNXConfig is the architecture of an OPT model written by WriteOPTONNX,
// in the terms of transformers' OPTConfig.
type ONNXConfig struct {
	Vocab, Hidden, Heads, Layers, FFN int
	// MaxPos is max_position_embeddings; embed_positions has MaxPos+2 rows.
	MaxPos int
	// ProjDim is word_embed_proj_dim; 0 means Hidden (no project_in/out).
	ProjDim int
	// PreLN is do_layer_norm_before.
	PreLN bool
	// RemoveFinalLayerNorm drops the final LayerNorm of a pre-LN model.
	RemoveFinalLayerNorm bool
	// Tied: the LM head is the token embedding (tie_word_embeddings).
	Tied bool
	// NoBias: linear layers without biases (enable_bias false).
	NoBias bool
	// NoLayerNormAffine: LayerNorms without weight and bias
	// (layer_norm_elementwise_affine false); the graph scales by a
	// constant 1.
	NoLayerNormAffine bool
	// Activation is activation_function: "relu" (""), "gelu", "gelu_new"
	// (or "gelu_pytorch_tanh"), "tanh", "sigmoid" or "silu" (or "swish").
	Activation string
	// Eps is the LayerNorm epsilon; 0 means 1e-5.
	Eps float32
}

// ONNXOptions choose how WriteOPTONNX lays the model out.
type ONNXOptions struct {
	// ExternalData stores the weights in a side file (ExternalName, by
	// default the model's file name + ".data", in the same directory)
	// instead of inline; small constants stay inline. Each weight starts
	// at a multiple of 64 bytes of the side file.
	ExternalData bool
	ExternalName string
	// CanonicalWeights stores linear weights as [out, in] (fc1/fc2 read by
	// Gemm with transB=1 on a [batch*seq, hidden] reshape, the others by
	// MatMul of a Transpose node) instead of [in, out] read by MatMul, as
	// the dynamo exporter does for q/k/v/out_proj.
	CanonicalWeights bool
	// DecomposeLayerNorm writes each LayerNorm as ReduceMean, Sub, Pow,
	// ReduceMean, Add, Sqrt, Div, Mul, Add.
	DecomposeLayerNorm bool
	// TypedData stores inline values in float_data (FLOAT) or int32_data
	// (FLOAT16, BFLOAT16) instead of raw_data.
	TypedData bool
	// CopyTiedHead writes a tied LM head as a separate (transposed when
	// not CanonicalWeights) copy of the token embedding, as the legacy
	// exporter does, instead of reading the embedding itself.
	CopyTiedHead bool
	// OpaqueNames names the weight initializers "onnx::Init_N", N counting
	// down, instead of "m.model.<canonical name>".
	OpaqueNames bool
	// WithPast writes the decoder-with-past graph ORT users decode with
	// (as optimum's OPT export): inputs input_ids [batch, seq] int64,
	// attention_mask [batch, past+seq] int64 and, for each layer i,
	// past_key_values.i.key / .value [batch, heads, past, head_dim] float;
	// outputs logits [batch, seq, vocab] and present.i.key / .value
	// [batch, heads, past+seq, head_dim] (the past concatenated with the
	// new keys and values along axis 2). Positions are OPT's:
	// cumsum(attention_mask)*attention_mask - 1 + 2, the last seq columns.
	WithPast bool
	// ProducerName is the model's producer_name ("" is "slope export").
	ProducerName string
}

// onnxLinears are the linear layers of a decoder layer, in canonical
// order.
var onnxLinears = []string{"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "fc1", "fc2"}

// ONNXWeightShapes lists the canonical weights (name and [out, in] shape)
// of cfg, in model order, as WriteOPTONNX expects them: the weights of
// transformers' OPTForCausalLM under their decoder.* names (lm_head.weight
// only when not Tied).
func ONNXWeightShapes(cfg ONNXConfig) ([]string, [][]int) {
	h, f, v, p := cfg.Hidden, cfg.FFN, cfg.Vocab, cfg.projDim()
	var names []string
	var shapes [][]int
	add := func(name string, shape ...int) {
		names = append(names, name)
		shapes = append(shapes, shape)
	}
	add("decoder.embed_tokens.weight", v, p)
	add("decoder.embed_positions.weight", cfg.MaxPos+2, h)
	if p != h {
		add("decoder.project_in.weight", h, p)
	}
	ln := func(n string) {
		if !cfg.NoLayerNormAffine {
			add(n+".weight", h)
			add(n+".bias", h)
		}
	}
	for i := 0; i < cfg.Layers; i++ {
		l := "decoder.layers." + strconv.Itoa(i) + "."
		lin := func(n string, out, in int) {
			add(l+n+".weight", out, in)
			if !cfg.NoBias {
				add(l+n+".bias", out)
			}
		}
		ln(l + "self_attn_layer_norm")
		for _, n := range onnxLinears[:4] {
			lin(n, h, h)
		}
		ln(l + "final_layer_norm")
		lin("fc1", f, h)
		lin("fc2", h, f)
	}
	if cfg.PreLN && !cfg.RemoveFinalLayerNorm {
		ln("decoder.final_layer_norm")
	}
	if p != h {
		add("decoder.project_out.weight", p, h)
	}
	if !cfg.Tied {
		add("lm_head.weight", v, p)
	}
	return names, shapes
}

func (c ONNXConfig) projDim() int {
	if c.ProjDim == 0 {
		return c.Hidden
	}
	return c.ProjDim
}

// activation normalises the activation name to the five the graph knows.
func (c ONNXConfig) activation() string {
	switch c.Activation {
	case "", "relu":
		return "relu"
	case "gelu_pytorch_tanh":
		return "gelu_new"
	case "swish":
		return "silu"
	}
	return c.Activation
}

func (c ONNXConfig) check() error {
	for _, f := range []struct {
		name string
		v    int
	}{{"Vocab", c.Vocab}, {"Hidden", c.Hidden}, {"Heads", c.Heads}, {"Layers", c.Layers}, {"FFN", c.FFN}, {"MaxPos", c.MaxPos}, {"ProjDim", c.projDim()}} {
		if f.v <= 0 || f.v > 1<<24 {
			return fmt.Errorf("%s %d out of range", f.name, f.v)
		}
	}
	if c.Hidden%c.Heads != 0 {
		return fmt.Errorf("Heads %d does not divide Hidden %d", c.Heads, c.Hidden)
	}
	if c.RemoveFinalLayerNorm && !c.PreLN {
		return fmt.Errorf("RemoveFinalLayerNorm needs PreLN")
	}
	switch c.activation() {
	case "relu", "gelu", "gelu_new", "tanh", "sigmoid", "silu":
	default:
		return fmt.Errorf("activation %q not supported", c.Activation)
	}
	return nil
}

// WriteOPTONNX writes an ONNX model of an OPT causal LM with config cfg
// and weights tensors (canonical names, [out, in] linear weights, as
// ONNXWeightShapes lists them; an lm_head.weight is ignored when Tied)
// to path, shaped like torch.onnx.export's output: input input_ids
// [batch, seq] int64, output logits [batch, seq, vocab]; Gather
// embeddings (positions 2..seq+1), LayerNormalization, linear layers as
// MatMul + Add, attention as Reshape/Transpose/MatMul/Softmax with a
// causal mask, the activation, residual Adds, the LM head as a MatMul.
// Weights stored as F16 or BF16 are Cast to float. All tensors are in
// memory; WriteOPTONNXFunc takes them one at a time.
func WriteOPTONNX(path string, cfg ONNXConfig, tensors []Tensor, opts ONNXOptions) error {
	if err := cfg.check(); err != nil {
		return fmt.Errorf("onnx %s: config: %w", path, err)
	}
	byName := map[string]*Tensor{}
	byData := map[string][]float32{}
	for i := range tensors {
		t := &tensors[i]
		if _, dup := byName[t.Name]; dup {
			return fmt.Errorf("onnx %s: tensor %q given twice", path, t.Name)
		}
		byName[t.Name] = t
		byData[t.Name] = t.Data
	}
	names, shapes := ONNXWeightShapes(cfg)
	headers := make([]TensorHeader, len(names))
	for i, n := range names {
		t, ok := byName[n]
		if !ok {
			return fmt.Errorf("onnx %s: no tensor %q", path, n)
		}
		if !equalInts(t.Shape, shapes[i]) {
			return fmt.Errorf("onnx %s: tensor %q has shape %v, want %v", path, n, t.Shape, shapes[i])
		}
		if len(t.Data) != numel(t.Shape) {
			return fmt.Errorf("onnx %s: tensor %q has %d values for shape %v", path, n, len(t.Data), t.Shape)
		}
		headers[i] = t.Header()
		delete(byName, n)
	}
	delete(byName, "lm_head.weight") // tied
	for n := range byName {
		return fmt.Errorf("onnx %s: tensor %q is not a weight of the config", path, n)
	}
	return WriteOPTONNXFunc(path, cfg, headers, func(i int) ([]float32, error) {
		return byData[headers[i].Name], nil
	}, opts)
}

// WriteOPTONNXFunc is WriteOPTONNX with the weights given as headers
// (exactly the weights ONNXWeightShapes lists, in any order, each with the
// dtype it is to be stored in) and data(i), called when headers[i] is
// written: with ExternalData each weight goes to the side file as it is
// made, so that only one is in memory at a time (a graph past 2 GiB must
// use it: protobuf messages cannot be larger). Nothing is left at path or
// at the side file on error.
func WriteOPTONNXFunc(path string, cfg ONNXConfig, headers []TensorHeader, data func(i int) ([]float32, error), opts ONNXOptions) (err error) {
	if err := cfg.check(); err != nil {
		return fmt.Errorf("onnx %s: config: %w", path, err)
	}
	names, shapes := ONNXWeightShapes(cfg)
	index := map[string]int{}
	for i, h := range headers {
		if _, dup := index[h.Name]; dup {
			return fmt.Errorf("onnx %s: tensor %q given twice", path, h.Name)
		}
		index[h.Name] = i
	}
	for k, n := range names {
		i, ok := index[n]
		if !ok {
			return fmt.Errorf("onnx %s: no tensor %q", path, n)
		}
		if !equalInts(headers[i].Shape, shapes[k]) {
			return fmt.Errorf("onnx %s: tensor %q has shape %v, want %v", path, n, headers[i].Shape, shapes[k])
		}
	}
	if len(headers) != len(names) {
		for _, h := range headers {
			if !slices.Contains(names, h.Name) {
				return fmt.Errorf("onnx %s: tensor %q is not a weight of the config", path, h.Name)
			}
		}
	}
	b := &onnxBuilder{cfg: cfg, opts: opts, headers: headers, index: index, data: data, weightVals: map[string]string{}, opaque: len(names) + 1}
	if opts.ExternalData {
		b.extName = opts.ExternalName
		if b.extName == "" {
			b.extName = filepath.Base(path) + ".data"
		}
		if strings.ContainsAny(b.extName, `/\`) {
			return fmt.Errorf("onnx %s: ExternalName %q must be a plain file name", path, b.extName)
		}
		extPath := filepath.Join(filepath.Dir(path), b.extName)
		f, err := os.Create(extPath)
		if err != nil {
			return err
		}
		b.ext = bufio.NewWriterSize(f, 1<<20)
		defer func() {
			if ferr := b.ext.Flush(); err == nil && ferr != nil {
				err = ferr
			}
			if cerr := f.Close(); err == nil && cerr != nil {
				err = cerr
			}
			if err != nil {
				os.Remove(extPath)
			}
		}()
	}
	build := b.build
	if opts.WithPast {
		build = b.buildPast
	}
	if err := build(); err != nil {
		return fmt.Errorf("onnx %s: %w", path, err)
	}
	model, err := proto.Marshal(b.model())
	if err != nil {
		return fmt.Errorf("onnx %s: %w", path, err)
	}
	// Beside path, then renamed over it: a failed write leaves no
	// truncated model under its name.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, model, 0o644); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("onnx %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("onnx %s: %w", path, err)
	}
	return nil
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func numel(shape []int) int {
	n := 1
	for _, d := range shape {
		n *= d
	}
	return n
}

type onnxBuilder struct {
	cfg        ONNXConfig
	opts       ONNXOptions
	headers    []TensorHeader
	index      map[string]int // name -> index into headers
	data       func(i int) ([]float32, error)
	nodes      []*onnxpb.NodeProto
	inits      []*onnxpb.TensorProto
	weightVals map[string]string // canonical name -> float value
	ext        *bufio.Writer     // the side file, with ExternalData
	extLen     int64
	extName    string
	counter    int
	opaque     int
	ones       string // the constant LayerNorm scale of NoLayerNormAffine
	err        error
}

// fresh is a new value name.
func (b *onnxBuilder) fresh(prefix string) string {
	b.counter++
	return prefix + "_" + strconv.Itoa(b.counter)
}

// node appends a node with one output and returns it.
func (b *onnxBuilder) node(op string, inputs []string, attrs ...*onnxpb.AttributeProto) string {
	out := b.fresh(strings.ToLower(op))
	b.nodes = append(b.nodes, &onnxpb.NodeProto{Name: "node_" + out, OpType: op, Input: inputs, Output: []string{out}, Attribute: attrs})
	return out
}

func onnxAttrInt(name string, v int64) *onnxpb.AttributeProto {
	return &onnxpb.AttributeProto{Name: name, Type: onnxpb.AttributeProto_INT, I: v}
}

func onnxAttrInts(name string, v ...int64) *onnxpb.AttributeProto {
	return &onnxpb.AttributeProto{Name: name, Type: onnxpb.AttributeProto_INTS, Ints: v}
}

func onnxAttrFloat(name string, v float32) *onnxpb.AttributeProto {
	return &onnxpb.AttributeProto{Name: name, Type: onnxpb.AttributeProto_FLOAT, F: v}
}

func onnxAttrString(name, v string) *onnxpb.AttributeProto {
	return &onnxpb.AttributeProto{Name: name, Type: onnxpb.AttributeProto_STRING, S: []byte(v)}
}

// constInts adds an inline int64 initializer; scalar when dims is nil.
func (b *onnxBuilder) constInts(dims []int64, v ...int64) string {
	name := b.fresh("const")
	raw := make([]byte, 8*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint64(raw[8*i:], uint64(x))
	}
	b.inits = append(b.inits, &onnxpb.TensorProto{Name: name, Dims: dims, DataType: int32(onnxpb.TensorProto_INT64), RawData: raw})
	return name
}

// constFloats adds an inline float initializer; scalar when dims is nil.
func (b *onnxBuilder) constFloats(dims []int64, v ...float32) string {
	name := b.fresh("const")
	raw := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(x))
	}
	b.inits = append(b.inits, &onnxpb.TensorProto{Name: name, Dims: dims, DataType: int32(onnxpb.TensorProto_FLOAT), RawData: raw})
	return name
}

var onnxDTypes = map[string]struct {
	onnx  onnxpb.TensorProto_DataType
	slope slopepb.DType
}{
	"":     {onnxpb.TensorProto_FLOAT, slopepb.DType_FLOAT32},
	"F32":  {onnxpb.TensorProto_FLOAT, slopepb.DType_FLOAT32},
	"F16":  {onnxpb.TensorProto_FLOAT16, slopepb.DType_FLOAT16},
	"BF16": {onnxpb.TensorProto_BFLOAT16, slopepb.DType_BFLOAT16},
}

// weight adds the initializer of a canonical weight, transposed when
// transpose, and returns a float value of it (a Cast for F16/BF16).
// suffix distinguishes a second initializer of the same tensor.
func (b *onnxBuilder) weight(name string, transpose bool, suffix string) string {
	key := name + suffix
	if v, ok := b.weightVals[key]; ok {
		return v
	}
	hd := b.headers[b.index[name]]
	dt, ok := onnxDTypes[hd.DType]
	if !ok {
		if b.err == nil {
			b.err = fmt.Errorf("tensor %q has dtype %q; want F32, F16 or BF16", name, hd.DType)
		}
		return ""
	}
	if b.err != nil {
		return ""
	}
	data, err := b.data(b.index[name])
	if err != nil {
		b.err = fmt.Errorf("tensor %q: %w", name, err)
		return ""
	}
	if len(data) != numel(hd.Shape) {
		b.err = fmt.Errorf("tensor %q has %d values for shape %v", name, len(data), hd.Shape)
		return ""
	}
	dims := hd.Shape
	if transpose {
		rows, cols := hd.Shape[0], hd.Shape[1]
		td := make([]float32, len(data))
		for r := 0; r < rows; r++ {
			for c := 0; c < cols; c++ {
				td[c*rows+r] = data[r*cols+c]
			}
		}
		data, dims = td, []int{cols, rows}
	}
	initName := "m.model." + key
	if strings.HasPrefix(name, "lm_head.") {
		initName = "m." + key
	}
	if b.opts.OpaqueNames {
		b.opaque--
		initName = "onnx::Init_" + strconv.Itoa(b.opaque)
	}
	tp := &onnxpb.TensorProto{Name: initName, DataType: int32(dt.onnx)}
	for _, d := range dims {
		tp.Dims = append(tp.Dims, int64(d))
	}
	size := 4
	if dt.onnx != onnxpb.TensorProto_FLOAT {
		size = 2
	}
	raw := make([]byte, size*len(data))
	if err := format.EncodeFloats(dt.slope, data, raw); err != nil && b.err == nil {
		b.err = fmt.Errorf("tensor %q: %w", name, err)
	}
	switch {
	case b.opts.ExternalData:
		var pad [64]byte
		if n := (64 - b.extLen%64) % 64; n > 0 {
			if _, err := b.ext.Write(pad[:n]); err != nil && b.err == nil {
				b.err = err
			}
			b.extLen += n
		}
		off := b.extLen
		if _, err := b.ext.Write(raw); err != nil && b.err == nil {
			b.err = err
		}
		b.extLen += int64(len(raw))
		tp.DataLocation = onnxpb.TensorProto_EXTERNAL
		tp.ExternalData = []*onnxpb.StringStringEntryProto{
			{Key: "location", Value: b.extName},
			{Key: "offset", Value: strconv.FormatInt(off, 10)},
			{Key: "length", Value: strconv.Itoa(len(raw))},
		}
	case b.opts.TypedData && dt.onnx == onnxpb.TensorProto_FLOAT:
		tp.FloatData = make([]float32, len(data))
		for i := range data {
			tp.FloatData[i] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
		}
	case b.opts.TypedData:
		tp.Int32Data = make([]int32, len(data))
		for i := range data {
			tp.Int32Data[i] = int32(binary.LittleEndian.Uint16(raw[2*i:]))
		}
	default:
		tp.RawData = raw
	}
	b.inits = append(b.inits, tp)
	v := initName
	if dt.onnx != onnxpb.TensorProto_FLOAT {
		v = b.node("Cast", []string{initName}, onnxAttrInt("to", int64(onnxpb.TensorProto_FLOAT)))
	}
	b.weightVals[key] = v
	return v
}

// linear applies the linear layer prefix (weight [out, in], bias unless
// NoBias or noBias) to x. gemm: x is 2-D and CanonicalWeights uses Gemm.
func (b *onnxBuilder) linear(x, prefix string, gemm, noBias bool) string {
	bias := !b.cfg.NoBias && !noBias
	w := prefix + ".weight"
	switch {
	case !b.opts.CanonicalWeights:
		y := b.node("MatMul", []string{x, b.weight(w, true, "")})
		if bias {
			// The legacy exporter's order: Add(bias, y).
			return b.node("Add", []string{b.weight(prefix+".bias", false, ""), y})
		}
		return y
	case gemm:
		in := []string{x, b.weight(w, false, "")}
		if bias {
			in = append(in, b.weight(prefix+".bias", false, ""))
		}
		return b.node("Gemm", in, onnxAttrFloat("alpha", 1), onnxAttrFloat("beta", 1), onnxAttrInt("transB", 1))
	default:
		wt := b.node("Transpose", []string{b.weight(w, false, "")}, onnxAttrInts("perm", 1, 0))
		y := b.node("MatMul", []string{x, wt})
		if bias {
			return b.node("Add", []string{y, b.weight(prefix+".bias", false, "")})
		}
		return y
	}
}

func (b *onnxBuilder) eps() float32 {
	if b.cfg.Eps == 0 {
		return 1e-5
	}
	return b.cfg.Eps
}

func (b *onnxBuilder) layerNorm(x, prefix string) string {
	if b.cfg.NoLayerNormAffine {
		return b.layerNormPlain(x)
	}
	scale := b.weight(prefix+".weight", false, "")
	bias := b.weight(prefix+".bias", false, "")
	if !b.opts.DecomposeLayerNorm {
		return b.node("LayerNormalization", []string{x, scale, bias}, onnxAttrInt("axis", -1), onnxAttrFloat("epsilon", b.eps()))
	}
	axes := b.constInts([]int64{1}, -1)
	mean := b.node("ReduceMean", []string{x, axes}, onnxAttrInt("keepdims", 1))
	d := b.node("Sub", []string{x, mean})
	sq := b.node("Pow", []string{d, b.constFloats(nil, 2)})
	variance := b.node("ReduceMean", []string{sq, axes}, onnxAttrInt("keepdims", 1))
	std := b.node("Sqrt", []string{b.node("Add", []string{variance, b.constFloats(nil, b.eps())})})
	n := b.node("Div", []string{d, std})
	return b.node("Add", []string{b.node("Mul", []string{n, scale}), bias})
}

// layerNormPlain is a LayerNorm without weight and bias: a
// LayerNormalization with a constant scale of ones (its scale input is
// not optional), or the decomposed form without the Mul and Add.
func (b *onnxBuilder) layerNormPlain(x string) string {
	if !b.opts.DecomposeLayerNorm {
		if b.ones == "" {
			ones := make([]float32, b.cfg.Hidden)
			for i := range ones {
				ones[i] = 1
			}
			b.ones = b.constFloats([]int64{int64(b.cfg.Hidden)}, ones...)
		}
		return b.node("LayerNormalization", []string{x, b.ones}, onnxAttrInt("axis", -1), onnxAttrFloat("epsilon", b.eps()))
	}
	axes := b.constInts([]int64{1}, -1)
	mean := b.node("ReduceMean", []string{x, axes}, onnxAttrInt("keepdims", 1))
	d := b.node("Sub", []string{x, mean})
	sq := b.node("Pow", []string{d, b.constFloats(nil, 2)})
	variance := b.node("ReduceMean", []string{sq, axes}, onnxAttrInt("keepdims", 1))
	std := b.node("Sqrt", []string{b.node("Add", []string{variance, b.constFloats(nil, b.eps())})})
	return b.node("Div", []string{d, std})
}

// producer is the model's producer_name.
func (b *onnxBuilder) producer() string {
	if b.opts.ProducerName == "" {
		return "slope export"
	}
	return b.opts.ProducerName
}

func (b *onnxBuilder) activation(x string) string {
	switch b.cfg.activation() {
	case "gelu":
		return b.node("Gelu", []string{x})
	case "gelu_new":
		return b.node("Gelu", []string{x}, onnxAttrString("approximate", "tanh"))
	case "tanh":
		return b.node("Tanh", []string{x})
	case "sigmoid":
		return b.node("Sigmoid", []string{x})
	case "silu":
		return b.node("Mul", []string{x, b.node("Sigmoid", []string{x})})
	}
	return b.node("Relu", []string{x})
}

// shared values of the graph
type onnxShared struct {
	mask, headShape, ctxShape, scale, flat, bsh string
}

func (b *onnxBuilder) attention(x, l string, s *onnxShared) string {
	q := b.linear(x, l+"self_attn.q_proj", false, false)
	q = b.node("Mul", []string{q, s.scale})
	q = b.node("Transpose", []string{b.node("Reshape", []string{q, s.headShape})}, onnxAttrInts("perm", 0, 2, 1, 3))
	k := b.linear(x, l+"self_attn.k_proj", false, false)
	k = b.node("Transpose", []string{b.node("Reshape", []string{k, s.headShape})}, onnxAttrInts("perm", 0, 2, 3, 1))
	v := b.linear(x, l+"self_attn.v_proj", false, false)
	v = b.node("Transpose", []string{b.node("Reshape", []string{v, s.headShape})}, onnxAttrInts("perm", 0, 2, 1, 3))
	scores := b.node("Add", []string{b.node("MatMul", []string{q, k}), s.mask})
	probs := b.node("Softmax", []string{scores}, onnxAttrInt("axis", -1))
	ctx := b.node("Transpose", []string{b.node("MatMul", []string{probs, v})}, onnxAttrInts("perm", 0, 2, 1, 3))
	ctx = b.node("Reshape", []string{ctx, s.ctxShape})
	return b.linear(ctx, l+"self_attn.out_proj", false, false)
}

// ffn is fc1, the activation and fc2 on x (2-D when gemm).
func (b *onnxBuilder) ffn(x, l string, gemm bool) string {
	f := b.linear(x, l+"fc1", gemm, false)
	return b.linear(b.activation(f), l+"fc2", gemm, false)
}

func (b *onnxBuilder) build() error {
	c := b.cfg
	headDim := c.Hidden / c.Heads
	ids := "input_ids"
	seq1 := b.node("Shape", []string{ids}, onnxAttrInt("start", 1), onnxAttrInt("end", 2))
	seq := b.node("Squeeze", []string{seq1, b.constInts([]int64{1}, 0)})
	pos := b.node("Range", []string{b.constInts(nil, 0), seq, b.constInts(nil, 1)})
	pos = b.node("Add", []string{pos, b.constInts(nil, 2)})
	pe := b.node("Gather", []string{b.weight("decoder.embed_positions.weight", false, ""), pos}, onnxAttrInt("axis", 0))
	te := b.node("Gather", []string{b.weight("decoder.embed_tokens.weight", false, ""), ids}, onnxAttrInt("axis", 0))
	if c.projDim() != c.Hidden {
		te = b.linear(te, "decoder.project_in", false, true)
	}
	h := b.node("Add", []string{te, pe})

	s := &onnxShared{
		headShape: b.constInts([]int64{4}, 0, 0, int64(c.Heads), int64(headDim)),
		ctxShape:  b.constInts([]int64{3}, 0, 0, int64(c.Hidden)),
		scale:     b.constFloats(nil, float32(1/math.Sqrt(float64(headDim)))),
		flat:      b.constInts([]int64{2}, -1, int64(c.Hidden)),
	}
	// The causal mask [seq, seq], built in the graph (a MaxPos x MaxPos
	// constant would grow the file with the square of the positions): 0
	// where key j <= query i, -Inf above the diagonal.
	causal := b.node("LessOrEqual", []string{
		b.node("Unsqueeze", []string{pos, b.constInts([]int64{1}, 0)}),
		b.node("Unsqueeze", []string{pos, b.constInts([]int64{1}, 1)}),
	})
	s.mask = b.node("Where", []string{causal, b.constFloats(nil, 0), b.constFloats(nil, float32(math.Inf(-1)))})
	gemm := b.opts.CanonicalWeights
	if gemm {
		s.bsh = b.node("Concat", []string{b.node("Shape", []string{ids}), b.constInts([]int64{1}, int64(c.Hidden))}, onnxAttrInt("axis", 0))
	}
	h = b.decoderLayers(h, s, gemm, func(x, l string, _ int) string { return b.attention(x, l, s) })
	return b.finish(h)
}

// decoderLayers applies the decoder layers to h, attention by attn (x,
// the layer's name prefix, the layer's index).
func (b *onnxBuilder) decoderLayers(h string, s *onnxShared, gemm bool, attn func(x, l string, i int) string) string {
	c := b.cfg
	for i := 0; i < c.Layers; i++ {
		l := "decoder.layers." + strconv.Itoa(i) + "."
		if c.PreLN {
			o := attn(b.layerNorm(h, l+"self_attn_layer_norm"), l, i)
			r := b.node("Add", []string{h, o})
			if gemm {
				r = b.node("Reshape", []string{r, s.flat})
			}
			f := b.ffn(b.layerNorm(r, l+"final_layer_norm"), l, gemm)
			h = b.node("Add", []string{r, f})
		} else {
			o := attn(h, l, i)
			r := b.layerNorm(b.node("Add", []string{h, o}), l+"self_attn_layer_norm")
			if gemm {
				r = b.node("Reshape", []string{r, s.flat})
			}
			f := b.ffn(r, l, gemm)
			h = b.layerNorm(b.node("Add", []string{r, f}), l+"final_layer_norm")
		}
		if gemm {
			h = b.node("Reshape", []string{h, s.bsh})
		}
	}
	return h
}

// onnxPastName is the name of layer i's past key or value input (kv is
// "key" or "value") of a WithPast graph.
func onnxPastName(i int, kv string) string {
	return "past_key_values." + strconv.Itoa(i) + "." + kv
}

// onnxPresentName is the name of layer i's present key or value output.
func onnxPresentName(i int, kv string) string {
	return "present." + strconv.Itoa(i) + "." + kv
}

// nodeOut appends a node with one output named out.
func (b *onnxBuilder) nodeOut(op, out string, inputs []string, attrs ...*onnxpb.AttributeProto) string {
	b.nodes = append(b.nodes, &onnxpb.NodeProto{Name: "node_" + out, OpType: op, Input: inputs, Output: []string{out}, Attribute: attrs})
	return out
}

// buildPast builds the WithPast graph: positions from the attention
// mask, an additive mask that is causal over past+seq keys and hides
// padding, and each layer's keys and values concatenated to its past.
func (b *onnxBuilder) buildPast() error {
	c := b.cfg
	headDim := c.Hidden / c.Heads
	ids, am := "input_ids", "attention_mask"
	past1 := b.node("Shape", []string{onnxPastName(0, "key")}, onnxAttrInt("start", 2), onnxAttrInt("end", 3))
	total1 := b.node("Shape", []string{am}, onnxAttrInt("start", 1), onnxAttrInt("end", 2))

	// position_ids = (cumsum(mask, 1) * mask - 1)[:, past:] + 2 (OPT's offset)
	cs := b.node("CumSum", []string{am, b.constInts(nil, 1)})
	pos := b.node("Sub", []string{b.node("Mul", []string{cs, am}), b.constInts(nil, 1)})
	pos = b.node("Slice", []string{pos, past1, total1, b.constInts([]int64{1}, 1)})
	pos = b.node("Add", []string{pos, b.constInts(nil, 2)})
	pe := b.node("Gather", []string{b.weight("decoder.embed_positions.weight", false, ""), pos}, onnxAttrInt("axis", 0))
	te := b.node("Gather", []string{b.weight("decoder.embed_tokens.weight", false, ""), ids}, onnxAttrInt("axis", 0))
	if c.projDim() != c.Hidden {
		te = b.linear(te, "decoder.project_in", false, true)
	}
	h := b.node("Add", []string{te, pe})

	// mask [batch, 1, seq, past+seq]: 0 where query t (absolute position
	// past+t) may see key j (j <= past+t and attention_mask[j] = 1), the
	// lowest float elsewhere (a fully hidden row stays finite).
	zero := b.constInts([]int64{1}, 0)
	past := b.node("Squeeze", []string{past1, zero})
	total := b.node("Squeeze", []string{total1, zero})
	qpos := b.node("Range", []string{past, total, b.constInts(nil, 1)})
	kpos := b.node("Range", []string{b.constInts(nil, 0), total, b.constInts(nil, 1)})
	causal := b.node("LessOrEqual", []string{
		b.node("Unsqueeze", []string{kpos, b.constInts([]int64{1}, 0)}),
		b.node("Unsqueeze", []string{qpos, b.constInts([]int64{1}, 1)}),
	})
	keep := b.node("Cast", []string{am}, onnxAttrInt("to", int64(onnxpb.TensorProto_BOOL)))
	keep = b.node("Unsqueeze", []string{keep, b.constInts([]int64{2}, 1, 2)})
	allowed := b.node("And", []string{causal, keep})
	s := &onnxShared{
		headShape: b.constInts([]int64{4}, 0, 0, int64(c.Heads), int64(headDim)),
		ctxShape:  b.constInts([]int64{3}, 0, 0, int64(c.Hidden)),
		scale:     b.constFloats(nil, float32(1/math.Sqrt(float64(headDim)))),
	}
	s.mask = b.node("Where", []string{allowed, b.constFloats(nil, 0), b.constFloats(nil, -math.MaxFloat32)})
	gemm := b.opts.CanonicalWeights
	if gemm {
		s.flat = b.constInts([]int64{2}, -1, int64(c.Hidden))
		s.bsh = b.node("Concat", []string{b.node("Shape", []string{ids}), b.constInts([]int64{1}, int64(c.Hidden))}, onnxAttrInt("axis", 0))
	}
	h = b.decoderLayers(h, s, gemm, func(x, l string, i int) string { return b.attentionPast(x, l, i, s) })
	return b.finish(h)
}

// attentionPast is attention over layer i's past keys and values and the
// new ones, whose concatenations are the present outputs.
func (b *onnxBuilder) attentionPast(x, l string, i int, s *onnxShared) string {
	heads := func(v string) string {
		return b.node("Transpose", []string{b.node("Reshape", []string{v, s.headShape})}, onnxAttrInts("perm", 0, 2, 1, 3))
	}
	q := b.linear(x, l+"self_attn.q_proj", false, false)
	q = heads(b.node("Mul", []string{q, s.scale}))
	k := heads(b.linear(x, l+"self_attn.k_proj", false, false))
	k = b.nodeOut("Concat", onnxPresentName(i, "key"), []string{onnxPastName(i, "key"), k}, onnxAttrInt("axis", 2))
	v := heads(b.linear(x, l+"self_attn.v_proj", false, false))
	v = b.nodeOut("Concat", onnxPresentName(i, "value"), []string{onnxPastName(i, "value"), v}, onnxAttrInt("axis", 2))
	kt := b.node("Transpose", []string{k}, onnxAttrInts("perm", 0, 1, 3, 2))
	scores := b.node("Add", []string{b.node("MatMul", []string{q, kt}), s.mask})
	probs := b.node("Softmax", []string{scores}, onnxAttrInt("axis", -1))
	ctx := b.node("Transpose", []string{b.node("MatMul", []string{probs, v})}, onnxAttrInts("perm", 0, 2, 1, 3))
	ctx = b.node("Reshape", []string{ctx, s.ctxShape})
	return b.linear(ctx, l+"self_attn.out_proj", false, false)
}

// finish applies the final LayerNorm, project_out and the LM head to h
// and names the result logits.
func (b *onnxBuilder) finish(h string) error {
	c := b.cfg
	if c.PreLN && !c.RemoveFinalLayerNorm {
		h = b.layerNorm(h, "decoder.final_layer_norm")
	}
	if c.projDim() != c.Hidden {
		h = b.linear(h, "decoder.project_out", false, true)
	}
	switch {
	case !c.Tied:
		h = b.linear(h, "lm_head", false, true)
	case b.opts.CopyTiedHead && !b.opts.CanonicalWeights:
		h = b.node("MatMul", []string{h, b.weight("decoder.embed_tokens.weight", true, ".lm_head_copy")})
	case b.opts.CopyTiedHead:
		wt := b.node("Transpose", []string{b.weight("decoder.embed_tokens.weight", false, ".lm_head_copy")}, onnxAttrInts("perm", 1, 0))
		h = b.node("MatMul", []string{h, wt})
	default:
		wt := b.node("Transpose", []string{b.weight("decoder.embed_tokens.weight", false, "")}, onnxAttrInts("perm", 1, 0))
		h = b.node("MatMul", []string{h, wt})
	}
	last := b.nodes[len(b.nodes)-1]
	if last.Output[0] != h {
		return fmt.Errorf("internal: the LM head is not the last node")
	}
	last.Output[0] = "logits"
	return b.err
}

func onnxValueInfo(name string, elem onnxpb.TensorProto_DataType, dims ...any) *onnxpb.ValueInfoProto {
	shape := &onnxpb.TensorShapeProto{}
	for _, d := range dims {
		dim := &onnxpb.TensorShapeProto_Dimension{}
		switch d := d.(type) {
		case int:
			dim.Value = &onnxpb.TensorShapeProto_Dimension_DimValue{DimValue: int64(d)}
		case string:
			dim.Value = &onnxpb.TensorShapeProto_Dimension_DimParam{DimParam: d}
		}
		shape.Dim = append(shape.Dim, dim)
	}
	return &onnxpb.ValueInfoProto{Name: name, Type: &onnxpb.TypeProto{
		Value: &onnxpb.TypeProto_TensorType{TensorType: &onnxpb.TypeProto_Tensor{ElemType: int32(elem), Shape: shape}},
	}}
}

func (b *onnxBuilder) model() *onnxpb.ModelProto {
	inputs := []*onnxpb.ValueInfoProto{onnxValueInfo("input_ids", onnxpb.TensorProto_INT64, "batch", "seq")}
	outputs := []*onnxpb.ValueInfoProto{onnxValueInfo("logits", onnxpb.TensorProto_FLOAT, "batch", "seq", b.cfg.Vocab)}
	if b.opts.WithPast {
		inputs = append(inputs, onnxValueInfo("attention_mask", onnxpb.TensorProto_INT64, "batch", "total_seq"))
		heads, headDim := b.cfg.Heads, b.cfg.Hidden/b.cfg.Heads
		for i := 0; i < b.cfg.Layers; i++ {
			for _, kv := range []string{"key", "value"} {
				inputs = append(inputs, onnxValueInfo(onnxPastName(i, kv), onnxpb.TensorProto_FLOAT, "batch", heads, "past_seq", headDim))
				outputs = append(outputs, onnxValueInfo(onnxPresentName(i, kv), onnxpb.TensorProto_FLOAT, "batch", heads, "total_seq", headDim))
			}
		}
	}
	return &onnxpb.ModelProto{
		IrVersion:    10,
		OpsetImport:  []*onnxpb.OperatorSetIdProto{{Domain: "", Version: ONNXOpset}},
		ProducerName: b.producer(),
		Graph: &onnxpb.GraphProto{
			Name:        "opt",
			Node:        b.nodes,
			Initializer: b.inits,
			Input:       inputs,
			Output:      outputs,
		},
	}
}
