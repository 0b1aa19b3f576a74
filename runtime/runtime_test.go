package runtime

import (
	"math"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/slopeml/slope/convert"
	"github.com/slopeml/slope/testmodels"
)

// tiny converts the embedded reference model with the given pattern.
func tiny(t *testing.T, nm string) *Model {
	t.Helper()
	return tinyWith(t, convert.Options{NM: nm})
}

// tinyWith converts the embedded reference model with o (Out is set).
func tinyWith(t *testing.T, o convert.Options) *Model {
	t.Helper()
	out := filepath.Join(t.TempDir(), "tiny.slope")
	o.Out = out
	if o.In == "" {
		o.In = convert.TinyLabel
	}
	if _, err := convert.DenseToSlope(t.Context(), o); err != nil {
		t.Fatal(err)
	}
	m, err := Open(out, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func i32(x [][]int64) [][]int32 {
	out := make([][]int32, len(x))
	for i, r := range x {
		out[i] = make([]int32, len(r))
		for j, v := range r {
			out[i][j] = int32(v)
		}
	}
	return out
}

// maxDiff over positions whose mask is 1 (mask nil: all); +Inf when an
// output is NaN or a shape differs, so that no "d > tol" check passes it.
func maxDiff(got, want [][][]float32, mask [][]int32) float64 {
	d := 0.0
	if len(got) != len(want) {
		return math.Inf(1)
	}
	for b := range want {
		if len(got[b]) != len(want[b]) {
			return math.Inf(1)
		}
		for s := range want[b] {
			if mask != nil && mask[b][s] == 0 {
				continue
			}
			if len(got[b][s]) != len(want[b][s]) {
				return math.Inf(1)
			}
			for v := range want[b][s] {
				e := math.Abs(float64(got[b][s][v] - want[b][s][v]))
				if math.IsNaN(e) {
					return math.Inf(1)
				}
				d = math.Max(d, e)
			}
		}
	}
	return d
}

const refTol = 1e-4 // the bound; measured values are logged

func TestForwardMatchesTransformers(t *testing.T) {
	ref, err := testmodels.LoadReference()
	if err != nil {
		t.Fatal(err)
	}
	dense, pruned := tiny(t, "dense"), tiny(t, "2:4")
	for _, c := range []struct {
		name string
		m    *Model
		ids  [][]int64
		mask [][]int64
		want [][][]float32
	}{
		{"dense", dense, ref.InputIDs, nil, ref.Logits},
		{"dense left-padded", dense, ref.InputIDsPadded, ref.AttentionMask, ref.LogitsPadded},
		{"2:4 magnitude", pruned, ref.InputIDs, nil, ref.LogitsPruned24Magnitude},
	} {
		var mask [][]int32
		if c.mask != nil {
			mask = i32(c.mask)
		}
		got, err := c.m.Forward(i32(c.ids), mask)
		if err != nil {
			t.Fatal(err)
		}
		d := maxDiff(got, c.want, mask)
		t.Logf("%s: max |Δlogit| = %.3g", c.name, d)
		if !(d <= refTol) {
			t.Errorf("%s: logits differ from transformers by %g (tolerance %g)", c.name, d, refTol)
		}
	}
	if d := maxDiff(ref.Logits, ref.LogitsPruned24Magnitude, nil); d < 1e-2 {
		t.Fatalf("pruned and dense references differ by only %g: the pruned check proves nothing", d)
	}
}

func TestGreedyMatchesTransformers(t *testing.T) {
	ref, err := testmodels.LoadReference()
	if err != nil {
		t.Fatal(err)
	}
	m := tiny(t, "dense")
	prompt := i32(ref.GreedyPrompt)
	want := i32(ref.GreedyOutput)[0][len(prompt[0]):]
	got, err := m.Generate(t.Context(), prompt, GenerateOptions{MaxTokens: len(want), EOS: -1, Pad: 1})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got[0], want) {
		t.Fatalf("greedy tokens %v, transformers %v", got[0], want)
	}
}

// Incremental decoding with the KV cache gives the logits of a full
// forward pass, also with left padding.
func TestKVCacheMatchesFullForward(t *testing.T) {
	ref, err := testmodels.LoadReference()
	if err != nil {
		t.Fatal(err)
	}
	// Plain 2:4, and 2:4 with merged svd adapters (whose scratch of
	// width out+rank is reused across calls of different row counts).
	for _, o := range []convert.Options{{NM: "2:4"}, {NM: "2:4", Rank: 4, AdapterInit: "svd", MergeAdapters: true}} {
		kvMatchesFull(t, tinyWith(t, o), ref)
	}
}

func kvMatchesFull(t *testing.T, m *Model, ref *testmodels.Reference) {
	ids, mask := i32(ref.InputIDsPadded), i32(ref.AttentionMask)
	full, err := m.Forward(ids, mask)
	if err != nil {
		t.Fatal(err)
	}
	seq := len(ids[0])
	s, err := m.NewSession(len(ids), seq)
	if err != nil {
		t.Fatal(err)
	}
	split := 5
	cut := func(x [][]int32, lo, hi int) [][]int32 {
		out := make([][]int32, len(x))
		for b := range x {
			out[b] = x[b][lo:hi]
		}
		return out
	}
	check := func(lo, hi int) {
		v, err := s.Step(cut(ids, lo, hi), cut(mask, lo, hi))
		if err != nil {
			t.Fatal(err)
		}
		for b := range ids {
			for t2 := lo; t2 < hi; t2++ {
				if mask[b][t2] == 0 {
					continue
				}
				row := v.Row(b*(hi-lo) + t2 - lo)
				for k := range row {
					if d := math.Abs(float64(row[k] - full[b][t2][k])); !(d <= 1e-5) {
						t.Fatalf("seq %d token %d: cached logits differ by %g", b, t2, d)
					}
				}
			}
		}
	}
	check(0, split)
	for p := split; p < seq; p++ {
		check(p, p+1)
	}
}

func TestScore(t *testing.T) {
	ref, err := testmodels.LoadReference()
	if err != nil {
		t.Fatal(err)
	}
	m := tiny(t, "dense")
	ids := i32(ref.InputIDs)[0]
	r, err := m.Score(t.Context(), ids, 0, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Independent: the NLL from the reference logits.
	want := 0.0
	for s := 0; s+1 < len(ids); s++ {
		want -= logSoftmaxAt(ref.Logits[0][s], int(ids[s+1]))
	}
	want /= float64(len(ids) - 1)
	if r.Tokens != len(ids)-1 || !(math.Abs(r.NLL-want) <= 1e-4) {
		t.Fatalf("score %+v, want NLL %g over %d tokens", r, want, len(ids)-1)
	}
}

// A sliding window scores every token once, each from the context the
// recipe gives it: checked against explicit forward passes.
func TestScoreSlidingWindow(t *testing.T) {
	ref, err := testmodels.LoadReference()
	if err != nil {
		t.Fatal(err)
	}
	m := tiny(t, "dense")
	ids := append(i32(ref.InputIDs)[0], i32(ref.InputIDs)[1]...) // 24 tokens
	const window, stride = 7, 3
	r, err := m.Score(t.Context(), ids, window, stride, 0)
	if err != nil {
		t.Fatal(err)
	}
	want, n := 0.0, 0
	for k := 1; k < len(ids); k++ {
		// Target k is scored in the window whose targets include it: the
		// first window covers [1, window), then blocks of stride.
		end := window
		for end <= k {
			end += stride
		}
		end = min(end, len(ids))
		begin := max(0, end-window)
		logits, err := m.Forward([][]int32{ids[begin:end]}, nil)
		if err != nil {
			t.Fatal(err)
		}
		want -= logSoftmaxAt(logits[0][k-1-begin], int(ids[k]))
		n++
	}
	want /= float64(n)
	if r.Tokens != len(ids)-1 || math.Abs(r.NLL-want) > 1e-6 {
		t.Fatalf("score %+v, want NLL %g over %d tokens", r, want, len(ids)-1)
	}
	if _, err := m.Score(t.Context(), ids, 4, 4, 0); err == nil {
		t.Error("stride >= window accepted")
	}
	// A window past the model's positions is refused, not cut.
	if _, err := m.Score(t.Context(), ids, m.MaxPositions()+1, 0, 0); err == nil || !strings.Contains(err.Error(), "positions") {
		t.Errorf("window past the positions: %v", err)
	}
	if w, st, err := m.ScoreWindow(0, 0); err != nil || w != m.MaxPositions() || st != w/2 {
		t.Errorf("ScoreWindow(0, 0) = %d, %d, %v", w, st, err)
	}
}
