package runtime

import (
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/slopeml/slope/testmodels"
)

func TestSampleRules(t *testing.T) {
	logits := []float32{1, 3, 2, 3, -1}
	rng := rand.New(rand.NewPCG(1, 2))
	if got := sample(logits, GenerateOptions{}, rng); got != 1 {
		t.Errorf("greedy picked %d, want 1 (the lowest id among equal maxima)", got)
	}
	if got := sample(logits, GenerateOptions{Temperature: 1, TopK: 1}, rng); got != 1 {
		t.Errorf("top-k 1 picked %d", got)
	}
	// Top-p 0.5 keeps only the two tokens of logit 3 (together > 0.5).
	for range 200 {
		if got := sample(logits, GenerateOptions{Temperature: 1, TopP: 0.5}, rng); got != 1 && got != 3 {
			t.Fatalf("top-p 0.5 picked %d", got)
		}
	}
	// Temperature 1 follows softmax: frequencies within 5 standard errors.
	const n = 20000
	counts := make([]int, len(logits))
	for range n {
		counts[sample(logits, GenerateOptions{Temperature: 1}, rng)]++
	}
	var z float64
	for _, v := range logits {
		z += math.Exp(float64(v))
	}
	for i, v := range logits {
		p := math.Exp(float64(v)) / z
		se := math.Sqrt(p * (1 - p) / n)
		if f := float64(counts[i]) / n; math.Abs(f-p) > 5*se+1e-3 {
			t.Errorf("token %d: frequency %.4f, softmax %.4f", i, f, p)
		}
	}
}

func TestGenerateSeededAndBatched(t *testing.T) {
	ref, err := testmodels.LoadReference()
	if err != nil {
		t.Fatal(err)
	}
	m := tiny(t, "2:4")
	prompts := [][]int32{i32(ref.InputIDs)[0][:5], i32(ref.InputIDs)[1][:9]}
	o := GenerateOptions{MaxTokens: 6, Temperature: 0.8, TopK: 50, Seed: 7, EOS: -1, Pad: 1}
	a, err := m.Generate(t.Context(), prompts, o)
	if err != nil {
		t.Fatal(err)
	}
	b, err := m.Generate(t.Context(), prompts, o)
	if err != nil {
		t.Fatal(err)
	}
	for i := range a {
		if !slices.Equal(a[i], b[i]) || len(a[i]) != 6 {
			t.Fatalf("same seed, different tokens: %v vs %v", a, b)
		}
	}
	// Greedy in a left-padded batch equals each prompt decoded alone.
	g := GenerateOptions{MaxTokens: 6, EOS: -1, Pad: 1}
	batch, err := m.Generate(t.Context(), prompts, g)
	if err != nil {
		t.Fatal(err)
	}
	for i, p := range prompts {
		alone, err := m.Generate(t.Context(), [][]int32{p}, g)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(alone[0], batch[i]) {
			t.Errorf("prompt %d: alone %v, in a padded batch %v", i, alone[0], batch[i])
		}
	}
	// EOS stops a sequence and is kept.
	first := batch[0][0]
	stop, err := m.Generate(t.Context(), prompts[:1], GenerateOptions{MaxTokens: 6, EOS: int(first), Pad: 1})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(stop[0], []int32{first}) {
		t.Errorf("EOS %d: got %v", first, stop[0])
	}
}

// Edge cases: a temperature too small for float64 behaves as greedy (the
// maximum's weight is 1, the others 0); NaN logits are never picked;
// top-k keeps exactly the k best (ties to the lower id) whatever the
// vocabulary order.
func TestSampleEdges(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	nan := float32(math.NaN())
	logits := []float32{nan, 1, 3, nan, 2, 3, -1}
	for range 200 {
		if got := sample(logits, GenerateOptions{Temperature: 1e-320}, rng); got != 2 && got != 5 {
			t.Fatalf("tiny temperature picked %d", got)
		}
		if got := sample(logits, GenerateOptions{Temperature: 1}, rng); got == 0 || got == 3 {
			t.Fatalf("picked a NaN logit (%d)", got)
		}
		if got := sample(logits, GenerateOptions{Temperature: 100, TopK: 3}, rng); got != 2 && got != 5 && got != 4 {
			t.Fatalf("top-k 3 picked %d", got)
		}
	}
	if got := sample([]float32{nan, nan}, GenerateOptions{Temperature: 1}, rng); got != 0 {
		t.Errorf("all NaN: %d", got)
	}
	// A large vocabulary with top-k: the heap keeps the k largest.
	big := make([]float32, 50000)
	for i := range big {
		big[i] = float32(i % 1000)
	}
	seen := map[int]bool{}
	for range 400 {
		seen[sample(big, GenerateOptions{Temperature: 1e-3, TopK: 5}, rng)] = true
	}
	for id := range seen {
		if big[id] != 999 {
			t.Fatalf("top-k 5 at a tiny temperature picked id %d (logit %g)", id, big[id])
		}
	}
}

func BenchmarkSample(b *testing.B) {
	rng := rand.New(rand.NewPCG(1, 2))
	logits := make([]float32, 50272)
	for i := range logits {
		logits[i] = float32(rng.NormFloat64())
	}
	for _, o := range []GenerateOptions{{}, {Temperature: 0.8}, {Temperature: 0.8, TopK: 50}, {Temperature: 0.8, TopP: 0.9}} {
		b.Run(fmt.Sprintf("T=%g,k=%d,p=%g", o.Temperature, o.TopK, o.TopP), func(b *testing.B) {
			for b.Loop() {
				sample(logits, o, rng)
			}
		})
	}
}

// sampleRef is sample written plainly: every id sorted most likely first
// (ties: lower id first), cut to top-k, then to the shortest prefix
// holding top-p of the cut's mass (summed in that order), and one draw
// walking the cut in id order.
func sampleRef(logits []float32, o GenerateOptions, rng *rand.Rand) int {
	best := -1
	for i, v := range logits {
		if !math.IsNaN(float64(v)) && (best < 0 || v > logits[best]) {
			best = i
		}
	}
	if best < 0 {
		return 0
	}
	if !(o.Temperature > 0) {
		return best
	}
	w := make([]float64, len(logits))
	for i, v := range logits {
		if x := (float64(v) - float64(logits[best])) / o.Temperature; x == x {
			w[i] = math.Exp(x)
		}
	}
	ids := make([]int, len(w))
	for i := range ids {
		ids[i] = i
	}
	slices.SortStableFunc(ids, func(a, b int) int {
		switch {
		case w[a] > w[b]:
			return -1
		case w[a] < w[b]:
			return 1
		}
		return 0
	})
	if o.TopK > 0 && o.TopK < len(ids) {
		ids = ids[:o.TopK]
	}
	if o.TopP > 0 && o.TopP < 1 {
		var total, acc float64
		for _, id := range ids {
			total += w[id]
		}
		for i, id := range ids {
			if acc += w[id]; acc >= o.TopP*total {
				ids = ids[:i+1]
				break
			}
		}
	}
	slices.Sort(ids)
	var sum float64
	for _, id := range ids {
		sum += w[id]
	}
	r := rng.Float64() * sum
	pick := best
	for _, id := range ids {
		if w[id] == 0 {
			continue
		}
		if r -= w[id]; r < 0 {
			return id
		}
		pick = id
	}
	return pick
}

// TestSampleMatchesReference: with top-k or top-p, sample picks the
// token sampleRef picks from the same random stream, over peaked, flat
// and tied logits and vocabularies from 5 ids to OPT's 50,272 (its
// selections by rank and by mass change no pick).
func TestSampleMatchesReference(t *testing.T) {
	gen := rand.New(rand.NewPCG(3, 4))
	shapes := map[string]func(i int) float32{
		"normal": func(int) float32 { return float32(gen.NormFloat64()) },
		"peaked": func(int) float32 { return float32(8 * gen.NormFloat64()) },
		"ties":   func(int) float32 { return float32(gen.IntN(4)) },
		"nan": func(i int) float32 {
			if i%7 == 0 {
				return float32(math.NaN())
			}
			return float32(gen.NormFloat64())
		},
		"ascending": func(i int) float32 { return float32(i) / 64 }, // sorted input: the pivots' worst case
	}
	opts := []GenerateOptions{{Temperature: 0.8, TopK: 50}, {Temperature: 0.8, TopP: 0.9}, {Temperature: 1.3, TopP: 0.5},
		{Temperature: 0.7, TopK: 200, TopP: 0.95}, {Temperature: 1, TopP: 0.999}, {Temperature: 1, TopK: 1},
		{Temperature: 2, TopK: 1 << 20, TopP: 0.01}}
	names := slices.Sorted(maps.Keys(shapes))
	for _, name := range names {
		f := shapes[name]
		for _, n := range []int{5, 300, 5000, 50272} {
			logits := make([]float32, n)
			for i := range logits {
				logits[i] = f(i)
			}
			for _, o := range opts {
				a, b := rand.New(rand.NewPCG(9, uint64(n))), rand.New(rand.NewPCG(9, uint64(n)))
				for draw := range max(2, 100000/n) {
					if got, want := sample(logits, o, a), sampleRef(logits, o, b); got != want {
						t.Fatalf("%s logits, %d ids, %+v, draw %d: sample picked %d, the reference %d", name, n, o, draw, got, want)
					}
				}
			}
		}
	}
}

// TestRepetitionPenalty: transformers' rule on one row (divide positive
// logits, multiply negative ones, once per distinct token), and greedy
// generation with it equals a plain loop that runs Forward on the whole
// sequence so far and applies the rule to the last position's logits.
func TestRepetitionPenalty(t *testing.T) {
	row := []float32{2, -2, 0.5, 1, 0}
	penalizeRepeats(row, map[int32]bool{0: true, 1: true, 4: true, 99: true, -1: true}, 2)
	if want := []float32{1, -4, 0.5, 1, 0}; !slices.Equal(row, want) {
		t.Errorf("penalized row %v, want %v", row, want)
	}

	ref, err := testmodels.LoadReference()
	if err != nil {
		t.Fatal(err)
	}
	m := tiny(t, "2:4")
	prompt := i32(ref.InputIDs)[0][:6]
	const n, p = 10, 1.8
	got, err := m.Generate(t.Context(), [][]int32{prompt}, GenerateOptions{MaxTokens: n, RepetitionPenalty: p, EOS: -1, Pad: 1})
	if err != nil {
		t.Fatal(err)
	}
	seq := slices.Clone(prompt)
	for range n {
		l, err := m.Forward([][]int32{seq}, nil)
		if err != nil {
			t.Fatal(err)
		}
		last := slices.Clone(l[0][len(seq)-1])
		seen := map[int32]bool{}
		for _, id := range seq {
			seen[id] = true
		}
		penalizeRepeats(last, seen, p)
		seq = append(seq, int32(sample(last, GenerateOptions{}, nil))) // greedy
	}
	if want := seq[len(prompt):]; !slices.Equal(got[0], want) {
		t.Errorf("generated %v, the Forward loop %v", got[0], want)
	}
	plain, err := m.Generate(t.Context(), [][]int32{prompt}, GenerateOptions{MaxTokens: n, EOS: -1, Pad: 1})
	if err != nil {
		t.Fatal(err)
	}
	if slices.Equal(plain[0], got[0]) {
		t.Errorf("the penalty changed nothing (%v): the test does not exercise it", plain[0])
	}
	for _, bad := range []float64{-1, math.Inf(1), math.NaN()} {
		if _, err := m.Generate(t.Context(), [][]int32{prompt}, GenerateOptions{MaxTokens: 2, RepetitionPenalty: bad}); err == nil {
			t.Errorf("repetition penalty %g accepted", bad)
		}
	}
}
