package testmodels

import (
	"archive/zip"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/slopeml/slope/format"
)

// pklOp is one disassembled pickle opcode.
type pklOp struct {
	name string
	arg  string // the argument, rendered
	num  int64  // integer argument (ints, memo indices, protocol)
}

// disassemble decodes the opcodes torch.save emits at protocol 2 (a test
// helper, independent of the reader in package convert).
func disassemble(b []byte) ([]pklOp, error) {
	var ops []pklOp
	i := 0
	need := func(n int) error {
		if n < 0 || i+n > len(b) {
			return fmt.Errorf("byte %d: truncated", i)
		}
		return nil
	}
	for i < len(b) {
		op := b[i]
		i++
		var o pklOp
		switch op {
		case 0x80:
			if err := need(1); err != nil {
				return nil, err
			}
			o = pklOp{name: "PROTO", num: int64(b[i])}
			i++
		case 'c':
			end1 := bytes.IndexByte(b[i:], '\n')
			if end1 < 0 {
				return nil, fmt.Errorf("byte %d: GLOBAL module unterminated", i)
			}
			end2 := bytes.IndexByte(b[i+end1+1:], '\n')
			if end2 < 0 {
				return nil, fmt.Errorf("byte %d: GLOBAL name unterminated", i)
			}
			o = pklOp{name: "GLOBAL", arg: string(b[i:i+end1]) + " " + string(b[i+end1+1:i+end1+1+end2])}
			i += end1 + end2 + 2
		case 'q', 'h', 'K':
			if err := need(1); err != nil {
				return nil, err
			}
			o = pklOp{name: map[byte]string{'q': "BINPUT", 'h': "BINGET", 'K': "BININT1"}[op], num: int64(b[i])}
			i++
		case 'M':
			if err := need(2); err != nil {
				return nil, err
			}
			o = pklOp{name: "BININT2", num: int64(binary.LittleEndian.Uint16(b[i:]))}
			i += 2
		case 'r', 'j', 'J':
			if err := need(4); err != nil {
				return nil, err
			}
			v := binary.LittleEndian.Uint32(b[i:])
			switch op {
			case 'r':
				o = pklOp{name: "LONG_BINPUT", num: int64(v)}
			case 'j':
				o = pklOp{name: "LONG_BINGET", num: int64(v)}
			default:
				o = pklOp{name: "BININT", num: int64(int32(v))}
			}
			i += 4
		case 0x8a:
			if err := need(1); err != nil {
				return nil, err
			}
			n := int(b[i])
			i++
			if err := need(n); err != nil || n > 8 {
				return nil, fmt.Errorf("byte %d: bad LONG1", i)
			}
			var x int64
			for k := n - 1; k >= 0; k-- {
				x = x<<8 | int64(b[i+k])
			}
			if n > 0 && n < 8 && b[i+n-1]&0x80 != 0 {
				x -= 1 << (8 * n)
			}
			o = pklOp{name: "LONG1", num: x}
			i += n
		case 'X':
			if err := need(4); err != nil {
				return nil, err
			}
			n := int(binary.LittleEndian.Uint32(b[i:]))
			i += 4
			if err := need(n); err != nil {
				return nil, err
			}
			o = pklOp{name: "BINUNICODE", arg: strconv.Quote(string(b[i : i+n]))}
			i += n
		default:
			name, ok := map[byte]string{
				'(': "MARK", '.': "STOP", '}': "EMPTY_DICT", ')': "EMPTY_TUPLE",
				't': "TUPLE", 0x85: "TUPLE1", 0x86: "TUPLE2", 0x87: "TUPLE3",
				0x88: "NEWTRUE", 0x89: "NEWFALSE", 'N': "NONE", 'R': "REDUCE",
				'Q': "BINPERSID", 's': "SETITEM", 'u': "SETITEMS", 'b': "BUILD",
			}[op]
			if !ok {
				return nil, fmt.Errorf("byte %d: opcode 0x%02x not expected in a state dict", i-1, op)
			}
			o = pklOp{name: name}
		}
		ops = append(ops, o)
	}
	return ops, nil
}

// normalize renders ops as tokens that do not depend on memo numbering:
// puts are dropped (after checking that they number the memo 0, 1, 2, ...
// as Python's pickler does), a get becomes the token of the object it
// fetches, and ints lose the choice of opcode only where the width is the
// same.
func normalize(t *testing.T, ops []pklOp) []string {
	t.Helper()
	memo := map[int64]string{}
	var out []string
	next := int64(0)
	for _, o := range ops {
		switch o.name {
		case "BINPUT", "LONG_BINPUT":
			if o.num != next {
				t.Fatalf("memo put %d, want %d (sequential)", o.num, next)
			}
			if (o.name == "BINPUT") != (o.num < 256) {
				t.Fatalf("memo put %d written as %s", o.num, o.name)
			}
			next++
			if len(out) == 0 {
				t.Fatal("put before any object")
			}
			memo[o.num] = out[len(out)-1]
		case "BINGET", "LONG_BINGET":
			tok, ok := memo[o.num]
			if !ok {
				t.Fatalf("get of undefined memo %d", o.num)
			}
			if (o.name == "BINGET") != (o.num < 256) {
				t.Fatalf("memo get %d written as %s", o.num, o.name)
			}
			out = append(out, tok)
		case "PROTO", "BININT1", "BININT2", "BININT", "LONG1":
			out = append(out, o.name+" "+strconv.FormatInt(o.num, 10))
		default:
			out = append(out, strings.TrimSpace(o.name+" "+o.arg))
		}
	}
	return out
}

// topKeys returns the strings at mark depth 1: the state dict's keys.
func topKeys(ops []pklOp) []string {
	var keys []string
	depth := 0
	for _, o := range ops {
		switch o.name {
		case "MARK":
			depth++
		case "TUPLE", "SETITEMS":
			depth--
		case "BINUNICODE":
			if depth == 1 {
				s, _ := strconv.Unquote(o.arg)
				keys = append(keys, s)
			}
		}
	}
	return keys
}

func zipRecord(t *testing.T, f *zip.File) []byte {
	t.Helper()
	rc, err := f.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("%s: %v", f.Name, err)
	}
	return b
}

// fixtureF16Tensors returns the fixture's model.safetensors weights under
// the pytorch_model.bin keys (no "model." prefix), in keys order, rounded
// to float16 as the .bin stores them.
func fixtureF16Tensors(t *testing.T, keys []string) []NamedTensor {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(Dir(), "model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	n := binary.LittleEndian.Uint64(raw)
	var hdr map[string]json.RawMessage
	if err := json.Unmarshal(raw[8:8+n], &hdr); err != nil {
		t.Fatal(err)
	}
	data := raw[8+n:]
	var ts []NamedTensor
	for _, k := range keys {
		var e struct {
			DType   string  `json:"dtype"`
			Shape   []int   `json:"shape"`
			Offsets []int64 `json:"data_offsets"`
		}
		if err := json.Unmarshal(hdr["model."+k], &e); err != nil || e.DType != "F32" {
			t.Fatalf("model.%s: %v (dtype %q)", k, err, e.DType)
		}
		b := data[e.Offsets[0]:e.Offsets[1]]
		v := make([]float32, len(b)/4)
		for i := range v {
			v[i] = format.Float16ToFloat32(format.Float32ToFloat16(math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))))
		}
		ts = append(ts, NamedTensor{Name: k, Shape: e.Shape, DType: "F16", Data: v})
	}
	return ts
}

// TestWriteTorchBinMatchesTorch rewrites the fixture's pytorch_model.bin
// (made by torch.save) from the same weights and compares: the same
// records in the same order, all stored and 64-byte aligned, the same
// small records, byte-identical storages, and the same pickle opcode
// stream apart from the top-level container (torch's fixture pickles a
// plain dict, WriteTorchBin an OrderedDict, as state_dict() returns).
func TestWriteTorchBinMatchesTorch(t *testing.T) {
	fix, err := zip.OpenReader(filepath.Join(Dir(), "pytorch_model.bin"))
	if err != nil {
		t.Fatal(err)
	}
	defer fix.Close()
	fixPkl := zipRecord(t, fix.File[0])
	fixOps, err := disassemble(fixPkl)
	if err != nil {
		t.Fatalf("fixture data.pkl: %v", err)
	}
	keys := topKeys(fixOps)
	if len(keys) != 36 || keys[0] != "decoder.embed_tokens.weight" {
		t.Fatalf("fixture keys: %d, first %q", len(keys), keys[0])
	}

	path := filepath.Join(t.TempDir(), "pytorch_model.bin")
	if err := WriteTorchBin(path, fixtureF16Tensors(t, keys)); err != nil {
		t.Fatal(err)
	}
	ours, err := zip.OpenReader(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ours.Close()

	if len(ours.File) != len(fix.File) {
		t.Fatalf("%d records, fixture has %d", len(ours.File), len(fix.File))
	}
	for i, ff := range fix.File {
		of := ours.File[i]
		rel, ok := strings.CutPrefix(ff.Name, "pytorch_model/")
		if !ok {
			t.Fatalf("fixture record %q outside pytorch_model/", ff.Name)
		}
		if of.Name != "archive/"+rel {
			t.Fatalf("record %d is %q, fixture has %q", i, of.Name, ff.Name)
		}
		for _, f := range []*zip.File{ff, of} {
			if f.Method != zip.Store {
				t.Errorf("%s: method %d, want stored", f.Name, f.Method)
			}
			off, err := f.DataOffset()
			if err != nil || off%64 != 0 {
				t.Errorf("%s: data offset %d (%v), want 64-byte aligned", f.Name, off, err)
			}
		}
		fb, ob := zipRecord(t, ff), zipRecord(t, of)
		switch {
		case rel == "data.pkl":
		case rel == ".data/serialization_id":
			for _, b := range [][]byte{fb, ob} {
				if len(b) != 40 || strings.Trim(string(b), "0123456789") != "" {
					t.Errorf("serialization_id %q, want 40 digits", b)
				}
			}
		default: // small records and storages
			if !bytes.Equal(fb, ob) {
				t.Errorf("%s differs from the fixture's (%d vs %d bytes)", of.Name, len(ob), len(fb))
			}
		}
	}

	ourOps, err := disassemble(zipRecord(t, ours.File[0]))
	if err != nil {
		t.Fatalf("our data.pkl: %v", err)
	}
	fixN, ourN := normalize(t, fixOps), normalize(t, ourOps)
	wantFixHead := []string{"PROTO 2", "EMPTY_DICT", "MARK"}
	wantOurHead := []string{"PROTO 2", "GLOBAL collections OrderedDict", "EMPTY_TUPLE", "REDUCE", "MARK"}
	if !slices.Equal(fixN[:3], wantFixHead) {
		t.Fatalf("fixture starts %q", fixN[:3])
	}
	if !slices.Equal(ourN[:5], wantOurHead) {
		t.Fatalf("ours starts %q", ourN[:5])
	}
	fixBody, ourBody := fixN[3:], ourN[5:]
	if len(fixBody) != len(ourBody) {
		t.Fatalf("pickle body: %d tokens, fixture %d", len(ourBody), len(fixBody))
	}
	for i := range fixBody {
		if fixBody[i] != ourBody[i] {
			t.Fatalf("pickle token %d: %q, fixture %q (context %q)", i, ourBody[i], fixBody[i], fixBody[max(0, i-8):i+1])
		}
	}
	if ourBody[len(ourBody)-2] != "SETITEMS" || ourBody[len(ourBody)-1] != "STOP" {
		t.Fatalf("pickle ends %q", ourBody[len(ourBody)-2:])
	}
}

func TestWriteTorchBinLayout(t *testing.T) {
	ts := []NamedTensor{
		{Name: "w32", Shape: []int{2, 3}, DType: "F32", Data: []float32{1, 2, 3, 4, 5, 6}},
		{Name: "b16", Shape: []int{1, 1, 2, 2}, DType: "BF16", Data: []float32{1, -2, 0.5, 4}},
		{Name: "scalar", Shape: []int{}, DType: "F16", Data: []float32{0.25}},
		{Name: "empty", Shape: []int{0, 3}, DType: "F32", Data: []float32{}},
	}
	path := filepath.Join(t.TempDir(), "m.bin")
	if err := WriteTorchBin(path, ts); err != nil {
		t.Fatal(err)
	}
	zr, err := zip.OpenReader(path)
	if err != nil {
		t.Fatal(err)
	}
	defer zr.Close()
	var names []string
	for _, f := range zr.File {
		names = append(names, f.Name)
	}
	want := []string{"archive/data.pkl", "archive/.format_version", "archive/.storage_alignment", "archive/byteorder",
		"archive/data/0", "archive/data/1", "archive/data/2", "archive/data/3", "archive/version", "archive/.data/serialization_id"}
	if !slices.Equal(names, want) {
		t.Fatalf("records %q, want %q", names, want)
	}
	if b := zipRecord(t, zr.File[3]); string(b) != "little" {
		t.Errorf("byteorder %q", b)
	}
	if b := zipRecord(t, zr.File[8]); string(b) != "3\n" {
		t.Errorf("version %q", b)
	}
	for i, n := range []int{24, 8, 2, 0} {
		if b := zipRecord(t, zr.File[4+i]); len(b) != n {
			t.Errorf("storage %d: %d bytes, want %d", i, len(b), n)
		}
	}
	ops, err := disassemble(zipRecord(t, zr.File[0]))
	if err != nil {
		t.Fatal(err)
	}
	toks := strings.Join(normalize(t, ops), "|")
	for _, want := range []string{
		// w32: persistent id, offset, size, stride.
		`MARK|BINUNICODE "storage"|GLOBAL torch FloatStorage|BINUNICODE "0"|BINUNICODE "cpu"|BININT1 6|TUPLE|BINPERSID|BININT1 0|BININT1 2|BININT1 3|TUPLE2|BININT1 3|BININT1 1|TUPLE2|NEWFALSE|GLOBAL collections OrderedDict|EMPTY_TUPLE|REDUCE|TUPLE|REDUCE`,
		// b16: rank 4 tuples use MARK ... TUPLE.
		`GLOBAL torch BFloat16Storage|BINUNICODE "1"|BINUNICODE "cpu"|BININT1 4|TUPLE|BINPERSID|BININT1 0|MARK|BININT1 1|BININT1 1|BININT1 2|BININT1 2|TUPLE|MARK|BININT1 4|BININT1 4|BININT1 2|BININT1 1|TUPLE|NEWFALSE`,
		// scalar: empty size and stride.
		`GLOBAL torch HalfStorage|BINUNICODE "2"|BINUNICODE "cpu"|BININT1 1|TUPLE|BINPERSID|BININT1 0|EMPTY_TUPLE|EMPTY_TUPLE|NEWFALSE`,
		// empty: stride of a zero-size dimension as torch computes it.
		`BINUNICODE "3"|BINUNICODE "cpu"|BININT1 0|TUPLE|BINPERSID|BININT1 0|BININT1 0|BININT1 3|TUPLE2|BININT1 3|BININT1 1|TUPLE2|NEWFALSE`,
	} {
		if !strings.Contains(toks, want) {
			t.Errorf("pickle lacks %q\nhave %s", want, toks)
		}
	}
}

// TestWriteTorchBinBatches checks the SETITEMS batching of Python's
// pickler (1000 items, then a lone SETITEM) and LONG_BINPUT past memo 255.
func TestWriteTorchBinBatches(t *testing.T) {
	var ts []NamedTensor
	for i := range 1001 {
		ts = append(ts, NamedTensor{Name: fmt.Sprintf("t%d", i), Shape: []int{1}, DType: "F32", Data: []float32{float32(i)}})
	}
	p := torchStatePickle(ts)
	ops, err := disassemble(p)
	if err != nil {
		t.Fatal(err)
	}
	toks := normalize(t, ops)
	if got := toks[len(toks)-2:]; !slices.Equal(got, []string{"SETITEM", "STOP"}) {
		t.Fatalf("ends %q", got)
	}
	if n := strings.Count(strings.Join(toks, "|"), "|SETITEMS|"); n != 1 {
		t.Fatalf("%d SETITEMS, want 1", n)
	}
	if !bytes.Contains(p, []byte("r\x00\x01\x00\x00")) {
		t.Fatal("no LONG_BINPUT 256")
	}
}

func TestTorchPicklerInts(t *testing.T) {
	// Python 3: pickle.dumps(v, protocol=2)[2:-1].
	for _, c := range []struct {
		v    int64
		want string
	}{
		{0, "K\x00"}, {255, "K\xff"}, {256, "M\x00\x01"}, {65535, "M\xff\xff"},
		{65536, "J\x00\x00\x01\x00"}, {-1, "J\xff\xff\xff\xff"},
		{-1 << 31, "J\x00\x00\x00\x80"}, {1<<31 - 1, "J\xff\xff\xff\x7f"},
		{1 << 31, "\x8a\x05\x00\x00\x00\x80\x00"}, {-1<<31 - 1, "\x8a\x05\xff\xff\xff\x7f\xff"},
		{1 << 32, "\x8a\x05\x00\x00\x00\x00\x01"}, {1 << 40, "\x8a\x06\x00\x00\x00\x00\x00\x01"},
		{math.MaxInt64, "\x8a\x08\xff\xff\xff\xff\xff\xff\xff\x7f"},
		{math.MinInt64, "\x8a\x08\x00\x00\x00\x00\x00\x00\x00\x80"},
	} {
		p := &pickler{}
		p.int(c.v)
		if string(p.b) != c.want {
			t.Errorf("%d: % x, want % x", c.v, p.b, c.want)
		}
	}
}

func TestWriteTorchBinErrors(t *testing.T) {
	dir := t.TempDir()
	for name, ts := range map[string][]NamedTensor{
		"dtype":  {{Name: "a", Shape: []int{1}, DType: "F64", Data: []float32{1}}},
		"length": {{Name: "a", Shape: []int{2}, DType: "F32", Data: []float32{1}}},
		"dup":    {{Name: "a", Shape: []int{1}, DType: "F32", Data: []float32{1}}, {Name: "a", Shape: []int{1}, DType: "F32", Data: []float32{1}}},
		"neg":    {{Name: "a", Shape: []int{-1}, DType: "F32", Data: []float32{}}},
	} {
		p := filepath.Join(dir, name+".bin")
		if err := WriteTorchBin(p, ts); err == nil {
			t.Errorf("%s: no error", name)
		}
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s: file left behind", name)
		}
	}
}
