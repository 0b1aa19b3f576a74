package format

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/zeebo/xxh3"
	"google.golang.org/protobuf/proto"

	"github.com/slopeml/slope/format/slopepb"
)

// WriterOptions tune a Writer. The zero value gives the defaults.
type WriterOptions struct {
	// Alignment of the data region and of every tensor; a power of two in
	// [MinAlignment, MaxAlignment]. 0 means DefaultAlignment (4096).
	Alignment int
	// Compress stores tensors as zstd frames (byte-plane shuffled for
	// 16-bit values). Off by default: compressed tensors cannot be used
	// zero-copy from the mmap. A tensor that does not shrink is stored raw.
	Compress bool
	// ZstdLevel is the zstd encoder level when Compress is set (0: default).
	ZstdLevel zstd.EncoderLevel
	// ManifestReserve is the room, in bytes, left before the data region
	// for the manifest, which is written last. When the final manifest is
	// larger, or the file is small, Close rewrites the file compactly.
	// 0 means 64 KiB plus 512 bytes per expected tensor (ExpectedTensors).
	ManifestReserve int
	// ExpectedTensors sizes the default ManifestReserve.
	ExpectedTensors int
	// Limits applied to what is written; nil means DefaultLimits, and
	// zero fields take DefaultLimits' values.
	Limits *Limits
}

// compactBelow: when the data region is smaller than this, Close always
// rewrites the file so that no reserve gap is left.
const compactBelow = 64 << 20

// Writer streams a .slope file: tensor bytes go to a temporary file in the
// target directory as they are produced, the manifest is written at Close,
// and the file appears under its final name only after fsync and rename.
// A Writer is not safe for concurrent use.
type Writer struct {
	path     string
	tmp      *os.File
	opts     WriterOptions
	lim      Limits
	align    uint64
	dataOff  uint64 // provisional start of the data region in tmp
	dataLen  uint64 // bytes of the data region written so far
	manifest *slopepb.Manifest
	names    map[string]int
	enc      *zstd.Encoder
	err      error // sticky: the first failure; Close then aborts
	done     bool
	// wbFrom is where the data not yet handed to startWriteback begins
	// (a file offset): tensors are written in file order.
	wbFrom int64
}

// writeback is startWriteback (a variable for the tests).
var writeback = startWriteback

// writebackBatch is how many written bytes gather before the writer asks
// the kernel to start writing them out.
const writebackBatch = 16 << 20

// wrote notes that the data region now ends at file offset end, and hands
// whole batches to startWriteback, once the region is large enough that
// Close keeps it where it is (a smaller one is copied, so writing it out
// early would be wasted).
func (w *Writer) wrote(end int64) {
	if w.wbFrom == 0 {
		w.wbFrom = int64(w.dataOff)
	}
	if end-int64(w.dataOff) < compactBelow {
		return
	}
	if end-w.wbFrom >= writebackBatch {
		writeback(w.tmp, w.wbFrom, end-w.wbFrom)
		w.wbFrom = end
	}
}

// Create starts a new container that will be written to path.
func Create(path string, opts *WriterOptions) (*Writer, error) {
	var o WriterOptions
	if opts != nil {
		o = *opts
	}
	if o.Alignment == 0 {
		o.Alignment = DefaultAlignment
	}
	a := o.Alignment
	if a < MinAlignment || a > MaxAlignment || a&(a-1) != 0 {
		return nil, fmt.Errorf("create %s: alignment %d is not a power of two in [%d, %d]: %w", path, a, MinAlignment, MaxAlignment, ErrWriter)
	}
	if o.ManifestReserve <= 0 {
		o.ManifestReserve = 64<<10 + 512*max(o.ExpectedTensors, 0)
	}
	lim := DefaultLimits()
	if o.Limits != nil {
		lim = o.Limits.withDefaults()
	}
	tmp, err := createTemp(path)
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", path, err)
	}
	w := &Writer{
		path: path, tmp: tmp, opts: o, lim: lim, align: uint64(a),
		manifest: &slopepb.Manifest{},
		names:    map[string]int{},
	}
	w.dataOff, _ = alignUp(HeaderSize+uint64(o.ManifestReserve), w.align)
	if o.Compress {
		if o.ZstdLevel == 0 {
			o.ZstdLevel = zstd.SpeedDefault
		}
		w.enc, err = zstd.NewWriter(nil, zstd.WithEncoderLevel(o.ZstdLevel), zstd.WithEncoderConcurrency(1))
		if err != nil {
			w.Abort()
			return nil, fmt.Errorf("create %s: zstd: %w", path, err)
		}
	}
	return w, nil
}

// Manifest returns the manifest being built. Callers fill in the
// architecture, graph, opset imports, provenance, training state and
// metadata; the tensor table belongs to the Writer and must not be edited.
func (w *Writer) Manifest() *slopepb.Manifest { return w.manifest }

// WriteTensor appends one tensor. desc names it and gives dtype, shape,
// encoding and encoding parameters; the Writer fills in offset, lengths,
// compression and checksum. raw is the tensor's raw encoding (SPEC.md,
// "Encodings"); it is validated (sizes, N:M indices, transpose masks whose
// weight is already written) before anything is written.
//
// A tensor rejected by validation writes nothing and leaves the Writer
// usable; an I/O failure is sticky: every later call fails and Close
// aborts.
func (w *Writer) WriteTensor(desc *slopepb.Tensor, raw []byte) error {
	return w.writeTensor(desc, raw)
}

func (w *Writer) writeTensor(desc *slopepb.Tensor, raw []byte) error {
	t, info, err := w.admit(desc, uint64(len(raw)))
	if err != nil {
		return err
	}
	if err := w.checkContent(info, raw); err != nil {
		return fmt.Errorf("write %q: %w", t.Name, err)
	}
	stored := raw
	if w.enc != nil {
		if c, kind, ok := w.compress(info, raw); ok {
			stored, t.Compression, t.Length = c, kind, uint64(len(c))
		}
	}
	t.Xxh3 = xxh3.Hash(stored)
	off, _ := alignUp(w.dataLen, w.align)
	if _, err := w.tmp.WriteAt(stored, int64(w.dataOff+off)); err != nil {
		w.err = fmt.Errorf("write %q to %s: %w", t.Name, w.tmp.Name(), err)
		return w.err
	}
	w.wrote(int64(w.dataOff+off) + int64(len(stored)))
	w.place(t, off)
	return nil
}

// admit validates a new table entry of rawLen raw bytes before anything
// is written, and returns it (uncompressed, no checksum yet).
func (w *Writer) admit(desc *slopepb.Tensor, rawLen uint64) (*slopepb.Tensor, tensorInfo, error) {
	if w.done {
		return nil, tensorInfo{}, fmt.Errorf("write %q: %w: writer closed", desc.GetName(), ErrWriter)
	}
	if w.err != nil {
		return nil, tensorInfo{}, fmt.Errorf("write %q: earlier failure: %w", desc.GetName(), w.err)
	}
	t := proto.Clone(desc).(*slopepb.Tensor)
	t.Compression = slopepb.Compression_COMPRESSION_NONE
	t.Length, t.RawLength = rawLen, rawLen
	if len(w.manifest.Tensors) >= w.lim.MaxTensors {
		return nil, tensorInfo{}, fmt.Errorf("write %q: more than %d tensors: %w", t.Name, w.lim.MaxTensors, ErrLimit)
	}
	if _, dup := w.names[t.Name]; dup {
		return nil, tensorInfo{}, fmt.Errorf("write %q: duplicate tensor name: %w", t.Name, ErrWriter)
	}
	info, err := checkTensorMeta(t, w.lim)
	if err != nil {
		return nil, tensorInfo{}, fmt.Errorf("write %q: %w", t.Name, err)
	}
	return t, info, nil
}

// place records a tensor written at data offset off.
func (w *Writer) place(t *slopepb.Tensor, off uint64) {
	t.Offset = off
	w.dataLen = off + t.Length
	w.names[t.Name] = len(w.manifest.Tensors)
	w.manifest.Tensors = append(w.manifest.Tensors, t)
}

// denseChunk is how many elements writeDenseStreaming encodes at a time.
const denseChunk = 1 << 20

// writeDenseStreaming writes an uncompressed DENSE float tensor from
// float32 data chunk by chunk, so that no encoded copy of the whole
// tensor is ever held.
func (w *Writer) writeDenseStreaming(desc *slopepb.Tensor, data []float32, es int) error {
	t, _, err := w.admit(desc, uint64(len(data))*uint64(es))
	if err != nil {
		return err
	}
	off, _ := alignUp(w.dataLen, w.align)
	h := xxh3.New()
	buf := make([]byte, min(len(data), denseChunk)*es)
	pos := int64(w.dataOff + off)
	for lo := 0; lo < len(data); lo += denseChunk {
		part := data[lo:min(lo+denseChunk, len(data))]
		b := buf[:len(part)*es]
		if err := EncodeFloats(t.Dtype, part, b); err != nil {
			return fmt.Errorf("write %q: %w", t.Name, err)
		}
		_, _ = h.Write(b)
		if _, err := w.tmp.WriteAt(b, pos); err != nil {
			w.err = fmt.Errorf("write %q to %s: %w", t.Name, w.tmp.Name(), err)
			return w.err
		}
		pos += int64(len(b))
		w.wrote(pos)
	}
	t.Xxh3 = h.Sum64()
	w.place(t, off)
	return nil
}

// checkContent validates what can be checked of raw bytes before writing.
func (w *Writer) checkContent(info tensorInfo, raw []byte) error {
	t := info.t
	switch t.Encoding {
	case slopepb.Encoding_NM, slopepb.Encoding_NM_TRANSPOSE_MATERIALIZED:
		vb, _, _ := NMSizes(info.nm, info.rows, info.cols, info.elemSize)
		return ValidateNMIndices(info.nm, info.rows, info.cols, raw[vb:])
	case slopepb.Encoding_NM_TRANSPOSE_MASK:
		pi, ok := w.names[t.TransposeOf]
		if !ok {
			return fmt.Errorf("transpose_of %q must be written before its mask: %w", t.TransposeOf, ErrWriter)
		}
		p := w.manifest.Tensors[pi]
		pinfo, err := checkTensorMeta(p, w.lim)
		if err != nil {
			return err
		}
		if pinfo.nm != info.nm || pinfo.rows != info.rows || pinfo.cols != info.cols {
			return fmt.Errorf("mask pattern/shape %s %v differs from %q: %w", info.nm, t.Shape, p.Name, ErrShape)
		}
		idx, err := w.indexOf(pinfo)
		if err != nil {
			return err
		}
		return ValidateTransposeMask(info.nm, info.rows, info.cols, idx, raw)
	}
	return nil
}

// indexOf reads back the index section of an NM tensor already written:
// only those bytes when it is stored uncompressed.
func (w *Writer) indexOf(info tensorInfo) ([]byte, error) {
	vb, ib, _ := NMSizes(info.nm, info.rows, info.cols, info.elemSize)
	t := info.t
	if t.Compression != slopepb.Compression_COMPRESSION_NONE {
		raw, err := w.rawOf(info)
		if err != nil {
			return nil, err
		}
		return raw[vb:], nil
	}
	idx := make([]byte, ib)
	if _, err := w.tmp.ReadAt(idx, int64(w.dataOff+t.Offset)+vb); err != nil {
		return nil, fmt.Errorf("read back %q: %w", t.Name, err)
	}
	return idx, nil
}

// rawOf reads back the raw bytes of a tensor already written.
func (w *Writer) rawOf(info tensorInfo) ([]byte, error) {
	t := info.t
	stored := make([]byte, t.Length)
	if _, err := w.tmp.ReadAt(stored, int64(w.dataOff+t.Offset)); err != nil {
		return nil, fmt.Errorf("read back %q: %w", t.Name, err)
	}
	return decodeStored(t, info, stored)
}

func (w *Writer) compress(info tensorInfo, raw []byte) ([]byte, slopepb.Compression, bool) {
	kind := slopepb.Compression_ZSTD
	src := raw
	if info.elemSize == 2 && info.t.Encoding != slopepb.Encoding_NM_TRANSPOSE_MASK {
		kind = slopepb.Compression_ZSTD_SHUFFLE
		src = shuffleValues(info, raw, false)
	}
	c := w.enc.EncodeAll(src, nil)
	if len(c) >= len(raw) {
		return nil, 0, false
	}
	if r, ok := mulU64(uint64(len(c)), w.lim.MaxCompressionRatio); ok && uint64(len(raw)) > r {
		return nil, 0, false
	}
	return c, kind, true
}

// valuesLen is the length of the section that ZSTD_SHUFFLE shuffles.
func valuesLen(info tensorInfo) uint64 {
	switch info.t.Encoding {
	case slopepb.Encoding_NM, slopepb.Encoding_NM_TRANSPOSE_MATERIALIZED:
		vb, _, _ := NMSizes(info.nm, info.rows, info.cols, info.elemSize)
		return uint64(vb)
	}
	return info.rawBytes
}

// shuffleValues returns raw with its values section byte-plane shuffled
// (or unshuffled), the rest (N:M indices) unchanged.
func shuffleValues(info tensorInfo, raw []byte, inverse bool) []byte {
	out := make([]byte, len(raw))
	n := valuesLen(info)
	if inverse {
		_ = UnshuffleBytes(info.elemSize, raw[:n], out[:n])
	} else {
		_ = ShuffleBytes(info.elemSize, raw[:n], out[:n])
	}
	copy(out[n:], raw[n:])
	return out
}

// maxZstdWindow bounds the window a frame may ask the decoder for (the
// writer's levels use at most 8 MiB).
const maxZstdWindow = 64 << 20

// zstdWindowLimit is the largest window a frame of a tensor of rawLength
// raw bytes may declare (SPEC.md, "Compression"): twice raw_length, as the
// encoder rounds a small input's window up to a power of two, at least
// zstd's minimum window and at most maxZstdWindow.
func zstdWindowLimit(rawLength uint64) uint64 {
	return max(min(rawLength, maxZstdWindow/2)*2, zstd.MinWindowSize)
}

// decodeStored turns stored bytes into the raw encoding, checking that the
// compressed frame yields exactly raw_length bytes. The decoder never
// produces more than raw_length bytes, and its window (what it allocates
// besides the output) is bounded by zstdWindowLimit: a frame declaring a
// larger one is refused before its window is allocated.
func decodeStored(t *slopepb.Tensor, info tensorInfo, stored []byte) ([]byte, error) {
	if t.Compression == slopepb.Compression_COMPRESSION_NONE {
		return stored, nil
	}
	fail := func(err error) error {
		return fmt.Errorf("tensor %q: zstd: %v: %w", t.Name, err, ErrCompression)
	}
	window := zstdWindowLimit(t.RawLength)
	// The sync stream decoder (concurrency 1) checks every frame's window
	// against the limit before allocating it, a single-segment frame's
	// content size (its window) included.
	dec, err := zstd.NewReader(bytes.NewReader(stored), zstd.WithDecoderConcurrency(1),
		zstd.WithDecoderMaxWindow(window), zstd.WithDecoderLowmem(true))
	if err != nil {
		return nil, fail(err)
	}
	defer dec.Close()
	raw := make([]byte, t.RawLength)
	if _, err := io.ReadFull(dec, raw); err != nil {
		if errors.Is(err, zstd.ErrWindowSizeExceeded) || errors.Is(err, zstd.ErrDecoderSizeExceeded) {
			return nil, fail(fmt.Errorf("a frame declares a window above %d bytes (twice raw_length %d, at least %d, at most %d): %w",
				window, t.RawLength, zstd.MinWindowSize, maxZstdWindow, err))
		}
		return nil, fail(fmt.Errorf("decompressed to fewer than %d bytes: %w", t.RawLength, err))
	}
	var one [1]byte
	if n, err := dec.Read(one[:]); n != 0 || err != io.EOF {
		return nil, fail(fmt.Errorf("frame holds more than %d bytes (or is corrupt: %v)", t.RawLength, err))
	}
	if t.Compression == slopepb.Compression_ZSTD_SHUFFLE {
		raw = shuffleValues(info, raw, true)
	}
	return raw, nil
}

// Close validates and writes the manifest, fsyncs, and renames the file
// into place. On any error nothing is left under the final name (and the
// temporary file is removed).
func (w *Writer) Close() error {
	if w.done {
		return fmt.Errorf("close %s: %w: already closed", w.path, ErrWriter)
	}
	if w.err != nil {
		w.Abort()
		return fmt.Errorf("close %s: earlier failure: %w", w.path, w.err)
	}
	if err := w.finish(); err != nil {
		w.Abort()
		return fmt.Errorf("close %s: %w", w.path, err)
	}
	w.done = true
	return nil
}

func (w *Writer) finish() error {
	if w.manifest.Provenance != nil && w.manifest.Provenance.Created == "" {
		w.manifest.Provenance.Created = time.Now().UTC().Format(time.RFC3339)
	}
	mb, err := proto.MarshalOptions{Deterministic: true}.Marshal(w.manifest)
	if err != nil {
		return fmt.Errorf("marshal manifest: %w", err)
	}
	if uint64(len(mb)) > w.lim.MaxManifestLen {
		return fmt.Errorf("manifest of %d bytes exceeds cap %d: %w", len(mb), w.lim.MaxManifestLen, ErrLimit)
	}
	if err := checkManifestSize(mb, w.lim); err != nil {
		return err
	}
	final, _ := alignUp(HeaderSize+uint64(len(mb)), w.align)
	if w.dataLen == 0 {
		final = HeaderSize + uint64(len(mb))
	}
	if _, _, err := checkManifest(w.manifest, w.lim, w.align, final, final+w.dataLen, true); err != nil {
		return err
	}
	h := header{alignment: uint32(w.align), manifestLen: uint64(len(mb)), manifestXXH3: xxh3.Hash(mb), dataOffset: final}
	f := w.tmp
	inPlace := final == w.dataOff || (final < w.dataOff && w.dataLen >= compactBelow)
	if !inPlace {
		f, err = w.relocate(final)
		if err != nil {
			return err
		}
	} else {
		h.dataOffset = w.dataOff
	}
	head := append(h.encode(), mb...)
	head = append(head, make([]byte, h.dataOffset-uint64(len(head)))...)
	if _, err := f.WriteAt(head, 0); err != nil {
		return fmt.Errorf("write header: %w", err)
	}
	if err := f.Truncate(int64(h.dataOffset + w.dataLen)); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", f.Name(), err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), w.path); err != nil {
		return err
	}
	if d, err := os.Open(filepath.Dir(w.path)); err == nil {
		_ = d.Sync() // make the rename durable; not all filesystems allow it
		_ = d.Close()
	}
	return nil
}

// relocate copies the data region into a new temporary file whose data
// region starts at off, and returns it (the old one is removed).
func (w *Writer) relocate(off uint64) (*os.File, error) {
	nf, err := createTemp(w.path)
	if err != nil {
		return nil, err
	}
	if err = w.copyData(nf, off); err != nil {
		nf.Close()
		os.Remove(nf.Name())
		return nil, fmt.Errorf("relocate data region: %w", err)
	}
	old := w.tmp
	w.tmp = nf
	old.Close()
	os.Remove(old.Name())
	return nf, nil
}

// copyData copies the data region of w.tmp to dst at offset off, all of
// it (a short read is an error: the region would end in zeros).
func (w *Writer) copyData(dst *os.File, off uint64) error {
	if _, err := w.tmp.Seek(int64(w.dataOff), io.SeekStart); err != nil {
		return err
	}
	if _, err := dst.Seek(int64(off), io.SeekStart); err != nil {
		return err
	}
	n, err := dst.ReadFrom(&io.LimitedReader{R: w.tmp, N: int64(w.dataLen)})
	if err == nil && n != int64(w.dataLen) {
		err = fmt.Errorf("%d of %d bytes read back from %s", n, w.dataLen, w.tmp.Name())
	}
	return err
}

// Abort discards everything written; the final path is not touched.
func (w *Writer) Abort() {
	if w.done {
		return
	}
	w.done = true
	if w.tmp != nil {
		w.tmp.Close()
		os.Remove(w.tmp.Name())
	}
	if w.enc != nil {
		w.enc.Close()
	}
}

// RemoveStaleTemps removes the temporary files that writers of path left
// beside it when their process was killed before Close (a Writer removes
// its own on every other path), and returns their names. Call it before
// writing path again, when no other process is writing it: a writer's
// temporary file removed under it makes its Close fail.
func RemoveStaleTemps(path string) ([]string, error) {
	dir, base := filepath.Dir(path), filepath.Base(path)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	prefix := tempPrefix(base) // createTemp's names: prefix and a decimal number
	var removed []string
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), prefix)
		if !ok || rest == "" || strings.Trim(rest, "0123456789") != "" || !e.Type().IsRegular() {
			continue
		}
		n := filepath.Join(dir, e.Name())
		if err := os.Remove(n); err != nil && !errors.Is(err, os.ErrNotExist) {
			return removed, err // os.Remove names the file
		}
		removed = append(removed, n)
	}
	return removed, nil
}

// tempPrefix starts the names of the temporary files createTemp makes for
// an output named base (a decimal number follows).
func tempPrefix(base string) string { return "." + base + ".tmp-" }

// createTemp creates a new hidden file beside path for Close to rename
// over it, with mode 0666 less the umask (os.CreateTemp's 0600 would make
// every container private to its writer).
func createTemp(path string) (*os.File, error) {
	dir, base := filepath.Dir(path), filepath.Base(path)
	for range 100 {
		name := filepath.Join(dir, tempPrefix(base)+strconv.FormatUint(rand.Uint64(), 10))
		f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o666)
		if errors.Is(err, os.ErrExist) {
			continue
		}
		return f, err
	}
	return nil, fmt.Errorf("no free temporary name beside %s", path)
}
