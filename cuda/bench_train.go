package cuda

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"unsafe"

	"github.com/slopeml/slope/cuda/blaslt"
	"github.com/slopeml/slope/cuda/driver"
	"github.com/slopeml/slope/cuda/kernels"
	"github.com/slopeml/slope/cuda/sparselt"
	"github.com/slopeml/slope/ops"
)

// This file times one linear layer's training step on the device, dense
// against SLoPe 2:4, for bench/cmd/gpubench (the GPU trainer, issue 8,
// will run these same pieces). bf16 compute, fp32 master weights,
// gradients and AdamW moments, as the CPU trainer keeps them.
//
// Dense step (W [out, in]):
//
//	y  = x·Wᵀ                  cuBLASLt
//	dx = dy·W                  cuBLASLt
//	dW = dyᵀ·x  (fp32)         cuBLASLt
//	AdamW over out·in values, writing W's bf16 copy
//
// SLoPe step (W 2:4 along in, W_dp its double-pruned transpose), with
// the values written in place (cuSPARSELt's compressed values layout
// verified by sparselt.Handle.CheckValues and, per shape,
// sparselt.Weight.VerifyValues):
//
//	y  = x·Wᵀ                  cuSPARSELt (W compressed)
//	dx = dy·W_dp               cuSPARSELt (W_dpᵀ [in, out] compressed)
//	dW = dyᵀ·x  (fp32)         cuBLASLt into a workspace, then nm_gather
//	                           keeps W's out·in/2 positions
//	AdamW over the kept values, writing their bf16 copy straight into
//	W's compressed form (the portable order is its values order)
//	nm_pack_t24 writes W_dpᵀ's values into its compressed form
//	every 100 steps (the transpose mask's refresh): compress the new
//	W_dpᵀ pattern, then nm_pack_t24
//
// Without the verified layout (NewBenchTrainRecompress), the kept
// values live in a portable bf16 copy, and every step expands and
// recompresses both forms with cuSPARSELt (nm_expand + compress W,
// nm_expand_t + compress W_dpᵀ).

// BenchTrain is one linear layer's training state on the device.
type BenchTrain struct {
	b        *Backend
	sparse   bool
	inPlace  bool // 2:4: values written into the compressed forms
	out, in  int
	n        int // trained values: out·in (dense) or out·in/2 (kept)
	w        driver.Ptr
	master   driver.Ptr
	grad     driver.Ptr
	m1, m2   driver.Ptr
	vals     driver.Ptr // 2:4: bf16 kept values in portable order (the AdamW copy; W's compressed values when inPlace)
	idx      driver.Ptr // 2:4: portable indices
	keep     driver.Ptr // 2:4: one byte per kept value, the transpose mask
	tmp      driver.Ptr // 2:4: fp32 dW / bf16 dense workspace [out, in]
	fwd, bwd *sparselt.Weight
	// StateBytes is what training keeps per layer: weights in every form,
	// fp32 master values, gradients and moments (not cuSPARSELt's
	// compression buffer, which a form allocates at its first
	// Recompress and keeps). TempBytes is the 2:4
	// step's workspace (one per process in a trainer, sized for the
	// largest layer).
	StateBytes, TempBytes int64
	ptrs                  []driver.Ptr
}

// NewBenchTrain makes a random layer of out x in for training
// benchmarks (bf16 activations; 2:4 needs cuSPARSELt, and writes its
// values in place when cuSPARSELt's layout checks out, for the layout
// and for this shape, else falls back to recompressing). The 2:4 layer's
// transpose mask is random: in each column and group of 4 rows, the
// first 0, 1 or 2 of W's kept values (a valid double-pruned pattern,
// with empty, lone and full groups, whose products cost what any other
// does). Call inside Do.
func (b *Backend) NewBenchTrain(sparse bool, out, in int, seed uint64) (*BenchTrain, error) {
	if !sparse || b.sp == nil {
		return b.newBenchTrain(sparse, false, out, in, seed)
	}
	err := b.sp.CheckValues(b.s)
	if err == nil {
		// A shape already refused (by an earlier layer) is not built twice.
		err = errors.Join(b.sp.ShapeRefused(out, in), b.sp.ShapeRefused(in, out))
	}
	if err == nil {
		var t *BenchTrain
		if t, err = b.newBenchTrain(true, true, out, in, seed); err == nil {
			return t, nil
		}
	}
	if !errors.Is(err, sparselt.ErrValuesLayout) {
		return nil, err
	}
	return b.newBenchTrain(true, false, out, in, seed)
}

// NewBenchTrainRecompress makes a 2:4 layer as NewBenchTrain does, but
// one that expands and recompresses both cuSPARSELt forms every step
// (for comparison). Call inside Do.
func (b *Backend) NewBenchTrainRecompress(out, in int, seed uint64) (*BenchTrain, error) {
	return b.newBenchTrain(true, false, out, in, seed)
}

// CheckSparseValues runs sparselt.Handle.CheckValues (inside Do): nil
// when 2:4 training can write values into cuSPARSELt's compressed forms
// in place.
func (b *Backend) CheckSparseValues() error {
	if b.sp == nil {
		return fmt.Errorf("cuSPARSELt is not available")
	}
	return b.Do(func() error { return b.sp.CheckValues(b.s) })
}

// InPlace reports whether the 2:4 layer writes its values into the
// compressed forms (false: it recompresses every step).
func (t *BenchTrain) InPlace() bool { return t.inPlace }

func (b *Backend) newBenchTrain(sparse, inPlace bool, out, in int, seed uint64) (_ *BenchTrain, err error) {
	if b.act != BF16 {
		return nil, fmt.Errorf("training benchmarks need bf16 activations")
	}
	t := &BenchTrain{b: b, sparse: sparse, inPlace: inPlace, out: out, in: in, n: out * in}
	defer func() {
		if err != nil {
			err = errors.Join(err, b.FreeBenchTrain(t))
		}
	}()
	alloc := func(bytes int, state bool) (driver.Ptr, error) {
		p, err := b.dev.Alloc(bytes)
		if err != nil {
			return 0, err
		}
		t.ptrs = append(t.ptrs, p)
		if state {
			t.StateBytes += int64(bytes)
		} else {
			t.TempBytes += int64(bytes)
		}
		return p, nil
	}
	upload := func(raw []byte) (driver.Ptr, error) {
		p, err := alloc(len(raw), true)
		if err != nil {
			return 0, err
		}
		return p, b.dev.CopyIn(p, unsafe.Pointer(unsafe.SliceData(raw)), len(raw))
	}
	if sparse {
		if b.sp == nil {
			return nil, fmt.Errorf("2:4 training benchmark: cuSPARSELt is not available")
		}
		if in%64 != 0 || out%32 != 0 {
			return nil, fmt.Errorf("2:4 training benchmark: %dx%d", out, in)
		}
		t.n = out * in / 2
	}
	scale := 1 / float64(in)
	bf := randomBF16(t.n, scale, seed)
	var bfPtr driver.Ptr
	if sparse {
		if inPlace {
			// The values go into W's compressed form below; this copy is
			// only the source (freed on return, not training state).
			p, err := b.dev.Alloc(len(bf))
			if err != nil {
				return nil, err
			}
			defer b.dev.Free(p)
			if err := b.dev.CopyIn(p, unsafe.Pointer(unsafe.SliceData(bf)), len(bf)); err != nil {
				return nil, err
			}
			t.vals = p
		} else if t.vals, err = upload(bf); err != nil {
			return nil, err
		}
		idx := random24Indices(out, in, seed)
		if t.idx, err = upload(idx); err != nil {
			return nil, err
		}
		if t.keep, err = upload(randomTKeep24(idx, out, in, seed)); err != nil {
			return nil, err
		}
		if t.tmp, err = alloc(4*out*in, false); err != nil {
			return nil, err
		}
		bfPtr = t.vals
	} else {
		if t.w, err = upload(bf); err != nil {
			return nil, err
		}
		bfPtr = t.w
	}
	for _, p := range []*driver.Ptr{&t.master, &t.grad, &t.m1, &t.m2} {
		if *p, err = alloc(4*t.n, true); err != nil {
			return nil, err
		}
		if err := b.dev.Memset32(*p, 0, t.n); err != nil {
			return nil, err
		}
	}
	// The memsets run on the legacy stream: finish them before b.s works.
	if err := b.dev.Synchronize(); err != nil {
		return nil, err
	}
	if err := b.k.Convert(b.s, BF16, F32, t.master, bfPtr, t.n); err != nil {
		return nil, err
	}
	if sparse && !inPlace {
		if err := b.k.NMExpand(b.s, BF16, t.tmp, t.vals, t.idx, out, in, 2, 4); err != nil {
			return nil, err
		}
		if t.fwd, err = b.sp.NewWeight(b.s, t.tmp, out, in); err != nil {
			return nil, fmt.Errorf("cuSPARSELt W: %w", err)
		}
		if err := b.k.NMExpandT(b.s, BF16, t.tmp, t.vals, t.idx, t.keep, out, in, 2, 4); err != nil {
			return nil, err
		}
		if t.bwd, err = b.sp.NewWeight(b.s, t.tmp, in, out); err != nil {
			return nil, fmt.Errorf("cuSPARSELt W_dpᵀ: %w", err)
		}
		t.StateBytes += t.fwd.Bytes() + t.bwd.Bytes()
	}
	if sparse && inPlace {
		// Both forms compressed from their patterns, then the values
		// written in place.
		src := t.vals
		if err := t.compressPattern(false); err != nil {
			return nil, err
		}
		if t.vals, err = t.fwd.Values(); err != nil {
			return nil, err
		}
		if err := b.dev.CopyDevice(t.vals, src, 2*t.n, b.s); err != nil {
			return nil, err
		}
		if err := t.compressPattern(true); err != nil {
			return nil, err
		}
		if err := t.packT(); err != nil {
			return nil, err
		}
		// Both forms against cuSPARSELt's compression of the expanded
		// weights (once per shape; the workspace holds each in turn).
		if err := b.k.NMExpand(b.s, BF16, t.tmp, t.vals, t.idx, out, in, 2, 4); err != nil {
			return nil, err
		}
		if err := t.fwd.VerifyValues(b.s, t.tmp); err != nil {
			return nil, fmt.Errorf("W: %w", err)
		}
		if err := b.k.NMExpandT(b.s, BF16, t.tmp, t.vals, t.idx, t.keep, out, in, 2, 4); err != nil {
			return nil, err
		}
		if err := t.bwd.VerifyValues(b.s, t.tmp); err != nil {
			return nil, fmt.Errorf("W_dpᵀ: %w", err)
		}
		t.StateBytes += t.fwd.Bytes() + t.bwd.Bytes()
	}
	return t, b.dev.SyncStream(b.s)
}

// randomTKeep24 is a random transpose mask of the 2:4 weight [out, in]
// with packed portable indices idx: in each column and group of 4 rows,
// W's kept values there are kept in row order up to a limit of 0, 1 or
// 2 drawn per column and group. One byte per kept value.
func randomTKeep24(idx []byte, out, in int, seed uint64) []byte {
	k := in / 2
	keep := make([]byte, out*k)
	limit := make([]uint8, in)
	count := make([]uint8, in)
	rng := rand.New(rand.NewPCG(seed, 77))
	for r := 0; r < out; r++ {
		if r%4 == 0 {
			for c := range limit {
				limit[c] = uint8(rng.IntN(3))
			}
			clear(count)
		}
		for j := 0; j < k; j++ {
			code := idx[(r*k+j)/4] >> (2 * ((r*k + j) % 4)) & 3
			c := (j/2)*4 + int(code)
			if count[c] < limit[c] {
				keep[r*k+j] = 1
				count[c]++
			}
		}
	}
	return keep
}

// TrainStage is one timed part of a training step.
type TrainStage struct {
	Name string
	// Every is how many steps apart the stage runs (0 or 1: every step);
	// Step leaves out the stages with Every > 1, which a caller times
	// separately and amortizes.
	Every int
	Run   func() error
}

// Stages returns the parts of one training step on tokens rows, in
// order: x [tokens, in], dy [tokens, out] in, y [tokens, out], dx
// [tokens, in] out (bf16; at least PadRows(tokens) rows for cuSPARSELt).
// *step is the 1-based AdamW step the optimizer stage uses. Call the
// stages inside Do.
func (t *BenchTrain) Stages(x, dy, y, dx driver.Ptr, tokens int, step *int) []TrainStage {
	b, s := t.b, t.b.s
	bf := blaslt.BF16
	adamw := func(out driver.Ptr) func() error {
		return func() error {
			h := kernels.NewAdamWStep(1e-4, 0.9, 0.95, 1e-8, 0.1, *step, 1)
			return b.k.AdamW(s, t.master, t.grad, t.m1, t.m2, out, t.n, h)
		}
	}
	dW := &blaslt.Gemm{M: t.out, N: t.in, K: tokens, A: dy, LdA: t.out, TransA: true, B: x, LdB: t.in,
		D: t.grad, LdD: t.in, Alpha: 1, AB: bf, Out: blaslt.F32}
	if !t.sparse {
		return []TrainStage{
			{Name: "forward (cuBLASLt)", Run: func() error {
				return b.lt.Run(s, &blaslt.Gemm{M: tokens, N: t.out, K: t.in, A: x, LdA: t.in, B: t.w, LdB: t.in, TransB: true,
					D: y, LdD: t.out, Alpha: 1, AB: bf, Out: bf})
			}},
			{Name: "input gradient (cuBLASLt)", Run: func() error {
				return b.lt.Run(s, &blaslt.Gemm{M: tokens, N: t.in, K: t.out, A: dy, LdA: t.out, B: t.w, LdB: t.in,
					D: dx, LdD: t.in, Alpha: 1, AB: bf, Out: bf})
			}},
			{Name: "weight gradient (cuBLASLt, fp32)", Run: func() error { return b.lt.Run(s, dW) }},
			{Name: "AdamW", Run: adamw(t.w)},
		}
	}
	dWs := *dW
	dWs.D = t.tmp
	stages := []TrainStage{
		{Name: "forward (cuSPARSELt)", Run: func() error { return t.fwd.Matmul(s, y, t.out, x, t.in, tokens, 0) }},
		{Name: "input gradient (cuSPARSELt, W_dp)", Run: func() error { return t.bwd.Matmul(s, dx, t.in, dy, t.out, tokens, 0) }},
		{Name: "weight gradient (cuBLASLt, fp32)", Run: func() error { return b.lt.Run(s, &dWs) }},
		{Name: "gather kept gradient", Run: func() error {
			return b.k.NMGather(s, F32, t.grad, t.tmp, t.in, t.idx, t.out, t.in, 2, 4, false)
		}},
	}
	if t.inPlace {
		return append(stages,
			TrainStage{Name: "AdamW (kept values, bf16 into W's compressed form)", Run: adamw(t.vals)},
			TrainStage{Name: "W_dpᵀ values into its compressed form (nm_pack_t24)", Run: t.packT},
			TrainStage{Name: "W_dpᵀ pattern compressed (cuSPARSELt), mask refresh", Every: MaskRefreshSteps, Run: func() error {
				if err := t.compressPattern(true); err != nil {
					return err
				}
				return t.packT()
			}},
		)
	}
	return append(stages,
		TrainStage{Name: "AdamW (kept values)", Run: adamw(t.vals)},
		TrainStage{Name: "expand W", Run: func() error { return b.k.NMExpand(s, BF16, t.tmp, t.vals, t.idx, t.out, t.in, 2, 4) }},
		TrainStage{Name: "recompress W (cuSPARSELt)", Run: func() error { return t.fwd.Recompress(s, t.tmp) }},
		TrainStage{Name: "expand W_dpᵀ", Run: func() error { return b.k.NMExpandT(s, BF16, t.tmp, t.vals, t.idx, t.keep, t.out, t.in, 2, 4) }},
		TrainStage{Name: "recompress W_dpᵀ (cuSPARSELt)", Run: func() error { return t.bwd.Recompress(s, t.tmp) }},
	)
}

// MaskRefreshSteps is how often the benchmark's periodic stage (the
// transpose mask's refresh) runs: the trainer's --mask-refresh default.
const MaskRefreshSteps = 100 // train.DefaultMaskRefresh (a test checks)

// packT writes W_dpᵀ's values (from W's kept values) into its
// compressed form.
func (t *BenchTrain) packT() error {
	return t.b.packT24(t.bwd, t.vals, t.idx, t.keep, t.out, t.in)
}

// compressPattern compresses the pattern of W (transpose false) or of
// W_dpᵀ (true) into its form, creating the form on first use (see
// Backend.compressPattern24; the workspace holds the dense pattern, then
// the ones).
func (t *BenchTrain) compressPattern(transpose bool) error {
	form := &t.fwd
	if transpose {
		form = &t.bwd
	}
	return t.b.compressPattern24(form, t.tmp, t.tmp+driver.Ptr(2*t.out*t.in), t.idx, t.keep, t.out, t.in, transpose)
}

// Step runs one training step: every stage of Stages that runs every
// step, and none of the periodic ones (Every > 1), which a trainer runs
// after the step every Every steps and a benchmark times on their own.
// Call inside Do.
func (t *BenchTrain) Step(x, dy, y, dx driver.Ptr, tokens, step int) error {
	for _, st := range t.Stages(x, dy, y, dx, tokens, &step) {
		if st.Every > 1 {
			continue
		}
		if err := st.Run(); err != nil {
			return fmt.Errorf("%s: %w", st.Name, err)
		}
	}
	return nil
}

// FreeBenchTrain releases a training benchmark layer. Call inside Do.
func (b *Backend) FreeBenchTrain(t *BenchTrain) error {
	var errs []error
	for _, w := range []*sparselt.Weight{t.fwd, t.bwd} {
		if w != nil {
			errs = append(errs, w.Destroy())
		}
	}
	for _, p := range t.ptrs {
		errs = append(errs, b.dev.Free(p))
	}
	t.ptrs, t.fwd, t.bwd = nil, nil, nil
	return errors.Join(errs...)
}

// DevicePtr returns the device address of a tensor of this backend (for
// benchmarks that call kernels directly).
func DevicePtr(t ops.Tensor) driver.Ptr { return asTensor(t).p }
