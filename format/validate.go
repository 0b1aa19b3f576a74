package format

import (
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
	"unicode"

	"github.com/slopeml/slope/format/onnxpb"
	"github.com/slopeml/slope/format/slopepb"
)

// GraphDomain is the operator domain of every node of a container's graph.
const GraphDomain = "ai.slope"

// Limits are the caps a reader (and the writer, so that it never writes a
// file readers refuse) applies before trusting a manifest. A zero field
// takes its value from DefaultLimits (MaxManifestItems: the value derived
// from MaxTensors and MaxNodes).
type Limits struct {
	MaxManifestLen uint64 // bytes of the protobuf manifest
	MaxTensors     int    // entries of the tensor table
	MaxNameLen     int    // bytes of a tensor, node, op type, domain, attribute or value name
	MaxDims        int    // dimensions of a tensor
	MaxElements    uint64 // elements of one tensor
	MaxNodes       int    // nodes of the graph
	// MaxCompressionRatio bounds raw_length / length of a compressed tensor,
	// and so what one lazy decode may allocate.
	MaxCompressionRatio uint64
	// MaxManifestItems bounds what the manifest decodes to: its messages
	// (at any depth), repeated-field elements and map entries, counted on
	// the encoded bytes before they are decoded. 0 means
	// ManifestItemsPerEntry * (MaxTensors + MaxNodes).
	MaxManifestItems int
}

// ManifestItemsPerEntry is the manifest items (Limits.MaxManifestItems)
// allowed per tensor and per node of the caps. A tensor entry with its
// shape, pattern, adapter and provenance record, or a node with its
// inputs, outputs and attributes, takes a few to a dozen; the converter's
// manifests average 4 to 6.
const ManifestItemsPerEntry = 8

// DefaultLimits are the caps of SPEC.md.
func DefaultLimits() Limits {
	l := Limits{
		MaxManifestLen:      256 << 20,
		MaxTensors:          1 << 20,
		MaxNameLen:          1024,
		MaxDims:             8,
		MaxElements:         1 << 40,
		MaxNodes:            1 << 22,
		MaxCompressionRatio: 4096,
	}
	l.MaxManifestItems = manifestItemsFor(l)
	return l
}

// manifestItemsFor is ManifestItemsPerEntry * (MaxTensors + MaxNodes),
// saturated at math.MaxInt.
func manifestItemsFor(l Limits) int {
	n, ok := mulU64(uint64(max(l.MaxTensors, 0))+uint64(max(l.MaxNodes, 0)), ManifestItemsPerEntry)
	if !ok || n > math.MaxInt {
		return math.MaxInt
	}
	return int(n)
}

// withDefaults fills the zero fields of l from DefaultLimits.
func (l Limits) withDefaults() Limits {
	d := DefaultLimits()
	fill := func(v *int, def int) {
		if *v == 0 {
			*v = def
		}
	}
	fill64 := func(v *uint64, def uint64) {
		if *v == 0 {
			*v = def
		}
	}
	fill64(&l.MaxManifestLen, d.MaxManifestLen)
	fill(&l.MaxTensors, d.MaxTensors)
	fill(&l.MaxNameLen, d.MaxNameLen)
	fill(&l.MaxDims, d.MaxDims)
	fill64(&l.MaxElements, d.MaxElements)
	fill(&l.MaxNodes, d.MaxNodes)
	fill64(&l.MaxCompressionRatio, d.MaxCompressionRatio)
	fill(&l.MaxManifestItems, manifestItemsFor(l))
	return l
}

// tensorInfo is what validation derives for a tensor table entry.
type tensorInfo struct {
	t        *slopepb.Tensor
	index    int
	numel    uint64
	rawBytes uint64 // exact byte length of the raw (decompressed) encoding
	nm       NM     // NM, NM_TRANSPOSE_*: the pattern
	rows     int    // 2-D encodings: logical rows and cols
	cols     int
	elemSize int
}

// checkTensorMeta validates one entry on its own (no references, no
// layout) and returns its derived sizes.
func checkTensorMeta(t *slopepb.Tensor, lim Limits) (tensorInfo, error) {
	info := tensorInfo{t: t}
	if t.Name == "" {
		return info, fmt.Errorf("empty tensor name: %w", ErrManifest)
	}
	if len(t.Name) > lim.MaxNameLen {
		return info, fmt.Errorf("tensor name of %d bytes exceeds cap %d: %w", len(t.Name), lim.MaxNameLen, ErrLimit)
	}
	if _, ok := slopepb.DType_name[int32(t.Dtype)]; !ok || t.Dtype == slopepb.DType_DTYPE_UNSPECIFIED {
		return info, fmt.Errorf("unknown dtype %d: %w", int32(t.Dtype), ErrManifest)
	}
	if _, ok := slopepb.Encoding_name[int32(t.Encoding)]; !ok || t.Encoding == slopepb.Encoding_ENCODING_UNSPECIFIED {
		return info, fmt.Errorf("unknown encoding %d: %w", int32(t.Encoding), ErrManifest)
	}
	if _, ok := slopepb.Compression_name[int32(t.Compression)]; !ok {
		return info, fmt.Errorf("unknown compression %d: %w", int32(t.Compression), ErrManifest)
	}
	if len(t.Shape) > lim.MaxDims {
		return info, fmt.Errorf("%d dims exceed cap %d: %w", len(t.Shape), lim.MaxDims, ErrLimit)
	}
	info.numel = 1
	for _, d := range t.Shape {
		if d == 0 {
			return info, fmt.Errorf("shape %v has a zero dim: %w", t.Shape, ErrShape)
		}
		n, ok := mulU64(info.numel, d)
		if !ok || n > lim.MaxElements {
			return info, fmt.Errorf("shape %v exceeds %d elements: %w", t.Shape, lim.MaxElements, ErrLimit)
		}
		info.numel = n
	}
	// Dims, counts and sizes become ints (slice lengths, NM geometry): on
	// a 32-bit platform they must fit one (and on any platform whose
	// limits allow more than 2^63 elements).
	if info.numel > math.MaxInt {
		return info, fmt.Errorf("shape %v: %d elements exceed this platform's int: %w", t.Shape, info.numel, ErrShape)
	}
	es, err := ElemSize(t.Dtype)
	if err != nil {
		return info, err
	}
	info.elemSize = es
	needPattern := t.Encoding == slopepb.Encoding_NM || t.Encoding == slopepb.Encoding_NM_TRANSPOSE_MASK ||
		t.Encoding == slopepb.Encoding_NM_TRANSPOSE_MATERIALIZED
	if needPattern {
		if t.Nm == nil {
			return info, fmt.Errorf("encoding %s without nm params: %w", t.Encoding, ErrManifest)
		}
		if t.Nm.N > 16 || t.Nm.M > 16 {
			return info, fmt.Errorf("pattern %d:%d: %w", t.Nm.N, t.Nm.M, ErrPattern)
		}
		info.nm = NM{N: int(t.Nm.N), M: int(t.Nm.M)}
		if err := info.nm.Validate(); err != nil {
			return info, err
		}
		if len(t.Shape) != 2 {
			return info, fmt.Errorf("encoding %s needs 2 dims, shape is %v: %w", t.Encoding, t.Shape, ErrShape)
		}
		// Each dim <= numel <= math.MaxInt (checked above).
		info.rows, info.cols = int(t.Shape[0]), int(t.Shape[1])
	} else if t.Nm != nil {
		return info, fmt.Errorf("nm params on a %s tensor: %w", t.Encoding, ErrManifest)
	}
	if (t.Encoding == slopepb.Encoding_NM_TRANSPOSE_MASK || t.Encoding == slopepb.Encoding_NM_TRANSPOSE_MATERIALIZED) != (t.TransposeOf != "") {
		return info, fmt.Errorf("transpose_of %q on a %s tensor: %w", t.TransposeOf, t.Encoding, ErrManifest)
	}
	if (t.Encoding == slopepb.Encoding_LOW_RANK) != (t.Adapter != nil) {
		return info, fmt.Errorf("adapter params presence does not match encoding %s: %w", t.Encoding, ErrManifest)
	}
	switch t.Encoding {
	case slopepb.Encoding_DENSE:
		n, ok := mulU64(info.numel, uint64(es))
		if !ok {
			return info, fmt.Errorf("shape %v: byte size overflows: %w", t.Shape, ErrLimit)
		}
		info.rawBytes = n
	case slopepb.Encoding_NM, slopepb.Encoding_NM_TRANSPOSE_MATERIALIZED:
		if !IsFloat(t.Dtype) {
			return info, fmt.Errorf("encoding %s needs a float dtype, got %s: %w", t.Encoding, t.Dtype, ErrShape)
		}
		vb, ib, err := NMSizes(info.nm, info.rows, info.cols, es)
		if err != nil {
			return info, err
		}
		info.rawBytes = uint64(vb) + uint64(ib)
	case slopepb.Encoding_NM_TRANSPOSE_MASK:
		if t.Dtype != slopepb.DType_UINT8 {
			return info, fmt.Errorf("transpose mask dtype must be UINT8, got %s: %w", t.Dtype, ErrShape)
		}
		n, err := TransposeMaskSize(info.nm, info.rows, info.cols)
		if err != nil {
			return info, err
		}
		info.rawBytes = uint64(n)
	case slopepb.Encoding_LOW_RANK:
		if !IsFloat(t.Dtype) || len(t.Shape) != 2 {
			return info, fmt.Errorf("adapter factor needs a float dtype and 2 dims, got %s %v: %w", t.Dtype, t.Shape, ErrShape)
		}
		a := t.Adapter
		if a.Weight == "" || (a.Factor != slopepb.AdapterParams_L && a.Factor != slopepb.AdapterParams_R) {
			return info, fmt.Errorf("adapter params need a weight and factor L or R (weight %q, factor %d): %w", a.Weight, int32(a.Factor), ErrManifest)
		}
		n, ok := mulU64(info.numel, uint64(es))
		if !ok {
			return info, fmt.Errorf("shape %v: byte size overflows: %w", t.Shape, ErrLimit)
		}
		info.rawBytes = n
	}
	if info.rawBytes > math.MaxInt {
		return info, fmt.Errorf("%s %s %v: raw encoding of %d bytes exceeds this platform's int: %w",
			t.Encoding, t.Dtype, t.Shape, info.rawBytes, ErrShape)
	}
	switch t.Compression {
	case slopepb.Compression_COMPRESSION_NONE:
		if t.Length != info.rawBytes || t.RawLength != info.rawBytes {
			return info, fmt.Errorf("length %d (raw_length %d), want exactly %d for %s %s %v: %w",
				t.Length, t.RawLength, info.rawBytes, t.Encoding, t.Dtype, t.Shape, ErrShape)
		}
	default:
		if t.RawLength != info.rawBytes {
			return info, fmt.Errorf("raw_length %d, want exactly %d for %s %s %v: %w",
				t.RawLength, info.rawBytes, t.Encoding, t.Dtype, t.Shape, ErrShape)
		}
		if t.Length == 0 {
			return info, fmt.Errorf("compressed length 0: %w", ErrShape)
		}
		if lim, ok := mulU64(t.Length, lim.MaxCompressionRatio); ok && info.rawBytes > lim {
			return info, fmt.Errorf("compression ratio %d/%d above the cap: %w", info.rawBytes, t.Length, ErrLimit)
		}
		if t.Compression == slopepb.Compression_ZSTD_SHUFFLE && (es != 2 || t.Encoding == slopepb.Encoding_NM_TRANSPOSE_MASK) {
			return info, fmt.Errorf("ZSTD_SHUFFLE needs 16-bit values, tensor is %s %s: %w", t.Encoding, t.Dtype, ErrManifest)
		}
	}
	return info, nil
}

// checkManifest validates a whole manifest against itself and, when
// fileSize > 0, the data region [dataOffset, fileSize). It returns the
// derived info of each tensor and the name index.
func checkManifest(m *slopepb.Manifest, lim Limits, align, dataOffset, fileSize uint64, checkLayout bool) ([]tensorInfo, map[string]int, error) {
	if len(m.Tensors) > lim.MaxTensors {
		return nil, nil, fmt.Errorf("%d tensors exceed cap %d: %w", len(m.Tensors), lim.MaxTensors, ErrLimit)
	}
	infos := make([]tensorInfo, len(m.Tensors))
	byName := make(map[string]int, len(m.Tensors))
	for i, t := range m.Tensors {
		if t == nil {
			return nil, nil, fmt.Errorf("tensor #%d: empty entry: %w", i, ErrManifest)
		}
		info, err := checkTensorMeta(t, lim)
		if err != nil {
			return nil, nil, fmt.Errorf("tensor #%d %q: %w", i, t.Name, err)
		}
		info.index = i
		if _, dup := byName[t.Name]; dup {
			return nil, nil, fmt.Errorf("tensor #%d: duplicate name %q: %w", i, t.Name, ErrManifest)
		}
		byName[t.Name] = i
		infos[i] = info
	}
	if err := checkReferences(m, infos, byName); err != nil {
		return nil, nil, err
	}
	if checkLayout {
		if err := checkLayoutOf(infos, align, dataOffset, fileSize); err != nil {
			return nil, nil, err
		}
	}
	if err := checkGraph(m, byName, lim); err != nil {
		return nil, nil, err
	}
	if err := checkTraining(m.Training, infos, byName); err != nil {
		return nil, nil, err
	}
	if err := checkArchitecture(m.Architecture); err != nil {
		return nil, nil, err
	}
	if err := checkTokenizer(m.Tokenizer, infos, byName); err != nil {
		return nil, nil, err
	}
	return infos, byName, nil
}

// checkLayoutOf: offsets aligned, increasing, not overlapping, inside the
// file, and the last tensor ending exactly at EOF.
func checkLayoutOf(infos []tensorInfo, align, dataOffset, fileSize uint64) error {
	dataLen := fileSize - dataOffset // dataOffset <= fileSize checked by the header
	var end uint64
	for i := range infos {
		t := infos[i].t
		if t.Offset%align != 0 {
			return fmt.Errorf("tensor %q: offset %d not %d-aligned: %w", t.Name, t.Offset, align, ErrLayout)
		}
		if t.Offset < end {
			return fmt.Errorf("tensor %q: offset %d overlaps the previous tensor (ends at %d) or is out of order: %w", t.Name, t.Offset, end, ErrLayout)
		}
		if t.Offset-end >= align {
			return fmt.Errorf("tensor %q: offset %d leaves a gap of %d bytes after the previous tensor (must be < %d): %w", t.Name, t.Offset, t.Offset-end, align, ErrLayout)
		}
		e, ok := addU64(t.Offset, t.Length)
		if !ok || e > dataLen {
			return fmt.Errorf("tensor %q: bytes [%d, %d+%d) of the data region run past EOF (data region is %d bytes): %w",
				t.Name, t.Offset, t.Offset, t.Length, dataLen, ErrLayout)
		}
		end = e
	}
	if end != dataLen {
		return fmt.Errorf("data ends at %d but the file has %d data bytes (trailing bytes): %w", end, dataLen, ErrLayout)
	}
	return nil
}

// checkReferences: transposes and adapters name existing weights of
// matching shape and pattern; adapter factors come in consistent pairs.
func checkReferences(m *slopepb.Manifest, infos []tensorInfo, byName map[string]int) error {
	type pair struct{ l, r *tensorInfo }
	adapters := map[string]*pair{}
	type transposeKey struct {
		enc slopepb.Encoding
		of  string
	}
	transposes := map[transposeKey]string{}
	for i := range infos {
		info := &infos[i]
		t := info.t
		switch t.Encoding {
		case slopepb.Encoding_NM_TRANSPOSE_MASK, slopepb.Encoding_NM_TRANSPOSE_MATERIALIZED:
			pi, ok := byName[t.TransposeOf]
			if !ok {
				return fmt.Errorf("tensor %q: transpose_of names missing tensor %q: %w", t.Name, t.TransposeOf, ErrManifest)
			}
			// One of each per weight: each is checked against the whole
			// weight, so repeats would multiply a check's work.
			k := transposeKey{t.Encoding, t.TransposeOf}
			if first, dup := transposes[k]; dup {
				return fmt.Errorf("tensor %q: a second %s of %q (the first is %q): %w", t.Name, t.Encoding, t.TransposeOf, first, ErrManifest)
			}
			transposes[k] = t.Name
			p := infos[pi]
			if p.t.Encoding != slopepb.Encoding_NM {
				return fmt.Errorf("tensor %q: transpose_of %q is %s, not NM: %w", t.Name, t.TransposeOf, p.t.Encoding, ErrManifest)
			}
			if p.nm != info.nm {
				return fmt.Errorf("tensor %q: pattern %s differs from %q's %s: %w", t.Name, info.nm, t.TransposeOf, p.nm, ErrShape)
			}
			wantR, wantC := p.rows, p.cols
			if t.Encoding == slopepb.Encoding_NM_TRANSPOSE_MATERIALIZED {
				wantR, wantC = p.cols, p.rows
				if t.Dtype != p.t.Dtype {
					return fmt.Errorf("tensor %q: dtype %s differs from %q's %s: %w", t.Name, t.Dtype, t.TransposeOf, p.t.Dtype, ErrShape)
				}
			}
			if info.rows != wantR || info.cols != wantC {
				return fmt.Errorf("tensor %q: shape %v, want [%d %d] for %s of %q: %w", t.Name, t.Shape, wantR, wantC, t.Encoding, t.TransposeOf, ErrShape)
			}
		case slopepb.Encoding_LOW_RANK:
			w := t.Adapter.Weight
			wi, ok := byName[w]
			if !ok {
				return fmt.Errorf("tensor %q: adapter of missing weight %q: %w", t.Name, w, ErrManifest)
			}
			if wt := infos[wi].t; len(wt.Shape) != 2 || (wt.Encoding != slopepb.Encoding_NM && wt.Encoding != slopepb.Encoding_DENSE) {
				return fmt.Errorf("tensor %q: adapter weight %q must be a 2-D NM or DENSE tensor: %w", t.Name, w, ErrManifest)
			}
			p := adapters[w]
			if p == nil {
				p = &pair{}
				adapters[w] = p
			}
			slot := &p.l
			if t.Adapter.Factor == slopepb.AdapterParams_R {
				slot = &p.r
			}
			if *slot != nil {
				return fmt.Errorf("tensor %q: weight %q already has an adapter factor %s (%q): %w", t.Name, w, t.Adapter.Factor, (*slot).t.Name, ErrManifest)
			}
			*slot = info
		}
	}
	for w, p := range adapters {
		if merged := p.r != nil && p.r.t.Adapter.Merged; merged || (p.l != nil && p.l.t.Adapter.Merged) {
			if err := checkMergedAdapter(w, p.l, p.r, infos[byName[w]].t); err != nil {
				return err
			}
			continue
		}
		if p.l == nil || p.r == nil {
			return fmt.Errorf("weight %q has only one adapter factor (L and R are both required): %w", w, ErrManifest)
		}
		if p.l.t.Adapter.Scale != p.r.t.Adapter.Scale {
			return fmt.Errorf("weight %q: adapter scales differ (L %g, R %g): %w", w, p.l.t.Adapter.Scale, p.r.t.Adapter.Scale, ErrManifest)
		}
		if _, err := ValidateAdapterShapes(infos[byName[w]].t.Shape, p.l.t.Shape, p.r.t.Shape); err != nil {
			return fmt.Errorf("adapter of %q: %w", w, err)
		}
	}
	return nil
}

// checkMergedAdapter: a merged layout has R [r, out] alone, and the
// weight has out + r rows.
func checkMergedAdapter(w string, l, r *tensorInfo, wt *slopepb.Tensor) error {
	if l != nil || r == nil {
		return fmt.Errorf("weight %q: a merged adapter has an R factor and no L: %w", w, ErrManifest)
	}
	rs := r.t.Shape
	if len(wt.Shape) != 2 || rs[0] < 1 || wt.Shape[0] != rs[0]+rs[1] {
		return fmt.Errorf("weight %q %v: merged adapter R %v needs a weight of out + r rows: %w", w, wt.Shape, rs, ErrShape)
	}
	if r, in, out := rs[0], wt.Shape[1], rs[1]; r > min(in, out) {
		return fmt.Errorf("weight %q %v: merged adapter rank %d not in [1, min(in, out) = %d]: %w", w, wt.Shape, r, min(in, out), ErrShape)
	}
	return nil
}

// checkGraph: ai.slope nodes whose inputs are graph inputs, tensors, or
// outputs of earlier nodes; unique value names; outputs produced.
func checkGraph(m *slopepb.Manifest, byName map[string]int, lim Limits) error {
	g := m.Graph
	if g == nil {
		return nil
	}
	if len(g.Initializer) > 0 || len(g.SparseInitializer) > 0 {
		return fmt.Errorf("graph has initializers (tensor bytes belong in the tensor table): %w", ErrGraph)
	}
	if len(g.Node) > lim.MaxNodes {
		return fmt.Errorf("%d nodes exceed cap %d: %w", len(g.Node), lim.MaxNodes, ErrLimit)
	}
	values := make(map[string]bool, len(g.Input)+len(g.Node))
	define := func(name, what string) error {
		if name == "" || len(name) > lim.MaxNameLen {
			return fmt.Errorf("%s: name empty or longer than %d bytes: %w", what, lim.MaxNameLen, ErrGraph)
		}
		if _, isTensor := byName[name]; isTensor || values[name] {
			return fmt.Errorf("%s: value %q defined twice (or shadows a tensor): %w", what, name, ErrGraph)
		}
		values[name] = true
		return nil
	}
	for _, in := range g.Input {
		if err := define(in.GetName(), "graph input"); err != nil {
			return err
		}
	}
	if len(g.Node) > 0 && !hasOpset(m.OpsetImport, GraphDomain) {
		return fmt.Errorf("graph uses domain %s but opset_import lacks it: %w", GraphDomain, ErrGraph)
	}
	for i, n := range g.Node {
		// The names go into error messages: capped before they are quoted.
		for _, s := range []struct{ field, v string }{{"name", n.GetName()}, {"op_type", n.GetOpType()}, {"domain", n.GetDomain()}} {
			if len(s.v) > lim.MaxNameLen {
				return fmt.Errorf("node #%d: %s of %d bytes exceeds cap %d: %w", i, s.field, len(s.v), lim.MaxNameLen, ErrLimit)
			}
		}
		what := fmt.Sprintf("node #%d %q (%s)", i, n.GetName(), n.GetOpType())
		if n.GetOpType() == "" {
			return fmt.Errorf("%s: empty op_type: %w", what, ErrGraph)
		}
		if n.GetDomain() != GraphDomain {
			return fmt.Errorf("%s: domain %q, want %q: %w", what, n.GetDomain(), GraphDomain, ErrGraph)
		}
		for _, in := range n.Input {
			if in == "" {
				continue // an omitted optional input, as in ONNX
			}
			if len(in) > lim.MaxNameLen {
				return fmt.Errorf("%s: input name of %d bytes exceeds cap %d: %w", what, len(in), lim.MaxNameLen, ErrLimit)
			}
			if _, isTensor := byName[in]; !isTensor && !values[in] {
				return fmt.Errorf("%s: input %q is no tensor, graph input or earlier output: %w", what, in, ErrGraph)
			}
		}
		for _, out := range n.Output {
			if err := define(out, what+" output"); err != nil {
				return err
			}
		}
		if err := checkAttributes(n.Attribute, what, lim); err != nil {
			return err
		}
	}
	for _, out := range g.Output {
		name := out.GetName()
		if len(name) > lim.MaxNameLen {
			return fmt.Errorf("graph output name of %d bytes exceeds cap %d: %w", len(name), lim.MaxNameLen, ErrLimit)
		}
		if _, isTensor := byName[name]; !values[name] && !isTensor {
			return fmt.Errorf("graph output %q is never produced: %w", name, ErrGraph)
		}
	}
	return nil
}

func checkAttributes(attrs []*onnxpb.AttributeProto, what string, lim Limits) error {
	seen := map[string]bool{}
	for i, a := range attrs {
		if len(a.GetName()) > lim.MaxNameLen {
			return fmt.Errorf("%s: attribute #%d: name of %d bytes exceeds cap %d: %w", what, i, len(a.GetName()), lim.MaxNameLen, ErrLimit)
		}
		if a.GetName() == "" || seen[a.GetName()] {
			return fmt.Errorf("%s: attribute name %q empty or repeated: %w", what, a.GetName(), ErrGraph)
		}
		seen[a.GetName()] = true
		if a.GetG() != nil || len(a.GetGraphs()) > 0 || a.GetT() != nil || len(a.GetTensors()) > 0 ||
			a.GetSparseTensor() != nil || len(a.GetSparseTensors()) > 0 {
			return fmt.Errorf("%s: attribute %q holds a graph or tensor (not allowed in version 1): %w", what, a.GetName(), ErrGraph)
		}
	}
	return nil
}

func hasOpset(ops []*onnxpb.OperatorSetIdProto, domain string) bool {
	for _, o := range ops {
		if o.GetDomain() == domain {
			return true
		}
	}
	return false
}

// checkTraining: optimizer slots name existing tensors whose element count
// equals the number of values the parameter stores.
func checkTraining(ts *slopepb.TrainingState, infos []tensorInfo, byName map[string]int) error {
	if ts == nil {
		return nil
	}
	for _, s := range ts.Slots {
		pi, ok := byName[s.Parameter]
		if !ok {
			return fmt.Errorf("optimizer slot for missing parameter %q: %w", s.Parameter, ErrManifest)
		}
		if e := infos[pi].t.Encoding; e == slopepb.Encoding_NM_TRANSPOSE_MASK || e == slopepb.Encoding_NM_TRANSPOSE_MATERIALIZED {
			// Derived from their weight, whose slot holds the state.
			return fmt.Errorf("optimizer slot for %q, an %s tensor (a transpose is derived from its weight %q, not trained): %w",
				s.Parameter, e, infos[pi].t.TransposeOf, ErrManifest)
		}
		want := storedValues(infos[pi])
		for _, mname := range []string{s.Moment1, s.Moment2} {
			mi, ok := byName[mname]
			if !ok {
				return fmt.Errorf("optimizer slot of %q names missing moment tensor %q: %w", s.Parameter, mname, ErrManifest)
			}
			if mt := infos[mi]; mt.t.Encoding != slopepb.Encoding_DENSE || !IsFloat(mt.t.Dtype) || mt.numel != want {
				return fmt.Errorf("moment %q: want a dense float tensor of %d elements (the values %q stores), got %s %s of %d: %w",
					mname, want, s.Parameter, mt.t.Encoding, mt.t.Dtype, mt.numel, ErrShape)
			}
		}
	}
	return nil
}

// storedValues is the number of values a tensor stores: kept values for
// the NM encodings, every element otherwise.
func storedValues(info tensorInfo) uint64 {
	if e := info.t.Encoding; e == slopepb.Encoding_NM || e == slopepb.Encoding_NM_TRANSPOSE_MATERIALIZED {
		return info.numel / uint64(info.nm.M) * uint64(info.nm.N)
	}
	return info.numel
}

func checkArchitecture(a *slopepb.Architecture) error {
	if a == nil {
		return nil
	}
	if c := a.GetOpt(); c != nil {
		if c.VocabSize <= 0 || c.HiddenSize <= 0 || c.NumHiddenLayers <= 0 || c.NumAttentionHeads <= 0 ||
			c.FfnDim <= 0 || c.MaxPositionEmbeddings <= 0 {
			return fmt.Errorf("opt config needs positive sizes (vocab %d, hidden %d, layers %d, heads %d, ffn %d, positions %d): %w",
				c.VocabSize, c.HiddenSize, c.NumHiddenLayers, c.NumAttentionHeads, c.FfnDim, c.MaxPositionEmbeddings, ErrManifest)
		}
	}
	return nil
}

// TokenizerGPT2BPE is the tokenizer type of GPT-2 byte-level BPE.
const TokenizerGPT2BPE = "gpt2-bpe"

// checkTokenizer: a known type whose files are 1-D DENSE UINT8 tensors.
func checkTokenizer(tk *slopepb.Tokenizer, infos []tensorInfo, byName map[string]int) error {
	if tk == nil {
		return nil
	}
	if tk.Type != TokenizerGPT2BPE {
		return fmt.Errorf("tokenizer type %q, want %q: %w", tk.Type, TokenizerGPT2BPE, ErrManifest)
	}
	if len(tk.Files) == 0 {
		return fmt.Errorf("tokenizer without files: %w", ErrManifest)
	}
	for _, file := range slices.Sorted(maps.Keys(tk.Files)) { // sorted: the same error every time
		if err := checkTokenizerFileName(file); err != nil {
			return err
		}
		tensor := tk.Files[file]
		i, ok := byName[tensor]
		if !ok {
			return fmt.Errorf("tokenizer file %q names missing tensor %q: %w", file, tensor, ErrManifest)
		}
		if t := infos[i].t; t.Encoding != slopepb.Encoding_DENSE || t.Dtype != slopepb.DType_UINT8 || len(t.Shape) != 1 {
			return fmt.Errorf("tokenizer file %q: tensor %q must be DENSE UINT8 of one dimension: %w", file, tensor, ErrShape)
		}
	}
	return nil
}

// maxTokenizerFileName caps a tokenizer file name (NAME_MAX of common
// file systems).
const maxTokenizerFileName = 255

// checkTokenizerFileName: a tokenizer file name is a plain base name that
// a reader can create in a directory of its choice (slope export does):
// no path separator, drive colon, control character, "." or "..".
func checkTokenizerFileName(name string) error {
	bad := name == "" || name == "." || name == ".." || len(name) > maxTokenizerFileName ||
		strings.ContainsAny(name, "/\\:") || strings.ContainsFunc(name, unicode.IsControl)
	if bad {
		if len(name) > maxTokenizerFileName {
			name = name[:maxTokenizerFileName] + "..."
		}
		return fmt.Errorf("tokenizer file name %q is not a plain file name (1 to %d bytes, no /, \\, :, control characters, . or ..): %w",
			name, maxTokenizerFileName, ErrManifest)
	}
	return nil
}
