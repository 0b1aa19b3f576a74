package convert

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/format/slopepb"
	"github.com/slopeml/slope/testmodels"
)

// genDir writes family fam in dtype with layout into a new temp dir.
func genDir(t *testing.T, fam, dtype string, l testmodels.Layout) (string, testmodels.GenConfig, []testmodels.NamedTensor) {
	t.Helper()
	cfg, ok := testmodels.ConfigFamilies()[fam]
	if !ok {
		t.Fatalf("no family %q", fam)
	}
	w := testmodels.GenWeights(cfg, 42, dtype)
	dir := t.TempDir()
	if err := testmodels.WriteHFDir(dir, cfg, w, l); err != nil {
		t.Fatal(err)
	}
	return dir, cfg, w
}

// checkConfig compares a parsed config with the generator's.
func checkConfig(t *testing.T, got *slopepb.OPTConfig, c testmodels.GenConfig) {
	t.Helper()
	want := &slopepb.OPTConfig{
		VocabSize: int64(c.Vocab), HiddenSize: int64(c.Hidden), NumHiddenLayers: int64(c.Layers),
		NumAttentionHeads: int64(c.Heads), FfnDim: int64(c.FFN), MaxPositionEmbeddings: int64(c.MaxPos),
		WordEmbedProjDim: int64(c.ProjDim()), DoLayerNormBefore: c.PreLN, RemoveFinalLayerNorm: c.RemoveFinalLN,
		EnableBias: c.Bias, LayerNormElementwiseAffine: c.ElementwiseAffine, ActivationFunction: c.ActivationFunction(),
		TieWordEmbeddings: c.Tied, PadTokenId: int64(c.PadID), BosTokenId: int64(c.BOSID), EosTokenId: int64(c.EOSID),
		LayerNormEps: OPTLayerNormEps,
	}
	if !proto.Equal(got, want) {
		t.Errorf("config\n got %v\nwant %v", got, want)
	}
}

// checkWeights: src has exactly the generated weights, bit for bit.
func checkWeights(t *testing.T, src Source, w []testmodels.NamedTensor, prefix string) {
	t.Helper()
	var names []string
	for _, x := range w {
		names = append(names, x.Name)
	}
	if got := src.Names(); !slices.Equal(got, names) {
		t.Fatalf("names\n got %v\nwant %v", got, names)
	}
	for _, x := range w {
		got, err := src.Tensor(x.Name)
		if err != nil {
			t.Fatal(err)
		}
		key := x.Name
		if strings.HasPrefix(key, "decoder.") {
			key = prefix + key
		}
		dt := map[string]slopepb.DType{"F32": slopepb.DType_FLOAT32, "F16": slopepb.DType_FLOAT16, "BF16": slopepb.DType_BFLOAT16}[x.DType]
		if got.Name != x.Name || got.SourceName != key || got.DType != dt || !slices.Equal(got.Shape, x.Shape) {
			t.Errorf("%s: got name %q source %q dtype %s shape %v", x.Name, got.Name, got.SourceName, got.DType, got.Shape)
		}
		if !equalF32(got.Data, x.Data) {
			t.Errorf("%s: values differ", x.Name)
		}
	}
}

// checkFiles: Files lists config.json, the index and every shard, hashed.
func checkFiles(t *testing.T, src Source, dir string, l testmodels.Layout) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.Sum256(b)
		want[filepath.Join(dir, e.Name())] = hex.EncodeToString(h[:])
	}
	files := src.Files()
	if len(files) != len(want) {
		t.Errorf("%d files recorded, directory has %d: %v", len(files), len(want), files)
	}
	for i, f := range files {
		if want[f.Path] != f.Sha256 {
			t.Errorf("file %s: sha256 %s, want %s", f.Path, f.Sha256, want[f.Path])
		}
		wantFmt := "safetensors"
		switch {
		case strings.HasSuffix(f.Path, ".json"):
			wantFmt = "json"
		case strings.HasSuffix(f.Path, ".bin"):
			wantFmt = sourceFormatPyTorch
		}
		if f.Format != wantFmt {
			t.Errorf("file %s: format %q, want %q", f.Path, f.Format, wantFmt)
		}
		if i == 0 && filepath.Base(f.Path) != "config.json" {
			t.Errorf("first file %s, want config.json", f.Path)
		}
	}
}

// TestSourcesRoundTrip: every config family through every layout (and
// both key namings, with and without a stored tied head) in every float
// dtype reads back as exactly the generated config and weights, through
// OpenSource (OS paths, mmap) and OpenHF over an fs.FS.
func TestSourcesRoundTrip(t *testing.T) {
	fams := slices.Sorted(maps.Keys(testmodels.ConfigFamilies()))
	n := 0
	for _, fam := range fams {
		for _, lf := range testmodels.Layouts {
			for _, dtype := range []string{"F32", "F16", "BF16"} {
				n++
				l := testmodels.Layout{Format: lf, ShardBytes: 12000}
				if n%2 == 0 {
					l.KeyPrefix = "model."
				}
				l.IncludeTiedLMHead = n%3 == 0
				t.Run(fam+"/"+lf+"/"+dtype, func(t *testing.T) {
					t.Parallel()
					dir, cfg, w := genDir(t, fam, dtype, l)
					for _, open := range []struct {
						name string
						f    func() (Source, error)
					}{
						{"OpenSource", func() (Source, error) { return OpenSource(dir) }},
						{"OpenHF", func() (Source, error) { return OpenHF(os.DirFS(dir), dir) }},
					} {
						src, err := open.f()
						if err != nil {
							t.Fatalf("%s: %v", open.name, err)
						}
						checkConfig(t, src.Config(), cfg)
						checkWeights(t, src, w, l.KeyPrefix)
						checkFiles(t, src, dir, l)
						warns := strings.Join(src.Warnings(), "\n")
						if cfg.Tied && l.IncludeTiedLMHead {
							if len(src.Warnings()) != 1 || !strings.Contains(warns, `"lm_head.weight" ignored: tie_word_embeddings`) {
								t.Errorf("warnings %q, want one about the tied lm_head", warns)
							}
						} else if warns != "" {
							t.Errorf("warnings %q", warns)
						}
						if err := src.Close(); err != nil {
							t.Error(err)
						}
						if _, err := src.Tensor(w[0].Name); err == nil {
							t.Error("Tensor after Close succeeded")
						}
					}
				})
			}
		}
	}
}

// TestFixtureSafetensorsVsBin: the reference fixture stored as
// pytorch_model.bin reads back with the same names and weights as its
// model.safetensors: exactly in fp32, and within fp16 rounding in fp16.
func TestFixtureSafetensorsVsBin(t *testing.T) {
	ref, err := OpenSource(TinyLabel)
	if err != nil {
		t.Fatal(err)
	}
	defer ref.Close()
	c := ref.Config()
	cfg := testmodels.GenConfig{Vocab: int(c.VocabSize), Hidden: int(c.HiddenSize), Layers: int(c.NumHiddenLayers),
		Heads: int(c.NumAttentionHeads), FFN: int(c.FfnDim), MaxPos: int(c.MaxPositionEmbeddings),
		WordEmbedProjDim: int(c.WordEmbedProjDim), PreLN: c.DoLayerNormBefore, RemoveFinalLN: c.RemoveFinalLayerNorm,
		Bias: c.EnableBias, ElementwiseAffine: c.LayerNormElementwiseAffine, Tied: c.TieWordEmbeddings,
		Activation: c.ActivationFunction, PadID: int(c.PadTokenId), BOSID: int(c.BosTokenId), EOSID: int(c.EosTokenId)}
	for _, dtype := range []string{"F32", "F16"} {
		for _, lf := range []string{"bin", "bin-sharded"} {
			t.Run(lf+"/"+dtype, func(t *testing.T) {
				var w []testmodels.NamedTensor
				for _, n := range ref.Names() {
					x, err := ref.Tensor(n)
					if err != nil {
						t.Fatal(err)
					}
					d := slices.Clone(x.Data)
					if dtype == "F16" {
						for i, v := range d {
							d[i] = format.Float16ToFloat32(format.Float32ToFloat16(v))
						}
					}
					w = append(w, testmodels.NamedTensor{Name: n, Shape: x.Shape, DType: dtype, Data: d})
				}
				dir := t.TempDir()
				if err := testmodels.WriteHFDir(dir, cfg, w, testmodels.Layout{Format: lf, KeyPrefix: "model.", ShardBytes: 200000}); err != nil {
					t.Fatal(err)
				}
				src, err := OpenSource(dir)
				if err != nil {
					t.Fatal(err)
				}
				defer src.Close()
				if !proto.Equal(src.Config(), c) {
					t.Errorf("config %v, want %v", src.Config(), c)
				}
				if !slices.Equal(src.Names(), ref.Names()) {
					t.Fatalf("names %v, want %v", src.Names(), ref.Names())
				}
				for _, n := range ref.Names() {
					a, _ := ref.Tensor(n)
					b, err := src.Tensor(n)
					if err != nil {
						t.Fatal(err)
					}
					if a.SourceName != b.SourceName || !slices.Equal(a.Shape, b.Shape) {
						t.Errorf("%s: %s %v vs %s %v", n, a.SourceName, a.Shape, b.SourceName, b.Shape)
					}
					for i := range a.Data {
						want := a.Data[i]
						if dtype == "F16" {
							want = format.Float16ToFloat32(format.Float32ToFloat16(want))
						}
						if math.Float32bits(b.Data[i]) != math.Float32bits(want) {
							t.Fatalf("%s[%d] = %g, want %g (%s of %g)", n, i, b.Data[i], want, dtype, a.Data[i])
						}
					}
				}
			})
		}
	}
}

// TestDenseToSlopeEveryLayout: --nm dense stores every weight unchanged,
// whatever the layout it came from; provenance lists every file.
func TestDenseToSlopeEveryLayout(t *testing.T) {
	for _, lf := range testmodels.Layouts {
		t.Run(lf, func(t *testing.T) {
			t.Parallel()
			l := testmodels.Layout{Format: lf, KeyPrefix: "model.", ShardBytes: 10000}
			dir, _, w := genDir(t, "post-ln-proj", "F16", l)
			out := filepath.Join(t.TempDir(), "m.slope")
			res, err := DenseToSlope(t.Context(), Options{In: dir, Out: out, NM: "dense"})
			if err != nil {
				t.Fatal(err)
			}
			if res.Pruned != 0 || len(res.Warnings) != 0 {
				t.Errorf("result %+v", res)
			}
			f, err := format.Open(out, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if err := f.Verify(nil); err != nil {
				t.Fatal(err)
			}
			if len(f.Tensors()) != len(w) {
				t.Errorf("%d tensors, want %d", len(f.Tensors()), len(w))
			}
			for _, x := range w {
				d, err := f.Float32s(x.Name)
				if err != nil {
					t.Fatal(err)
				}
				if !equalF32(d, x.Data) {
					t.Errorf("%s differs", x.Name)
				}
				if td, _ := f.Lookup(x.Name); td.Dtype != slopepb.DType_FLOAT16 {
					t.Errorf("%s stored %s", x.Name, td.Dtype)
				}
			}
			ents, _ := os.ReadDir(dir)
			if got := len(f.Manifest().Provenance.Sources); got != len(ents) {
				t.Errorf("%d sources recorded, %d files", got, len(ents))
			}
		})
	}
}

// readIndex and writeIndex edit a model.safetensors.index.json.
func readIndex(t *testing.T, dir string) map[string]any {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "model.safetensors.index.json"))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func writeIndex(t *testing.T, dir string, m map[string]any) {
	t.Helper()
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "model.safetensors.index.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// shardOf is the shard the index maps key to.
func shardOf(t *testing.T, dir, key string) string {
	t.Helper()
	f, ok := readIndex(t, dir)["weight_map"].(map[string]any)[key].(string)
	if !ok {
		t.Fatalf("%s not in the index", key)
	}
	return f
}

func editFile(t *testing.T, p string, edit func(string) string) {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	nb := edit(string(b))
	if nb == string(b) {
		t.Fatalf("edit of %s changed nothing", p)
	}
	if err := os.WriteFile(p, []byte(nb), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestHFBadInputs: broken directories fail with an error naming the file,
// tensor or field at fault (never a panic); benign oddities are warnings.
func TestHFBadInputs(t *testing.T) {
	sharded := testmodels.Layout{Format: "safetensors-sharded", KeyPrefix: "model.", ShardBytes: 12000}
	single := testmodels.Layout{Format: "safetensors"}
	const fc1 = "model.decoder.layers.0.fc1.weight"
	setShard := func(to string) func(t *testing.T, dir string) {
		return func(t *testing.T, dir string) {
			m := readIndex(t, dir)
			m["weight_map"].(map[string]any)[fc1] = to
			writeIndex(t, dir, m)
		}
	}
	rawIndex := func(s string) func(t *testing.T, dir string) {
		return func(t *testing.T, dir string) {
			if err := os.WriteFile(filepath.Join(dir, "model.safetensors.index.json"), []byte(s), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	cases := []struct {
		name   string
		fam    string
		layout testmodels.Layout
		drop   []string // weights left out of the fixture
		extra  []testmodels.NamedTensor
		dup    string // also store this weight as model.<name>
		edit   func(t *testing.T, dir string)
		want   []string
		is     error
		warn   string // no error; this warning
	}{
		{name: "truncated shard", layout: sharded, edit: func(t *testing.T, dir string) {
			p := filepath.Join(dir, shardOf(t, dir, fc1))
			st, _ := os.Stat(p)
			if err := os.Truncate(p, st.Size()-100); err != nil {
				t.Fatal(err)
			}
		}, want: []string{"model-0000", ".safetensors", "data section"}, is: ErrSafetensors},
		{name: "shard missing", layout: sharded, edit: func(t *testing.T, dir string) {
			if err := os.Remove(filepath.Join(dir, shardOf(t, dir, fc1))); err != nil {
				t.Fatal(err)
			}
		}, want: []string{"missing", "model-0000", "model.safetensors.index.json"}, is: fs.ErrNotExist},
		{name: "index parent path", layout: sharded, edit: setShard("../x.safetensors"),
			want: []string{`"../x.safetensors"`, "weight_map", fc1, "no paths"}, is: ErrCheckpoint},
		{name: "index absolute path", layout: sharded, edit: setShard("/etc/x.safetensors"),
			want: []string{`"/etc/x.safetensors"`, "no paths"}, is: ErrCheckpoint},
		{name: "index subdirectory", layout: sharded, edit: setShard("sub/x.safetensors"), want: []string{`"sub/x.safetensors"`}},
		{name: "index backslash", layout: sharded, edit: setShard(`..\x.safetensors`), want: []string{`x.safetensors`, "no paths"}},
		{name: "index dotdot", layout: sharded, edit: setShard(".."), want: []string{`".."`}},
		{name: "index wrong suffix", layout: sharded, edit: setShard("x.bin"), want: []string{`"x.bin"`, "want a .safetensors file"}},
		{name: "index empty shard name", layout: sharded, edit: setShard(""), want: []string{"empty file name"}},
		{name: "index names config", layout: sharded, edit: setShard("config.json"), want: []string{`"config.json"`}},
		{name: "key in index missing from its shard", layout: sharded, edit: func(t *testing.T, dir string) {
			m := readIndex(t, dir)
			wm := m["weight_map"].(map[string]any)
			for _, f := range wm {
				if f != wm[fc1] {
					wm[fc1] = f
					break
				}
			}
			writeIndex(t, dir, m)
		}, want: []string{fc1, "does not hold it", "model.safetensors.index.json"}, is: ErrCheckpoint},
		{name: "key in index not in any shard", layout: sharded, edit: func(t *testing.T, dir string) {
			m := readIndex(t, dir)
			wm := m["weight_map"].(map[string]any)
			wm["model.decoder.ghost.weight"] = wm[fc1]
			writeIndex(t, dir, m)
		}, want: []string{"model.decoder.ghost.weight", "does not hold it"}},
		{name: "key in shard not in index", layout: sharded, extra: []testmodels.NamedTensor{
			{Name: "decoder.stray.weight", Shape: []int{2}, DType: "F32", Data: []float32{1, 2}}},
			edit: func(t *testing.T, dir string) {
				m := readIndex(t, dir)
				delete(m["weight_map"].(map[string]any), "model.decoder.stray.weight")
				writeIndex(t, dir, m)
			}, warn: `"model.decoder.stray.weight" is not in model.safetensors.index.json`},
		{name: "unexpected tensor", layout: single, extra: []testmodels.NamedTensor{
			{Name: "foo.bar", Shape: []int{2}, DType: "F32", Data: []float32{1, 2}}}, warn: `unexpected tensor "foo.bar" ignored`},
		{name: "index duplicate key", layout: sharded, edit: rawIndex(`{"weight_map":{"a":"model-00001-of-00002.safetensors","a":"model-00001-of-00002.safetensors"}}`),
			want: []string{`duplicate key "a"`, "model.safetensors.index.json"}},
		{name: "index not json", layout: sharded, edit: rawIndex(`weights`), want: []string{"model.safetensors.index.json", "not a JSON object"}},
		{name: "index no weight_map", layout: sharded, edit: rawIndex(`{"metadata":{}}`), want: []string{`no "weight_map"`}},
		{name: "index empty weight_map", layout: sharded, edit: rawIndex(`{"weight_map":{}}`), want: []string{`"weight_map" is empty`}},
		{name: "index weight_map array", layout: sharded, edit: rawIndex(`{"weight_map":[]}`), want: []string{`"weight_map"`}},
		{name: "index shard not a string", layout: sharded, edit: rawIndex(`{"weight_map":{"a":1}}`), want: []string{`"weight_map"`, `"a"`}},
		{name: "index metadata not object", layout: sharded, edit: rawIndex(`{"metadata":3,"weight_map":{"a":"b.safetensors"}}`), want: []string{`"metadata"`}},
		{name: "index trailing data", layout: sharded, edit: rawIndex(`{"weight_map":{"a":"b.safetensors"}} x`), want: []string{"trailing"}},
		{name: "bin index parent path", layout: sharded, edit: func(t *testing.T, dir string) {
			for _, e := range mustReadDir(t, dir) {
				if e != "config.json" {
					os.Remove(filepath.Join(dir, e))
				}
			}
			if err := os.WriteFile(filepath.Join(dir, "pytorch_model.bin.index.json"),
				[]byte(`{"metadata":{"total_size":4},"weight_map":{"decoder.x":"../pytorch_model-00001-of-00001.bin"}}`), 0o644); err != nil {
				t.Fatal(err)
			}
		}, want: []string{"pytorch_model.bin.index.json", `"../pytorch_model-00001-of-00001.bin"`, "no paths"}},
		{name: "shape mismatch", layout: sharded, edit: func(t *testing.T, dir string) {
			editFile(t, filepath.Join(dir, "config.json"), func(s string) string {
				return strings.Replace(s, `"ffn_dim": 64`, `"ffn_dim": 48`, 1)
			})
		}, want: []string{fc1, "shape [64 32], want [48 32]", "config.json"}, is: ErrCheckpoint},
		{name: "I32 weight", layout: single, edit: func(t *testing.T, dir string) {
			editFile(t, filepath.Join(dir, "model.safetensors"), func(s string) string {
				return strings.Replace(s, `"decoder.layers.1.fc2.weight":{"dtype":"F32"`, `"decoder.layers.1.fc2.weight":{"dtype":"I32"`, 1)
			})
		}, want: []string{"model.safetensors", `"decoder.layers.1.fc2.weight"`, "dtype I32"}, is: ErrCheckpoint},
		{name: "missing weights listed at once", layout: sharded,
			drop: []string{"decoder.layers.1.fc1.weight", "decoder.layers.0.self_attn.q_proj.bias", "decoder.final_layer_norm.weight"},
			want: []string{"3 weights missing", "decoder.layers.1.fc1.weight", "decoder.layers.0.self_attn.q_proj.bias", "decoder.final_layer_norm.weight", "config.json"},
			is:   ErrCheckpoint},
		{name: "untied without lm_head", fam: "untied-head", layout: single, drop: []string{"lm_head.weight"},
			want: []string{"1 weights missing", "lm_head.weight"}},
		{name: "both key namings", layout: single, dup: "decoder.layers.0.fc1.weight",
			want: []string{`"model.decoder.layers.0.fc1.weight"`, `"decoder.layers.0.fc1.weight"`, "both map to"}},
		{name: "unsupported activation", layout: single, edit: func(t *testing.T, dir string) {
			editFile(t, filepath.Join(dir, "config.json"), func(s string) string {
				return strings.Replace(s, `"activation_function": "relu"`, `"activation_function": "mish"`, 1)
			})
		}, want: []string{"config.json", `"activation_function"`, `"mish" is not supported`, "gelu"}},
		{name: "heads do not divide hidden", layout: single, edit: func(t *testing.T, dir string) {
			editFile(t, filepath.Join(dir, "config.json"), func(s string) string {
				return strings.Replace(s, `"num_attention_heads": 4`, `"num_attention_heads": 5`, 1)
			})
		}, want: []string{"config.json", `"num_attention_heads"`}},
		{name: "no weights", layout: single, edit: func(t *testing.T, dir string) {
			os.Remove(filepath.Join(dir, "model.safetensors"))
		}, want: []string{"no weights", "model.safetensors", "pytorch_model.bin"}, is: fs.ErrNotExist},
		{name: "garbage bin", layout: single, edit: func(t *testing.T, dir string) {
			os.Remove(filepath.Join(dir, "model.safetensors"))
			if err := os.WriteFile(filepath.Join(dir, "pytorch_model.bin"), []byte("PK garbage"), 0o644); err != nil {
				t.Fatal(err)
			}
		}, want: []string{"pytorch_model.bin"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			fam := c.fam
			if fam == "" {
				fam = "pre-ln-tied"
			}
			cfg := testmodels.ConfigFamilies()[fam]
			var w []testmodels.NamedTensor
			for _, x := range testmodels.GenWeights(cfg, 1, "F32") {
				if !slices.Contains(c.drop, x.Name) {
					w = append(w, x)
				}
			}
			w = append(w, c.extra...)
			if c.dup != "" {
				// A copy stored under transformers' name; the writer
				// leaves names other than decoder.* as they are.
				x := w[slices.IndexFunc(w, func(y testmodels.NamedTensor) bool { return y.Name == c.dup })]
				x.Name = "model." + x.Name
				w = append(w, x)
			}
			dir := t.TempDir()
			if err := testmodels.WriteHFDir(dir, cfg, w, c.layout); err != nil {
				t.Fatal(err)
			}
			if c.edit != nil {
				c.edit(t, dir)
			}
			for _, open := range []func() (Source, error){
				func() (Source, error) { return OpenSource(dir) },
				func() (Source, error) { return OpenHF(os.DirFS(dir), dir) },
			} {
				src, err := open()
				if c.warn != "" {
					if err != nil {
						t.Fatal(err)
					}
					if w := strings.Join(src.Warnings(), "\n"); !strings.Contains(w, c.warn) {
						t.Errorf("warnings %q lack %q", w, c.warn)
					}
					src.Close()
					continue
				}
				if err == nil {
					src.Close()
					t.Fatal("accepted")
				}
				for _, s := range c.want {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("error %q lacks %q", err, s)
					}
				}
				if c.is != nil && !errors.Is(err, c.is) {
					t.Errorf("error %q does not wrap %v", err, c.is)
				}
			}
		})
	}
}

func mustReadDir(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	sort.Strings(out)
	return out
}

// TestMappedShardTruncatedAfterOpen: a safetensors file cut short while
// the source has it mapped gives an error on read, not a crash.
func TestMappedShardTruncatedAfterOpen(t *testing.T) {
	dir, _, w := genDir(t, "pre-ln-tied", "F32", testmodels.Layout{Format: "safetensors"})
	src, err := OpenSource(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	last := w[len(w)-1].Name
	if _, err := src.Tensor(last); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(filepath.Join(dir, "model.safetensors"), 4096); err != nil {
		t.Fatal(err)
	}
	_, err = src.Tensor(last)
	if err == nil || !strings.Contains(err.Error(), "fault") || !strings.Contains(err.Error(), last) ||
		!strings.Contains(err.Error(), "model.safetensors") {
		t.Fatalf("read of a truncated mapping: %v", err)
	}
}

// TestOpenSourceKinds: what OpenSource accepts and how it refuses the rest.
func TestOpenSourceKinds(t *testing.T) {
	hfDir, _, _ := genDir(t, "gelu", "F16", testmodels.Layout{Format: "safetensors"})
	// ONNX next to HF weights: the HF weights win.
	if err := os.WriteFile(filepath.Join(hfDir, "model.onnx"), []byte("not onnx"), 0o644); err != nil {
		t.Fatal(err)
	}
	src, err := OpenSource(hfDir)
	if err != nil {
		t.Fatal(err)
	}
	src.Close()

	tmp := t.TempDir()
	write := func(name, data string) string {
		p := filepath.Join(tmp, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	onnxOnly := filepath.Dir(write("onnxdir/model.onnx", "garbage"))
	write("onnxdir/config.json", `{"model_type":"opt"}`)
	oneOnnx := filepath.Dir(write("one/opt.onnx", "garbage"))
	twoOnnx := filepath.Dir(write("two/a.onnx", "x"))
	write("two/b.onnx", "x")
	cases := []struct {
		in   string
		want []string
	}{
		{filepath.Join(tmp, "nope"), []string{"nope", "no such file"}},
		{filepath.Join(hfDir, "model.safetensors"), []string{"model.safetensors", "file alone", "config.json"}},
		{filepath.Join(hfDir, "config.json"), []string{"file alone"}},
		{write("x.txt", "x"), []string{"x.txt", "not a model", ".onnx"}},
		{write("m.onnx", "garbage"), []string{"m.onnx"}},
		{onnxOnly, []string{filepath.Join(onnxOnly, "model.onnx")}},
		{oneOnnx, []string{filepath.Join(oneOnnx, "opt.onnx")}},
		{twoOnnx, []string{"2 .onnx files", "a.onnx", "b.onnx"}},
		{filepath.Dir(write("empty/config.json", `{"model_type":"opt"}`)), []string{"no weights"}},
		{filepath.Dir(write("noconfig/model.safetensors", "x")), []string{"config.json"}},
	}
	for _, c := range cases {
		src, err := OpenSource(c.in)
		if err == nil {
			src.Close()
			t.Errorf("%s accepted", c.in)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q lacks %q", c.in, err, w)
			}
		}
	}
}

// TestMappedLargeTensor: tensors spanning several decode chunks of the
// mapped reader read back exactly (F16, BF16 and F32, raw and decoded).
func TestMappedLargeTensor(t *testing.T) {
	n := mappedChunk/2 + 12345 // F16: one chunk and a bit; F32: two and a bit
	var ts []testmodels.NamedTensor
	for _, dt := range []string{"F16", "F32", "BF16"} {
		d := make([]float32, n)
		for i := range d {
			d[i] = float32(i%251) - 125 // exact in all three dtypes
		}
		ts = append(ts, testmodels.NamedTensor{Name: "t" + dt, Shape: []int{n}, DType: dt, Data: d})
	}
	p := filepath.Join(t.TempDir(), "big.safetensors")
	if err := testmodels.WriteSafetensors(p, ts, nil); err != nil {
		t.Fatal(err)
	}
	st, err := OpenSafetensorsFile(p)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for _, x := range ts {
		got, err := st.ReadFloat32(x.Name)
		if err != nil {
			t.Fatal(err)
		}
		if !equalF32(got, x.Data) {
			t.Errorf("%s differs", x.Name)
		}
		raw, err := st.ReadRaw(x.Name)
		if err != nil {
			t.Fatal(err)
		}
		e, _ := st.Entry(x.Name)
		if int64(len(raw)) != e.End-e.Begin {
			t.Errorf("%s: %d raw bytes", x.Name, len(raw))
		}
	}
	st.Close()
	if _, err := st.ReadFloat32("tF16"); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Errorf("read after Close: %v", err)
	}
}

func FuzzParseHFIndex(f *testing.F) {
	f.Add([]byte(`{"metadata":{"total_size":8},"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors"}}`))
	f.Add([]byte(`{"weight_map":{"a":"../x.safetensors"}}`))
	f.Add([]byte(`{"weight_map":{"a":"x.safetensors","a":"y.safetensors"}}`))
	f.Add([]byte(`{"weight_map":[]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, order, err := parseHFIndex("i.json", b, ".safetensors")
		if err != nil {
			return
		}
		if len(m) == 0 || len(order) != len(m) {
			t.Fatalf("%d keys, %d in order", len(m), len(order))
		}
		for _, k := range order {
			if checkShardName(m[k], ".safetensors") != nil || strings.ContainsAny(m[k], `/\`) {
				t.Fatalf("shard %q accepted", m[k])
			}
		}
	})
}

// TestHashMapped: the mapping's digest is the file's SHA-256, and a file
// cut short while mapped gives an error naming it, not a crash.
func TestHashMapped(t *testing.T) {
	dir, _, _ := genDir(t, "pre-ln-tied", "F32", testmodels.Layout{Format: "safetensors"})
	p := filepath.Join(dir, "model.safetensors")
	raw, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	want := sha256.Sum256(raw)
	st, err := OpenSafetensorsFile(p)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	sum, n, ok, err := st.HashMapped()
	if err != nil || !ok || n != int64(len(raw)) || sum != hex.EncodeToString(want[:]) {
		t.Fatalf("HashMapped: %s %d %v %v; want %x %d", sum, n, ok, err, want, len(raw))
	}
	if err := os.Truncate(p, 4096); err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := st.HashMapped(); err == nil || !strings.Contains(err.Error(), "fault") || !strings.Contains(err.Error(), "model.safetensors") {
		t.Fatalf("hash of a truncated mapping: %v", err)
	}
}

// A tensor large enough that its decode would run on several goroutines
// still reports a mapping truncated after the open as an error (a fault
// on another goroutine would kill the process).
func TestMappedLargeTensorTruncatedAfterOpen(t *testing.T) {
	const n = 4 << 20
	p := filepath.Join(t.TempDir(), "big.safetensors")
	hdr := []byte(fmt.Sprintf(`{"w":{"dtype":"F32","shape":[%d],"data_offsets":[0,%d]}}`, n, 4*n))
	for len(hdr)%8 != 0 {
		hdr = append(hdr, ' ')
	}
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	var lenb [8]byte
	binary.LittleEndian.PutUint64(lenb[:], uint64(len(hdr)))
	if _, err := f.Write(append(lenb[:], hdr...)); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(int64(8 + len(hdr) + 4*n)); err != nil {
		t.Fatal(err)
	}
	f.Close()
	st, err := OpenSafetensorsFile(p)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := os.Truncate(p, 4096); err != nil {
		t.Fatal(err)
	}
	if _, err := st.ReadFloat32("w"); err == nil || !strings.Contains(err.Error(), "fault") {
		t.Fatalf("read of a truncated mapping: %v", err)
	}
}

// TestOpenSourceEmbedded: "" and DefaultLabel open the default model,
// TinyLabel the fixture; an unknown embedded name is an error that lists
// the real ones.
func TestOpenSourceEmbedded(t *testing.T) {
	for in, hidden := range map[string]int64{"": 128, DefaultLabel: 128, TinyLabel: 64} {
		src, err := OpenSource(in)
		if err != nil {
			t.Fatalf("%q: %v", in, err)
		}
		if got := src.Config().HiddenSize; got != hidden {
			t.Errorf("%q: hidden size %d, want %d", in, got, hidden)
		}
		src.Close()
	}
	_, err := OpenSource(EmbeddedPrefix + "nope")
	if err == nil || !strings.Contains(err.Error(), DefaultLabel) || !strings.Contains(err.Error(), TinyLabel) {
		t.Errorf("unknown embedded model: %v", err)
	}
}
