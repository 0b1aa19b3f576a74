package format

import (
	"errors"
	"math"
	"math/rand/v2"
	"sort"
	"testing"

	"github.com/slopeml/slope/format/slopepb"
)

func TestDTypeElemSize(t *testing.T) {
	want := map[slopepb.DType]int{
		slopepb.DType_FLOAT32:  4,
		slopepb.DType_FLOAT16:  2,
		slopepb.DType_BFLOAT16: 2,
		slopepb.DType_INT8:     1,
		slopepb.DType_UINT8:    1,
		slopepb.DType_INT32:    4,
		slopepb.DType_INT64:    8,
		slopepb.DType_UINT32:   4,
	}
	for dt, w := range want {
		got, err := ElemSize(dt)
		if err != nil || got != w {
			t.Errorf("ElemSize(%s) = %d, %v; want %d", dt, got, err, w)
		}
	}
	for _, dt := range []slopepb.DType{slopepb.DType_DTYPE_UNSPECIFIED, 9, 100, -1} {
		if _, err := ElemSize(dt); !errors.Is(err, ErrShape) {
			t.Errorf("ElemSize(%d) error = %v; want ErrShape", dt, err)
		}
	}
}

func TestDTypeIsFloat(t *testing.T) {
	for dt := slopepb.DType(-1); dt <= 10; dt++ {
		want := dt == slopepb.DType_FLOAT32 || dt == slopepb.DType_FLOAT16 || dt == slopepb.DType_BFLOAT16
		if IsFloat(dt) != want {
			t.Errorf("IsFloat(%d) = %v", dt, !want)
		}
	}
}

// refHalf decodes binary16 bits independently of the code under test,
// through float64 arithmetic.
func dttRefDecodeHalf(h uint16) float64 {
	sign := 1.0
	if h&0x8000 != 0 {
		sign = -1
	}
	e := int(h>>10) & 0x1f
	m := float64(h & 0x3ff)
	switch e {
	case 0x1f:
		if m == 0 {
			return sign * math.Inf(1)
		}
		return math.NaN()
	case 0:
		return sign * math.Ldexp(m, -24)
	}
	return sign * math.Ldexp(1024+m, e-25)
}

// dttRefDecodeBF16 decodes bfloat16 bits independently, through float64 arithmetic.
func dttRefDecodeBF16(h uint16) float64 {
	sign := 1.0
	if h&0x8000 != 0 {
		sign = -1
	}
	e := int(h>>7) & 0xff
	m := float64(h & 0x7f)
	switch e {
	case 0xff:
		if m == 0 {
			return sign * math.Inf(1)
		}
		return math.NaN()
	case 0:
		return sign * math.Ldexp(m, -133)
	}
	return sign * math.Ldexp(128+m, e-134)
}

// dttRefRounder rounds float64 values to a 16-bit format by searching the
// sorted list of its non-negative finite values: pick the nearest, ties to
// the even bit pattern. The first pattern past the largest finite value is
// +Inf, whose magnitude for rounding purposes is the next power of two.
type dttRefRounder struct {
	vals []float64 // increasing, index = bit pattern, last one is the Inf stand-in
}

func dttNewRefRounder(decode func(uint16) float64, infBits uint16, infAt float64) *dttRefRounder {
	r := &dttRefRounder{}
	for b := 0; b < int(infBits); b++ {
		r.vals = append(r.vals, decode(uint16(b)))
	}
	r.vals = append(r.vals, infAt)
	if !sort.Float64sAreSorted(r.vals) {
		panic("reference table not monotone")
	}
	return r
}

func (r *dttRefRounder) round(x float64) uint16 {
	var sign uint16
	if math.Signbit(x) {
		sign = 0x8000
		x = -x
	}
	last := len(r.vals) - 1
	if x >= r.vals[last] {
		return sign | uint16(last)
	}
	// Largest i with vals[i] <= x.
	i := sort.Search(len(r.vals), func(k int) bool { return r.vals[k] > x }) - 1
	if r.vals[i] == x {
		return sign | uint16(i)
	}
	lo, hi := r.vals[i], r.vals[i+1]
	mid := (lo + hi) / 2 // exact in float64 for these formats
	switch {
	case x < mid:
		return sign | uint16(i)
	case x > mid:
		return sign | uint16(i+1)
	case i%2 == 0:
		return sign | uint16(i)
	}
	return sign | uint16(i+1)
}

var (
	dttRefRoundF16  = dttNewRefRounder(dttRefDecodeHalf, 0x7c00, 65536)
	dttRefRoundBF16 = dttNewRefRounder(dttRefDecodeBF16, 0x7f80, math.Ldexp(1, 128))
)

func TestFloat16RoundTripExhaustive(t *testing.T) {
	for i := 0; i < 1<<16; i++ {
		h := uint16(i)
		f := Float16ToFloat32(h)
		ref := dttRefDecodeHalf(h)
		if math.IsNaN(ref) {
			if !math.IsNaN(float64(f)) {
				t.Fatalf("half %#04x: decoded %v, want NaN", h, f)
			}
			b := math.Float32bits(f)
			if b>>31 != uint32(h>>15) || b&dtF32QuietBit == 0 {
				t.Fatalf("half %#04x: decoded NaN bits %#08x lost sign or not quiet", h, b)
			}
			back := Float32ToFloat16(f)
			if back&0x7c00 != 0x7c00 || back&0x3ff == 0 || back&0x8000 != h&0x8000 || back&dtF16QuietBit == 0 {
				t.Fatalf("half NaN %#04x re-encoded as %#04x", h, back)
			}
			if h&dtF16QuietBit != 0 && back != h {
				t.Fatalf("quiet half NaN %#04x re-encoded as %#04x (payload lost)", h, back)
			}
			continue
		}
		if float64(f) != ref || math.Signbit(float64(f)) != math.Signbit(ref) {
			t.Fatalf("half %#04x: decoded %v, want %v", h, f, ref)
		}
		if back := Float32ToFloat16(f); back != h {
			t.Fatalf("half %#04x -> %v -> %#04x", h, f, back)
		}
	}
}

func TestBFloat16RoundTripExhaustive(t *testing.T) {
	for i := 0; i < 1<<16; i++ {
		h := uint16(i)
		f := BFloat16ToFloat32(h)
		ref := dttRefDecodeBF16(h)
		if math.IsNaN(ref) {
			if !math.IsNaN(float64(f)) {
				t.Fatalf("bf16 %#04x: decoded %v, want NaN", h, f)
			}
			b := math.Float32bits(f)
			if b>>31 != uint32(h>>15) || b&dtF32QuietBit == 0 {
				t.Fatalf("bf16 %#04x: decoded NaN bits %#08x lost sign or not quiet", h, b)
			}
			back := Float32ToBFloat16(f)
			if back&0x7f80 != 0x7f80 || back&0x7f == 0 || back&0x8000 != h&0x8000 || back&dtBf16QuietBit == 0 {
				t.Fatalf("bf16 NaN %#04x re-encoded as %#04x", h, back)
			}
			if h&dtBf16QuietBit != 0 && back != h {
				t.Fatalf("quiet bf16 NaN %#04x re-encoded as %#04x (payload lost)", h, back)
			}
			continue
		}
		if float64(f) != ref || math.Signbit(float64(f)) != math.Signbit(ref) {
			t.Fatalf("bf16 %#04x: decoded %v, want %v", h, f, ref)
		}
		if back := Float32ToBFloat16(f); back != h {
			t.Fatalf("bf16 %#04x -> %v -> %#04x", h, f, back)
		}
	}
}

// dttCheckRound compares both conversions of the float32 with bits b against
// the references; it returns false after reporting a mismatch.
func dttCheckRound(t *testing.T, b uint32) bool {
	t.Helper()
	f := math.Float32frombits(b)
	x := float64(f)
	if math.IsNaN(x) {
		h := Float32ToFloat16(f)
		if h&0x7c00 != 0x7c00 || h&0x3ff == 0 || h>>15 != uint16(b>>31) {
			t.Errorf("Float32ToFloat16(NaN %#08x) = %#04x", b, h)
			return false
		}
		g := Float32ToBFloat16(f)
		if g&0x7f80 != 0x7f80 || g&0x7f == 0 || g>>15 != uint16(b>>31) {
			t.Errorf("Float32ToBFloat16(NaN %#08x) = %#04x", b, g)
			return false
		}
		return true
	}
	if got, want := Float32ToFloat16(f), dttRefRoundF16.round(x); got != want {
		t.Errorf("Float32ToFloat16(%g [%#08x]) = %#04x, want %#04x", f, b, got, want)
		return false
	}
	if got, want := Float32ToBFloat16(f), dttRefRoundBF16.round(x); got != want {
		t.Errorf("Float32ToBFloat16(%g [%#08x]) = %#04x, want %#04x", f, b, got, want)
		return false
	}
	return true
}

func TestFloatRoundingStridedAllPatterns(t *testing.T) {
	// Every 4093rd float32 bit pattern (4093 is prime, so the low bits
	// cycle through all residues), both signs included.
	bad := 0
	for b := uint64(0); b < 1<<32; b += 4093 {
		if !dttCheckRound(t, uint32(b)) {
			if bad++; bad > 10 {
				t.Fatal("too many mismatches")
			}
		}
	}
}

func TestFloat16RoundingNeighbourhoods(t *testing.T) {
	// For every pair of consecutive finite halves (and the last finite one
	// with the overflow threshold): the endpoints, the exact midpoint (ties
	// to even), the float32 values right around it, and random interior points.
	rng := rand.New(rand.NewPCG(1, 2))
	bad := 0
	for i := 0; i < 0x7c00; i++ {
		lo := float32(dttRefRoundF16.vals[i])
		hi := float32(dttRefRoundF16.vals[i+1]) // 65536 for the last finite half
		lb, hb := math.Float32bits(lo), math.Float32bits(hi)
		mid := math.Float32bits(float32((dttRefRoundF16.vals[i] + dttRefRoundF16.vals[i+1]) / 2))
		cands := []uint32{lb, lb + 1, hb - 1, hb, mid - 2, mid - 1, mid, mid + 1, mid + 2}
		if lb == 0 {
			cands = append(cands, 1, 2, 0x00800000, 0x33000000, 0x32ffffff, 0x33000001)
		}
		for k := 0; k < 4 && hb > lb+1; k++ {
			cands = append(cands, lb+1+rng.Uint32N(hb-lb-1))
		}
		for _, c := range cands {
			for _, s := range []uint32{0, dtF32SignMask} {
				if !dttCheckRound(t, c|s) {
					if bad++; bad > 10 {
						t.Fatal("too many mismatches")
					}
				}
			}
		}
	}
	// The overflow boundary explicitly.
	for _, c := range []struct {
		f    float32
		want uint16
	}{
		{65504, 0x7bff},
		{65519.996, 0x7bff},
		{65520, 0x7c00},
		{65536, 0x7c00},
		{-65520, 0xfc00},
		{1e10, 0x7c00},
		{float32(math.Inf(1)), 0x7c00},
		{float32(math.Inf(-1)), 0xfc00},
		{0x1p-24, 0x0001},
		{0x1p-25, 0x0000},                          // tie with 0: even
		{math.Float32frombits(0x33000001), 0x0001}, // just above half the smallest subnormal
		{0x3p-25, 0x0002},                          // tie between 1 and 2 units: even = 2
		{0x1p-14, 0x0400},
		{float32(math.Copysign(0, -1)), 0x8000},
		{1, 0x3c00},
		{1 + 0x1p-11, 0x3c00}, // tie: even
		{1 + 0x3p-11, 0x3c02}, // tie: even
	} {
		if got := Float32ToFloat16(c.f); got != c.want {
			t.Errorf("Float32ToFloat16(%g) = %#04x, want %#04x", c.f, got, c.want)
		}
	}
}

func TestBFloat16RoundingNeighbourhoods(t *testing.T) {
	// Every exponent and every 7-bit mantissa, with the low 16 bits set to
	// the values around the rounding boundaries plus a random one.
	rng := rand.New(rand.NewPCG(3, 4))
	bad := 0
	for top := uint32(0); top < 0x7f80; top++ {
		for _, low := range []uint32{0, 1, 0x7ffe, 0x7fff, 0x8000, 0x8001, 0xffff, rng.Uint32N(1 << 16)} {
			for _, s := range []uint32{0, dtF32SignMask} {
				if !dttCheckRound(t, top<<16|low|s) {
					if bad++; bad > 10 {
						t.Fatal("too many mismatches")
					}
				}
			}
		}
	}
	for _, c := range []struct {
		f    float32
		want uint16
	}{
		{1, 0x3f80},
		{1 + 0x1p-8, 0x3f80}, // tie: even
		{1 + 0x3p-8, 0x3f82}, // tie: even
		{math.MaxFloat32, 0x7f80},
		{math.Float32frombits(0x7f7f7fff), 0x7f7f},
		{math.Float32frombits(0x7f7f8000), 0x7f80}, // tie with the Inf stand-in: even
		{math.Float32frombits(0x00000001), 0x0000},
		{math.Float32frombits(0x00008000), 0x0000}, // tie: even
		{math.Float32frombits(0x00008001), 0x0001},
		{math.Float32frombits(0x00018000), 0x0002}, // tie: even
		{float32(math.Inf(-1)), 0xff80},
	} {
		if got := Float32ToBFloat16(c.f); got != c.want {
			t.Errorf("Float32ToBFloat16(%g) = %#04x, want %#04x", c.f, got, c.want)
		}
	}
}

func TestFloat16SubnormalRangeDense(t *testing.T) {
	// All float32 values below the smallest normal half, sampled with a
	// small odd stride, plus their negatives.
	bad := 0
	for b := uint32(0x32f00000); b < 0x38800000; b += 61 {
		for _, s := range []uint32{0, dtF32SignMask} {
			if !dttCheckRound(t, b|s) {
				if bad++; bad > 10 {
					t.Fatal("too many mismatches")
				}
			}
		}
	}
}

func TestFloatNaNQuietSign(t *testing.T) {
	for _, b := range []uint32{0x7f800001, 0xff800001, 0x7fc00000, 0xffc00000, 0x7fbfffff, 0x7f802000, 0xffffffff} {
		f := math.Float32frombits(b)
		h := Float32ToFloat16(f)
		if h&0x7c00 != 0x7c00 || h&dtF16QuietBit == 0 || h>>15 != uint16(b>>31) {
			t.Errorf("Float32ToFloat16(NaN %#08x) = %#04x: want quiet NaN with sign", b, h)
		}
		g := Float32ToBFloat16(f)
		if g&0x7f80 != 0x7f80 || g&dtBf16QuietBit == 0 || g>>15 != uint16(b>>31) {
			t.Errorf("Float32ToBFloat16(NaN %#08x) = %#04x: want quiet NaN with sign", b, g)
		}
	}
}

func TestFloatEncodeDecode(t *testing.T) {
	src := []float32{0, 1, -2.5, 65504, 1e-7, float32(math.Inf(-1)), 3.14159}
	for _, dt := range []slopepb.DType{slopepb.DType_FLOAT32, slopepb.DType_FLOAT16, slopepb.DType_BFLOAT16} {
		size, _ := ElemSize(dt)
		buf := make([]byte, len(src)*size)
		if err := EncodeFloats(dt, src, buf); err != nil {
			t.Fatalf("%s encode: %v", dt, err)
		}
		got := make([]float32, len(src))
		if err := DecodeFloats(dt, buf, got); err != nil {
			t.Fatalf("%s decode: %v", dt, err)
		}
		for i, v := range src {
			var want float32
			switch dt {
			case slopepb.DType_FLOAT32:
				want = v
			case slopepb.DType_FLOAT16:
				want = Float16ToFloat32(Float32ToFloat16(v))
			default:
				want = BFloat16ToFloat32(Float32ToBFloat16(v))
			}
			if got[i] != want {
				t.Errorf("%s elem %d: got %v want %v", dt, i, got[i], want)
			}
		}
		// Wrong lengths.
		if err := EncodeFloats(dt, src, buf[:len(buf)-1]); !errors.Is(err, ErrShape) {
			t.Errorf("%s short encode buffer: %v", dt, err)
		}
		if err := EncodeFloats(dt, src, append(buf, 0)); !errors.Is(err, ErrShape) {
			t.Errorf("%s long encode buffer: %v", dt, err)
		}
		if err := DecodeFloats(dt, buf[:len(buf)-1], got); !errors.Is(err, ErrShape) {
			t.Errorf("%s short decode source: %v", dt, err)
		}
		if err := DecodeFloats(dt, buf, got[:len(got)-1]); !errors.Is(err, ErrShape) {
			t.Errorf("%s decode dst too short: %v", dt, err)
		}
		if err := EncodeFloats(dt, nil, nil); err != nil {
			t.Errorf("%s empty encode: %v", dt, err)
		}
		if err := DecodeFloats(dt, nil, nil); err != nil {
			t.Errorf("%s empty decode: %v", dt, err)
		}
	}
	// Exact little-endian bytes.
	buf := make([]byte, 2)
	if err := EncodeFloats(slopepb.DType_FLOAT16, []float32{1}, buf); err != nil || buf[0] != 0x00 || buf[1] != 0x3c {
		t.Errorf("fp16 1.0 bytes = % x, %v", buf, err)
	}
	if err := EncodeFloats(slopepb.DType_BFLOAT16, []float32{-2}, buf); err != nil || buf[0] != 0x00 || buf[1] != 0xc0 {
		t.Errorf("bf16 -2.0 bytes = % x, %v", buf, err)
	}
	buf4 := make([]byte, 4)
	if err := EncodeFloats(slopepb.DType_FLOAT32, []float32{1}, buf4); err != nil || buf4[0] != 0 || buf4[2] != 0x80 || buf4[3] != 0x3f {
		t.Errorf("fp32 1.0 bytes = % x, %v", buf4, err)
	}
	// Non-float dtypes.
	for _, dt := range []slopepb.DType{slopepb.DType_DTYPE_UNSPECIFIED, slopepb.DType_INT8, slopepb.DType_UINT8,
		slopepb.DType_INT32, slopepb.DType_INT64, slopepb.DType_UINT32, 42} {
		if err := EncodeFloats(dt, []float32{1}, make([]byte, 8)); !errors.Is(err, ErrShape) {
			t.Errorf("EncodeFloats(%s): %v", dt, err)
		}
		if err := DecodeFloats(dt, make([]byte, 8), make([]float32, 1)); !errors.Is(err, ErrShape) {
			t.Errorf("DecodeFloats(%s): %v", dt, err)
		}
	}
}
