package runtime

import (
	"math"
	"math/rand/v2"
	"slices"
	"sync"
)

// sample picks a token from one row of logits: greedy (the lowest id
// among equal maxima) when Temperature is not positive; otherwise from
// softmax(logits/Temperature) restricted to a cut of the vocabulary. The
// cut orders tokens most likely first (ties: lower id first) and keeps
// the TopK first, then the shortest prefix of those whose mass reaches
// TopP of theirs (neither: every token). One uniform draw then walks the
// cut in id order, as a multinomial draw over the masked distribution
// does. NaN logits get weight 0 and are never picked.
//
// The cut is found by selection, not by sorting: it is every token at or
// before its last member in the order, so quickselect finds that member
// (by rank for TopK, by mass for TopP) in time linear in the vocabulary
// on average, and the draw tests each id against it. sampleRef (the
// tests) is the same rule written with a full sort; the two agree except
// where a prefix's mass is within float64 rounding of TopP (the sums run
// in different orders).
func sample(logits []float32, o GenerateOptions, rng *rand.Rand) int {
	t := o.Temperature
	mx := float32(math.Inf(-1))
	best := -1
	for i, v := range logits {
		if v > mx || best < 0 && !math.IsNaN(float64(v)) {
			mx, best = v, i
		}
	}
	if best < 0 {
		return 0 // every logit is NaN: nothing to prefer
	}
	if !(t > 0) {
		return best
	}
	sc := samplePool.Get().(*sampleScratch)
	defer samplePool.Put(sc)
	// Weights exp((v - max)/T) in float64: 1 for the maximum, never NaN
	// (a tiny T sends the others to 0; NaN logits get 0).
	w := slices.Grow(sc.w[:0], len(logits))[:len(logits)]
	sc.w = w
	mxf := float64(mx)
	for i, v := range logits {
		if x := (float64(v) - mxf) / t; x == x { // not NaN
			w[i] = math.Exp(x)
		} else {
			w[i] = 0
		}
	}
	k := o.TopK
	if k <= 0 || k > len(w) {
		k = len(w)
	}
	topP := o.TopP > 0 && o.TopP < 1
	last := cand{w: 0, id: int32(len(w) - 1)} // the cut's last member: all ids
	var cs []cand                             // the cut before TopP, in no order
	switch {
	case k <= heapMaxK && k < len(w):
		cs = bestByHeap(sc, w, k)
		last = cs[0]
	case k < len(w):
		cs = allCands(sc, w)
		selectRank(cs, k-1)
		last, cs = cs[k-1], cs[:k]
	}
	if topP {
		var total float64
		if cs == nil {
			for _, x := range w {
				total += x
			}
			// The nucleus is usually short: try the best 64 first.
			cs = bestByHeap(sc, w, min(heapMaxK/4, len(w)))
			var m float64
			for _, c := range cs {
				m += c.w
			}
			if m < o.TopP*total {
				cs = allCands(sc, w)
			}
		} else {
			for _, c := range cs {
				total += c.w
			}
		}
		last = selectMass(cs, o.TopP*total)
	}
	in := func(i int, x float64) bool { return x > last.w || x == last.w && i <= int(last.id) }
	var sum float64
	for i, x := range w {
		if in(i, x) {
			sum += x
		}
	}
	r := rng.Float64() * sum
	pick := best
	for i, x := range w {
		if x == 0 || !in(i, x) {
			continue
		}
		if r -= x; r < 0 {
			return i
		}
		pick = i
	}
	return pick // rounding left r at 0: the cut's last id of positive weight
}

// heapMaxK is the largest k whose top k a heap selects (one comparison
// with the heap's worst per token); larger ones go through quickselect.
const heapMaxK = 256

// allCands returns every token as a candidate, in sc's memory.
func allCands(sc *sampleScratch, w []float64) []cand {
	cs := slices.Grow(sc.cs[:0], len(w))[:len(w)]
	sc.cs = cs
	for i, x := range w {
		cs[i] = cand{x, int32(i)}
	}
	return cs
}

// bestByHeap returns the k best tokens (1 <= k <= len(w)) in sc's memory,
// the worst of them first (a heap with the worst at its root).
func bestByHeap(sc *sampleScratch, w []float64, k int) []cand {
	h := slices.Grow(sc.cs[:0], k)[:0]
	down := func(i int) {
		for {
			l, m := 2*i+1, i
			if l < len(h) && before(h[m], h[l]) {
				m = l
			}
			if r := l + 1; r < len(h) && before(h[m], h[r]) {
				m = r
			}
			if m == i {
				return
			}
			h[i], h[m] = h[m], h[i]
			i = m
		}
	}
	for i, x := range w {
		c := cand{x, int32(i)}
		if len(h) < k {
			h = append(h, c)
			for j := len(h) - 1; j > 0; {
				p := (j - 1) / 2
				if !before(h[p], h[j]) {
					break
				}
				h[j], h[p] = h[p], h[j]
				j = p
			}
			continue
		}
		if before(c, h[0]) {
			h[0] = c
			down(0)
		}
	}
	sc.cs = h
	return h
}

// cand is a token and its weight, ordered by before.
type cand struct {
	w  float64
	id int32
}

// before is the cut's order: larger weight first, then lower id (a total
// order: ids are distinct).
func before(a, b cand) bool { return a.w > b.w || a.w == b.w && a.id < b.id }

// sampleScratch is sample's per-call memory: the weights and the
// candidates, a vocabulary each.
type sampleScratch struct {
	w  []float64
	cs []cand
}

var samplePool = sync.Pool{New: func() any { return new(sampleScratch) }}

// partition orders cs around a median-of-three pivot: it returns p with
// cs[:p] before cs[p] and cs[p+1:] after it.
func partition(cs []cand) int {
	n := len(cs)
	a, b, c := 0, n/2, n-1
	if before(cs[b], cs[a]) {
		a, b = b, a
	}
	if before(cs[c], cs[b]) {
		b = c
		if before(cs[b], cs[a]) {
			b = a
		}
	}
	cs[b], cs[n-1] = cs[n-1], cs[b]
	piv, p := cs[n-1], 0
	for i := 0; i < n-1; i++ {
		if before(cs[i], piv) {
			cs[i], cs[p] = cs[p], cs[i]
			p++
		}
	}
	cs[p], cs[n-1] = cs[n-1], cs[p]
	return p
}

// selectRank reorders cs so that cs[r] is the element of rank r in the
// order, with the r elements before it in cs[:r] (quickselect).
func selectRank(cs []cand, r int) {
	lo, hi := 0, len(cs)
	for hi-lo > 1 {
		p := lo + partition(cs[lo:hi])
		switch {
		case p == r:
			return
		case p < r:
			lo = p + 1
		default:
			hi = p
		}
	}
}

// selectMass returns the last member of the shortest prefix of cs, in
// the order, whose weights reach need (the last element when none does),
// and leaves that prefix in cs's front. Quickselect on mass: each
// partition decides whether the prefix ends before, at or after the
// pivot; a short remaining range is sorted and walked.
func selectMass(cs []cand, need float64) cand {
	lo, hi := 0, len(cs) // the prefix ends within cs[lo:hi]; acc is the mass of cs[:lo]
	var acc float64
	for hi-lo > 32 {
		p := lo + partition(cs[lo:hi])
		var m float64
		for _, c := range cs[lo:p] {
			m += c.w
		}
		switch {
		case acc+m >= need:
			hi = p
		case acc+m+cs[p].w >= need:
			return cs[p]
		default:
			acc += m + cs[p].w
			lo = p + 1
		}
	}
	rest := cs[lo:hi]
	slices.SortFunc(rest, func(a, b cand) int {
		if before(a, b) {
			return -1
		}
		return 1
	})
	for _, c := range rest {
		if acc += c.w; acc >= need {
			return c
		}
	}
	if len(rest) > 0 {
		return rest[len(rest)-1]
	}
	return cs[lo-1] // lo > 0: the whole prefix before the range fell short only by rounding
}
