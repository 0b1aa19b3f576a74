package convert_test

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/slopeml/slope/convert"
	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/runtime"
	"github.com/slopeml/slope/testmodels"
)

// calibText is English text for calibration; heldOutText is scored and
// never used for calibration.
const calibText = `The river rose slowly through the night, and by morning the low fields
near the mill were under water. The farmers had seen floods before, but not
one that came so quietly. Old Martin walked along the dike with his dog and
counted the fence posts that still showed above the brown surface. He said
that the water would go down by evening if the rain stopped in the hills.
His neighbours were less sure. They carried sacks of grain to the upper
floor of the barn and tied the boats to the oak tree by the road. Children
watched from the church steps, where the ground was highest, and argued
about whether the fish would swim into the houses. In the afternoon the sun
came out, and the whole valley shone like a sheet of glass. By nightfall the
water had begun to fall, leaving mud and broken branches on every path.
The next week was spent cleaning, drying and repairing what could be saved.
`

const heldOutText = `A small bakery opened on the corner of the market square last spring. Every
morning before dawn the baker lit the oven and shaped the loaves by hand,
while his daughter wrote the day's prices on a board by the door.`

// tinyWithTokenizer copies the embedded tiny model to a directory and adds
// a byte-level BPE tokenizer whose ids fit its 512-token vocabulary.
func tinyWithTokenizer(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	src := testmodels.TinyFS()
	for _, name := range []string{"config.json", "model.safetensors", "generation_config.json"} {
		b, err := fs.ReadFile(src, name)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// GPT-2's byte-level alphabet: printable bytes stand for themselves,
	// the others get U+0100 onwards in byte order.
	vocab := map[string]int{}
	n := 0
	for b := 0; b < 256; b++ {
		r := rune(b)
		if !(b >= '!' && b <= '~' || b >= 0xA1 && b <= 0xAC || b >= 0xAE && b <= 0xFF) {
			r = rune(256 + n)
			n++
		}
		vocab[string(r)] = b
	}
	merges := [][2]string{{"Ġ", "t"}, {"h", "e"}, {"Ġt", "he"}, {"Ġ", "a"}, {"i", "n"}, {"e", "r"}, {"Ġ", "w"}, {"o", "n"}, {"Ġ", "s"}, {"e", "d"}}
	var mt strings.Builder
	mt.WriteString("#version: 0.2\n")
	for _, m := range merges {
		if _, ok := vocab[m[0]+m[1]]; !ok {
			vocab[m[0]+m[1]] = len(vocab)
		}
		mt.WriteString(m[0] + " " + m[1] + "\n")
	}
	vj, err := json.Marshal(vocab)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "vocab.json"), vj, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "merges.txt"), []byte(mt.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestOneShotEndToEnd converts the tiny model with each method,
// calibrating on text, runs the containers, and logs their held-out NLL
// (the model is random-weighted: the order is not asserted here, the
// layer-error unit tests assert it).
func TestOneShotEndToEnd(t *testing.T) {
	in := tinyWithTokenizer(t)
	tmp := t.TempDir()
	calib := filepath.Join(tmp, "calib.txt")
	if err := os.WriteFile(calib, []byte(calibText), 0o644); err != nil {
		t.Fatal(err)
	}
	var heldOut []int32
	nll := map[string]float64{}
	for _, method := range []string{"dense", "magnitude", "wanda", "sparsegpt"} {
		o := convert.Options{In: in, Out: filepath.Join(tmp, method+".slope"), Seed: 3, Created: "2024-01-01T00:00:00Z"}
		switch method {
		case "dense":
			o.NM = "dense"
		case "magnitude":
		default:
			o.Method, o.Calib, o.CalibSamples = method, calib, 16
		}
		var layers []convert.LayerReport
		o.LayerProgress = func(r convert.LayerReport) { layers = append(layers, r) }
		res, err := convert.DenseToSlope(t.Context(), o)
		if err != nil {
			t.Fatalf("%s: %v", method, err)
		}
		f, err := format.Open(o.Out, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Verify(nil); err != nil {
			t.Fatal(err)
		}
		prov := f.Manifest().Provenance
		f.Close()
		if method == "wanda" || method == "sparsegpt" {
			if res.Method != method || res.Pruned != 12 || len(res.Layers) != 2 || len(layers) != 2 || res.CalibSeqLen != 64 || res.CalibSamples != 16 {
				t.Errorf("%s: result method %q pruned %d layers %v (progress %v) seqlen %d", method, res.Method, res.Pruned, res.Layers, layers, res.CalibSeqLen)
			}
			for _, l := range res.Layers {
				if l.Seconds <= 0 || len(l.Weights) != 6 || l.Layers != 2 {
					t.Errorf("%s: layer report %+v", method, l)
				}
				t.Logf("%s: layer %d pruned in %.3fs", method, l.Layer, l.Seconds)
			}
			for _, w := range res.Weights {
				if w.Linear && !(w.CalibRelErr > 0 && w.CalibRelErr < 1.5) {
					t.Errorf("%s: %s calibration error %g", method, w.Name, w.CalibRelErr)
				}
			}
			c := prov.GetCalibration()
			if c.GetSource() != calib || c.GetSamples() != 16 || c.GetSeqLen() != 64 || c.GetSeed() != 3 || len(c.GetSha256()) != 64 {
				t.Errorf("%s: calibration provenance %v", method, c)
			}
			n := 0
			for _, tp := range prov.GetTensors() {
				if tp.Method == method {
					n++
					if !strings.Contains(tp.Reason, "calibrated on "+calib) || !strings.Contains(tp.Reason, "16 samples of 64 tokens, seed 3") {
						t.Errorf("%s: provenance reason %q", tp.Name, tp.Reason)
					}
				}
			}
			if n != 12 {
				t.Errorf("%s: %d tensors with method %s in the provenance", method, n, method)
			}
		}
		m, err := runtime.Open(o.Out, nil)
		if err != nil {
			t.Fatalf("%s: %v", method, err)
		}
		if heldOut == nil {
			tok, err := m.Tokenizer()
			if err != nil {
				t.Fatal(err)
			}
			for _, id := range tok.EncodeWithBOS(heldOutText, 2) {
				heldOut = append(heldOut, int32(id))
			}
		}
		sr, err := m.Score(t.Context(), heldOut, 0, 0, 0)
		m.Close()
		if err != nil {
			t.Fatalf("%s: %v", method, err)
		}
		nll[method] = sr.NLL
	}
	t.Logf("held-out NLL on %d tokens (tiny random model, 2:4): dense %.4f, magnitude %.4f, wanda %.4f, sparsegpt %.4f",
		len(heldOut), nll["dense"], nll["magnitude"], nll["wanda"], nll["sparsegpt"])
}

// writeTokens writes a token file of n ids, id(i) the i-th (little-endian
// uint16s), to path and returns path.
func writeTokens(t *testing.T, path string, n int, id func(i int) int) string {
	t.Helper()
	b := make([]byte, 2*n)
	for i := range n {
		binary.LittleEndian.PutUint16(b[2*i:], uint16(id(i)))
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// convertRead converts with o and returns the result and the file's
// bytes.
func convertRead(t *testing.T, o convert.Options) (*convert.Result, []byte) {
	t.Helper()
	res, err := convert.DenseToSlope(t.Context(), o)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(o.Out)
	if err != nil {
		t.Fatal(err)
	}
	return res, b
}

// TestOneShotDeterministicTokens: a token file calibrates the embedded
// model (no tokenizer needed); the same seed gives the same file, another
// seed other samples; svd adapters and merged adapters work on top.
func TestOneShotDeterministicTokens(t *testing.T) {
	tmp := t.TempDir()
	calib := writeTokens(t, filepath.Join(tmp, "calib.bin"), 600, func(i int) int { return (i*37 + i*i) % 512 })
	conv := func(name string, seed uint64, extra func(*convert.Options)) (*convert.Result, []byte) {
		o := convert.Options{In: convert.TinyLabel, Out: filepath.Join(tmp, name), Method: "sparsegpt", Calib: calib, CalibSamples: 8, CalibSeqLen: 32,
			Seed: seed, Created: "2024-01-01T00:00:00Z", NM: "4:8"}
		if extra != nil {
			extra(&o)
		}
		return convertRead(t, o)
	}
	_, a := conv("a.slope", 1, nil)
	_, b := conv("b.slope", 1, nil)
	_, c := conv("c.slope", 2, nil)
	if !slices.Equal(a, b) {
		t.Error("same seed, different files")
	}
	if slices.Equal(a, c) {
		t.Error("another seed gave the same file")
	}
	for _, merged := range []bool{false, true} {
		res, _ := conv("svd.slope", 1, func(o *convert.Options) {
			o.Rank, o.AdapterInit, o.MergeAdapters, o.Method = 8, "svd", merged, "wanda"
		})
		for _, w := range res.Weights {
			if w.Linear && !(w.RelErrAdapted < w.RelErrPruned) {
				t.Errorf("merged %v: %s: adapted error %g not below pruned %g", merged, w.Name, w.RelErrAdapted, w.RelErrPruned)
			}
		}
		m, err := runtime.Open(res.Out, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := m.Score(t.Context(), []int32{2, 10, 20, 30, 40, 50}, 0, 0, 0); err != nil {
			t.Fatal(err)
		}
		m.Close()
	}
}

// TestCalibChunkInvariance: the calibration's chunking (--calib-chunk)
// bounds its memory and never changes the output: chunks of 1 and 7
// samples (60 tokens each, so the Hessian's 2048-row blocks straddle
// chunks) give the bytes of one chunk of all 40 samples, for Wanda and
// SparseGPT.
func TestCalibChunkInvariance(t *testing.T) {
	tmp := t.TempDir()
	calib := writeTokens(t, filepath.Join(tmp, "calib.u16"), 6000, func(i int) int { return (i*131 + i*i*7) % 512 })
	// Also 9 samples of 3 tokens: chunks of 1, 2 and 4 samples would make
	// calls of fewer rows than the kernels' blocked GEMM takes (a short
	// last one too); the chunking must round them up.
	for _, cfg := range []struct{ samples, seq int }{{40, 60}, {9, 3}} {
		for _, method := range []string{"wanda", "sparsegpt"} {
			var want []byte
			var wantErrs []float64
			for _, chunk := range []int{0, 1, 2, 4, 7} {
				o := convert.Options{In: convert.TinyLabel, Out: filepath.Join(tmp, fmt.Sprintf("%s-%d-%d.slope", method, cfg.seq, chunk)), Method: method, Calib: calib,
					CalibSamples: cfg.samples, CalibSeqLen: cfg.seq, CalibChunk: chunk, Seed: 3, Created: "2024-01-01T00:00:00Z"}
				res, b := convertRead(t, o)
				var errs []float64 // unrounded, unlike the provenance's
				for _, w := range res.Weights {
					errs = append(errs, w.CalibRelErr)
				}
				if want == nil {
					want, wantErrs = b, errs
					continue
				}
				if !bytes.Equal(b, want) {
					t.Errorf("%s, %d x %d tokens: --calib-chunk %d gives another file than one chunk", method, cfg.samples, cfg.seq, chunk)
				}
				if !slices.Equal(errs, wantErrs) {
					t.Errorf("%s, %d x %d tokens: --calib-chunk %d: output errors %v, one chunk %v", method, cfg.samples, cfg.seq, chunk, errs, wantErrs)
				}
			}
		}
	}
	if _, err := convert.DenseToSlope(t.Context(), convert.Options{In: convert.TinyLabel, Out: filepath.Join(tmp, "x.slope"), Method: "wanda", Calib: calib, CalibChunk: -1}); err == nil || !strings.Contains(err.Error(), "--calib-chunk") {
		t.Errorf("--calib-chunk -1: %v", err)
	}
	if _, err := convert.DenseToSlope(t.Context(), convert.Options{In: convert.TinyLabel, Out: filepath.Join(tmp, "y.slope"), CalibChunk: 4}); err == nil || !strings.Contains(err.Error(), "--calib-chunk") {
		t.Errorf("--calib-chunk with magnitude: %v", err)
	}
}

func TestOneShotErrors(t *testing.T) {
	tmp := t.TempDir()
	text := filepath.Join(tmp, "calib.txt")
	os.WriteFile(text, []byte(calibText), 0o644)
	odd := filepath.Join(tmp, "odd.bin")
	os.WriteFile(odd, []byte{1, 2, 3}, 0o644)
	big := filepath.Join(tmp, "big.u16")
	os.WriteFile(big, []byte{0xff, 0xff, 1, 0, 2, 0, 3, 0}, 0o644)
	short := filepath.Join(tmp, "short.u32")
	os.WriteFile(short, []byte{1, 0, 0, 0, 2, 0, 0, 0}, 0o644)
	out := filepath.Join(tmp, "x.slope")
	cases := []struct {
		o    convert.Options
		want string
	}{
		{convert.Options{Method: "obs"}, "--method"},
		{convert.Options{Method: "wanda"}, "--calib"},
		{convert.Options{Calib: text}, "--calib"},
		{convert.Options{CalibSamples: 3}, "--calib-samples"},
		{convert.Options{Method: "sparsegpt", Calib: filepath.Join(tmp, "nope.txt")}, "nope.txt"},
		{convert.Options{Method: "wanda", Calib: text}, "tokenizer"}, // the embedded model has none
		{convert.Options{Method: "wanda", Calib: odd}, odd},
		{convert.Options{Method: "wanda", Calib: big}, big},
		{convert.Options{Method: "wanda", Calib: short, CalibSeqLen: 8}, short},
		{convert.Options{Method: "wanda", Calib: short, CalibSeqLen: 100}, "--calib-seqlen"},
		{convert.Options{Method: "wanda", Calib: short, CalibSamples: -1}, "--calib-samples"},
		{convert.Options{Method: "wanda", Calib: short, CalibFormat: "csv"}, "--calib-format"},
	}
	for _, c := range cases {
		c.o.Out = out
		if c.o.In == "" {
			c.o.In = convert.TinyLabel
		}
		_, err := convert.DenseToSlope(t.Context(), c.o)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: error %v, want one naming %q", c.o, err, c.want)
		}
	}
	if _, err := os.Stat(out); err == nil {
		t.Error("a failed conversion left its output")
	}
}

// TestOneShotFamilies: the calibrated methods handle every generated OPT
// variant (post-LayerNorm with projections, no bias, untied head, ...).
func TestOneShotFamilies(t *testing.T) {
	tmp := t.TempDir()
	calib := writeTokens(t, filepath.Join(tmp, "calib.u16"), 300, func(i int) int { return (i * 13) % 96 })
	for name, cfg := range testmodels.ConfigFamilies() {
		dir := filepath.Join(tmp, name)
		if err := testmodels.WriteHFDirGen(dir, cfg, 1, "F32", testmodels.Layout{Format: "safetensors"}); err != nil {
			t.Fatal(err)
		}
		for _, method := range []string{"wanda", "sparsegpt"} {
			out := filepath.Join(tmp, name+"-"+method+".slope")
			res, err := convert.DenseToSlope(t.Context(), convert.Options{In: dir, Out: out, Method: method, Calib: calib, CalibSamples: 4})
			if err != nil {
				t.Fatalf("%s %s: %v", name, method, err)
			}
			if res.Pruned != 12 || len(res.Layers) != 2 {
				t.Errorf("%s %s: pruned %d, %d layers", name, method, res.Pruned, len(res.Layers))
			}
			m, err := runtime.Open(out, nil)
			if err != nil {
				t.Fatalf("%s %s: %v", name, method, err)
			}
			if _, err := m.Score(t.Context(), []int32{2, 5, 9, 14, 20}, 0, 0, 0); err != nil {
				t.Errorf("%s %s: %v", name, method, err)
			}
			m.Close()
		}
	}
}

// TestOneShotTiming converts a generated OPT-125m-shaped model (hidden
// 768, ffn 3072, 2 layers) with both calibrated methods and logs the time
// per layer. It takes a while on 2 cores: set SLOPE_ONESHOT_TIMING=1.
func TestOneShotTiming(t *testing.T) {
	if os.Getenv("SLOPE_ONESHOT_TIMING") == "" {
		t.Skip("set SLOPE_ONESHOT_TIMING=1 to time Wanda and SparseGPT on a hidden-768 model")
	}
	tmp := t.TempDir()
	cfg := testmodels.GenConfig{Vocab: 1024, Hidden: 768, Layers: 2, Heads: 12, FFN: 3072, MaxPos: 130,
		PreLN: true, Bias: true, ElementwiseAffine: true, Tied: true, Activation: "relu", PadID: 1, BOSID: 2, EOSID: 2}
	dir := filepath.Join(tmp, "m")
	if err := testmodels.WriteHFDirGen(dir, cfg, 1, "F16", testmodels.Layout{Format: "safetensors"}); err != nil {
		t.Fatal(err)
	}
	calib := writeTokens(t, filepath.Join(tmp, "calib.u16"), 20000, func(i int) int { return (i*i + 7*i) % 1024 })
	for _, method := range []string{"magnitude", "wanda", "sparsegpt"} {
		o := convert.Options{In: dir, Out: filepath.Join(tmp, method+".slope")}
		if method != "magnitude" {
			o.Method, o.Calib = method, calib
		}
		res, err := convert.DenseToSlope(t.Context(), o)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: %.2fs in all", method, res.Seconds)
		for _, l := range res.Layers {
			t.Logf("%s: layer %d: %.2fs", method, l.Layer, l.Seconds)
		}
		for _, w := range res.Weights {
			if w.Linear && strings.HasPrefix(w.Name, "decoder.layers.1.") {
				t.Logf("%s: %s: prune %.2fs, calib err %.4f, weight err %.4f", method, w.Name, w.PruneSeconds, w.CalibRelErr, w.RelErrPruned)
			}
		}
	}
}

// TestDefaultModelTextCalibration: the embedded default model carries its
// tokenizer, so Wanda calibrates it on plain text (the tokenizer is read
// from the embedded files, as the container's copy is).
func TestDefaultModelTextCalibration(t *testing.T) {
	tmp := t.TempDir()
	text := filepath.Join(tmp, "calib.txt")
	if err := os.WriteFile(text, []byte(strings.Repeat("And God said, Let there be light: and there was light. ", 40)), 0o644); err != nil {
		t.Fatal(err)
	}
	res, err := convert.DenseToSlope(t.Context(), convert.Options{Out: filepath.Join(tmp, "m.slope"), Method: "wanda",
		Calib: text, CalibSamples: 4, CalibSeqLen: 32, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	if res.Method != "wanda" || res.Pruned != 24 {
		t.Errorf("result: method %q, %d pruned", res.Method, res.Pruned)
	}
}
