package ops

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
)

// embeddingPositionRef is OPT's position of token t of a sequence whose
// mask up to and including t is mask, counted per token: the number of
// real tokens before and at t, minus one; -1 for padding.
func embeddingPositionRef(mask []int32, t int) int {
	if mask[t] == 0 {
		return -1
	}
	c := 0
	for _, m := range mask[:t+1] {
		c += int(m)
	}
	return c - 1
}

// TestEmbeddingPositions: the one-pass positions equal
// embeddingPositionRef, the per-token reference, on random masks (left padding, holes, past
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
		for tok, p := range embeddingPositions(mask, past, seq) {
			if tok != n {
				t.Fatalf("trial %d: token %d yielded as %d", trial, n, tok)
			}
			if want := embeddingPositionRef(mask, past+tok); p != want {
				t.Fatalf("trial %d (mask %v, past %d): token %d at position %d, want %d", trial, mask, past, tok, p, want)
			}
			n++
		}
		if n != seq {
			t.Fatalf("trial %d: %d positions for %d tokens", trial, n, seq)
		}
	}
	n := 0
	for range embeddingPositions([]int32{1, 1, 1, 1}, 0, 4) {
		if n++; n == 2 {
			break
		}
	}
	if n != 2 {
		t.Fatalf("the iteration went on after break: %d", n)
	}
}

// TestEmbeddingRows: rows in order with their ids and position rows
// (offset added), and errors for an id outside the vocabulary and a
// position outside the table.
func TestEmbeddingRows(t *testing.T) {
	c := &Call{Batch: 2, Seq: 3, Past: 1, IDs: []int32{5, 6, 7, 8, 9, 4}, Mask: []int32{1, 1, 1, 1, 0, 1, 1, 1}}
	var got [][3]int
	if err := EmbeddingRows(c, 10, 2, 8, func(r, id, p int) error {
		got = append(got, [3]int{r, id, p})
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	want := [][3]int{{0, 5, 3}, {1, 6, 4}, {2, 7, 5}, {3, 8, 2}, {4, 9, 3}, {5, 4, 4}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("rows %v, want %v", got, want)
	}
	c.IDs[4] = 10
	if err := EmbeddingRows(c, 10, 2, 8, func(int, int, int) error { return nil }); err == nil || !strings.Contains(err.Error(), "row 4") {
		t.Errorf("id outside the vocabulary: %v", err)
	}
	c.IDs[4] = 9
	if err := EmbeddingRows(c, 10, 2, 5, func(int, int, int) error { return nil }); err == nil || !strings.Contains(err.Error(), "sequence 0") {
		t.Errorf("position outside the table: %v", err)
	}
}
