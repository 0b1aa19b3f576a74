package convert

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/format/onnxpb"
	"github.com/slopeml/slope/format/slopepb"
	"github.com/slopeml/slope/testmodels"
)

// onnxFixtures are the reference exports of testmodels' default model.
var onnxFixtures = []string{"model.dynamo.onnx", "model.legacy.onnx"}

// sameSource checks that got yields exactly want's names, shapes, values
// and config.
func sameSource(t *testing.T, got, want Source) {
	t.Helper()
	if !proto.Equal(got.Config(), want.Config()) {
		t.Errorf("config\n got %v\nwant %v", got.Config(), want.Config())
	}
	if !slices.Equal(got.Names(), want.Names()) {
		t.Fatalf("names\n got %v\nwant %v", got.Names(), want.Names())
	}
	for _, name := range want.Names() {
		a, err := got.Tensor(name)
		if err != nil {
			t.Fatal(err)
		}
		b, err := want.Tensor(name)
		if err != nil {
			t.Fatal(err)
		}
		if a.Name != name || !slices.Equal(a.Shape, b.Shape) || a.DType != b.DType {
			t.Errorf("%s: got %s %v %v, want %v %v", name, a.Name, a.Shape, a.DType, b.Shape, b.DType)
			continue
		}
		if !slices.Equal(a.Data, b.Data) {
			t.Errorf("%s (from %s): values differ", name, a.SourceName)
		}
	}
}

func TestOpenONNXFixtures(t *testing.T) {
	dir := testmodels.Dir()
	hf, err := OpenHF(os.DirFS(dir), dir)
	if err != nil {
		t.Fatal(err)
	}
	defer hf.Close()
	for _, name := range onnxFixtures {
		t.Run(name, func(t *testing.T) {
			src, err := OpenONNX(filepath.Join(dir, name))
			if err != nil {
				t.Fatal(err)
			}
			defer src.Close()
			sameSource(t, src, hf)
			t.Logf("warnings: %v", src.Warnings())
			for _, f := range src.Files() {
				t.Logf("file %v", f)
			}
		})
	}
}

// TestOpenONNXFixturesInferred opens the fixtures without a config.json
// beside them: the config inferred from the graph alone must be the same.
func TestOpenONNXFixturesInferred(t *testing.T) {
	dir := testmodels.Dir()
	hf, err := OpenHF(os.DirFS(dir), dir)
	if err != nil {
		t.Fatal(err)
	}
	defer hf.Close()
	tmp := t.TempDir()
	for _, name := range onnxFixtures {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(tmp, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		src, err := OpenONNX(p)
		if err != nil {
			t.Fatal(err)
		}
		sameSource(t, src, hf)
		if files := src.Files(); len(files) != 1 || files[0].Format != "onnx" || files[0].Size != uint64(len(b)) {
			t.Errorf("%s: files %v", name, files)
		}
		src.Close()
	}
}

// TestOpenONNXFixtureSourceNames checks that orientation and names come
// from the graph: the dynamo export reads the embedding from
// m.lm_head.weight, the legacy one has transposed q/k/v/out_proj under
// onnx::MatMul_* names.
func TestOpenONNXFixtureSourceNames(t *testing.T) {
	for _, c := range []struct{ file, name, source string }{
		{"model.dynamo.onnx", "decoder.embed_tokens.weight", "m.lm_head.weight"},
		{"model.dynamo.onnx", "decoder.layers.0.fc1.weight", "m.model.decoder.layers.0.fc1.weight"},
		{"model.legacy.onnx", "decoder.layers.0.self_attn.q_proj.weight", "onnx::MatMul_382"},
		{"model.legacy.onnx", "decoder.layers.1.self_attn.out_proj.weight", "onnx::MatMul_418"},
		{"model.legacy.onnx", "decoder.embed_tokens.weight", "m.model.decoder.embed_tokens.weight"},
	} {
		src, err := OpenONNX(filepath.Join(testmodels.Dir(), c.file))
		if err != nil {
			t.Fatal(err)
		}
		tn, err := src.Tensor(c.name)
		if err != nil {
			t.Fatal(err)
		}
		if tn.SourceName != c.source || tn.DType != slopepb.DType_FLOAT32 {
			t.Errorf("%s %s: source %q %v, want %q", c.file, c.name, tn.SourceName, tn.DType, c.source)
		}
		src.Close()
	}
}

// onnxGenCase is a model written by testmodels.WriteOPTONNX.
type onnxGenCase struct {
	name  string
	cfg   testmodels.ONNXConfig
	dtype string
	opts  testmodels.ONNXOptions
}

var onnxGenCases = []onnxGenCase{
	{"pre-LN tied inline", testmodels.ONNXConfig{Vocab: 40, Hidden: 16, Heads: 4, Layers: 2, FFN: 32, MaxPos: 20, PreLN: true, Tied: true}, "F32",
		testmodels.ONNXOptions{}},
	{"post-LN untied external", testmodels.ONNXConfig{Vocab: 37, Hidden: 24, Heads: 3, Layers: 3, FFN: 40, MaxPos: 10, Activation: "gelu"}, "F32",
		testmodels.ONNXOptions{ExternalData: true, CanonicalWeights: true, DecomposeLayerNorm: true, OpaqueNames: true}},
	{"pre-LN projection f16 typed copied head", testmodels.ONNXConfig{Vocab: 30, Hidden: 16, ProjDim: 8, Heads: 2, Layers: 1, FFN: 24, MaxPos: 8, PreLN: true, Tied: true, Activation: "gelu_new"}, "F16",
		testmodels.ONNXOptions{TypedData: true, CopyTiedHead: true}},
	{"no bias no final LN bf16", testmodels.ONNXConfig{Vocab: 20, Hidden: 8, Heads: 1, Layers: 2, FFN: 16, MaxPos: 6, PreLN: true, RemoveFinalLayerNorm: true, Tied: true, NoBias: true, Activation: "silu", Eps: 1e-6}, "BF16",
		testmodels.ONNXOptions{ExternalData: true, CanonicalWeights: true, CopyTiedHead: true, OpaqueNames: true}},
	{"post-LN projection untied tanh", testmodels.ONNXConfig{Vocab: 25, Hidden: 12, ProjDim: 6, Heads: 2, Layers: 1, FFN: 12, MaxPos: 5, Activation: "tanh"}, "F32",
		testmodels.ONNXOptions{DecomposeLayerNorm: true}},
	{"pre-LN sigmoid external decomposed", testmodels.ONNXConfig{Vocab: 20, Hidden: 8, Heads: 2, Layers: 1, FFN: 8, MaxPos: 4, PreLN: true, Tied: true, Activation: "sigmoid"}, "F32",
		testmodels.ONNXOptions{ExternalData: true, DecomposeLayerNorm: true}},
}

// onnxGenWeights makes random weights for cfg, representable in dtype.
func onnxGenWeights(cfg testmodels.ONNXConfig, dtype string, seed uint64) []testmodels.NamedTensor {
	rng := rand.New(rand.NewPCG(seed, 7))
	names, shapes := testmodels.ONNXWeightShapes(cfg)
	var ts []testmodels.NamedTensor
	for i, n := range names {
		size := 1
		for _, d := range shapes[i] {
			size *= d
		}
		data := make([]float32, size)
		for j := range data {
			v := float32(rng.NormFloat64() * 0.5)
			switch dtype {
			case "F16":
				v = format.Float16ToFloat32(format.Float32ToFloat16(v))
			case "BF16":
				v = format.BFloat16ToFloat32(format.Float32ToBFloat16(v))
			}
			data[j] = v
		}
		ts = append(ts, testmodels.NamedTensor{Name: n, Shape: shapes[i], DType: dtype, Data: data})
	}
	return ts
}

// onnxGenOPTConfig is the OPTConfig OpenONNX should infer for cfg.
func onnxGenOPTConfig(cfg testmodels.ONNXConfig) *slopepb.OPTConfig {
	act := cfg.Activation
	if act == "" {
		act = "relu"
	}
	eps := cfg.Eps
	if eps == 0 {
		eps = OPTLayerNormEps
	}
	p := cfg.ProjDim
	if p == 0 {
		p = cfg.Hidden
	}
	return &slopepb.OPTConfig{
		VocabSize: int64(cfg.Vocab), HiddenSize: int64(cfg.Hidden), NumHiddenLayers: int64(cfg.Layers), NumAttentionHeads: int64(cfg.Heads),
		FfnDim: int64(cfg.FFN), MaxPositionEmbeddings: int64(cfg.MaxPos), WordEmbedProjDim: int64(p), DoLayerNormBefore: cfg.PreLN,
		RemoveFinalLayerNorm: cfg.RemoveFinalLayerNorm, EnableBias: !cfg.NoBias, LayerNormElementwiseAffine: true, ActivationFunction: act,
		TieWordEmbeddings: cfg.Tied, PadTokenId: 1, BosTokenId: 2, EosTokenId: 2, LayerNormEps: eps,
	}
}

// writeGen writes case c into a new directory and returns the model path
// and the weights.
func writeGen(t *testing.T, c onnxGenCase) (string, []testmodels.NamedTensor) {
	t.Helper()
	ws := onnxGenWeights(c.cfg, c.dtype, 1)
	path := filepath.Join(t.TempDir(), "model.onnx")
	if err := testmodels.WriteOPTONNX(path, c.cfg, ws, c.opts); err != nil {
		t.Fatal(err)
	}
	return path, ws
}

func TestOpenONNXGenerated(t *testing.T) {
	wantDT := map[string]slopepb.DType{"F32": slopepb.DType_FLOAT32, "F16": slopepb.DType_FLOAT16, "BF16": slopepb.DType_BFLOAT16}
	for _, c := range onnxGenCases {
		t.Run(c.name, func(t *testing.T) {
			path, ws := writeGen(t, c)
			src, err := OpenONNX(path)
			if err != nil {
				t.Fatal(err)
			}
			defer src.Close()
			want := onnxGenOPTConfig(c.cfg)
			if !proto.Equal(src.Config(), want) {
				t.Errorf("config\n got %v\nwant %v", src.Config(), want)
			}
			var names []string
			for _, w := range ws {
				names = append(names, w.Name)
			}
			if !slices.Equal(src.Names(), names) || !slices.Equal(names, OPTWeightNames(want)) {
				t.Fatalf("names\n got %v\nwant %v", src.Names(), names)
			}
			for _, w := range ws {
				tn, err := src.Tensor(w.Name)
				if err != nil {
					t.Fatal(err)
				}
				if !slices.Equal(tn.Shape, w.Shape) || tn.DType != wantDT[c.dtype] || !slices.Equal(tn.Data, w.Data) {
					t.Errorf("%s (from %s): got %v %v, want %v %v; values equal %v", w.Name, tn.SourceName, tn.Shape, tn.DType, w.Shape, wantDT[c.dtype], slices.Equal(tn.Data, w.Data))
				}
			}
			files := src.Files()
			if c.opts.ExternalData {
				if len(files) != 2 || files[1].Format != "onnx_external_data" || filepath.Base(files[1].Path) != "model.onnx.data" {
					t.Errorf("files %v", files)
				}
			} else if len(files) != 1 {
				t.Errorf("files %v", files)
			}
		})
	}
}

// rewriteONNX edits the model at path in place.
func rewriteONNX(t *testing.T, path string, edit func(m *onnxpb.ModelProto)) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m onnxpb.ModelProto
	if err := proto.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	edit(&m)
	if b, err = proto.Marshal(&m); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// setExternal sets key of the external_data of every external initializer
// (all of them when name is "", else the one named).
func setExternal(m *onnxpb.ModelProto, name, key string, value func(old string) string) {
	for _, in := range m.Graph.Initializer {
		if in.DataLocation != onnxpb.TensorProto_EXTERNAL || (name != "" && in.Name != name) {
			continue
		}
		for _, e := range in.ExternalData {
			if e.Key == key {
				e.Value = value(e.Value)
			}
		}
	}
}

// wantONNXError opens path and checks the error wraps target and
// mentions every part of want.
func wantONNXError(t *testing.T, path string, target error, want ...string) {
	t.Helper()
	src, err := OpenONNX(path)
	if err == nil {
		src.Close()
		t.Fatalf("opened; want an error mentioning %q", want)
	}
	if target != nil && !errors.Is(err, target) {
		t.Errorf("error %v does not wrap %v", err, target)
	}
	t.Log(err)
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not mention %q", err, w)
		}
	}
}

func TestOpenONNXNotAModel(t *testing.T) {
	dir := t.TempDir()
	fixture, err := os.ReadFile(filepath.Join(testmodels.Dir(), onnxFixtures[0]))
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{
		"text.onnx":      []byte("this is not an ONNX model\n"),
		"empty.onnx":     nil,
		"truncated.onnx": fixture[:len(fixture)/2],
		"garbage.onnx":   {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01},
	} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		wantONNXError(t, p, ErrONNX, p)
	}
	wantONNXError(t, dir, ErrONNX, "not a regular file")
	if _, err := OpenONNX(filepath.Join(dir, "absent.onnx")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("absent file: %v", err)
	}
}

// externalCase writes the post-LN external-data model into a new
// directory.
func externalCase(t *testing.T) (path, dataPath string) {
	t.Helper()
	path, _ = writeGen(t, onnxGenCases[1])
	return path, path + ".data"
}

func TestOpenONNXExternalLocation(t *testing.T) {
	t.Run("absolute", func(t *testing.T) {
		path, data := externalCase(t)
		rewriteONNX(t, path, func(m *onnxpb.ModelProto) {
			setExternal(m, "", "location", func(string) string { return data })
		})
		wantONNXError(t, path, ErrONNX, "absolute path", data)
	})
	t.Run("dotdot", func(t *testing.T) {
		path, _ := externalCase(t)
		rewriteONNX(t, path, func(m *onnxpb.ModelProto) {
			setExternal(m, "", "location", func(string) string { return "../x" })
		})
		wantONNXError(t, path, ErrONNX, `"../x"`, `".."`)
	})
	t.Run("dotdot inside", func(t *testing.T) {
		path, _ := externalCase(t)
		rewriteONNX(t, path, func(m *onnxpb.ModelProto) {
			setExternal(m, "", "location", func(old string) string { return "sub/../" + old })
		})
		wantONNXError(t, path, ErrONNX, `".."`)
	})
	t.Run("symlink outside", func(t *testing.T) {
		path, data := externalCase(t)
		outside := filepath.Join(t.TempDir(), "real.data")
		if err := os.Rename(data, outside); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(outside, data); err != nil {
			t.Skip("symlinks:", err)
		}
		wantONNXError(t, path, ErrONNX, "outside the model's directory")
	})
	t.Run("symlinked directory outside", func(t *testing.T) {
		path, data := externalCase(t)
		outsideDir := t.TempDir()
		if err := os.Rename(data, filepath.Join(outsideDir, "w.data")); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(outsideDir, filepath.Join(filepath.Dir(path), "sub")); err != nil {
			t.Skip("symlinks:", err)
		}
		rewriteONNX(t, path, func(m *onnxpb.ModelProto) {
			setExternal(m, "", "location", func(string) string { return "sub/w.data" })
		})
		wantONNXError(t, path, ErrONNX, "outside the model's directory")
	})
	t.Run("symlink inside", func(t *testing.T) {
		path, data := externalCase(t)
		dir := filepath.Dir(path)
		if err := os.Mkdir(filepath.Join(dir, "blobs"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(data, filepath.Join(dir, "blobs", "w.data")); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(filepath.Join("blobs", "w.data"), data); err != nil {
			t.Skip("symlinks:", err)
		}
		src, err := OpenONNX(path)
		if err != nil {
			t.Fatal(err)
		}
		defer src.Close()
		if _, err := src.Tensor("decoder.layers.0.fc2.weight"); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("missing file", func(t *testing.T) {
		path, data := externalCase(t)
		if err := os.Remove(data); err != nil {
			t.Fatal(err)
		}
		wantONNXError(t, path, ErrONNX, "model.onnx.data")
	})
	t.Run("no location", func(t *testing.T) {
		path, _ := externalCase(t)
		rewriteONNX(t, path, func(m *onnxpb.ModelProto) {
			setExternal(m, "", "location", func(string) string { return "" })
		})
		wantONNXError(t, path, ErrONNX, "no location")
	})
}

func TestOpenONNXExternalBounds(t *testing.T) {
	path, data := externalCase(t)
	st, err := os.Stat(data)
	if err != nil {
		t.Fatal(err)
	}
	var victim string
	rewriteONNX(t, path, func(m *onnxpb.ModelProto) {
		for _, in := range m.Graph.Initializer {
			if in.DataLocation == onnxpb.TensorProto_EXTERNAL {
				victim = in.Name
				break
			}
		}
		setExternal(m, victim, "offset", func(string) string { return strconv.FormatInt(st.Size()-8, 10) })
	})
	wantONNXError(t, path, ErrONNX, victim, "past the end")

	path, _ = externalCase(t)
	rewriteONNX(t, path, func(m *onnxpb.ModelProto) {
		setExternal(m, victim, "length", func(old string) string {
			n, _ := strconv.Atoi(old)
			return strconv.Itoa(n - 4)
		})
	})
	wantONNXError(t, path, ErrONNX, victim, "does not match dims")

	path, _ = externalCase(t)
	rewriteONNX(t, path, func(m *onnxpb.ModelProto) {
		setExternal(m, victim, "offset", func(string) string { return "-5" })
	})
	wantONNXError(t, path, ErrONNX, victim, "non-negative")
}

// TestOpenONNXLazyExternal checks that external tensors are read on
// demand: a tensor whose bytes change after OpenONNX reads the new bytes.
func TestOpenONNXLazyExternal(t *testing.T) {
	path, data := externalCase(t)
	src, err := OpenONNX(path)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	f, err := os.OpenFile(data, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	// The position embedding is the first tensor of the side file.
	if _, err := f.WriteAt([]byte{0, 0, 0x80, 0x3f}, 0); err != nil {
		t.Fatal(err)
	}
	f.Close()
	e, err := src.Tensor("decoder.embed_positions.weight")
	if err != nil {
		t.Fatal(err)
	}
	if e.Data[0] != 1 {
		t.Errorf("embed_positions[0] = %g, want the rewritten 1", e.Data[0])
	}
	if err := src.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := src.Tensor("decoder.embed_tokens.weight"); err == nil {
		t.Error("read after Close")
	}
}

func TestOpenONNXUnsupportedDType(t *testing.T) {
	path, _ := writeGen(t, onnxGenCases[0])
	const victim = "m.model.decoder.layers.1.fc1.weight"
	rewriteONNX(t, path, func(m *onnxpb.ModelProto) {
		for _, in := range m.Graph.Initializer {
			if in.Name == victim {
				raw := make([]byte, 2*len(in.RawData))
				for k := 0; k < len(in.RawData)/4; k++ {
					v := math.Float32frombits(binary.LittleEndian.Uint32(in.RawData[4*k:]))
					binary.LittleEndian.PutUint64(raw[8*k:], math.Float64bits(float64(v)))
				}
				in.RawData, in.DataType = raw, int32(onnxpb.TensorProto_DOUBLE)
			}
		}
	})
	wantONNXError(t, path, ErrONNX, victim, "decoder.layers.1.fc1.weight", "DOUBLE")

	// Inline data of the wrong length.
	path, _ = writeGen(t, onnxGenCases[0])
	rewriteONNX(t, path, func(m *onnxpb.ModelProto) {
		for _, in := range m.Graph.Initializer {
			if in.Name == victim {
				in.RawData = in.RawData[4:]
			}
		}
	})
	src, err := OpenONNX(path)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	if _, err := src.Tensor("decoder.layers.1.fc1.weight"); err == nil || !errors.Is(err, ErrONNX) || !strings.Contains(err.Error(), victim) {
		t.Errorf("short raw_data: %v", err)
	}
}

// deleteNode removes the nodes that read the initializer named.
func deleteNode(m *onnxpb.ModelProto, readsInit string) {
	m.Graph.Node = slices.DeleteFunc(m.Graph.Node, func(n *onnxpb.NodeProto) bool {
		return slices.Contains(n.Input, readsInit)
	})
}

func TestOpenONNXMissingPiece(t *testing.T) {
	for _, c := range []struct {
		name    string
		gen     int
		readsIn string
		want    []string
	}{
		{"fc2", 0, "m.model.decoder.layers.1.fc2.weight", []string{"layer 1", "fc1", "want 1 (fc2)"}},
		{"v_proj", 0, "m.model.decoder.layers.0.self_attn.v_proj.weight", []string{"after the embeddings", "feeds 2 linear layers"}},
		{"position embedding", 0, "m.model.decoder.embed_positions.weight", []string{"not added to a position embedding"}},
		{"final LayerNorm scale", 0, "m.model.decoder.final_layer_norm.weight", []string{"after layer 1"}},
		{"fc1 bias", 0, "m.model.decoder.layers.0.fc1.bias", []string{"layer 0"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			path, _ := writeGen(t, onnxGenCases[c.gen])
			rewriteONNX(t, path, func(m *onnxpb.ModelProto) { deleteNode(m, c.readsIn) })
			wantONNXError(t, path, ErrONNXGraph, c.want...)
		})
	}
	// The legacy fixture without its scaling of q.
	path := filepath.Join(t.TempDir(), "model.onnx")
	b, err := os.ReadFile(filepath.Join(testmodels.Dir(), "model.legacy.onnx"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	rewriteONNX(t, path, func(m *onnxpb.ModelProto) {
		for _, n := range m.Graph.Node {
			if n.Name == "/m/decoder/layers.0/self_attn/Constant_2" {
				n.Attribute[0].T.RawData = []byte{0, 0, 0x80, 0x3f} // 1.0
			}
		}
	})
	wantONNXError(t, path, ErrONNXGraph, "layer 0", "not scaled")
}

// TestOpenONNXMissingInitializer: a weight missing from the initializers
// breaks the pattern of its layer, and the error also names the tensor
// that nothing defines and the node that reads it.
func TestOpenONNXMissingInitializer(t *testing.T) {
	for _, name := range []string{"m.model.decoder.layers.1.fc2.weight", "m.model.decoder.layers.0.self_attn.v_proj.bias"} {
		t.Run(name, func(t *testing.T) {
			path, _ := writeGen(t, onnxGenCases[0])
			rewriteONNX(t, path, func(m *onnxpb.ModelProto) {
				m.Graph.Initializer = slices.DeleteFunc(m.Graph.Initializer, func(x *onnxpb.TensorProto) bool { return x.Name == name })
			})
			wantONNXError(t, path, ErrONNXGraph, "undefined inputs: "+strconv.Quote(name)+" (read by node ")
		})
	}
}

func TestOpenONNXConfigMismatch(t *testing.T) {
	for _, c := range []struct {
		field string
		value any
		want  string
	}{
		{"ffn_dim", 64, `ffn_dim is 64, the graph has 32`},
		{"hidden_size", 32, "hidden_size"},
		{"num_attention_heads", 2, "num_attention_heads is 2, the graph has 4"},
		{"num_hidden_layers", 3, "num_hidden_layers"},
		{"do_layer_norm_before", false, "do_layer_norm_before"},
		{"activation_function", "gelu", "activation_function"},
		{"tie_word_embeddings", false, ""},
	} {
		t.Run(c.field, func(t *testing.T) {
			path, _ := writeGen(t, onnxGenCases[0])
			cfg := map[string]any{"model_type": "opt", "vocab_size": 40, "hidden_size": 16, "num_attention_heads": 4,
				"num_hidden_layers": 2, "ffn_dim": 32, "max_position_embeddings": 20, "pad_token_id": 0, "bos_token_id": 7}
			cfg[c.field] = c.value
			js, _ := json.Marshal(cfg)
			if err := os.WriteFile(filepath.Join(filepath.Dir(path), "config.json"), js, 0o644); err != nil {
				t.Fatal(err)
			}
			if c.want == "" {
				// An untied config over a tied graph is consistent: the
				// head is read from the embedding.
				src, err := OpenONNX(path)
				if err != nil {
					t.Fatal(err)
				}
				defer src.Close()
				got := src.Config()
				if got.TieWordEmbeddings || got.PadTokenId != 0 || got.BosTokenId != 7 || !slices.Contains(src.Names(), "lm_head.weight") {
					t.Errorf("config %v names %v", got, src.Names())
				}
				head, err1 := src.Tensor("lm_head.weight")
				emb, err2 := src.Tensor("decoder.embed_tokens.weight")
				if err1 != nil || err2 != nil || !slices.Equal(head.Data, emb.Data) {
					t.Errorf("lm_head: %v %v", err1, err2)
				}
				return
			}
			wantONNXError(t, path, ErrONNXGraph, "config.json", c.want)
		})
	}
	// config.json says tied, the graph's head differs from the embedding.
	path, _ := writeGen(t, onnxGenCases[1])
	js := `{"model_type": "opt", "vocab_size": 37, "hidden_size": 24, "num_attention_heads": 3, "num_hidden_layers": 3,
		"ffn_dim": 40, "max_position_embeddings": 10, "do_layer_norm_before": false, "activation_function": "gelu"}`
	if err := os.WriteFile(filepath.Join(filepath.Dir(path), "config.json"), []byte(js), 0o644); err != nil {
		t.Fatal(err)
	}
	wantONNXError(t, path, ErrONNXGraph, "tie_word_embeddings is true")
	// A config.json that is not OPT's.
	if err := os.WriteFile(filepath.Join(filepath.Dir(path), "config.json"), []byte(`{"model_type": "gpt2"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	wantONNXError(t, path, nil, "model_type")
}

// TestOpenONNXCorrupt flips bytes of small models (inline and with
// external data): opening and reading must fail cleanly or succeed, never
// panic.
func TestOpenONNXCorrupt(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	for _, c := range []onnxGenCase{onnxGenCases[5], onnxGenCases[2]} {
		path, _ := writeGen(t, c)
		orig, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		for range 150 {
			b := slices.Clone(orig)
			for range 1 + rng.IntN(4) {
				b[rng.IntN(len(b))] = byte(rng.Uint32())
			}
			if rng.IntN(4) == 0 {
				b = b[:rng.IntN(len(b))]
			}
			if err := os.WriteFile(path, b, 0o644); err != nil {
				t.Fatal(err)
			}
			src, err := OpenONNX(path)
			if err != nil {
				if !errors.Is(err, ErrONNX) && !errors.Is(err, ErrONNXGraph) {
					t.Fatalf("error wraps neither ErrONNX nor ErrONNXGraph: %v", err)
				}
				continue
			}
			for _, n := range src.Names() {
				if tn, err := src.Tensor(n); err == nil && len(tn.Data) != tn.Numel() {
					t.Fatalf("%s: %d values for shape %v", n, len(tn.Data), tn.Shape)
				}
			}
			src.Close()
		}
	}
}

// Every generated config family but one round-trips through the ONNX
// reader: the weights the generator made come back under the same
// canonical names, bit for bit. "no-affine" is the exception: ONNX
// LayerNormalization always has a scale input, so OpenONNX reads such a
// model as affine (documented limit).
func TestONNXEveryConfigFamily(t *testing.T) {
	for fam, g := range testmodels.ConfigFamilies() {
		if !g.ElementwiseAffine {
			continue
		}
		t.Run(fam, func(t *testing.T) {
			cfg := testmodels.ONNXConfig{Vocab: g.Vocab, Hidden: g.Hidden, Heads: g.Heads, Layers: g.Layers, FFN: g.FFN, MaxPos: g.MaxPos,
				PreLN: g.PreLN, RemoveFinalLayerNorm: g.RemoveFinalLN, Tied: g.Tied, NoBias: !g.Bias, Activation: g.Activation}
			if g.WordEmbedProjDim != 0 && g.WordEmbedProjDim != g.Hidden {
				cfg.ProjDim = g.WordEmbedProjDim
			}
			ws := testmodels.GenWeights(g, 3, "F32")
			path := filepath.Join(t.TempDir(), "model.onnx")
			if err := testmodels.WriteOPTONNX(path, cfg, ws, testmodels.ONNXOptions{ExternalData: true}); err != nil {
				t.Fatal(err)
			}
			src, err := OpenSource(path)
			if err != nil {
				t.Fatal(err)
			}
			defer src.Close()
			if got := len(src.Names()); got != len(ws) {
				t.Fatalf("%d weights, generated %d", got, len(ws))
			}
			for _, w := range ws {
				got, err := src.Tensor(w.Name)
				if err != nil {
					t.Fatal(err)
				}
				if !slices.Equal(got.Data, w.Data) {
					t.Fatalf("%s differs from the generated weight", w.Name)
				}
			}
		})
	}
}

// TestONNXUsesLongChain: looking through pass ops follows a long chain of
// Identity nodes in bounded stack and finds the consumers past it and
// beside it in depth-first order.
func TestONNXUsesLongChain(t *testing.T) {
	const n = 100_000
	nodes := make([]*onnxpb.NodeProto, 0, n+2)
	prev := "x"
	for i := range n {
		out := "c" + strconv.Itoa(i)
		nodes = append(nodes, &onnxpb.NodeProto{OpType: "Identity", Input: []string{prev}, Output: []string{out}})
		prev = out
	}
	nodes = append(nodes,
		&onnxpb.NodeProto{OpType: "MatMul", Input: []string{prev, "w"}, Output: []string{"y"}},
		&onnxpb.NodeProto{OpType: "Add", Input: []string{"b", "x"}, Output: []string{"z"}})
	g, err := newONNXGraph(&onnxSource{path: "chain.onnx"}, &onnxpb.GraphProto{Node: nodes}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// A 1 MiB stack: a walk that recursed once per node would overflow it
	// at this length (a fatal error, as a hostile file's chain of millions
	// did at the default 1 GiB).
	defer debug.SetMaxStack(debug.SetMaxStack(1 << 20))
	got := g.uses("x")
	if len(got) != 2 || got[0] != (onnxUse{n, 0}) || got[1] != (onnxUse{n + 1, 1}) {
		t.Fatalf("uses: %v", got)
	}
}
