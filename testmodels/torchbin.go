package testmodels

import (
	"archive/zip"
	"bufio"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"hash/fnv"
	"io"
	"math"
	"os"
	"strconv"
	"unicode/utf8"

	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/format/slopepb"
)

// torchArchiveName is the directory every record of a written checkpoint
// lives in. torch.save uses "archive" when it writes to a buffer and the
// file's stem when it writes to a path; readers take it from the first
// entry either way.
const torchArchiveName = "archive"

// torchStorageAlignment is the alignment of every record's bytes in the
// zip, as torch.save writes them (so that the loader can mmap storages).
const torchStorageAlignment = 64

// torchSetitemsBatch is the pickler's batch size for dict items.
const torchSetitemsBatch = 1000

// WriteTorchBin writes tensors, in order, as a PyTorch zip checkpoint at
// path: what torch.save(state_dict, path) writes for an OrderedDict of
// contiguous CPU tensors, one storage each. The records are
// archive/data.pkl (pickle protocol 2: an OrderedDict whose values are
// torch._utils._rebuild_tensor_v2 calls over persistent ids
// ('storage', torch.FloatStorage|HalfStorage|BFloat16Storage, "<i>",
// "cpu", numel)), archive/.format_version, archive/.storage_alignment,
// archive/byteorder ("little"), archive/data/<i> (the little-endian
// storage bytes), archive/version ("3") and archive/.data/serialization_id,
// all stored uncompressed with their bytes 64-byte aligned (sizes and
// CRCs in the local headers rather than in data descriptors). The pickle
// opcodes, memoization and record layout are those of torch.save with
// Python's pickler, so that readers are tested against the real format.
// DType must be "F32", "F16" or "BF16".
func WriteTorchBin(path string, tensors []NamedTensor) (err error) {
	seen := make(map[string]bool, len(tensors))
	for _, t := range tensors {
		if seen[t.Name] {
			return fmt.Errorf("%s: duplicate tensor %q", path, t.Name)
		}
		seen[t.Name] = true
		if !utf8.ValidString(t.Name) {
			return fmt.Errorf("%s: tensor name %q is not valid UTF-8", path, t.Name)
		}
		if _, err := dtypeOf(t.DType); err != nil {
			return fmt.Errorf("%s: tensor %q: %w", path, t.Name, err)
		}
		n := 1
		for _, d := range t.Shape {
			if d < 0 {
				return fmt.Errorf("%s: tensor %q: negative dimension in shape %v", path, t.Name, t.Shape)
			}
			if d != 0 && n > math.MaxInt32/d {
				return fmt.Errorf("%s: tensor %q: shape %v too large", path, t.Name, t.Shape)
			}
			n *= d
		}
		if n != len(t.Data) {
			return fmt.Errorf("%s: tensor %q: shape %v needs %d values, have %d", path, t.Name, t.Shape, n, len(t.Data))
		}
	}

	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = cerr
		}
		if err != nil {
			os.Remove(path)
		}
	}()
	bw := bufio.NewWriterSize(f, 1<<20)
	cw := &countingWriter{w: bw}
	zw := zip.NewWriter(cw)
	record := func(name string, data []byte) error {
		if err := zw.Flush(); err != nil {
			return err
		}
		full := torchArchiveName + "/" + name
		// Sizes and CRC go in the local header (torch writes a data
		// descriptor instead; readers accept both), so that the next
		// header's offset is known when its padding is computed.
		w, err := zw.CreateRaw(&zip.FileHeader{
			Name:               full,
			Method:             zip.Store,
			CRC32:              crc32.ChecksumIEEE(data),
			CompressedSize64:   uint64(len(data)),
			UncompressedSize64: uint64(len(data)),
			Extra:              torchAlignExtra(cw.n, full),
		})
		if err != nil {
			return err
		}
		_, err = w.Write(data)
		return err
	}

	if err := record("data.pkl", torchStatePickle(tensors)); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	for _, r := range []struct{ name, data string }{
		{".format_version", "1"},
		{".storage_alignment", strconv.Itoa(torchStorageAlignment)},
		{"byteorder", "little"},
	} {
		if err := record(r.name, []byte(r.data)); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
	}
	for i, t := range tensors {
		dt, _ := dtypeOf(t.DType)
		es, _ := format.ElemSize(dt)
		b := make([]byte, len(t.Data)*es)
		if err := format.EncodeFloats(dt, t.Data, b); err != nil {
			return fmt.Errorf("%s: tensor %q: %w", path, t.Name, err)
		}
		if err := record("data/"+strconv.Itoa(i), b); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
	}
	if err := record("version", []byte("3\n")); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if err := record(".data/serialization_id", []byte(torchSerializationID(tensors))); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if err := zw.Close(); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// torchAlignExtra is the local-header extra field that pads a record's
// bytes to torchStorageAlignment, as torch's writer does: header id "FB"
// and a run of 'Z'. off is where the local header starts.
func torchAlignExtra(off int64, name string) []byte {
	const fixed = 30 // local file header without name and extra
	base := off + fixed + int64(len(name)) + 4
	pad := (torchStorageAlignment - base%torchStorageAlignment) % torchStorageAlignment
	b := make([]byte, 4+pad)
	b[0], b[1] = 'F', 'B'
	binary.LittleEndian.PutUint16(b[2:], uint16(pad))
	for i := 4; i < len(b); i++ {
		b[i] = 'Z'
	}
	return b
}

// torchSerializationID is a deterministic stand-in for the random
// 40-digit id torch.save records.
func torchSerializationID(tensors []NamedTensor) string {
	h := fnv.New64a()
	for _, t := range tensors {
		fmt.Fprintf(h, "%s %s %v\n", t.Name, t.DType, t.Shape)
	}
	a := h.Sum64()
	h.Write([]byte("serialization_id"))
	return fmt.Sprintf("%020d%020d", a%1e19, h.Sum64()%1e19)
}

// torchStorageClass names the storage class torch pickles for a dtype.
func torchStorageClass(dt slopepb.DType) string {
	switch dt {
	case slopepb.DType_FLOAT16:
		return "HalfStorage"
	case slopepb.DType_BFLOAT16:
		return "BFloat16Storage"
	}
	return "FloatStorage"
}

// torchStatePickle is the data.pkl of torch.save(state_dict) for tensors,
// opcode for opcode what Python's pickler writes at protocol 2: every
// non-empty tuple, string, global and reduced object memoized in order,
// repeated globals and identical strings ('storage', 'cpu') fetched from
// the memo, ints in the smallest of BININT1, BININT2, BININT and LONG1,
// dict items in SETITEMS batches of 1000.
func torchStatePickle(tensors []NamedTensor) []byte {
	p := &pickler{globals: map[string]int{}, strings: map[string]int{}}
	p.b = append(p.b, 0x80, 2) // PROTO 2
	p.global("collections", "OrderedDict")
	p.b = append(p.b, ')', 'R') // EMPTY_TUPLE, REDUCE
	p.put()
	for start := 0; start < len(tensors); start += torchSetitemsBatch {
		batch := tensors[start:min(start+torchSetitemsBatch, len(tensors))]
		if len(batch) > 1 {
			p.b = append(p.b, '(') // MARK
		}
		for j, t := range batch {
			p.tensor(start+j, t)
		}
		if len(batch) > 1 {
			p.b = append(p.b, 'u') // SETITEMS
		} else {
			p.b = append(p.b, 's') // SETITEM
		}
	}
	p.b = append(p.b, '.') // STOP
	return p.b
}

// pickler writes pickle protocol 2 the way Python's pickler does for the
// objects of a state dict.
type pickler struct {
	b       []byte
	memo    int
	globals map[string]int // memo index of each global written
	strings map[string]int // memo index of the interned strings
}

func (p *pickler) put() {
	if p.memo < 256 {
		p.b = append(p.b, 'q', byte(p.memo)) // BINPUT
	} else {
		p.b = append(p.b, 'r') // LONG_BINPUT
		p.b = binary.LittleEndian.AppendUint32(p.b, uint32(p.memo))
	}
	p.memo++
}

func (p *pickler) get(i int) {
	if i < 256 {
		p.b = append(p.b, 'h', byte(i)) // BINGET
	} else {
		p.b = append(p.b, 'j') // LONG_BINGET
		p.b = binary.LittleEndian.AppendUint32(p.b, uint32(i))
	}
}

func (p *pickler) global(module, name string) {
	k := module + "\n" + name
	if i, ok := p.globals[k]; ok {
		p.get(i)
		return
	}
	p.b = append(p.b, 'c')
	p.b = append(p.b, k...)
	p.b = append(p.b, '\n')
	p.globals[k] = p.memo
	p.put()
}

// str writes a new string object.
func (p *pickler) str(s string) {
	p.b = append(p.b, 'X') // BINUNICODE
	p.b = binary.LittleEndian.AppendUint32(p.b, uint32(len(s)))
	p.b = append(p.b, s...)
	p.put()
}

// interned writes a string that is one shared object in Python (a literal
// or a cached location tag), fetched from the memo after its first use.
func (p *pickler) interned(s string) {
	if i, ok := p.strings[s]; ok {
		p.get(i)
		return
	}
	p.strings[s] = p.memo
	p.str(s)
}

func (p *pickler) int(x int64) {
	switch {
	case x >= 0 && x <= 0xff:
		p.b = append(p.b, 'K', byte(x)) // BININT1
	case x >= 0 && x <= 0xffff:
		p.b = append(p.b, 'M', byte(x), byte(x>>8)) // BININT2
	case x >= math.MinInt32 && x <= math.MaxInt32:
		p.b = append(p.b, 'J') // BININT
		p.b = binary.LittleEndian.AppendUint32(p.b, uint32(int32(x)))
	default:
		// LONG1: minimal little-endian two's complement.
		var enc []byte
		for v := x; ; v >>= 8 {
			enc = append(enc, byte(v))
			if (v >= -128 && v < 128) && (v < 0) == (byte(v)&0x80 != 0) {
				break
			}
		}
		p.b = append(p.b, 0x8a, byte(len(enc)))
		p.b = append(p.b, enc...)
	}
}

// intTuple writes a tuple of ints: EMPTY_TUPLE (not memoized), TUPLE1-3,
// or MARK ... TUPLE.
func (p *pickler) intTuple(xs []int64) {
	if len(xs) == 0 {
		p.b = append(p.b, ')')
		return
	}
	if len(xs) > 3 {
		p.b = append(p.b, '(')
	}
	for _, x := range xs {
		p.int(x)
	}
	switch len(xs) {
	case 1:
		p.b = append(p.b, 0x85)
	case 2:
		p.b = append(p.b, 0x86)
	case 3:
		p.b = append(p.b, 0x87)
	default:
		p.b = append(p.b, 't')
	}
	p.put()
}

// tensor writes key, _rebuild_tensor_v2(storage, 0, size, stride, False,
// OrderedDict()) for the i-th tensor, its storage key "<i>".
func (p *pickler) tensor(i int, t NamedTensor) {
	dt, _ := dtypeOf(t.DType)
	p.str(t.Name)
	p.global("torch._utils", "_rebuild_tensor_v2")
	p.b = append(p.b, '(') // MARK: the arguments
	// The persistent id ('storage', type, key, location, numel).
	p.b = append(p.b, '(')
	p.interned("storage")
	p.global("torch", torchStorageClass(dt))
	p.str(strconv.Itoa(i))
	p.interned("cpu")
	p.int(int64(len(t.Data)))
	p.b = append(p.b, 't')
	p.put()
	p.b = append(p.b, 'Q') // BINPERSID
	p.int(0)               // storage offset
	size := make([]int64, len(t.Shape))
	stride := make([]int64, len(t.Shape))
	step := int64(1)
	for d := len(t.Shape) - 1; d >= 0; d-- {
		size[d] = int64(t.Shape[d])
		stride[d] = step
		step *= max(int64(t.Shape[d]), 1)
	}
	p.intTuple(size)
	p.intTuple(stride)
	p.b = append(p.b, 0x89) // NEWFALSE: requires_grad
	p.global("collections", "OrderedDict")
	p.b = append(p.b, ')', 'R') // backward_hooks: OrderedDict()
	p.put()
	p.b = append(p.b, 't') // TUPLE: the arguments
	p.put()
	p.b = append(p.b, 'R') // REDUCE
	p.put()
}
