package format

import (
	"runtime"
	"sync"
)

// parallelMin is the number of elements below which the codecs and
// pruning helpers stay on one goroutine (starting goroutines costs more
// than the work).
const parallelMin = 1 << 18

// parallelFor splits [0, n) into up to GOMAXPROCS contiguous chunks whose
// bounds are multiples of align (except the end) and runs fn on each,
// concurrently when n is large. Results of fn must depend only on its
// chunk, which makes them independent of the core count.
func parallelFor(n, align int, fn func(lo, hi int)) {
	t := runtime.GOMAXPROCS(0)
	if n < 2*parallelMin || t <= 1 {
		if n > 0 {
			fn(0, n)
		}
		return
	}
	t = min(t, n/parallelMin)
	units := (n + align - 1) / align
	var wg sync.WaitGroup
	for w := 0; w < t; w++ {
		lo, hi := units*w/t*align, min(units*(w+1)/t*align, n)
		if lo >= hi {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			fn(lo, hi)
		}()
	}
	wg.Wait()
}
