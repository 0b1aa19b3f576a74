package cuda

import (
	"errors"
	"fmt"
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
// SLoPe step (W 2:4 along in, W_dp its double-pruned transpose):
//
//	y  = x·Wᵀ                  cuSPARSELt (W compressed)
//	dx = dy·W_dp               cuSPARSELt (W_dpᵀ [in, out] compressed)
//	dW = dyᵀ·x  (fp32)         cuBLASLt into a workspace, then nm_gather
//	                           keeps W's out·in/2 positions
//	AdamW over the kept values, writing the portable bf16 values
//	refresh: nm_expand + recompress W, nm_expand_t + recompress W_dpᵀ

// BenchTrain is one linear layer's training state on the device.
type BenchTrain struct {
	b        *Backend
	sparse   bool
	out, in  int
	n        int // trained values: out·in (dense) or out·in/2 (kept)
	w        driver.Ptr
	master   driver.Ptr
	grad     driver.Ptr
	m1, m2   driver.Ptr
	vals     driver.Ptr // 2:4: portable bf16 values (the AdamW copy)
	idx      driver.Ptr // 2:4: portable indices
	keep     driver.Ptr // 2:4: one byte per kept value, the transpose mask
	tmp      driver.Ptr // 2:4: fp32 dW / bf16 dense workspace [out, in]
	fwd, bwd *sparselt.Weight
	// StateBytes is what training keeps per layer: weights in every form,
	// fp32 master values, gradients and moments. TempBytes is the 2:4
	// step's workspace (one per process in a trainer, sized for the
	// largest layer).
	StateBytes, TempBytes int64
	ptrs                  []driver.Ptr
}

// NewBenchTrain makes a random layer of out x in for training
// benchmarks (bf16 activations; 2:4 needs cuSPARSELt). The 2:4 layer's
// transpose mask keeps the kept values of rows r with r % 4 < 2: a valid
// double-pruned pattern (at most 2 of 4 along out) whose products cost
// what any other does. Call inside Do.
func (b *Backend) NewBenchTrain(sparse bool, out, in int, seed uint64) (_ *BenchTrain, err error) {
	if b.act != BF16 {
		return nil, fmt.Errorf("training benchmarks need bf16 activations")
	}
	t := &BenchTrain{b: b, sparse: sparse, out: out, in: in, n: out * in}
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
		if t.vals, err = upload(bf); err != nil {
			return nil, err
		}
		if t.idx, err = upload(random24Indices(out, in, seed)); err != nil {
			return nil, err
		}
		keep := make([]byte, t.n)
		for r := 0; r < out; r++ {
			if r%4 < 2 {
				for j := r * in / 2; j < (r+1)*in/2; j++ {
					keep[j] = 1
				}
			}
		}
		if t.keep, err = upload(keep); err != nil {
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
	if sparse {
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
	return t, b.dev.SyncStream(b.s)
}

// TrainStage is one timed part of a training step.
type TrainStage struct {
	Name string
	Run  func() error
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
			{"forward (cuBLASLt)", func() error {
				return b.lt.Run(s, &blaslt.Gemm{M: tokens, N: t.out, K: t.in, A: x, LdA: t.in, B: t.w, LdB: t.in, TransB: true,
					D: y, LdD: t.out, Alpha: 1, AB: bf, Out: bf})
			}},
			{"input gradient (cuBLASLt)", func() error {
				return b.lt.Run(s, &blaslt.Gemm{M: tokens, N: t.in, K: t.out, A: dy, LdA: t.out, B: t.w, LdB: t.in,
					D: dx, LdD: t.in, Alpha: 1, AB: bf, Out: bf})
			}},
			{"weight gradient (cuBLASLt, fp32)", func() error { return b.lt.Run(s, dW) }},
			{"AdamW", adamw(t.w)},
		}
	}
	dWs := *dW
	dWs.D = t.tmp
	return []TrainStage{
		{"forward (cuSPARSELt)", func() error { return t.fwd.Matmul(s, y, t.out, x, t.in, tokens, 0) }},
		{"input gradient (cuSPARSELt, W_dp)", func() error { return t.bwd.Matmul(s, dx, t.in, dy, t.out, tokens, 0) }},
		{"weight gradient (cuBLASLt, fp32)", func() error { return b.lt.Run(s, &dWs) }},
		{"gather kept gradient", func() error {
			return b.k.NMGather(s, F32, t.grad, t.tmp, t.in, t.idx, t.out, t.in, 2, 4, false)
		}},
		{"AdamW (kept values)", adamw(t.vals)},
		{"expand W", func() error { return b.k.NMExpand(s, BF16, t.tmp, t.vals, t.idx, t.out, t.in, 2, 4) }},
		{"recompress W (cuSPARSELt)", func() error { return t.fwd.Recompress(s, t.tmp) }},
		{"expand W_dpᵀ", func() error { return b.k.NMExpandT(s, BF16, t.tmp, t.vals, t.idx, t.keep, t.out, t.in, 2, 4) }},
		{"recompress W_dpᵀ (cuSPARSELt)", func() error { return t.bwd.Recompress(s, t.tmp) }},
	}
}

// Step runs one training step (every stage of Stages). Call inside Do.
func (t *BenchTrain) Step(x, dy, y, dx driver.Ptr, tokens, step int) error {
	for _, st := range t.Stages(x, dy, y, dx, tokens, &step) {
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
