package format

import (
	"encoding/binary"
	"fmt"
	"math/bits"
)

// Fixed header of a .slope file (SPEC.md, "Byte layout").
const (
	// Magic opens every .slope file.
	Magic = "SLOPE\x00"
	// Version is the container format version this package reads and writes.
	Version = 1
	// EndianMark is stored as a little-endian uint16 (bytes FF FE). A file
	// whose mark reads 0xFFFE was written byte-swapped and is rejected.
	EndianMark = 0xFEFF
	// HeaderSize is the size of the fixed header; the manifest follows it.
	HeaderSize = 40
	// DefaultAlignment of the data region and of every tensor.
	DefaultAlignment = 4096
	// MinAlignment and MaxAlignment bound the header's alignment field
	// (always a power of two).
	MinAlignment = 64
	MaxAlignment = 1 << 20
)

// header is the decoded fixed header.
type header struct {
	alignment    uint32
	manifestLen  uint64
	manifestXXH3 uint64
	dataOffset   uint64
}

func (h header) encode() []byte {
	b := make([]byte, HeaderSize)
	copy(b, Magic)
	binary.LittleEndian.PutUint16(b[6:], Version)
	binary.LittleEndian.PutUint16(b[8:], EndianMark)
	// b[10:12]: flags, zero in version 1.
	binary.LittleEndian.PutUint32(b[12:], h.alignment)
	binary.LittleEndian.PutUint64(b[16:], h.manifestLen)
	binary.LittleEndian.PutUint64(b[24:], h.manifestXXH3)
	binary.LittleEndian.PutUint64(b[32:], h.dataOffset)
	return b
}

// decodeHeader checks everything the header alone can tell, against the
// size of the file it came from and the manifest cap.
func decodeHeader(b []byte, fileSize uint64, maxManifest uint64) (header, error) {
	var h header
	if uint64(len(b)) < uint64(len(Magic)) || string(b[:len(Magic)]) != Magic {
		return h, ErrNotSlope
	}
	if len(b) < HeaderSize {
		return h, fmt.Errorf("header needs %d bytes, file has %d: %w", HeaderSize, len(b), ErrTruncated)
	}
	if v := binary.LittleEndian.Uint16(b[6:]); v != Version {
		return h, fmt.Errorf("file has version %d, this reader knows %d: %w", v, Version, ErrVersion)
	}
	if m := binary.LittleEndian.Uint16(b[8:]); m != EndianMark {
		return h, fmt.Errorf("mark %#04x, want %#04x: %w", m, EndianMark, ErrEndianness)
	}
	if f := binary.LittleEndian.Uint16(b[10:]); f != 0 {
		return h, fmt.Errorf("flags %#04x must be 0 in version %d: %w", f, Version, ErrHeader)
	}
	h.alignment = binary.LittleEndian.Uint32(b[12:])
	h.manifestLen = binary.LittleEndian.Uint64(b[16:])
	h.manifestXXH3 = binary.LittleEndian.Uint64(b[24:])
	h.dataOffset = binary.LittleEndian.Uint64(b[32:])
	a := h.alignment
	if a < MinAlignment || a > MaxAlignment || a&(a-1) != 0 {
		return h, fmt.Errorf("alignment %d is not a power of two in [%d, %d]: %w", a, MinAlignment, MaxAlignment, ErrHeader)
	}
	if h.manifestLen > maxManifest {
		return h, fmt.Errorf("manifest length %d exceeds cap %d: %w", h.manifestLen, maxManifest, ErrLimit)
	}
	end, ok := addU64(HeaderSize, h.manifestLen)
	if !ok || end > fileSize {
		return h, fmt.Errorf("manifest of %d bytes ends past EOF (%d): %w", h.manifestLen, fileSize, ErrTruncated)
	}
	if h.dataOffset < end || h.dataOffset%uint64(a) != 0 || h.dataOffset > fileSize {
		if h.dataOffset != end || end != fileSize {
			// The one exception: a file with no tensor data may end right after
			// its manifest, data offset = EOF.
			return h, fmt.Errorf("data offset %d: must be %d-aligned, >= manifest end %d and <= file size %d: %w",
				h.dataOffset, a, end, fileSize, ErrHeader)
		}
	}
	return h, nil
}

func addU64(a, b uint64) (uint64, bool) {
	s, c := bits.Add64(a, b, 0)
	return s, c == 0
}

func mulU64(a, b uint64) (uint64, bool) {
	hi, lo := bits.Mul64(a, b)
	return lo, hi == 0
}

func alignUp(x, a uint64) (uint64, bool) {
	s, ok := addU64(x, a-1)
	return s &^ (a - 1), ok
}
