// Package blaslt binds NVIDIA cuBLASLt (loaded at run time with purego, no
// cgo) for the dense matrix products of the CUDA backend.
//
// # Contract
//
// All matrices are row-major, as everywhere else in slope. A Gemm
// computes, for each batch entry i (strides in elements):
//
//	D_i = Alpha·A_i·op(B_i) + Beta·D_i
//
// with A_i [M,K], op(B_i) [K,N] (B_i stored [K,N], or stored [N,K] and
// transposed when TransB, the X·Wᵀ case) and D_i [M,N]. The
// accumulation and the scaling are fp32 (CUBLAS_COMPUTE_32F with an fp32
// scale type) for every input type; with f32 inputs this is true fp32
// arithmetic, never TF32. Run maps the row-major product onto cuBLASLt's
// column-major one by swapping the operands (see colProblem).
//
// Every call into cuBLASLt, New, Run and Destroy included, must run
// inside the device's Device.Do. A Handle belongs to one device; it is
// not for concurrent use (Do serializes its callers anyway).
//
// Per Gemm shape (every field but the pointers, Alpha and Beta, plus the
// alignment class of the pointers) Run creates once, and then reuses,
// the matmul descriptor, the three layouts (C shares D's) and the
// algorithm cuBLASLt's heuristic ranks first within the Handle's
// workspace (WorkspaceBytes of device memory).
//
// Errors name the cuBLASLt call and its status, as *driver.Error
// ("cublasLtMatmul: CUBLAS_STATUS_NOT_SUPPORTED (15)"), wrapped with the
// shape.
package blaslt

import (
	"fmt"
	"sync"
	"unsafe"

	"github.com/slopeml/slope/cuda/driver"
)

// WorkspaceBytes is the device workspace New allocates for cuBLASLt.
const WorkspaceBytes = 32 << 20

// Gemm describes one row-major (optionally strided batched) product; see
// the package documentation. Leading dimensions and strides are in
// elements.
type Gemm struct {
	M, N, K int

	A       driver.Ptr // [M,K] row-major (LdA >= K), or [K,M] (LdA >= M) when TransA
	LdA     int
	StrideA int64
	TransA  bool // use Aᵀ: A is stored [K,M] (the dYᵀ·X weight-gradient case)

	B       driver.Ptr // [K,N] row-major (LdB >= N), or [N,K] (LdB >= K) when TransB
	LdB     int
	StrideB int64
	TransB  bool // use Bᵀ: B is stored [N,K] (the X·Wᵀ case)

	D       driver.Ptr // [M,N] row-major, LdD >= N; also the C input when Beta != 0 and C is 0
	LdD     int
	StrideD int64

	// C, when set (one product only), is the Beta input instead of D:
	// [M,N] row-major of type Out, LdC >= N. D = Alpha·A·op(B) + Beta·C.
	C   driver.Ptr
	LdC int

	// Bias, when set (one product only), is a vector of N values of type
	// Out added to every row of D (cuBLASLt's bias epilogue).
	Bias driver.Ptr

	Batch int // 0 or 1: one product; more: strided batch

	Alpha, Beta float32
	AB, Out     DType // type of A and B; type of D
}

// Handle is a cuBLASLt context with its workspace and plan cache.
type Handle struct {
	d      *driver.Device
	a      *api
	lt     uintptr // cublasLtHandle_t
	ws     driver.Ptr
	wsSize int

	mu    sync.Mutex
	plans map[planKey]*gemmPlan
}

// gemmPlan is what Run reuses for one planKey.
type gemmPlan struct {
	desc    uintptr // cublasLtMatmulDesc_t
	a, b, d uintptr // cublasLtMatrixLayout_t of A' (= Gemm.B), B' (= Gemm.A), D'
	c       uintptr // C' layout: d unless Gemm.C is set
	algo    matmulAlgo
	ws      uint64 // workspace the algorithm needs
}

// matmulAlgo is cublasLtMatmulAlgo_t: uint64_t data[8].
type matmulAlgo struct {
	_ [8]uint64 // data: opaque, filled by the heuristic query
}

// heuristicResult is cublasLtMatmulHeuristicResult_t (96 bytes):
// algo at 0, workspaceSize (size_t) at 64, state (cublasStatus_t) at 72,
// wavesCount (float) at 76, int reserved[4] at 80.
type heuristicResult struct {
	algo          matmulAlgo
	workspaceSize uint64
	state         int32
	wavesCount    float32
	reserved      [4]int32
}

// New loads cuBLASLt (once per process), creates a handle and allocates
// its workspace. It must run inside d.Do.
func New(d *driver.Device) (*Handle, error) {
	a, err := load()
	if err != nil {
		return nil, fmt.Errorf("blaslt: %w", err)
	}
	ws, err := d.Alloc(WorkspaceBytes) // also checks that we are inside Do
	if err != nil {
		return nil, fmt.Errorf("blaslt: workspace: %w", err)
	}
	var lt uintptr
	if err := check("cublasLtCreate", a.cublasLtCreate(&lt)); err != nil {
		d.Free(ws)
		return nil, fmt.Errorf("blaslt: %w", err)
	}
	return &Handle{d: d, a: a, lt: lt, ws: ws, wsSize: WorkspaceBytes, plans: map[planKey]*gemmPlan{}}, nil
}

// Destroy releases the plans, the workspace and the handle (inside Do).
// The Handle is unusable afterwards; a second Destroy does nothing.
func (h *Handle) Destroy() error {
	if h == nil || h.lt == 0 {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	var first error
	keep := func(err error) {
		if first == nil && err != nil {
			first = err
		}
	}
	for k, p := range h.plans {
		keep(h.freePlan(p))
		delete(h.plans, k)
	}
	// The workspace may still be in use by queued products.
	keep(h.d.Synchronize())
	keep(h.d.Free(h.ws))
	keep(check("cublasLtDestroy", h.a.cublasLtDestroy(h.lt)))
	h.lt, h.ws = 0, 0
	if first != nil {
		return fmt.Errorf("blaslt: destroy: %w", first)
	}
	return nil
}

// Plans returns how many shapes have a cached plan.
func (h *Handle) Plans() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.plans)
}

// Run enqueues g on stream s (inside Do).
func (h *Handle) Run(s driver.Stream, g *Gemm) error {
	if h == nil || h.lt == 0 {
		return fmt.Errorf("blaslt: Run on a destroyed handle")
	}
	p, err := columnMajor(g)
	if err != nil {
		return err
	}
	if g.A == 0 || g.B == 0 || g.D == 0 {
		return fmt.Errorf("%w: nil device pointer (%s)", ErrShape, g.shape())
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	key := keyOf(g)
	pl := h.plans[key]
	if pl == nil {
		pl, err = h.newPlan(key, &p, g)
		if err != nil {
			return err
		}
		h.plans[key] = pl
	}
	alpha, beta := g.Alpha, g.Beta
	if g.Bias != 0 {
		bias := uint64(g.Bias)
		if err := check("cublasLtMatmulDescSetAttribute(BIAS_POINTER)",
			h.a.cublasLtMatmulDescSetAttribute(pl.desc, descBiasPointer, unsafe.Pointer(&bias), 8)); err != nil {
			return fmt.Errorf("blaslt: %s: %w", g.shape(), err)
		}
	}
	c := g.D
	if g.C != 0 {
		c = g.C
	}
	// A' = g.B and B' = g.A (see colProblem); C' = g.C or g.D, D' = g.D.
	st := h.a.cublasLtMatmul(h.lt, pl.desc, unsafe.Pointer(&alpha),
		g.B, pl.a, g.A, pl.b, unsafe.Pointer(&beta), c, pl.c, g.D, pl.d,
		&pl.algo, h.ws, uint64(h.wsSize), s)
	if err := check("cublasLtMatmul", st); err != nil {
		return fmt.Errorf("blaslt: %s: %w", g.shape(), err)
	}
	return nil
}

// newPlan creates the descriptor, layouts and algorithm of one shape.
func (h *Handle) newPlan(key planKey, p *colProblem, g *Gemm) (_ *gemmPlan, err error) {
	a := h.a
	pl, err := h.describe(p, g.AB, g.Out, g.Bias != 0)
	if err != nil {
		return nil, fmt.Errorf("blaslt: plan for %s: %w", g.shape(), err)
	}
	defer func() {
		if err != nil {
			h.freePlan(pl)
			err = fmt.Errorf("blaslt: plan for %s: %w", g.shape(), err)
		}
	}()
	pref, err := h.preference(key)
	if err != nil {
		return nil, err
	}
	defer a.cublasLtMatmulPreferenceDestroy(pref)
	var results [8]heuristicResult
	var n int32
	if err := check("cublasLtMatmulAlgoGetHeuristic", a.cublasLtMatmulAlgoGetHeuristic(h.lt, pl.desc, pl.a, pl.b, pl.c, pl.d,
		pref, int32(len(results)), &results[0], &n)); err != nil {
		return nil, err
	}
	for i := 0; i < int(n) && i < len(results); i++ {
		r := &results[i]
		if r.state == 0 && r.workspaceSize <= uint64(h.wsSize) {
			pl.algo, pl.ws = r.algo, r.workspaceSize
			return pl, nil
		}
	}
	return nil, fmt.Errorf("cublasLtMatmulAlgoGetHeuristic: no algorithm (%d returned) within %d bytes of workspace", n, h.wsSize)
}

// describe creates the matmul descriptor (fp32 compute and scale, the
// transposes of p) and the layouts of A', B' and D' (C' shares D's).
func (h *Handle) describe(p *colProblem, ab, out DType, bias bool) (_ *gemmPlan, err error) {
	pl := &gemmPlan{}
	defer func() {
		if err != nil {
			h.freePlan(pl)
		}
	}()
	if err := check("cublasLtMatmulDescCreate", h.a.cublasLtMatmulDescCreate(&pl.desc, cublasCompute32F, cudaR32F)); err != nil {
		return nil, err
	}
	transA, transB := int32(cublasOpN), int32(cublasOpN)
	if p.TransA {
		transA = cublasOpT
	}
	if p.TransB {
		transB = cublasOpT
	}
	if err := h.descAttr(pl.desc, descTransA, transA); err != nil {
		return nil, err
	}
	if err := h.descAttr(pl.desc, descTransB, transB); err != nil {
		return nil, err
	}
	if pl.a, err = h.layout(ab, p.A, p.Batch); err != nil {
		return nil, err
	}
	if pl.b, err = h.layout(ab, p.B, p.Batch); err != nil {
		return nil, err
	}
	if pl.d, err = h.layout(out, p.D, p.Batch); err != nil {
		return nil, err
	}
	pl.c = pl.d
	if p.C != nil {
		if pl.c, err = h.layout(out, *p.C, p.Batch); err != nil {
			pl.c = 0
			return nil, err
		}
	}
	if bias {
		epi := int32(epilogueBias)
		if err := check("cublasLtMatmulDescSetAttribute(EPILOGUE)",
			h.a.cublasLtMatmulDescSetAttribute(pl.desc, descEpilogue, unsafe.Pointer(&epi), 4)); err != nil {
			return nil, err
		}
	}
	return pl, nil
}

// preference creates the heuristic preference of key: at most the
// Handle's workspace, and the real alignment of each pointer (A' is
// Gemm.B, B' is Gemm.A, C' and D' are Gemm.D). The caller destroys it.
func (h *Handle) preference(key planKey) (uintptr, error) {
	a := h.a
	var pref uintptr
	if err := check("cublasLtMatmulPreferenceCreate", a.cublasLtMatmulPreferenceCreate(&pref)); err != nil {
		return 0, err
	}
	wsMax := uint64(h.wsSize)
	if err := check("cublasLtMatmulPreferenceSetAttribute(MAX_WORKSPACE_BYTES)",
		a.cublasLtMatmulPreferenceSetAttribute(pref, prefMaxWorkspace, unsafe.Pointer(&wsMax), 8)); err != nil {
		a.cublasLtMatmulPreferenceDestroy(pref)
		return 0, err
	}
	for _, al := range []struct {
		attr int32
		v    uint32
	}{{prefMinAlignA, key.AlignB}, {prefMinAlignB, key.AlignA}, {prefMinAlignC, min(key.AlignC, key.AlignD)}, {prefMinAlignD, key.AlignD}} {
		v := al.v
		if err := check(fmt.Sprintf("cublasLtMatmulPreferenceSetAttribute(%d)", al.attr),
			a.cublasLtMatmulPreferenceSetAttribute(pref, al.attr, unsafe.Pointer(&v), 4)); err != nil {
			a.cublasLtMatmulPreferenceDestroy(pref)
			return 0, err
		}
	}
	return pref, nil
}

func (h *Handle) descAttr(desc uintptr, attr int32, v int32) error {
	return check(fmt.Sprintf("cublasLtMatmulDescSetAttribute(%d)", attr),
		h.a.cublasLtMatmulDescSetAttribute(desc, attr, unsafe.Pointer(&v), 4))
}

// layout creates a column-major layout of type t for m, with the batch
// attributes when batch > 1.
func (h *Handle) layout(t DType, m colMatrix, batch int32) (uintptr, error) {
	a := h.a
	var l uintptr
	if err := check("cublasLtMatrixLayoutCreate", a.cublasLtMatrixLayoutCreate(&l, int32(t), uint64(m.Rows), uint64(m.Cols), m.Ld)); err != nil {
		return 0, err
	}
	if batch > 1 {
		b, s := batch, m.Stride
		if err := check("cublasLtMatrixLayoutSetAttribute(BATCH_COUNT)",
			a.cublasLtMatrixLayoutSetAttribute(l, layoutBatchCount, unsafe.Pointer(&b), 4)); err != nil {
			a.cublasLtMatrixLayoutDestroy(l)
			return 0, err
		}
		if err := check("cublasLtMatrixLayoutSetAttribute(STRIDED_BATCH_OFFSET)",
			a.cublasLtMatrixLayoutSetAttribute(l, layoutStridedBatch, unsafe.Pointer(&s), 8)); err != nil {
			a.cublasLtMatrixLayoutDestroy(l)
			return 0, err
		}
	}
	return l, nil
}

func (h *Handle) freePlan(p *gemmPlan) error {
	var first error
	keep := func(call string, st int32) {
		if err := check(call, st); first == nil && err != nil {
			first = err
		}
	}
	if p.c == p.d {
		p.c = 0
	}
	for _, l := range []*uintptr{&p.a, &p.b, &p.c, &p.d} {
		if *l != 0 {
			keep("cublasLtMatrixLayoutDestroy", h.a.cublasLtMatrixLayoutDestroy(*l))
			*l = 0
		}
	}
	if p.desc != 0 {
		keep("cublasLtMatmulDescDestroy", h.a.cublasLtMatmulDescDestroy(p.desc))
		p.desc = 0
	}
	return first
}
