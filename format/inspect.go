package format

import (
	"fmt"
	"math"
	"strconv"

	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/slopeml/slope/format/slopepb"
)

// TensorSummary describes one entry of the tensor table: what it is, how
// it is stored, and what it costs next to a dense fp16 tensor of the same
// logical shape.
type TensorSummary struct {
	Name string `json:"name"`
	// Shape is the logical shape (for N:M encodings the dense [rows, cols]).
	Shape []uint64 `json:"shape"`
	// DType, Encoding and Compression are the manifest's enum names
	// (e.g. "FLOAT16", "NM", "COMPRESSION_NONE").
	DType    string `json:"dtype"`
	Encoding string `json:"encoding"`
	// Pattern is the N:M pattern ("2:4") of N:M encodings, "" otherwise.
	Pattern     string `json:"pattern,omitempty"`
	Compression string `json:"compression"`
	// TransposeOf is the NM weight an NM_TRANSPOSE_* tensor transposes.
	TransposeOf string `json:"transpose_of,omitempty"`
	// AdapterOf and AdapterFactor ("L" or "R") describe a LOW_RANK factor;
	// AdapterMerged marks the R of the merged layout (its L is in the
	// weight's extra rows; there is no L tensor).
	AdapterOf     string `json:"adapter_of,omitempty"`
	AdapterFactor string `json:"adapter_factor,omitempty"`
	AdapterMerged bool   `json:"adapter_merged,omitempty"`
	// MomentOf is the parameter whose AdamW moment a training
	// checkpoint's tensor is (its optimizer slots name it).
	MomentOf string `json:"moment_of,omitempty"`
	// StoredBytes is the length in the file (compressed when compressed);
	// RawBytes the length of the raw encoding.
	StoredBytes uint64 `json:"stored_bytes"`
	RawBytes    uint64 `json:"raw_bytes"`
	// DenseFP16Bytes is 2 bytes per element of the logical shape: what the
	// tensor would take in a dense fp16 model (a tensor that is not floats,
	// such as a tokenizer file, its own raw size). A weight of the merged
	// adapter layout, [out + r, in], counts its out * in elements: the r
	// rows of Lᵀ are adapter overhead. It is 0 for the auxiliary encodings
	// NM_TRANSPOSE_MASK and NM_TRANSPOSE_MATERIALIZED, for LOW_RANK adapter
	// factors and for optimizer moments, which a dense model does not have:
	// their bytes are overhead.
	DenseFP16Bytes uint64 `json:"dense_fp16_bytes"`
	// RatioToFP16 is StoredBytes / DenseFP16Bytes, 0 when DenseFP16Bytes is 0.
	RatioToFP16 float64 `json:"ratio_to_fp16"`
	// Offset is the absolute file offset of the stored bytes.
	Offset uint64 `json:"offset"`
}

// Totals add up the tensor table.
type Totals struct {
	Tensors        int    `json:"tensors"`
	StoredBytes    uint64 `json:"stored_bytes"`
	DenseFP16Bytes uint64 `json:"dense_fp16_bytes"`
	// Ratio is StoredBytes / DenseFP16Bytes (every stored byte, auxiliary
	// tensors included), 0 when DenseFP16Bytes is 0.
	Ratio float64 `json:"ratio"`
	// ByEncoding, DenseFP16ByEncoding and TensorsByEncoding are keyed by
	// encoding name: stored bytes, dense fp16 bytes, tensor count.
	ByEncoding          map[string]uint64 `json:"by_encoding"`
	DenseFP16ByEncoding map[string]uint64 `json:"dense_fp16_by_encoding"`
	TensorsByEncoding   map[string]int    `json:"tensors_by_encoding"`
}

// Summary is a description of an open container for people and tools:
// architecture, graph, tensor table with sizes, totals and provenance. It
// holds no tensor bytes and reads none: Summarize touches only the
// manifest, so it is cheap even on large files.
type Summary struct {
	Path      string `json:"path"`
	FileBytes int64  `json:"file_bytes"`
	Alignment int    `json:"alignment"`
	// Architecture is the architecture name ("opt"), "" when absent.
	Architecture string `json:"architecture"`
	// ConfigKind names the typed config ("opt"); Config holds all its
	// fields (unset ones with their zero value) by proto field name.
	ConfigKind string         `json:"config_kind,omitempty"`
	Config     map[string]any `json:"config,omitempty"`
	// GraphNodes counts the graph's nodes, OpCounts them by op_type.
	GraphNodes   int            `json:"graph_nodes"`
	OpCounts     map[string]int `json:"op_counts"`
	GraphInputs  []string       `json:"graph_inputs"`
	GraphOutputs []string       `json:"graph_outputs"`
	// Opsets maps each imported operator domain to its version.
	Opsets  map[string]int64 `json:"opsets,omitempty"`
	Tensors []TensorSummary  `json:"tensors"`
	Totals  Totals           `json:"totals"`
	// Provenance is the manifest's provenance (nil when absent); callers
	// must not modify it. ProvenanceMap is the same content as plain JSON
	// values keyed by proto field name, empty fields left out.
	Provenance    *slopepb.Provenance `json:"-"`
	ProvenanceMap map[string]any      `json:"provenance,omitempty"`
	Metadata      map[string]string   `json:"metadata,omitempty"`
	// HasTraining is true for training checkpoints; TrainingStep is then
	// the step they were saved at.
	HasTraining  bool   `json:"has_training"`
	TrainingStep uint64 `json:"training_step,omitempty"`
}

// Summarize describes f from its manifest. It never reads tensor bytes
// and never fails: the manifest was validated when f was opened.
func Summarize(f *File) *Summary {
	s := &Summary{
		OpCounts:     map[string]int{},
		GraphInputs:  []string{},
		GraphOutputs: []string{},
		Tensors:      []TensorSummary{},
		Totals: Totals{
			ByEncoding:          map[string]uint64{},
			DenseFP16ByEncoding: map[string]uint64{},
			TensorsByEncoding:   map[string]int{},
		},
	}
	if f == nil || f.Manifest() == nil {
		return s
	}
	m := f.Manifest()
	s.Path, s.FileBytes, s.Alignment = f.Path(), f.Size(), f.Alignment()

	if a := m.GetArchitecture(); a != nil {
		s.Architecture = a.GetName()
		am := a.ProtoReflect()
		if od := am.Descriptor().Oneofs().ByName("config"); od != nil {
			if fd := am.WhichOneof(od); fd != nil && fd.Kind() == protoreflect.MessageKind {
				s.ConfigKind = string(fd.Name())
				s.Config = protoMap(am.Get(fd).Message(), true)
			}
		}
	}

	if g := m.GetGraph(); g != nil {
		s.GraphNodes = len(g.GetNode())
		for _, n := range g.GetNode() {
			s.OpCounts[n.GetOpType()]++
		}
		for _, in := range g.GetInput() {
			s.GraphInputs = append(s.GraphInputs, in.GetName())
		}
		for _, out := range g.GetOutput() {
			s.GraphOutputs = append(s.GraphOutputs, out.GetName())
		}
	}
	if len(m.GetOpsetImport()) > 0 {
		s.Opsets = map[string]int64{}
		for _, o := range m.GetOpsetImport() {
			s.Opsets[o.GetDomain()] = o.GetVersion()
		}
	}

	momentOf := map[string]string{}
	for _, sl := range m.GetTraining().GetSlots() {
		momentOf[sl.GetMoment1()] = sl.GetParameter()
		momentOf[sl.GetMoment2()] = sl.GetParameter()
	}
	// A weight of the merged adapter layout has r extra rows (Lᵀ), which
	// a dense model does not have: r is its merged R's first dim.
	mergedRank := map[string]uint64{}
	for _, t := range m.GetTensors() {
		if a := t.GetAdapter(); a.GetMerged() && a.GetFactor() == slopepb.AdapterParams_R && len(t.GetShape()) == 2 {
			mergedRank[a.GetWeight()] = t.GetShape()[0]
		}
	}
	tot := &s.Totals
	for i := range f.infos { // manifest order, with what open checked
		t, numel := f.infos[i].t, f.infos[i].numel
		if r, ok := mergedRank[t.GetName()]; ok && len(t.GetShape()) == 2 && t.GetShape()[0] > r {
			numel = (t.GetShape()[0] - r) * t.GetShape()[1] // out * in, checked at open: at most numel
		}
		ts := summarizeTensor(f, t, numel, momentOf[t.GetName()])
		s.Tensors = append(s.Tensors, ts)
		tot.Tensors++
		tot.StoredBytes += ts.StoredBytes
		tot.DenseFP16Bytes += ts.DenseFP16Bytes
		tot.ByEncoding[ts.Encoding] += ts.StoredBytes
		tot.DenseFP16ByEncoding[ts.Encoding] += ts.DenseFP16Bytes
		tot.TensorsByEncoding[ts.Encoding]++
	}
	tot.Ratio = ratio(tot.StoredBytes, tot.DenseFP16Bytes)

	if p := m.GetProvenance(); p != nil {
		s.Provenance = p
		s.ProvenanceMap = protoMap(p.ProtoReflect(), true) // every scalar key, zero or not: a stable shape for --json readers
	}
	if len(m.GetMetadata()) > 0 {
		s.Metadata = make(map[string]string, len(m.GetMetadata()))
		for k, v := range m.GetMetadata() {
			s.Metadata[k] = v
		}
	}
	if ts := m.GetTraining(); ts != nil {
		s.HasTraining = true
		s.TrainingStep = ts.GetStep()
	}
	return s
}

func summarizeTensor(f *File, t *slopepb.Tensor, numel uint64, momentOf string) TensorSummary {
	ts := TensorSummary{
		Name:        t.GetName(),
		Shape:       append([]uint64{}, t.GetShape()...),
		DType:       t.GetDtype().String(),
		Encoding:    t.GetEncoding().String(),
		Compression: t.GetCompression().String(),
		TransposeOf: t.GetTransposeOf(),
		StoredBytes: t.GetLength(),
		RawBytes:    t.GetRawLength(),
		Offset:      f.FileOffset(t),
	}
	if nm := t.GetNm(); nm != nil {
		ts.Pattern = fmt.Sprintf("%d:%d", nm.GetN(), nm.GetM())
	}
	if a := t.GetAdapter(); a != nil {
		ts.AdapterOf = a.GetWeight()
		ts.AdapterFactor = a.GetFactor().String()
		ts.AdapterMerged = a.GetMerged()
	}
	ts.MomentOf = momentOf
	switch {
	case momentOf != "":
		// Optimizer state: a dense fp16 model has none.
	case t.GetEncoding() == slopepb.Encoding_NM_TRANSPOSE_MASK, t.GetEncoding() == slopepb.Encoding_NM_TRANSPOSE_MATERIALIZED,
		t.GetEncoding() == slopepb.Encoding_LOW_RANK:
		// Auxiliary: no dense counterpart.
	default:
		if !IsFloat(t.GetDtype()) {
			// Not weights (tokenizer files, ids): a dense fp16 model
			// carries the same bytes, its raw size (validated at open).
			ts.DenseFP16Bytes = ts.RawBytes
			break
		}
		// numel was checked at open (at most MaxElements); saturate in
		// case a reader's limits allow more than half of uint64.
		var ok bool
		if ts.DenseFP16Bytes, ok = mulU64(numel, 2); !ok {
			ts.DenseFP16Bytes = math.MaxUint64 / 2
		}
	}
	ts.RatioToFP16 = ratio(ts.StoredBytes, ts.DenseFP16Bytes)
	return ts
}

func ratio(num, den uint64) float64 {
	if den == 0 {
		return 0
	}
	return float64(num) / float64(den)
}

// protoMap turns a message into plain values that encoding/json renders
// naturally (numbers stay numbers, enums become their names), keyed by
// proto field name. With all set, unset scalar fields appear with their
// zero value; otherwise only populated fields appear.
func protoMap(m protoreflect.Message, all bool) map[string]any {
	out := map[string]any{}
	fields := m.Descriptor().Fields()
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		if !m.Has(fd) {
			if !all || fd.IsList() || fd.IsMap() || fd.Message() != nil || fd.ContainingOneof() != nil {
				continue
			}
		}
		v := m.Get(fd)
		switch {
		case fd.IsList():
			l := v.List()
			vals := make([]any, l.Len())
			for j := range vals {
				vals[j] = protoScalar(fd, l.Get(j), all)
			}
			out[string(fd.Name())] = vals
		case fd.IsMap():
			mv := map[string]any{}
			v.Map().Range(func(k protoreflect.MapKey, e protoreflect.Value) bool {
				mv[k.String()] = protoScalar(fd.MapValue(), e, all)
				return true
			})
			out[string(fd.Name())] = mv
		default:
			out[string(fd.Name())] = protoScalar(fd, v, all)
		}
	}
	return out
}

func protoScalar(fd protoreflect.FieldDescriptor, v protoreflect.Value, all bool) any {
	switch fd.Kind() {
	case protoreflect.BoolKind:
		return v.Bool()
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind,
		protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		return v.Int()
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind, protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return v.Uint()
	case protoreflect.FloatKind:
		// Shortest decimal of the float32, so 1e-5 stays 1e-05 and not
		// 9.999999747378752e-06.
		return jsonFloat(v.Float(), 32)
	case protoreflect.DoubleKind:
		return jsonFloat(v.Float(), 64)
	case protoreflect.StringKind:
		return v.String()
	case protoreflect.BytesKind:
		return append([]byte{}, v.Bytes()...) // base64 in JSON
	case protoreflect.EnumKind:
		if ev := fd.Enum().Values().ByNumber(v.Enum()); ev != nil {
			return string(ev.Name())
		}
		return int64(v.Enum())
	case protoreflect.MessageKind, protoreflect.GroupKind:
		return protoMap(v.Message(), all)
	}
	return nil
}

// jsonFloat returns f as a float64 JSON can encode: non-finite values
// (which encoding/json rejects) become the strings "NaN", "+Inf", "-Inf".
func jsonFloat(f float64, bits int) any {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return strconv.FormatFloat(f, 'g', -1, 64)
	}
	if bits == 32 {
		g, err := strconv.ParseFloat(strconv.FormatFloat(f, 'g', -1, 32), 64)
		if err == nil {
			return g
		}
	}
	return f
}
