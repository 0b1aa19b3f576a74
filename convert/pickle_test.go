package convert

import (
	"archive/zip"
	"encoding/binary"
	"errors"
	"io"
	"math"
	"path/filepath"
	"strings"
	"testing"

	"github.com/slopeml/slope/testmodels"
)

// pkw assembles pickles opcode by opcode for tests.
type pkw struct{ b []byte }

func (w *pkw) op(ops ...byte) *pkw { w.b = append(w.b, ops...); return w }

func (w *pkw) global(module, name string) *pkw {
	w.b = append(w.b, 'c')
	w.b = append(w.b, module+"\n"+name+"\n"...)
	return w
}

func (w *pkw) str(s string) *pkw {
	w.b = append(w.b, 'X')
	w.b = binary.LittleEndian.AppendUint32(w.b, uint32(len(s)))
	w.b = append(w.b, s...)
	return w
}

func (w *pkw) int(x int64) *pkw {
	if x >= math.MinInt32 && x <= math.MaxInt32 {
		w.b = append(w.b, 'J')
		w.b = binary.LittleEndian.AppendUint32(w.b, uint32(int32(x)))
		return w
	}
	w.b = append(w.b, 0x8a, 8)
	w.b = binary.LittleEndian.AppendUint64(w.b, uint64(x))
	return w
}

func (w *pkw) ints(xs []int64) *pkw {
	w.op('(')
	for _, x := range xs {
		w.int(x)
	}
	return w.op('t')
}

// ptEnt is one state-dict entry for statePkl.
type ptEnt struct {
	key    string
	stype  string // "HalfStorage", ...
	skey   string
	numel  int64
	offset int64
	size   []int64
	stride []int64
}

// tensor writes _rebuild_tensor_v2(persistent storage, offset, size,
// stride, False, OrderedDict()) without any memo use.
func (w *pkw) tensor(e ptEnt) *pkw {
	w.global("torch._utils", "_rebuild_tensor_v2").op('(')
	w.op('(').str("storage").global("torch", e.stype).str(e.skey).str("cpu").int(e.numel).op('t', 'Q')
	w.int(e.offset).ints(e.size).ints(e.stride).op(0x89)
	w.global("collections", "OrderedDict").op(')', 'R')
	return w.op('t', 'R')
}

// statePkl is a protocol-2 pickle of a plain dict of tensors.
func statePkl(ents ...ptEnt) []byte {
	w := (&pkw{}).op(0x80, 2, '}', '(')
	for _, e := range ents {
		w.str(e.key).tensor(e)
	}
	return w.op('u', '.').b
}

// maliciousPickles are pickles that must be refused, with the text the
// error must contain.
var maliciousPickles = []struct {
	name, data, want string
}{
	{"os.system", "\x80\x02cos\nsystem\nq\x00X\x02\x00\x00\x00lsq\x01\x85q\x02Rq\x03.", "byte 2 (GLOBAL): refusing pickle global os.system"},
	{"builtins.eval", "\x80\x02cbuiltins\neval\nX\x0b\x00\x00\x00__import__(\x85R.", "refusing pickle global builtins.eval"},
	{"posix.system", "\x80\x02cposix\nsystem\nX\x02\x00\x00\x00id\x85R.", "refusing pickle global posix.system"},
	{"nt.system", "cnt\nsystem\n(S'dir'\ntR.", "refusing pickle global nt.system"},
	{"subprocess.Popen", "\x80\x02csubprocess\nPopen\nX\x02\x00\x00\x00ls\x85\x85R.", "refusing pickle global subprocess.Popen"},
	{"__builtin__.getattr", "\x80\x02c__builtin__\ngetattr\nccollections\nOrderedDict\nX\x03\x00\x00\x00pop\x86R.", "refusing pickle global __builtin__.getattr"},
	{"__builtin__.exec", "\x80\x02c__builtin__\nexec\nX\x01\x00\x00\x001\x85R.", "refusing pickle global __builtin__.exec"},
	{"builtins.__import__", "\x80\x02cbuiltins\n__import__\nX\x02\x00\x00\x00os\x85R.", "refusing pickle global builtins.__import__"},
	{"torch.load", "\x80\x02ctorch\nload\nX\x01\x00\x00\x00x\x85R.", "refusing pickle global torch.load"},
	{"codecs", "\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x06\x00\x00\x00latin1\x86R.", "refusing pickle global _codecs.encode"},
	{"odd name", "\x80\x02cos path\nsys tem\n.", `refusing pickle global "os path.sys tem"`},
	{"stack global", "\x80\x04\x95\x18\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x94\x8c\x06system\x94\x93\x94\x8c\x02ls\x94\x85R.", "(STACK_GLOBAL): refusing pickle global os.system"},
	{"stack global not str", "\x80\x04K\x01K\x02\x93.", "want strings"},
	{"INST", "(ios\nsystem\nS'ls'\n.", "opcode INST (byte 0x69) not supported"},
	{"OBJ", "\x80\x02(cos\nsystem\no.", "refusing pickle global os.system"},
	{"EXT1", "\x80\x02\x82\x01.", "opcode EXT1"},
	{"ordered dict args", "\x80\x02ccollections\nOrderedDict\nX\x02\x00\x00\x00ls\x85R.", "pickle global collections.OrderedDict: called with 1 arguments, want none"},
	{"ordered dict args not tuple", "\x80\x02ccollections\nOrderedDict\nX\x02\x00\x00\x00lsR.", "pickle global collections.OrderedDict: arguments are a str, want a tuple"},
	{"rebuild wrong storage", "\x80\x02ctorch._utils\n_rebuild_tensor_v2\n(X\x02\x00\x00\x00lsK\x00))\x89NtR.", "pickle global torch._utils._rebuild_tensor_v2: argument 1 (storage) is a str, want a storage"},
	{"rebuild param not tensor", "\x80\x02ctorch._utils\n_rebuild_parameter\nX\x02\x00\x00\x00ls\x89N\x87R.", "pickle global torch._utils._rebuild_parameter: argument 1 (data) is a str, want a tensor"},
	{"storage class call", "\x80\x02ctorch\nFloatStorage\n)R.", "pickle global torch.FloatStorage is not callable"},
	{"call a string", "\x80\x02X\x02\x00\x00\x00ls)R.", "cannot call a str"},
	{"newobj", "\x80\x02ctorch._utils\n_rebuild_tensor\n)\x81.", "cannot be instantiated with NEWOBJ"},
	{"persid tag", "\x80\x02(X\x04\x00\x00\x00evilctorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x01tQ.", "tag is \"evil\", want 'storage'"},
	{"persid key path", "\x80\x02(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x05\x00\x00\x00../x0X\x03\x00\x00\x00cpuK\x01tQ.", "is not a plain record name"},
	{"persid type", "\x80\x02(X\x07\x00\x00\x00storageccollections\nOrderedDict\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x01tQ.", "want a torch storage class"},
}

func TestPickleRefusesMalicious(t *testing.T) {
	for _, c := range maliciousPickles {
		_, err := unpickleTorch([]byte(c.data))
		if err == nil {
			t.Errorf("%s: accepted", c.name)
			continue
		}
		if !errors.Is(err, ErrPickle) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %q, want one containing %q and wrapping ErrPickle", c.name, err, c.want)
		}
		if strings.Contains(c.want, "refusing") && !errors.Is(err, ErrPickleGlobal) {
			t.Errorf("%s: error %q does not wrap ErrPickleGlobal", c.name, err)
		}
	}
}

func TestPickleValues(t *testing.T) {
	w := (&pkw{}).op(0x80, 4, 0x95).op(binary.LittleEndian.AppendUint64(nil, 10)...)
	w.op(']', 0x94) // list, memo 0
	w.op('K', 7, 'a')
	w.op('(', 'M', 0x34, 0x12, 'J', 0xff, 0xff, 0xff, 0xff, 0x8a, 0, 0x8a, 2, 0x00, 0x80, 0x8a, 9, 0, 0, 0, 0, 0, 0, 0, 0x80, 0xff, 'e')
	w.op('(', 'N', 0x88, 0x89, 'G').op(binary.BigEndian.AppendUint64(nil, math.Float64bits(-2.5))...)
	w.op(0x8c, 2, 'h', 'i', 0x8d).op(binary.LittleEndian.AppendUint64(nil, 2)...).op('y', 'o')
	w.op('C', 2, 1, 2, 'B', 1, 0, 0, 0, 3, 'e')
	w.op('}', 'r', 0xff, 0xff, 0xff, 0xff) // dict, memo 2^32-1
	w.str("k").op('h', 0, 's')             // d["k"] = the list itself
	w.op('(', 'K', 1, 'K', 2, 0x85, 'K', 3, 'K', 4, 'K', 5, 0x86, 'K', 6, 'K', 5, 'K', 6, 'K', 7, 0x87, 'u')
	w.op('j', 0xff, 0xff, 0xff, 0xff, 0x87, '.') // (list, dict, dict)
	v, err := unpickle(w.b, nil)
	if err != nil {
		t.Fatal(err)
	}
	top, ok := v.(pickleTuple)
	if !ok || len(top) != 3 {
		t.Fatalf("result %s", pickleTypeName(v))
	}
	l := top[0].(*pickleList)
	want := []any{int64(7), int64(0x1234), int64(-1), int64(0), int64(-32768), int64(math.MinInt64),
		nil, true, false, -2.5, "hi", "yo", []byte{1, 2}, []byte{3}}
	if len(l.items) != len(want) {
		t.Fatalf("list has %d items, want %d", len(l.items), len(want))
	}
	for i, x := range want {
		if b, ok := x.([]byte); ok {
			if string(l.items[i].([]byte)) != string(b) {
				t.Errorf("item %d: %v, want %v", i, l.items[i], x)
			}
		} else if l.items[i] != x {
			t.Errorf("item %d: %#v, want %#v", i, l.items[i], x)
		}
	}
	d := top[1].(*pickleDict)
	if top[2] != any(d) {
		t.Fatal("memo get did not share the dict")
	}
	if len(d.keys) != 4 || d.vals[0] != any(l) || d.keys[1] != int64(1) {
		t.Fatalf("dict keys %v", d.keys)
	}
	if tp, ok := d.vals[3].(pickleTuple); !ok || len(tp) != 3 || tp[2] != int64(7) {
		t.Fatalf("dict value 3: %#v", d.vals[3])
	}
}

// TestPickleStateDictMetadata reads what Python's pickler writes for a
// state_dict() OrderedDict carrying _metadata (set with BUILD).
func TestPickleStateDictMetadata(t *testing.T) {
	// pickle.dumps(od, 2), od = OrderedDict(a=1), od._metadata =
	// OrderedDict([("", {"version": 1})])
	data := "\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01X\x01\x00\x00\x00aq\x02K\x01s}q\x03" +
		"X\t\x00\x00\x00_metadataq\x04h\x00)Rq\x05X\x00\x00\x00\x00q\x06}q\x07X\x07\x00\x00\x00versionq\x08K\x01sssb."
	v, err := unpickle([]byte(data), nil)
	if err != nil {
		t.Fatal(err)
	}
	d, ok := v.(*pickleDict)
	if !ok || !d.ordered || len(d.keys) != 1 || d.keys[0] != "a" || d.vals[0] != int64(1) || d.attrs == nil {
		t.Fatalf("got %s", pickleTypeName(v))
	}
	for _, c := range []struct{ name, data, want string }{
		{"build twice", strings.TrimSuffix(data, ".") + "Nb.", "set twice"},
		{"build on dict", "\x80\x02}Nb.", "cannot set the state of a dict"},
		{"build state", "\x80\x02ccollections\nOrderedDict\n)RK\x01b.", "state is a int"},
	} {
		if _, err := unpickle([]byte(c.data), nil); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
}

func TestPickleTensorArgs(t *testing.T) {
	base := ptEnt{key: "w", stype: "HalfStorage", skey: "0", numel: 6, size: []int64{2, 3}, stride: []int64{3, 1}}
	tp, err := unpickleTorch(statePkl(base))
	if err != nil {
		t.Fatal(err)
	}
	d := tp.root.(*pickleDict)
	tt := d.vals[0].(*torchTensor)
	if tt.storage.typ.name != "torch.HalfStorage" || tt.storage.numel != 6 || len(tt.shape) != 2 || tt.stride[0] != 3 {
		t.Fatalf("tensor %+v", tt)
	}
	// A seventh (metadata) argument: empty or all-false is fine, a neg or
	// conj view is not.
	meta := func(items string) []byte {
		w := (&pkw{}).op(0x80, 2).global("torch._utils", "_rebuild_tensor_v2").op('(')
		w.op('(').str("storage").global("torch", "FloatStorage").str("0").str("cpu").int(1).op('t', 'Q')
		w.int(0).op(')', ')', 0x89, '}', '}').op([]byte(items)...).op('t', 'R', '.')
		return w.b
	}
	if _, err := unpickleTorch(meta("")); err != nil {
		t.Errorf("empty metadata: %v", err)
	}
	if _, err := unpickleTorch(meta("X\x04\x00\x00\x00conj\x89s")); err != nil {
		t.Errorf("conj=False metadata: %v", err)
	}
	if _, err := unpickleTorch(meta("X\x03\x00\x00\x00neg\x88s")); err == nil || !strings.Contains(err.Error(), `"neg"=True`) {
		t.Errorf("neg=True metadata: %v", err)
	}
	// Persistent ids of one storage must agree.
	other := base
	other.key, other.stype = "v", "FloatStorage"
	if _, err := unpickleTorch(statePkl(base, other)); err == nil || !strings.Contains(err.Error(), `storage "0" is named as 6 elements of torch.HalfStorage and as 6 elements of torch.FloatStorage`) {
		t.Errorf("storage type clash: %v", err)
	}
	tied := base
	tied.key = "tied"
	tp, err = unpickleTorch(statePkl(base, tied))
	if err != nil || len(tp.storages) != 1 {
		t.Errorf("tied storages: %v", err)
	}
	for _, c := range []struct {
		name string
		e    ptEnt
		want string
	}{
		{"rank mismatch", ptEnt{key: "w", stype: "FloatStorage", skey: "0", numel: 1, size: []int64{1}, stride: nil}, "size has 1 dimensions but stride has 0"},
		{"rank cap", ptEnt{key: "w", stype: "FloatStorage", skey: "0", numel: 1, size: make([]int64, 65), stride: make([]int64, 65)}, "more than 64"},
		{"negative numel", ptEnt{key: "w", stype: "FloatStorage", skey: "0", numel: -1}, "want a non-negative int"},
		{"numel overflow", ptEnt{key: "w", stype: "DoubleStorage", skey: "0", numel: math.MaxInt64 / 4}, "overflow"},
		{"quantized storage", ptEnt{key: "w", stype: "QInt8Storage", skey: "0", numel: 1}, "refusing pickle global torch.QInt8Storage"},
		{"untyped storage", ptEnt{key: "w", stype: "UntypedStorage", skey: "0", numel: 1}, "refusing pickle global torch.UntypedStorage"},
	} {
		if _, err := unpickleTorch(statePkl(c.e)); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
}

func TestPickleMalformed(t *testing.T) {
	deepMarks := "\x80\x02" + strings.Repeat("(", 300) + "."
	// 100000 nested lists: fine, nothing is recursive.
	deepLists := "\x80\x02" + strings.Repeat("]", 100000) + strings.Repeat("a", 99999) + "."
	if _, err := unpickle([]byte(deepLists), nil); err != nil {
		t.Errorf("deep lists: %v", err)
	}
	// A list containing itself.
	if _, err := unpickle([]byte("\x80\x02]q\x00h\x00a."), nil); err != nil {
		t.Errorf("cyclic list: %v", err)
	}
	// A list appended to by memo references (BINGET), which compress to
	// almost nothing: the pushes are capped, so the items are too.
	refBomb := "\x80\x02]q\x00" + strings.Repeat("("+strings.Repeat("h\x00", 1<<16)+"e", 1<<6+1) + "."
	for _, c := range []struct{ name, data, want string }{
		{"reference bomb", refBomb, "more than 4194304 values pushed"},
		{"empty", "", "ends without STOP"},
		{"no stop", "\x80\x02K\x01", "ends without STOP"},
		{"trailing", "\x80\x02K\x01.junk", "4 trailing bytes"},
		{"two objects", "\x80\x02K\x01K\x02.", "2 objects"},
		{"open mark", "\x80\x02(K\x01.", "1 marks"},
		{"nothing", "\x80\x02.", "0 objects"},
		{"unknown opcode", "\x80\x02\xff.", "opcode 0xff (byte 0xff) not supported"},
		{"protocol 6", "\x80\x06N.", "protocol 6"},
		{"deep marks", deepMarks, "more than 256 nested marks"},
		{"huge memo get", "\x80\x02j\xff\xff\xff\xff.", "memo index 4294967295 is not defined"},
		{"memo put empty", "\x80\x02q\x00.", "needs 1 objects"},
		{"string too long", "\x80\x02X\xff\xff\xff\x7fab.", "length 2147483647 runs past the end"},
		{"string8 too long", "\x80\x04\x8d\xff\xff\xff\xff\xff\xff\xff\xffab.", "runs past the end"},
		{"bytes too long", "\x80\x03B\x00\x00\x00\x01.", "runs past the end"},
		{"frame too long", "\x80\x04\x95\x00\x00\x00\x00\x00\x01\x00\x00N.", "frame of"},
		{"bad utf8", "\x80\x02X\x02\x00\x00\x00\xff\xfe.", "not valid UTF-8"},
		{"long1 too big", "\x80\x02\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x01.", "does not fit in 64 bits"},
		{"long1 truncated", "\x80\x02\x8a\x09\x00.", "needs 9 bytes"},
		{"tuple underflow", "\x80\x02K\x01\x86.", "needs 2 objects"},
		{"tuple across mark", "\x80\x02K\x01(K\x02\x86.", "needs 2 objects above the last mark, have 1"},
		{"tuple no mark", "\x80\x02K\x01t.", "no mark"},
		{"setitems odd", "\x80\x02}(K\x01u.", "odd number"},
		{"setitem on list", "\x80\x02]K\x01K\x02s.", "cannot set an item of a list"},
		{"dup key", "\x80\x02}(K\x01K\x02K\x01K\x03u.", "duplicate dict key 1"},
		{"tuple key", "\x80\x02})K\x01s.", "dict key of type tuple of 0 not supported"},
		{"append to dict", "\x80\x02}K\x01a.", "cannot append to a dict"},
		{"appends to tuple", "\x80\x02)(K\x01e.", "cannot append to a tuple"},
		{"global unterminated", "\x80\x02ccollections", "not terminated"},
		{"global line too long", "\x80\x02c" + strings.Repeat("a", 300) + "\nb\n.", "not terminated by a newline within 256 bytes"},
		{"persid without loader", "\x80\x02K\x01Q.", "persistent ids are not supported"},
		{"persid not tuple", "\x80\x02K\x01Q.", "persistent id"},
	} {
		_, err := unpickle([]byte(c.data), nil)
		if c.name == "persid not tuple" {
			_, err = unpickleTorch([]byte(c.data))
		}
		if err == nil || !errors.Is(err, ErrPickle) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an ErrPickle containing %q", c.name, err, c.want)
		}
	}
}

// fixturePickle is the data.pkl of the torch.save fixture.
func fixturePickle(t testing.TB) []byte {
	t.Helper()
	zr, err := zip.OpenReader(filepath.Join(testmodels.Dir(), "pytorch_model.bin"))
	if err != nil {
		t.Fatal(err)
	}
	defer zr.Close()
	rc, err := zr.File[0].Open()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestPickleFixture(t *testing.T) {
	tp, err := unpickleTorch(fixturePickle(t))
	if err != nil {
		t.Fatal(err)
	}
	d, ok := tp.root.(*pickleDict)
	if !ok || len(d.keys) != 36 || len(tp.storages) != 36 {
		t.Fatalf("root %s with %d storages", pickleTypeName(tp.root), len(tp.storages))
	}
	for i, v := range d.vals {
		tt, ok := v.(*torchTensor)
		if !ok || tt.storage.typ.name != "torch.HalfStorage" || tt.storage.location != "cpu" {
			t.Fatalf("value %d: %s", i, pickleTypeName(v))
		}
	}
}

func FuzzPickle(f *testing.F) {
	f.Add(fixturePickle(f))
	for _, c := range maliciousPickles {
		f.Add([]byte(c.data))
	}
	f.Add(statePkl(ptEnt{key: "w", stype: "BFloat16Storage", skey: "0", numel: 4, size: []int64{2, 2}, stride: []int64{1, 2}}))
	f.Fuzz(func(t *testing.T, data []byte) {
		if _, err := unpickleTorch(data); err != nil && !errors.Is(err, ErrPickle) {
			t.Fatalf("error does not wrap ErrPickle: %v", err)
		}
		unpickle(data, nil)
	})
}
