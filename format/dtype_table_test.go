package format

import (
	"encoding/binary"
	"math"
	"testing"

	"github.com/slopeml/slope/format/slopepb"
)

// DecodeFloats decodes halves through a lookup table: it must agree with
// Float16ToFloat32 on all 65536 patterns (NaNs bit for bit too).
func TestFloat16DecodeTableExhaustive(t *testing.T) {
	src := make([]byte, 2<<16)
	for i := range 1 << 16 {
		binary.LittleEndian.PutUint16(src[2*i:], uint16(i))
	}
	dst := make([]float32, 1<<16)
	if err := DecodeFloats(slopepb.DType_FLOAT16, src, dst); err != nil {
		t.Fatal(err)
	}
	for i, got := range dst {
		if want := Float16ToFloat32(uint16(i)); math.Float32bits(got) != math.Float32bits(want) {
			t.Fatalf("half %#04x: table %v, function %v", i, got, want)
		}
	}
}
