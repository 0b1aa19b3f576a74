package convert

import (
	"archive/zip"
	"bytes"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"math"
	"math/bits"
	"slices"
	"strconv"
	"strings"

	"github.com/slopeml/slope/format"
)

// ErrPytorchBin is wrapped by every error about a malformed PyTorch zip
// checkpoint (other than its pickle, whose errors wrap ErrPickle).
var ErrPytorchBin = errors.New("invalid PyTorch checkpoint")

// MaxPytorchPickle caps the data.pkl record of a PyTorch checkpoint. A
// state dict's pickle takes a few hundred bytes per tensor.
const MaxPytorchPickle = 64 << 20

// maxPytorchSmallRecord caps the version and byteorder records.
const maxPytorchSmallRecord = 64

// Versions of the zip serialization format this reader understands
// (torch.save writes 3).
const (
	pytorchMinVersion = 1
	pytorchMaxVersion = 10
)

// PytorchBin is an open PyTorch zip checkpoint (torch.save since PyTorch
// 1.6, the format of pytorch_model.bin) whose pickle has been run by the
// restricted unpickler and whose tensors have all been checked against
// their storage records. Tensors are read one at a time; the file is
// never loaded whole. It is safe for concurrent use.
type PytorchBin struct {
	name    string
	r       io.ReaderAt
	size    int64
	closer  io.Closer
	prefix  string
	order   []string
	tensors map[string]*pytorchTensor
}

// pytorchStorage is a storage record, <prefix>/data/<key>.
type pytorchStorage struct {
	key    string
	entry  string // zip entry name
	typ    *torchStorageType
	numel  int64
	file   *zip.File
	stored bool  // uncompressed: read in place at dataAt
	dataAt int64 // file offset of the record's bytes, when stored
}

// pytorchTensor is one state-dict entry, range-checked.
type pytorchTensor struct {
	key        string
	st         *pytorchStorage
	offset     int64 // in elements
	shape      []int
	stride     []int64
	numel      int64
	last       int64 // highest element index read (when numel > 0)
	contiguous bool
}

// OpenPytorchBin opens a PyTorch zip checkpoint (pytorch_model.bin) in
// fsys as a TensorStore. The file must support io.ReaderAt or io.Seeker
// (os.DirFS, embed.FS and fstest.MapFS files do). Its keys are the state
// dict's, in pickle order.
func OpenPytorchBin(fsys fs.FS, name string) (TensorStore, error) {
	f, err := openRegular(fsys, name)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%s: not a regular file: %w", name, ErrPytorchBin)
	}
	var ra io.ReaderAt
	switch v := f.(type) {
	case io.ReaderAt:
		ra = v
	case io.ReadSeeker:
		ra = &seekReaderAt{rs: v}
	default:
		f.Close()
		return nil, fmt.Errorf("%s: file supports neither ReadAt nor Seek", name)
	}
	p, err := ParsePytorchBin(name, ra, st.Size())
	if err != nil {
		f.Close()
		return nil, err
	}
	p.closer = f
	return p, nil
}

// OpenPytorchBinFile opens a PyTorch zip checkpoint by OS path.
func OpenPytorchBinFile(path string) (*PytorchBin, error) {
	f, st, err := openRegularFile(path, ErrPickle)
	if err != nil {
		return nil, err
	}
	p, err := ParsePytorchBin(path, f, st.Size())
	if err != nil {
		f.Close()
		return nil, err
	}
	p.closer = f
	return p, nil
}

// ParsePytorchBin validates a PyTorch zip checkpoint of size bytes read
// through r; name is used in errors. Rules: a zip archive whose first
// entry names the archive directory <prefix>/ (as torch's reader takes
// it); no duplicate entry names; <prefix>/data.pkl (at most
// MaxPytorchPickle bytes) holding one pickle that the restricted
// unpickler accepts and whose result is a dict of string keys to tensors;
// a version record (<prefix>/.data/version or <prefix>/version) holding
// an integer 1..10; a byteorder record, when present, holding "little";
// every storage named by a persistent id present as <prefix>/data/<key>,
// stored or deflated, exactly numel times the element size of its storage
// type long, and, when stored, inside the file; every tensor's sizes and
// strides non-negative, its element count computable without overflow and
// no larger than its storage, and every element it addresses inside the
// storage. Pre-1.6 (tar or bare pickle) checkpoints are refused as not
// supported.
func ParsePytorchBin(name string, r io.ReaderAt, size int64) (*PytorchBin, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%s: %s: %w", name, fmt.Sprintf(format, args...), ErrPytorchBin)
	}
	if err := sniffPytorchBin(name, r, size); err != nil {
		return nil, err
	}
	zr, err := zip.NewReader(r, size)
	if err != nil {
		return nil, bad("not a readable zip archive: %v", err)
	}
	if len(zr.File) == 0 {
		return nil, bad("zip archive has no entries")
	}
	files := make(map[string]*zip.File, len(zr.File))
	for _, f := range zr.File {
		if _, dup := files[f.Name]; dup {
			return nil, bad("duplicate zip entry %q", f.Name)
		}
		files[f.Name] = f
	}
	first := zr.File[0].Name
	i := strings.IndexByte(first, '/')
	if i <= 0 {
		return nil, bad("first zip entry %q is not inside an archive directory", first)
	}
	p := &PytorchBin{name: name, r: r, size: size, prefix: first[:i], tensors: map[string]*pytorchTensor{}}

	// Version and byte order come first: they say how to read the rest.
	verName := p.prefix + "/.data/version"
	if _, ok := files[verName]; !ok {
		verName = p.prefix + "/version"
	}
	vf, ok := files[verName]
	if !ok {
		return nil, bad("no %s/version or %s/.data/version record", p.prefix, p.prefix)
	}
	vb, err := readZipRecord(vf, maxPytorchSmallRecord)
	if err != nil {
		return nil, bad("%s: %v", verName, err)
	}
	ver, err := strconv.Atoi(strings.TrimSpace(string(vb)))
	if err != nil {
		return nil, bad("%s: %q is not an integer", verName, vb)
	}
	if ver < pytorchMinVersion || ver > pytorchMaxVersion {
		return nil, fmt.Errorf("%s: %s: format version %d (this reader knows %d to %d): %w",
			name, verName, ver, pytorchMinVersion, pytorchMaxVersion, ErrNotSupported)
	}
	if bf, ok := files[p.prefix+"/byteorder"]; ok {
		b, err := readZipRecord(bf, maxPytorchSmallRecord)
		if err != nil {
			return nil, bad("%s: %v", bf.Name, err)
		}
		switch bo := strings.TrimSpace(string(b)); bo {
		case "little":
		case "big":
			return nil, fmt.Errorf("%s: %s: big-endian checkpoints are %w", name, bf.Name, ErrNotSupported)
		default:
			return nil, bad("%s: byte order %q, want \"little\"", bf.Name, b)
		}
	}

	pklName := p.prefix + "/data.pkl"
	pf, ok := files[pklName]
	if !ok {
		return nil, bad("no %s record", pklName)
	}
	pkl, err := readZipRecord(pf, MaxPytorchPickle)
	if err != nil {
		return nil, bad("%s: %v", pklName, err)
	}
	tp, err := unpickleTorch(pkl)
	if err != nil {
		return nil, fmt.Errorf("%s: %s: %w", name, pklName, err)
	}

	storages := make(map[string]*pytorchStorage, len(tp.storages))
	for _, key := range tp.storageOrder {
		s, err := p.checkStorage(files, tp.storages[key])
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		storages[key] = s
	}

	root, ok := tp.root.(*pickleDict)
	if !ok {
		return nil, bad("%s: the pickled object is a %s, want a state dict", pklName, pickleTypeName(tp.root))
	}
	for j, k := range root.keys {
		key, ok := k.(string)
		if !ok {
			return nil, bad("%s: state dict key %s is a %s, want a str", pklName, pickleShort(k), pickleTypeName(k))
		}
		tt, ok := root.vals[j].(*torchTensor)
		if !ok {
			return nil, bad("%s: state dict value of %q is a %s, want a tensor", pklName, key, pickleTypeName(root.vals[j]))
		}
		t, err := checkPytorchTensor(key, tt, storages[tt.storage.key])
		if err != nil {
			return nil, bad("tensor %q: %v", key, err)
		}
		p.tensors[key] = t
		p.order = append(p.order, key)
	}
	return p, nil
}

// sniffPytorchBin tells a zip archive from the pre-1.6 formats (a tar
// archive, or a bare pickle stream starting with torch's magic number) and
// from anything else.
func sniffPytorchBin(name string, r io.ReaderAt, size int64) error {
	var head [512]byte
	n := int64(len(head))
	if size < n {
		n = size
	}
	if n > 0 {
		if _, err := r.ReadAt(head[:n], 0); err != nil && err != io.EOF {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	h := head[:n]
	switch {
	case bytes.HasPrefix(h, []byte("PK\x03\x04")), bytes.HasPrefix(h, []byte("PK\x05\x06")):
		return nil
	case len(h) >= 2 && h[0] == opProto, len(h) >= 262 && string(h[257:262]) == "ustar":
		return fmt.Errorf("%s: legacy (pre-1.6) torch.save format not supported; re-save it with a current PyTorch or as safetensors: %w",
			name, ErrNotSupported)
	}
	return fmt.Errorf("%s: not a zip archive (a PyTorch checkpoint starts with \"PK\"): %w", name, ErrPytorchBin)
}

// readZipRecord reads a whole small record, at most max bytes, through
// archive/zip (which checks its CRC). The buffer grows only as bytes
// actually arrive, so a lying size cannot force a large allocation.
func readZipRecord(f *zip.File, max int64) ([]byte, error) {
	if f.UncompressedSize64 > uint64(max) {
		return nil, fmt.Errorf("record of %d bytes exceeds the cap of %d", f.UncompressedSize64, max)
	}
	rc, err := f.Open()
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, max+1))
	if err != nil {
		return nil, err
	}
	if uint64(len(b)) != f.UncompressedSize64 {
		return nil, fmt.Errorf("record holds %d bytes, its header says %d", len(b), f.UncompressedSize64)
	}
	return b, nil
}

// checkStorage finds the record of a storage and checks its size.
func (p *PytorchBin) checkStorage(files map[string]*zip.File, ts *torchStorage) (*pytorchStorage, error) {
	entry := p.prefix + "/data/" + ts.key
	f, ok := files[entry]
	if !ok {
		return nil, fmt.Errorf("storage %q: no %s record: %w", ts.key, entry, ErrPytorchBin)
	}
	want := uint64(ts.numel) * uint64(ts.typ.elemSize) // loadStorage checked the product
	if f.UncompressedSize64 != want {
		return nil, fmt.Errorf("%s: record holds %d bytes, but %d elements of %s need %d: %w",
			entry, f.UncompressedSize64, ts.numel, ts.typ.name, want, ErrPytorchBin)
	}
	s := &pytorchStorage{key: ts.key, entry: entry, typ: ts.typ, numel: ts.numel, file: f}
	switch f.Method {
	case zip.Store:
		if f.CompressedSize64 != f.UncompressedSize64 {
			return nil, fmt.Errorf("%s: stored record of %d bytes has a compressed size of %d: %w",
				entry, f.UncompressedSize64, f.CompressedSize64, ErrPytorchBin)
		}
		at, err := f.DataOffset()
		if err != nil {
			return nil, fmt.Errorf("%s: %v: %w", entry, err, ErrPytorchBin)
		}
		if at < 0 || at > p.size || want > uint64(p.size-at) {
			return nil, fmt.Errorf("%s: %d bytes at offset %d run past the end of the %d-byte file: %w",
				entry, want, at, p.size, ErrPytorchBin)
		}
		s.stored, s.dataAt = true, at
	case zip.Deflate:
		// Read as a stream. Deflate expands at most about 1032:1, so a
		// header that claims more is corrupt (or a bomb): refuse it before
		// allocating what it claims.
		if f.UncompressedSize64 > 1032*f.CompressedSize64+1024 {
			return nil, fmt.Errorf("%s: deflated record of %d bytes claims %d bytes, more than deflate can expand to: %w",
				entry, f.CompressedSize64, f.UncompressedSize64, ErrPytorchBin)
		}
	default:
		return nil, fmt.Errorf("%s: compression method %d not supported: %w", entry, f.Method, ErrPytorchBin)
	}
	return s, nil
}

// checkPytorchTensor range-checks a tensor against its storage.
func checkPytorchTensor(key string, tt *torchTensor, st *pytorchStorage) (*pytorchTensor, error) {
	t := &pytorchTensor{key: key, st: st, offset: tt.offset, stride: slices.Clone(tt.stride),
		shape: make([]int, len(tt.shape))}
	if tt.offset < 0 {
		return nil, fmt.Errorf("storage offset %d is negative", tt.offset)
	}
	numel := uint64(1)
	for i, d := range tt.shape {
		if d < 0 {
			return nil, fmt.Errorf("size %v has a negative dimension", tt.shape)
		}
		if tt.stride[i] < 0 {
			return nil, fmt.Errorf("stride %v has a negative step", tt.stride)
		}
		if uint64(d) > math.MaxInt {
			return nil, fmt.Errorf("size %v: dimension %d too large", tt.shape, d)
		}
		t.shape[i] = int(d)
		hi, lo := bits.Mul64(numel, uint64(d))
		if hi != 0 || lo > math.MaxInt64 {
			numel = math.MaxUint64 // overflow, unless a later dimension is 0
		} else {
			numel = lo
		}
	}
	if slices.Contains(tt.shape, 0) {
		numel = 0
	}
	if numel > math.MaxInt64 {
		return nil, fmt.Errorf("size %v: element count overflows", tt.shape)
	}
	t.numel = int64(numel)
	if t.numel > st.numel {
		return nil, fmt.Errorf("size %v has %d elements, more than the %d of storage %q (overlapping views are not supported)",
			tt.shape, t.numel, st.numel, st.key)
	}
	if t.numel == 0 {
		if tt.offset > st.numel {
			return nil, fmt.Errorf("storage offset %d is past the %d elements of storage %q", tt.offset, st.numel, st.key)
		}
		t.contiguous = true
		return t, nil
	}
	// The highest element addressed: offset + sum((size-1)*stride).
	last := uint64(tt.offset)
	for i, d := range tt.shape {
		hi, lo := bits.Mul64(uint64(d-1), uint64(tt.stride[i]))
		var carry uint64
		last, carry = bits.Add64(last, lo, 0)
		if hi != 0 || carry != 0 || last > math.MaxInt64 {
			return nil, fmt.Errorf("size %v, stride %v and offset %d address past any storage", tt.shape, tt.stride, tt.offset)
		}
	}
	if last >= uint64(st.numel) {
		return nil, fmt.Errorf("size %v, stride %v and offset %d address element %d, past the %d elements of storage %q",
			tt.shape, tt.stride, tt.offset, last, st.numel, st.key)
	}
	t.last = int64(last)
	// Row-major contiguous, ignoring the strides of dimensions of size 1.
	t.contiguous = true
	want := int64(1)
	for i := len(tt.shape) - 1; i >= 0; i-- {
		if tt.shape[i] != 1 && tt.stride[i] != want {
			t.contiguous = false
			break
		}
		want *= tt.shape[i] // cannot overflow: numel fits
	}
	return t, nil
}

// Name is the name the file was opened under.
func (p *PytorchBin) Name() string { return p.name }

// Keys lists the state dict's keys in pickle order.
func (p *PytorchBin) Keys() []string { return slices.Clone(p.order) }

// Stored describes one tensor: its dtype when it is a float tensor we
// read, the storage class as SourceDType ("torch.HalfStorage"), its shape.
func (p *PytorchBin) Stored(key string) (StoredTensor, bool) {
	t, ok := p.tensors[key]
	if !ok {
		return StoredTensor{}, false
	}
	return StoredTensor{Key: key, DType: t.st.typ.dtype, SourceDType: t.st.typ.name, Shape: slices.Clone(t.shape)}, true
}

// ReadFloat32 reads one float32, float16 or bfloat16 tensor as row-major
// float32, reading only the bytes it addresses (strided tensors are
// gathered). Other dtypes are an error naming the tensor.
func (p *PytorchBin) ReadFloat32(key string) ([]float32, error) {
	t, ok := p.tensors[key]
	if !ok {
		return nil, fmt.Errorf("%s: no tensor %q", p.name, key)
	}
	dt := t.st.typ.dtype
	if !format.IsFloat(dt) {
		return nil, fmt.Errorf("%s: tensor %q is stored as %s; only float32, float16 and bfloat16 weights are supported",
			p.name, key, t.st.typ.name)
	}
	if t.numel == 0 {
		return []float32{}, nil
	}
	es := t.st.typ.elemSize
	var raw []byte
	var err error
	if t.contiguous {
		raw, err = p.readStorage(t.st, t.offset*es, t.numel*es)
	} else {
		var span []byte
		span, err = p.readStorage(t.st, t.offset*es, (t.last-t.offset+1)*es)
		if err == nil {
			raw = gatherStrided(span, t, es)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("%s: tensor %q: %w", p.name, key, err)
	}
	out := make([]float32, t.numel)
	if err := format.DecodeFloats(dt, raw, out); err != nil {
		return nil, fmt.Errorf("%s: tensor %q: %w", p.name, key, err)
	}
	return out, nil
}

// gatherStrided copies the elements of t, in row-major order, out of
// span, which holds the storage's elements offset..last. checkPytorchTensor
// proved every index in range.
func gatherStrided(span []byte, t *pytorchTensor, es int64) []byte {
	out := make([]byte, 0, t.numel*es)
	idx := make([]int, len(t.shape))
	var pos int64 // element index relative to offset
	for {
		out = append(out, span[pos*es:(pos+1)*es]...)
		// Advance the odometer.
		d := len(idx) - 1
		for ; d >= 0; d-- {
			idx[d]++
			pos += t.stride[d]
			if idx[d] < t.shape[d] {
				break
			}
			pos -= int64(idx[d]) * t.stride[d]
			idx[d] = 0
		}
		if d < 0 {
			return out
		}
	}
}

// readStorage reads n bytes at byte offset off of a storage record. A
// stored record is read in place; a deflated one is decompressed as a
// stream, the buffer growing only as bytes arrive. Reading a whole record
// checks its CRC-32.
func (p *PytorchBin) readStorage(s *pytorchStorage, off, n int64) ([]byte, error) {
	whole := off == 0 && uint64(n) == s.file.UncompressedSize64
	if s.stored {
		b := make([]byte, n)
		if _, err := p.r.ReadAt(b, s.dataAt+off); err != nil {
			return nil, fmt.Errorf("read %s: %w", s.entry, err)
		}
		if whole && s.file.CRC32 != 0 && crc32.ChecksumIEEE(b) != s.file.CRC32 {
			return nil, fmt.Errorf("read %s: %w: %w", s.entry, zip.ErrChecksum, ErrPytorchBin)
		}
		return b, nil
	}
	rc, err := s.file.Open()
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", s.entry, err)
	}
	defer rc.Close()
	if _, err := io.CopyN(io.Discard, rc, off); err != nil {
		return nil, fmt.Errorf("read %s: %w", s.entry, err)
	}
	var buf bytes.Buffer
	if _, err := io.CopyN(&buf, rc, n); err != nil {
		return nil, fmt.Errorf("read %s: %w", s.entry, err)
	}
	if whole {
		// Reach EOF so that archive/zip checks the CRC.
		if _, err := io.Copy(io.Discard, rc); err != nil {
			return nil, fmt.Errorf("read %s: %w", s.entry, err)
		}
	}
	return buf.Bytes(), nil
}

// Close closes the underlying file, if Open* opened it.
func (p *PytorchBin) Close() error {
	if p.closer == nil {
		return nil
	}
	err := p.closer.Close()
	p.closer = nil
	return err
}

var _ TensorStore = (*PytorchBin)(nil)
