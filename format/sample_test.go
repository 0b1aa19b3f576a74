package format

import (
	"bytes"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/zeebo/xxh3"
	"google.golang.org/protobuf/proto"

	"github.com/slopeml/slope/format/onnxpb"
	"github.com/slopeml/slope/format/slopepb"
)

// sampleModel is what writeSample puts in a container, kept to compare
// with what a reader returns.
type sampleModel struct {
	embed        []float32 // [32, 16] fp32 dense
	norm         []float32 // [16] bf16 dense (values representable in bf16)
	wDense       []float32 // [16, 32]: the weight before pruning
	keep         []bool    // its 2:4 mask
	values       []float32 // kept values (bf16-representable)
	idx          []uint8
	tkeep        []bool // transpose mask bits
	tValues      []float32
	tIdx         []uint8
	l, r         []float32 // adapter [32, 2], [2, 16] fp16-representable
	m1, m2       []float32 // moments of w, one per kept value
	rows, cols   int
	pattern      NM
	adapterScale float32
}

func roundBF16(x float32) float32 { return BFloat16ToFloat32(Float32ToBFloat16(x)) }
func roundFP16(x float32) float32 { return Float16ToFloat32(Float32ToFloat16(x)) }

func randSlice(rng *rand.Rand, n int, round func(float32) float32) []float32 {
	s := make([]float32, n)
	for i := range s {
		s[i] = float32(rng.NormFloat64())
		if round != nil {
			s[i] = round(s[i])
		}
	}
	return s
}

// magnitudeKeep keeps the n largest |w| of every group of m (ties: lower index).
func magnitudeKeep(p NM, w []float32) []bool {
	keep := make([]bool, len(w))
	for g := 0; g < len(w); g += p.M {
		for k := 0; k < p.N; k++ {
			best := -1
			for j := g; j < g+p.M; j++ {
				if !keep[j] && (best < 0 || math.Abs(float64(w[j])) > math.Abs(float64(w[best]))) {
					best = j
				}
			}
			keep[best] = true
		}
	}
	return keep
}

func newSample(t testing.TB, seed uint64) *sampleModel {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 1))
	s := &sampleModel{rows: 16, cols: 32, pattern: NM{2, 4}, adapterScale: 0.5}
	s.embed = randSlice(rng, 32*16, nil)
	s.norm = randSlice(rng, 16, roundBF16)
	s.wDense = randSlice(rng, s.rows*s.cols, roundBF16)
	s.keep = magnitudeKeep(s.pattern, s.wDense)
	var err error
	if s.values, s.idx, err = SplitNM(s.pattern, s.rows, s.cols, s.wDense, s.keep); err != nil {
		t.Fatal(err)
	}
	if s.tkeep, err = DoublePruneMagnitude(s.pattern, s.rows, s.cols, s.values, s.idx); err != nil {
		t.Fatal(err)
	}
	if s.tValues, s.tIdx, err = MaterializeTranspose(s.pattern, s.rows, s.cols, s.values, s.idx, s.tkeep); err != nil {
		t.Fatal(err)
	}
	s.l = randSlice(rng, s.cols*2, roundFP16)
	s.r = randSlice(rng, 2*s.rows, roundFP16)
	s.m1 = randSlice(rng, len(s.values), nil)
	s.m2 = randSlice(rng, len(s.values), nil)
	return s
}

// sampleGraph is a tiny but well-formed graph over the sample's tensors.
func sampleGraph() *onnxpb.GraphProto {
	return &onnxpb.GraphProto{
		Name:   "sample",
		Input:  []*onnxpb.ValueInfoProto{{Name: "input_ids"}, {Name: "attention_mask"}},
		Output: []*onnxpb.ValueInfoProto{{Name: "y"}},
		Node: []*onnxpb.NodeProto{
			{OpType: "Embedding", Domain: GraphDomain, Name: "embed", Input: []string{"input_ids", "attention_mask", "embed"}, Output: []string{"h0"}},
			{OpType: "LayerNorm", Domain: GraphDomain, Name: "ln", Input: []string{"h0", "norm", ""}, Output: []string{"h1"}},
			{OpType: "SlopeLinear", Domain: GraphDomain, Name: "fc", Input: []string{"h1", "w", "", "w.transpose_mask", "w.lora_l", "w.lora_r"}, Output: []string{"y"},
				Attribute: []*onnxpb.AttributeProto{{Name: "n", Type: onnxpb.AttributeProto_INT, I: 2}, {Name: "m", Type: onnxpb.AttributeProto_INT, I: 4}}},
		},
	}
}

// writeSample writes the sample model to dir/name and returns its path.
func writeSample(t testing.TB, s *sampleModel, path string, opts *WriterOptions) {
	t.Helper()
	w, err := Create(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	m := w.Manifest()
	m.Architecture = &slopepb.Architecture{Name: "opt", Config: &slopepb.Architecture_Opt{Opt: &slopepb.OPTConfig{
		VocabSize: 32, HiddenSize: 16, NumHiddenLayers: 1, NumAttentionHeads: 2, FfnDim: 32, MaxPositionEmbeddings: 8,
		WordEmbedProjDim: 16, DoLayerNormBefore: true, EnableBias: true, ActivationFunction: "relu"}}}
	m.Graph = sampleGraph()
	m.OpsetImport = []*onnxpb.OperatorSetIdProto{{Domain: GraphDomain, Version: 1}}
	m.Provenance = &slopepb.Provenance{Tool: "format-test", ToolVersion: "0", Created: "2026-01-01T00:00:00Z",
		Tensors: []*slopepb.TensorProvenance{{Name: "w", Method: "magnitude", Pattern: "2:4"}}}
	m.Training = &slopepb.TrainingState{Step: 7, Optimizer: "adamw", RngState: []byte{1, 2, 3},
		Slots: []*slopepb.OptimizerSlot{{Parameter: "w", Moment1: "w.adam_m", Moment2: "w.adam_v"}}}
	p := s.pattern
	must := func(err error) {
		t.Helper()
		if err != nil {
			w.Abort()
			t.Fatal(err)
		}
	}
	must(w.WriteDense("embed", slopepb.DType_FLOAT32, []uint64{32, 16}, s.embed))
	must(w.WriteDense("norm", slopepb.DType_BFLOAT16, []uint64{16}, s.norm))
	must(w.WriteNM("w", slopepb.DType_BFLOAT16, p, s.rows, s.cols, s.values, s.idx))
	must(w.WriteTransposeMask("w.transpose_mask", "w", p, s.rows, s.cols, s.tkeep))
	must(w.WriteTransposeMaterialized("w.transpose", "w", slopepb.DType_BFLOAT16, p, s.rows, s.cols, s.tValues, s.tIdx))
	must(w.WriteAdapter("w", "w.lora_l", "w.lora_r", slopepb.DType_FLOAT16, s.cols, s.rows, 2, s.adapterScale, s.l, s.r))
	n := uint64(len(s.values))
	must(w.WriteDense("w.adam_m", slopepb.DType_FLOAT32, []uint64{n}, s.m1))
	must(w.WriteDense("w.adam_v", slopepb.DType_FLOAT32, []uint64{n}, s.m2))
	must(w.Close())
}

// sampleBytes returns the bytes of a freshly written sample container.
func sampleBytes(t testing.TB, opts *WriterOptions) ([]byte, *sampleModel) {
	t.Helper()
	s := newSample(t, 42)
	path := filepath.Join(t.TempDir(), "sample.slope")
	writeSample(t, s, path, opts)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b, s
}

// container is a decoded file that tests can change and re-assemble.
type container struct {
	align    uint64
	manifest *slopepb.Manifest
	data     []byte // the data region
}

func splitContainer(t testing.TB, b []byte) *container {
	t.Helper()
	f, err := Parse("split", b, nil)
	if err != nil {
		t.Fatal(err)
	}
	return &container{align: uint64(f.hdr.alignment), manifest: proto.Clone(f.manifest).(*slopepb.Manifest),
		data: bytes.Clone(b[f.hdr.dataOffset:])}
}

// assemble lays the container out again: header with a fresh manifest
// length and checksum, manifest, padding to the aligned data offset, data.
func (c *container) assemble(t testing.TB) []byte {
	t.Helper()
	mb, err := proto.MarshalOptions{Deterministic: true}.Marshal(c.manifest)
	if err != nil {
		t.Fatal(err)
	}
	return assembleRaw(c.align, mb, c.data)
}

func assembleRaw(align uint64, mb, data []byte) []byte {
	off, _ := alignUp(HeaderSize+uint64(len(mb)), align)
	h := header{alignment: uint32(align), manifestLen: uint64(len(mb)), manifestXXH3: xxh3.Hash(mb), dataOffset: off}
	out := append(h.encode(), mb...)
	out = append(out, make([]byte, off-uint64(len(out)))...)
	return append(out, data...)
}

func (c *container) tensor(t testing.TB, name string) *slopepb.Tensor {
	t.Helper()
	for _, x := range c.manifest.Tensors {
		if x.Name == name {
			return x
		}
	}
	t.Fatalf("no tensor %q", name)
	return nil
}

// patch changes a tensor's stored bytes in place and fixes its checksum,
// so that only the content rule under test is broken.
func (c *container) patch(t testing.TB, name string, f func(b []byte)) {
	t.Helper()
	x := c.tensor(t, name)
	b := c.data[x.Offset : x.Offset+x.Length]
	f(b)
	x.Xxh3 = xxh3.Hash(b)
}
