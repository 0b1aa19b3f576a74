package convert

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
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

// MaxONNXFile caps the size of an .onnx file (protobuf's own limit is
// 2 GiB; larger models keep their weights in external data files).
const MaxONNXFile = 2 << 30

// ErrONNX is wrapped by every error about a malformed or unsafe ONNX
// model: not a ModelProto, bad initializer data, external data that is
// out of bounds or outside the model's directory.
var ErrONNX = errors.New("invalid ONNX model")

// ErrONNXGraph is wrapped when an ONNX graph is well formed but is not
// recognised as an OPT causal LM (a piece missing or of the wrong shape),
// or disagrees with the config.json beside it.
var ErrONNXGraph = errors.New("ONNX graph not recognised as OPT")

// SourceFile formats of an ONNX source.
const (
	sourceFormatONNX         = "onnx"
	sourceFormatONNXExternal = "onnx_external_data"
	sourceFormatONNXConfig   = "json"
)

// onnxConfigName is the config.json looked for beside the model.
const onnxConfigName = "config.json"

// onnxMaxRank caps the rank of an initializer.
const onnxMaxRank = 8

// onnxInit is one initializer (or Constant node value) of the graph. The
// proto is kept; data is decoded on demand. ext is set for external data.
type onnxInit struct {
	name  string
	t     *onnxpb.TensorProto
	dtype onnxpb.TensorProto_DataType
	dims  []int
	numel int
	ext   *onnxExtRef
}

// onnxExtRef locates an initializer's bytes in an external data file.
type onnxExtRef struct {
	file           *onnxExtFile
	offset, length int64
}

type onnxExtFile struct {
	location string // as written in the model
	path     string // resolved path
	f        *os.File
	size     int64
}

// onnxWeightRef is where a canonical weight comes from: an initializer,
// transposed when the graph stores it [in, out].
type onnxWeightRef struct {
	init      *onnxInit
	transpose bool
	shape     []int // canonical
}

// onnxSource is a Source reading an ONNX model.
type onnxSource struct {
	path     string
	dir      string
	cfg      *slopepb.OPTConfig
	names    []string
	weights  map[string]*onnxWeightRef
	files    []*slopepb.SourceFile
	warnings []string
	extFiles []*onnxExtFile
}

// OpenONNX opens an ONNX export of an OPT causal LM (as written by
// torch.onnx.export, dynamo or legacy). The OPT structure is recognised
// from the graph's data flow, not from initializer names: the embeddings
// are the Gathers of input_ids and of the positions, the layers follow
// the residual stream from the embeddings' sum, q/k/v are told apart by
// how they reach the attention MatMuls, and a weight's orientation comes
// from the op that reads it (MatMul reads [in, out], Gemm's transB,
// Transpose nodes). The config is inferred from the graph; a config.json
// in the model's directory is parsed and must agree with it, and then
// supplies the token ids (else OPT's defaults: pad 1, bos 2, eos 2).
//
// Initializers may be inline or in external data files, which must lie
// inside the model's directory; external tensors are read only when
// Tensor asks for them.
func OpenONNX(path string) (Source, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file: %w", path, ErrONNX)
	}
	if st.Size() > MaxONNXFile {
		return nil, fmt.Errorf("%s: %d bytes, more than the %d an ONNX model file may have: %w", path, st.Size(), int64(MaxONNXFile), ErrONNX)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	data, err := io.ReadAll(io.LimitReader(f, MaxONNXFile+1))
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if int64(len(data)) > MaxONNXFile {
		return nil, fmt.Errorf("%s: more than %d bytes: %w", path, int64(MaxONNXFile), ErrONNX)
	}
	var m onnxpb.ModelProto
	if err := proto.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("%s: not an ONNX ModelProto: %v: %w", path, err, ErrONNX)
	}
	if m.Graph == nil || len(m.Graph.Node) == 0 {
		return nil, fmt.Errorf("%s: no graph (not an ONNX model?): %w", path, ErrONNX)
	}
	sum := sha256.Sum256(data)
	s := &onnxSource{path: path, dir: filepath.Dir(path), weights: map[string]*onnxWeightRef{}}
	s.files = append(s.files, &slopepb.SourceFile{Path: path, Size: uint64(len(data)), Sha256: hex.EncodeToString(sum[:]), Format: sourceFormatONNX})
	if err := s.open(&m); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

func (s *onnxSource) open(m *onnxpb.ModelProto) error {
	inits := map[string]*onnxInit{}
	for i, t := range m.Graph.Initializer {
		if t.Name == "" {
			return fmt.Errorf("%s: initializer #%d has no name: %w", s.path, i, ErrONNX)
		}
		if _, dup := inits[t.Name]; dup {
			return fmt.Errorf("%s: initializer %q defined twice: %w", s.path, t.Name, ErrONNX)
		}
		in, err := s.newInit(t.Name, t, true)
		if err != nil {
			return err
		}
		inits[t.Name] = in
	}
	var fileCfg *slopepb.OPTConfig
	cfgPath := filepath.Join(s.dir, onnxConfigName)
	cfgBytes, err := readCapped(os.DirFS(s.dir), onnxConfigName, maxConfigJSON)
	switch {
	case err == nil:
		fileCfg, err = ParseOPTConfig(cfgPath, cfgBytes)
		if err != nil {
			return err
		}
	case !errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("%s: %w", cfgPath, err)
	}

	g, err := newONNXGraph(s, m.Graph, inits)
	if err != nil {
		return err
	}
	rec, err := g.recognise()
	if err != nil {
		return withUndefinedInputs(err, m.Graph)
	}
	cfg, err := s.settleConfig(rec, fileCfg, cfgPath)
	if err != nil {
		return err
	}
	s.cfg = cfg
	if err := s.mapWeights(rec); err != nil {
		return err
	}
	s.warnings = append(s.warnings, rec.warnings...)
	if fileCfg != nil {
		sum := sha256.Sum256(cfgBytes)
		s.files = append(s.files, &slopepb.SourceFile{Path: cfgPath, Size: uint64(len(cfgBytes)), Sha256: hex.EncodeToString(sum[:]), Format: sourceFormatONNXConfig})
	}
	for _, ef := range s.extFiles {
		sf, err := onnxHashFile(ef)
		if err != nil {
			return err
		}
		s.files = append(s.files, sf)
	}
	return nil
}

// withUndefinedInputs adds to a recognition error the first inputs that
// nodes read and nothing defines (no initializer, graph input or node
// output): a missing weight otherwise shows only as a pattern that was
// not recognised.
func withUndefinedInputs(err error, g *onnxpb.GraphProto) error {
	defined := map[string]bool{}
	for _, t := range g.Initializer {
		defined[t.Name] = true
	}
	for _, in := range g.Input {
		defined[in.Name] = true
	}
	for _, n := range g.Node {
		for _, o := range n.Output {
			defined[o] = true
		}
	}
	var missing []string
	for _, n := range g.Node {
		for _, in := range n.Input {
			if in != "" && !defined[in] {
				defined[in] = true // name it once
				if missing = append(missing, fmt.Sprintf("%q (read by node %q)", in, n.Name)); len(missing) == 3 {
					return fmt.Errorf("%w; undefined inputs, first 3: %s", err, strings.Join(missing, ", "))
				}
			}
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w; undefined inputs: %s", err, strings.Join(missing, ", "))
	}
	return err
}

// newInit checks an initializer's dims and, for external data, its
// location and bounds. allowExternal is false for Constant node values.
func (s *onnxSource) newInit(name string, t *onnxpb.TensorProto, allowExternal bool) (*onnxInit, error) {
	in := &onnxInit{name: name, t: t, dtype: onnxpb.TensorProto_DataType(t.DataType), numel: 1}
	if len(t.Dims) > onnxMaxRank {
		return nil, fmt.Errorf("%s: initializer %q has rank %d, more than %d: %w", s.path, name, len(t.Dims), onnxMaxRank, ErrONNX)
	}
	for _, d := range t.Dims {
		if d < 0 || d > math.MaxInt32 {
			return nil, fmt.Errorf("%s: initializer %q has dims %v: %w", s.path, name, t.Dims, ErrONNX)
		}
		if d != 0 && int64(in.numel) > min(1<<40, int64(math.MaxInt))/d {
			return nil, fmt.Errorf("%s: initializer %q has dims %v: too many elements: %w", s.path, name, t.Dims, ErrONNX)
		}
		in.dims = append(in.dims, int(d))
		in.numel *= int(d)
	}
	if t.Segment != nil {
		return nil, fmt.Errorf("%s: initializer %q is a segment of a tensor, which is not supported: %w", s.path, name, ErrONNX)
	}
	if t.DataLocation != onnxpb.TensorProto_EXTERNAL {
		return in, nil
	}
	if !allowExternal {
		return nil, fmt.Errorf("%s: constant %q has external data, which is not supported: %w", s.path, name, ErrONNX)
	}
	ext, err := s.externalRef(in)
	if err != nil {
		return nil, err
	}
	in.ext = ext
	return in, nil
}

// onnxElemSize is the byte size of one element of the dtypes whose data
// can be external; 0 for the others.
func onnxElemSize(dt onnxpb.TensorProto_DataType) int {
	switch dt {
	case onnxpb.TensorProto_FLOAT, onnxpb.TensorProto_INT32, onnxpb.TensorProto_UINT32:
		return 4
	case onnxpb.TensorProto_FLOAT16, onnxpb.TensorProto_BFLOAT16, onnxpb.TensorProto_INT16, onnxpb.TensorProto_UINT16:
		return 2
	case onnxpb.TensorProto_INT8, onnxpb.TensorProto_UINT8, onnxpb.TensorProto_BOOL:
		return 1
	case onnxpb.TensorProto_INT64, onnxpb.TensorProto_UINT64, onnxpb.TensorProto_DOUBLE, onnxpb.TensorProto_COMPLEX64:
		return 8
	case onnxpb.TensorProto_COMPLEX128:
		return 16
	}
	return 0
}

// externalRef parses an initializer's external_data entries, checks that
// the location stays inside the model's directory (no absolute path, no
// "..", no symlink leading out) and that the byte range lies in the file
// and matches the dims.
func (s *onnxSource) externalRef(in *onnxInit) (*onnxExtRef, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%s: initializer %q: external data %s: %w", s.path, in.name, fmt.Sprintf(format, args...), ErrONNX)
	}
	var location string
	var offset, length int64 = 0, -1
	seen := map[string]bool{}
	for _, e := range in.t.ExternalData {
		if seen[e.Key] {
			return nil, bad("key %q given twice", e.Key)
		}
		seen[e.Key] = true
		switch e.Key {
		case "location":
			location = e.Value
		case "offset", "length":
			n, err := strconv.ParseInt(e.Value, 10, 64)
			if err != nil || n < 0 {
				return nil, bad("%s %q is not a non-negative integer", e.Key, e.Value)
			}
			if e.Key == "offset" {
				offset = n
			} else {
				length = n
			}
		}
	}
	if location == "" {
		return nil, bad("has no location")
	}
	ef, err := s.externalFile(location)
	if err != nil {
		return nil, bad("location %q: %v", location, err)
	}
	es := onnxElemSize(in.dtype)
	want := int64(-1)
	if es > 0 {
		want = int64(in.numel) * int64(es)
	}
	if length < 0 {
		if want < 0 {
			return nil, bad("has no length and dtype %s has no fixed size", in.dtype)
		}
		length = want
	}
	if want >= 0 && length != want {
		return nil, bad("length %d does not match dims %v of %s (%d bytes)", length, in.dims, in.dtype, want)
	}
	if offset > ef.size || length > ef.size-offset {
		return nil, bad("%d bytes at offset %d lie past the end of %s (%d bytes)", length, offset, location, ef.size)
	}
	return &onnxExtRef{file: ef, offset: offset, length: length}, nil
}

// externalFile resolves and opens an external data location, once per
// file.
func (s *onnxSource) externalFile(location string) (*onnxExtFile, error) {
	for _, ef := range s.extFiles {
		if ef.location == location {
			return ef, nil
		}
	}
	if filepath.IsAbs(location) || strings.HasPrefix(location, "/") || strings.HasPrefix(location, `\`) || filepath.VolumeName(location) != "" {
		return nil, errors.New("is an absolute path; it must be relative to the model's directory")
	}
	for _, part := range strings.FieldsFunc(location, func(r rune) bool { return r == '/' || r == '\\' }) {
		if part == ".." {
			return nil, errors.New(`has a ".." component; it must stay inside the model's directory`)
		}
	}
	if strings.ContainsRune(location, 0) {
		return nil, errors.New("contains a NUL byte")
	}
	realDir, err := filepath.EvalSymlinks(s.dir)
	if err != nil {
		return nil, err
	}
	realDir, err = filepath.Abs(realDir)
	if err != nil {
		return nil, err
	}
	realPath, err := filepath.EvalSymlinks(filepath.Join(s.dir, filepath.FromSlash(location)))
	if err != nil {
		return nil, err
	}
	realPath, err = filepath.Abs(realPath)
	if err != nil {
		return nil, err
	}
	rel, err := filepath.Rel(realDir, realPath)
	if err != nil || rel == "." || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) || filepath.IsAbs(rel) {
		return nil, fmt.Errorf("resolves to %s, outside the model's directory %s", realPath, realDir)
	}
	f, st, err := openRegularFile(realPath, ErrONNX)
	if err != nil {
		return nil, err
	}
	ef := &onnxExtFile{location: location, path: filepath.Join(s.dir, filepath.FromSlash(location)), f: f, size: st.Size()}
	s.extFiles = append(s.extFiles, ef)
	return ef, nil
}

func onnxHashFile(ef *onnxExtFile) (*slopepb.SourceFile, error) {
	h := sha256.New()
	n, err := io.Copy(h, io.NewSectionReader(ef.f, 0, ef.size))
	if err != nil {
		return nil, fmt.Errorf("hash %s: %w", ef.path, err)
	}
	return &slopepb.SourceFile{Path: ef.path, Size: uint64(n), Sha256: hex.EncodeToString(h.Sum(nil)), Format: sourceFormatONNXExternal}, nil
}

// rawBytes returns an initializer's raw little-endian bytes (external data
// or raw_data), or nil when the data is in a typed field.
func (s *onnxSource) rawBytes(in *onnxInit) ([]byte, error) {
	if in.ext != nil {
		b := make([]byte, in.ext.length)
		if _, err := in.ext.file.f.ReadAt(b, in.ext.offset); err != nil {
			return nil, fmt.Errorf("%s: initializer %q: read %s at %d: %w", s.path, in.name, in.ext.file.path, in.ext.offset, err)
		}
		return b, nil
	}
	if len(in.t.RawData) > 0 {
		return in.t.RawData, nil
	}
	return nil, nil
}

// onnxFloatDType maps the ONNX dtypes a weight may have to the
// converter's.
func onnxFloatDType(dt onnxpb.TensorProto_DataType) (slopepb.DType, bool) {
	switch dt {
	case onnxpb.TensorProto_FLOAT:
		return slopepb.DType_FLOAT32, true
	case onnxpb.TensorProto_FLOAT16:
		return slopepb.DType_FLOAT16, true
	case onnxpb.TensorProto_BFLOAT16:
		return slopepb.DType_BFLOAT16, true
	}
	return slopepb.DType_DTYPE_UNSPECIFIED, false
}

// floats decodes a FLOAT, FLOAT16 or BFLOAT16 initializer to float32.
func (s *onnxSource) floats(in *onnxInit) ([]float32, error) {
	dt, ok := onnxFloatDType(in.dtype)
	if !ok {
		return nil, fmt.Errorf("%s: initializer %q has dtype %s; want FLOAT, FLOAT16 or BFLOAT16: %w", s.path, in.name, in.dtype, ErrONNX)
	}
	raw, err := s.rawBytes(in)
	if err != nil {
		return nil, err
	}
	// Check the stored count before allocating: dims alone may claim more
	// than the file holds.
	if raw != nil {
		es := onnxElemSize(in.dtype)
		if len(raw)%es != 0 || len(raw)/es != in.numel {
			return nil, fmt.Errorf("%s: initializer %q has %d bytes of data for dims %v of %s (%d bytes): %w",
				s.path, in.name, len(raw), in.dims, in.dtype, in.numel*es, ErrONNX)
		}
		out := make([]float32, in.numel)
		if err := format.DecodeFloats(dt, raw, out); err != nil {
			return nil, fmt.Errorf("%s: initializer %q (dims %v): %v: %w", s.path, in.name, in.dims, err, ErrONNX)
		}
		return out, nil
	}
	stored := len(in.t.Int32Data)
	if in.dtype == onnxpb.TensorProto_FLOAT {
		stored = len(in.t.FloatData)
	}
	if stored != in.numel {
		return nil, fmt.Errorf("%s: initializer %q has %d values for dims %v (%d elements): %w", s.path, in.name, stored, in.dims, in.numel, ErrONNX)
	}
	out := make([]float32, in.numel)
	switch in.dtype {
	case onnxpb.TensorProto_FLOAT:
		copy(out, in.t.FloatData)
	default: // FLOAT16, BFLOAT16: the bits are stored in int32_data
		for i, v := range in.t.Int32Data {
			if v < 0 || v > math.MaxUint16 {
				return nil, fmt.Errorf("%s: initializer %q: int32_data[%d] = %d is not a 16-bit pattern: %w", s.path, in.name, i, v, ErrONNX)
			}
			if in.dtype == onnxpb.TensorProto_FLOAT16 {
				out[i] = format.Float16ToFloat32(uint16(v))
			} else {
				out[i] = format.BFloat16ToFloat32(uint16(v))
			}
		}
	}
	return out, nil
}

// onnxMaxConst caps the elements of a tensor read as a constant (shape
// vectors, scalars).
const onnxMaxConst = 64

// constValues reads a small numeric tensor (a shape vector or a scalar)
// as float64. ok is false for tensors that are too large or of another
// dtype.
func (s *onnxSource) constValues(in *onnxInit) ([]float64, bool) {
	if in.numel > onnxMaxConst {
		return nil, false
	}
	raw, err := s.rawBytes(in)
	if err != nil {
		return nil, false
	}
	out := make([]float64, in.numel)
	t := in.t
	switch in.dtype {
	case onnxpb.TensorProto_INT64:
		if raw != nil {
			if len(raw) != 8*in.numel {
				return nil, false
			}
			for i := range out {
				out[i] = float64(int64(binary.LittleEndian.Uint64(raw[8*i:])))
			}
			return out, true
		}
		if len(t.Int64Data) != in.numel {
			return nil, false
		}
		for i, v := range t.Int64Data {
			out[i] = float64(v)
		}
	case onnxpb.TensorProto_INT32:
		if raw != nil {
			if len(raw) != 4*in.numel {
				return nil, false
			}
			for i := range out {
				out[i] = float64(int32(binary.LittleEndian.Uint32(raw[4*i:])))
			}
			return out, true
		}
		if len(t.Int32Data) != in.numel {
			return nil, false
		}
		for i, v := range t.Int32Data {
			out[i] = float64(v)
		}
	case onnxpb.TensorProto_DOUBLE:
		if raw != nil {
			if len(raw) != 8*in.numel {
				return nil, false
			}
			for i := range out {
				out[i] = math.Float64frombits(binary.LittleEndian.Uint64(raw[8*i:]))
			}
			return out, true
		}
		if len(t.DoubleData) != in.numel {
			return nil, false
		}
		copy(out, t.DoubleData)
	case onnxpb.TensorProto_FLOAT, onnxpb.TensorProto_FLOAT16, onnxpb.TensorProto_BFLOAT16:
		f, err := s.floats(in)
		if err != nil {
			return nil, false
		}
		for i, v := range f {
			out[i] = float64(v)
		}
	default:
		return nil, false
	}
	return out, true
}

// settleConfig builds the inferred config and checks it against
// config.json when there is one, whose config is then returned (it has
// the token ids the graph cannot tell).
func (s *onnxSource) settleConfig(r *onnxRecognised, fileCfg *slopepb.OPTConfig, cfgPath string) (*slopepb.OPTConfig, error) {
	inf := &slopepb.OPTConfig{
		VocabSize: int64(r.vocab), HiddenSize: int64(r.hidden), NumHiddenLayers: int64(len(r.layers)),
		NumAttentionHeads: int64(r.heads), FfnDim: int64(r.ffn), MaxPositionEmbeddings: int64(r.positions - PositionOffset),
		WordEmbedProjDim: int64(r.projDim), DoLayerNormBefore: r.preLN, RemoveFinalLayerNorm: r.preLN && r.finalLN == nil,
		EnableBias: r.bias, LayerNormElementwiseAffine: true, ActivationFunction: r.activation,
		TieWordEmbeddings: r.tied, PadTokenId: 1, BosTokenId: 2, EosTokenId: 2, LayerNormEps: r.eps,
	}
	if fileCfg == nil {
		return inf, nil
	}
	var diffs []string
	ints := []struct {
		field      string
		file, inf  int64
		whatInfers string
	}{
		{"vocab_size", fileCfg.VocabSize, inf.VocabSize, "rows of the token embedding"},
		{"hidden_size", fileCfg.HiddenSize, inf.HiddenSize, "columns of the position embedding"},
		{"num_hidden_layers", fileCfg.NumHiddenLayers, inf.NumHiddenLayers, "decoder layers in the graph"},
		{"num_attention_heads", fileCfg.NumAttentionHeads, inf.NumAttentionHeads, "heads of the attention reshapes"},
		{"ffn_dim", fileCfg.FfnDim, inf.FfnDim, "outputs of fc1"},
		{"max_position_embeddings", fileCfg.MaxPositionEmbeddings, inf.MaxPositionEmbeddings, "rows of the position embedding - 2"},
		{"word_embed_proj_dim", fileCfg.WordEmbedProjDim, inf.WordEmbedProjDim, "columns of the token embedding"},
	}
	for _, f := range ints {
		if f.file != f.inf {
			diffs = append(diffs, fmt.Sprintf("%s is %d, the graph has %d (%s)", f.field, f.file, f.inf, f.whatInfers))
		}
	}
	bools := []struct {
		field     string
		file, inf bool
	}{
		{"do_layer_norm_before", fileCfg.DoLayerNormBefore, inf.DoLayerNormBefore},
		{"enable_bias", fileCfg.EnableBias, inf.EnableBias},
		{"layer_norm_elementwise_affine", fileCfg.LayerNormElementwiseAffine, inf.LayerNormElementwiseAffine},
	}
	for _, f := range bools {
		if f.file != f.inf {
			diffs = append(diffs, fmt.Sprintf("%s is %v, the graph has %v", f.field, f.file, f.inf))
		}
	}
	if fileCfg.DoLayerNormBefore == inf.DoLayerNormBefore && hasFinalLayerNorm(fileCfg) != (r.finalLN != nil) {
		if r.finalLN != nil {
			diffs = append(diffs, "_remove_final_layer_norm is true, the graph has a final LayerNorm")
		} else {
			diffs = append(diffs, "_remove_final_layer_norm is false, the graph has no final LayerNorm")
		}
	}
	if Activations[fileCfg.ActivationFunction] != Activations[inf.ActivationFunction] {
		diffs = append(diffs, fmt.Sprintf("activation_function is %q, the graph computes %q", fileCfg.ActivationFunction, inf.ActivationFunction))
	}
	if fileCfg.TieWordEmbeddings && !r.tied {
		diffs = append(diffs, fmt.Sprintf("tie_word_embeddings is true, but the graph's LM head (initializer %q) differs from the token embedding (initializer %q)",
			r.head.init.name, r.embedTokens.init.name))
	}
	if len(diffs) > 0 {
		return nil, fmt.Errorf("%s: does not match %s: %s: %w", s.path, cfgPath, strings.Join(diffs, "; "), ErrONNXGraph)
	}
	cfg := proto.Clone(fileCfg).(*slopepb.OPTConfig)
	cfg.LayerNormEps = r.eps
	return cfg, nil
}

// mapWeights assigns the recognised initializers to the canonical names
// of the config and checks every shape and dtype.
func (s *onnxSource) mapWeights(r *onnxRecognised) error {
	refs := map[string]*onnxWeightRef{}
	set := func(name string, w *onnxWeightRef) {
		if w != nil {
			refs[name] = w
		}
	}
	set("decoder.embed_tokens.weight", r.embedTokens)
	set("decoder.embed_positions.weight", r.embedPositions)
	set("decoder.project_in.weight", r.projectIn)
	set("decoder.project_out.weight", r.projectOut)
	if r.finalLN != nil {
		set("decoder.final_layer_norm.weight", r.finalLN.scale)
		set("decoder.final_layer_norm.bias", r.finalLN.bias)
	}
	if !s.cfg.TieWordEmbeddings {
		set("lm_head.weight", r.head)
	}
	for i, l := range r.layers {
		p := LayerPrefix(i)
		set(p+"self_attn_layer_norm.weight", l.attnLN.scale)
		set(p+"self_attn_layer_norm.bias", l.attnLN.bias)
		set(p+"final_layer_norm.weight", l.ffnLN.scale)
		set(p+"final_layer_norm.bias", l.ffnLN.bias)
		for _, lin := range []struct {
			name string
			l    *onnxLinear
		}{{"self_attn.q_proj", l.q}, {"self_attn.k_proj", l.k}, {"self_attn.v_proj", l.v}, {"self_attn.out_proj", l.out}, {"fc1", l.fc1}, {"fc2", l.fc2}} {
			set(p+lin.name+".weight", lin.l.weight)
			set(p+lin.name+".bias", lin.l.bias)
		}
	}
	var missing []string
	for _, w := range OPTWeights(s.cfg) {
		ref, ok := refs[w.Name]
		if !ok {
			missing = append(missing, w.Name)
			continue
		}
		if !slices.Equal(ref.shape, w.Shape) {
			return fmt.Errorf("%s: initializer %q, recognised as %s, has shape %v in canonical orientation, want %v: %w",
				s.path, ref.init.name, w.Name, ref.shape, w.Shape, ErrONNXGraph)
		}
		if _, ok := onnxFloatDType(ref.init.dtype); !ok {
			return fmt.Errorf("%s: initializer %q, recognised as %s, has dtype %s; want FLOAT, FLOAT16 or BFLOAT16: %w",
				s.path, ref.init.name, w.Name, ref.init.dtype, ErrONNX)
		}
		s.weights[w.Name] = ref
		s.names = append(s.names, w.Name)
		delete(refs, w.Name)
	}
	if len(missing) > 0 {
		return fmt.Errorf("%s: the graph has no weight for %s: %w", s.path, strings.Join(missing, ", "), ErrONNXGraph)
	}
	for name := range refs {
		// Only bias-less or affine-less configs can leave these: the graph
		// had them but the config has no place for them.
		return fmt.Errorf("%s: the graph has a weight for %s, which the config has no place for: %w", s.path, name, ErrONNXGraph)
	}
	return nil
}

func (s *onnxSource) Config() *slopepb.OPTConfig   { return s.cfg }
func (s *onnxSource) Names() []string              { return slices.Clone(s.names) }
func (s *onnxSource) Files() []*slopepb.SourceFile { return s.files }
func (s *onnxSource) Warnings() []string           { return slices.Clone(s.warnings) }

func (s *onnxSource) Close() error {
	var first error
	for _, ef := range s.extFiles {
		if ef.f != nil {
			if err := ef.f.Close(); err != nil && first == nil {
				first = err
			}
			ef.f = nil
		}
	}
	return first
}

func (s *onnxSource) Tensor(name string) (*Tensor, error) {
	ref, ok := s.weights[name]
	if !ok {
		return nil, fmt.Errorf("%s: no weight %q", s.path, name)
	}
	if ref.init.ext != nil && ref.init.ext.file.f == nil {
		return nil, fmt.Errorf("%s: weight %q: source is closed", s.path, name)
	}
	dt, _ := onnxFloatDType(ref.init.dtype)
	data, err := s.weightData(ref)
	if err != nil {
		return nil, err
	}
	return &Tensor{Name: name, SourceName: ref.init.name, DType: dt, Shape: slices.Clone(ref.shape), Data: data}, nil
}

// weightData decodes a weight in canonical orientation.
func (s *onnxSource) weightData(ref *onnxWeightRef) ([]float32, error) {
	data, err := s.floats(ref.init)
	if err != nil {
		return nil, err
	}
	if !ref.transpose {
		return data, nil
	}
	rows, cols := ref.init.dims[0], ref.init.dims[1]
	t := make([]float32, len(data))
	for r := 0; r < rows; r++ {
		for c := 0; c < cols; c++ {
			t[c*rows+r] = data[r*cols+c]
		}
	}
	return t, nil
}
