package format

import (
	"encoding/binary"
	"fmt"
	"math"
	"sync"

	"github.com/slopeml/slope/format/slopepb"
)

// ElemSize returns the size in bytes of one element of dt. An unspecified
// or unknown dtype is an error wrapping ErrShape.
func ElemSize(dt slopepb.DType) (int, error) {
	switch dt {
	case slopepb.DType_FLOAT32, slopepb.DType_INT32, slopepb.DType_UINT32:
		return 4, nil
	case slopepb.DType_FLOAT16, slopepb.DType_BFLOAT16:
		return 2, nil
	case slopepb.DType_INT8, slopepb.DType_UINT8:
		return 1, nil
	case slopepb.DType_INT64:
		return 8, nil
	}
	return 0, fmt.Errorf("dtype %d (%s) has no element size: %w", int32(dt), dt, ErrShape)
}

// IsFloat reports whether dt is a floating-point dtype (FLOAT32, FLOAT16
// or BFLOAT16), the dtypes EncodeFloats and DecodeFloats accept.
func IsFloat(dt slopepb.DType) bool {
	switch dt {
	case slopepb.DType_FLOAT32, slopepb.DType_FLOAT16, slopepb.DType_BFLOAT16:
		return true
	}
	return false
}

// Bit layout constants of the three float formats.
const (
	dtF32SignMask  = 0x80000000
	dtF32ExpMask   = 0x7f800000
	dtF32MantMask  = 0x007fffff
	dtF32QuietBit  = 0x00400000
	dtF16ExpMask   = 0x7c00
	dtF16MantMask  = 0x03ff
	dtF16QuietBit  = 0x0200
	dtBf16QuietBit = 0x0040
)

// Float32ToFloat16 converts f to IEEE 754 binary16 bits, rounding to
// nearest with ties to even. Magnitudes that round past the largest finite
// half (65504) become ±Inf, values too small become ±0 (subnormal halves
// are produced where representable), and a NaN becomes a quiet NaN with
// the same sign and the top bits of its payload.
func Float32ToFloat16(f float32) uint16 {
	b := math.Float32bits(f)
	// Fast path, normal halves: 2^-14 <= |f| < 65520 (the first value that
	// rounds to Inf). Adding 0xfff plus the lowest kept bit rounds to
	// nearest even; a mantissa carry correctly bumps the exponent; then
	// rebias the exponent from 127 to 15.
	if a := b &^ 0x80000000; a >= 0x38800000 && a < 0x477ff000 {
		a += 0x0fff + (a>>13)&1
		return uint16(b>>16)&0x8000 | uint16((a-0x38000000)>>13)
	}
	sign := uint16(b>>16) & 0x8000
	exp := int(b>>23) & 0xff
	mant := b & dtF32MantMask

	if exp == 0xff {
		if mant == 0 {
			return sign | dtF16ExpMask // ±Inf
		}
		return sign | dtF16ExpMask | dtF16QuietBit | uint16(mant>>13)
	}
	if exp == 0 {
		// Zero or a float32 subnormal (< 2^-126): far below half of the
		// smallest half subnormal (2^-25), so it rounds to ±0.
		return sign
	}
	he := exp - 127 + 15 // biased half exponent if the value were normal
	if he >= 31 {
		return sign | dtF16ExpMask // ≥ 2^16: overflow
	}
	m := mant | 0x800000 // 24-bit significand, value = m * 2^(exp-150)
	shift := 13
	if he < 1 {
		// Half subnormal: result counts units of 2^-24.
		shift = 13 + 1 - he
		if shift > 25 {
			return sign // below 2^-25: rounds to zero
		}
	}
	q := m >> uint(shift)
	rem := m & (1<<uint(shift) - 1)
	half := uint32(1) << uint(shift-1)
	if rem > half || (rem == half && q&1 == 1) {
		q++
	}
	if he < 1 {
		// q <= 0x400; q == 0x400 is exactly the smallest normal encoding.
		return sign | uint16(q)
	}
	// q holds the implicit bit (0x400); a rounding carry to 0x800 bumps the
	// exponent, and reaching exponent 31 yields exactly the Inf encoding.
	r := uint32(he-1)<<10 + q
	if r >= dtF16ExpMask {
		return sign | dtF16ExpMask
	}
	return sign | uint16(r)
}

// Float16ToFloat32 converts IEEE 754 binary16 bits to float32 exactly. A NaN
// becomes a quiet NaN with the same sign and payload.
func Float16ToFloat32(h uint16) float32 {
	sign := uint32(h&0x8000) << 16
	exp := uint32(h>>10) & 0x1f
	mant := uint32(h & dtF16MantMask)
	switch {
	case exp == 0x1f:
		if mant == 0 {
			return math.Float32frombits(sign | dtF32ExpMask)
		}
		return math.Float32frombits(sign | dtF32ExpMask | dtF32QuietBit | mant<<13)
	case exp == 0:
		if mant == 0 {
			return math.Float32frombits(sign)
		}
		// Subnormal: mant * 2^-24. Normalise so the leading one becomes the
		// implicit bit.
		e := uint32(127 - 15 + 1)
		for mant&0x400 == 0 {
			mant <<= 1
			e--
		}
		return math.Float32frombits(sign | e<<23 | (mant&dtF16MantMask)<<13)
	}
	return math.Float32frombits(sign | (exp+127-15)<<23 | mant<<13)
}

// Float32ToBFloat16 converts f to bfloat16 bits (the top half of a float32),
// rounding to nearest with ties to even. Values that round past the largest
// finite bfloat16 become ±Inf; float32 subnormals round to bfloat16
// subnormals; a NaN becomes a quiet NaN with the same sign.
func Float32ToBFloat16(f float32) uint16 {
	b := math.Float32bits(f)
	if b&dtF32ExpMask == dtF32ExpMask && b&dtF32MantMask != 0 {
		return uint16(b>>16) | dtBf16QuietBit
	}
	// Adding 0x7fff plus the lowest kept bit rounds to nearest, ties to
	// even; a carry out of the mantissa correctly increments the exponent
	// (up to Inf). The sum cannot overflow 32 bits for non-NaN inputs.
	b += 0x7fff + (b>>16)&1
	return uint16(b >> 16)
}

// BFloat16ToFloat32 converts bfloat16 bits to float32 exactly. A NaN becomes
// a quiet NaN with the same sign and payload.
func BFloat16ToFloat32(h uint16) float32 {
	b := uint32(h) << 16
	if b&dtF32ExpMask == dtF32ExpMask && b&dtF32MantMask != 0 {
		b |= dtF32QuietBit
	}
	return math.Float32frombits(b)
}

// floatCodecLen checks a float dtype and the pair of lengths given to
// EncodeFloats or DecodeFloats.
func floatCodecLen(op string, dt slopepb.DType, nElems, nBytes int) error {
	if !IsFloat(dt) {
		return fmt.Errorf("%s: dtype %s is not a float dtype: %w", op, dt, ErrShape)
	}
	size, err := ElemSize(dt)
	if err != nil {
		return err
	}
	if nElems > math.MaxInt/size || nElems*size != nBytes {
		return fmt.Errorf("%s: %d %s elements need %d-byte elements, have %d bytes: %w",
			op, nElems, dt, size, nBytes, ErrShape)
	}
	return nil
}

// EncodeFloats writes src as little-endian elements of the float dtype dt
// into dst, which must be exactly len(src)*ElemSize(dt) bytes. FLOAT16 and
// BFLOAT16 round to nearest, ties to even. Other dtypes wrap ErrShape.
func EncodeFloats(dt slopepb.DType, src []float32, dst []byte) error {
	if err := floatCodecLen("encode floats", dt, len(src), len(dst)); err != nil {
		return err
	}
	es := len(dst) / max(len(src), 1) // the element size (lo*len(dst) could overflow)
	parallelFor(len(src), 1, func(lo, hi int) { encodeFloatsChunk(dt, src[lo:hi], dst[lo*es:]) })
	return nil
}

func encodeFloatsChunk(dt slopepb.DType, src []float32, dst []byte) {
	switch dt {
	case slopepb.DType_FLOAT32:
		for i, v := range src {
			binary.LittleEndian.PutUint32(dst[4*i:], math.Float32bits(v))
		}
	case slopepb.DType_FLOAT16:
		for i, v := range src {
			binary.LittleEndian.PutUint16(dst[2*i:], Float32ToFloat16(v))
		}
	case slopepb.DType_BFLOAT16:
		for i, v := range src {
			binary.LittleEndian.PutUint16(dst[2*i:], Float32ToBFloat16(v))
		}
	}
}

// DecodeFloats reads little-endian elements of the float dtype dt from src
// into dst; len(src) must equal len(dst)*ElemSize(dt). Other dtypes wrap
// ErrShape.
func DecodeFloats(dt slopepb.DType, src []byte, dst []float32) error {
	if err := floatCodecLen("decode floats", dt, len(dst), len(src)); err != nil {
		return err
	}
	es := len(src) / max(len(dst), 1) // the element size (lo*len(src) could overflow)
	parallelFor(len(dst), 1, func(lo, hi int) { decodeFloatsChunk(dt, src[lo*es:], dst[lo:hi]) })
	return nil
}

// DecodeFloatsSerial is DecodeFloats on the calling goroutine only (for a
// caller that guards its reads, such as of a memory mapping whose faults
// it turns into errors, per goroutine).
func DecodeFloatsSerial(dt slopepb.DType, src []byte, dst []float32) error {
	if err := floatCodecLen("decode floats", dt, len(dst), len(src)); err != nil {
		return err
	}
	decodeFloatsChunk(dt, src, dst)
	return nil
}

func decodeFloatsChunk(dt slopepb.DType, src []byte, dst []float32) {
	switch dt {
	case slopepb.DType_FLOAT32:
		for i := range dst {
			dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(src[4*i:]))
		}
	case slopepb.DType_FLOAT16:
		tbl := f16Table()
		for i := range dst {
			dst[i] = tbl[binary.LittleEndian.Uint16(src[2*i:])]
		}
	case slopepb.DType_BFLOAT16:
		for i := range dst {
			dst[i] = BFloat16ToFloat32(binary.LittleEndian.Uint16(src[2*i:]))
		}
	}
}

// f16Table maps every half to its float32 (256 KiB, built once): decoding
// by lookup is several times faster than by bit manipulation.
var f16Table = sync.OnceValue(func() *[1 << 16]float32 {
	var t [1 << 16]float32
	for i := range t {
		t[i] = Float16ToFloat32(uint16(i))
	}
	return &t
})
