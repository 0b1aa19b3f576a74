package format

import (
	"encoding/binary"
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/zeebo/xxh3"
	"google.golang.org/protobuf/proto"

	"github.com/slopeml/slope/format/onnxpb"
	"github.com/slopeml/slope/format/slopepb"
)

// brokenCase makes one damaged file from the bytes of a valid sample.
type brokenCase struct {
	name string
	make func(t testing.TB, good []byte) []byte
	want error
}

// viaContainer edits the decoded container and lays it out again, so that
// everything but the broken rule stays consistent (checksums, offsets).
func viaContainer(f func(t testing.TB, c *container)) func(t testing.TB, good []byte) []byte {
	return func(t testing.TB, good []byte) []byte {
		c := splitContainer(t, good)
		f(t, c)
		return c.assemble(t)
	}
}

// viaBytes edits the file bytes directly.
func viaBytes(f func(b []byte) []byte) func(t testing.TB, good []byte) []byte {
	return func(t testing.TB, good []byte) []byte {
		return f(append([]byte(nil), good...))
	}
}

func u64At(b []byte, off int, v uint64) []byte { binary.LittleEndian.PutUint64(b[off:], v); return b }

func brokenCases() []brokenCase {
	return []brokenCase{
		{"empty file", viaBytes(func(b []byte) []byte { return nil }), ErrNotSlope},
		{"bad magic", viaBytes(func(b []byte) []byte { b[0] = 'X'; return b }), ErrNotSlope},
		{"truncated header", viaBytes(func(b []byte) []byte { return b[:20] }), ErrTruncated},
		{"version 2", viaBytes(func(b []byte) []byte { b[6] = 2; return b }), ErrVersion},
		{"big-endian mark", viaBytes(func(b []byte) []byte { b[8], b[9] = 0xFE, 0xFF; return b }), ErrEndianness},
		{"non-zero flags", viaBytes(func(b []byte) []byte { b[10] = 1; return b }), ErrHeader},
		{"alignment not a power of two", viaBytes(func(b []byte) []byte { binary.LittleEndian.PutUint32(b[12:], 3000); return b }), ErrHeader},
		{"alignment 2^21", viaBytes(func(b []byte) []byte { binary.LittleEndian.PutUint32(b[12:], 1<<21); return b }), ErrHeader},
		{"manifest length 2^63", viaBytes(func(b []byte) []byte { return u64At(b, 16, 1<<63) }), ErrLimit},
		{"truncated manifest", viaBytes(func(b []byte) []byte {
			return b[:HeaderSize+binary.LittleEndian.Uint64(b[16:])/2]
		}), ErrTruncated},
		{"manifest checksum mismatch", viaBytes(func(b []byte) []byte { b[HeaderSize+3] ^= 0x40; return b }), ErrChecksum},
		{"manifest not protobuf", func(t testing.TB, good []byte) []byte {
			c := splitContainer(t, good)
			return assembleRaw(c.align, []byte{0xff, 0xff, 0xff, 0xff, 0x0f}, c.data)
		}, ErrManifest},
		{"data offset misaligned", viaBytes(func(b []byte) []byte {
			return u64At(b, 32, binary.LittleEndian.Uint64(b[32:])+8)
		}), ErrHeader},
		{"data offset inside manifest", viaBytes(func(b []byte) []byte { return u64At(b, 32, 64) }), ErrHeader},
		{"trailing bytes after data", viaBytes(func(b []byte) []byte { return append(b, 0) }), ErrLayout},
		{"file truncated in the data", viaBytes(func(b []byte) []byte { return b[:len(b)-1] }), ErrLayout},
		{"offset past EOF", viaContainer(func(t testing.TB, c *container) {
			c.tensor(t, "w.adam_v").Offset += 1 << 30
		}), ErrLayout},
		{"offset overflows", viaContainer(func(t testing.TB, c *container) {
			x := c.tensor(t, "w.adam_v")
			x.Offset = math.MaxUint64 &^ 4095
		}), ErrLayout},
		{"overlapping tensors", viaContainer(func(t testing.TB, c *container) {
			c.tensor(t, "norm").Offset = c.tensor(t, "embed").Offset
		}), ErrLayout},
		{"misaligned offset", viaContainer(func(t testing.TB, c *container) {
			c.tensor(t, "norm").Offset += 8
		}), ErrLayout},
		{"tensors out of order", viaContainer(func(t testing.TB, c *container) {
			ts := c.manifest.Tensors
			ts[0], ts[1] = ts[1], ts[0]
		}), ErrLayout},
		{"gap of a whole page between tensors", viaContainer(func(t testing.TB, c *container) {
			ts := c.manifest.Tensors
			last := ts[len(ts)-1]
			c.data = append(c.data[:last.Offset], append(make([]byte, c.align), c.data[last.Offset:]...)...)
			last.Offset += c.align
		}), ErrLayout},
		{"checksum mismatch", viaContainer(func(t testing.TB, c *container) {
			x := c.tensor(t, "embed")
			c.data[x.Offset+5] ^= 1
		}), ErrChecksum},
		{"index bytes one short", viaContainer(func(t testing.TB, c *container) {
			x := c.tensor(t, "w")
			x.Length--
			x.RawLength--
		}), ErrShape},
		{"raw length one long", viaContainer(func(t testing.TB, c *container) {
			c.tensor(t, "embed").RawLength++
		}), ErrShape},
		{"index not increasing in a group", viaContainer(func(t testing.TB, c *container) {
			c.patch(t, "w", func(b []byte) {
				vb := 16 * 16 * 2   // values of the bf16 [16, 32] 2:4 weight
				b[vb] = 0b0000_0101 // first group: indices 1, 1
			})
		}), ErrIndex},
		{"index >= M", func(t testing.TB, good []byte) []byte {
			// A 1:3 tensor: 2-bit indices can encode 3, which is out of range.
			c := splitContainer(t, good)
			p := NM{1, 3}
			raw := make([]byte, 4*2+4)
			for i := range 4 {
				raw[8+i] = 3 // one index per row, value 3 >= M
			}
			appendTensor(c, &slopepb.Tensor{Name: "odd", Dtype: slopepb.DType_FLOAT16, Shape: []uint64{4, 3},
				Encoding: slopepb.Encoding_NM, Nm: &slopepb.NMParams{N: uint32(p.N), M: uint32(p.M)}}, raw)
			return c.assemble(t)
		}, ErrIndex},
		{"index padding bits set", func(t testing.TB, good []byte) []byte {
			// A 2:4 [4, 4] tensor: 2 indices of 2 bits per row, 4 padding bits.
			c := splitContainer(t, good)
			raw := make([]byte, 4*2*2+4)
			for i := range 4 {
				raw[16+i] = 0b0100 // indices 0, 1
			}
			raw[16+2] |= 0x80
			appendTensor(c, &slopepb.Tensor{Name: "padded", Dtype: slopepb.DType_FLOAT16, Shape: []uint64{4, 4},
				Encoding: slopepb.Encoding_NM, Nm: &slopepb.NMParams{N: 2, M: 4}}, raw)
			return c.assemble(t)
		}, ErrIndex},
		{"more than N kept in a transpose group", viaContainer(func(t testing.TB, c *container) {
			c.patch(t, "w.transpose_mask", func(b []byte) {
				for i := range b {
					b[i] = 0xff
				}
			})
		}), ErrMask},
		{"N >= M", viaContainer(func(t testing.TB, c *container) {
			c.tensor(t, "w").Nm = &slopepb.NMParams{N: 4, M: 4}
		}), ErrPattern},
		{"M = 17", viaContainer(func(t testing.TB, c *container) {
			c.tensor(t, "w").Nm = &slopepb.NMParams{N: 2, M: 17}
		}), ErrPattern},
		{"N = 0", viaContainer(func(t testing.TB, c *container) {
			c.tensor(t, "w").Nm = &slopepb.NMParams{N: 0, M: 4}
		}), ErrPattern},
		{"cols not a multiple of M", viaContainer(func(t testing.TB, c *container) {
			c.tensor(t, "w").Shape = []uint64{16, 30}
		}), ErrShape},
		{"duplicate tensor names", viaContainer(func(t testing.TB, c *container) {
			c.tensor(t, "norm").Name = "embed"
		}), ErrManifest},
		{"node input names a missing tensor", viaContainer(func(t testing.TB, c *container) {
			c.manifest.Graph.Node[1].Input[1] = "missing.weight"
		}), ErrGraph},
		{"node input used before defined", viaContainer(func(t testing.TB, c *container) {
			g := c.manifest.Graph
			g.Node[0], g.Node[1] = g.Node[1], g.Node[0]
		}), ErrGraph},
		{"graph output never produced", viaContainer(func(t testing.TB, c *container) {
			c.manifest.Graph.Output[0].Name = "nowhere"
		}), ErrGraph},
		{"graph has initializers", viaContainer(func(t testing.TB, c *container) {
			c.manifest.Graph.Initializer = []*onnxpb.TensorProto{{Name: "x", RawData: []byte{1}}}
		}), ErrGraph},
		{"node of another domain", viaContainer(func(t testing.TB, c *container) {
			c.manifest.Graph.Node[0].Domain = ""
		}), ErrGraph},
		{"output shadows a tensor", viaContainer(func(t testing.TB, c *container) {
			c.manifest.Graph.Node[0].Output[0] = "norm"
		}), ErrGraph},
		{"no ai.slope opset", viaContainer(func(t testing.TB, c *container) {
			c.manifest.OpsetImport = nil
		}), ErrGraph},
		{"unknown dtype", viaContainer(func(t testing.TB, c *container) {
			c.tensor(t, "embed").Dtype = 99
		}), ErrManifest},
		{"unknown encoding", viaContainer(func(t testing.TB, c *container) {
			c.tensor(t, "embed").Encoding = 42
		}), ErrManifest},
		{"unknown compression", viaContainer(func(t testing.TB, c *container) {
			c.tensor(t, "embed").Compression = 9
		}), ErrManifest},
		{"nine dims", viaContainer(func(t testing.TB, c *container) {
			c.tensor(t, "embed").Shape = []uint64{1, 1, 1, 1, 1, 1, 1, 32, 16}
		}), ErrLimit},
		{"zero dim", viaContainer(func(t testing.TB, c *container) {
			c.tensor(t, "embed").Shape = []uint64{0, 16}
		}), ErrShape},
		{"element count overflows", viaContainer(func(t testing.TB, c *container) {
			c.tensor(t, "embed").Shape = []uint64{1 << 32, 1 << 32, 1 << 32}
		}), ErrLimit},
		{"name too long", viaContainer(func(t testing.TB, c *container) {
			c.tensor(t, "embed").Name = strings.Repeat("x", 1025)
		}), ErrLimit},
		{"empty name", viaContainer(func(t testing.TB, c *container) {
			c.tensor(t, "embed").Name = ""
		}), ErrManifest},
		{"transpose of a missing tensor", viaContainer(func(t testing.TB, c *container) {
			c.tensor(t, "w.transpose_mask").TransposeOf = "nope"
		}), ErrManifest},
		{"a second transpose mask of one weight", viaContainer(func(t testing.TB, c *container) {
			m := proto.Clone(c.tensor(t, "w.transpose_mask")).(*slopepb.Tensor)
			off := (uint64(len(c.data)) + c.align - 1) / c.align * c.align
			c.data = append(c.data, make([]byte, off-uint64(len(c.data)))...)
			c.data = append(c.data, c.data[m.Offset:m.Offset+m.Length]...)
			m.Name, m.Offset = "w.transpose_mask2", off
			c.manifest.Tensors = append(c.manifest.Tensors, m)
		}), ErrManifest},
		{"transpose of a dense tensor", viaContainer(func(t testing.TB, c *container) {
			c.tensor(t, "w.transpose_mask").TransposeOf = "embed"
		}), ErrManifest},
		{"transpose pattern differs", viaContainer(func(t testing.TB, c *container) {
			c.tensor(t, "w.transpose_mask").Nm = &slopepb.NMParams{N: 1, M: 4}
		}), ErrShape},
		{"materialized transpose not transposed", viaContainer(func(t testing.TB, c *container) {
			c.tensor(t, "w.transpose").Shape = []uint64{16, 32}
		}), ErrShape},
		{"adapter missing its R", viaContainer(func(t testing.TB, c *container) {
			c.tensor(t, "w.lora_r").Adapter.Factor = slopepb.AdapterParams_L
		}), ErrManifest},
		{"adapter scales differ", viaContainer(func(t testing.TB, c *container) {
			c.tensor(t, "w.lora_r").Adapter.Scale = 2
		}), ErrManifest},
		{"adapter rank mismatch", viaContainer(func(t testing.TB, c *container) {
			x := c.tensor(t, "w.lora_l")
			x.Shape = []uint64{16, 4} // [in=32, r=2] expected; same byte size
		}), ErrShape},
		{"adapter of a missing weight", viaContainer(func(t testing.TB, c *container) {
			c.tensor(t, "w.lora_l").Adapter.Weight = "nope"
		}), ErrManifest},
		{"optimizer moment of the wrong size", viaContainer(func(t testing.TB, c *container) {
			c.manifest.Training.Slots[0].Moment1 = "embed"
		}), ErrShape},
		{"optimizer slot of a missing parameter", viaContainer(func(t testing.TB, c *container) {
			c.manifest.Training.Slots[0].Parameter = "nope"
		}), ErrManifest},
		// Its moments have as many elements as it stores values (those of
		// "w"): refused as a transpose, not for their size.
		{"optimizer slot of a materialized transpose", viaContainer(func(t testing.TB, c *container) {
			c.manifest.Training.Slots[0].Parameter = "w.transpose"
		}), ErrManifest},
		{"optimizer slot of a transpose mask", viaContainer(func(t testing.TB, c *container) {
			c.manifest.Training.Slots[0].Parameter = "w.transpose_mask"
		}), ErrManifest},
		{"tokenizer file name escapes its directory", func(t testing.TB, good []byte) []byte {
			c := splitContainer(t, good)
			appendTensor(c, &slopepb.Tensor{Name: "tok", Dtype: slopepb.DType_UINT8, Shape: []uint64{2},
				Encoding: slopepb.Encoding_DENSE}, []byte("{}"))
			c.manifest.Tokenizer = &slopepb.Tokenizer{Type: TokenizerGPT2BPE, Files: map[string]string{"../../etc/evil": "tok"}}
			return c.assemble(t)
		}, ErrManifest},
		{"zstd frame is garbage", viaContainer(func(t testing.TB, c *container) {
			x := c.tensor(t, "w.adam_v") // last tensor: shrink it to a bogus 16-byte frame
			c.data = append(c.data[:x.Offset], make([]byte, 16)...)
			for i := range 16 {
				c.data[x.Offset+uint64(i)] = byte(i * 7)
			}
			x.Length = 16
			x.Compression = slopepb.Compression_ZSTD
			x.Xxh3 = xxh3.Hash(c.data[x.Offset:])
		}), ErrCompression},
		{"compression ratio above cap", func(t testing.TB, good []byte) []byte {
			// 8 KiB of raw fp32 claimed to come from a 1-byte frame.
			c := splitContainer(t, good)
			appendTensor(c, &slopepb.Tensor{Name: "bomb", Dtype: slopepb.DType_FLOAT32, Shape: []uint64{2048},
				Encoding: slopepb.Encoding_DENSE}, []byte{0})
			x := c.tensor(t, "bomb")
			x.Compression, x.RawLength = slopepb.Compression_ZSTD, 8192
			return c.assemble(t)
		}, ErrLimit},
		{"zstd frame longer than raw_length", func(t testing.TB, good []byte) []byte {
			c := splitContainer(t, good)
			enc, err := zstd.NewWriter(nil)
			if err != nil {
				t.Fatal(err)
			}
			frame := enc.EncodeAll(make([]byte, 16<<10), nil) // 16 KiB of zeros
			appendTensor(c, &slopepb.Tensor{Name: "long", Dtype: slopepb.DType_FLOAT32, Shape: []uint64{16},
				Encoding: slopepb.Encoding_DENSE}, frame)
			x := c.tensor(t, "long")
			x.Compression, x.RawLength = slopepb.Compression_ZSTD, 64
			return c.assemble(t)
		}, ErrCompression},
		{"zstd frame declares a 64 MiB window", func(t testing.TB, good []byte) []byte {
			c := splitContainer(t, good)
			appendTensor(c, &slopepb.Tensor{Name: "wide", Dtype: slopepb.DType_UINT8, Shape: []uint64{4000},
				Encoding: slopepb.Encoding_DENSE}, zstdRLEFrame(26, 0, 4, 1000, 7))
			x := c.tensor(t, "wide")
			x.Compression, x.RawLength = slopepb.Compression_ZSTD, 4000
			return c.assemble(t)
		}, ErrCompression},
		{"zstd shuffle of fp32", viaContainer(func(t testing.TB, c *container) {
			c.tensor(t, "embed").Compression = slopepb.Compression_ZSTD_SHUFFLE
		}), ErrManifest},
		{"non-zero padding between tensors", viaContainer(func(t testing.TB, c *container) {
			x := c.tensor(t, "norm") // 32 bytes in a 4096 slot
			c.data[x.Offset+x.Length+1] = 9
		}), ErrLayout},
		{"opt config with zero layers", viaContainer(func(t testing.TB, c *container) {
			c.manifest.Architecture.GetOpt().NumHiddenLayers = 0
		}), ErrManifest},
	}
}

// appendTensor adds a tensor at the end of the data region.
func appendTensor(c *container, t *slopepb.Tensor, raw []byte) {
	off, _ := alignUp(uint64(len(c.data)), c.align)
	c.data = append(c.data, make([]byte, off-uint64(len(c.data)))...)
	c.data = append(c.data, raw...)
	t.Offset, t.Length, t.RawLength, t.Xxh3 = off, uint64(len(raw)), uint64(len(raw)), xxh3.Hash(raw)
	c.manifest.Tensors = append(c.manifest.Tensors, t)
}

// openAndVerify is what `slope verify` does: open, then check everything.
func openAndVerify(b []byte) error {
	f, err := Parse("broken.slope", b, nil)
	if err != nil {
		return err
	}
	return f.Verify(nil)
}

func TestBrokenFiles(t *testing.T) {
	good, _ := sampleBytes(t, nil)
	if err := openAndVerify(good); err != nil {
		t.Fatalf("the valid sample fails: %v", err)
	}
	cases := brokenCases()
	if len(cases) < 30 {
		t.Fatalf("only %d broken files", len(cases))
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := tc.make(t, good)
			err := openAndVerify(b)
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if !strings.Contains(err.Error(), "broken.slope") {
				t.Errorf("error does not name the file: %v", err)
			}
		})
	}
}

// Accessors see the same content errors on first use, and keep reporting them.
func TestLazyChecksOnAccess(t *testing.T) {
	good, _ := sampleBytes(t, nil)
	c := splitContainer(t, good)
	x := c.tensor(t, "embed")
	c.data[x.Offset] ^= 1
	f, err := Parse("lazy.slope", c.assemble(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := f.Float32s("embed"); !errors.Is(err, ErrChecksum) {
			t.Fatalf("got %v, want ErrChecksum", err)
		}
	}
	if _, err := f.Float32s("norm"); err != nil {
		t.Fatalf("an intact tensor fails: %v", err)
	}
	f2, _ := Parse("lazy.slope", c.assemble(t), &ReaderOptions{SkipChecksums: true})
	if _, err := f2.Float32s("embed"); err != nil {
		t.Fatalf("SkipChecksums still checks: %v", err)
	}
}

func TestTensorCountCap(t *testing.T) {
	good, _ := sampleBytes(t, nil)
	lim := DefaultLimits()
	lim.MaxTensors = 3
	if _, err := Parse("cap.slope", good, &ReaderOptions{Limits: &lim}); !errors.Is(err, ErrLimit) {
		t.Fatalf("got %v, want ErrLimit", err)
	}
}
