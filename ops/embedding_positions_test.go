package ops

import (
	"math/rand/v2"
	"testing"
)

// TestEmbeddingPositions: the one-pass positions equal EmbeddingPosition,
// the per-token reference, on random masks (left padding, holes, past
// tokens), and the iteration stops when asked.
func TestEmbeddingPositions(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for trial := range 200 {
		total := 1 + rng.IntN(40)
		past := rng.IntN(total)
		mask := make([]int32, total)
		for i := range mask {
			if rng.IntN(4) != 0 {
				mask[i] = 1
			}
		}
		seq := total - past
		n := 0
		for tok, p := range EmbeddingPositions(mask, past, seq) {
			if tok != n {
				t.Fatalf("trial %d: token %d yielded as %d", trial, n, tok)
			}
			if want := EmbeddingPosition(mask, past+tok); p != want {
				t.Fatalf("trial %d (mask %v, past %d): token %d at position %d, want %d", trial, mask, past, tok, p, want)
			}
			n++
		}
		if n != seq {
			t.Fatalf("trial %d: %d positions for %d tokens", trial, n, seq)
		}
	}
	n := 0
	for range EmbeddingPositions([]int32{1, 1, 1, 1}, 0, 4) {
		if n++; n == 2 {
			break
		}
	}
	if n != 2 {
		t.Fatalf("the iteration went on after break: %d", n)
	}
}
