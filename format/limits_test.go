package format

import (
	"bytes"
	"encoding/binary"
	"errors"
	"runtime"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/slopeml/slope/format/onnxpb"
	"github.com/slopeml/slope/format/slopepb"
)

// allocatedBy returns the bytes f allocates (cumulative, freed or not).
func allocatedBy(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// zstdRLEFrame hand-makes a zstd frame (RFC 8878) of blocks RLE blocks,
// each blockSize bytes of fill. With windowLog > 0 the frame declares a
// window of 2^windowLog bytes and no content size; with windowLog 0 it is
// a single-segment frame whose declared content size, which is then its
// window, is fcs.
func zstdRLEFrame(windowLog int, fcs uint32, blocks, blockSize int, fill byte) []byte {
	b := []byte{0x28, 0xB5, 0x2F, 0xFD}
	if windowLog > 0 {
		b = append(b, 0x00, byte(windowLog-10)<<3) // descriptor; Window_Descriptor (exponent, mantissa 0)
	} else {
		b = append(b, 0xA0) // descriptor: Single_Segment, a 4-byte Frame_Content_Size
		b = binary.LittleEndian.AppendUint32(b, fcs)
	}
	for i := range blocks {
		h := uint32(1)<<1 | uint32(blockSize)<<3 // Block_Type 1: RLE
		if i == blocks-1 {
			h |= 1 // Last_Block
		}
		b = append(b, byte(h), byte(h>>8), byte(h>>16), fill)
	}
	return b
}

// A frame may not make the decoder allocate a window out of proportion
// to raw_length: at most twice raw_length (at least 1 KiB).
func TestZstdWindowBoundedByRawLength(t *testing.T) {
	const raw = 4000
	want := bytes.Repeat([]byte{7}, raw)
	for _, c := range []struct {
		name  string
		frame []byte
		ok    bool
	}{
		{"1 KiB window", zstdRLEFrame(10, 0, 4, 1000, 7), true},
		{"4 KiB window", zstdRLEFrame(12, 0, 4, 1000, 7), true},
		{"single segment of raw_length", zstdRLEFrame(0, raw, 4, 1000, 7), true},
		{"16 KiB window", zstdRLEFrame(14, 0, 4, 1000, 7), false},
		{"64 MiB window", zstdRLEFrame(26, 0, 4, 1000, 7), false},
		{"single segment declaring 64 MiB", zstdRLEFrame(0, 1<<26, 4, 1000, 7), false},
		{"two frames", append(zstdRLEFrame(10, 0, 2, 1000, 7), zstdRLEFrame(0, 2000, 2, 1000, 7)...), true},
		{"a second frame with a 64 MiB window", append(zstdRLEFrame(10, 0, 2, 1000, 7), zstdRLEFrame(26, 0, 2, 1000, 7)...), false},
	} {
		t.Run(c.name, func(t *testing.T) {
			desc := &slopepb.Tensor{Name: "frame", Dtype: slopepb.DType_UINT8, Shape: []uint64{raw}, Encoding: slopepb.Encoding_DENSE,
				Compression: slopepb.Compression_ZSTD, Length: uint64(len(c.frame)), RawLength: raw}
			info, err := checkTensorMeta(desc, DefaultLimits())
			if err != nil {
				t.Fatal(err)
			}
			var got []byte
			alloc := allocatedBy(func() { got, err = decodeStored(desc, info, c.frame) })
			if c.ok {
				if err != nil || !bytes.Equal(got, want) {
					t.Fatalf("decoded %d bytes, %v", len(got), err)
				}
				return
			}
			if alloc > 1<<20 {
				t.Errorf("refusing the frame allocated %d bytes", alloc)
			}
			if !errors.Is(err, ErrCompression) || !strings.Contains(err.Error(), `"frame"`) || !strings.Contains(err.Error(), "window") {
				t.Fatalf("got %v, want ErrCompression naming the tensor and the window", err)
			}
		})
	}
}

// The writer's own frames, whose window the encoder rounds up to a power
// of two above the input size, stay within the window rule.
func TestCompressedSizesRoundTrip(t *testing.T) {
	path := t.TempDir() + "/z.slope"
	w, err := Create(path, &WriterOptions{Alignment: 64, Compress: true})
	if err != nil {
		t.Fatal(err)
	}
	sizes := []int{300, 512, 600, 1023, 1024, 1025, 2048, 4095, 4096, 4097, 65537, 200000}
	for i, n := range sizes {
		data := make([]float32, n)
		for j := range data {
			data[j] = float32(j * 37 % 251) // compressible, exact in fp16
		}
		if err := w.WriteDense(string(rune('a'+i)), slopepb.DType_FLOAT16, []uint64{uint64(n)}, data); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	f, err := Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, x := range f.Tensors() {
		if x.Compression == slopepb.Compression_COMPRESSION_NONE {
			t.Errorf("%q (%d bytes) stored uncompressed", x.Name, x.RawLength)
		}
	}
	if err := f.Verify(nil); err != nil {
		t.Fatal(err)
	}
}

// emptyEntries is n empty occurrences of the message field fd.
func emptyEntries(num protowire.Number, n int) []byte {
	b := make([]byte, 0, 2*n)
	for range n {
		b = protowire.AppendTag(b, num, protowire.BytesType)
		b = protowire.AppendVarint(b, 0)
	}
	return b
}

// A manifest of tiny entries (two bytes each, a hundred or more decoded)
// beyond the tensor or node cap is refused before it is decoded.
func TestManifestCountedBeforeDecoding(t *testing.T) {
	lim := DefaultLimits()
	graphNum := manifestDesc.Fields().ByName("graph").Number()
	for _, c := range []struct {
		what     string
		manifest []byte
	}{
		{"tensors", emptyEntries(tensorsField.Number(), lim.MaxTensors+1)},
		{"nodes", protowire.AppendBytes(protowire.AppendTag(nil, graphNum, protowire.BytesType),
			emptyEntries(nodeField.Number(), lim.MaxNodes+1))},
	} {
		file := assembleRaw(64, c.manifest, nil)
		var err error
		alloc := allocatedBy(func() { _, err = Parse("bomb.slope", file, nil) })
		if !errors.Is(err, ErrLimit) || !strings.Contains(err.Error(), c.what) || !strings.Contains(err.Error(), "bomb.slope") {
			t.Errorf("%s: got %v, want ErrLimit naming the file and the cap", c.what, err)
		}
		if alloc > uint64(len(file))/4 {
			t.Errorf("%s: refusing a %d-byte file allocated %d bytes", c.what, len(file), alloc)
		}
	}
}

// The item count covers messages at any depth, repeated elements (packed
// or not) and map entries; unknown fields and fields of another wire type
// are skipped, as the decoder keeps them as raw bytes.
func TestManifestItemCount(t *testing.T) {
	m := &slopepb.Manifest{
		Tensors: []*slopepb.Tensor{{Name: "a", Shape: []uint64{2, 3}, Nm: &slopepb.NMParams{N: 2, M: 4}}},
		Graph: &onnxpb.GraphProto{Node: []*onnxpb.NodeProto{{Input: []string{"x", "y"}, Output: []string{"z"},
			Attribute: []*onnxpb.AttributeProto{{Name: "n", Ints: []int64{1, 300, 3}, Floats: []float32{1, 2}}}}}},
		Metadata:    map[string]string{"k": "v"},
		OpsetImport: []*onnxpb.OperatorSetIdProto{{Domain: GraphDomain}},
	}
	// tensor 1 + shape 2 + nm 1, graph 1 + node 1 + inputs 2 + output 1 +
	// attribute 1 + ints 3 + floats 2, metadata entry 1, opset 1
	const want = 17
	mb, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	count := func(b []byte) manifestCounter {
		t.Helper()
		c := manifestCounter{lim: DefaultLimits()}
		if err := c.walk(b, manifestDesc, 0); err != nil {
			t.Fatal(err)
		}
		return c
	}
	if c := count(mb); c.items != want || c.tensors != 1 || c.nodes != 1 {
		t.Fatalf("packed: %d items, %d tensors, %d nodes; want %d, 1, 1", c.items, c.tensors, c.nodes, want)
	}
	if n := testing.AllocsPerRun(10, func() { _ = checkManifestSize(mb, DefaultLimits()) }); n != 0 {
		t.Errorf("counting allocates %v times", n)
	}
	// The same tensor with its shape unpacked.
	tb := protowire.AppendTag(nil, 1, protowire.BytesType)
	tb = protowire.AppendString(tb, "a")
	for _, d := range []uint64{2, 3} {
		tb = protowire.AppendTag(tb, 3, protowire.VarintType)
		tb = protowire.AppendVarint(tb, d)
	}
	tb = protowire.AppendTag(tb, 5, protowire.BytesType)
	tb = protowire.AppendBytes(tb, []byte{0x08, 0x02, 0x10, 0x04})
	m2 := proto.Clone(m).(*slopepb.Manifest)
	m2.Tensors = nil
	mb2, err := proto.Marshal(m2)
	if err != nil {
		t.Fatal(err)
	}
	mb2 = protowire.AppendTag(mb2, tensorsField.Number(), protowire.BytesType)
	mb2 = protowire.AppendBytes(mb2, tb)
	// An unknown field, and the tensors field with a varint.
	mb2 = protowire.AppendTag(mb2, 999, protowire.BytesType)
	mb2 = protowire.AppendBytes(mb2, emptyEntries(4, 100))
	mb2 = protowire.AppendTag(mb2, tensorsField.Number(), protowire.VarintType)
	mb2 = protowire.AppendVarint(mb2, 5)
	if c := count(mb2); c.items != want || c.tensors != 1 || c.nodes != 1 {
		t.Fatalf("unpacked: %d items, %d tensors, %d nodes; want %d, 1, 1", c.items, c.tensors, c.nodes, want)
	}
	var back slopepb.Manifest
	if err := proto.Unmarshal(mb2, &back); err != nil || len(back.Tensors) != 1 || !proto.Equal(back.Tensors[0], m.Tensors[0]) {
		t.Fatalf("the decoder reads the crafted manifest differently: %v, %v", err, back.Tensors)
	}

	// The cap is exact, and a reader applies it.
	good, _ := sampleBytes(t, &WriterOptions{Alignment: 64})
	f, err := Parse("items.slope", good, nil)
	if err != nil {
		t.Fatal(err)
	}
	items := count(good[HeaderSize : HeaderSize+f.hdr.manifestLen]).items
	lim := DefaultLimits()
	lim.MaxManifestItems = items
	if _, err := Parse("items.slope", good, &ReaderOptions{Limits: &lim}); err != nil {
		t.Fatalf("%d items with a cap of %d: %v", items, items, err)
	}
	lim.MaxManifestItems--
	if _, err := Parse("items.slope", good, &ReaderOptions{Limits: &lim}); !errors.Is(err, ErrLimit) || !strings.Contains(err.Error(), "repeated elements") {
		t.Fatalf("%d items with a cap of %d: got %v, want ErrLimit", items, items-1, err)
	}
}

// Messages nested beyond maxManifestDepth are refused before decoding.
func TestManifestNestingCap(t *testing.T) {
	nested := func(levels int) []byte {
		// Manifest > graph > node > attribute > graph > node > ...
		g := &onnxpb.GraphProto{}
		root := g
		for depth := 1; depth+3 <= levels; depth += 3 {
			inner := &onnxpb.GraphProto{}
			g.Node = []*onnxpb.NodeProto{{Attribute: []*onnxpb.AttributeProto{{Name: "g", G: inner}}}}
			g = inner
		}
		mb, err := proto.Marshal(&slopepb.Manifest{Graph: root})
		if err != nil {
			t.Fatal(err)
		}
		return assembleRaw(64, mb, nil)
	}
	if _, err := Parse("deep.slope", nested(3*maxManifestDepth), nil); !errors.Is(err, ErrLimit) || !strings.Contains(err.Error(), "nested") {
		t.Fatalf("got %v, want ErrLimit for the nesting", err)
	}
	// Shallower nesting passes the count (and fails the graph rules).
	if _, err := Parse("deep.slope", nested(30), nil); errors.Is(err, ErrLimit) || !errors.Is(err, ErrGraph) {
		t.Fatalf("got %v, want ErrGraph", err)
	}
}

// Zero fields of Limits take the default; the others apply.
func TestLimitsZeroFieldsTakeDefaults(t *testing.T) {
	d := DefaultLimits()
	if d.withDefaults() != d {
		t.Fatalf("defaults change the defaults: %+v", d.withDefaults())
	}
	if d.MaxManifestItems != ManifestItemsPerEntry*(d.MaxTensors+d.MaxNodes) {
		t.Fatalf("default item cap %d", d.MaxManifestItems)
	}
	want := d
	want.MaxTensors, want.MaxManifestItems = 10, ManifestItemsPerEntry*(10+d.MaxNodes)
	if got := (Limits{MaxTensors: 10}).withDefaults(); got != want {
		t.Fatalf("got %+v, want %+v", got, want)
	}

	path := t.TempDir() + "/lim.slope"
	w, err := Create(path, &WriterOptions{Limits: &Limits{MaxTensors: 2}})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.WriteDense("a", slopepb.DType_FLOAT32, []uint64{4}, make([]float32, 4)); err != nil {
		t.Fatalf("writer with a partial Limits: %v", err)
	}
	if err := w.WriteDense("b", slopepb.DType_FLOAT32, []uint64{4}, make([]float32, 4)); err != nil {
		t.Fatal(err)
	}
	if err := w.WriteDense("c", slopepb.DType_FLOAT32, []uint64{4}, make([]float32, 4)); !errors.Is(err, ErrLimit) {
		t.Fatalf("third tensor with MaxTensors 2: %v", err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	f, err := Open(path, &ReaderOptions{Limits: &Limits{MaxTensors: 2}})
	if err != nil {
		t.Fatalf("reader with a partial Limits: %v", err)
	}
	f.Close()
	if _, err := Open(path, &ReaderOptions{Limits: &Limits{MaxTensors: 1}}); !errors.Is(err, ErrLimit) {
		t.Fatalf("reader with MaxTensors 1: %v", err)
	}
}

// Dims and sizes become ints: one beyond the platform's int is refused,
// not truncated (on 32-bit platforms [2^32+4, 8] would read as [4, 8],
// whose 2:4 encoding is these 68 bytes).
func TestShapeBeyondPlatformInt(t *testing.T) {
	raw := make([]byte, 68) // 4 rows of 4 kept fp32 values, then 4 index bytes
	for r := range 4 {
		raw[64+r] = 0xD8 // indices 0 2 1 3
	}
	c := &container{align: 64, manifest: &slopepb.Manifest{}}
	appendTensor(c, &slopepb.Tensor{Name: "w", Dtype: slopepb.DType_FLOAT32, Shape: []uint64{1<<32 + 4, 8},
		Encoding: slopepb.Encoding_NM, Nm: &slopepb.NMParams{N: 2, M: 4}}, raw)
	if _, err := Parse("wide.slope", c.assemble(t), nil); !errors.Is(err, ErrShape) || !strings.Contains(err.Error(), `"w"`) {
		t.Fatalf("got %v, want ErrShape naming the tensor", err)
	}
}

// Node names, op types and attribute names are capped like value names,
// and the error does not quote the oversized name.
func TestGraphNameCaps(t *testing.T) {
	good, _ := sampleBytes(t, &WriterOptions{Alignment: 64})
	long := strings.Repeat("n", DefaultLimits().MaxNameLen+1)
	for _, c := range []struct {
		field string
		edit  func(g *onnxpb.GraphProto)
	}{
		{"name", func(g *onnxpb.GraphProto) { g.Node[0].Name = long }},
		{"op_type", func(g *onnxpb.GraphProto) { g.Node[1].OpType = long }},
		{"domain", func(g *onnxpb.GraphProto) { g.Node[1].Domain = long }},
		{"attribute", func(g *onnxpb.GraphProto) { g.Node[2].Attribute[0].Name = long }},
		{"input", func(g *onnxpb.GraphProto) { g.Node[2].Input[1] = long }},
		{"graph output", func(g *onnxpb.GraphProto) { g.Output[0].Name = long }},
	} {
		ct := splitContainer(t, good)
		c.edit(ct.manifest.Graph)
		_, err := Parse("names.slope", ct.assemble(t), nil)
		if !errors.Is(err, ErrLimit) || !strings.Contains(err.Error(), c.field) || len(err.Error()) > 300 {
			t.Errorf("%s of %d bytes: got %v, want a short ErrLimit", c.field, len(long), err)
		}
	}
	ct := splitContainer(t, good)
	ct.manifest.Graph.Node[0].Name = long[1:] // at the cap
	if _, err := Parse("names.slope", ct.assemble(t), nil); err != nil {
		t.Fatalf("node name at the cap: %v", err)
	}
}

// The gap between the manifest and the data region is a writer's rule:
// a reader accepts any zero gap, and Verify checks that it is zero.
func TestGapBeforeDataRegion(t *testing.T) {
	good, _ := sampleBytes(t, &WriterOptions{Alignment: 64})
	f0, err := Parse("gap.slope", good, nil)
	if err != nil {
		t.Fatal(err)
	}
	mb := good[HeaderSize : HeaderSize+f0.hdr.manifestLen]
	off := f0.hdr.dataOffset + 1<<20
	h := header{alignment: 64, manifestLen: uint64(len(mb)), manifestXXH3: f0.hdr.manifestXXH3, dataOffset: off}
	b := append(h.encode(), mb...)
	b = append(b, make([]byte, off-uint64(len(b)))...)
	b = append(b, good[f0.hdr.dataOffset:]...)
	f, err := Parse("gap.slope", b, nil)
	if err != nil {
		t.Fatalf("a 1 MiB gap before the data region: %v", err)
	}
	if err := f.Verify(nil); err != nil {
		t.Fatal(err)
	}
	b[off-100] = 1
	if f, err = Parse("gap.slope", b, nil); err != nil {
		t.Fatal(err)
	}
	if err := f.Verify(nil); !errors.Is(err, ErrLayout) {
		t.Fatalf("non-zero byte in the gap: %v", err)
	}
}
