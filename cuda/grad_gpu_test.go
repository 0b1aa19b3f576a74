package cuda

import (
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/slopeml/slope/convert"
	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/ops"
	"github.com/slopeml/slope/ops/opstest"
	"github.com/slopeml/slope/train"
)

// TestGradConformanceF32 runs the shared gradient suite (every op's
// forward against float64, its gradients against finite differences,
// accumulation, and the whole tiny model) on the GPU's training ops.
func TestGradConformanceF32(t *testing.T) {
	opstest.RunGrad(t, newWith(t, Options{Activations: F32}))
}

// TestGradConformanceF32AttentionChunks: the attention backward in chunks
// of 4 queries (the suite's sequences are 2-6 and 9-11 tokens long).
func TestGradConformanceF32AttentionChunks(t *testing.T) {
	opstest.RunGrad(t, newWith(t, Options{Activations: F32, AttentionChunk: 4}))
}

// tinySlope converts the embedded tiny OPT to SLoPe 2:4 (fp32), as
// train's tests do.
func tinySlope(t *testing.T) string {
	t.Helper()
	fn := filepath.Join(t.TempDir(), "tiny.slope")
	if _, err := convert.DenseToSlope(t.Context(), convert.Options{In: convert.TinyLabel, Out: fn, NM: "2:4", DType: "fp32"}); err != nil {
		t.Fatal(err)
	}
	return fn
}

// generatedSlope writes a randomly initialised 2:4 model of a larger
// config than the tiny one, with OPT-350m's peculiarities: post-LayerNorm
// layers, project_in and project_out (word_embed_proj_dim below the
// hidden size), GELU.
func generatedSlope(t *testing.T) string { return generatedSlopeHeads(t, 8) }

// generatedSlopeHeads is generatedSlope with heads attention heads
// (8: heads of 32; 4: of 64, which the fused attention kernels take).
func generatedSlopeHeads(t *testing.T, heads int) string {
	t.Helper()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.json")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`{"model_type": "opt", "vocab_size": 1000, "hidden_size": 256, "ffn_dim": 1024,
 "num_hidden_layers": 2, "num_attention_heads": %d, "max_position_embeddings": 128,
 "word_embed_proj_dim": 128, "do_layer_norm_before": false, "activation_function": "gelu",
 "enable_bias": true, "layer_norm_elementwise_affine": true, "tie_word_embeddings": true}`, heads)), 0o644); err != nil {
		t.Fatal(err)
	}
	fn := filepath.Join(dir, "gen.slope")
	if _, err := convert.Init(convert.InitOptions{Config: cfg, Out: fn, NM: "2:4", Seed: 5}); err != nil {
		t.Fatal(err)
	}
	return fn
}

// TestTrainGPUTracksCPU trains a model converted to 2:4 for ten steps on
// the CPU and on the GPU (passes and AdamW there), on the same batches,
// with a mask refresh every 4 steps and lazy adapters from step 7: the
// losses agree at every step, the first step's weight updates agree, and
// so do the weights and transpose masks at the end. Checkpoints cross
// over: the GPU run's step-5 checkpoint resumed on the CPU, and the CPU
// run's on the GPU, end where the straight runs end. Two models: the
// embedded tiny one, and a larger generated one (generatedSlope).
func TestTrainGPUTracksCPU(t *testing.T) {
	// The 24-token sequences' attention in three chunks of queries.
	b := newWith(t, Options{Activations: F32, AttentionChunk: 10})
	t.Run("tiny", func(t *testing.T) { trainTracksCPU(t, b, tinySlope(t), f32Tracking, false) })
	t.Run("generated", func(t *testing.T) { trainTracksCPU(t, b, generatedSlope(t), f32Tracking, false) })
}

// TestTrainGPUBF16TracksCPU is TestTrainGPUTracksCPU with bf16
// activations (mixed precision), within bf16 tolerances: with the 2:4
// products expanded, then on cuSPARSELt.
func TestTrainGPUBF16TracksCPU(t *testing.T) {
	t.Setenv(BF16SparseLtEnv, "0")
	b := newWith(t, Options{Activations: BF16})
	t.Run("tiny", func(t *testing.T) { trainTracksCPU(t, b, tinySlope(t), bf16Tracking, false) })
	t.Run("generated", func(t *testing.T) { trainTracksCPU(t, b, generatedSlope(t), bf16Tracking, false) })
	// With the 2:4 products on cuSPARSELt (BF16SparseLtEnv): the generated
	// model's shapes are ones it takes.
	t.Run("generated-sparselt", func(t *testing.T) {
		t.Setenv(BF16SparseLtEnv, "1")
		bs := newWith(t, Options{Activations: BF16})
		trainTracksCPU(t, bs, generatedSlope(t), bf16Tracking, true)
	})
	// With the fused attention kernels (Options.FusedAttention), heads of
	// 64; it fails if they never ran.
	t.Run("generated-fused-attention", func(t *testing.T) {
		t.Setenv(BF16SparseLtEnv, "1") // with the default 2:4 products
		bf := newWith(t, Options{Activations: BF16, FusedAttention: true})
		trainTracksCPU(t, bf, generatedSlopeHeads(t, 4), bf16Tracking, true)
		if bf.fusedAttentionCalls == 0 || bf.fusedAttentionBackwards == 0 {
			t.Fatalf("fused attention ran %d forwards and %d backwards", bf.fusedAttentionCalls, bf.fusedAttentionBackwards)
		}
		t.Logf("fused attention: %d forwards, %d backwards", bf.fusedAttentionCalls, bf.fusedAttentionBackwards)
	})
}

// tracking holds trainTracksCPU's tolerances: relative to the CPU's loss
// at every step; relative L2 of the first update and of all Params at the
// end; of each Param at the end (0: not checked); the fraction of
// transpose-mask entries that may differ; relative L2 of all AdamW
// moments in the step-5 checkpoints.
type tracking struct{ loss, update, final, perParam, masks, moments float64 }

var (
	f32Tracking = tracking{loss: 1e-4, update: 1e-2, final: 1e-2, perParam: 1e-4, masks: 1e-3, moments: 1e-3}
	// AdamW's first update is about lr·sign(g): each sign a bf16
	// gradient flips costs 2·sqrt(share flipped) of relative L2, so the
	// first update gets a loose bound. The moments hold the gradients
	// (bf16 products) themselves.
	bf16Tracking = tracking{loss: 1e-2, update: 0.25, final: 2e-2, masks: 5e-2, moments: 0.1}
)

func trainTracksCPU(t *testing.T, b *Backend, fn string, tol tracking, wantLt bool) {
	dir := t.TempDir()
	o := train.Options{LR: 1e-3, Clip: 1, MaskRefresh: 4, Threads: 2, TotalSteps: 10, WarmupSteps: 2, Rank: 2, AdapterStart: 7}
	cpu, err := train.New(fn, o)
	if err != nil {
		t.Fatal(err)
	}
	defer cpu.Close()
	og := o
	og.Backend = b
	gpu, err := train.New(fn, og)
	if err != nil {
		t.Fatal(err)
	}
	defer gpu.Close()
	if !gpu.OnDevice() || cpu.OnDevice() {
		t.Fatalf("OnDevice: GPU trainer %v, CPU trainer %v", gpu.OnDevice(), cpu.OnDevice())
	}
	if wantLt {
		requireLtForms(t, b)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	const batch, seq = 3, 24 // >= 16: the forward's GEMM attention path too
	batches := make([][][]int32, 10)
	for s := range batches {
		batches[s] = randBatch(rng, cpu.Vocab(), batch, seq)
	}
	before := map[string][]float32{}
	for _, p := range cpu.Params() {
		before[p.Name] = append([]float32(nil), p.Value...)
	}
	lossCPU := make([]float64, 10)
	for step := 1; step <= 10; step++ {
		ids := batches[step-1]
		lc, err := cpu.Step(ids)
		if err != nil {
			t.Fatal(err)
		}
		lg, err := gpu.Step(ids)
		if err != nil {
			t.Fatalf("GPU step %d: %v", step, err)
		}
		lossCPU[step-1] = lc
		t.Logf("step %d: loss CPU %.6f GPU %.6f", step, lc, lg)
		if math.Abs(lg-lc) > tol.loss*math.Abs(lc) {
			t.Errorf("step %d: loss %.7f on the GPU, %.7f on the CPU", step, lg, lc)
		}
		if step == 1 {
			// The first update: AdamW's first step moves each value by
			// about lr·sign(g), so this compares the gradients' signs and
			// the clipping; values whose gradient is near zero may differ.
			if err := gpu.SyncHost(); err != nil {
				t.Fatal(err)
			}
			compareParams(t, "step 1 update", cpu.Params(), gpu.Params(), before, tol.update, 0)
		}
		if step == 5 {
			for _, c := range []struct {
				tr   *train.Trainer
				name string
			}{{cpu, "cpu5.slope"}, {gpu, "gpu5.slope"}} {
				if err := c.tr.Save(filepath.Join(dir, c.name)); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	if err := gpu.SyncHost(); err != nil {
		t.Fatal(err)
	}
	checkForms(t, b) // the Params with cuSPARSELt forms, if any
	if len(gpu.Params()) != len(cpu.Params()) || len(cpu.Params()) <= len(before) {
		t.Fatalf("%d params on the GPU, %d on the CPU, %d before the adapters", len(gpu.Params()), len(cpu.Params()), len(before))
	}
	compareParams(t, "after 10 steps", cpu.Params(), gpu.Params(), nil, tol.final, tol.perParam)
	compareMoments(t, filepath.Join(dir, "cpu5.slope"), filepath.Join(dir, "gpu5.slope"), cpu.Params(), tol.moments)
	var masks, differ int
	gp := map[string]*ops.Param{}
	for _, p := range gpu.Params() {
		gp[p.Name] = p
	}
	for _, p := range cpu.Params() {
		if p.NM == nil {
			continue
		}
		kc, kg := tkeepPair(t, p, gp[p.Name])
		for i := range kc {
			masks++
			if kc[i] != kg[i] {
				differ++
			}
		}
	}
	if masks == 0 || float64(differ) > tol.masks*float64(masks) {
		t.Errorf("transpose masks: %d of %d entries differ after the refreshes", differ, masks)
	}

	// The checkpoints cross over: each resumed on the other side for
	// steps 6-10 ends where the CPU run ended.
	for _, c := range []struct {
		ckpt    string
		backend ops.GradBackend
	}{{"gpu5.slope", nil}, {"cpu5.slope", b}} {
		or := o
		or.Backend = c.backend
		tr, err := train.Resume(filepath.Join(dir, c.ckpt), or)
		if err != nil {
			t.Fatal(err)
		}
		for step := 6; step <= 10; step++ {
			l, err := tr.Step(batches[step-1])
			if err != nil {
				t.Fatal(err)
			}
			if math.Abs(l-lossCPU[step-1]) > tol.loss*math.Abs(lossCPU[step-1]) {
				t.Errorf("%s resumed (on the GPU: %v), step %d: loss %.7f, %.7f straight on the CPU", c.ckpt, tr.OnDevice(), step, l, lossCPU[step-1])
			}
		}
		if err := tr.SyncHost(); err != nil {
			t.Fatal(err)
		}
		compareParams(t, c.ckpt+" resumed", cpu.Params(), tr.Params(), nil, tol.final, tol.perParam)
		tr.Close()
	}
}

// compareParams checks ‖got − want‖ <= tol·‖want‖ over all Params, of the
// changes from before when before is not nil; with perParam > 0, also
// each Param on its own (small Params such as biases and adapters weigh
// little in the sum).
func compareParams(t *testing.T, what string, want, got []*ops.Param, before map[string][]float32, tol, perParam float64) {
	t.Helper()
	g := map[string]*ops.Param{}
	for _, p := range got {
		g[p.Name] = p
	}
	var num, den, worst float64
	worstName := ""
	for _, p := range want {
		q := g[p.Name]
		if q == nil || len(q.Value) != len(p.Value) {
			t.Fatalf("%s: param %q missing or resized on the GPU", what, p.Name)
		}
		var pn, pd float64
		for i, w := range p.Value {
			a, c := float64(q.Value[i]), float64(w)
			if before != nil {
				a -= float64(before[p.Name][i])
				c -= float64(before[p.Name][i])
			}
			pn += (a - c) * (a - c)
			pd += c * c
		}
		num, den = num+pn, den+pd
		if strings.HasSuffix(p.Name, ".k_proj.bias") {
			// The loss does not depend on the key bias: it adds q·b_k to
			// every score of a query's row, which the softmax removes. Its
			// gradient is rounding noise, which AdamW scales up to steps
			// of about lr, so its values differ by backend (by 1.66x of
			// their norm after 10 steps of the generated model on an
			// H200); the sum over all Params still counts them.
			continue
		}
		if r := math.Sqrt(pn / max(pd, 1e-30)); r > worst {
			worst, worstName = r, p.Name
		}
	}
	rel := math.Sqrt(num / den)
	t.Logf("%s: relative L2 difference %.3g (largest of one param: %.3g, %s)", what, rel, worst, worstName)
	if !(rel <= tol) {
		t.Errorf("%s: relative L2 difference %.3g, want <= %g", what, rel, tol)
	}
	if perParam > 0 && !(worst <= perParam) {
		t.Errorf("%s: param %s differs by %.3g (relative L2), want <= %g", what, worstName, worst, perParam)
	}
}

// compareMoments checks ‖m_gpu − m_cpu‖ <= tol·‖m_cpu‖ over all the
// first moments of the two checkpoints, and the same for the second
// moments (momentsDiff).
func compareMoments(t *testing.T, cpuCkpt, gpuCkpt string, params []*ops.Param, tol float64) {
	t.Helper()
	rel, n, err := momentsDiff(cpuCkpt, gpuCkpt, params)
	if err != nil {
		t.Fatal(err)
	}
	for i, suffix := range []string{train.Moment1Suffix, train.Moment2Suffix} {
		t.Logf("checkpoints %s and %s, %d %s moments: relative L2 difference %.3g", filepath.Base(cpuCkpt), filepath.Base(gpuCkpt), n, suffix, rel[i])
		if n == 0 || !(rel[i] <= tol) {
			t.Errorf("checkpoints %s and %s: %d %s moments differ by %.3g (relative L2), want <= %g", filepath.Base(cpuCkpt), filepath.Base(gpuCkpt), n, suffix, rel[i], tol)
		}
	}
}

// momentsDiff returns ‖b − a‖/‖a‖ over the first moments of the Params
// in params that checkpoint a holds (those added later, such as adapters,
// are not in a step-5 checkpoint), the same over the second moments, and
// how many Params took part.
func momentsDiff(a, b string, params []*ops.Param) (rel [2]float64, n int, err error) {
	var files [2]*format.File
	for i, fn := range []string{a, b} {
		f, err := format.Open(fn, nil)
		if err != nil {
			return rel, 0, err
		}
		defer f.Close()
		files[i] = f
	}
	for i, suffix := range []string{train.Moment1Suffix, train.Moment2Suffix} {
		var num, den float64
		n = 0
		for _, p := range params {
			want, err := files[0].Float32View(p.Name + suffix)
			if err != nil {
				continue // not in checkpoint a
			}
			got, err := files[1].Float32View(p.Name + suffix)
			if err != nil {
				return rel, 0, fmt.Errorf("%s: %w", b, err)
			}
			if len(got) != len(want) {
				return rel, 0, fmt.Errorf("%s%s: %d values in %s, %d in %s", p.Name, suffix, len(got), b, len(want), a)
			}
			for k, w := range want {
				d := float64(got[k]) - float64(w)
				num, den = num+d*d, den+float64(w)*float64(w)
			}
			n++
		}
		rel[i] = math.Sqrt(num / den)
	}
	return rel, n, nil
}

// checkForms compares every cuSPARSELt form of a training Param, byte for
// byte, with cuSPARSELt's own compression of the weight expanded from the
// Param's bf16 values (W) and transpose mask (W_dpᵀ): the forms written
// in place after AdamW steps and mask refreshes must be what compressing
// afresh gives.
func checkForms(t *testing.T, b *Backend) {
	t.Helper()
	err := b.Do(func() error {
		checked := 0
		for _, d := range b.params {
			if d.forms == nil {
				continue
			}
			nm := d.p.NM
			dense, err := b.dev.Alloc(2 * nm.Rows * nm.Cols)
			if err != nil {
				return err
			}
			differ, err := formsDiffer(b, d.forms.fwd, d.forms.bwd, dense, d.act, d.idx, d.keep, nm.Rows, nm.Cols)
			for _, name := range differ {
				t.Errorf("%s form of %s differs from cuSPARSELt's compression of the expanded weight", name, d.p.Name)
			}
			if ferr := b.dev.Free(dense); err == nil {
				err = ferr
			}
			if err != nil {
				return err
			}
			checked += 2
		}
		t.Logf("%d cuSPARSELt forms checked byte for byte", checked)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestTrainGPUProfile: with Options.Profile, two training steps leave a
// report that names the ops' forward and backward passes, the parts of a
// 2:4 linear's backward and the optimizer, with nonzero times.
func TestTrainGPUProfile(t *testing.T) {
	b := newWith(t, Options{Activations: F32, Profile: true})
	tr, err := train.New(tinySlope(t), train.Options{LR: 1e-3, Clip: 1, Threads: 2, TotalSteps: 2, Backend: b})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	ids := [][]int32{{2, 10, 20, 30, 40, 50, 60, 70}, {2, 11, 21, 31, 41, 51, 61, 71}}
	for range 2 {
		if _, err := tr.Step(ids); err != nil {
			t.Fatal(err)
		}
	}
	checkProfile(t, b, 2, "step", "SlopeLinear layers.*.fc1 backward", "dW gather (kept values)", "CausalAttention layers.*.attn backward",
		"loss (cross-entropy)", "AdamW N:M (kept values)", "gradient norm")
}

// checkProfile fails unless b's profile report (per n units) names every
// label in want and its spans took time.
func checkProfile(t *testing.T, b *Backend, n int, unit string, want ...string) {
	t.Helper()
	var out strings.Builder
	if err := b.ProfileReport(&out, n, unit); err != nil {
		t.Fatal(err)
	}
	rep := out.String()
	t.Log("\n" + rep)
	for _, w := range want {
		if !strings.Contains(rep, w) {
			t.Errorf("the profile has no %q", w)
		}
	}
	if strings.Contains(rep, ": 0.000 ms in the spans") {
		t.Error("the profile's spans took no time")
	}
}

// TestMomentsDiff checks trainTracksCPU's moment comparison on the CPU
// alone: two checkpoints of one trainer at one step agree exactly, over
// every Param; one a step later differs in both moments.
func TestMomentsDiff(t *testing.T) {
	tr, err := train.New(tinySlope(t), train.Options{LR: 1e-3, Threads: 2, TotalSteps: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	ids := [][]int32{{2, 10, 20, 30, 40, 50}, {2, 11, 21, 31, 41, 51}}
	dir := t.TempDir()
	a, b, c := filepath.Join(dir, "a.slope"), filepath.Join(dir, "b.slope"), filepath.Join(dir, "c.slope")
	if _, err := tr.Step(ids); err != nil {
		t.Fatal(err)
	}
	for _, fn := range []string{a, b} {
		if err := tr.Save(fn); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := tr.Step(ids); err != nil {
		t.Fatal(err)
	}
	if err := tr.Save(c); err != nil {
		t.Fatal(err)
	}
	rel, n, err := momentsDiff(a, b, tr.Params())
	if err != nil {
		t.Fatal(err)
	}
	if n != len(tr.Params()) || rel != [2]float64{} {
		t.Errorf("one checkpoint twice: %d of %d Params, differences %v", n, len(tr.Params()), rel)
	}
	if rel, _, err = momentsDiff(a, c, tr.Params()); err != nil {
		t.Fatal(err)
	}
	if !(rel[0] > 0 && rel[1] > 0) {
		t.Errorf("checkpoints a step apart: moment differences %v, want both > 0", rel)
	}
}

// TestTrainGPURepeatsBitwise: two GPU trainers from the same file, each on
// a backend of its own (its own plans, buffers and streams), fed the
// same batches, must agree to the bit at every step (the loss) and at
// the end (every Param), with a transpose-mask refresh and lazy adapters
// on the way. Our kernels accumulate without atomics; this also checks the library
// products (cuBLASLt, and cuSPARSELt with its default algorithm) for
// run-to-run determinism. In bf16 on cuSPARSELt, with the fused
// attention kernels (heads of 64), and in fp32.
func TestTrainGPURepeatsBitwise(t *testing.T) {
	for _, c := range []struct {
		name  string
		opts  Options
		heads int
	}{
		{"bf16", Options{Activations: BF16}, 8},
		{"bf16-fused-attention", Options{Activations: BF16, FusedAttention: true}, 4},
		{"f32", Options{Activations: F32}, 8},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv(BF16SparseLtEnv, "1")
			bs := [2]*Backend{newWith(t, c.opts), newWith(t, c.opts)}
			fn := generatedSlopeHeads(t, c.heads)
			var trs [2]*train.Trainer
			for i := range trs {
				o := train.Options{LR: 1e-3, Clip: 1, MaskRefresh: 2, Threads: 2, TotalSteps: 5, WarmupSteps: 1, Rank: 2, AdapterStart: 4, Backend: bs[i]}
				tr, err := train.New(fn, o)
				if err != nil {
					t.Fatal(err)
				}
				defer tr.Close()
				if !tr.OnDevice() {
					t.Fatal("the trainer is not on the GPU")
				}
				trs[i] = tr
			}
			if c.opts.Activations == BF16 {
				for _, b := range bs {
					requireLtForms(t, b)
				}
			}
			rng := rand.New(rand.NewPCG(7, 8))
			for step := 1; step <= 5; step++ {
				ids := randBatch(rng, trs[0].Vocab(), 3, 24)
				var loss [2]float64
				for i, tr := range trs {
					l, err := tr.Step(ids)
					if err != nil {
						t.Fatalf("trainer %d, step %d: %v", i, step, err)
					}
					loss[i] = l
				}
				if math.Float64bits(loss[0]) != math.Float64bits(loss[1]) {
					t.Errorf("step %d: losses %v and %v differ", step, loss[0], loss[1])
				}
			}
			for _, tr := range trs {
				if err := tr.SyncHost(); err != nil {
					t.Fatal(err)
				}
			}
			a, bp := trs[0].Params(), trs[1].Params()
			if len(a) != len(bp) {
				t.Fatalf("%d and %d params", len(a), len(bp))
			}
			var values, differ int
			for i, p := range a {
				q := bp[i]
				if p.Name != q.Name || len(p.Value) != len(q.Value) {
					t.Fatalf("param %d: %q [%d] against %q [%d]", i, p.Name, len(p.Value), q.Name, len(q.Value))
				}
				for j, v := range p.Value {
					values++
					if math.Float32bits(v) != math.Float32bits(q.Value[j]) {
						differ++
					}
				}
				if p.NM != nil { // the transpose masks after the refreshes
					if kp, kq := tkeepPair(t, p, q); !slices.Equal(kp, kq) {
						t.Errorf("param %s: the transpose masks differ", p.Name)
					}
				}
			}
			t.Logf("%d values compared, %d differ", values, differ)
			if differ > 0 {
				t.Errorf("after 5 steps %d of %d values differ between two identical runs", differ, values)
			}
			for _, b := range bs {
				if c.opts.FusedAttention && (b.fusedAttentionCalls == 0 || b.fusedAttentionBackwards == 0) {
					t.Fatalf("fused attention ran %d forwards and %d backwards", b.fusedAttentionCalls, b.fusedAttentionBackwards)
				}
			}
		})
	}
}

// requireLtForms fails unless b trains its 2:4 weights on cuSPARSELt
// (bf16 with the library loaded and BF16SparseLtEnv not "0" when b was
// built) and at least one bound weight took a cuSPARSELt form: a missing
// library fails, it does not skip. Call it after the trainer is built.
func requireLtForms(t *testing.T, b *Backend) {
	t.Helper()
	if !b.ltTraining {
		t.Fatal("bf16 training without cuSPARSELt forms (is the library missing?)")
	}
	n, all, err := b.SparseLtForms()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("2:4 weights on cuSPARSELt: %d of %d", n, all)
	if n == 0 {
		t.Fatal("no 2:4 weight runs on cuSPARSELt")
	}
}

// randBatch returns batch rows of seq token ids below vocab.
func randBatch(rng *rand.Rand, vocab, batch, seq int) [][]int32 {
	ids := make([][]int32, batch)
	for i := range ids {
		ids[i] = make([]int32, seq)
		for j := range ids[i] {
			ids[i][j] = int32(rng.IntN(vocab))
		}
	}
	return ids
}

// tkeepPair returns the transpose masks of two trainers' copies of an N:M
// Param.
func tkeepPair(t *testing.T, a, b *ops.Param) (ka, kb []bool) {
	t.Helper()
	ka, err := a.NM.TKeepCopy()
	if err != nil {
		t.Fatal(err)
	}
	if kb, err = b.NM.TKeepCopy(); err != nil {
		t.Fatal(err)
	}
	return ka, kb
}
