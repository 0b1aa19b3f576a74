package cpu

import (
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// ParallelFor splits [0, n) into min(t, n) contiguous chunks of nearly
// equal size (chunk w is [n·w/t, n·(w+1)/t)) and runs fn on each, one of
// them on the calling goroutine; it returns when all are done. Which
// goroutine runs a chunk is not fixed, its bounds are: results that
// depend only on the chunk bounds are deterministic.
//
// The other chunks go to a pool of persistent workers that spin briefly
// after each job before parking, so the small parallel regions of decode
// (a few microseconds of work each, hundreds per token) do not pay a
// goroutine start and a futex wake-up each time. A call made while the
// pool is busy (a nested or concurrent call) spawns goroutines instead.
func ParallelFor(n, t int, fn func(lo, hi int)) {
	if t > n {
		t = n
	}
	if t <= 1 {
		if n > 0 {
			fn(0, n)
		}
		return
	}
	p := thePool()
	if t-1 > len(p.workers) || !p.mu.TryLock() {
		spawnFor(n, t, fn)
		return
	}
	p.run(n, t, fn)
	p.mu.Unlock()
}

// spawnFor is ParallelFor with fresh goroutines.
func spawnFor(n, t int, fn func(lo, hi int)) {
	var wg sync.WaitGroup
	wg.Add(t - 1)
	for w := 0; w < t-1; w++ {
		lo, hi := n*w/t, n*(w+1)/t
		go func() {
			defer wg.Done()
			fn(lo, hi)
		}()
	}
	fn(n*(t-1)/t, n)
	wg.Wait()
}

// spinFor is how long an idle worker polls for the next job before it
// parks: longer than the gaps between the parallel regions of a decode
// step, far shorter than anything a user would notice as load.
const spinFor = 200 * time.Microsecond

type pool struct {
	mu      sync.Mutex // one job at a time
	workers []*worker
	cur     atomic.Pointer[job]
}

// job is one ParallelFor call: chunks [0, t) of fn over n, claimed
// through next. Each call has its own job, so a worker that arrives late
// claims from the old job's counters (and finds nothing left).
type job struct {
	fn      func(lo, hi int)
	n, t    int
	next    atomic.Int64
	pending atomic.Int64 // chunks not yet finished
}

type worker struct {
	parked atomic.Bool
	wake   chan struct{}
}

var (
	poolOnce sync.Once
	poolInst *pool
)

func thePool() *pool {
	poolOnce.Do(func() {
		p := &pool{}
		for range max(runtime.GOMAXPROCS(0)-1, 0) {
			w := &worker{wake: make(chan struct{}, 1)}
			p.workers = append(p.workers, w)
			go p.loop(w)
		}
		poolInst = p
	})
	return poolInst
}

// run publishes a job, helps with it, and waits for its last chunk.
func (p *pool) run(n, t int, fn func(lo, hi int)) {
	j := &job{fn: fn, n: n, t: t}
	j.pending.Store(int64(t))
	p.cur.Store(j)
	for _, w := range p.workers[:t-1] {
		if w.parked.Load() {
			select {
			case w.wake <- struct{}{}:
			default:
			}
		}
	}
	j.work()
	for i := 0; j.pending.Load() > 0; i++ {
		if i > 64 {
			runtime.Gosched()
		}
	}
}

// work claims and runs chunks of j until none is left.
func (j *job) work() {
	for {
		c := int(j.next.Add(1) - 1)
		if c >= j.t {
			return
		}
		j.fn(j.n*c/j.t, j.n*(c+1)/j.t)
		j.pending.Add(-1)
	}
}

// loop is a worker: it runs each new job's chunks, polls for the next
// job for spinFor, then parks until woken.
func (p *pool) loop(w *worker) {
	var seen *job
	for {
		deadline := time.Now().Add(spinFor)
		for i := 0; p.cur.Load() == seen; i++ {
			if i&255 != 255 {
				continue
			}
			if time.Now().Before(deadline) {
				runtime.Gosched()
				continue
			}
			w.parked.Store(true)
			if p.cur.Load() == seen {
				<-w.wake
			}
			w.parked.Store(false)
			deadline = time.Now().Add(spinFor)
		}
		seen = p.cur.Load()
		seen.work()
	}
}
