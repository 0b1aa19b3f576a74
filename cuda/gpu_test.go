package cuda

import (
	"math"
	"path/filepath"
	"slices"
	"testing"

	"github.com/slopeml/slope/convert"
	"github.com/slopeml/slope/cuda/driver"
	"github.com/slopeml/slope/cuda/gputest"
	"github.com/slopeml/slope/ops"
	"github.com/slopeml/slope/ops/opstest"
	"github.com/slopeml/slope/runtime"
	"github.com/slopeml/slope/testmodels"
)

// newOrReport makes a backend on GPU 0, or ends the test by gputest's
// rule: without a GPU it fails when SLOPE_REQUIRE_GPU=1 (bench/gpu.sh sets
// it) and is otherwise skipped with "NOT RUN"; with a GPU whose set-up
// fails it fails.
func newOrReport(t *testing.T, act DType) *Backend {
	t.Helper()
	return newWith(t, Options{Activations: act})
}

func newWith(t *testing.T, o Options) *Backend {
	t.Helper()
	o.Log = func(s string) { t.Log(s) }
	b, err := New(o)
	if err != nil {
		gputest.Unavailable(t, err, driver.ErrNoDevice)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func TestConformanceF32(t *testing.T) {
	b := newOrReport(t, F32)
	opstest.Run(t, b, opstest.Tolerance{Abs: 1e-5, Rel: 1e-5})
}

func TestConformanceBF16(t *testing.T) {
	b := newOrReport(t, BF16)
	t.Logf("cuSPARSELt: %v, its bias epilogue used: %v", b.sp != nil, b.ltBias)
	opstest.Run(t, b, opstest.Tolerance{Abs: 1e-2, Rel: 1e-2})
}

// Attention in chunks of queries smaller than the suite's sequences
// (Options.AttentionChunk): the suite's prefills of 16 or more tokens,
// fresh and after past ones, run as several products each.
func TestConformanceF32AttentionChunks(t *testing.T) {
	b := newWith(t, Options{Activations: F32, AttentionChunk: 6})
	opstest.Run(t, b, opstest.Tolerance{Abs: 1e-5, Rel: 1e-5})
}

func TestConformanceBF16AttentionChunks(t *testing.T) {
	b := newWith(t, Options{Activations: BF16, AttentionChunk: 7})
	opstest.Run(t, b, opstest.Tolerance{Abs: 1e-2, Rel: 1e-2})
}

// The fused attention kernel (Options.FusedAttention) at the head sizes
// it takes, through a cache in parts (prefills of 16 or more new tokens
// run in it); then the whole suite with the option on, whose attention
// cases (heads of 5) take the chunked path: it checks that nothing else
// changes.
func TestConformanceBF16FusedAttention(t *testing.T) {
	b := newWith(t, Options{Activations: BF16, FusedAttention: true})
	tol := opstest.Tolerance{Abs: 1e-2, Rel: 1e-2}
	for _, hd := range []int{64, 128} {
		before := b.fusedAttentionCalls
		opstest.RunAttention(t, b, tol, 2, hd)
		if b.fusedAttentionCalls == before {
			t.Fatalf("head size %d: no attention call ran in the fused kernel", hd)
		}
		t.Logf("head size %d: %d attention calls in the fused kernel", hd, b.fusedAttentionCalls-before)
	}
	opstest.Run(t, b, tol)
}

// Only cuSPARSELt's form of 2:4 weights on the device: every 2:4 product
// it can take runs there (decode sizes included).
func TestConformanceBF16LowMemory(t *testing.T) {
	b := newWith(t, Options{Activations: BF16, LowMemory: true})
	opstest.Run(t, b, opstest.Tolerance{Abs: 1e-2, Rel: 1e-2})
}

// The sparse-tensor-core kernel for every 2:4 product it can take.
func TestConformanceBF16TensorCore(t *testing.T) {
	b := newWith(t, Options{Activations: BF16, SpMVMaxRows: -1, TCMaxRows: 16})
	opstest.Run(t, b, opstest.Tolerance{Abs: 1e-2, Rel: 1e-2})
}

// The tensor-core kernel with one K slice per launch (no split-K).
func TestConformanceBF16TensorCoreOneSlice(t *testing.T) {
	b := newWith(t, Options{Activations: BF16, SpMVMaxRows: -1, TCMaxRows: 16, TCBlocks: 1})
	opstest.Run(t, b, opstest.Tolerance{Abs: 1e-2, Rel: 1e-2})
}

// The decode kernel for every 2:4 product it can take.
func TestConformanceBF16DecodeKernel(t *testing.T) {
	b := newWith(t, Options{Activations: BF16, SpMVMaxRows: 1 << 20, TCMaxRows: -1})
	opstest.Run(t, b, opstest.Tolerance{Abs: 1e-2, Rel: 1e-2})
}

func tinyModel(t *testing.T, nm string, be ops.Backend) *runtime.Model {
	t.Helper()
	out := filepath.Join(t.TempDir(), "tiny.slope")
	if _, err := convert.DenseToSlope(t.Context(), convert.Options{In: convert.TinyLabel, Out: out, NM: nm}); err != nil {
		t.Fatal(err)
	}
	m, err := runtime.Open(out, &runtime.Options{Backend: be})
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

// errs returns the largest |Δ| and the relative L2 error ‖got-want‖/‖want‖
// over unmasked positions.
func errs(got, want [][][]float32, mask [][]int32) (maxAbs, relL2 float64) {
	var num, den float64
	for b := range want {
		for s := range want[b] {
			if mask != nil && mask[b][s] == 0 {
				continue
			}
			for v := range want[b][s] {
				d := float64(got[b][s][v] - want[b][s][v])
				maxAbs = math.Max(maxAbs, math.Abs(d))
				num += d * d
				den += float64(want[b][s][v]) * float64(want[b][s][v])
			}
		}
	}
	return maxAbs, math.Sqrt(num / den)
}

// The whole model on the GPU against transformers' logits: float32 to
// the CPU runtime's bound, bf16 within bf16 tolerance.
func TestModelMatchesReference(t *testing.T) {
	ref, err := testmodels.LoadReference()
	if err != nil {
		t.Fatal(err)
	}
	for _, act := range []DType{F32, BF16} {
		be := newOrReport(t, act)
		for _, c := range []struct {
			name string
			nm   string
			ids  [][]int64
			mask [][]int64
			want [][][]float32
		}{
			{"dense", "dense", ref.InputIDs, nil, ref.Logits},
			{"dense left-padded", "dense", ref.InputIDsPadded, ref.AttentionMask, ref.LogitsPadded},
			{"2:4 magnitude", "2:4", ref.InputIDs, nil, ref.LogitsPruned24Magnitude},
		} {
			m := tinyModel(t, c.nm, be)
			var mask [][]int32
			if c.mask != nil {
				mask = i32(c.mask)
			}
			got, err := m.Forward(i32(c.ids), mask)
			if err != nil {
				t.Fatalf("%s %s: %v", be.Name(), c.name, err)
			}
			maxAbs, rel := errs(got, c.want, mask)
			t.Logf("%s %s: max |Δlogit| %.3g, relative L2 %.3g", be.Name(), c.name, maxAbs, rel)
			if act == F32 && maxAbs > 1e-4 {
				t.Errorf("%s %s: max |Δlogit| %g > 1e-4", be.Name(), c.name, maxAbs)
			}
			if act == BF16 && rel > 1e-2 {
				t.Errorf("%s %s: relative L2 %g > 1e-2", be.Name(), c.name, rel)
			}
		}
	}
}

// Greedy generation in float32 mode agrees token for token with
// transformers (and so with the CPU runtime).
func TestGreedyF32MatchesReference(t *testing.T) {
	ref, err := testmodels.LoadReference()
	if err != nil {
		t.Fatal(err)
	}
	be := newOrReport(t, F32)
	m := tinyModel(t, "dense", be)
	prompt := i32(ref.GreedyPrompt)
	want := i32(ref.GreedyOutput)[0][len(prompt[0]):]
	got, err := m.Generate(t.Context(), prompt, runtime.GenerateOptions{MaxTokens: len(want), EOS: -1, Pad: 1})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got[0], want) {
		t.Fatalf("greedy tokens %v, transformers %v", got[0], want)
	}
}

// Incremental decoding on the GPU gives the logits of the CPU runtime.
func TestKVCacheAgainstCPU(t *testing.T) {
	ref, err := testmodels.LoadReference()
	if err != nil {
		t.Fatal(err)
	}
	be := newOrReport(t, F32)
	gm, cm := tinyModel(t, "2:4", be), tinyModel(t, "2:4", nil)
	ids, mask := i32(ref.InputIDsPadded), i32(ref.AttentionMask)
	var keep []bool // per output row: a real token (padding rows are not compared)
	run := func(m *runtime.Model) [][]float32 {
		keep = keep[:0]
		s, err := m.NewSession(len(ids), len(ids[0]))
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		var out [][]float32
		split := 3
		for _, part := range [][2]int{{0, split}, {split, len(ids[0])}} {
			pi, pm := make([][]int32, len(ids)), make([][]int32, len(ids))
			for b := range ids {
				pi[b], pm[b] = ids[b][part[0]:part[1]], mask[b][part[0]:part[1]]
			}
			v, err := s.Step(pi, pm)
			if err != nil {
				t.Fatal(err)
			}
			for r := 0; r < v.Rows; r++ {
				out = append(out, slices.Clone(v.Row(r)))
				keep = append(keep, pm[r/len(pi[0])][r%len(pi[0])] == 1)
			}
		}
		return out
	}
	g, c := run(gm), run(cm)
	var d float64
	for r := range c {
		if !keep[r] {
			continue
		}
		for v := range c[r] {
			d = math.Max(d, math.Abs(float64(g[r][v]-c[r][v])))
		}
	}
	t.Logf("GPU vs CPU with the KV cache: max |Δlogit| %.3g", d)
	if d > 1e-4 {
		t.Fatalf("GPU and CPU logits differ by %g", d)
	}
}

// TestInferenceProfile: with Options.Profile, a prefill and a decode step
// of the tiny model leave a report that names each op's forward per count
// of new tokens.
func TestInferenceProfile(t *testing.T) {
	b := newWith(t, Options{Activations: BF16, Profile: true})
	m := tinyModel(t, "2:4", b)
	s, err := m.NewSession(1, 24)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ids, mask := [][]int32{make([]int32, 20)}, [][]int32{make([]int32, 20)}
	for i := range ids[0] {
		ids[0][i], mask[0][i] = int32(2+i), 1
	}
	if _, err := s.Step(ids, mask); err != nil {
		t.Fatal(err)
	}
	if _, err := s.StepLast([][]int32{{7}}, [][]int32{{1}}); err != nil {
		t.Fatal(err)
	}
	checkProfile(t, b, 1, "run", "CausalAttention layers.*.attn forward, 20 new tokens", "CausalAttention layers.*.attn forward, 1 new tokens",
		"SlopeLinear layers.*.fc1 forward, 20 new tokens", "Embedding embed forward, 1 new tokens")
}
