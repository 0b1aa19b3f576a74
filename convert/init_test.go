package convert

import (
	"bytes"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/format/slopepb"
	"github.com/slopeml/slope/runtime"
)

// tinyConfig is an OPT config.json small enough for tests.
const tinyConfig = `{"model_type": "opt", "architectures": ["OPTForCausalLM"], "vocab_size": 96,
 "hidden_size": 32, "ffn_dim": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
 "max_position_embeddings": 64, "word_embed_proj_dim": 32, "do_layer_norm_before": true,
 "activation_function": "relu", "enable_bias": true, "layer_norm_elementwise_affine": true,
 "tie_word_embeddings": true, "pad_token_id": 1, "bos_token_id": 2, "eos_token_id": 2}`

func TestRandomMask(t *testing.T) {
	for _, p := range []format.NM{{N: 2, M: 4}, {N: 1, M: 4}, {N: 3, M: 8}} {
		keep, err := RandomMask(p, 16, 64, rand.New(rand.NewPCG(1, 2)))
		if err != nil {
			t.Fatal(err)
		}
		counts := make([]int, p.M) // how often each slot is kept
		for g := 0; g < len(keep)/p.M; g++ {
			n := 0
			for j, k := range keep[g*p.M : (g+1)*p.M] {
				if k {
					n++
					counts[j]++
				}
			}
			if n != p.N {
				t.Fatalf("%s: group %d keeps %d", p, g, n)
			}
		}
		// Every slot gets chosen (a uniform choice; 256 groups).
		for j, c := range counts {
			if c == 0 {
				t.Fatalf("%s: slot %d never kept: %v", p, j, counts)
			}
		}
	}
	if _, err := RandomMask(format.NM{N: 2, M: 4}, 2, 6, rand.New(rand.NewPCG(1, 2))); err == nil {
		t.Fatal("cols not a multiple of M accepted")
	}
}

// Init writes a verifiable 2:4 model with random masks, the same bytes for
// the same seed, other masks for another seed; its weights follow OPT's
// initialisation.
func TestInit(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.json")
	if err := os.WriteFile(cfg, []byte(tinyConfig), 0o644); err != nil {
		t.Fatal(err)
	}
	const created = "2026-01-02T03:04:05Z"
	write := func(name string, seed uint64) []byte {
		out := filepath.Join(dir, name)
		res, err := Init(InitOptions{Config: cfg, Out: out, NM: "2:4", Seed: seed, Created: created})
		if err != nil {
			t.Fatal(err)
		}
		if res.Pruned != 12 {
			t.Fatalf("%d weights pruned, want 12", res.Pruned)
		}
		f, err := format.Open(out, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := f.Verify(nil); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	a, b, c := write("a.slope", 7), write("b.slope", 7), write("c.slope", 8)
	if !bytes.Equal(a, b) {
		t.Fatal("the same seed wrote different files")
	}
	if bytes.Equal(a, c) {
		t.Fatal("another seed wrote the same file")
	}
	// Weights: N(0, 0.02²) matrices, zero biases, unit LayerNorm weights.
	src := RandomSource(mustConfig(t, cfg), 7)
	fc1, err := src.Tensor("decoder.layers.0.fc1.weight")
	if err != nil {
		t.Fatal(err)
	}
	var s2 float64
	for _, v := range fc1.Data {
		s2 += float64(v) * float64(v)
	}
	if std := math.Sqrt(s2 / float64(len(fc1.Data))); math.Abs(std-InitStd) > 0.002 {
		t.Fatalf("fc1 std %g, want %g", std, InitStd)
	}
	for name, want := range map[string]float32{"decoder.layers.0.fc1.bias": 0, "decoder.layers.1.final_layer_norm.weight": 1, "decoder.layers.1.final_layer_norm.bias": 0} {
		tt, err := src.Tensor(name)
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range tt.Data {
			if v != want {
				t.Fatalf("%s holds %g, want %g", name, v, want)
			}
		}
	}
	// Untrained: the next-token loss is that of a uniform guess, ln(vocab).
	m, err := runtime.Open(filepath.Join(dir, "a.slope"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ids := make([]int32, 40)
	for i := range ids {
		ids[i] = int32(3 + i*7%90)
	}
	sc, err := m.Score(t.Context(), ids, 0, 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	if want := math.Log(96); math.Abs(sc.NLL-want) > 0.05 {
		t.Fatalf("initial NLL %g, want about ln(96) = %g", sc.NLL, want)
	}
	if _, err := Init(InitOptions{Out: filepath.Join(dir, "x.slope")}); err == nil {
		t.Fatal("Init without a config succeeded")
	}
}

func mustConfig(t *testing.T, path string) *slopepb.OPTConfig {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	c, err := ParseOPTConfig(path, b)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
