// Command genckpt writes a deterministic OPT-shaped Hugging Face checkpoint
// (testmodels.WriteHFDirGen), one tensor in memory at a time, for
// benchmarks that need a large model without downloading one.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/slopeml/slope/testmodels"
)

// presets are OPT architectures by name.
var presets = map[string]testmodels.GenConfig{
	"opt-125m": {Vocab: 50272, Hidden: 768, Layers: 12, Heads: 12, FFN: 3072, MaxPos: 2048},
	"opt-350m": {Vocab: 50272, Hidden: 1024, Layers: 24, Heads: 16, FFN: 4096, MaxPos: 2048, WordEmbedProjDim: 512},
	"opt-1.3b": {Vocab: 50272, Hidden: 2048, Layers: 24, Heads: 32, FFN: 8192, MaxPos: 2048},
}

func main() {
	out := flag.String("out", "", "directory to write (created)")
	preset := flag.String("preset", "opt-1.3b", "architecture: opt-125m, opt-350m or opt-1.3b")
	dtype := flag.String("dtype", "F16", "stored dtype: F32, F16 or BF16")
	layout := flag.String("layout", "safetensors-sharded", "safetensors, safetensors-sharded, bin or bin-sharded")
	shard := flag.Int64("shard-bytes", 1_000_000_000, "tensor bytes per shard (sharded layouts)")
	prefix := flag.String("key-prefix", "model.", `prefix of the decoder.* keys ("model." or "")`)
	seed := flag.Uint64("seed", 1, "generator seed")
	onnxPath := flag.String("onnx", "", "also write the same weights as a with-past ONNX model (past_key_values.* inputs, present.* outputs) to this file, weights in PATH.data")
	flag.Parse()
	if *out == "" {
		fmt.Fprintln(os.Stderr, "genckpt: -out is required")
		os.Exit(2)
	}
	cfg, ok := presets[*preset]
	if !ok {
		fmt.Fprintf(os.Stderr, "genckpt: unknown preset %q\n", *preset)
		os.Exit(2)
	}
	cfg.PreLN = cfg.WordEmbedProjDim == 0 // OPT-350m is the post-LayerNorm one
	cfg.Bias, cfg.ElementwiseAffine, cfg.Tied = true, true, true
	cfg.Activation, cfg.PadID, cfg.BOSID, cfg.EOSID = "relu", 1, 2, 2
	start := time.Now()
	l := testmodels.Layout{Format: *layout, KeyPrefix: *prefix, ShardBytes: *shard}
	if err := testmodels.WriteHFDirGen(*out, cfg, *seed, *dtype, l); err != nil {
		fmt.Fprintln(os.Stderr, "genckpt:", err)
		os.Exit(1)
	}
	var total int64
	ents, _ := os.ReadDir(*out)
	for _, e := range ents {
		if st, err := os.Stat(filepath.Join(*out, e.Name())); err == nil {
			total += st.Size()
		}
	}
	fmt.Printf("genckpt: %s %s %s: %d files, %d bytes in %s\n", *preset, *dtype, *layout, len(ents), total, time.Since(start).Round(time.Millisecond))
	if *onnxPath != "" {
		start := time.Now()
		if err := writeONNX(*onnxPath, cfg, *seed, *dtype); err != nil {
			fmt.Fprintln(os.Stderr, "genckpt:", err)
			os.Exit(1)
		}
		fmt.Printf("genckpt: %s with-past ONNX %s in %s\n", *preset, *onnxPath, time.Since(start).Round(time.Millisecond))
	}
}

// writeONNX writes the weights WriteHFDirGen wrote (regenerated from the
// seed) as a with-past ONNX model, weights in an external data file.
func writeONNX(path string, cfg testmodels.GenConfig, seed uint64, dtype string) error {
	if !cfg.ElementwiseAffine {
		return fmt.Errorf("onnx: LayerNorms without weights are not supported")
	}
	var ws []testmodels.NamedTensor
	if err := testmodels.GenWeightsFunc(cfg, seed, dtype, func(t testmodels.NamedTensor) error {
		ws = append(ws, t)
		return nil
	}); err != nil {
		return err
	}
	oc := testmodels.ONNXConfig{
		Vocab: cfg.Vocab, Hidden: cfg.Hidden, Heads: cfg.Heads, Layers: cfg.Layers, FFN: cfg.FFN,
		MaxPos: cfg.MaxPos, ProjDim: cfg.WordEmbedProjDim, PreLN: cfg.PreLN,
		RemoveFinalLayerNorm: cfg.RemoveFinalLN, Tied: cfg.Tied, NoBias: !cfg.Bias,
		Activation: cfg.ActivationFunction(),
	}
	return testmodels.WriteOPTONNX(path, oc, ws, testmodels.ONNXOptions{ExternalData: true, WithPast: true})
}
