package format

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/slopeml/slope/format/slopepb"
)

func checkSample(t *testing.T, f *File, s *sampleModel) {
	t.Helper()
	eq := func(name string, got, want []float32) {
		t.Helper()
		if !slices.Equal(got, want) {
			t.Errorf("%s: values differ after round trip", name)
		}
	}
	got, err := f.Float32s("embed")
	if err != nil {
		t.Fatal(err)
	}
	eq("embed", got, s.embed)
	if got, err = f.Float32s("norm"); err != nil {
		t.Fatal(err)
	}
	eq("norm", got, s.norm)
	dense, err := f.Dense("w")
	if err != nil {
		t.Fatal(err)
	}
	want := make([]float32, len(s.wDense))
	for i, k := range s.keep {
		if k {
			want[i] = s.wDense[i]
		}
	}
	eq("w (dense)", dense, want)
	v, err := f.NM("w")
	if err != nil {
		t.Fatal(err)
	}
	if v.Pattern != s.pattern || v.Rows != s.rows || v.Cols != s.cols {
		t.Errorf("NM view %v [%d %d]", v.Pattern, v.Rows, v.Cols)
	}
	keep, err := f.TransposeMask("w.transpose_mask")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(keep, s.tkeep) {
		t.Error("transpose mask differs")
	}
	// The materialized transpose is W_dpᵀ: W with the dropped entries zeroed, transposed.
	td, err := f.Dense("w.transpose")
	if err != nil {
		t.Fatal(err)
	}
	kept := s.cols * s.pattern.N / s.pattern.M
	for r := 0; r < s.rows; r++ {
		for j := 0; j < kept; j++ {
			c := j/s.pattern.N*s.pattern.M + int(s.idx[r*kept+j])
			w := float32(0)
			if s.tkeep[r*kept+j] {
				w = s.values[r*kept+j]
			}
			if td[c*s.rows+r] != w {
				t.Fatalf("W_dpᵀ[%d,%d] = %v, want %v", c, r, td[c*s.rows+r], w)
			}
		}
	}
	if got, err = f.Float32s("w.lora_l"); err != nil {
		t.Fatal(err)
	}
	eq("lora_l", got, s.l)
	if got, err = f.Float32View("w.adam_m"); err != nil {
		t.Fatal(err)
	}
	eq("adam_m (view)", got, s.m1)
	m := f.Manifest()
	if m.GetArchitecture().GetOpt().GetHiddenSize() != 16 || m.GetTraining().GetStep() != 7 || len(m.GetGraph().GetNode()) != 3 {
		t.Error("manifest fields lost in the round trip")
	}
	if err := f.Verify(nil); err != nil {
		t.Fatal(err)
	}
}

func TestRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts *WriterOptions
	}{
		{"default", nil},
		{"zstd", &WriterOptions{Compress: true}},
		{"align64", &WriterOptions{Alignment: 64}},
		{"tiny-reserve", &WriterOptions{ManifestReserve: 1}}, // manifest outgrows the reserve: relocation
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSample(t, 7)
			path := filepath.Join(t.TempDir(), "m.slope")
			writeSample(t, s, path, tc.opts)
			f, err := Open(path, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			checkSample(t, f, s)
			align := uint64(DefaultAlignment)
			if tc.opts != nil && tc.opts.Alignment != 0 {
				align = uint64(tc.opts.Alignment)
			}
			if f.hdr.dataOffset%align != 0 || f.hdr.dataOffset-(HeaderSize+f.hdr.manifestLen) >= align {
				t.Errorf("data offset %d not compact for manifest of %d bytes", f.hdr.dataOffset, f.hdr.manifestLen)
			}
			compressed := 0
			for _, x := range f.Tensors() {
				if x.Compression != slopepb.Compression_COMPRESSION_NONE {
					compressed++
				}
			}
			if (tc.opts != nil && tc.opts.Compress) != (compressed > 0) {
				t.Errorf("%d tensors compressed", compressed)
			}
			entries, _ := os.ReadDir(filepath.Dir(path))
			if len(entries) != 1 {
				t.Errorf("temporary files left behind: %v", entries)
			}
		})
	}
}

func TestWriterRejectsBadTensors(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bad.slope")
	w, err := Create(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	p := NM{2, 4}
	if err := w.WriteDense("a", slopepb.DType_FLOAT32, []uint64{2, 2}, []float32{1, 2, 3}); !errors.Is(err, ErrShape) {
		t.Errorf("short data: %v", err)
	}
	// A rejected tensor writes nothing; the file stays usable without it.
	if err := w.WriteDense("b", slopepb.DType_FLOAT32, []uint64{1}, []float32{1}); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	f, err := Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Tensors()) != 1 || f.Verify(nil) != nil {
		t.Errorf("after a rejected write: %d tensors, verify %v", len(f.Tensors()), f.Verify(nil))
	}
	f.Close()

	// Abort leaves nothing behind, under the final name or as a temp file.
	apath := filepath.Join(t.TempDir(), "aborted.slope")
	aw, err := Create(apath, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := aw.WriteDense("a", slopepb.DType_FLOAT32, []uint64{1}, []float32{1}); err != nil {
		t.Fatal(err)
	}
	aw.Abort()
	if entries, _ := os.ReadDir(filepath.Dir(apath)); len(entries) != 0 {
		t.Errorf("left behind after Abort: %v", entries)
	}
	if err := aw.Close(); !errors.Is(err, ErrWriter) {
		t.Errorf("Close after Abort: %v", err)
	}

	for _, tc := range []struct {
		name string
		do   func(w *Writer) error
		want error
	}{
		{"duplicate", func(w *Writer) error {
			if err := w.WriteDense("a", slopepb.DType_FLOAT32, []uint64{1}, []float32{1}); err != nil {
				return err
			}
			return w.WriteDense("a", slopepb.DType_FLOAT32, []uint64{1}, []float32{1})
		}, ErrWriter},
		{"mask before weight", func(w *Writer) error {
			return w.WriteTransposeMask("m", "w", p, 4, 4, make([]bool, 8))
		}, ErrWriter},
		{"cols not multiple of M", func(w *Writer) error {
			return w.WriteNM("w", slopepb.DType_FLOAT32, p, 4, 6, make([]float32, 12), make([]uint8, 12))
		}, ErrShape},
		{"bad indices", func(w *Writer) error {
			return w.WriteNM("w", slopepb.DType_FLOAT32, p, 1, 4, []float32{1, 2}, []uint8{2, 1})
		}, ErrIndex},
		{"too many in transpose group", func(w *Writer) error {
			if err := w.WriteNM("w", slopepb.DType_FLOAT32, p, 4, 4, make([]float32, 8), []uint8{0, 1, 0, 1, 0, 1, 0, 1}); err != nil {
				return err
			}
			return w.WriteTransposeMask("m", "w", p, 4, 4, []bool{true, true, true, true, true, true, false, false})
		}, ErrMask},
		{"NM of int dtype", func(w *Writer) error {
			return w.WriteTensor(&slopepb.Tensor{Name: "i", Dtype: slopepb.DType_INT32, Shape: []uint64{1, 4},
				Encoding: slopepb.Encoding_NM, Nm: &slopepb.NMParams{N: 2, M: 4}}, make([]byte, 9))
		}, ErrShape},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w, err := Create(filepath.Join(t.TempDir(), "x.slope"), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer w.Abort()
			if err := tc.do(w); !errors.Is(err, tc.want) {
				t.Errorf("got %v, want %v", err, tc.want)
			}
		})
	}
}

func TestWriterGraphMustReferenceTensors(t *testing.T) {
	path := filepath.Join(t.TempDir(), "g.slope")
	w, err := Create(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	w.Manifest().Graph = sampleGraph() // names tensors that are never written
	if err := w.Close(); !errors.Is(err, ErrGraph) {
		t.Fatalf("Close: %v, want ErrGraph", err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Error("invalid file written")
	}
}

func TestEmptyContainer(t *testing.T) {
	path := filepath.Join(t.TempDir(), "empty.slope")
	w, err := Create(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	w.Manifest().Metadata = map[string]string{"k": "v"}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	f, err := Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Manifest().Metadata["k"] != "v" || len(f.Tensors()) != 0 || f.Verify(nil) != nil {
		t.Error("empty container did not round-trip")
	}
	if _, err := f.Raw("nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing tensor: %v", err)
	}
}

func TestStreamingLargeTensorCount(t *testing.T) {
	// Many tensors: the manifest outgrows the default reserve, and offsets
	// stay aligned and ordered.
	path := filepath.Join(t.TempDir(), "many.slope")
	w, err := Create(path, &WriterOptions{Alignment: 64})
	if err != nil {
		t.Fatal(err)
	}
	const n = 3000
	for i := 0; i < n; i++ {
		name := "t." + string(rune('a'+i%26)) + "." + strconv.Itoa(i)
		if err := w.WriteDense(name, slopepb.DType_FLOAT32, []uint64{3}, []float32{float32(i), 1, 2}); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	f, err := Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if len(f.Tensors()) != n {
		t.Fatalf("%d tensors", len(f.Tensors()))
	}
	if err := f.Verify(nil); err != nil {
		t.Fatal(err)
	}
	v, err := f.Float32s(f.Tensors()[n-1].Name)
	if err != nil || v[0] != n-1 {
		t.Fatalf("last tensor %v %v", v, err)
	}
}

func TestMergedAdapterLayout(t *testing.T) {
	p := NM{2, 4}
	const out, in, r = 8, 16, 2
	dense := make([]float32, (out+r)*in)
	for i := range dense {
		dense[i] = float32(i%7) - 3
	}
	vals, idx, err := SplitNM(p, out+r, in, dense, magnitudeKeep(p, dense))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "merged.slope")
	write := func(rShape []uint64) error {
		w, err := Create(path, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := w.WriteNM("w", slopepb.DType_FLOAT32, p, out+r, in, vals, idx); err != nil {
			t.Fatal(err)
		}
		n := int(rShape[0] * rShape[1])
		desc := &slopepb.Tensor{Name: "w.lora_r", Dtype: slopepb.DType_FLOAT32, Shape: rShape, Encoding: slopepb.Encoding_LOW_RANK,
			Adapter: &slopepb.AdapterParams{Weight: "w", Factor: slopepb.AdapterParams_R, Scale: 2, Merged: true}}
		raw := make([]byte, 4*n)
		if err := w.WriteTensor(desc, raw); err != nil {
			t.Fatal(err)
		}
		return w.Close()
	}
	if err := write([]uint64{r, out}); err != nil {
		t.Fatalf("valid merged layout rejected: %v", err)
	}
	// inspect marks the merged R, and counts no dense bytes for it; the
	// weight counts the out * in elements of a dense model's weight, not
	// its r extra rows (Lᵀ).
	f, err := Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	s := Summarize(f)
	for _, ts := range s.Tensors {
		if ts.Name == "w.lora_r" && (!ts.AdapterMerged || ts.DenseFP16Bytes != 0) {
			t.Errorf("merged R: %+v", ts)
		}
		if ts.Name == "w" && (ts.DenseFP16Bytes != out*in*2 || !slices.Equal(ts.Shape, []uint64{out + r, in})) {
			t.Errorf("merged weight: %+v, want %d dense fp16 bytes", ts, out*in*2)
		}
	}
	if s.Totals.DenseFP16Bytes != out*in*2 {
		t.Errorf("dense fp16 total %d, want %d", s.Totals.DenseFP16Bytes, out*in*2)
	}
	f.Close()
	if err := write([]uint64{r + 1, out}); !errors.Is(err, ErrShape) {
		t.Fatalf("R rows not matching the weight's extra rows: %v", err)
	}
}

func TestTokenizerFiles(t *testing.T) {
	write := func(tk *slopepb.Tokenizer, files map[string][]byte) error {
		w, err := Create(filepath.Join(t.TempDir(), "tok.slope"), nil)
		if err != nil {
			t.Fatal(err)
		}
		for name, b := range files {
			if err := w.WriteBytes(name, b); err != nil {
				t.Fatal(err)
			}
		}
		w.Manifest().Tokenizer = tk
		return w.Close()
	}
	files := map[string][]byte{"tokenizer/vocab.json": []byte(`{"a":0}`), "tokenizer/merges.txt": []byte("#version: 0.2\n")}
	tk := &slopepb.Tokenizer{Type: TokenizerGPT2BPE, Files: map[string]string{"vocab.json": "tokenizer/vocab.json", "merges.txt": "tokenizer/merges.txt"}}
	path := filepath.Join(t.TempDir(), "ok.slope")
	w, err := Create(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range files {
		if err := w.WriteBytes(name, b); err != nil {
			t.Fatal(err)
		}
	}
	w.Manifest().Tokenizer = tk
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	f, err := Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got, err := f.TokenizerFiles()
	if err != nil || string(got["vocab.json"]) != `{"a":0}` || string(got["merges.txt"]) != "#version: 0.2\n" {
		t.Fatalf("tokenizer files %q, %v", got, err)
	}
	if err := write(&slopepb.Tokenizer{Type: "sentencepiece", Files: tk.Files}, files); !errors.Is(err, ErrManifest) {
		t.Errorf("unknown tokenizer type: %v", err)
	}
	if err := write(&slopepb.Tokenizer{Type: TokenizerGPT2BPE, Files: map[string]string{"vocab.json": "nope"}}, files); !errors.Is(err, ErrManifest) {
		t.Errorf("missing tokenizer tensor: %v", err)
	}
	// File names are plain base names: every name the converter stores
	// (tokenizer.ReadFS's), and nothing a reader could not create in a
	// directory of its choice.
	for _, name := range []string{"tokenizer.json", "vocab.json", "merges.txt", "special_tokens_map.json", "tokenizer_config.json", "a..b", ".hidden"} {
		if err := write(&slopepb.Tokenizer{Type: TokenizerGPT2BPE, Files: map[string]string{name: "tokenizer/vocab.json"}}, files); err != nil {
			t.Errorf("tokenizer file name %q: %v", name, err)
		}
	}
	for _, name := range []string{"", ".", "..", "../vocab.json", "/etc/passwd", "sub/vocab.json", `..\vocab.json`, "C:vocab.json",
		"vocab\n.json", "vocab\x00.json", strings.Repeat("v", 256)} {
		err := write(&slopepb.Tokenizer{Type: TokenizerGPT2BPE, Files: map[string]string{name: "tokenizer/vocab.json"}}, files)
		if !errors.Is(err, ErrManifest) || !strings.Contains(err.Error(), "tokenizer file name") {
			t.Errorf("tokenizer file name %q: got %v, want ErrManifest", name, err)
		}
	}
}

// A dense tensor larger than one streaming chunk round-trips, and its
// checksum is the checksum of all its bytes.
func TestDenseStreamingChunks(t *testing.T) {
	n := denseChunk*2 + 123
	data := make([]float32, n)
	for i := range data {
		data[i] = float32(i % 256) // exact in bf16
	}
	path := filepath.Join(t.TempDir(), "big.slope")
	w, err := Create(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.WriteDense("big", slopepb.DType_BFLOAT16, []uint64{uint64(n)}, data); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	f, err := Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Verify(nil); err != nil {
		t.Fatal(err)
	}
	got, err := f.Float32s("big")
	if err != nil || !slices.Equal(got, data) {
		t.Fatalf("streamed tensor differs (%v)", err)
	}
}

// TestDropResident: DropResident takes a mapped file's pages out of the
// process's resident memory (/proc/self/smaps), the file still reads the
// same tensors (the pages fault in again), and a parsed one is unaffected.
func TestDropResident(t *testing.T) {
	path := filepath.Join(t.TempDir(), "d.slope")
	w, err := Create(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []float32{1, 2, 3, 4, 5, 6}
	if err := w.WriteDense("a", slopepb.DType_FLOAT32, []uint64{2, 3}, want); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	f, err := Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Dense("a"); err != nil { // touch the pages
		t.Fatal(err)
	}
	if rss := mappedRSS(t, path); rss == 0 {
		t.Fatal("no resident pages of the mapping after a read: the check below could not fail")
	}
	if err := f.DropResident(); err != nil {
		t.Fatal(err)
	}
	if rss := mappedRSS(t, path); rss != 0 {
		t.Fatalf("%d kB of the mapping still resident after DropResident", rss)
	}
	for range 2 {
		if err := f.DropResident(); err != nil {
			t.Fatal(err)
		}
		got, err := f.Dense("a")
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("after DropResident: %v, want %v", got, want)
		}
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	p, err := Parse(path, raw, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.DropResident(); err != nil {
		t.Fatal(err)
	}
	if got, err := p.Dense("a"); err != nil || !slices.Equal(got, want) {
		t.Fatalf("parsed: %v %v", got, err)
	}
}

// mappedRSS is the resident size (kB) of this process's mappings of path,
// from /proc/self/smaps (Linux: the mmap reader's platform here).
func mappedRSS(t *testing.T, path string) int {
	t.Helper()
	raw, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Fatalf("reading /proc/self/smaps: %v", err)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		t.Fatal(err)
	}
	rss, in := 0, false
	for _, line := range strings.Split(string(raw), "\n") {
		fields := strings.Fields(line)
		if len(fields) >= 5 && strings.Contains(fields[0], "-") {
			in = fields[len(fields)-1] == abs // a mapping's header line
			continue
		}
		if in && len(fields) == 3 && fields[0] == "Rss:" {
			n, _ := strconv.Atoi(fields[1])
			rss += n
		}
	}
	return rss
}

// TestWriterStartsWriteback: once the data region is large enough that
// Close keeps it in place (compactBelow), the writer hands what it wrote
// to the kernel's writeback in batches of writebackBatch bytes or more,
// in file order and without gaps, from the start of the data region
// (Close's fsync then has little left to write); a smaller file, which
// Close copies, is not written out early. The file reads back the same.
func TestWriterStartsWriteback(t *testing.T) {
	type span struct{ off, n int64 }
	var got []span
	writeback = func(f *os.File, off, n int64) { got = append(got, span{off, n}) }
	t.Cleanup(func() { writeback = startWriteback })
	data := make([]float32, 3<<20) // 12 MiB per tensor
	for i := range data {
		data[i] = float32(i % 1000)
	}
	write := func(tensors int) (string, int64) {
		path := filepath.Join(t.TempDir(), "wb.slope")
		w, err := Create(path, nil)
		if err != nil {
			t.Fatal(err)
		}
		start := int64(w.dataOff)
		for i := range tensors { // even ones through WriteTensor, odd ones streamed
			name := fmt.Sprint("t", i)
			if i%2 == 0 {
				raw := make([]byte, 4*len(data))
				if err := EncodeFloats(slopepb.DType_FLOAT32, data, raw); err != nil {
					t.Fatal(err)
				}
				err = w.WriteTensor(&slopepb.Tensor{Name: name, Dtype: slopepb.DType_FLOAT32, Shape: []uint64{uint64(len(data))}, Encoding: slopepb.Encoding_DENSE}, raw)
			} else {
				err = w.WriteDense(name, slopepb.DType_FLOAT32, []uint64{uint64(len(data))}, data)
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		return path, start
	}
	if write(4); len(got) != 0 { // 48 MiB
		t.Fatalf("a 48 MiB data region, which Close copies, was written out early: %v", got)
	}
	path, start := write(9) // 108 MiB
	if len(got) < 2 {
		t.Fatalf("%d writeback calls for 108 MiB: %v", len(got), got)
	}
	next := start
	for _, s := range got {
		if s.off != next || s.n < writebackBatch {
			t.Fatalf("writeback spans %v: want contiguous spans of at least %d bytes from %d", got, writebackBatch, start)
		}
		next = s.off + s.n
	}
	if next-start < compactBelow {
		t.Fatalf("writeback spans %v end %d bytes into the data region", got, next-start)
	}
	f, err := Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Verify(nil); err != nil {
		t.Fatal(err)
	}
}

// TestWriterRelocateReadFails: when Close must move the data region (the
// manifest outgrew its reserve) and reading it back fails or comes up
// short, Close reports it and leaves no file at the path, rather than
// writing a container whose data ends early.
func TestWriterRelocateReadFails(t *testing.T) {
	for _, tc := range []struct {
		name  string
		spoil func(w *Writer) error
	}{
		{"short", func(w *Writer) error { return w.tmp.Truncate(int64(w.dataOff) + 8) }},
		{"unreadable", func(w *Writer) error { return w.tmp.Close() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "m.slope")
			w, err := Create(path, &WriterOptions{ManifestReserve: 1})
			if err != nil {
				t.Fatal(err)
			}
			for i := range 200 { // a manifest past the reserve
				if err := w.WriteDense(fmt.Sprint("tensor.", i), slopepb.DType_FLOAT32, []uint64{64}, make([]float32, 64)); err != nil {
					t.Fatal(err)
				}
			}
			if err := tc.spoil(w); err != nil {
				t.Fatal(err)
			}
			err = w.Close()
			if err == nil || !strings.Contains(err.Error(), "relocate data region") {
				t.Fatalf("Close: %v, want a relocate error", err)
			}
			if _, serr := os.Stat(path); !os.IsNotExist(serr) {
				t.Errorf("%s exists after a failed Close (stat: %v)", path, serr)
			}
		})
	}
}

// TestRemoveStaleTemps: the temporary files a killed writer of a path
// leaves beside it are removed; the path itself, other paths' temporary
// files and names that only look alike stay.
func TestRemoveStaleTemps(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "ck.slope")
	keep := []string{"ck.slope", ".ck.slope.tmp-", ".ck.slope.tmp-12x", ".other.slope.tmp-5", "ck.slope.tmp-7"}
	stale := []string{".ck.slope.tmp-1", ".ck.slope.tmp-18446744073709551615"}
	for _, n := range append(append([]string{}, keep...), stale...) {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// One more the way a writer makes it.
	f, err := createTemp(path)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	stale = append(stale, filepath.Base(f.Name()))
	removed, err := RemoveStaleTemps(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) != len(stale) {
		t.Errorf("removed %q, want the %d of %q", removed, len(stale), stale)
	}
	for _, n := range stale {
		if _, err := os.Stat(filepath.Join(dir, n)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s not removed: %v", n, err)
		}
	}
	for _, n := range keep {
		if _, err := os.Stat(filepath.Join(dir, n)); err != nil {
			t.Errorf("%s: %v", n, err)
		}
	}
	if _, err := RemoveStaleTemps(filepath.Join(dir, "missing", "x.slope")); err == nil {
		t.Error("a missing directory gave no error")
	}
}

// TestSummarizeMoments: a checkpoint's optimizer moments are marked with
// their parameter and, like other auxiliary tensors, have no dense fp16
// counterpart, so they do not inflate the dense baseline of the totals.
func TestSummarizeMoments(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ckpt.slope")
	writeSample(t, newSample(t, 5), path, nil)
	f, err := Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s := Summarize(f)
	var dense uint64
	moments := 0
	for _, ts := range s.Tensors {
		dense += ts.DenseFP16Bytes
		switch ts.Name {
		case "w.adam_m", "w.adam_v":
			moments++
			if ts.MomentOf != "w" || ts.DenseFP16Bytes != 0 || ts.RatioToFP16 != 0 {
				t.Errorf("moment %+v", ts)
			}
		case "embed":
			if ts.MomentOf != "" || ts.DenseFP16Bytes != 32*16*2 {
				t.Errorf("weight %+v", ts)
			}
		}
	}
	if moments != 2 || s.Totals.DenseFP16Bytes != dense {
		t.Fatalf("%d moments; totals' dense bytes %d, tensors' %d", moments, s.Totals.DenseFP16Bytes, dense)
	}
}
