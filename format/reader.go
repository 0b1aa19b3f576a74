package format

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"unsafe"

	"github.com/zeebo/xxh3"
	"google.golang.org/protobuf/proto"

	"github.com/slopeml/slope/format/slopepb"
	"github.com/slopeml/slope/internal/mmap"
)

// ReaderOptions tune Open. The zero value gives the defaults.
type ReaderOptions struct {
	// Limits replaces DefaultLimits when non-nil; its zero fields take
	// DefaultLimits' values.
	Limits *Limits
	// SkipChecksums: tensor accessors do not verify xxh3 checksums on first
	// use (Verify always does).
	SkipChecksums bool
}

// File is an open, structurally validated container. Tensor bytes are
// checked lazily, each on its first access: checksum, then encoding
// content (N:M indices, transpose masks). A File is safe for concurrent
// use by several goroutines.
type File struct {
	path     string
	data     []byte // the whole file (mmap'd, or the caller's bytes)
	mapped   bool
	hdr      header
	manifest *slopepb.Manifest
	infos    []tensorInfo
	byName   map[string]int
	opts     ReaderOptions
	lim      Limits
	checked  []tensorCheck
}

type tensorCheck struct {
	once sync.Once
	err  error
}

// Open maps the file at path and validates its header and manifest.
func Open(path string, opts *ReaderOptions) (*File, error) {
	// Stat before opening: opening a FIFO would block until a writer
	// comes.
	if st, err := os.Stat(path); err != nil {
		return nil, err
	} else if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file: %w", path, ErrNotSlope)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file: %w", path, ErrNotSlope)
	}
	size := st.Size()
	if size < HeaderSize {
		// Too small to map usefully: read it to report the precise error.
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, err
		}
		return parse(path, b, false, opts)
	}
	if uint64(size) > uint64(^uint(0)>>1) {
		return nil, fmt.Errorf("%s: %d bytes: %w", path, size, ErrLimit)
	}
	data, err := mmap.Map(f, int(size))
	if err != nil {
		return nil, fmt.Errorf("%s: mmap: %w", path, err)
	}
	r, err := parse(path, data, true, opts)
	if err != nil {
		_ = mmap.Unmap(data)
		return nil, err
	}
	return r, nil
}

// Parse validates a container held in memory (data is used in place and
// must not change while the File is in use). name is used in errors.
func Parse(name string, data []byte, opts *ReaderOptions) (*File, error) {
	return parse(name, data, false, opts)
}

func parse(name string, data []byte, mapped bool, opts *ReaderOptions) (*File, error) {
	r := &File{path: name, data: data, mapped: mapped, lim: DefaultLimits()}
	if opts != nil {
		r.opts = *opts
		if opts.Limits != nil {
			r.lim = opts.Limits.withDefaults()
		}
	}
	size := uint64(len(data))
	h, err := decodeHeader(data, size, r.lim.MaxManifestLen)
	if err != nil {
		return nil, fmt.Errorf("%s: header: %w", name, err)
	}
	r.hdr = h
	mb := data[HeaderSize : HeaderSize+h.manifestLen]
	if got := xxh3.Hash(mb); got != h.manifestXXH3 {
		return nil, fmt.Errorf("%s: manifest xxh3 %016x, header says %016x: %w", name, got, h.manifestXXH3, ErrChecksum)
	}
	// Counted before decoding: decoded, a manifest of tiny entries takes
	// many times its size.
	if err := checkManifestSize(mb, r.lim); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	m := &slopepb.Manifest{}
	if err := (proto.UnmarshalOptions{DiscardUnknown: false}).Unmarshal(mb, m); err != nil {
		return nil, fmt.Errorf("%s: manifest: %v: %w", name, err, ErrManifest)
	}
	infos, byName, err := checkManifest(m, r.lim, uint64(h.alignment), h.dataOffset, size, true)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	r.manifest, r.infos, r.byName = m, infos, byName
	r.checked = make([]tensorCheck, len(infos))
	return r, nil
}

// Close unmaps the file. Slices obtained from the File must not be used
// afterwards.
func (r *File) Close() error {
	if r.mapped && r.data != nil {
		err := mmap.Unmap(r.data)
		r.data = nil
		return err
	}
	r.data = nil
	return nil
}

// DropResident tells the kernel that the mapped file's pages are not
// needed for now: they leave the process's resident memory (they stay in
// the page cache while memory allows) and a later read faults them in
// again. A caller that has decoded the tensors it keeps calls it so that
// the file's bytes no longer count in its RSS. It does nothing for a
// File parsed from the caller's bytes.
func (r *File) DropResident() error {
	if !r.mapped || len(r.data) == 0 {
		return nil
	}
	if err := mmap.DontNeed(r.data); err != nil {
		return fmt.Errorf("%s: release resident pages: %w", r.path, err)
	}
	return nil
}

// Path is the name the File was opened with.
func (r *File) Path() string { return r.path }

// Manifest is the decoded manifest. Callers must not modify it.
func (r *File) Manifest() *slopepb.Manifest { return r.manifest }

// Size is the file size in bytes.
func (r *File) Size() int64 { return int64(len(r.data)) }

// Alignment is the data alignment the file was written with.
func (r *File) Alignment() int { return int(r.hdr.alignment) }

// Tensors is the tensor table, in file order.
func (r *File) Tensors() []*slopepb.Tensor { return r.manifest.Tensors }

// Lookup finds a tensor table entry by name.
func (r *File) Lookup(name string) (*slopepb.Tensor, error) {
	i, err := r.find(name)
	if err != nil {
		return nil, err
	}
	return r.manifest.Tensors[i], nil
}

// find is the table index of a tensor.
func (r *File) find(name string) (int, error) {
	i, ok := r.byName[name]
	if !ok {
		return 0, fmt.Errorf("%s: tensor %q: %w", r.path, name, ErrNotFound)
	}
	return i, nil
}

// FileOffset is the absolute offset of a tensor's stored bytes.
func (r *File) FileOffset(t *slopepb.Tensor) uint64 { return r.hdr.dataOffset + t.Offset }

// stored returns the stored bytes of tensor i (validated in range at open).
func (r *File) stored(i int) []byte {
	t := r.infos[i].t
	off := r.hdr.dataOffset + t.Offset
	return r.data[off : off+t.Length : off+t.Length]
}

// Raw returns the raw encoding of a tensor (SPEC.md, "Encodings"): the
// mapped bytes themselves when uncompressed (zero-copy, read-only), a
// fresh decompressed buffer otherwise. On first access the tensor's
// checksum and encoding content are verified.
func (r *File) Raw(name string) ([]byte, error) {
	i, err := r.find(name)
	if err != nil {
		return nil, err
	}
	return r.raw(i)
}

func (r *File) raw(i int) ([]byte, error) {
	info := r.infos[i]
	raw, err := decodeStored(info.t, info, r.stored(i))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", r.path, err)
	}
	c := &r.checked[i]
	c.once.Do(func() { c.err = r.checkTensor(i, raw, !r.opts.SkipChecksums) })
	if c.err != nil {
		return nil, c.err
	}
	return raw, nil
}

// checkTensor verifies tensor i: checksum of its stored bytes, and the
// content rules of its encoding given its raw bytes.
func (r *File) checkTensor(i int, raw []byte, checksum bool) error {
	info := r.infos[i]
	t := info.t
	at := func(err error) error {
		return fmt.Errorf("%s: tensor %q at file offset %d: %w", r.path, t.Name, r.FileOffset(t), err)
	}
	if checksum {
		if got := xxh3.Hash(r.stored(i)); got != t.Xxh3 {
			return at(fmt.Errorf("xxh3 %016x, manifest says %016x: %w", got, t.Xxh3, ErrChecksum))
		}
	}
	switch t.Encoding {
	case slopepb.Encoding_NM, slopepb.Encoding_NM_TRANSPOSE_MATERIALIZED:
		vb := valuesLen(info)
		if err := ValidateNMIndices(info.nm, info.rows, info.cols, raw[vb:]); err != nil {
			return at(err)
		}
	case slopepb.Encoding_NM_TRANSPOSE_MASK:
		pi := r.byName[t.TransposeOf]
		praw, err := r.raw(pi)
		if err != nil {
			return at(fmt.Errorf("its weight: %w", err))
		}
		pinfo := r.infos[pi]
		if err := ValidateTransposeMask(info.nm, info.rows, info.cols, praw[valuesLen(pinfo):], raw); err != nil {
			return at(err)
		}
	}
	return nil
}

// NMView is an N:M tensor's raw encoding split into its sections.
type NMView struct {
	Pattern    NM
	Rows, Cols int
	DType      slopepb.DType
	Values     []byte // rows * cols*N/M elements of DType
	Indices    []byte // packed in-group indices, rows * IndexRowBytes
}

// NM returns the sections of an NM or NM_TRANSPOSE_MATERIALIZED tensor.
func (r *File) NM(name string) (*NMView, error) {
	i, err := r.find(name)
	if err != nil {
		return nil, err
	}
	info := r.infos[i]
	if e := info.t.Encoding; e != slopepb.Encoding_NM && e != slopepb.Encoding_NM_TRANSPOSE_MATERIALIZED {
		return nil, fmt.Errorf("%s: tensor %q is %s, not NM: %w", r.path, name, e, ErrShape)
	}
	raw, err := r.raw(i)
	if err != nil {
		return nil, err
	}
	vb := valuesLen(info)
	return &NMView{Pattern: info.nm, Rows: info.rows, Cols: info.cols, DType: info.t.Dtype, Values: raw[:vb], Indices: raw[vb:]}, nil
}

// Float32s decodes a DENSE or LOW_RANK float tensor to float32 (a copy).
// For NM tensors use NM, or Dense to expand them.
func (r *File) Float32s(name string) ([]float32, error) {
	i, err := r.find(name)
	if err != nil {
		return nil, err
	}
	info := r.infos[i]
	if e := info.t.Encoding; (e != slopepb.Encoding_DENSE && e != slopepb.Encoding_LOW_RANK) || !IsFloat(info.t.Dtype) {
		return nil, fmt.Errorf("%s: tensor %q is %s %s, not a dense float tensor: %w", r.path, name, e, info.t.Dtype, ErrShape)
	}
	raw, err := r.raw(i)
	if err != nil {
		return nil, err
	}
	out := make([]float32, info.numel)
	if err := DecodeFloats(info.t.Dtype, raw, out); err != nil {
		return nil, fmt.Errorf("%s: tensor %q: %w", r.path, name, err)
	}
	return out, nil
}

// Float32View returns a DENSE FLOAT32 uncompressed tensor as a float32
// slice over the mapped file (zero-copy, read-only: writing to it faults).
// Only on little-endian hosts, which is every platform Go's mmap supports
// here.
func (r *File) Float32View(name string) ([]float32, error) {
	i, err := r.find(name)
	if err != nil {
		return nil, err
	}
	info := r.infos[i]
	if info.t.Dtype != slopepb.DType_FLOAT32 || info.t.Compression != slopepb.Compression_COMPRESSION_NONE ||
		(info.t.Encoding != slopepb.Encoding_DENSE && info.t.Encoding != slopepb.Encoding_LOW_RANK) {
		return nil, fmt.Errorf("%s: tensor %q is not an uncompressed dense float32 tensor: %w", r.path, name, ErrShape)
	}
	raw, err := r.raw(i)
	if err != nil {
		return nil, err
	}
	if uintptr(unsafe.Pointer(unsafe.SliceData(raw)))%4 != 0 {
		return nil, fmt.Errorf("%s: tensor %q is not 4-byte aligned in memory: %w", r.path, name, ErrLayout)
	}
	return unsafe.Slice((*float32)(unsafe.Pointer(unsafe.SliceData(raw))), info.numel), nil
}

// Dense decodes any float tensor to its dense float32 form: NM tensors are
// expanded with zeros at pruned positions.
func (r *File) Dense(name string) ([]float32, error) {
	t, err := r.Lookup(name)
	if err != nil {
		return nil, err
	}
	if t.Encoding != slopepb.Encoding_NM && t.Encoding != slopepb.Encoding_NM_TRANSPOSE_MATERIALIZED {
		return r.Float32s(name)
	}
	v, err := r.NM(name)
	if err != nil {
		return nil, err
	}
	kept, _ := v.Pattern.KeptPerRow(v.Cols)
	vals := make([]float32, v.Rows*kept)
	if err := DecodeFloats(v.DType, v.Values, vals); err != nil {
		return nil, err
	}
	idx := make([]uint8, len(vals))
	if err := UnpackNMIndices(v.Pattern, v.Rows, v.Cols, v.Indices, idx); err != nil {
		return nil, fmt.Errorf("%s: tensor %q: %w", r.path, name, err)
	}
	out := make([]float32, v.Rows*v.Cols)
	if err := ExpandNM(v.Pattern, v.Rows, v.Cols, vals, idx, out); err != nil {
		return nil, fmt.Errorf("%s: tensor %q: %w", r.path, name, err)
	}
	return out, nil
}

// TransposeMask returns the keep bits (in the weight's values order) of an
// NM_TRANSPOSE_MASK tensor, validated against its weight.
func (r *File) TransposeMask(name string) ([]bool, error) {
	i, err := r.find(name)
	if err != nil {
		return nil, err
	}
	info := r.infos[i]
	if info.t.Encoding != slopepb.Encoding_NM_TRANSPOSE_MASK {
		return nil, fmt.Errorf("%s: tensor %q is %s, not a transpose mask: %w", r.path, name, info.t.Encoding, ErrShape)
	}
	raw, err := r.raw(i)
	if err != nil {
		return nil, err
	}
	kept, _ := info.nm.KeptPerRow(info.cols)
	keep := make([]bool, info.rows*kept)
	if err := UnpackTransposeMask(info.nm, info.rows, info.cols, raw, keep); err != nil {
		return nil, fmt.Errorf("%s: tensor %q: %w", r.path, name, err)
	}
	return keep, nil
}

// VerifyProgress is told about each tensor as Verify finishes it.
type VerifyProgress func(done, total int, t *slopepb.Tensor)

// Verify checks everything Open does not: every checksum, every
// compressed frame, every N:M group (exactly N kept, indices in range and
// increasing), every transpose-mask group (at most N), and that all
// padding (between manifest and data, between tensors) is zero. It returns
// the first failure, naming the tensor and its file offset.
func (r *File) Verify(progress VerifyProgress) error {
	var end uint64 = HeaderSize + r.hdr.manifestLen
	for i := range r.infos {
		t := r.infos[i].t
		start := r.FileOffset(t)
		if !allZero(r.data[end:start]) {
			return fmt.Errorf("%s: non-zero padding in bytes [%d, %d) before tensor %q: %w", r.path, end, start, t.Name, ErrLayout)
		}
		end = start + t.Length
		raw, err := decodeStored(t, r.infos[i], r.stored(i))
		if err != nil {
			return fmt.Errorf("%s: %w", r.path, err)
		}
		if err := r.checkTensor(i, raw, true); err != nil {
			return err
		}
		if progress != nil {
			progress(i+1, len(r.infos), t)
		}
	}
	if end < uint64(len(r.data)) && len(r.infos) == 0 && !allZero(r.data[end:]) {
		return fmt.Errorf("%s: non-zero bytes after the manifest: %w", r.path, ErrLayout)
	}
	return nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// IsFormatError reports whether err is one of this package's sentinel
// errors (a problem with a file, as opposed to I/O).
func IsFormatError(err error) bool {
	for _, s := range []error{ErrNotSlope, ErrVersion, ErrEndianness, ErrHeader, ErrTruncated, ErrLimit, ErrManifest,
		ErrLayout, ErrShape, ErrPattern, ErrIndex, ErrMask, ErrChecksum, ErrGraph, ErrNotFound, ErrCompression} {
		if errors.Is(err, s) {
			return true
		}
	}
	return false
}

// TokenizerFiles returns the tokenizer files the container carries (file
// name -> bytes, in place), or nil when it has no tokenizer.
func (r *File) TokenizerFiles() (map[string][]byte, error) {
	tk := r.manifest.GetTokenizer()
	if tk == nil {
		return nil, nil
	}
	out := make(map[string][]byte, len(tk.Files))
	for file, tensor := range tk.Files {
		b, err := r.Raw(tensor)
		if err != nil {
			return nil, fmt.Errorf("tokenizer file %q: %w", file, err)
		}
		out[file] = b
	}
	return out, nil
}
