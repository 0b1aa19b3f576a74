package format

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"testing"
)

func TestShuffleRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	for _, size := range []int{1, 2, 3, 4, 8} {
		for _, n := range []int{0, 1, 2, 3, 7, 64, 1001} {
			src := make([]byte, n*size)
			for i := range src {
				src[i] = byte(rng.Uint32())
			}
			sh := make([]byte, len(src))
			if err := ShuffleBytes(size, src, sh); err != nil {
				t.Fatalf("size %d, %d elements: shuffle: %v", size, n, err)
			}
			// Byte b of element i lands at b*n + i.
			for i := 0; i < n; i++ {
				for b := 0; b < size; b++ {
					if sh[b*n+i] != src[i*size+b] {
						t.Fatalf("size %d, %d elements: byte %d of element %d misplaced", size, n, b, i)
					}
				}
			}
			back := make([]byte, len(src))
			if err := UnshuffleBytes(size, sh, back); err != nil {
				t.Fatalf("size %d, %d elements: unshuffle: %v", size, n, err)
			}
			if !bytes.Equal(back, src) {
				t.Fatalf("size %d, %d elements: round trip differs", size, n)
			}
		}
	}
}

func TestShuffleExample(t *testing.T) {
	src := []byte{0x01, 0xA1, 0x02, 0xA2, 0x03, 0xA3}
	dst := make([]byte, 6)
	if err := ShuffleBytes(2, src, dst); err != nil || !bytes.Equal(dst, []byte{0x01, 0x02, 0x03, 0xA1, 0xA2, 0xA3}) {
		t.Errorf("shuffle = % x, %v", dst, err)
	}
	src4 := []byte{1, 2, 3, 4, 5, 6, 7, 8}
	dst4 := make([]byte, 8)
	if err := ShuffleBytes(4, src4, dst4); err != nil || !bytes.Equal(dst4, []byte{1, 5, 2, 6, 3, 7, 4, 8}) {
		t.Errorf("shuffle 4 = % x, %v", dst4, err)
	}
}

func TestShuffleErrors(t *testing.T) {
	for _, f := range []struct {
		name string
		fn   func(int, []byte, []byte) error
	}{{"shuffle", ShuffleBytes}, {"unshuffle", UnshuffleBytes}} {
		for _, c := range []struct {
			size     int
			src, dst int
		}{
			{2, 3, 3},
			{4, 6, 6},
			{2, 4, 3},
			{2, 4, 5},
			{0, 4, 4},
			{-1, 4, 4},
			{1, 1, 0},
		} {
			if err := f.fn(c.size, make([]byte, c.src), make([]byte, c.dst)); !errors.Is(err, ErrShape) {
				t.Errorf("%s(size %d, src %d, dst %d) = %v; want ErrShape", f.name, c.size, c.src, c.dst, err)
			}
		}
		if err := f.fn(2, nil, nil); err != nil {
			t.Errorf("%s of nothing: %v", f.name, err)
		}
	}
}
