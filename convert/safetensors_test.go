package convert

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/testmodels"
)

// stFile assembles a safetensors file from a header and data section.
func stFile(header string, data []byte) []byte {
	b := make([]byte, 8, 8+len(header)+len(data))
	binary.LittleEndian.PutUint64(b, uint64(len(header)))
	b = append(b, header...)
	return append(b, data...)
}

func parseST(b []byte) (*Safetensors, error) {
	return ParseSafetensors("test.safetensors", bytes.NewReader(b), int64(len(b)))
}

func TestSafetensorsValid(t *testing.T) {
	data := make([]byte, 16+4)
	for i := range 4 {
		binary.LittleEndian.PutUint32(data[4*i:], math.Float32bits(float32(i)+0.5))
	}
	binary.LittleEndian.PutUint16(data[16:], format.Float32ToFloat16(1.5))
	binary.LittleEndian.PutUint16(data[18:], format.Float32ToBFloat16(-2))
	hdr := `{"__metadata__":{"format":"pt"},` +
		`"b":{"dtype":"F16","shape":[1],"data_offsets":[16,18]},` +
		`"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},` +
		`"c":{"dtype":"BF16","shape":[1,1],"data_offsets":[18,20]},` +
		`"empty":{"dtype":"I64","shape":[0,3],"data_offsets":[20,20]}}    `
	s, err := parseST(stFile(hdr, data))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(s.Names(), ","); got != "a,b,c,empty" {
		t.Errorf("names %s", got)
	}
	if s.Metadata()["format"] != "pt" {
		t.Errorf("metadata %v", s.Metadata())
	}
	a, err := s.ReadFloat32("a")
	if err != nil || len(a) != 4 || a[3] != 3.5 {
		t.Errorf("a = %v, %v", a, err)
	}
	if v, err := s.ReadFloat32("b"); err != nil || v[0] != 1.5 {
		t.Errorf("b = %v, %v", v, err)
	}
	if v, err := s.ReadFloat32("c"); err != nil || v[0] != -2 {
		t.Errorf("c = %v, %v", v, err)
	}
	if _, err := s.ReadFloat32("empty"); err == nil || !strings.Contains(err.Error(), `"empty"`) {
		t.Errorf("reading I64 as float: %v", err)
	}
	if _, err := s.ReadFloat32("nope"); err == nil {
		t.Error("missing tensor read")
	}
}

func TestSafetensorsBroken(t *testing.T) {
	f32x2 := make([]byte, 8)
	huge := make([]byte, 8)
	binary.LittleEndian.PutUint64(huge, 200<<20)
	pastEnd := make([]byte, 8)
	binary.LittleEndian.PutUint64(pastEnd, 1000)
	cases := []struct {
		name string
		file []byte
		want string
	}{
		{"short file", []byte{1, 2, 3}, "shorter than"},
		{"length over cap", append(huge, "{}"...), "exceeds the cap"},
		{"length past end", append(pastEnd, "{}"...), "runs past the end"},
		{"bad JSON", stFile(`{"a":{"dtype":"F32",`, nil), "header"},
		{"not an object", stFile(`[1,2]`, nil), "start with '{'"},
		{"trailing data", stFile(`{} {}`, nil), "trailing"},
		{"invalid utf8", stFile("{\"\xff\":1}", nil), "UTF-8"},
		{"unknown dtype", stFile(`{"a":{"dtype":"F33","shape":[2],"data_offsets":[0,8]}}`, f32x2), "unknown dtype"},
		{"unknown key", stFile(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1}}`, f32x2), "unknown key"},
		{"missing key", stFile(`{"a":{"dtype":"F32","shape":[2]}}`, f32x2), "needs"},
		{"duplicate tensor", stFile(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, f32x2), "duplicate key"},
		{"duplicate field", stFile(`{"a":{"dtype":"F32","dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, f32x2), "duplicate key"},
		{"duplicate metadata", stFile(`{"__metadata__":{"k":"a","k":"b"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, f32x2), "duplicate key"},
		{"metadata not strings", stFile(`{"__metadata__":{"k":1},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, f32x2), "want a string"},
		{"negative dim", stFile(`{"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}`, f32x2), "non-negative"},
		{"fractional dim", stFile(`{"a":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}}`, f32x2), "non-negative"},
		{"three offsets", stFile(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4,8]}}`, f32x2), "want 2"},
		{"decreasing offsets", stFile(`{"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}}`, f32x2), "increasing"},
		{"offset past end", stFile(`{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}`, f32x2), "run past"},
		{"size mismatch", stFile(`{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}`, f32x2), "needs 12"},
		{"shape overflow", stFile(`{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}}`, f32x2), "overflows"},
		{"overlap", stFile(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, f32x2), "overlap"},
		{"gap", stFile(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, f32x2), "gap"},
		{"uncovered tail", stFile(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}`, f32x2), "data section has 8"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := parseST(c.file)
			if err == nil {
				t.Fatal("accepted")
			}
			if !errors.Is(err, ErrSafetensors) {
				t.Errorf("error does not wrap ErrSafetensors: %v", err)
			}
			if !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "test.safetensors") {
				t.Errorf("error %q does not name the file or contain %q", err, c.want)
			}
		})
	}
}

func TestSafetensorsFixture(t *testing.T) {
	s, err := OpenSafetensors(testmodels.TinyFS(), "model.safetensors")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if n := len(s.Names()); n != 36 {
		t.Errorf("%d tensors, want 36", n)
	}
	e, ok := s.Entry("model.decoder.layers.0.fc1.weight")
	if !ok || e.DType != "F32" || e.Shape[0] != 256 || e.Shape[1] != 64 {
		t.Fatalf("fc1 entry %+v", e)
	}
	// The same file through an OS path.
	s2, err := OpenSafetensorsFile(filepath.Join(testmodels.Dir(), "model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	a, _ := s.ReadFloat32(e.Name)
	b, _ := s2.ReadFloat32(e.Name)
	if len(a) != 256*64 || !equalF32(a, b) {
		t.Error("embedded and on-disk reads differ")
	}
}

func equalF32(a, b []float32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			return false
		}
	}
	return true
}

// stTensor is one tensor for encodeST.
type stTensor struct {
	name  string
	shape []int
	data  []float32
}

// encodeST writes F32 tensors as a safetensors file (for tests).
func encodeST(ts []stTensor) []byte { return encodeSTAs(ts, "F32") }

// encodeSTAs writes tensors as a safetensors file of dtype F32, F16 or BF16.
func encodeSTAs(ts []stTensor, dtype string) []byte {
	var hdr strings.Builder
	var data []byte
	hdr.WriteString("{")
	for i, t := range ts {
		if i > 0 {
			hdr.WriteString(",")
		}
		dims := make([]string, len(t.shape))
		for j, d := range t.shape {
			dims[j] = strconv.Itoa(d)
		}
		begin := len(data)
		for _, v := range t.data {
			switch dtype {
			case "F16":
				data = binary.LittleEndian.AppendUint16(data, format.Float32ToFloat16(v))
			case "BF16":
				data = binary.LittleEndian.AppendUint16(data, format.Float32ToBFloat16(v))
			default:
				data = binary.LittleEndian.AppendUint32(data, math.Float32bits(v))
			}
		}
		hdr.WriteString(`"` + t.name + `":{"dtype":"` + dtype + `","shape":[` + strings.Join(dims, ",") + `],"data_offsets":[` + strconv.Itoa(begin) + "," + strconv.Itoa(len(data)) + "]}")
	}
	hdr.WriteString("}")
	for hdr.Len()%8 != 0 {
		hdr.WriteString(" ")
	}
	return stFile(hdr.String(), data)
}

// fixtureFS is the default model as a MapFS, to build broken variants.
func fixtureFS(t *testing.T) fstest.MapFS {
	t.Helper()
	m := fstest.MapFS{}
	for _, n := range []string{"config.json", "model.safetensors"} {
		b, err := os.ReadFile(filepath.Join(testmodels.Dir(), n))
		if err != nil {
			t.Fatal(err)
		}
		m[n] = &fstest.MapFile{Data: b}
	}
	return m
}

func FuzzParseSafetensors(f *testing.F) {
	f.Add(stFile(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, make([]byte, 8)))
	f.Add(stFile(`{"__metadata__":{"k":"v"},"b":{"dtype":"BF16","shape":[1,1],"data_offsets":[0,2]}}`, make([]byte, 2)))
	f.Add(stFile(`{}`, nil))
	f.Add([]byte{255, 255, 255, 255, 255, 255, 255, 127})
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := parseST(b)
		if err != nil {
			return
		}
		for _, n := range s.Names() {
			_, _ = s.ReadFloat32(n)
		}
	})
}
