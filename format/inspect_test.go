package format_test

import (
	"encoding/json"
	"math"
	"path/filepath"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/format/onnxpb"
	"github.com/slopeml/slope/format/slopepb"
)

// summaryFixture sizes: a 2:4 FLOAT16 NM weight [64, 128] with its
// transpose mask, a rank-8 FLOAT16 adapter, a FLOAT32 bias and a FLOAT16
// embedding.
const (
	sfRows, sfCols, sfRank = 64, 128, 8
	sfVocab                = 32
)

// nm24 returns kept values and in-group indices of a 2:4 [rows, cols]
// matrix that keeps positions 0 and 1 of every group, and the transpose
// keep bits (values order) that keep rows 0 and 1 of every 4-row group.
func nm24(rows, cols int) (vals []float32, idx []uint8, keep []bool) {
	kept := cols / 2
	vals = make([]float32, rows*kept)
	idx = make([]uint8, rows*kept)
	keep = make([]bool, rows*kept)
	for r := 0; r < rows; r++ {
		for k := 0; k < kept; k++ {
			i := r*kept + k
			vals[i] = float32(i%7) - 3
			idx[i] = uint8(k % 2)
			keep[i] = r%4 < 2
		}
	}
	return vals, idx, keep
}

func filled(n int, v float32) []float32 {
	out := make([]float32, n)
	for i := range out {
		out[i] = v + float32(i%5)
	}
	return out
}

// writeSummaryFixture writes the fixture to a new file and opens it.
func writeSummaryFixture(t *testing.T, compress bool) *format.File {
	t.Helper()
	path := filepath.Join(t.TempDir(), "fixture.slope")
	// ZstdLevel set explicitly: Create rejects level 0 although the option
	// documents 0 as the default.
	w, err := format.Create(path, &format.WriterOptions{Alignment: 64, Compress: compress, ZstdLevel: zstd.SpeedDefault})
	if err != nil {
		t.Fatal(err)
	}
	m := w.Manifest()
	m.Architecture = &slopepb.Architecture{Name: "opt", Config: &slopepb.Architecture_Opt{Opt: &slopepb.OPTConfig{
		VocabSize: sfVocab, HiddenSize: sfCols, NumHiddenLayers: 1, NumAttentionHeads: 2, FfnDim: sfRows,
		MaxPositionEmbeddings: 16, WordEmbedProjDim: sfCols, DoLayerNormBefore: true, EnableBias: true,
		ActivationFunction: "relu", LayerNormEps: 1e-5,
	}}}
	m.OpsetImport = []*onnxpb.OperatorSetIdProto{{Domain: format.GraphDomain, Version: 1}}
	m.Graph = &onnxpb.GraphProto{
		Name:  "fixture",
		Input: []*onnxpb.ValueInfoProto{{Name: "input_ids"}},
		Node: []*onnxpb.NodeProto{
			{Name: "embed", OpType: "Embedding", Domain: format.GraphDomain, Input: []string{"input_ids", "embed.weight"}, Output: []string{"h0"}},
			{Name: "fc1", OpType: "SlopeLinear", Domain: format.GraphDomain,
				Input: []string{"h0", "fc1.weight", "fc1.bias", "fc1.weight.tmask", "fc1.lora_l", "fc1.lora_r"}, Output: []string{"h1"}},
			{Name: "act", OpType: "Relu", Domain: format.GraphDomain, Input: []string{"h1"}, Output: []string{"h2"}},
			{Name: "act2", OpType: "Relu", Domain: format.GraphDomain, Input: []string{"h2"}, Output: []string{"out"}},
		},
		Output: []*onnxpb.ValueInfoProto{{Name: "out"}},
	}
	m.Provenance = &slopepb.Provenance{
		Tool: "inspect_test", ToolVersion: "1.2.3", Created: "2025-01-02T03:04:05Z",
		Sources: []*slopepb.SourceFile{{Path: "model.safetensors", Size: 12345, Format: "safetensors"}},
		Tensors: []*slopepb.TensorProvenance{{Name: "fc1.weight", Method: "magnitude", Pattern: "2:4"}},
	}
	m.Metadata = map[string]string{"license": "test"}

	vals, idx, keep := nm24(sfRows, sfCols)
	steps := []func() error{
		func() error {
			return w.WriteDense("embed.weight", slopepb.DType_FLOAT16, []uint64{sfVocab, sfCols}, make([]float32, sfVocab*sfCols))
		},
		func() error {
			return w.WriteNM("fc1.weight", slopepb.DType_FLOAT16, format.NM{N: 2, M: 4}, sfRows, sfCols, vals, idx)
		},
		func() error {
			return w.WriteTransposeMask("fc1.weight.tmask", "fc1.weight", format.NM{N: 2, M: 4}, sfRows, sfCols, keep)
		},
		func() error {
			return w.WriteDense("fc1.bias", slopepb.DType_FLOAT32, []uint64{sfRows}, filled(sfRows, 0.5))
		},
		func() error {
			return w.WriteAdapter("fc1.weight", "fc1.lora_l", "fc1.lora_r", slopepb.DType_FLOAT16, sfCols, sfRows, sfRank, 2,
				filled(sfCols*sfRank, 0.25), filled(sfRank*sfRows, -0.25))
		},
	}
	for _, step := range steps {
		if err := step(); err != nil {
			w.Abort()
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	f, err := format.Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func TestSummarizeFixture(t *testing.T) {
	f := writeSummaryFixture(t, false)
	s := format.Summarize(f)

	if s.Path != f.Path() || s.FileBytes != f.Size() || s.Alignment != 64 {
		t.Errorf("path/size/alignment = %q %d %d, want %q %d 64", s.Path, s.FileBytes, s.Alignment, f.Path(), f.Size())
	}
	if s.Architecture != "opt" || s.ConfigKind != "opt" {
		t.Errorf("architecture %q config kind %q", s.Architecture, s.ConfigKind)
	}
	for k, want := range map[string]any{
		"hidden_size": int64(sfCols), "vocab_size": int64(sfVocab), "activation_function": "relu",
		"do_layer_norm_before": true, "remove_final_layer_norm": false, "layer_norm_eps": 1e-5, "pad_token_id": int64(0),
	} {
		if got, ok := s.Config[k]; !ok || got != want {
			t.Errorf("config[%q] = %v (%T), want %v (%T)", k, got, got, want, want)
		}
	}
	if s.GraphNodes != 4 || s.OpCounts["Relu"] != 2 || s.OpCounts["SlopeLinear"] != 1 || s.OpCounts["Embedding"] != 1 {
		t.Errorf("graph: %d nodes, op counts %v", s.GraphNodes, s.OpCounts)
	}
	if len(s.GraphInputs) != 1 || s.GraphInputs[0] != "input_ids" || len(s.GraphOutputs) != 1 || s.GraphOutputs[0] != "out" {
		t.Errorf("graph inputs %v outputs %v", s.GraphInputs, s.GraphOutputs)
	}
	if s.Opsets[format.GraphDomain] != 1 {
		t.Errorf("opsets %v", s.Opsets)
	}

	maskBytes, err := format.TransposeMaskSize(format.NM{N: 2, M: 4}, sfRows, sfCols)
	if err != nil {
		t.Fatal(err)
	}
	type want struct {
		enc, pattern, dtype string
		stored, dense       uint64
		ratio               float64
	}
	wants := map[string]want{
		"embed.weight":     {"DENSE", "", "FLOAT16", sfVocab * sfCols * 2, sfVocab * sfCols * 2, 1},
		"fc1.weight":       {"NM", "2:4", "FLOAT16", 64*64*2 + 64*16, 64 * 128 * 2, 0.5625},
		"fc1.weight.tmask": {"NM_TRANSPOSE_MASK", "2:4", "UINT8", uint64(maskBytes), 0, 0},
		"fc1.bias":         {"DENSE", "", "FLOAT32", sfRows * 4, sfRows * 2, 2},
		"fc1.lora_l":       {"LOW_RANK", "", "FLOAT16", sfCols * sfRank * 2, 0, 0}, // no dense counterpart
		"fc1.lora_r":       {"LOW_RANK", "", "FLOAT16", sfRank * sfRows * 2, 0, 0},
	}
	if len(s.Tensors) != len(wants) || s.Totals.Tensors != len(wants) {
		t.Fatalf("%d tensors (totals %d), want %d", len(s.Tensors), s.Totals.Tensors, len(wants))
	}
	var stored, dense uint64
	for i, ts := range s.Tensors {
		w, ok := wants[ts.Name]
		if !ok {
			t.Errorf("unexpected tensor %q", ts.Name)
			continue
		}
		if ts.Name != f.Tensors()[i].Name {
			t.Errorf("tensor #%d is %q, file order has %q", i, ts.Name, f.Tensors()[i].Name)
		}
		if ts.Encoding != w.enc || ts.Pattern != w.pattern || ts.DType != w.dtype || ts.Compression != "COMPRESSION_NONE" {
			t.Errorf("%s: %s %q %s %s, want %s %q %s COMPRESSION_NONE", ts.Name, ts.Encoding, ts.Pattern, ts.DType, ts.Compression, w.enc, w.pattern, w.dtype)
		}
		if ts.StoredBytes != w.stored || ts.RawBytes != w.stored || ts.DenseFP16Bytes != w.dense {
			t.Errorf("%s: stored %d raw %d dense %d, want %d %d %d", ts.Name, ts.StoredBytes, ts.RawBytes, ts.DenseFP16Bytes, w.stored, w.stored, w.dense)
		}
		if math.Abs(ts.RatioToFP16-w.ratio) > 1e-12 {
			t.Errorf("%s: ratio %v, want %v", ts.Name, ts.RatioToFP16, w.ratio)
		}
		if ts.Offset != f.FileOffset(f.Tensors()[i]) || ts.Offset%64 != 0 {
			t.Errorf("%s: offset %d, file offset %d (alignment 64)", ts.Name, ts.Offset, f.FileOffset(f.Tensors()[i]))
		}
		stored += w.stored
		dense += w.dense
	}
	byName := map[string]format.TensorSummary{}
	for _, ts := range s.Tensors {
		byName[ts.Name] = ts
	}
	if ts := byName["fc1.weight.tmask"]; ts.TransposeOf != "fc1.weight" {
		t.Errorf("mask transpose_of %q", ts.TransposeOf)
	}
	if l, r := byName["fc1.lora_l"], byName["fc1.lora_r"]; l.AdapterOf != "fc1.weight" || l.AdapterFactor != "L" || r.AdapterFactor != "R" {
		t.Errorf("adapter: L of %q factor %q, R factor %q", l.AdapterOf, l.AdapterFactor, r.AdapterFactor)
	}

	tot := s.Totals
	if tot.StoredBytes != stored || tot.DenseFP16Bytes != dense || math.Abs(tot.Ratio-float64(stored)/float64(dense)) > 1e-12 {
		t.Errorf("totals stored %d dense %d ratio %v, want %d %d %v", tot.StoredBytes, tot.DenseFP16Bytes, tot.Ratio, stored, dense, float64(stored)/float64(dense))
	}
	if tot.ByEncoding["NM"] != 9216 || tot.DenseFP16ByEncoding["NM"] != 16384 || tot.TensorsByEncoding["LOW_RANK"] != 2 ||
		tot.ByEncoding["DENSE"] != sfVocab*sfCols*2+sfRows*4 || tot.ByEncoding["NM_TRANSPOSE_MASK"] != uint64(maskBytes) {
		t.Errorf("by encoding: stored %v dense %v count %v", tot.ByEncoding, tot.DenseFP16ByEncoding, tot.TensorsByEncoding)
	}

	if s.Provenance == nil || s.Provenance.Tool != "inspect_test" {
		t.Errorf("provenance %v", s.Provenance)
	}
	if s.ProvenanceMap["tool_version"] != "1.2.3" {
		t.Errorf("provenance map %v", s.ProvenanceMap)
	}
	if s.Metadata["license"] != "test" || s.HasTraining {
		t.Errorf("metadata %v has training %v", s.Metadata, s.HasTraining)
	}
}

func TestSummarizeJSON(t *testing.T) {
	f := writeSummaryFixture(t, false)
	b, err := json.Marshal(format.Summarize(f))
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"path", "file_bytes", "alignment", "architecture", "config", "graph_nodes", "op_counts",
		"graph_inputs", "graph_outputs", "tensors", "totals", "provenance", "has_training"} {
		if _, ok := got[k]; !ok {
			t.Errorf("JSON lacks %q: %s", k, b)
		}
	}
	if _, ok := got["Provenance"]; ok {
		t.Errorf("JSON carries the typed provenance")
	}
	tensors, _ := got["tensors"].([]any)
	if len(tensors) != 6 {
		t.Fatalf("JSON has %d tensors, want 6", len(tensors))
	}
	nm, _ := tensors[1].(map[string]any)
	if nm["name"] != "fc1.weight" || nm["pattern"] != "2:4" || nm["ratio_to_fp16"] != 0.5625 ||
		nm["stored_bytes"] != float64(9216) || nm["dense_fp16_bytes"] != float64(16384) {
		t.Errorf("NM tensor JSON %v", nm)
	}
	cfg, _ := got["config"].(map[string]any)
	if cfg["hidden_size"] != float64(sfCols) || cfg["layer_norm_eps"] != 1e-5 {
		t.Errorf("config JSON %v", cfg)
	}
	prov, _ := got["provenance"].(map[string]any)
	srcs, _ := prov["sources"].([]any)
	if prov["tool"] != "inspect_test" || len(srcs) != 1 {
		t.Fatalf("provenance JSON %v", prov)
	}
	if src, _ := srcs[0].(map[string]any); src["size"] != float64(12345) || src["path"] != "model.safetensors" {
		t.Errorf("provenance source JSON %v", src)
	}
	if _, ok := prov["calibration"]; ok {
		t.Errorf("unset calibration present in provenance JSON %v", prov)
	}
}

func TestSummarizeCompressed(t *testing.T) {
	f := writeSummaryFixture(t, true)
	s := format.Summarize(f)
	var emb format.TensorSummary
	for _, ts := range s.Tensors {
		if ts.Name == "embed.weight" {
			emb = ts
		}
	}
	// All zeros: compresses, shuffled because FLOAT16.
	if emb.Compression != "ZSTD_SHUFFLE" || emb.StoredBytes >= emb.RawBytes || emb.RawBytes != sfVocab*sfCols*2 {
		t.Fatalf("embed.weight: %s stored %d raw %d", emb.Compression, emb.StoredBytes, emb.RawBytes)
	}
	if want := float64(emb.StoredBytes) / float64(emb.DenseFP16Bytes); emb.RatioToFP16 != want {
		t.Errorf("ratio %v, want %v", emb.RatioToFP16, want)
	}
	if err := f.Verify(nil); err != nil {
		t.Fatal(err)
	}
}

// writeAndOpen writes a container whose contents fill gives it and opens
// it (closed at the end of the test).
func writeAndOpen(t *testing.T, fill func(w *format.Writer) error) *format.File {
	t.Helper()
	path := filepath.Join(t.TempDir(), "m.slope")
	w, err := format.Create(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := fill(w); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	f, err := format.Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func TestSummarizeEmpty(t *testing.T) {
	f := writeAndOpen(t, func(w *format.Writer) error {
		// A fully empty manifest encodes to 0 bytes, which the reader
		// rejects: give it one metadata entry.
		w.Manifest().Metadata = map[string]string{"k": "v"}
		return nil
	})
	s := format.Summarize(f)
	if s.Totals.Tensors != 0 || s.Totals.Ratio != 0 || s.GraphNodes != 0 || s.Config != nil || s.Provenance != nil {
		t.Errorf("empty summary %+v", s)
	}
	if _, err := json.Marshal(s); err != nil {
		t.Fatal(err)
	}
	if s := format.Summarize(nil); s == nil || len(s.Tensors) != 0 {
		t.Errorf("Summarize(nil) = %+v", s)
	}
}

// TestSummarizeNonFloat: a tensor of bytes (a tokenizer file) costs its
// own size next to a dense fp16 model, not 2 bytes per element.
func TestSummarizeNonFloat(t *testing.T) {
	f := writeAndOpen(t, func(w *format.Writer) error {
		return w.WriteBytes("tokenizer/vocab.json", []byte(`{"a": 0, "b": 1}`))
	})
	s := format.Summarize(f)
	if len(s.Tensors) != 1 {
		t.Fatalf("%d tensors", len(s.Tensors))
	}
	if ts := s.Tensors[0]; ts.DenseFP16Bytes != 16 || ts.RatioToFP16 != 1 || s.Totals.Ratio != 1 {
		t.Errorf("vocab.json: dense fp16 %d bytes, ratio %v, total ratio %v; want 16, 1, 1", ts.DenseFP16Bytes, ts.RatioToFP16, s.Totals.Ratio)
	}
}
