package format

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/zeebo/xxh3"

	"github.com/slopeml/slope/format/slopepb"
)

// Benchmarks of the container against a plain copy of the same bytes.
// bench/format.sh runs them; the figures are reported in the README.

const benchTensors, benchTensorBytes = 16, 4 << 20 // 64 MiB of fp16 data

func benchPayload() [][]byte {
	rng := rand.New(rand.NewPCG(1, 2))
	out := make([][]byte, benchTensors)
	for i := range out {
		vals := make([]float32, benchTensorBytes/2)
		for j := range vals {
			vals[j] = float32(rng.NormFloat64())
		}
		out[i] = make([]byte, benchTensorBytes)
		_ = EncodeFloats(slopepb.DType_FLOAT16, vals, out[i])
	}
	return out
}

func writeBenchContainer(b *testing.B, path string, payload [][]byte, opts *WriterOptions) {
	w, err := Create(path, opts)
	if err != nil {
		b.Fatal(err)
	}
	for i, p := range payload {
		desc := &slopepb.Tensor{Name: "t" + string(rune('a'+i)), Dtype: slopepb.DType_FLOAT16,
			Shape: []uint64{uint64(len(p) / 2)}, Encoding: slopepb.Encoding_DENSE}
		if err := w.WriteTensor(desc, p); err != nil {
			b.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		b.Fatal(err)
	}
}

// plainWrite is the peer: the same bytes to a temp file, fsync, rename.
func plainWrite(b *testing.B, path string, payload [][]byte) {
	f, err := os.CreateTemp(filepath.Dir(path), "plain-*")
	if err != nil {
		b.Fatal(err)
	}
	for _, p := range payload {
		if _, err := f.Write(p); err != nil {
			b.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
	f.Close()
	if err := os.Rename(f.Name(), path); err != nil {
		b.Fatal(err)
	}
}

func BenchmarkWrite(b *testing.B) {
	payload := benchPayload()
	dir := b.TempDir()
	b.Run("slope", func(b *testing.B) {
		b.SetBytes(benchTensors * benchTensorBytes)
		for b.Loop() {
			writeBenchContainer(b, filepath.Join(dir, "w.slope"), payload, nil)
		}
	})
	b.Run("slope-zstd", func(b *testing.B) {
		b.SetBytes(benchTensors * benchTensorBytes)
		for b.Loop() {
			writeBenchContainer(b, filepath.Join(dir, "z.slope"), payload, &WriterOptions{Compress: true})
		}
	})
	b.Run("plain-copy", func(b *testing.B) {
		b.SetBytes(benchTensors * benchTensorBytes)
		for b.Loop() {
			plainWrite(b, filepath.Join(dir, "plain.bin"), payload)
		}
	})
}

// benchSink keeps consume's results alive.
var benchSink uint64

// consume reads every byte, as a model load does: both the container and
// the plain peer pay it, so the ratio shows the container's own cost.
func consume(b []byte) uint64 { return xxh3.Hash(b) }

// BenchmarkRead: open and read every tensor (checksums verified on first
// access, or not) against os.ReadFile of the same file, page cache warm;
// both sides then read every byte once (consume).
func BenchmarkRead(b *testing.B) {
	payload := benchPayload()
	dir := b.TempDir()
	path := filepath.Join(dir, "r.slope")
	writeBenchContainer(b, path, payload, nil)
	zpath := filepath.Join(dir, "rz.slope")
	writeBenchContainer(b, zpath, payload, &WriterOptions{Compress: true})
	readAll := func(b *testing.B, path string, opts *ReaderOptions) {
		f, err := Open(path, opts)
		if err != nil {
			b.Fatal(err)
		}
		for _, x := range f.Tensors() {
			raw, err := f.Raw(x.Name)
			if err != nil {
				b.Fatal(err)
			}
			benchSink ^= consume(raw)
		}
		f.Close()
	}
	b.Run("slope-mmap-checked", func(b *testing.B) {
		b.SetBytes(benchTensors * benchTensorBytes)
		for b.Loop() {
			readAll(b, path, nil)
		}
	})
	b.Run("slope-mmap-unchecked", func(b *testing.B) {
		b.SetBytes(benchTensors * benchTensorBytes)
		for b.Loop() {
			readAll(b, path, &ReaderOptions{SkipChecksums: true})
		}
	})
	b.Run("slope-zstd", func(b *testing.B) {
		b.SetBytes(benchTensors * benchTensorBytes)
		for b.Loop() {
			readAll(b, zpath, nil)
		}
	})
	b.Run("plain-readfile", func(b *testing.B) {
		b.SetBytes(benchTensors * benchTensorBytes)
		for b.Loop() {
			data, err := os.ReadFile(path)
			if err != nil {
				b.Fatal(err)
			}
			benchSink ^= consume(data)
		}
	})
}

// BenchmarkOpenToFirstTensor: Open, validate, and get the first tensor.
func BenchmarkOpenToFirstTensor(b *testing.B) {
	path := filepath.Join(b.TempDir(), "o.slope")
	writeBenchContainer(b, path, benchPayload(), nil)
	for b.Loop() {
		f, err := Open(path, nil)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := f.Raw("ta"); err != nil {
			b.Fatal(err)
		}
		f.Close()
	}
}

// opt125mLayer writes the six pruned linears of one OPT-125m decoder layer
// (q, k, v, out 768x768; fc1 3072x768; fc2 768x3072) as 2:4 bf16 with
// their transpose masks, and returns the file size and the dense bf16
// bytes of those weights.
func opt125mLayer(tb testing.TB, path string) (fileBytes, denseBytes, maskBytes int64) {
	rng := rand.New(rand.NewPCG(3, 4))
	p := NM{2, 4}
	w, err := Create(path, nil)
	if err != nil {
		tb.Fatal(err)
	}
	for _, l := range []struct {
		name       string
		rows, cols int
	}{{"q", 768, 768}, {"k", 768, 768}, {"v", 768, 768}, {"out", 768, 768}, {"fc1", 3072, 768}, {"fc2", 768, 3072}} {
		dense := make([]float32, l.rows*l.cols)
		for i := range dense {
			dense[i] = float32(rng.NormFloat64())
		}
		keep := magnitudeKeep(p, dense)
		vals, idx, err := SplitNM(p, l.rows, l.cols, dense, keep)
		if err != nil {
			tb.Fatal(err)
		}
		tkeep, err := DoublePruneMagnitude(p, l.rows, l.cols, vals, idx)
		if err != nil {
			tb.Fatal(err)
		}
		if err := w.WriteNM(l.name, slopepb.DType_BFLOAT16, p, l.rows, l.cols, vals, idx); err != nil {
			tb.Fatal(err)
		}
		if err := w.WriteTransposeMask(l.name+".tmask", l.name, p, l.rows, l.cols, tkeep); err != nil {
			tb.Fatal(err)
		}
		denseBytes += int64(l.rows * l.cols * 2)
		n, _ := TransposeMaskSize(p, l.rows, l.cols)
		maskBytes += n
	}
	if err := w.Close(); err != nil {
		tb.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		tb.Fatal(err)
	}
	return st.Size(), denseBytes, maskBytes
}

// TestOPT125mPrunedSize: a 2:4 bf16 container of OPT-125m-shaped pruned
// linears stores at most 0.57x their dense bf16 bytes (0.5 values + 0.0625
// indices), not counting the transpose masks (1/32 more).
func TestOPT125mPrunedSize(t *testing.T) {
	if testing.Short() {
		t.Skip("writes a 14 MB container")
	}
	file, dense, mask := opt125mLayer(t, filepath.Join(t.TempDir(), "opt125m-layer.slope"))
	ratio := float64(file-mask) / float64(dense)
	t.Logf("file %d bytes, masks %d, dense bf16 %d: ratio %.4f without masks, %.4f with", file, mask, dense, ratio, float64(file)/float64(dense))
	if ratio > 0.57 {
		t.Fatalf("pruned linears take %.4f of dense bf16, want <= 0.57", ratio)
	}
}

func BenchmarkOPT125mPrunedSize(b *testing.B) {
	dir := b.TempDir()
	var file, dense, mask int64
	for b.Loop() {
		file, dense, mask = opt125mLayer(b, filepath.Join(dir, "l.slope"))
	}
	b.ReportMetric(float64(file-mask)/float64(dense), "ratio-no-masks")
	b.ReportMetric(float64(file)/float64(dense), "ratio-with-masks")
}
