package format

import "fmt"

// ShuffleBytes splits elements of elemSize bytes into byte planes: dst
// holds byte 0 of every element, then byte 1 of every element, and so on.
// Grouping the bytes of similar significance (the sign and exponent bytes
// of 16-bit floats, say) makes the data compress better. len(src) must be
// a multiple of elemSize and len(dst) must equal len(src) (ErrShape); src
// and dst must not overlap.
func ShuffleBytes(elemSize int, src, dst []byte) error {
	n, err := shuffleCount("shuffle", elemSize, src, dst)
	if err != nil {
		return err
	}
	switch elemSize {
	case 1:
		copy(dst, src)
	case 2:
		lo, hi := dst[:n], dst[n:2*n]
		for i := range lo {
			lo[i] = src[2*i]
			hi[i] = src[2*i+1]
		}
	default:
		for b := 0; b < elemSize; b++ {
			plane := dst[b*n : (b+1)*n]
			for i := range plane {
				plane[i] = src[i*elemSize+b]
			}
		}
	}
	return nil
}

// UnshuffleBytes inverts ShuffleBytes, with the same length rules.
func UnshuffleBytes(elemSize int, src, dst []byte) error {
	n, err := shuffleCount("unshuffle", elemSize, src, dst)
	if err != nil {
		return err
	}
	switch elemSize {
	case 1:
		copy(dst, src)
	case 2:
		lo, hi := src[:n], src[n:2*n]
		for i := range lo {
			dst[2*i] = lo[i]
			dst[2*i+1] = hi[i]
		}
	default:
		for b := 0; b < elemSize; b++ {
			plane := src[b*n : (b+1)*n]
			for i, v := range plane {
				dst[i*elemSize+b] = v
			}
		}
	}
	return nil
}

// shuffleCount checks the arguments and returns the element count.
func shuffleCount(op string, elemSize int, src, dst []byte) (int, error) {
	if elemSize < 1 {
		return 0, fmt.Errorf("%s: element size %d: %w", op, elemSize, ErrShape)
	}
	if len(src)%elemSize != 0 {
		return 0, fmt.Errorf("%s: %d bytes is not a multiple of the element size %d: %w", op, len(src), elemSize, ErrShape)
	}
	if len(dst) != len(src) {
		return 0, fmt.Errorf("%s: destination has %d bytes, source %d: %w", op, len(dst), len(src), ErrShape)
	}
	return len(src) / elemSize, nil
}
