package tokenizer

import (
	"fmt"
	"strings"
)

// DecodeBytes returns the bytes that ids stand for, which need not be valid
// UTF-8 (a multi-byte character can be split across tokens). An id that no
// token has is an error.
func (t *BPE) DecodeBytes(ids []int) ([]byte, error) {
	n := 0
	for i, id := range ids {
		if id < 0 || id >= len(t.has) || !t.has[id] {
			return nil, fmt.Errorf("tokenizer: unknown token id %d at position %d", id, i)
		}
		n += len(t.bytes[id])
	}
	out := make([]byte, 0, n)
	for _, id := range ids {
		out = append(out, t.bytes[id]...)
	}
	return out, nil
}

// Decode returns the text that ids stand for. Bytes that do not form valid
// UTF-8 are replaced as HF does (Python's errors="replace", Rust's
// String::from_utf8_lossy, the WHATWG decoder): each maximal ill-formed
// subsequence becomes one U+FFFD. Special tokens are included as their text.
func (t *BPE) Decode(ids []int) (string, error) {
	b, err := t.DecodeBytes(ids)
	if err != nil {
		return "", err
	}
	s, _ := decodeUTF8Lossy(b, true)
	return s, nil
}

// StreamDecoder turns ids into text one at a time during generation. Text is
// emitted as soon as it is complete UTF-8; the bytes of a character split
// across tokens are held until its last byte arrives. The concatenation of
// everything Add returns and Flush equals Decode of all the ids.
type StreamDecoder struct {
	t       *BPE
	pending []byte
}

// NewStreamDecoder returns a decoder with nothing pending.
func (t *BPE) NewStreamDecoder() *StreamDecoder {
	return &StreamDecoder{t: t}
}

// Add decodes one more id and returns the text it completes (possibly "").
// An unknown id is an error and changes nothing.
func (d *StreamDecoder) Add(id int) (string, error) {
	t := d.t
	if id < 0 || id >= len(t.has) || !t.has[id] {
		return "", fmt.Errorf("tokenizer: unknown token id %d", id)
	}
	d.pending = append(d.pending, t.bytes[id]...)
	s, used := decodeUTF8Lossy(d.pending, false)
	d.pending = d.pending[:copy(d.pending, d.pending[used:])]
	return s, nil
}

// Pending reports whether bytes of an incomplete character are held.
func (d *StreamDecoder) Pending() bool { return len(d.pending) > 0 }

// Flush returns the held bytes of an incomplete character as U+FFFD (or ""
// when none are held) and resets the decoder.
func (d *StreamDecoder) Flush() string {
	s, _ := decodeUTF8Lossy(d.pending, true)
	d.pending = d.pending[:0]
	return s
}

// utf8Seq describes the UTF-8 sequences starting with a byte: their length
// (0 for a byte that cannot start one) and the range of their second byte.
// Later bytes are always 0x80..0xBF.
func utf8Seq(b byte) (size int, lo, hi byte) {
	switch {
	case b < 0x80:
		return 1, 0, 0
	case 0xC2 <= b && b <= 0xDF:
		return 2, 0x80, 0xBF
	case b == 0xE0:
		return 3, 0xA0, 0xBF
	case b == 0xED:
		return 3, 0x80, 0x9F
	case 0xE1 <= b && b <= 0xEF:
		return 3, 0x80, 0xBF
	case b == 0xF0:
		return 4, 0x90, 0xBF
	case 0xF1 <= b && b <= 0xF3:
		return 4, 0x80, 0xBF
	case b == 0xF4:
		return 4, 0x80, 0x8F
	}
	return 0, 0, 0
}

// decodeUTF8Lossy converts b to a string, replacing each maximal ill-formed
// subsequence with U+FFFD. Unless final, it stops before a trailing
// incomplete sequence that more bytes could complete. used is the number of
// bytes converted.
func decodeUTF8Lossy(b []byte, final bool) (s string, used int) {
	var sb strings.Builder
	sb.Grow(len(b))
	i := 0
	for i < len(b) {
		size, lo, hi := utf8Seq(b[i])
		if size == 1 {
			sb.WriteByte(b[i])
			i++
			continue
		}
		if size == 0 {
			sb.WriteString("\uFFFD")
			i++
			continue
		}
		k := 1
		for k < size && i+k < len(b) {
			c := b[i+k]
			if k == 1 && (c < lo || c > hi) || k > 1 && (c < 0x80 || c > 0xBF) {
				break
			}
			k++
		}
		switch {
		case k == size:
			sb.Write(b[i : i+k])
		case i+k == len(b) && !final:
			return sb.String(), i // incomplete: wait for more bytes
		default:
			sb.WriteString("\uFFFD")
		}
		i += k
	}
	return sb.String(), i
}
