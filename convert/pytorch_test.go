package convert

import (
	"archive/zip"
	"bytes"
	"errors"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/format/slopepb"
	"github.com/slopeml/slope/testmodels"
)

// ptRec is one zip record for ptZip.
type ptRec struct {
	name   string
	data   []byte
	method uint16
}

// ptZip writes records, in order, as a zip archive.
func ptZip(t testing.TB, recs ...ptRec) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	zw.RegisterCompressor(99, func(w io.Writer) (io.WriteCloser, error) { return nopWriteCloser{w}, nil })
	for _, r := range recs {
		w, err := zw.CreateHeader(&zip.FileHeader{Name: r.name, Method: r.method})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(r.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

type nopWriteCloser struct{ io.Writer }

func (nopWriteCloser) Close() error { return nil }

// ptStd is a checkpoint with the usual records around pkl and storages
// archive/data/0, 1, ...
func ptStd(pkl []byte, storages ...[]byte) []ptRec {
	recs := []ptRec{{name: "archive/data.pkl", data: pkl}, {name: "archive/byteorder", data: []byte("little")}}
	for i, s := range storages {
		recs = append(recs, ptRec{name: "archive/data/" + string(rune('0'+i)), data: s})
	}
	return append(recs, ptRec{name: "archive/version", data: []byte("3\n")})
}

func parsePT(b []byte) (*PytorchBin, error) {
	return ParsePytorchBin("t.bin", bytes.NewReader(b), int64(len(b)))
}

func f32Bytes(v ...float32) []byte {
	b := make([]byte, 4*len(v))
	format.EncodeFloats(slopepb.DType_FLOAT32, v, b)
	return b
}

func TestPytorchFixture(t *testing.T) {
	st, err := OpenPytorchBin(os.DirFS(testmodels.Dir()), "pytorch_model.bin")
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ref, err := OpenSafetensors(testmodels.TinyFS(), "model.safetensors")
	if err != nil {
		t.Fatal(err)
	}
	defer ref.Close()
	keys := st.Keys()
	if len(keys) != 36 || keys[0] != "decoder.embed_tokens.weight" || len(ref.Keys()) != len(keys) {
		t.Fatalf("%d keys (first %q), safetensors has %d", len(keys), keys[0], len(ref.Keys()))
	}
	for _, k := range keys {
		s, ok := st.Stored(k)
		if !ok || s.DType != slopepb.DType_FLOAT16 || s.SourceDType != "torch.HalfStorage" {
			t.Fatalf("%s: %+v", k, s)
		}
		rs, ok := ref.Stored("model." + k)
		if !ok || !slices.Equal(s.Shape, rs.Shape) {
			t.Fatalf("%s: shape %v, safetensors %v", k, s.Shape, rs.Shape)
		}
		got, err := st.ReadFloat32(k)
		if err != nil {
			t.Fatal(err)
		}
		want, err := ref.ReadFloat32("model." + k)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(want) {
			t.Fatalf("%s: %d values, want %d", k, len(got), len(want))
		}
		for i := range want {
			w := format.Float16ToFloat32(format.Float32ToFloat16(want[i]))
			if math.Float32bits(got[i]) != math.Float32bits(w) {
				t.Fatalf("%s[%d] = %v, want %v (fp16 of %v)", k, i, got[i], w, want[i])
			}
		}
	}
	if _, ok := st.Stored("model.decoder.embed_tokens.weight"); ok {
		t.Error("Stored found a key the file lacks")
	}
	if _, err := st.ReadFloat32("nope"); err == nil || !strings.Contains(err.Error(), `no tensor "nope"`) {
		t.Errorf("missing key: %v", err)
	}
}

// seekOnlyFS serves files that can Seek but not ReadAt.
type seekOnlyFS struct{ fstest.MapFS }

type seekOnlyFile struct {
	fs.File
	io.Seeker
}

func (s seekOnlyFS) Open(name string) (fs.File, error) {
	f, err := s.MapFS.Open(name)
	if err != nil {
		return nil, err
	}
	return seekOnlyFile{f, f.(io.Seeker)}, nil
}

// roundTo rounds v to what dtype dt stores.
func roundTo(t *testing.T, dt slopepb.DType, v []float32) []float32 {
	es, _ := format.ElemSize(dt)
	b := make([]byte, len(v)*es)
	out := make([]float32, len(v))
	if err := format.EncodeFloats(dt, v, b); err != nil {
		t.Fatal(err)
	}
	if err := format.DecodeFloats(dt, b, out); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestPytorchRoundTrip(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		name, storage string
		dt            slopepb.DType
	}{
		{"F32", "torch.FloatStorage", slopepb.DType_FLOAT32},
		{"F16", "torch.HalfStorage", slopepb.DType_FLOAT16},
		{"BF16", "torch.BFloat16Storage", slopepb.DType_BFLOAT16},
	} {
		var ts []testmodels.NamedTensor
		mat := make([]float32, 12)
		for i := range mat {
			mat[i] = float32(i)*0.37 - 1.9
		}
		special := []float32{0, float32(math.Copysign(0, -1)), float32(math.Inf(1)), float32(math.Inf(-1)), 65504, 6e-8, 1e-30, 3e38}
		for _, x := range []struct {
			name  string
			shape []int
			data  []float32
		}{
			{"m.weight", []int{3, 4}, mat},
			{"scalar", []int{}, []float32{-2.75}},
			{"empty", []int{0, 5}, []float32{}},
			{"r3", []int{2, 1, 4}, special},
			{"r5", []int{1, 2, 1, 1, 2}, []float32{1, 2, 3, 4}},
		} {
			ts = append(ts, testmodels.NamedTensor{Name: x.name, Shape: x.shape, DType: c.name, Data: roundTo(t, c.dt, x.data)})
		}
		path := filepath.Join(dir, c.name+".bin")
		if err := testmodels.WriteTorchBin(path, ts); err != nil {
			t.Fatal(err)
		}
		raw, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		mfs := fstest.MapFS{"m.bin": {Data: raw}}
		opens := map[string]func() (TensorStore, error){
			"DirFS":  func() (TensorStore, error) { return OpenPytorchBin(os.DirFS(dir), c.name+".bin") },
			"File":   func() (TensorStore, error) { return OpenPytorchBinFile(path) },
			"MapFS":  func() (TensorStore, error) { return OpenPytorchBin(mfs, "m.bin") },
			"SeekFS": func() (TensorStore, error) { return OpenPytorchBin(seekOnlyFS{mfs}, "m.bin") },
		}
		for how, open := range opens {
			st, err := open()
			if err != nil {
				t.Fatalf("%s %s: %v", c.name, how, err)
			}
			if !slices.Equal(st.Keys(), []string{"m.weight", "scalar", "empty", "r3", "r5"}) {
				t.Fatalf("%s %s: keys %q", c.name, how, st.Keys())
			}
			for _, want := range ts {
				s, _ := st.Stored(want.Name)
				if s.DType != c.dt || s.SourceDType != c.storage || !slices.Equal(s.Shape, want.Shape) || s.Key != want.Name {
					t.Fatalf("%s %s %s: %+v", c.name, how, want.Name, s)
				}
				got, err := st.ReadFloat32(want.Name)
				if err != nil {
					t.Fatalf("%s %s: %v", c.name, how, err)
				}
				if len(got) != len(want.Data) {
					t.Fatalf("%s %s %s: %d values, want %d", c.name, how, want.Name, len(got), len(want.Data))
				}
				for i := range got {
					if math.Float32bits(got[i]) != math.Float32bits(want.Data[i]) {
						t.Fatalf("%s %s %s[%d] = %v, want %v", c.name, how, want.Name, i, got[i], want.Data[i])
					}
				}
			}
			if err := st.Close(); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func TestPytorchRefusesMalicious(t *testing.T) {
	for _, c := range maliciousPickles {
		b := ptZip(t, ptStd([]byte(c.data))...)
		_, err := OpenPytorchBin(fstest.MapFS{"evil.bin": {Data: b}}, "evil.bin")
		if err == nil {
			t.Errorf("%s: accepted", c.name)
			continue
		}
		if !strings.HasPrefix(err.Error(), "evil.bin: archive/data.pkl: ") || !strings.Contains(err.Error(), c.want) || !errors.Is(err, ErrPickle) {
			t.Errorf("%s: error %q, want one naming evil.bin: archive/data.pkl and containing %q", c.name, err, c.want)
		}
	}
}

// ptHalf is a HalfStorage entry of storage "0".
func ptHalf(numel, offset int64, size, stride []int64) []byte {
	return statePkl(ptEnt{key: "w", stype: "HalfStorage", skey: "0", numel: numel, offset: offset, size: size, stride: stride})
}

func TestPytorchBroken(t *testing.T) {
	good := ptHalf(6, 0, []int64{2, 3}, []int64{3, 1})
	twelve := make([]byte, 12)
	valid := ptZip(t, ptStd(good, twelve)...)
	if _, err := parsePT(valid); err != nil {
		t.Fatal(err)
	}
	with := func(mod func([]ptRec) []ptRec) []byte { return ptZip(t, mod(ptStd(good, twelve))...) }
	set := func(name string, data []byte) func([]ptRec) []ptRec {
		return func(rs []ptRec) []ptRec {
			for i := range rs {
				if rs[i].name == name {
					rs[i].data = data
				}
			}
			return rs
		}
	}
	drop := func(name string) func([]ptRec) []ptRec {
		return func(rs []ptRec) []ptRec {
			return slices.DeleteFunc(rs, func(r ptRec) bool { return r.name == name })
		}
	}
	tar := make([]byte, 1024)
	copy(tar, "archive/data.pkl")
	copy(tar[257:], "ustar\x0000")
	for _, c := range []struct {
		name string
		b    []byte
		want string
		is   error
	}{
		{"storage missing", ptZip(t, ptStd(good)...), "storage \"0\": no archive/data/0 record", ErrPytorchBin},
		{"storage short", ptZip(t, ptStd(good, twelve[:10])...), "archive/data/0: record holds 10 bytes, but 6 elements of torch.HalfStorage need 12", ErrPytorchBin},
		{"storage long", ptZip(t, ptStd(good, make([]byte, 14))...), "record holds 14 bytes", ErrPytorchBin},
		{"offset past storage", ptZip(t, ptStd(ptHalf(6, 1, []int64{2, 3}, []int64{3, 1}), twelve)...), "address element 6, past the 6 elements of storage \"0\"", ErrPytorchBin},
		{"offset alone past storage", ptZip(t, ptStd(ptHalf(6, 7, []int64{0}, []int64{1}), twelve)...), "storage offset 7 is past", ErrPytorchBin},
		{"negative offset", ptZip(t, ptStd(ptHalf(6, -1, []int64{2}, []int64{1}), twelve)...), "storage offset -1 is negative", ErrPytorchBin},
		{"negative size", ptZip(t, ptStd(ptHalf(6, 0, []int64{-1, 3}, []int64{3, 1}), twelve)...), "negative dimension", ErrPytorchBin},
		{"negative stride", ptZip(t, ptStd(ptHalf(6, 0, []int64{2, 3}, []int64{-3, 1}), twelve)...), "negative step", ErrPytorchBin},
		{"huge size", ptZip(t, ptStd(ptHalf(6, 0, []int64{1 << 40, 1 << 40}, []int64{1, 1}), twelve)...), "element count overflows", ErrPytorchBin},
		{"huge stride", ptZip(t, ptStd(ptHalf(6, 0, []int64{3, 1}, []int64{math.MaxInt64, 1}), twelve)...), "address past any storage", ErrPytorchBin},
		{"overlapping view", ptZip(t, ptStd(ptHalf(6, 0, []int64{4, 4}, []int64{0, 1}), twelve)...), "16 elements, more than the 6", ErrPytorchBin},
		{"truncated zip", valid[:len(valid)/2], "not a readable zip archive", ErrPytorchBin},
		{"truncated end", valid[:len(valid)-5], "not a readable zip archive", ErrPytorchBin},
		{"unknown opcode", ptZip(t, ptStd([]byte("\x80\x02\xff."))...), "archive/data.pkl: byte 2 (0xff): opcode 0xff (byte 0xff) not supported", ErrPickle},
		{"deep nesting", ptZip(t, ptStd([]byte("\x80\x02"+strings.Repeat("(", 10000)+"."))...), "more than 256 nested marks", ErrPickle},
		{"huge memo index", ptZip(t, ptStd([]byte("\x80\x02j\xff\xff\xff\x7f."))...), "memo index 2147483647 is not defined", ErrPickle},
		{"byteorder big", with(set("archive/byteorder", []byte("big"))), "archive/byteorder: big-endian checkpoints are not supported", ErrNotSupported},
		{"byteorder junk", with(set("archive/byteorder", []byte("middle"))), `byte order "middle"`, ErrPytorchBin},
		{"byteorder huge", with(set("archive/byteorder", make([]byte, 100))), "exceeds the cap of 64", ErrPytorchBin},
		{"no version", with(drop("archive/version")), "no archive/version or archive/.data/version record", ErrPytorchBin},
		{"version 99", with(set("archive/version", []byte("99\n"))), "format version 99", ErrNotSupported},
		{"version junk", with(set("archive/version", []byte("three"))), `"three" is not an integer`, ErrPytorchBin},
		{"no data.pkl", ptZip(t, ptRec{name: "archive/version", data: []byte("3")}), "no archive/data.pkl record", ErrPytorchBin},
		{"duplicate record", with(func(rs []ptRec) []ptRec { return append(rs, rs[2]) }), `duplicate zip entry "archive/data/0"`, ErrPytorchBin},
		{"no archive dir", ptZip(t, ptRec{name: "data.pkl", data: good}), `first zip entry "data.pkl" is not inside an archive directory`, ErrPytorchBin},
		{"empty zip", ptZip(t), "zip archive has no entries", ErrPytorchBin},
		{"root not dict", ptZip(t, ptStd([]byte("\x80\x02K\x01."))...), "the pickled object is a int, want a state dict", ErrPytorchBin},
		{"value not tensor", ptZip(t, ptStd([]byte("\x80\x02}X\x01\x00\x00\x00aK\x01s."))...), `state dict value of "a" is a int, want a tensor`, ErrPytorchBin},
		{"key not str", ptZip(t, ptStd([]byte("\x80\x02}K\x01K\x01s."))...), "state dict key 1 is a int, want a str", ErrPytorchBin},
		{"compression method", ptZip(t, append(ptStd(good), ptRec{name: "archive/data/0", data: twelve, method: 99})...), "compression method 99 not supported", ErrPytorchBin},
		{"legacy pickle", []byte("\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19.\x80\x02M\xe9\x03."), "legacy (pre-1.6) torch.save format not supported", ErrNotSupported},
		{"legacy tar", tar, "legacy (pre-1.6) torch.save format not supported", ErrNotSupported},
		{"not zip", []byte("hello, world"), "not a zip archive", ErrPytorchBin},
		{"empty file", nil, "not a zip archive", ErrPytorchBin},
	} {
		_, err := parsePT(c.b)
		if err == nil {
			t.Errorf("%s: accepted", c.name)
			continue
		}
		if !strings.HasPrefix(err.Error(), "t.bin: ") || !strings.Contains(err.Error(), c.want) || !errors.Is(err, c.is) {
			t.Errorf("%s: error %q, want one containing %q and wrapping %v", c.name, err, c.want, c.is)
		}
	}
}

func TestPytorchChecksum(t *testing.T) {
	b := ptZip(t, ptStd(ptHalf(6, 0, []int64{2, 3}, []int64{3, 1}), make([]byte, 12))...)
	zr, err := zip.NewReader(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	off, err := zr.File[2].DataOffset()
	if err != nil || zr.File[2].Name != "archive/data/0" {
		t.Fatal(zr.File[2].Name, err)
	}
	b[off+3] ^= 0x40
	p, err := parsePT(b)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.ReadFloat32("w"); !errors.Is(err, zip.ErrChecksum) || !strings.Contains(err.Error(), `t.bin: tensor "w": read archive/data/0`) {
		t.Errorf("corrupt storage: %v", err)
	}
}

func TestPytorchNonFloat(t *testing.T) {
	pkl := statePkl(
		ptEnt{key: "ids", stype: "LongStorage", skey: "0", numel: 2, size: []int64{1, 2}, stride: []int64{2, 1}},
		ptEnt{key: "mask", stype: "BoolStorage", skey: "1", numel: 3, size: []int64{3}, stride: []int64{1}},
		ptEnt{key: "d", stype: "DoubleStorage", skey: "2", numel: 1, size: []int64{}, stride: []int64{}},
	)
	p, err := parsePT(ptZip(t, ptStd(pkl, make([]byte, 16), make([]byte, 3), make([]byte, 8))...))
	if err != nil {
		t.Fatal(err)
	}
	for key, src := range map[string]string{"ids": "torch.LongStorage", "mask": "torch.BoolStorage", "d": "torch.DoubleStorage"} {
		s, ok := p.Stored(key)
		if !ok || s.DType != slopepb.DType_DTYPE_UNSPECIFIED || s.SourceDType != src {
			t.Errorf("%s: %+v", key, s)
		}
		if _, err := p.ReadFloat32(key); err == nil || !strings.Contains(err.Error(), `tensor "`+key+`" is stored as `+src) {
			t.Errorf("%s: %v", key, err)
		}
	}
}

// TestPytorchViews reads views of one storage: offsets, strided (gathered)
// tensors, tied weights; from a stored and from a deflated record.
func TestPytorchViews(t *testing.T) {
	pkl := statePkl(
		ptEnt{key: "w", stype: "FloatStorage", skey: "0", numel: 12, size: []int64{3, 4}, stride: []int64{4, 1}},
		ptEnt{key: "wT", stype: "FloatStorage", skey: "0", numel: 12, size: []int64{4, 3}, stride: []int64{1, 4}},
		ptEnt{key: "row1", stype: "FloatStorage", skey: "0", numel: 12, offset: 4, size: []int64{4}, stride: []int64{1}},
		ptEnt{key: "col2", stype: "FloatStorage", skey: "0", numel: 12, offset: 2, size: []int64{3}, stride: []int64{4}},
		ptEnt{key: "tied", stype: "FloatStorage", skey: "0", numel: 12, size: []int64{3, 4}, stride: []int64{4, 1}},
		ptEnt{key: "bcast", stype: "FloatStorage", skey: "0", numel: 12, offset: 8, size: []int64{1, 4}, stride: []int64{0, 1}},
		ptEnt{key: "sparse", stype: "FloatStorage", skey: "0", numel: 12, offset: 1, size: []int64{2, 2}, stride: []int64{6, 2}},
		ptEnt{key: "last", stype: "FloatStorage", skey: "0", numel: 12, offset: 11, size: []int64{1}, stride: []int64{1}},
		ptEnt{key: "none", stype: "FloatStorage", skey: "1", numel: 0, size: []int64{0}, stride: []int64{1}},
	)
	vals := make([]float32, 12)
	for i := range vals {
		vals[i] = float32(i)
	}
	want := map[string][]float32{
		"w":      vals,
		"wT":     {0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11},
		"row1":   {4, 5, 6, 7},
		"col2":   {2, 6, 10},
		"tied":   vals,
		"bcast":  {8, 9, 10, 11},
		"sparse": {1, 3, 7, 9},
		"last":   {11},
		"none":   {},
	}
	for _, method := range []uint16{zip.Store, zip.Deflate} {
		recs := ptStd(pkl, f32Bytes(vals...), nil)
		recs[2].method = method
		p, err := parsePT(ptZip(t, recs...))
		if err != nil {
			t.Fatal(err)
		}
		if len(p.Keys()) != len(want) {
			t.Fatalf("keys %q", p.Keys())
		}
		for k, w := range want {
			got, err := p.ReadFloat32(k)
			if err != nil {
				t.Fatalf("method %d: %s: %v", method, k, err)
			}
			if !slices.Equal(got, w) {
				t.Errorf("method %d: %s = %v, want %v", method, k, got, w)
			}
		}
	}
}

// TestPytorchDeflatedPickle reads a checkpoint whose records are all
// deflated.
func TestPytorchDeflatedPickle(t *testing.T) {
	recs := ptStd(ptHalf(2, 0, []int64{2}, []int64{1}), []byte{0x00, 0x3c, 0x00, 0xc0})
	for i := range recs {
		recs[i].method = zip.Deflate
	}
	p, err := parsePT(ptZip(t, recs...))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := p.ReadFloat32("w"); err != nil || !slices.Equal(got, []float32{1, -2}) {
		t.Fatalf("%v %v", got, err)
	}
}

func FuzzPytorchBin(f *testing.F) {
	f.Add(ptZip(f, ptStd(ptHalf(6, 0, []int64{3, 2}, []int64{1, 3}), make([]byte, 12))...))
	recs := ptStd(statePkl(ptEnt{key: "w", stype: "FloatStorage", skey: "0", numel: 2, size: []int64{2}, stride: []int64{1}}), f32Bytes(1, 2))
	recs[2].method = zip.Deflate
	f.Add(ptZip(f, recs...))
	f.Add(ptZip(f, ptStd([]byte(maliciousPickles[0].data))...))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := parsePT(b)
		if err != nil {
			return
		}
		for _, k := range p.Keys() {
			p.ReadFloat32(k)
		}
	})
}
