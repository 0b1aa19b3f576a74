package export

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"slices"

	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/format/slopepb"
)

// TensorHeader is a tensor's name, shape and stored dtype ("F32", "F16"
// or "BF16", the safetensors names), without its values.
type TensorHeader struct {
	Name  string
	Shape []int
	DType string
}

// Numel is the element count of the header's shape.
func (h TensorHeader) Numel() int {
	n := 1
	for _, d := range h.Shape {
		n *= d
	}
	return n
}

// Bytes is the stored size of the tensor, in bytes.
func (h TensorHeader) Bytes() (int64, error) {
	dt, err := DTypeOf(h.DType)
	if err != nil {
		return 0, fmt.Errorf("tensor %q: %w", h.Name, err)
	}
	es, _ := format.ElemSize(dt)
	return int64(h.Numel()) * int64(es), nil
}

// DTypeOf maps a safetensors dtype name ("F32", "F16", "BF16") to slopepb.
func DTypeOf(s string) (slopepb.DType, error) {
	switch s {
	case "F32":
		return slopepb.DType_FLOAT32, nil
	case "F16":
		return slopepb.DType_FLOAT16, nil
	case "BF16":
		return slopepb.DType_BFLOAT16, nil
	}
	return 0, fmt.Errorf("dtype %q: want F32, F16 or BF16", s)
}

// DTypeName is the safetensors name of a float dtype ("" for others).
func DTypeName(dt slopepb.DType) string {
	switch dt {
	case slopepb.DType_FLOAT32:
		return "F32"
	case slopepb.DType_FLOAT16:
		return "F16"
	case slopepb.DType_BFLOAT16:
		return "BF16"
	}
	return ""
}

// TorchDTypeName is config.json's torch_dtype for a safetensors dtype name
// ("float32", "float16", "bfloat16"; "" for anything else).
func TorchDTypeName(dtype string) string {
	switch dtype {
	case "F32":
		return "float32"
	case "F16":
		return "float16"
	case "BF16":
		return "bfloat16"
	}
	return ""
}

// WriteSafetensorsFunc writes a safetensors file at path whose tensors
// are headers, in order; data(i) supplies the values of headers[i] when
// they are written, so that only one tensor need be in memory at a time.
// Values are encoded in each header's DType (rounding to nearest, ties to
// even). On error the file is removed.
func WriteSafetensorsFunc(path string, headers []TensorHeader, metadata map[string]string, data func(i int) ([]float32, error)) (err error) {
	hdr, err := safetensorsHeader(headers, metadata)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = cerr
		}
		if err != nil {
			os.Remove(path)
		}
	}()
	w := bufio.NewWriterSize(f, 1<<20)
	var lb [8]byte
	binary.LittleEndian.PutUint64(lb[:], uint64(len(hdr)))
	if _, err := w.Write(lb[:]); err != nil {
		return err
	}
	if _, err := w.Write(hdr); err != nil {
		return err
	}
	var buf []byte
	for i, h := range headers {
		vals, err := data(i)
		if err != nil {
			return fmt.Errorf("%s: tensor %q: %w", path, h.Name, err)
		}
		if len(vals) != h.Numel() {
			return fmt.Errorf("%s: tensor %q: %d values for shape %v", path, h.Name, len(vals), h.Shape)
		}
		dt, _ := DTypeOf(h.DType)
		es, _ := format.ElemSize(dt)
		// Encode in chunks so that the buffer stays small.
		const chunk = 1 << 18
		for off := 0; off < len(vals); off += chunk {
			part := vals[off:min(off+chunk, len(vals))]
			buf = slices.Grow(buf[:0], len(part)*es)[:len(part)*es]
			if err := format.EncodeFloats(dt, part, buf); err != nil {
				return fmt.Errorf("%s: tensor %q: %w", path, h.Name, err)
			}
			if _, err := w.Write(buf); err != nil {
				return err
			}
		}
	}
	return w.Flush()
}

// safetensorsHeader builds the JSON header, padded with spaces to a
// multiple of 8 bytes as the reference implementation does.
func safetensorsHeader(headers []TensorHeader, metadata map[string]string) ([]byte, error) {
	type entry struct {
		DType       string  `json:"dtype"`
		Shape       []int   `json:"shape"`
		DataOffsets []int64 `json:"data_offsets"`
	}
	// Keys in file order: build the object by hand (encoding/json sorts
	// map keys, which would still be valid but loses the order).
	buf := []byte{'{'}
	if len(metadata) > 0 {
		mb, err := json.Marshal(metadata)
		if err != nil {
			return nil, err
		}
		buf = append(buf, `"__metadata__":`...)
		buf = append(buf, mb...)
	}
	seen := map[string]bool{}
	var off int64
	for i, h := range headers {
		if seen[h.Name] || h.Name == "__metadata__" {
			return nil, fmt.Errorf("tensor %q: duplicate or reserved name", h.Name)
		}
		seen[h.Name] = true
		n, err := h.Bytes()
		if err != nil {
			return nil, err
		}
		shape := h.Shape
		if shape == nil {
			shape = []int{}
		}
		kb, _ := json.Marshal(h.Name)
		eb, err := json.Marshal(entry{DType: h.DType, Shape: shape, DataOffsets: []int64{off, off + n}})
		if err != nil {
			return nil, err
		}
		if i > 0 || len(metadata) > 0 {
			buf = append(buf, ',')
		}
		buf = append(buf, kb...)
		buf = append(buf, ':')
		buf = append(buf, eb...)
		off += n
	}
	buf = append(buf, '}')
	for len(buf)%8 != 0 {
		buf = append(buf, ' ')
	}
	return buf, nil
}
