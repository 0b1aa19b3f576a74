package convert

// A restricted unpickler for the data.pkl record of PyTorch zip
// checkpoints.
//
// It runs only the opcodes torch.save emits (pickle protocol 2, plus the
// few protocol 3-4 opcodes a pickle_protocol argument can bring in) and
// builds inert Go values: int64, float64, bool, nil, string, []byte,
// pickleTuple, *pickleList, *pickleDict, and the torch objects below. No
// Python callable is ever looked up by name: GLOBAL and STACK_GLOBAL
// resolve only the entries of pickleAllowed, and anything else is refused
// at that opcode, before any REDUCE could call it. REDUCE runs Go
// functions that type-check their arguments.
//
// Allocation is bounded by the input: every opcode creates at most one
// object, strings and bytes are checked against the remaining input
// before they are copied, the memo is a map (a large memo index costs
// nothing) with a cap on its size, and the stack, the mark stack and the
// object count are capped. Values are never walked recursively, so a
// cyclic or deeply nested structure cannot exhaust the Go stack.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/slopeml/slope/format/slopepb"
)

// ErrPickle is wrapped by every error about a pickle that the restricted
// unpickler cannot or will not run.
var ErrPickle = errors.New("invalid or unsupported pickle")

// ErrPickleGlobal is wrapped when a pickle names a global outside the
// allow-list (os.system, builtins.eval, ...). It wraps ErrPickle.
var ErrPickleGlobal = fmt.Errorf("not on the allow-list of a PyTorch state dict: %w", ErrPickle)

// Caps of the unpickler. Real state-dict pickles are far below them: a
// few marks deep, a few memo entries per tensor.
const (
	pickleMaxMarkDepth = 256
	pickleMaxStack     = 1 << 20
	pickleMaxMemo      = 1 << 22
	pickleMaxObjects   = 1 << 24
	// pickleMaxPushes caps the values ever pushed, new objects and memo
	// references alike: every list or dict item was one, so the items
	// held stay below it (a reference is 16 bytes: 64 MiB) however a small
	// compressed file repeats BINGET.
	pickleMaxPushes = 1 << 22
	pickleMaxLine   = 256 // a GLOBAL module or name
	pickleMaxRank   = 64
)

// Pickle opcodes. Only those handled in step are accepted; the others are
// listed so that a refusal can name them.
const (
	opMark           = '('
	opStop           = '.'
	opBinint         = 'J'
	opBinint1        = 'K'
	opBinint2        = 'M'
	opNone           = 'N'
	opBinpersid      = 'Q'
	opReduce         = 'R'
	opBinunicode     = 'X'
	opAppend         = 'a'
	opBuild          = 'b'
	opGlobal         = 'c'
	opEmptyDict      = '}'
	opAppends        = 'e'
	opBinget         = 'h'
	opLongBinget     = 'j'
	opEmptyList      = ']'
	opBinput         = 'q'
	opLongBinput     = 'r'
	opSetitem        = 's'
	opTuple          = 't'
	opEmptyTuple     = ')'
	opSetitems       = 'u'
	opBinfloat       = 'G'
	opBinbytes       = 'B'
	opShortBinbytes  = 'C'
	opProto          = 0x80
	opNewobj         = 0x81
	opTuple1         = 0x85
	opTuple2         = 0x86
	opTuple3         = 0x87
	opNewtrue        = 0x88
	opNewfalse       = 0x89
	opLong1          = 0x8a
	opShortBinunicod = 0x8c
	opBinunicode8    = 0x8d
	opStackGlobal    = 0x93
	opMemoize        = 0x94
	opFrame          = 0x95
)

// pickleOpNames names every opcode of pickle protocols 0 to 5.
var pickleOpNames = map[byte]string{
	'(': "MARK", '.': "STOP", '0': "POP", '1': "POP_MARK", '2': "DUP",
	'F': "FLOAT", 'I': "INT", 'J': "BININT", 'K': "BININT1", 'L': "LONG",
	'M': "BININT2", 'N': "NONE", 'P': "PERSID", 'Q': "BINPERSID",
	'R': "REDUCE", 'S': "STRING", 'T': "BINSTRING", 'U': "SHORT_BINSTRING",
	'V': "UNICODE", 'X': "BINUNICODE", 'a': "APPEND", 'b': "BUILD",
	'c': "GLOBAL", 'd': "DICT", '}': "EMPTY_DICT", 'e': "APPENDS", 'g': "GET",
	'h': "BINGET", 'i': "INST", 'j': "LONG_BINGET", 'l': "LIST",
	']': "EMPTY_LIST", 'o': "OBJ", 'p': "PUT", 'q': "BINPUT",
	'r': "LONG_BINPUT", 's': "SETITEM", 't': "TUPLE", ')': "EMPTY_TUPLE",
	'u': "SETITEMS", 'G': "BINFLOAT", 'B': "BINBYTES", 'C': "SHORT_BINBYTES",
	0x80: "PROTO", 0x81: "NEWOBJ", 0x82: "EXT1", 0x83: "EXT2", 0x84: "EXT4",
	0x85: "TUPLE1", 0x86: "TUPLE2", 0x87: "TUPLE3", 0x88: "NEWTRUE",
	0x89: "NEWFALSE", 0x8a: "LONG1", 0x8b: "LONG4", 0x8c: "SHORT_BINUNICODE",
	0x8d: "BINUNICODE8", 0x8e: "BINBYTES8", 0x8f: "EMPTY_SET",
	0x90: "ADDITEMS", 0x91: "FROZENSET", 0x92: "NEWOBJ_EX",
	0x93: "STACK_GLOBAL", 0x94: "MEMOIZE", 0x95: "FRAME", 0x96: "BYTEARRAY8",
	0x97: "NEXT_BUFFER", 0x98: "READONLY_BUFFER",
}

func pickleOpName(op byte) string {
	if n, ok := pickleOpNames[op]; ok {
		return n
	}
	return fmt.Sprintf("0x%02x", op)
}

// pickleTuple is a Python tuple.
type pickleTuple []any

// pickleList is a Python list (a pointer, since the memo shares it and
// APPEND mutates it).
type pickleList struct{ items []any }

// pickleDict is a Python dict or collections.OrderedDict, its items in
// insertion order. Keys are strings or int64s.
type pickleDict struct {
	keys, vals []any
	index      map[any]int
	ordered    bool        // made by collections.OrderedDict
	built      bool        // BUILD has set its attributes
	attrs      *pickleDict // the BUILD state (a state dict's _metadata), unused
}

func (d *pickleDict) set(k, v any) error {
	switch k.(type) {
	case string, int64:
	default:
		return fmt.Errorf("dict key of type %s not supported", pickleTypeName(k))
	}
	if _, dup := d.index[k]; dup {
		return fmt.Errorf("duplicate dict key %s", pickleShort(k))
	}
	if d.index == nil {
		d.index = map[any]int{}
	}
	d.index[k] = len(d.keys)
	d.keys = append(d.keys, k)
	d.vals = append(d.vals, v)
	return nil
}

// pickleGlobal is an allow-listed global. Exactly one of call and storage
// is set.
type pickleGlobal struct {
	module, name string
	// call runs the global under REDUCE; it type-checks its arguments.
	call func(u *unpickler, args pickleTuple) (any, error)
	// storage is set for the torch.*Storage classes, which appear only in
	// persistent ids.
	storage *torchStorageType
}

func (g *pickleGlobal) String() string { return g.module + "." + g.name }

// torchStorageType is a legacy typed-storage class (torch.HalfStorage).
type torchStorageType struct {
	name     string // "torch.HalfStorage"
	elemSize int64
	dtype    slopepb.DType // DTYPE_UNSPECIFIED unless a float dtype we read
}

// torchStorage is a storage named by a persistent id: the bytes of the zip
// record <prefix>/data/<key>.
type torchStorage struct {
	typ      *torchStorageType
	key      string
	location string
	numel    int64
}

// torchTensor is a tensor rebuilt over a storage: element offset, sizes
// and strides as pickled (not yet range-checked against the storage).
type torchTensor struct {
	storage *torchStorage
	offset  int64
	shape   []int64
	stride  []int64
	by      string // the rebuild global, for errors
}

// pickleAllowed is the allow-list, keyed "module\nname". Why each entry:
//   - collections.OrderedDict: a state_dict() is an OrderedDict, and every
//     tensor's backward_hooks argument is an empty one.
//   - torch._utils._rebuild_tensor_v2: how every tensor of a zip
//     checkpoint is pickled.
//   - torch._utils._rebuild_tensor: its older four-argument form.
//   - torch._utils._rebuild_parameter and _rebuild_parameter_with_state:
//     how an nn.Parameter is pickled (state_dict(keep_vars=True), or a
//     dict of parameters); the result is the same tensor.
//   - torch.<T>Storage: the storage classes named in persistent ids. Float,
//     Half and BFloat16 storages can be read; the others are accepted so
//     that a state dict with integer or bool buffers opens, and reading
//     such a tensor as floats is an error.
//
// Deliberately absent: torch.UntypedStorage (torch.save writes it only for
// a bare storage, never for a tensor), torch.Size, torch.device,
// torch.nn.parameter.Parameter (Parameter pickles through
// _rebuild_parameter), _codecs.encode, quantized, sparse, meta and
// subclass rebuilds, and everything else.
var pickleAllowed = map[string]*pickleGlobal{}

func init() {
	add := func(g *pickleGlobal) { pickleAllowed[g.module+"\n"+g.name] = g }
	add(&pickleGlobal{module: "collections", name: "OrderedDict", call: callOrderedDict})
	add(&pickleGlobal{module: "torch._utils", name: "_rebuild_tensor_v2", call: callRebuildTensorV2})
	add(&pickleGlobal{module: "torch._utils", name: "_rebuild_tensor", call: callRebuildTensor})
	add(&pickleGlobal{module: "torch._utils", name: "_rebuild_parameter", call: callRebuildParameter})
	add(&pickleGlobal{module: "torch._utils", name: "_rebuild_parameter_with_state", call: callRebuildParameterWithState})
	for _, s := range []struct {
		name string
		size int64
		dt   slopepb.DType
	}{
		{"FloatStorage", 4, slopepb.DType_FLOAT32},
		{"HalfStorage", 2, slopepb.DType_FLOAT16},
		{"BFloat16Storage", 2, slopepb.DType_BFLOAT16},
		{"DoubleStorage", 8, slopepb.DType_DTYPE_UNSPECIFIED},
		{"LongStorage", 8, slopepb.DType_DTYPE_UNSPECIFIED},
		{"IntStorage", 4, slopepb.DType_DTYPE_UNSPECIFIED},
		{"ShortStorage", 2, slopepb.DType_DTYPE_UNSPECIFIED},
		{"CharStorage", 1, slopepb.DType_DTYPE_UNSPECIFIED},
		{"ByteStorage", 1, slopepb.DType_DTYPE_UNSPECIFIED},
		{"BoolStorage", 1, slopepb.DType_DTYPE_UNSPECIFIED},
		{"ComplexFloatStorage", 8, slopepb.DType_DTYPE_UNSPECIFIED},
		{"ComplexDoubleStorage", 16, slopepb.DType_DTYPE_UNSPECIFIED},
	} {
		add(&pickleGlobal{module: "torch", name: s.name,
			storage: &torchStorageType{name: "torch." + s.name, elemSize: s.size, dtype: s.dt}})
	}
}

// unpickler is one run of the restricted pickle machine.
type unpickler struct {
	data    []byte
	pos     int
	stack   []any
	meta    [][]any // the stacks saved by MARK
	memo    map[uint32]any
	objects int
	pushes  int
	// persistentLoad resolves BINPERSID; nil refuses it.
	persistentLoad func(pid any) (any, error)
	// storages are the storages named by persistent ids, by key, in order
	// of first use.
	storages     map[string]*torchStorage
	storageOrder []string
}

// unpickle runs data, which must hold exactly one pickle, and returns the
// object it builds. Errors wrap ErrPickle and name the byte offset and
// opcode at fault.
func unpickle(data []byte, persistentLoad func(pid any) (any, error)) (any, error) {
	u := &unpickler{data: data, memo: map[uint32]any{}, persistentLoad: persistentLoad}
	return u.run()
}

// torchPickle is the result of unpickling a torch.save data.pkl.
type torchPickle struct {
	root         any
	storages     map[string]*torchStorage
	storageOrder []string
}

// unpickleTorch runs a torch.save data.pkl, resolving persistent ids
// ('storage', storage_type, key, location, numel) to *torchStorage.
func unpickleTorch(data []byte) (*torchPickle, error) {
	u := &unpickler{data: data, memo: map[uint32]any{}, storages: map[string]*torchStorage{}}
	u.persistentLoad = u.loadStorage
	root, err := u.run()
	if err != nil {
		return nil, err
	}
	return &torchPickle{root: root, storages: u.storages, storageOrder: u.storageOrder}, nil
}

func (u *unpickler) run() (any, error) {
	for {
		if u.pos >= len(u.data) {
			return nil, fmt.Errorf("byte %d: pickle ends without STOP: %w", u.pos, ErrPickle)
		}
		at := u.pos
		op := u.data[u.pos]
		u.pos++
		done, err := u.step(op)
		if err != nil {
			if errors.Is(err, ErrPickle) {
				return nil, fmt.Errorf("byte %d (%s): %w", at, pickleOpName(op), err)
			}
			return nil, fmt.Errorf("byte %d (%s): %w: %w", at, pickleOpName(op), err, ErrPickle)
		}
		if done {
			if len(u.stack) != 1 || len(u.meta) != 0 {
				return nil, fmt.Errorf("byte %d (STOP): %d objects and %d marks left on the stack, want one object: %w",
					at, len(u.stack), len(u.meta), ErrPickle)
			}
			if u.pos != len(u.data) {
				return nil, fmt.Errorf("byte %d (STOP): %d trailing bytes after STOP: %w", at, len(u.data)-u.pos, ErrPickle)
			}
			return u.stack[0], nil
		}
	}
}

// step runs one opcode; done is true after STOP.
func (u *unpickler) step(op byte) (done bool, err error) {
	switch op {
	case opProto:
		v, err := u.readN(1)
		if err != nil {
			return false, err
		}
		if v[0] > 5 {
			return false, fmt.Errorf("protocol %d not supported", v[0])
		}
	case opFrame:
		v, err := u.readN(8)
		if err != nil {
			return false, err
		}
		if n := binary.LittleEndian.Uint64(v); n > uint64(len(u.data)-u.pos) {
			return false, fmt.Errorf("frame of %d bytes runs past the end of the pickle", n)
		}
	case opStop:
		return true, nil

	case opMark:
		if len(u.meta) >= pickleMaxMarkDepth {
			return false, fmt.Errorf("more than %d nested marks", pickleMaxMarkDepth)
		}
		u.meta = append(u.meta, u.stack)
		u.stack = nil
	case opNone:
		return false, u.push(nil)
	case opNewtrue:
		return false, u.push(true)
	case opNewfalse:
		return false, u.push(false)
	case opBinint:
		v, err := u.readN(4)
		if err != nil {
			return false, err
		}
		return false, u.push(int64(int32(binary.LittleEndian.Uint32(v))))
	case opBinint1:
		v, err := u.readN(1)
		if err != nil {
			return false, err
		}
		return false, u.push(int64(v[0]))
	case opBinint2:
		v, err := u.readN(2)
		if err != nil {
			return false, err
		}
		return false, u.push(int64(binary.LittleEndian.Uint16(v)))
	case opLong1:
		n, err := u.readN(1)
		if err != nil {
			return false, err
		}
		v, err := u.readN(int(n[0]))
		if err != nil {
			return false, err
		}
		x, err := decodeLong(v)
		if err != nil {
			return false, err
		}
		return false, u.push(x)
	case opBinfloat:
		v, err := u.readN(8)
		if err != nil {
			return false, err
		}
		return false, u.push(math.Float64frombits(binary.BigEndian.Uint64(v)))
	case opBinunicode, opShortBinunicod, opBinunicode8:
		v, err := u.readCounted(op)
		if err != nil {
			return false, err
		}
		if !utf8.Valid(v) {
			return false, errors.New("string is not valid UTF-8")
		}
		return false, u.push(string(v))
	case opBinbytes, opShortBinbytes:
		v, err := u.readCounted(op)
		if err != nil {
			return false, err
		}
		return false, u.push(append([]byte{}, v...))

	case opEmptyDict:
		return false, u.push(&pickleDict{})
	case opEmptyList:
		return false, u.push(&pickleList{})
	case opEmptyTuple:
		return false, u.push(pickleTuple{})
	case opTuple:
		items, err := u.popMark()
		if err != nil {
			return false, err
		}
		return false, u.push(pickleTuple(items))
	case opTuple1, opTuple2, opTuple3:
		n := int(op-opTuple1) + 1
		if len(u.stack) < n {
			return false, u.underflow(n)
		}
		t := make(pickleTuple, n)
		copy(t, u.stack[len(u.stack)-n:])
		u.stack = u.stack[:len(u.stack)-n]
		return false, u.push(t)

	case opBinput, opLongBinput, opMemoize:
		var idx uint32
		switch op {
		case opBinput:
			v, err := u.readN(1)
			if err != nil {
				return false, err
			}
			idx = uint32(v[0])
		case opLongBinput:
			v, err := u.readN(4)
			if err != nil {
				return false, err
			}
			idx = binary.LittleEndian.Uint32(v)
		default:
			idx = uint32(len(u.memo))
		}
		if len(u.stack) == 0 {
			return false, u.underflow(1)
		}
		if _, ok := u.memo[idx]; !ok && len(u.memo) >= pickleMaxMemo {
			return false, fmt.Errorf("more than %d memo entries", pickleMaxMemo)
		}
		u.memo[idx] = u.stack[len(u.stack)-1]
	case opBinget, opLongBinget:
		var idx uint32
		if op == opBinget {
			v, err := u.readN(1)
			if err != nil {
				return false, err
			}
			idx = uint32(v[0])
		} else {
			v, err := u.readN(4)
			if err != nil {
				return false, err
			}
			idx = binary.LittleEndian.Uint32(v)
		}
		v, ok := u.memo[idx]
		if !ok {
			return false, fmt.Errorf("memo index %d is not defined", idx)
		}
		return false, u.pushRef(v)

	case opGlobal:
		module, err := u.readLine()
		if err != nil {
			return false, err
		}
		name, err := u.readLine()
		if err != nil {
			return false, err
		}
		g, err := resolvePickleGlobal(module, name)
		if err != nil {
			return false, err
		}
		return false, u.push(g)
	case opStackGlobal:
		if len(u.stack) < 2 {
			return false, u.underflow(2)
		}
		module, ok1 := u.stack[len(u.stack)-2].(string)
		name, ok2 := u.stack[len(u.stack)-1].(string)
		if !ok1 || !ok2 {
			return false, fmt.Errorf("module and name are %s and %s, want strings",
				pickleTypeName(u.stack[len(u.stack)-2]), pickleTypeName(u.stack[len(u.stack)-1]))
		}
		u.stack = u.stack[:len(u.stack)-2]
		g, err := resolvePickleGlobal(module, name)
		if err != nil {
			return false, err
		}
		return false, u.push(g)

	case opReduce, opNewobj:
		if len(u.stack) < 2 {
			return false, u.underflow(2)
		}
		fn, argv := u.stack[len(u.stack)-2], u.stack[len(u.stack)-1]
		u.stack = u.stack[:len(u.stack)-2]
		g, ok := fn.(*pickleGlobal)
		if !ok {
			return false, fmt.Errorf("cannot call a %s", pickleTypeName(fn))
		}
		args, ok := argv.(pickleTuple)
		if !ok {
			return false, fmt.Errorf("pickle global %s: arguments are a %s, want a tuple", g, pickleTypeName(argv))
		}
		if g.call == nil {
			return false, fmt.Errorf("pickle global %s is not callable", g)
		}
		if op == opNewobj && g.module+"."+g.name != "collections.OrderedDict" {
			return false, fmt.Errorf("pickle global %s cannot be instantiated with NEWOBJ", g)
		}
		v, err := g.call(u, args)
		if err != nil {
			return false, fmt.Errorf("pickle global %s: %w", g, err)
		}
		return false, u.push(v)
	case opBuild:
		if len(u.stack) < 2 {
			return false, u.underflow(2)
		}
		state := u.stack[len(u.stack)-1]
		u.stack = u.stack[:len(u.stack)-1]
		d, ok := u.stack[len(u.stack)-1].(*pickleDict)
		if !ok || !d.ordered {
			return false, fmt.Errorf("cannot set the state of a %s", pickleTypeName(u.stack[len(u.stack)-1]))
		}
		if d.built {
			return false, errors.New("state of an OrderedDict set twice")
		}
		switch s := state.(type) {
		case nil:
		case *pickleDict:
			for _, k := range s.keys {
				if _, ok := k.(string); !ok {
					return false, fmt.Errorf("OrderedDict attribute name is a %s, want a string", pickleTypeName(k))
				}
			}
			d.attrs = s
		default:
			return false, fmt.Errorf("OrderedDict state is a %s, want a dict", pickleTypeName(state))
		}
		d.built = true

	case opSetitem:
		if len(u.stack) < 3 {
			return false, u.underflow(3)
		}
		k, v := u.stack[len(u.stack)-2], u.stack[len(u.stack)-1]
		u.stack = u.stack[:len(u.stack)-2]
		d, ok := u.stack[len(u.stack)-1].(*pickleDict)
		if !ok {
			return false, fmt.Errorf("cannot set an item of a %s", pickleTypeName(u.stack[len(u.stack)-1]))
		}
		return false, d.set(k, v)
	case opSetitems:
		items, err := u.popMark()
		if err != nil {
			return false, err
		}
		if len(u.stack) == 0 {
			return false, u.underflow(1)
		}
		d, ok := u.stack[len(u.stack)-1].(*pickleDict)
		if !ok {
			return false, fmt.Errorf("cannot set items of a %s", pickleTypeName(u.stack[len(u.stack)-1]))
		}
		if len(items)%2 != 0 {
			return false, fmt.Errorf("odd number (%d) of keys and values", len(items))
		}
		for i := 0; i < len(items); i += 2 {
			if err := d.set(items[i], items[i+1]); err != nil {
				return false, err
			}
		}
	case opAppend:
		if len(u.stack) < 2 {
			return false, u.underflow(2)
		}
		v := u.stack[len(u.stack)-1]
		u.stack = u.stack[:len(u.stack)-1]
		l, ok := u.stack[len(u.stack)-1].(*pickleList)
		if !ok {
			return false, fmt.Errorf("cannot append to a %s", pickleTypeName(u.stack[len(u.stack)-1]))
		}
		l.items = append(l.items, v)
	case opAppends:
		items, err := u.popMark()
		if err != nil {
			return false, err
		}
		if len(u.stack) == 0 {
			return false, u.underflow(1)
		}
		l, ok := u.stack[len(u.stack)-1].(*pickleList)
		if !ok {
			return false, fmt.Errorf("cannot append to a %s", pickleTypeName(u.stack[len(u.stack)-1]))
		}
		l.items = append(l.items, items...)

	case opBinpersid:
		if len(u.stack) < 1 {
			return false, u.underflow(1)
		}
		pid := u.stack[len(u.stack)-1]
		u.stack = u.stack[:len(u.stack)-1]
		if u.persistentLoad == nil {
			return false, errors.New("persistent ids are not supported here")
		}
		v, err := u.persistentLoad(pid)
		if err != nil {
			return false, fmt.Errorf("persistent id: %w", err)
		}
		return false, u.pushRef(v)

	default:
		return false, fmt.Errorf("opcode %s (byte 0x%02x) not supported", pickleOpName(op), op)
	}
	return false, nil
}

// push pushes a newly created object.
func (u *unpickler) push(v any) error {
	u.objects++
	if u.objects > pickleMaxObjects {
		return fmt.Errorf("more than %d objects", pickleMaxObjects)
	}
	return u.pushRef(v)
}

// pushRef pushes a reference to an existing object.
func (u *unpickler) pushRef(v any) error {
	if len(u.stack) >= pickleMaxStack {
		return fmt.Errorf("stack deeper than %d", pickleMaxStack)
	}
	if u.pushes++; u.pushes > pickleMaxPushes {
		return fmt.Errorf("more than %d values pushed", pickleMaxPushes)
	}
	u.stack = append(u.stack, v)
	return nil
}

func (u *unpickler) underflow(n int) error {
	return fmt.Errorf("needs %d objects above the last mark, have %d", n, len(u.stack))
}

// popMark returns the objects above the last mark and drops the mark.
func (u *unpickler) popMark() ([]any, error) {
	if len(u.meta) == 0 {
		return nil, errors.New("no mark on the stack")
	}
	items := u.stack
	u.stack = u.meta[len(u.meta)-1]
	u.meta = u.meta[:len(u.meta)-1]
	return items, nil
}

func (u *unpickler) readN(n int) ([]byte, error) {
	if n < 0 || n > len(u.data)-u.pos {
		return nil, fmt.Errorf("needs %d bytes, %d left: %w", n, len(u.data)-u.pos, ErrPickle)
	}
	v := u.data[u.pos : u.pos+n]
	u.pos += n
	return v, nil
}

// readCounted reads the length-prefixed payload of a string or bytes
// opcode, checking the length against the remaining input first.
func (u *unpickler) readCounted(op byte) ([]byte, error) {
	var n uint64
	switch op {
	case opShortBinunicod, opShortBinbytes:
		v, err := u.readN(1)
		if err != nil {
			return nil, err
		}
		n = uint64(v[0])
	case opBinunicode, opBinbytes:
		v, err := u.readN(4)
		if err != nil {
			return nil, err
		}
		n = uint64(binary.LittleEndian.Uint32(v))
	default:
		v, err := u.readN(8)
		if err != nil {
			return nil, err
		}
		n = binary.LittleEndian.Uint64(v)
	}
	if n > uint64(len(u.data)-u.pos) {
		return nil, fmt.Errorf("length %d runs past the end of the pickle (%d bytes left)", n, len(u.data)-u.pos)
	}
	return u.readN(int(n))
}

// readLine reads a newline-terminated GLOBAL argument.
func (u *unpickler) readLine() (string, error) {
	rest := u.data[u.pos:]
	if len(rest) > pickleMaxLine+1 {
		rest = rest[:pickleMaxLine+1]
	}
	i := strings.IndexByte(string(rest), '\n')
	if i < 0 {
		return "", fmt.Errorf("GLOBAL argument not terminated by a newline within %d bytes", pickleMaxLine)
	}
	s := string(rest[:i])
	u.pos += i + 1
	return s, nil
}

// decodeLong decodes a LONG1 payload: little-endian two's complement.
func decodeLong(b []byte) (int64, error) {
	if len(b) == 0 {
		return 0, nil
	}
	neg := b[len(b)-1]&0x80 != 0
	// Bytes beyond the eighth must be pure sign extension.
	if len(b) > 8 {
		ext := byte(0)
		if neg {
			ext = 0xff
		}
		for _, c := range b[8:] {
			if c != ext {
				return 0, fmt.Errorf("integer of %d bytes does not fit in 64 bits", len(b))
			}
		}
		if (b[7]&0x80 != 0) != neg {
			return 0, fmt.Errorf("integer of %d bytes does not fit in 64 bits", len(b))
		}
		b = b[:8]
	}
	var x uint64
	for i := len(b) - 1; i >= 0; i-- {
		x = x<<8 | uint64(b[i])
	}
	if neg && len(b) < 8 {
		x |= ^uint64(0) << (8 * len(b))
	}
	return int64(x), nil
}

// resolvePickleGlobal returns the allow-listed global module.name, or an
// error naming it.
func resolvePickleGlobal(module, name string) (*pickleGlobal, error) {
	if g, ok := pickleAllowed[module+"\n"+name]; ok {
		return g, nil
	}
	full := module + "." + name
	if !printableASCII(full) {
		full = strconv.Quote(full)
	}
	return nil, fmt.Errorf("refusing pickle global %s: %w", full, ErrPickleGlobal)
}

func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// pickleTypeName is the Python-ish type of a value, for errors. It never
// looks inside the value.
func pickleTypeName(v any) string {
	switch v := v.(type) {
	case nil:
		return "None"
	case bool:
		return "bool"
	case int64:
		return "int"
	case float64:
		return "float"
	case string:
		return "str"
	case []byte:
		return "bytes"
	case pickleTuple:
		return fmt.Sprintf("tuple of %d", len(v))
	case *pickleList:
		return "list"
	case *pickleDict:
		if v.ordered {
			return "OrderedDict"
		}
		return "dict"
	case *pickleGlobal:
		return "global " + v.String()
	case *torchStorage:
		return "storage"
	case *torchTensor:
		return "tensor"
	}
	return fmt.Sprintf("%T", v)
}

// pickleShort formats a scalar for errors; other values by type only.
func pickleShort(v any) string {
	switch v := v.(type) {
	case string:
		if len(v) > 80 {
			v = v[:80] + "..."
		}
		return strconv.Quote(v)
	case int64:
		return strconv.FormatInt(v, 10)
	case bool:
		return strconv.FormatBool(v)
	}
	return pickleTypeName(v)
}

// callOrderedDict is collections.OrderedDict(): only the empty form that
// OrderedDict.__reduce__ produces.
func callOrderedDict(_ *unpickler, args pickleTuple) (any, error) {
	if len(args) != 0 {
		return nil, fmt.Errorf("called with %d arguments, want none", len(args))
	}
	return &pickleDict{ordered: true}, nil
}

// callRebuildTensorV2 is _rebuild_tensor_v2(storage, storage_offset, size,
// stride, requires_grad, backward_hooks[, metadata]).
func callRebuildTensorV2(_ *unpickler, args pickleTuple) (any, error) {
	if len(args) != 6 && len(args) != 7 {
		return nil, fmt.Errorf("called with %d arguments, want 6 or 7", len(args))
	}
	t, err := rebuildTensor("_rebuild_tensor_v2", args[:4])
	if err != nil {
		return nil, err
	}
	if _, ok := args[4].(bool); !ok {
		return nil, fmt.Errorf("argument 5 (requires_grad) is a %s, want a bool", pickleTypeName(args[4]))
	}
	if err := checkNoHooks(args[5], 6); err != nil {
		return nil, err
	}
	if len(args) == 7 {
		// torch.save adds tensor metadata only when it is not default: the
		// conj and neg view bits. Values behind such a view are not the
		// stored ones, so refuse them.
		switch m := args[6].(type) {
		case nil:
		case *pickleDict:
			for i, k := range m.keys {
				ks, ok := k.(string)
				b, okb := m.vals[i].(bool)
				if !ok || !okb {
					return nil, fmt.Errorf("argument 7 (metadata) has a %s: %s item, want str: bool",
						pickleTypeName(k), pickleTypeName(m.vals[i]))
				}
				if b {
					return nil, fmt.Errorf("tensor metadata %s=True (a %s view) is not supported", strconv.Quote(ks), ks)
				}
			}
		default:
			return nil, fmt.Errorf("argument 7 (metadata) is a %s, want a dict", pickleTypeName(args[6]))
		}
	}
	return t, nil
}

// callRebuildTensor is _rebuild_tensor(storage, storage_offset, size,
// stride).
func callRebuildTensor(_ *unpickler, args pickleTuple) (any, error) {
	if len(args) != 4 {
		return nil, fmt.Errorf("called with %d arguments, want 4", len(args))
	}
	return rebuildTensor("_rebuild_tensor", args)
}

// callRebuildParameter is _rebuild_parameter(data, requires_grad,
// backward_hooks): the tensor itself.
func callRebuildParameter(_ *unpickler, args pickleTuple) (any, error) {
	if len(args) != 3 {
		return nil, fmt.Errorf("called with %d arguments, want 3", len(args))
	}
	return rebuildParameter(args)
}

// callRebuildParameterWithState is _rebuild_parameter_with_state(data,
// requires_grad, backward_hooks, state). The state (extra Python
// attributes of the Parameter) is inert here and ignored.
func callRebuildParameterWithState(_ *unpickler, args pickleTuple) (any, error) {
	if len(args) != 4 {
		return nil, fmt.Errorf("called with %d arguments, want 4", len(args))
	}
	return rebuildParameter(args[:3])
}

func rebuildParameter(args pickleTuple) (any, error) {
	t, ok := args[0].(*torchTensor)
	if !ok {
		return nil, fmt.Errorf("argument 1 (data) is a %s, want a tensor", pickleTypeName(args[0]))
	}
	if _, ok := args[1].(bool); !ok {
		return nil, fmt.Errorf("argument 2 (requires_grad) is a %s, want a bool", pickleTypeName(args[1]))
	}
	if err := checkNoHooks(args[2], 3); err != nil {
		return nil, err
	}
	return t, nil
}

// checkNoHooks accepts an empty backward_hooks dict (or None).
func checkNoHooks(v any, argNo int) error {
	switch h := v.(type) {
	case nil:
		return nil
	case *pickleDict:
		if len(h.keys) != 0 {
			return fmt.Errorf("argument %d (backward_hooks) has %d hooks, want none", argNo, len(h.keys))
		}
		return nil
	}
	return fmt.Errorf("argument %d (backward_hooks) is a %s, want an OrderedDict", argNo, pickleTypeName(v))
}

// rebuildTensor checks (storage, storage_offset, size, stride).
func rebuildTensor(by string, args pickleTuple) (*torchTensor, error) {
	st, ok := args[0].(*torchStorage)
	if !ok {
		return nil, fmt.Errorf("argument 1 (storage) is a %s, want a storage", pickleTypeName(args[0]))
	}
	off, ok := args[1].(int64)
	if !ok {
		return nil, fmt.Errorf("argument 2 (storage_offset) is a %s, want an int", pickleTypeName(args[1]))
	}
	shape, err := intTuple(args[2], 3, "size")
	if err != nil {
		return nil, err
	}
	stride, err := intTuple(args[3], 4, "stride")
	if err != nil {
		return nil, err
	}
	if len(shape) != len(stride) {
		return nil, fmt.Errorf("size has %d dimensions but stride has %d", len(shape), len(stride))
	}
	return &torchTensor{storage: st, offset: off, shape: shape, stride: stride, by: "torch._utils." + by}, nil
}

func intTuple(v any, argNo int, what string) ([]int64, error) {
	t, ok := v.(pickleTuple)
	if !ok {
		return nil, fmt.Errorf("argument %d (%s) is a %s, want a tuple of ints", argNo, what, pickleTypeName(v))
	}
	if len(t) > pickleMaxRank {
		return nil, fmt.Errorf("argument %d (%s) has %d dimensions, more than %d", argNo, what, len(t), pickleMaxRank)
	}
	out := make([]int64, len(t))
	for i, e := range t {
		x, ok := e.(int64)
		if !ok {
			return nil, fmt.Errorf("argument %d (%s) item %d is a %s, want an int", argNo, what, i, pickleTypeName(e))
		}
		out[i] = x
	}
	return out, nil
}

// loadStorage resolves a torch.save persistent id ('storage',
// storage_type, key, location, numel). Repeated ids of one storage (tied
// weights) resolve to the same *torchStorage; they must agree.
func (u *unpickler) loadStorage(pid any) (any, error) {
	t, ok := pid.(pickleTuple)
	if !ok || len(t) != 5 {
		return nil, fmt.Errorf("is a %s, want a tuple of 5 ('storage', type, key, location, numel)", pickleTypeName(pid))
	}
	if tag, _ := t[0].(string); tag != "storage" {
		return nil, fmt.Errorf("tag is %s, want 'storage'", pickleShort(t[0]))
	}
	g, ok := t[1].(*pickleGlobal)
	if !ok || g.storage == nil {
		return nil, fmt.Errorf("storage type is a %s, want a torch storage class", pickleTypeName(t[1]))
	}
	key, ok := t[2].(string)
	if !ok {
		return nil, fmt.Errorf("storage key is a %s, want a str", pickleTypeName(t[2]))
	}
	if key == "" || key == "." || key == ".." || strings.ContainsAny(key, "/\\\x00") || !utf8.ValidString(key) {
		return nil, fmt.Errorf("storage key %s is not a plain record name", pickleShort(key))
	}
	loc, ok := t[3].(string)
	if !ok {
		return nil, fmt.Errorf("storage %s: location is a %s, want a str", pickleShort(key), pickleTypeName(t[3]))
	}
	numel, ok := t[4].(int64)
	if !ok || numel < 0 {
		return nil, fmt.Errorf("storage %s: numel is %s, want a non-negative int", pickleShort(key), pickleShort(t[4]))
	}
	if numel > math.MaxInt64/g.storage.elemSize {
		return nil, fmt.Errorf("storage %s: %d elements of %s overflow", pickleShort(key), numel, g.storage.name)
	}
	if prev, ok := u.storages[key]; ok {
		if prev.typ != g.storage || prev.numel != numel {
			return nil, fmt.Errorf("storage %s is named as %d elements of %s and as %d elements of %s",
				pickleShort(key), prev.numel, prev.typ.name, numel, g.storage.name)
		}
		return prev, nil
	}
	s := &torchStorage{typ: g.storage, key: key, location: loc, numel: numel}
	u.storages[key] = s
	u.storageOrder = append(u.storageOrder, key)
	return s, nil
}
