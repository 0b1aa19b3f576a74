package testmodels

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/slopeml/slope/format"
)

func TestGenWeightsDeterministic(t *testing.T) {
	cfg := ConfigFamilies()["pre-ln-tied"]
	a := GenWeights(cfg, 7, "F32")
	b := GenWeights(cfg, 7, "F32")
	c := GenWeights(cfg, 8, "F32")
	if len(a) != len(b) || len(a) != len(c) {
		t.Fatalf("lengths %d %d %d", len(a), len(b), len(c))
	}
	same := 0
	for i := range a {
		if a[i].Name != b[i].Name || !slices.Equal(a[i].Shape, b[i].Shape) || !bitsEqual(a[i].Data, b[i].Data) {
			t.Fatalf("%s differs between two runs with the same seed", a[i].Name)
		}
		if bitsEqual(a[i].Data, c[i].Data) {
			same++
		}
	}
	if same != 0 {
		t.Errorf("%d tensors equal across seeds", same)
	}
	// Statistics: weights ~N(0, 0.02), LayerNorm weights ~1.
	for _, w := range a {
		mean, std := meanStd(w.Data)
		switch {
		case strings.Contains(w.Name, "layer_norm.weight"):
			if math.Abs(mean-1) > 0.02 || std < 0.02 || std > 0.08 {
				t.Errorf("%s: mean %g std %g", w.Name, mean, std)
			}
		case len(w.Data) >= 1000:
			if math.Abs(mean) > 0.003 || std < 0.017 || std > 0.023 {
				t.Errorf("%s: mean %g std %g", w.Name, mean, std)
			}
		}
	}
}

func TestGenWeightsFuncMatches(t *testing.T) {
	cfg := ConfigFamilies()["post-ln-proj"]
	all := GenWeights(cfg, 3, "BF16")
	i := 0
	err := GenWeightsFunc(cfg, 3, "BF16", func(nt NamedTensor) error {
		if nt.Name != all[i].Name || !bitsEqual(nt.Data, all[i].Data) || nt.DType != "BF16" {
			t.Errorf("tensor %d %s differs", i, nt.Name)
		}
		i++
		return nil
	})
	if err != nil || i != len(all) {
		t.Fatalf("GenWeightsFunc: %v after %d of %d", err, i, len(all))
	}
	if err := GenWeightsFunc(cfg, 3, "I8", func(NamedTensor) error { return nil }); err == nil {
		t.Error("dtype I8 accepted")
	}
	bad := cfg
	bad.Heads = 5
	if err := GenWeightsFunc(bad, 3, "F32", func(NamedTensor) error { return nil }); err == nil {
		t.Error("heads not dividing hidden accepted")
	}
}

func TestGenDTypeRounding(t *testing.T) {
	cfg := ConfigFamilies()["no-bias"]
	for _, dt := range []string{"F16", "BF16"} {
		for _, w := range GenWeights(cfg, 1, dt) {
			for _, v := range w.Data {
				var back float32
				if dt == "F16" {
					back = format.Float16ToFloat32(format.Float32ToFloat16(v))
				} else {
					back = format.BFloat16ToFloat32(format.Float32ToBFloat16(v))
				}
				if back != v {
					t.Fatalf("%s %s: %g is not representable", dt, w.Name, v)
				}
			}
		}
	}
}

func TestGenSpecsFamilies(t *testing.T) {
	fams := ConfigFamilies()
	for _, want := range []string{"pre-ln-tied", "post-ln-proj", "untied-head", "no-final-ln", "no-bias", "gelu", "no-affine"} {
		if _, ok := fams[want]; !ok {
			t.Errorf("family %q missing", want)
		}
	}
	has := func(fam, name string) bool {
		return slices.ContainsFunc(GenSpecs(fams[fam]), func(h TensorHeader) bool { return h.Name == name })
	}
	checks := []struct {
		fam, name string
		want      bool
	}{
		{"pre-ln-tied", "decoder.final_layer_norm.weight", true},
		{"pre-ln-tied", "lm_head.weight", false},
		{"pre-ln-tied", "decoder.project_in.weight", false},
		{"post-ln-proj", "decoder.project_in.weight", true},
		{"post-ln-proj", "decoder.project_out.weight", true},
		{"post-ln-proj", "decoder.final_layer_norm.weight", false},
		{"untied-head", "lm_head.weight", true},
		{"no-final-ln", "decoder.final_layer_norm.weight", false},
		{"no-final-ln", "decoder.layers.1.final_layer_norm.bias", true},
		{"no-bias", "decoder.layers.0.fc1.bias", false},
		{"no-bias", "decoder.layers.0.self_attn_layer_norm.bias", true},
		{"no-affine", "decoder.layers.0.self_attn_layer_norm.weight", false},
		{"no-affine", "decoder.layers.0.fc1.bias", true},
	}
	for _, c := range checks {
		if got := has(c.fam, c.name); got != c.want {
			t.Errorf("%s has %s = %v, want %v", c.fam, c.name, got, c.want)
		}
	}
	shapes := map[string][]int{}
	for _, h := range GenSpecs(fams["post-ln-proj"]) {
		shapes[h.Name] = h.Shape
	}
	for name, want := range map[string][]int{
		"decoder.embed_tokens.weight":    {96, 16},
		"decoder.embed_positions.weight": {26, 32},
		"decoder.project_in.weight":      {32, 16},
		"decoder.project_out.weight":     {16, 32},
		"decoder.layers.1.fc1.weight":    {64, 32},
		"decoder.layers.1.fc2.weight":    {32, 64},
	} {
		if !slices.Equal(shapes[name], want) {
			t.Errorf("%s shape %v, want %v", name, shapes[name], want)
		}
	}
}

// readST parses a safetensors file written by WriteSafetensors.
func readST(t *testing.T, path string) (map[string]map[string]any, []byte) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	n := binary.LittleEndian.Uint64(b)
	if (8+n)%8 != 0 {
		t.Errorf("%s: header length %d not padded to 8", path, n)
	}
	var hdr map[string]map[string]any
	if err := json.Unmarshal(b[8:8+n], &hdr); err != nil {
		t.Fatal(err)
	}
	return hdr, b[8+n:]
}

func TestWriteSafetensors(t *testing.T) {
	p := filepath.Join(t.TempDir(), "a.safetensors")
	ts := []NamedTensor{
		{Name: "b", Shape: []int{2, 2}, DType: "F16", Data: []float32{1, -2, 0.5, 3}},
		{Name: "a", Shape: []int{3}, DType: "F32", Data: []float32{1, 2, 3}},
		{Name: "s", Shape: []int{}, DType: "BF16", Data: []float32{-1}},
	}
	if err := WriteSafetensors(p, ts, map[string]string{"format": "pt"}); err != nil {
		t.Fatal(err)
	}
	hdr, data := readST(t, p)
	if len(data) != 8+12+2 {
		t.Fatalf("data section %d bytes", len(data))
	}
	if e := hdr["a"]; e["dtype"] != "F32" || e["data_offsets"].([]any)[0].(float64) != 8 {
		t.Errorf("entry a %v", e)
	}
	if format.Float16ToFloat32(binary.LittleEndian.Uint16(data[2:])) != -2 {
		t.Error("F16 value")
	}
	if math.Float32frombits(binary.LittleEndian.Uint32(data[8+8:])) != 3 {
		t.Error("F32 value")
	}
	if format.BFloat16ToFloat32(binary.LittleEndian.Uint16(data[20:])) != -1 {
		t.Error("BF16 value")
	}
	// Errors: wrong length, bad dtype, duplicate names; no file is left.
	for _, bad := range [][]NamedTensor{
		{{Name: "x", Shape: []int{2}, DType: "F32", Data: []float32{1}}},
		{{Name: "x", Shape: []int{1}, DType: "I32", Data: []float32{1}}},
		{{Name: "x", Shape: []int{1}, DType: "F32", Data: []float32{1}}, {Name: "x", Shape: []int{1}, DType: "F32", Data: []float32{1}}},
	} {
		q := filepath.Join(t.TempDir(), "bad.safetensors")
		if err := WriteSafetensors(q, bad, nil); err == nil {
			t.Errorf("%v accepted", bad)
		}
		if _, err := os.Stat(q); err == nil {
			t.Errorf("%s left behind", q)
		}
	}
}

func TestWriteHFDirSharded(t *testing.T) {
	cfg := ConfigFamilies()["untied-head"]
	w := GenWeights(cfg, 5, "F16")
	dir := t.TempDir()
	if err := WriteHFDir(dir, cfg, w, Layout{Format: "safetensors-sharded", KeyPrefix: "model.", ShardBytes: 20000}); err != nil {
		t.Fatal(err)
	}
	ib, err := os.ReadFile(filepath.Join(dir, "model.safetensors.index.json"))
	if err != nil {
		t.Fatal(err)
	}
	var idx struct {
		Metadata struct {
			TotalSize int64 `json:"total_size"`
		} `json:"metadata"`
		WeightMap map[string]string `json:"weight_map"`
	}
	if err := json.Unmarshal(ib, &idx); err != nil {
		t.Fatal(err)
	}
	if len(idx.WeightMap) != len(w) {
		t.Errorf("weight_map has %d keys, want %d", len(idx.WeightMap), len(w))
	}
	shards := map[string]bool{}
	var total int64
	for _, x := range w {
		key := x.Name
		if strings.HasPrefix(key, "decoder.") {
			key = "model." + key
		}
		f := idx.WeightMap[key]
		shards[f] = true
		hdr, _ := readST(t, filepath.Join(dir, f))
		if _, ok := hdr[key]; !ok {
			t.Errorf("%s not in %s", key, f)
		}
		total += int64(2 * len(x.Data))
	}
	if len(shards) < 3 || idx.Metadata.TotalSize != total {
		t.Errorf("%d shards, total_size %d (want %d)", len(shards), idx.Metadata.TotalSize, total)
	}
	for f := range shards {
		if !strings.HasPrefix(f, "model-0000") || !strings.HasSuffix(f, ".safetensors") {
			t.Errorf("shard name %q", f)
		}
	}
	var cj map[string]any
	b, _ := os.ReadFile(filepath.Join(dir, "config.json"))
	if err := json.Unmarshal(b, &cj); err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]any{"model_type": "opt", "hidden_size": 32.0, "tie_word_embeddings": false,
		"word_embed_proj_dim": 32.0, "do_layer_norm_before": true, "activation_function": "relu",
		"torch_dtype": "float16", "pad_token_id": 1.0, "_remove_final_layer_norm": false, "enable_bias": true,
		"layer_norm_elementwise_affine": true, "ffn_dim": 64.0, "max_position_embeddings": 24.0} {
		if cj[k] != v {
			t.Errorf("config.json %s = %v, want %v", k, cj[k], v)
		}
	}
}

// TestWriteHFDirGen: the streaming writer writes the same bytes.
func TestWriteHFDirGen(t *testing.T) {
	cfg := ConfigFamilies()["pre-ln-tied"]
	for _, l := range []Layout{
		{Format: "safetensors", KeyPrefix: "model.", IncludeTiedLMHead: true},
		{Format: "safetensors-sharded", ShardBytes: 10000},
	} {
		a, b := t.TempDir(), t.TempDir()
		if err := WriteHFDir(a, cfg, GenWeights(cfg, 9, "BF16"), l); err != nil {
			t.Fatal(err)
		}
		if err := WriteHFDirGen(b, cfg, 9, "BF16", l); err != nil {
			t.Fatal(err)
		}
		ea, _ := os.ReadDir(a)
		eb, _ := os.ReadDir(b)
		if len(ea) != len(eb) || len(ea) < 2 {
			t.Fatalf("%s: %d vs %d files", l.Format, len(ea), len(eb))
		}
		for _, e := range ea {
			x, _ := os.ReadFile(filepath.Join(a, e.Name()))
			y, err := os.ReadFile(filepath.Join(b, e.Name()))
			if err != nil || !bytes.Equal(x, y) {
				t.Errorf("%s: %s differs (%v)", l.Format, e.Name(), err)
			}
		}
	}
	if err := WriteHFDirGen(t.TempDir(), cfg, 1, "F32", Layout{Format: "gguf"}); err == nil {
		t.Error("unknown layout accepted")
	}
}

func bitsEqual(a, b []float32) bool {
	return slices.EqualFunc(a, b, func(x, y float32) bool { return math.Float32bits(x) == math.Float32bits(y) })
}

func meanStd(x []float32) (float64, float64) {
	var s, ss float64
	for _, v := range x {
		s += float64(v)
	}
	m := s / float64(len(x))
	for _, v := range x {
		ss += (float64(v) - m) * (float64(v) - m)
	}
	return m, math.Sqrt(ss / float64(len(x)))
}
