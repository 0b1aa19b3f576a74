package cpu

import (
	"sync"
	"sync/atomic"
	"testing"
)

// Every index is visited exactly once, chunks have the documented bounds,
// and nested and concurrent calls (which fall back to fresh goroutines)
// complete.
func TestParallelFor(t *testing.T) {
	for _, n := range []int{0, 1, 2, 3, 7, 64, 1000} {
		for _, th := range []int{0, 1, 2, 3, 8} {
			seen := make([]atomic.Int32, n)
			var chunks atomic.Int32
			ParallelFor(n, th, func(lo, hi int) {
				chunks.Add(1)
				for i := lo; i < hi; i++ {
					seen[i].Add(1)
				}
			})
			for i := range seen {
				if seen[i].Load() != 1 {
					t.Fatalf("n=%d t=%d: index %d visited %d times", n, th, i, seen[i].Load())
				}
			}
			if want := min(max(th, 1), n); n > 0 && int(chunks.Load()) != want {
				t.Fatalf("n=%d t=%d: %d chunks, want %d", n, th, chunks.Load(), want)
			}
		}
	}
	// Bounds: chunk w is [n·w/t, n·(w+1)/t).
	var mu sync.Mutex
	got := map[[2]int]bool{}
	ParallelFor(10, 3, func(lo, hi int) { mu.Lock(); got[[2]int{lo, hi}] = true; mu.Unlock() })
	for _, b := range [][2]int{{0, 3}, {3, 6}, {6, 10}} {
		if !got[b] {
			t.Fatalf("chunks %v, want [0,3) [3,6) [6,10)", got)
		}
	}
	// Nested and concurrent.
	var total atomic.Int64
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := 0; r < 200; r++ {
				ParallelFor(4, 2, func(lo, hi int) {
					ParallelFor(hi-lo, 2, func(a, b int) { total.Add(int64(b - a)) })
				})
			}
		}()
	}
	wg.Wait()
	if total.Load() != 4*200*4 {
		t.Fatalf("nested/concurrent: %d units, want %d", total.Load(), 4*200*4)
	}
}
