package train

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"testing"
	"time"

	"github.com/slopeml/slope/convert"
	"github.com/slopeml/slope/internal/rusage"
)

// optConfig is the config.json of a pre-LayerNorm ReLU OPT with a tied
// head and 256 positions.
func optConfig(vocab, hidden, ffn, layers, heads int) string {
	return fmt.Sprintf(`{"model_type": "opt", "vocab_size": %d, "hidden_size": %d, "ffn_dim": %d,
 "num_hidden_layers": %d, "num_attention_heads": %d, "max_position_embeddings": 256,
 "word_embed_proj_dim": %d, "do_layer_norm_before": true, "activation_function": "relu",
 "enable_bias": true, "layer_norm_elementwise_affine": true, "tie_word_embeddings": true}`,
		vocab, hidden, ffn, layers, heads, hidden)
}

// benchModelConfig is the model the step benchmarks train, by
// SLOPE_BENCH_MODEL:
//   - "wide": decoder linears dominate the step, as in large models
//     (OPT-350m's width, 2 layers): the six linears hold 25M values
//     against the 8M of the tied embedding;
//   - "opt125m": OPT-125m's shape;
//   - "opt350m": OPT-350m's shape with a pre-LayerNorm, tied, 1024-wide
//     head (24 layers, hidden 1024, ffn 4096, vocab 50272): the decoder
//     linears hold 302M values against the embedding's 51M;
//   - otherwise bench/train.sh's model (4 layers, hidden 256, ffn 1024,
//     vocab 8192: 3.1M against 2.1M).
func benchModelConfig() string {
	switch os.Getenv("SLOPE_BENCH_MODEL") {
	case "wide":
		return optConfig(8192, 1024, 4096, 2, 16)
	case "opt125m":
		return optConfig(50272, 768, 3072, 12, 12)
	case "opt350m":
		return optConfig(50272, 1024, 4096, 24, 16)
	}
	return optConfig(8192, 256, 1024, 4, 4)
}

func benchModel(b *testing.B, nm string) string {
	b.Helper()
	dir := b.TempDir()
	cfg := filepath.Join(dir, "config.json")
	if err := os.WriteFile(cfg, []byte(benchModelConfig()), 0o644); err != nil {
		b.Fatal(err)
	}
	out := filepath.Join(dir, "m.slope")
	if _, err := convert.Init(convert.InitOptions{Config: cfg, Out: out, NM: nm, Seed: 1}); err != nil {
		b.Fatal(err)
	}
	return out
}

// BenchmarkStep times one optimizer step of 4 x 128 tokens on
// bench/train.sh's model, dense and 2:4 (compare the two in one run; the
// tokens/s metric is per step). SLOPE_BENCH_THREADS sets Options.Threads
// (1 keeps all work on the benchmark's goroutine, for clean profiles).
func BenchmarkStep(b *testing.B) {
	for _, nm := range []string{"dense", "2:4"} {
		b.Run(nm, func(b *testing.B) {
			threads, _ := strconv.Atoi(os.Getenv("SLOPE_BENCH_THREADS"))
			tr, err := New(benchModel(b, nm), Options{LR: 1e-3, Threads: threads})
			if err != nil {
				b.Fatal(err)
			}
			defer tr.Close()
			rng := rand.New(rand.NewPCG(1, 2))
			// Windows of --seq 128; one step first to warm up.
			ids := randBatch(rng, tr.Vocab(), 4, 129)
			if _, err := tr.Step(ids); err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				if _, err := tr.Step(ids); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(4*128)*float64(b.N)/b.Elapsed().Seconds(), "tokens/s")
		})
	}
}

// BenchmarkStepPair alternates one dense and one 2:4 step of the same
// batch on bench/train.sh's model, so that both see the same machine load
// (a shared machine makes separate runs incomparable), and reports each
// one's tokens/s by wall time and by CPU time (tokens per CPU-second of
// the process: every goroutine's work, insensitive to waiting for a
// core), and the 2:4/dense ratios. SLOPE_BENCH_THREADS sets
// Options.Threads.
func BenchmarkStepPair(b *testing.B) {
	threads, _ := strconv.Atoi(os.Getenv("SLOPE_BENCH_THREADS"))
	var trs [2]*Trainer
	for i, nm := range []string{"dense", "2:4"} {
		tr, err := New(benchModel(b, nm), Options{LR: 1e-3, Threads: threads})
		if err != nil {
			b.Fatal(err)
		}
		defer tr.Close()
		trs[i] = tr
	}
	ids := randBatch(rand.New(rand.NewPCG(1, 2)), trs[0].Vocab(), 4, 129) // windows of --seq 128
	for _, tr := range trs {                                              // warm-up: buffers and prepared weights
		if _, err := tr.Step(ids); err != nil {
			b.Fatal(err)
		}
	}
	var wall, cpu [2]float64
	names := [2]string{"dense", "2:4"}
	for b.Loop() {
		for i, tr := range trs {
			t0, c0 := time.Now(), rusage.CPUSeconds()
			var err error
			// The label splits a -cpuprofile by model (go tool pprof
			// -tagfocus model=dense); with SLOPE_BENCH_THREADS=1 every
			// sample carries it (worker goroutines of the pool do not).
			pprof.Do(context.Background(), pprof.Labels("model", names[i]), func(context.Context) {
				_, err = tr.Step(ids)
			})
			if err != nil {
				b.Fatal(err)
			}
			wall[i] += time.Since(t0).Seconds()
			cpu[i] += rusage.CPUSeconds() - c0
		}
	}
	tok := float64(4 * 128 * b.N)
	b.ReportMetric(tok/wall[0], "dense-tok/s")
	b.ReportMetric(tok/wall[1], "2:4-tok/s")
	b.ReportMetric(wall[0]/wall[1], "wall-ratio")
	b.ReportMetric(tok/cpu[0], "dense-tok/cpu-s")
	b.ReportMetric(tok/cpu[1], "2:4-tok/cpu-s")
	b.ReportMetric(cpu[0]/cpu[1], "cpu-ratio")
}

// BenchmarkMaskRefresh times RefreshMasks (the transpose masks of every
// N:M weight by magnitude) plus the next step's rebuild of the W_dpᵀ
// layouts whose mask changed (the step moved the values), as the extra
// time of a step that follows a refresh; it runs every
// Options.MaskRefresh steps (default 100).
func BenchmarkMaskRefresh(b *testing.B) {
	threads, _ := strconv.Atoi(os.Getenv("SLOPE_BENCH_THREADS"))
	tr, err := New(benchModel(b, "2:4"), Options{LR: 1e-3, Threads: threads, MaskRefresh: -1})
	if err != nil {
		b.Fatal(err)
	}
	defer tr.Close()
	ids := randBatch(rand.New(rand.NewPCG(1, 2)), tr.Vocab(), 4, 129) // windows of --seq 128
	if _, err := tr.Step(ids); err != nil {
		b.Fatal(err)
	}
	var plain, refreshed float64
	for b.Loop() {
		t0 := time.Now()
		if _, err := tr.Step(ids); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if err := tr.RefreshMasks(); err != nil {
			b.Fatal(err)
		}
		if _, err := tr.Step(ids); err != nil {
			b.Fatal(err)
		}
		plain += t1.Sub(t0).Seconds()
		refreshed += time.Since(t1).Seconds()
	}
	b.ReportMetric((refreshed-plain)/float64(b.N)*1e3, "refresh-ms")
	b.ReportMetric(plain/float64(b.N)*1e3, "step-ms")
}
