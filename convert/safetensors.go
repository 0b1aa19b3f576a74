package convert

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"math/bits"
	"os"
	"runtime/debug"
	"slices"
	"strconv"
	"sync"
	"unicode/utf8"

	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/format/slopepb"
	"github.com/slopeml/slope/internal/mmap"
)

// MaxSafetensorsHeader caps the JSON header of a safetensors file.
const MaxSafetensorsHeader = 100 << 20

// ErrSafetensors is wrapped by every error about a malformed safetensors
// file.
var ErrSafetensors = errors.New("invalid safetensors file")

// safetensorsBits is the element size in bits of every dtype the
// safetensors format defines. Only F32, F16 and BF16 can be read as floats.
var safetensorsBits = map[string]uint64{
	"BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
	"I16": 16, "U16": 16, "F16": 16, "BF16": 16,
	"I32": 32, "U32": 32, "F32": 32,
	"I64": 64, "U64": 64, "F64": 64, "C64": 64,
	"F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}

// SafetensorsEntry is one tensor of a safetensors file.
type SafetensorsEntry struct {
	Name  string
	DType string // as in the header: "F32", "F16", "BF16", ...
	Shape []int
	// Begin and End are byte offsets relative to the start of the data
	// section (the header's data_offsets).
	Begin, End int64
}

// Numel is the element count of the entry's shape.
func (e *SafetensorsEntry) Numel() int {
	n := 1
	for _, d := range e.Shape {
		n *= d
	}
	return n
}

// Safetensors is an open safetensors file whose header has been strictly
// validated. Tensors are read one at a time with ReadAt; the file is never
// loaded whole. It is safe for concurrent use.
type Safetensors struct {
	name      string
	r         io.ReaderAt // nil when mapped
	closer    io.Closer
	mu        sync.RWMutex // guards mapped against Close
	mapped    []byte       // the whole file, when OpenSafetensorsFile mapped it
	size      int64
	dataStart int64
	entries   map[string]*SafetensorsEntry
	order     []string // in data-offset order
	metadata  map[string]string
}

// OpenSafetensors opens name in fsys. The file must support io.ReaderAt or
// io.Seeker (os.DirFS and embed.FS files do).
func OpenSafetensors(fsys fs.FS, name string) (*Safetensors, error) {
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
		return nil, fmt.Errorf("%s: not a regular file: %w", name, ErrSafetensors)
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
	s, err := ParseSafetensors(name, ra, st.Size())
	if err != nil {
		f.Close()
		return nil, err
	}
	s.closer = f
	return s, nil
}

// OpenSafetensorsFile opens a safetensors file by OS path. The header is
// read with pread; the file is then mapped read-only, tensors are decoded
// straight from the mapping, and the pages of each tensor are released
// after it is read, so that reading a whole checkpoint tensor by tensor
// keeps at most one tensor's pages resident. A fault on the mapping (the
// file truncated underneath, an I/O error) becomes an error, not a crash.
func OpenSafetensorsFile(path string) (*Safetensors, error) {
	f, st, err := openRegularFile(path, ErrSafetensors)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	s, err := ParseSafetensors(path, f, st.Size())
	if err != nil {
		return nil, err
	}
	if uint64(s.size) > uint64(math.MaxInt) {
		return nil, fmt.Errorf("%s: %d bytes is too large to map: %w", path, s.size, ErrSafetensors)
	}
	data, err := mmap.Map(f, int(s.size))
	if err != nil {
		return nil, fmt.Errorf("%s: mmap: %w", path, err)
	}
	// The mapping outlives the descriptor; reads no longer go through r.
	s.mapped = data
	s.r = nil
	return s, nil
}

// seekReaderAt adapts an io.ReadSeeker to io.ReaderAt.
type seekReaderAt struct {
	mu sync.Mutex
	rs io.ReadSeeker
}

func (s *seekReaderAt) ReadAt(p []byte, off int64) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, err := s.rs.Seek(off, io.SeekStart); err != nil {
		return 0, err
	}
	return io.ReadFull(s.rs, p)
}

// ParseSafetensors validates the header of a safetensors file of size
// bytes read through r. name is used in errors. Rules (the safetensors
// format, applied strictly): an 8-byte little-endian header length N with
// 8+N <= size and N <= MaxSafetensorsHeader; N bytes of UTF-8 JSON, one
// object whose members are tensor entries {"dtype", "shape",
// "data_offsets"} (exactly those keys) and an optional "__metadata__"
// object of strings; no duplicate keys; known dtypes; non-negative integer
// shapes and offsets; each entry's byte size equal to its element count
// times its dtype size; and the entries, ordered by offset, covering the
// data section exactly, without gaps or overlaps.
func ParseSafetensors(name string, r io.ReaderAt, size int64) (*Safetensors, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%s: %s: %w", name, fmt.Sprintf(format, args...), ErrSafetensors)
	}
	if size < 8 {
		return nil, bad("file of %d bytes is shorter than the 8-byte header length", size)
	}
	var lb [8]byte
	if _, err := r.ReadAt(lb[:], 0); err != nil {
		return nil, fmt.Errorf("%s: read header length: %w", name, err)
	}
	n := binary.LittleEndian.Uint64(lb[:])
	if n > MaxSafetensorsHeader {
		return nil, bad("header length %d exceeds the cap of %d bytes", n, MaxSafetensorsHeader)
	}
	if n > uint64(size-8) {
		return nil, bad("header length %d runs past the end of the %d-byte file", n, size)
	}
	hdr := make([]byte, n)
	if _, err := r.ReadAt(hdr, 8); err != nil {
		return nil, fmt.Errorf("%s: read header: %w", name, err)
	}
	s := &Safetensors{name: name, r: r, size: size, dataStart: 8 + int64(n),
		entries: map[string]*SafetensorsEntry{}, metadata: map[string]string{}}
	if err := s.parseHeader(hdr); err != nil {
		return nil, bad("header: %v", err)
	}
	if err := s.checkLayout(); err != nil {
		return nil, bad("%v", err)
	}
	return s, nil
}

// parseHeader decodes the JSON header token by token, so that duplicate
// keys, unknown keys and wrong types are all caught.
func (s *Safetensors) parseHeader(hdr []byte) error {
	if !utf8.Valid(hdr) {
		return errors.New("not valid UTF-8")
	}
	if len(hdr) == 0 || hdr[0] != '{' {
		return errors.New("does not start with '{'")
	}
	dec := json.NewDecoder(bytes.NewReader(hdr))
	dec.UseNumber()
	if err := expectDelim(dec, '{'); err != nil {
		return err
	}
	seen := map[string]bool{}
	for dec.More() {
		key, err := stringToken(dec)
		if err != nil {
			return err
		}
		if seen[key] {
			return fmt.Errorf("duplicate key %q", key)
		}
		seen[key] = true
		if key == "__metadata__" {
			if err := s.parseMetadata(dec); err != nil {
				return fmt.Errorf("__metadata__: %w", err)
			}
			continue
		}
		e, err := parseEntry(dec, key)
		if err != nil {
			return fmt.Errorf("tensor %q: %w", key, err)
		}
		s.entries[key] = e
		s.order = append(s.order, key)
	}
	if err := expectDelim(dec, '}'); err != nil {
		return err
	}
	if tok, err := dec.Token(); err != io.EOF {
		if err != nil {
			return err
		}
		return fmt.Errorf("trailing data after the header object (%v)", tok)
	}
	return nil
}

func (s *Safetensors) parseMetadata(dec *json.Decoder) error {
	if err := expectDelim(dec, '{'); err != nil {
		return err
	}
	for dec.More() {
		k, err := stringToken(dec)
		if err != nil {
			return err
		}
		if _, dup := s.metadata[k]; dup {
			return fmt.Errorf("duplicate key %q", k)
		}
		v, err := stringToken(dec)
		if err != nil {
			return fmt.Errorf("value of %q: %w", k, err)
		}
		s.metadata[k] = v
	}
	return expectDelim(dec, '}')
}

func parseEntry(dec *json.Decoder, name string) (*SafetensorsEntry, error) {
	if err := expectDelim(dec, '{'); err != nil {
		return nil, err
	}
	e := &SafetensorsEntry{Name: name}
	var haveDType, haveShape, haveOffsets bool
	var offsets []uint64
	for dec.More() {
		k, err := stringToken(dec)
		if err != nil {
			return nil, err
		}
		switch k {
		case "dtype":
			if haveDType {
				return nil, errors.New(`duplicate key "dtype"`)
			}
			haveDType = true
			if e.DType, err = stringToken(dec); err != nil {
				return nil, fmt.Errorf("dtype: %w", err)
			}
			if _, ok := safetensorsBits[e.DType]; !ok {
				return nil, fmt.Errorf("unknown dtype %q", e.DType)
			}
		case "shape":
			if haveShape {
				return nil, errors.New(`duplicate key "shape"`)
			}
			haveShape = true
			dims, err := uintArray(dec)
			if err != nil {
				return nil, fmt.Errorf("shape: %w", err)
			}
			e.Shape = make([]int, len(dims))
			for i, d := range dims {
				if d > math.MaxInt64 {
					return nil, fmt.Errorf("shape: dim %d too large", d)
				}
				e.Shape[i] = int(d)
			}
		case "data_offsets":
			if haveOffsets {
				return nil, errors.New(`duplicate key "data_offsets"`)
			}
			haveOffsets = true
			if offsets, err = uintArray(dec); err != nil {
				return nil, fmt.Errorf("data_offsets: %w", err)
			}
			if len(offsets) != 2 {
				return nil, fmt.Errorf("data_offsets has %d values, want 2", len(offsets))
			}
		default:
			return nil, fmt.Errorf("unknown key %q", k)
		}
	}
	if err := expectDelim(dec, '}'); err != nil {
		return nil, err
	}
	if !haveDType || !haveShape || !haveOffsets {
		return nil, errors.New(`entry needs "dtype", "shape" and "data_offsets"`)
	}
	if offsets[0] > offsets[1] || offsets[1] > math.MaxInt64 {
		return nil, fmt.Errorf("data_offsets [%d, %d] are not an increasing pair", offsets[0], offsets[1])
	}
	e.Begin, e.End = int64(offsets[0]), int64(offsets[1])
	// Byte size = numel * bits / 8, with checked arithmetic.
	numel := uint64(1)
	zero := false
	for _, d := range e.Shape {
		if d == 0 {
			zero = true
		}
	}
	if zero {
		numel = 0
	} else {
		for _, d := range e.Shape {
			hi, lo := bits.Mul64(numel, uint64(d))
			if hi != 0 || lo > math.MaxInt64 {
				return nil, fmt.Errorf("shape %v: element count overflows", e.Shape)
			}
			numel = lo
		}
	}
	hi, nbits := bits.Mul64(numel, safetensorsBits[e.DType])
	if hi != 0 || nbits%8 != 0 {
		return nil, fmt.Errorf("shape %v of %s is not a whole number of bytes", e.Shape, e.DType)
	}
	if want := nbits / 8; want != offsets[1]-offsets[0] {
		return nil, fmt.Errorf("data_offsets [%d, %d] hold %d bytes, but %s %v needs %d",
			offsets[0], offsets[1], offsets[1]-offsets[0], e.DType, e.Shape, want)
	}
	return e, nil
}

// checkLayout: entries inside the data section, contiguous, covering it.
func (s *Safetensors) checkLayout() error {
	dataLen := s.size - s.dataStart
	slices.SortStableFunc(s.order, func(a, b string) int {
		ea, eb := s.entries[a], s.entries[b]
		if ea.Begin != eb.Begin {
			return cmpInt64(ea.Begin, eb.Begin)
		}
		return cmpInt64(ea.End, eb.End)
	})
	var end int64
	for _, name := range s.order {
		e := s.entries[name]
		if e.End > dataLen {
			return fmt.Errorf("tensor %q: data_offsets [%d, %d] run past the %d-byte data section", name, e.Begin, e.End, dataLen)
		}
		if e.Begin < end {
			return fmt.Errorf("tensor %q: data_offsets [%d, %d] overlap the previous tensor (ends at %d)", name, e.Begin, e.End, end)
		}
		if e.Begin > end {
			return fmt.Errorf("tensor %q: gap of %d bytes before data_offsets [%d, %d]", name, e.Begin-end, e.Begin, e.End)
		}
		end = e.End
	}
	if end != dataLen {
		return fmt.Errorf("tensors end at %d but the data section has %d bytes", end, dataLen)
	}
	return nil
}

func cmpInt64(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func expectDelim(dec *json.Decoder, d json.Delim) error {
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	if got, ok := tok.(json.Delim); !ok || got != d {
		return fmt.Errorf("want %q, got %v", d, tok)
	}
	return nil
}

func stringToken(dec *json.Decoder) (string, error) {
	tok, err := dec.Token()
	if err != nil {
		return "", err
	}
	s, ok := tok.(string)
	if !ok {
		return "", fmt.Errorf("want a string, got %v", tok)
	}
	return s, nil
}

// uintArray reads a JSON array of non-negative integers (no fractions, no
// exponents, no signs).
func uintArray(dec *json.Decoder) ([]uint64, error) {
	if err := expectDelim(dec, '['); err != nil {
		return nil, err
	}
	var out []uint64
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		num, ok := tok.(json.Number)
		if !ok {
			return nil, fmt.Errorf("want an integer, got %v", tok)
		}
		v, err := strconv.ParseUint(string(num), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("want a non-negative integer, got %s", num)
		}
		out = append(out, v)
		if len(out) > 64 {
			return nil, errors.New("more than 64 values")
		}
	}
	return out, expectDelim(dec, ']')
}

// Name is the name the file was opened under.
func (s *Safetensors) Name() string { return s.name }

// Names lists the tensors in data-offset order.
func (s *Safetensors) Names() []string { return slices.Clone(s.order) }

// Entry returns the header entry of a tensor.
func (s *Safetensors) Entry(name string) (*SafetensorsEntry, bool) {
	e, ok := s.entries[name]
	if !ok {
		return nil, false
	}
	c := *e
	c.Shape = slices.Clone(e.Shape)
	return &c, true
}

// Metadata is the header's "__metadata__" map (empty when absent).
func (s *Safetensors) Metadata() map[string]string {
	m := make(map[string]string, len(s.metadata))
	for k, v := range s.metadata {
		m[k] = v
	}
	return m
}

// ReadRaw reads the bytes of one tensor.
func (s *Safetensors) ReadRaw(name string) ([]byte, error) {
	return s.ReadRawInto(name, nil)
}

// ReadRawInto is ReadRaw into buf when it has the capacity (else into a
// new slice): it returns the tensor's bytes.
func (s *Safetensors) ReadRawInto(name string, buf []byte) ([]byte, error) {
	e, ok := s.entries[name]
	if !ok {
		return nil, fmt.Errorf("%s: no tensor %q", s.name, name)
	}
	n := e.End - e.Begin
	b := buf[:0]
	if int64(cap(b)) < n {
		b = make([]byte, n)
	}
	b = b[:n]
	if len(b) == 0 {
		return b, nil
	}
	if s.r == nil {
		if err := s.withMapped(e, func(off int64, src []byte) error { copy(b[off:], src); return nil }); err != nil {
			return nil, err
		}
		return b, nil
	}
	if _, err := s.r.ReadAt(b, s.dataStart+e.Begin); err != nil {
		return nil, fmt.Errorf("%s: read tensor %q: %w", s.name, name, err)
	}
	return b, nil
}

// mappedChunk is how many bytes of a mapped tensor are decoded before
// their pages are released (a multiple of every element size).
const mappedChunk = 8 << 20

// withMapped calls fn with the mapped bytes of e, chunk by chunk (off is
// the chunk's byte offset in the tensor), turning a fault on the mapping
// into an error. The pages read are released as it goes: they stay in
// the page cache but no longer count against this process, so reading a
// tensor keeps at most a chunk of the file resident.
func (s *Safetensors) withMapped(e *SafetensorsEntry, fn func(off int64, chunk []byte) error) (err error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.mapped == nil {
		return fmt.Errorf("%s: read tensor %q: file is closed", s.name, e.Name)
	}
	lo, hi := s.dataStart+e.Begin, s.dataStart+e.End
	pg := int64(os.Getpagesize())
	released := lo &^ (pg - 1) // pages below this are released
	release := func(upTo int64) {
		if upTo > released {
			_ = mmap.DontNeed(s.mapped[released:upTo])
			released = upTo
		}
	}
	defer func() { release(min((hi+pg-1)&^(pg-1), int64(len(s.mapped)))) }()
	defer catchFault(&err, fmt.Sprintf("%s: read tensor %q", s.name, e.Name))()
	for off := lo; off < hi; off += mappedChunk {
		end := min(off+mappedChunk, hi)
		_ = mmap.WillNeed(s.mapped[off&^(pg-1) : min((end+pg-1)&^(pg-1), int64(len(s.mapped)))])
		if err := fn(off-lo, s.mapped[off:end]); err != nil {
			return err
		}
		release(end &^ (pg - 1))
	}
	return nil
}

// catchFault turns a fault reading the mapping into an error in *err
// (what names the read): call as defer catchFault(&err, what)(). The
// returned function recovers, so it must be the deferred call itself.
func catchFault(err *error, what string) func() {
	old := debug.SetPanicOnFault(true)
	return func() {
		debug.SetPanicOnFault(old)
		if r := recover(); r != nil {
			if _, fault := r.(interface{ Addr() uintptr }); !fault {
				panic(r)
			}
			*err = fmt.Errorf("%s: fault reading the mapped file (truncated while open, or an I/O error): %v", what, r)
		}
	}
}

// hashChunk is how much of a mapped file HashMapped reads at a time.
const hashChunk = 16 << 20

// HashMapped returns the SHA-256 (hex) and size of the whole file,
// reading it through the memory mapping (no copy through read(2)) and
// releasing each chunk's pages once hashed, so resident memory stays
// bounded. ok is false when the file is not mapped (read it otherwise).
func (s *Safetensors) HashMapped() (sum string, size int64, ok bool, err error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.mapped == nil {
		return "", 0, false, nil
	}
	defer catchFault(&err, s.name+": hash")()
	h := sha256.New()
	n := int64(len(s.mapped))
	chunkAt := func(off int64) []byte { return s.mapped[off:min(off+hashChunk, n)] }
	if n > 0 {
		_ = mmap.WillNeed(chunkAt(0))
	}
	for off := int64(0); off < n; off += hashChunk {
		// Ask for the next chunk before hashing this one, so that the
		// disk reads it while the hash runs.
		if next := off + hashChunk; next < n {
			_ = mmap.WillNeed(chunkAt(next))
		}
		chunk := chunkAt(off)
		h.Write(chunk)
		_ = mmap.DontNeed(chunk)
	}
	return hex.EncodeToString(h.Sum(nil)), n, true, nil
}

// SafetensorsDType maps the float dtypes this package reads to slopepb.
func SafetensorsDType(dt string) (slopepb.DType, bool) {
	switch dt {
	case "F32":
		return slopepb.DType_FLOAT32, true
	case "F16":
		return slopepb.DType_FLOAT16, true
	case "BF16":
		return slopepb.DType_BFLOAT16, true
	}
	return slopepb.DType_DTYPE_UNSPECIFIED, false
}

// ReadFloat32 reads one F32, F16 or BF16 tensor and decodes it to float32;
// other dtypes are an error naming the tensor.
func (s *Safetensors) ReadFloat32(name string) ([]float32, error) {
	e, ok := s.entries[name]
	if !ok {
		return nil, fmt.Errorf("%s: no tensor %q", s.name, name)
	}
	dt, ok := SafetensorsDType(e.DType)
	if !ok {
		return nil, fmt.Errorf("%s: tensor %q has dtype %s; only F32, F16 and BF16 weights are supported", s.name, name, e.DType)
	}
	out := make([]float32, e.Numel())
	decode := func(raw []byte) error {
		if err := format.DecodeFloats(dt, raw, out); err != nil {
			return fmt.Errorf("%s: tensor %q: %w", s.name, name, err)
		}
		return nil
	}
	if s.r == nil {
		es := int64(safetensorsBits[e.DType] / 8)
		err := s.withMapped(e, func(off int64, src []byte) error {
			// On this goroutine: withMapped turns a fault in the mapping
			// (a file truncated meanwhile) into an error only here.
			if err := format.DecodeFloatsSerial(dt, src, out[off/es:(off+int64(len(src)))/es]); err != nil {
				return fmt.Errorf("%s: tensor %q: %w", s.name, name, err)
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		return out, nil
	}
	raw, err := s.ReadRaw(name)
	if err != nil {
		return nil, err
	}
	if err := decode(raw); err != nil {
		return nil, err
	}
	return out, nil
}

// Close closes the underlying file, if Open* opened it, or unmaps it.
func (s *Safetensors) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mapped != nil {
		err := mmap.Unmap(s.mapped)
		s.mapped = nil
		return err
	}
	if s.closer == nil {
		return nil
	}
	err := s.closer.Close()
	s.closer = nil
	return err
}
