// Package sparselt binds NVIDIA cuSPARSELt 0.8 (loaded at run time with
// purego, no cgo) for products with 2:4 structured weights.
//
// # Contract
//
// A Weight is one bf16 weight W [N,K] (row-major: N outputs, K inputs)
// pruned 2:4 along K (in every group of 4 consecutive elements of a row,
// at most 2 are nonzero), held compressed on the device. NewWeight takes
// the pruned dense W already on the device, checks the pattern
// (cusparseLtSpMMAPruneCheck2) and compresses it; the dense copy may be
// freed afterwards. Matmul computes, for M rows,
//
//	Y[M,N] = X[M,K]·Wᵀ + beta·Y      (row-major bf16, fp32 accumulation)
//
// The x and y buffers must hold PadM(M) rows (of ldX and ldY elements):
// cuSPARSELt runs on the padded rows, reading rows M.. of x (any values)
// and overwriting rows M.. of y. x and y must be 16-byte aligned and ldX,
// ldY multiples of 8. Weights need N and K multiples of 32 (Supported);
// other shapes are refused with ErrUnsupported and the caller uses
// another kernel.
//
// Every call, New, NewWeight, Matmul and the Destroys included, must run
// inside the device's Device.Do. The Handle's workspace is shared by its
// weights: products must be serialized (one stream, or the caller orders
// its streams).
//
// Plans are created on first use, one per weight and padded M (and
// leading dimensions), and cached on the Weight. With Handle.Search, the
// first product of each (N, K, padded M) runs cusparseLtMatmulSearch once
// (into scratch memory, not y) and the chosen configuration is reused by
// every weight of that shape.
//
// Training rewrites a weight's values every step: once Handle.CheckValues
// has verified the compressed form's values layout on the device,
// Weight.Values gives the address of the values part, which the caller
// overwrites in place while the pattern stays (values.go says what the
// layout is and how it was established).
//
// Errors name the cuSPARSELt call and its status, as *driver.Error
// ("cusparseLtMatmulPlanInit: CUSPARSE_STATUS_INVALID_VALUE (3)"), wrapped
// with the weight's shape.
package sparselt

import (
	"errors"
	"fmt"
	"sync"
	"unsafe"

	"github.com/slopeml/slope/cuda/driver"
)

// ErrNotPruned is wrapped when a weight is not 2:4 sparse along K.
var ErrNotPruned = errors.New("sparselt: weight is not 2:4 pruned along K")

// Handle is a cuSPARSELt context with its shared workspace.
type Handle struct {
	// Search makes the first product of each shape search for the fastest
	// configuration (set it before the products).
	Search bool
	// Layout is how new weights are presented to cuSPARSELt (read by
	// NewWeight; LayoutCol unless set).
	Layout Layout

	d *driver.Device
	a *api
	h *opaque // cusparseLtHandle_t

	mu          sync.Mutex
	ws          driver.Ptr // shared workspace (grow-only)
	wsSize      int
	scratch     driver.Ptr // output of searches (grow-only)
	scratchSize int
	valid       driver.Ptr // int written by the prune check
	algs        map[algKey]algConfig
	weights     map[*Weight]struct{}
	// valuesChecked is CheckValues' verdict per layout, valuesShapes
	// VerifyValues' per layout and shape (values.go): nil or a mismatch.
	valuesChecked map[Layout]error
	valuesShapes  map[valuesKey]error
}

// algKey identifies a searched configuration.
type algKey struct {
	N, K, Mpad int
	Layout     Layout
}

// algConfig is what cusparseLtMatmulSearch chose.
type algConfig struct {
	ID                int32
	SplitK            int32
	SplitKMode        int32
	SplitKBuffers     int32
	HaveSplitK        bool // the split-K attributes could be read
	HaveSplitKDetails bool // and mode and buffers too
}

// Weight is a compressed 2:4 weight; see the package documentation.
type Weight struct {
	N, K int

	h      *Handle
	layout Layout
	sparse *opaque // structured descriptor of W
	comp   driver.Ptr
	bytes  int64 // the compressed size cuSPARSELt last reported
	capB   int64 // comp's allocation (>= bytes)
	plans  map[planKey]*plan
	bias   driver.Ptr
	opA    int32      // the compress/prune operation of W (describe)
	buf    driver.Ptr // Recompress's buffer, allocated on first use
	bufB   uint64     // buf's allocation
}

// matmulBiasPointer is CUSPARSELT_MATMUL_BIAS_POINTER (cusparseLt.h,
// cusparseLtMatmulDescAttribute_t).
const matmulBiasPointer = 8

// SetBias makes every product add bias, a vector of N values on the
// device (bf16, the output type), to each output row: cuSPARSELt's bias
// epilogue. It must be called before the first Matmul.
func (w *Weight) SetBias(bias driver.Ptr) error {
	if len(w.plans) > 0 {
		return fmt.Errorf("sparselt: %v: SetBias after the first product", w)
	}
	w.bias = bias
	return nil
}

// Bias returns the bias SetBias gave (0: none).
func (w *Weight) Bias() driver.Ptr { return w.bias }

// HasPlans reports whether a product has run (SetBias is refused then).
func (w *Weight) HasPlans() bool { return len(w.plans) > 0 }

// planKey identifies a plan of a Weight.
type planKey struct {
	Mpad, LdX, LdY int
}

// plan is one cuSPARSELt plan with the descriptors it refers to.
type plan struct {
	dense, out, matmul, alg, plan *opaque
	haveDense, haveOut, haveAlg   bool
	havePlan                      bool
	ws                            int
}

// New loads cuSPARSELt (once per process) and initializes a handle. It
// must run inside d.Do.
func New(d *driver.Device) (*Handle, error) {
	a, err := load()
	if err != nil {
		return nil, fmt.Errorf("sparselt: %w", err)
	}
	valid, err := d.Alloc(4) // also checks that we are inside Do
	if err != nil {
		return nil, fmt.Errorf("sparselt: %w", err)
	}
	h := &Handle{d: d, a: a, h: newOpaque(), valid: valid, algs: map[algKey]algConfig{}, weights: map[*Weight]struct{}{},
		valuesChecked: map[Layout]error{}, valuesShapes: map[valuesKey]error{}}
	if err := check("cusparseLtInit", a.cusparseLtInit(h.h.ptr())); err != nil {
		d.Free(valid)
		return nil, fmt.Errorf("sparselt: %w", err)
	}
	return h, nil
}

// Version returns cusparseLtGetVersion of the initialized handle.
func (h *Handle) Version() (int, error) {
	if h == nil || h.h == nil {
		return 0, fmt.Errorf("sparselt: Version on a destroyed handle")
	}
	var v int32
	err := check("cusparseLtGetVersion", h.a.cusparseLtGetVersion(h.h.ptr(), &v))
	return int(v), err
}

// Destroy releases every weight still held, the buffers and the handle
// (inside Do). A second Destroy does nothing.
func (h *Handle) Destroy() error {
	if h == nil || h.h == nil {
		return nil
	}
	var first error
	keep := func(err error) {
		if first == nil && err != nil {
			first = err
		}
	}
	for w := range h.weights {
		keep(w.Destroy())
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	keep(h.d.Synchronize())
	keep(h.d.Free(h.ws))
	keep(h.d.Free(h.scratch))
	keep(h.d.Free(h.valid))
	keep(check("cusparseLtDestroy", h.a.cusparseLtDestroy(h.h.ptr())))
	h.ws, h.scratch, h.valid, h.wsSize, h.scratchSize = 0, 0, 0, 0, 0
	h.h = nil
	if first != nil {
		return fmt.Errorf("sparselt: destroy: %w", first)
	}
	return nil
}

// PadM returns the rows the x and y buffers of a product of M rows must
// have (M rounded up to cuSPARSELt's size multiple and plan buckets).
func (w *Weight) PadM(M int) int { return padM(M) }

// Bytes returns the size of the compressed weight on the device.
func (w *Weight) Bytes() int64 { return w.bytes }

func (w *Weight) String() string {
	return fmt.Sprintf("2:4 weight [N=%d,K=%d] (%s)", w.N, w.K, w.layout)
}

// NewWeight checks and compresses the pruned dense bf16 W [N,K]
// (row-major, on the device) with the Handle's Layout, on stream s. It
// waits for s. The dense matrix is not kept.
func (h *Handle) NewWeight(s driver.Stream, dense driver.Ptr, N, K int) (*Weight, error) {
	layout := LayoutCol
	if h != nil {
		layout = h.Layout
	}
	return h.newWeight(s, dense, N, K, layout)
}

// newWeight is NewWeight with the layout given.
func (h *Handle) newWeight(s driver.Stream, dense driver.Ptr, N, K int, layout Layout) (_ *Weight, err error) {
	if err := Supported(N, K); err != nil {
		return nil, err
	}
	if h == nil || h.h == nil {
		return nil, fmt.Errorf("sparselt: NewWeight on a destroyed handle")
	}
	if dense == 0 || uintptr(dense)%elemAlign != 0 {
		return nil, fmt.Errorf("%w: dense weight at %#x must be non-nil and %d-byte aligned", ErrUnsupported, uintptr(dense), elemAlign)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	a, hp := h.a, h.h.ptr()
	w := &Weight{N: N, K: K, h: h, layout: layout, sparse: newOpaque(), plans: map[planKey]*plan{}}
	p, err := describe(w.layout, N, K, 16, K, N)
	if err != nil {
		return nil, err
	}
	wrap := func(err error) error { return fmt.Errorf("sparselt: %v: %w", w, err) }
	if err := check("cusparseLtStructuredDescriptorInit", a.cusparseLtStructuredDescriptorInit(hp, w.sparse.ptr(),
		p.A.Rows, p.A.Cols, p.A.Ld, elemAlign, cudaR16BF, p.A.Order, sparsity50)); err != nil {
		return nil, wrap(err)
	}
	defer func() {
		if err != nil {
			a.cusparseLtMatDescriptorDestroy(w.sparse.ptr())
		}
	}()

	// Check the 2:4 pattern once. The memset runs on the legacy stream,
	// which a non-blocking s does not wait for: synchronize in between.
	if err := h.d.Memset32(h.valid, 0, 1); err != nil {
		return nil, wrap(err)
	}
	if err := h.d.Synchronize(); err != nil {
		return nil, wrap(err)
	}
	if err := check("cusparseLtSpMMAPruneCheck2", a.cusparseLtSpMMAPruneCheck2(hp, w.sparse.ptr(), 1, p.OpA, dense, h.valid, s)); err != nil {
		return nil, wrap(err)
	}
	if err := h.d.SyncStream(s); err != nil {
		return nil, wrap(err)
	}
	var valid int32
	if err := h.d.CopyOut(unsafe.Pointer(&valid), h.valid, 4); err != nil {
		return nil, wrap(err)
	}
	if valid != 0 {
		return nil, fmt.Errorf("sparselt: %v at %#x (check result %d): %w", w, uintptr(dense), valid, ErrNotPruned)
	}

	var size, bufSize uint64
	if err := check("cusparseLtSpMMACompressedSize2", a.cusparseLtSpMMACompressedSize2(hp, w.sparse.ptr(), &size, &bufSize)); err != nil {
		return nil, wrap(err)
	}
	if w.comp, err = h.d.Alloc(int(size)); err != nil {
		return nil, wrap(err)
	}
	defer func() {
		if err != nil {
			h.d.Free(w.comp)
		}
	}()
	buf, err := h.d.Alloc(int(max(bufSize, 1)))
	if err != nil {
		return nil, wrap(err)
	}
	defer h.d.Free(buf)
	if err := check("cusparseLtSpMMACompress2", a.cusparseLtSpMMACompress2(hp, w.sparse.ptr(), 1, p.OpA, dense, w.comp, buf, s)); err != nil {
		return nil, wrap(err)
	}
	// buf is freed on return: wait for the compression.
	if err := h.d.SyncStream(s); err != nil {
		return nil, wrap(err)
	}
	w.bytes, w.capB = int64(size), int64(size)
	w.opA = p.OpA
	h.weights[w] = struct{}{}
	return w, nil
}

// Recompress replaces w's compressed values with those of dense, another
// 2:4-pruned bf16 [N,K] matrix (the positions may differ), on stream s,
// without waiting and without checking the pattern: the training path,
// where the kernels that wrote dense keep it 2:4 (NewWeight checks). Its
// buffer is allocated on first use and kept until Destroy.
//
// The compressed size is asked again each time: cuSPARSELt 0.8 reports
// a smaller one for the same descriptor once a product's plan exists
// when K is not a multiple of 64 (metadata padding; seen on an H200 at
// [N=320, K=160]: 58880 bytes at NewWeight, 57600 after a plan). A
// larger size moves the form to a new allocation, so a pointer from
// Values taken before Recompress is stale after it; Bytes reports the
// new size.
func (w *Weight) Recompress(s driver.Stream, dense driver.Ptr) error {
	if w == nil || w.h == nil {
		return fmt.Errorf("sparselt: Recompress on a destroyed weight")
	}
	if dense == 0 || uintptr(dense)%elemAlign != 0 {
		return fmt.Errorf("%w: dense weight at %#x must be non-nil and %d-byte aligned", ErrUnsupported, uintptr(dense), elemAlign)
	}
	h := w.h
	h.mu.Lock()
	defer h.mu.Unlock()
	a, hp := h.a, h.h.ptr()
	wrap := func(err error) error { return fmt.Errorf("sparselt: recompress %v: %w", w, err) }
	var size, bufSize uint64
	if err := check("cusparseLtSpMMACompressedSize2", a.cusparseLtSpMMACompressedSize2(hp, w.sparse.ptr(), &size, &bufSize)); err != nil {
		return wrap(err)
	}
	bufSize = max(bufSize, 1)
	if int64(size) > w.capB || bufSize > w.bufB {
		// The old buffers may still be read by queued work.
		if err := h.d.SyncStream(s); err != nil {
			return wrap(err)
		}
	}
	if int64(size) > w.capB {
		comp, err := h.d.Alloc(int(size))
		if err != nil {
			return wrap(err)
		}
		if err := h.d.Free(w.comp); err != nil {
			h.d.Free(comp)
			return wrap(err)
		}
		w.comp, w.capB = comp, int64(size)
	}
	if bufSize > w.bufB {
		buf, err := h.d.Alloc(int(bufSize))
		if err != nil {
			return wrap(err)
		}
		if w.buf != 0 {
			if err := h.d.Free(w.buf); err != nil {
				h.d.Free(buf)
				return wrap(err)
			}
		}
		w.buf, w.bufB = buf, bufSize
	}
	w.bytes = int64(size)
	if err := check("cusparseLtSpMMACompress2", a.cusparseLtSpMMACompress2(hp, w.sparse.ptr(), 1, w.opA, dense, w.comp, w.buf, s)); err != nil {
		return wrap(err)
	}
	return nil
}

// Destroy releases the plans and the compressed weight (inside Do). It
// waits for all work of the device, which may still read them.
func (w *Weight) Destroy() error {
	if w == nil || w.h == nil {
		return nil
	}
	h := w.h
	h.mu.Lock()
	defer h.mu.Unlock()
	var first error
	keep := func(err error) {
		if first == nil && err != nil {
			first = err
		}
	}
	keep(h.d.Synchronize())
	for k, p := range w.plans {
		keep(h.freePlan(p))
		delete(w.plans, k)
	}
	keep(check("cusparseLtMatDescriptorDestroy", h.a.cusparseLtMatDescriptorDestroy(w.sparse.ptr())))
	keep(h.d.Free(w.comp))
	if w.buf != 0 {
		keep(h.d.Free(w.buf))
	}
	delete(h.weights, w)
	w.h, w.comp, w.buf, w.capB, w.bufB = nil, 0, 0, 0, 0
	if first != nil {
		return fmt.Errorf("sparselt: destroy %v: %w", w, first)
	}
	return nil
}

// Fits reports whether Matmul accepts a product of M rows with these
// buffers (leading dimensions, alignment); the caller checks separately
// that x and y hold PadM(M) rows. A nil error means Matmul will not
// refuse the arguments (cuSPARSELt itself may still fail).
func (w *Weight) Fits(M int, y driver.Ptr, ldY int, x driver.Ptr, ldX int) error {
	return checkProduct(w.N, w.K, M, ldX, ldY, uintptr(x), uintptr(y))
}

// Matmul enqueues Y = X·Wᵀ + beta·Y for M rows on stream s; see the
// package documentation for the buffers' padding and alignment.
func (w *Weight) Matmul(s driver.Stream, y driver.Ptr, ldY int, x driver.Ptr, ldX int, M int, beta float32) error {
	if w == nil || w.h == nil {
		return fmt.Errorf("sparselt: Matmul on a destroyed weight")
	}
	if err := checkProduct(w.N, w.K, M, ldX, ldY, uintptr(x), uintptr(y)); err != nil {
		return fmt.Errorf("%v, M=%d: %w", w, M, err)
	}
	h := w.h
	h.mu.Lock()
	defer h.mu.Unlock()
	mpad := padM(M)
	p, err := w.plan(s, mpad, ldX, ldY, x)
	if err != nil {
		return fmt.Errorf("sparselt: %v, M=%d (padded %d): %w", w, M, mpad, err)
	}
	alpha, b := float32(1), beta
	stream := s
	st := h.a.cusparseLtMatmul(h.h.ptr(), p.plan.ptr(), unsafe.Pointer(&alpha), w.comp, x,
		unsafe.Pointer(&b), y, y, h.ws, &stream, 1)
	if err := check("cusparseLtMatmul", st); err != nil {
		return fmt.Errorf("sparselt: %v, M=%d (padded %d): %w", w, M, mpad, err)
	}
	return nil
}

// plan returns the cached plan of (mpad, ldX, ldY), creating it (and,
// with Search, searching its configuration) on first use. h.mu is held.
func (w *Weight) plan(s driver.Stream, mpad, ldX, ldY int, x driver.Ptr) (_ *plan, err error) {
	key := planKey{Mpad: mpad, LdX: ldX, LdY: ldY}
	if p := w.plans[key]; p != nil {
		return p, nil
	}
	h := w.h
	a, hp := h.a, h.h.ptr()
	pr, err := describe(w.layout, w.N, w.K, mpad, ldX, ldY)
	if err != nil {
		return nil, err
	}
	p := &plan{dense: newOpaque(), out: newOpaque(), matmul: newOpaque(), alg: newOpaque(), plan: newOpaque()}
	defer func() {
		if err != nil {
			h.freePlan(p)
		}
	}()
	if err := check("cusparseLtDenseDescriptorInit(X)", a.cusparseLtDenseDescriptorInit(hp, p.dense.ptr(),
		pr.B.Rows, pr.B.Cols, pr.B.Ld, elemAlign, cudaR16BF, pr.B.Order)); err != nil {
		return nil, err
	}
	p.haveDense = true
	if err := check("cusparseLtDenseDescriptorInit(Y)", a.cusparseLtDenseDescriptorInit(hp, p.out.ptr(),
		pr.D.Rows, pr.D.Cols, pr.D.Ld, elemAlign, cudaR16BF, pr.D.Order)); err != nil {
		return nil, err
	}
	p.haveOut = true
	if err := check("cusparseLtMatmulDescriptorInit", a.cusparseLtMatmulDescriptorInit(hp, p.matmul.ptr(), pr.OpA, pr.OpB,
		w.sparse.ptr(), p.dense.ptr(), p.out.ptr(), p.out.ptr(), compute32F)); err != nil {
		return nil, err
	}
	if w.bias != 0 {
		bias := uint64(w.bias)
		if err := check("cusparseLtMatmulDescSetAttribute(BIAS_POINTER)", a.cusparseLtMatmulDescSetAttribute(hp, p.matmul.ptr(),
			matmulBiasPointer, unsafe.Pointer(&bias), 8)); err != nil {
			return nil, err
		}
	}
	akey := algKey{N: w.N, K: w.K, Mpad: mpad, Layout: w.layout}
	cfg, searched := h.algs[akey]
	if err := h.initAlg(p, searched, cfg, true); err != nil {
		if !searched || !cfg.HaveSplitK {
			return nil, err
		}
		// The split-K settings were refused: keep only the kernel choice.
		if err := h.initAlg(p, true, cfg, false); err != nil {
			return nil, err
		}
	}
	if err := h.sizeWorkspace(p); err != nil {
		return nil, err
	}
	if h.Search && !searched {
		if err := h.search(p, w, s, ldY, mpad, x, akey); err != nil {
			return nil, err
		}
	}
	w.plans[key] = p
	return p, nil
}

// initAlg (re)initializes p's algorithm selection and plan, applying a
// searched configuration when there is one (its split-K part when
// withSplit).
func (h *Handle) initAlg(p *plan, apply bool, cfg algConfig, withSplit bool) error {
	a, hp := h.a, h.h.ptr()
	if p.havePlan {
		a.cusparseLtMatmulPlanDestroy(p.plan.ptr())
		p.havePlan = false
	}
	if p.haveAlg {
		a.cusparseLtMatmulAlgSelectionDestroy(p.alg.ptr())
		p.haveAlg = false
	}
	if err := check("cusparseLtMatmulAlgSelectionInit", a.cusparseLtMatmulAlgSelectionInit(hp, p.alg.ptr(), p.matmul.ptr(), algDefault)); err != nil {
		return err
	}
	p.haveAlg = true
	if apply {
		set := func(name string, attr int32, v int32) error {
			return check("cusparseLtMatmulAlgSetAttribute("+name+")",
				a.cusparseLtMatmulAlgSetAttribute(hp, p.alg.ptr(), attr, unsafe.Pointer(&v), 4))
		}
		if err := set("CONFIG_ID", algConfigID, cfg.ID); err != nil {
			return err
		}
		if withSplit && cfg.HaveSplitK {
			if err := set("SPLIT_K", algSplitK, cfg.SplitK); err != nil {
				return err
			}
			if cfg.SplitK > 1 && cfg.HaveSplitKDetails {
				if err := set("SPLIT_K_MODE", algSplitKMode, cfg.SplitKMode); err != nil {
					return err
				}
				if err := set("SPLIT_K_BUFFERS", algSplitKBuffers, cfg.SplitKBuffers); err != nil {
					return err
				}
			}
		}
	}
	if err := check("cusparseLtMatmulPlanInit", a.cusparseLtMatmulPlanInit(hp, p.plan.ptr(), p.matmul.ptr(), p.alg.ptr())); err != nil {
		return err
	}
	p.havePlan = true
	return nil
}

// sizeWorkspace reads p's workspace size and grows the shared workspace
// to it.
func (h *Handle) sizeWorkspace(p *plan) error {
	var ws uint64
	if err := check("cusparseLtMatmulGetWorkspace", h.a.cusparseLtMatmulGetWorkspace(h.h.ptr(), p.plan.ptr(), &ws)); err != nil {
		return err
	}
	p.ws = int(ws)
	return h.grow(&h.ws, &h.wsSize, p.ws)
}

// grow makes *buf at least n bytes (rounded up to 1 MiB), waiting for the
// device before freeing a smaller one that queued work may still use.
func (h *Handle) grow(buf *driver.Ptr, size *int, n int) error {
	if n <= *size {
		return nil
	}
	n = (n + 1<<20 - 1) &^ (1<<20 - 1)
	if *buf != 0 {
		if err := h.d.Synchronize(); err != nil {
			return err
		}
		if err := h.d.Free(*buf); err != nil {
			return err
		}
		*buf, *size = 0, 0
	}
	p, err := h.d.Alloc(n)
	if err != nil {
		return err
	}
	*buf, *size = p, n
	return nil
}

// search runs cusparseLtMatmulSearch on p (into scratch, beta 0), records
// the configuration it chose for key and resizes the workspace.
func (h *Handle) search(p *plan, w *Weight, s driver.Stream, ldY, mpad int, x driver.Ptr, key algKey) error {
	a, hp := h.a, h.h.ptr()
	if err := h.grow(&h.scratch, &h.scratchSize, ldY*mpad*bf16Size); err != nil {
		return err
	}
	alpha, beta := float32(1), float32(0)
	stream := s
	if err := check("cusparseLtMatmulSearch", a.cusparseLtMatmulSearch(hp, p.plan.ptr(), unsafe.Pointer(&alpha), w.comp, x,
		unsafe.Pointer(&beta), h.scratch, h.scratch, h.ws, &stream, 1)); err != nil {
		return err
	}
	get := func(attr int32, v *int32) bool {
		return a.cusparseLtMatmulAlgGetAttribute(hp, p.alg.ptr(), attr, unsafe.Pointer(v), 4) == 0
	}
	var cfg algConfig
	if err := check("cusparseLtMatmulAlgGetAttribute(CONFIG_ID)",
		a.cusparseLtMatmulAlgGetAttribute(hp, p.alg.ptr(), algConfigID, unsafe.Pointer(&cfg.ID), 4)); err != nil {
		return err
	}
	cfg.HaveSplitK = get(algSplitK, &cfg.SplitK)
	cfg.HaveSplitKDetails = cfg.HaveSplitK && get(algSplitKMode, &cfg.SplitKMode) && get(algSplitKBuffers, &cfg.SplitKBuffers)
	h.algs[key] = cfg
	return h.sizeWorkspace(p)
}

// freePlan releases what p holds.
func (h *Handle) freePlan(p *plan) error {
	a := h.a
	var first error
	keep := func(call string, st int32) {
		if err := check(call, st); first == nil && err != nil {
			first = err
		}
	}
	if p.havePlan {
		keep("cusparseLtMatmulPlanDestroy", a.cusparseLtMatmulPlanDestroy(p.plan.ptr()))
		p.havePlan = false
	}
	if p.haveAlg {
		keep("cusparseLtMatmulAlgSelectionDestroy", a.cusparseLtMatmulAlgSelectionDestroy(p.alg.ptr()))
		p.haveAlg = false
	}
	if p.haveOut {
		keep("cusparseLtMatDescriptorDestroy", a.cusparseLtMatDescriptorDestroy(p.out.ptr()))
		p.haveOut = false
	}
	if p.haveDense {
		keep("cusparseLtMatDescriptorDestroy", a.cusparseLtMatDescriptorDestroy(p.dense.ptr()))
		p.haveDense = false
	}
	return first
}

// Searched returns the configuration chosen for (N, K, padded M) under
// layout, if a search ran: the algorithm configuration id and split-K.
func (h *Handle) Searched(N, K, mpad int, layout Layout) (id, splitK int, ok bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	c, ok := h.algs[algKey{N: N, K: K, Mpad: mpad, Layout: layout}]
	return int(c.ID), int(c.SplitK), ok
}
