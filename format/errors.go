package format

import "errors"

// Sentinel errors. Every error the package returns wraps exactly one of
// these (test with errors.Is), plus context naming the file, tensor and
// offset at fault.
var (
	// ErrNotSlope: the file does not start with the .slope magic.
	ErrNotSlope = errors.New("not a .slope file (bad magic)")
	// ErrVersion: a format version this reader does not know.
	ErrVersion = errors.New("unsupported .slope format version")
	// ErrEndianness: the endianness mark is not the little-endian mark.
	ErrEndianness = errors.New("bad endianness mark")
	// ErrHeader: a malformed fixed header (reserved bits, alignment, data offset).
	ErrHeader = errors.New("malformed header")
	// ErrTruncated: the file ends before a structure it declares.
	ErrTruncated = errors.New("file truncated")
	// ErrLimit: a length, count or size exceeds the reader's caps.
	ErrLimit = errors.New("limit exceeded")
	// ErrManifest: the manifest does not decode or breaks a rule of SPEC.md.
	ErrManifest = errors.New("invalid manifest")
	// ErrLayout: tensor offsets out of range, misaligned, out of order,
	// overlapping, or data not ending at EOF.
	ErrLayout = errors.New("invalid tensor layout")
	// ErrShape: a shape, dtype, length or pattern inconsistent with the encoding.
	ErrShape = errors.New("inconsistent tensor shape or size")
	// ErrPattern: an N:M pattern outside 1 <= N < M <= 16.
	ErrPattern = errors.New("invalid N:M pattern")
	// ErrIndex: N:M index metadata that is out of range (>= M), not strictly
	// increasing inside its group, or has non-zero padding bits.
	ErrIndex = errors.New("invalid N:M index metadata")
	// ErrMask: a transpose mask with more than N kept values in a column
	// group, or non-zero padding bits.
	ErrMask = errors.New("invalid transpose mask")
	// ErrChecksum: stored bytes do not match their xxh3 checksum.
	ErrChecksum = errors.New("checksum mismatch")
	// ErrGraph: the graph references a tensor or value that does not exist,
	// or is otherwise malformed.
	ErrGraph = errors.New("invalid graph")
	// ErrNotFound: no tensor of that name.
	ErrNotFound = errors.New("tensor not found")
	// ErrCompression: compressed bytes that do not decode to raw_length bytes.
	ErrCompression = errors.New("bad compressed data")
	// ErrWriter: misuse of a Writer (duplicate name, size mismatch, closed).
	ErrWriter = errors.New("writer error")
)
