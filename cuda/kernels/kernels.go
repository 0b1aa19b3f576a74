package kernels

import (
	_ "embed"
	"fmt"
	"math"
	"strings"
	"sync"

	"github.com/slopeml/slope/cuda/driver"
)

//go:embed kernels_sm80.ptx
var ptxSM80 []byte

//go:embed kernels_sm90.ptx
var ptxSM90 []byte

// PTX returns the embedded PTX for a device of compute capability
// major.minor: sm_90 code for 9.x and newer, sm_80 code for 8.x, and an
// error below 8.0 (bf16 needs sm_80).
func PTX(major, minor int) ([]byte, error) {
	switch {
	case major >= 9:
		return ptxSM90, nil
	case major == 8:
		return ptxSM80, nil
	}
	return nil, fmt.Errorf("kernels: compute capability %d.%d is below 8.0 (bf16 kernels need sm_80)", major, minor)
}

// DType is the element type of activations (T) or of N:M values (V).
type DType int

// Element types.
const (
	F32 DType = iota
	BF16
)

// Size is the element size in bytes (0 for an unknown type).
func (t DType) Size() int {
	switch t {
	case F32:
		return 4
	case BF16:
		return 2
	}
	return 0
}

func (t DType) String() string {
	switch t {
	case F32:
		return "f32"
	case BF16:
		return "bf16"
	}
	return fmt.Sprintf("DType(%d)", int(t))
}

// Act is an activation code, as the kernels take it.
type Act int

// Activations (same formulas as package ops).
const (
	ActNone     Act = 0
	ActRelu     Act = 1
	ActGelu     Act = 2 // erf form
	ActGeluTanh Act = 3
	ActSilu     Act = 4
	ActTanh     Act = 5
	ActSigmoid  Act = 6
)

// spmvBuckets are the compile-time M tiles of spmv24 (entry points
// spmv24_bf16_<T>_m<bucket>); M is served by the smallest bucket >= M.
var spmvBuckets = []int{1, 2, 4, 8, 16}

// SpMV24MaxM is the largest M SpMV24 accepts.
const SpMV24MaxM = 16

// Names lists every kernel entry point of the PTX.
func Names() []string {
	names := []string{"convert_f32_to_bf16", "convert_bf16_to_f32"}
	for _, t := range []string{"f32", "bf16"} {
		for _, k := range []string{"embedding", "layernorm", "add", "bias_act", "act", "nm_expand", "kv_append", "attn_small", "softmax_causal"} {
			names = append(names, k+"_"+t)
		}
	}
	for _, v := range []string{"f32", "bf16"} {
		for _, t := range []string{"f32", "bf16"} {
			names = append(names, "spmm_nm_"+v+"_"+t)
		}
	}
	for _, t := range []string{"f32", "bf16"} {
		for _, b := range spmvBuckets {
			names = append(names, fmt.Sprintf("spmv24_bf16_%s_m%d", t, b))
		}
	}
	for _, t := range []string{"f32", "bf16"} {
		names = append(names, "spmm24tc_bf16_"+t, "nm_gather_"+t, "nm_expand_t_"+t)
	}
	names = append(names, "nm_gather24_f32", "nm_pack_t24_bf16", "nm_pack_t24_reg_bf16", "nm_tmask24_f32", "adamw_f32", "sumsq_f32", "sum_f64",
		"attn_fused64_bf16", "attn_fused128_bf16", "attn_bwd_q64_bf16", "attn_bwd_kv64_bf16", "attn_bwd_q128_bf16", "attn_bwd_kv128_bf16")
	return append(names, backwardNames...)
}

// Set is the loaded kernel module of one device.
type Set struct {
	d   *driver.Device
	mod *driver.Module
	fns map[string]*driver.Function

	// tcPlans memoizes SpMM24TCPlan per (rows, cols, grid): the plan
	// loops over the row blocks with 64-bit divisions, microseconds that
	// a decode step would otherwise pay per product.
	tcMu    sync.Mutex
	tcPlans map[[3]int]tcPlan
}

type tcPlan struct{ blocks, maxC, stepsPerBlock int }

// tcPlan is SpMM24TCPlan(rows, cols, grid), memoized.
func (k *Set) tcPlan(rows, cols, grid int) tcPlan {
	k.tcMu.Lock()
	defer k.tcMu.Unlock()
	key := [3]int{rows, cols, grid}
	if p, ok := k.tcPlans[key]; ok {
		return p
	}
	var p tcPlan
	p.blocks, p.maxC, p.stepsPerBlock = SpMM24TCPlan(rows, cols, grid)
	if k.tcPlans == nil {
		k.tcPlans = map[[3]int]tcPlan{}
	}
	k.tcPlans[key] = p
	return p
}

// SpMM24TCWorkspace is the package function SpMM24TCWorkspace with the
// plan memoized (the form to call per product).
func (k *Set) SpMM24TCWorkspace(rows, cols, grid int) (wsBytes, cntBytes int) {
	return tcWorkspaceBytes(rows, k.tcPlan(rows, cols, grid).maxC)
}

// Load JIT-loads the PTX for d and looks up every kernel. Call it inside
// d.Do. The error names every missing kernel.
func Load(d *driver.Device) (*Set, error) {
	ptx, err := PTX(d.Major, d.Minor)
	if err != nil {
		return nil, err
	}
	mod, err := d.LoadModule(ptx)
	if err != nil {
		return nil, fmt.Errorf("kernels: %w", err)
	}
	k := &Set{d: d, mod: mod, fns: map[string]*driver.Function{}}
	var missing []string
	var first error
	for _, n := range Names() {
		f, err := mod.Function(n)
		if err != nil {
			missing = append(missing, n)
			if first == nil {
				first = err
			}
			continue
		}
		k.fns[n] = f
	}
	if len(missing) > 0 {
		mod.Unload()
		return nil, fmt.Errorf("kernels: %d kernels missing from the PTX (%s): %w", len(missing), strings.Join(missing, ", "), first)
	}
	return k, nil
}

// Unload releases the module (inside Do).
func (k *Set) Unload() error {
	if k.mod == nil {
		return nil
	}
	err := k.mod.Unload()
	k.mod, k.fns = nil, nil
	return err
}

// ---------------------------------------------------------------- validation

// args collects the first argument error of a launcher.
type args struct {
	kernel string
	err    error
}

func (a *args) fail(format string, v ...any) {
	if a.err == nil {
		a.err = fmt.Errorf("kernel %s: %s", a.kernel, fmt.Sprintf(format, v...))
	}
}

func (a *args) pos(name string, v int) {
	if v <= 0 {
		a.fail("%s = %d, want > 0", name, v)
	}
}

func (a *args) nonneg(name string, v int) {
	if v < 0 {
		a.fail("%s = %d, want >= 0", name, v)
	}
}

func (a *args) ptr(name string, p driver.Ptr) {
	if p == 0 {
		a.fail("%s is a null pointer", name)
	}
}

func (a *args) align(name string, p driver.Ptr, n int) {
	if p%driver.Ptr(n) != 0 {
		a.fail("%s (%#x) is not %d-byte aligned", name, uintptr(p), n)
	}
}

func (a *args) dtype(name string, t DType) {
	if t.Size() == 0 {
		a.fail("unknown %s %v", name, t)
	}
}

// eps checks a LayerNorm epsilon: finite and >= 0.
func (a *args) eps(eps float32) {
	if !(eps >= 0) || math.IsInf(float64(eps), 0) {
		a.fail("eps = %v, want a finite value >= 0", eps)
	}
}

func (a *args) ld(name string, ld, width int) {
	if ld < width {
		a.fail("%s = %d is below the width %d", name, ld, width)
	}
}

// i32 converts v for a kernel int argument.
func (a *args) i32(name string, v int) int32 {
	if v < math.MinInt32 || v > math.MaxInt32 {
		a.fail("%s = %d overflows int32", name, v)
		return 0
	}
	return int32(v)
}

// fits checks that a product of sizes (elements of one buffer) stays
// below 2^62, so 64-bit offsets on the device cannot overflow.
func (a *args) fits(name string, dims ...int) int64 {
	p := int64(1)
	for _, d := range dims {
		if d < 0 {
			return 0 // reported elsewhere
		}
		if d != 0 && p > (1<<62)/int64(d) {
			a.fail("%s: %v elements overflow", name, dims)
			return 0
		}
		p *= int64(d)
	}
	return p
}

func suffix(t DType) string { return t.String() }

const threads = 256

// extTile is EXT_TILE in kernels.cu: nm_expand_t's tile of rows (and at
// most of columns).
const extTile = 64

// packRows and packCols are PACK_ROWS and PACK_COLS in kernels.cu:
// nm_pack_t24's tile of W.
const (
	packRows = 64
	packCols = 128
)

// packRegCols and packRegRows are the columns and rows of W one block
// of nm_pack_t24_reg covers: PACKR_GROUPS = 8 groups of 4 columns per
// warp, threads/32 warps; 32 lanes of 4 rows each.
const (
	packRegCols = threads / 32 * 8 * 4
	packRegRows = 32 * 4
)

// blocks1D is the grid of a grid-stride loop over n elements.
func blocks1D(n int64) int {
	b := (n + threads - 1) / threads
	return int(min(max(b, 1), 1<<20))
}

// launch runs kernel name after validation.
func (k *Set) launch(a *args, name string, grid, block driver.Dim3, shared int, s driver.Stream, params ...any) error {
	if a.err != nil {
		return a.err
	}
	if k == nil || k.fns == nil || k.fns[name] == nil {
		return fmt.Errorf("kernel %s: not loaded", name)
	}
	return k.d.Launch(k.fns[name], grid, block, shared, s, params...)
}

// ---------------------------------------------------------------- launchers

// Convert converts n elements from src (type from) to dst (type to):
// F32 -> BF16 rounds to nearest even; BF16 -> F32 is exact.
func (k *Set) Convert(s driver.Stream, from, to DType, dst, src driver.Ptr, n int) error {
	a := &args{kernel: "convert"}
	var name string
	switch {
	case from == F32 && to == BF16:
		name = "convert_f32_to_bf16"
	case from == BF16 && to == F32:
		name = "convert_bf16_to_f32"
	default:
		a.fail("no conversion from %v to %v", from, to)
	}
	if name != "" {
		a.kernel = name
	}
	a.pos("n", n)
	a.ptr("dst", dst)
	a.ptr("src", src)
	nn := a.fits("n", n)
	return k.launch(a, name, driver.D1(blocks1D(nn)), driver.D1(threads), 0, s, dst, src, nn)
}

// Embedding writes out[r] = tok[ids[r]] + pos[positions[r]] for rows rows
// of dim elements; ids and positions are int32 device arrays (positions
// include any offset, computed on the host; neither is range-checked on
// the device).
func (k *Set) Embedding(s driver.Stream, t DType, out, ids, positions, tok, pos driver.Ptr, rows, dim int) error {
	a := &args{kernel: "embedding_" + suffix(t)}
	a.dtype("T", t)
	a.pos("rows", rows)
	a.pos("dim", dim)
	for _, p := range []struct {
		n string
		p driver.Ptr
	}{{"out", out}, {"ids", ids}, {"positions", positions}, {"tok", tok}, {"pos", pos}} {
		a.ptr(p.n, p.p)
	}
	r, dm := a.i32("rows", rows), a.i32("dim", dim)
	a.fits("out", rows, dim)
	return k.launch(a, a.kernel, driver.D1(rows), driver.D1(min(threads, roundUp(dim, 32))), 0, s, out, ids, positions, tok, pos, r, dm)
}

// LayerNorm normalizes each of rows rows of dim elements with fp32 mean
// and biased variance: (x-mean)/sqrt(var+eps)*gamma + beta. gamma and
// beta are fp32 [dim] and may be 0 (then 1 and 0).
func (k *Set) LayerNorm(s driver.Stream, t DType, out, in, gamma, beta driver.Ptr, rows, dim int, eps float32) error {
	a := &args{kernel: "layernorm_" + suffix(t)}
	a.dtype("T", t)
	a.pos("rows", rows)
	a.pos("dim", dim)
	a.ptr("out", out)
	a.ptr("in", in)
	a.eps(eps)
	r, dm := a.i32("rows", rows), a.i32("dim", dim)
	a.fits("in", rows, dim)
	return k.launch(a, a.kernel, driver.D1(rows), driver.D1(threads), 0, s, out, in, gamma, beta, r, dm, eps)
}

// Add writes out[i] = a[i] + b[i] for n elements (out may alias a or b).
func (k *Set) Add(s driver.Stream, t DType, out, x, y driver.Ptr, n int) error {
	a := &args{kernel: "add_" + suffix(t)}
	a.dtype("T", t)
	a.pos("n", n)
	a.ptr("out", out)
	a.ptr("a", x)
	a.ptr("b", y)
	nn := a.fits("n", n)
	return k.launch(a, a.kernel, driver.D1(blocks1D(nn)), driver.D1(threads), 0, s, out, x, y, nn)
}

func (a *args) act(act Act) {
	if act < ActNone || act > ActSigmoid {
		a.fail("unknown activation %d", int(act))
	}
}

// BiasAct computes in place y[r][c] = act(y[r][c] + bias[c]) for a
// [rows, cols] matrix with row stride ldy; bias is fp32 [cols] or 0.
func (k *Set) BiasAct(s driver.Stream, t DType, y driver.Ptr, ldy int, bias driver.Ptr, rows, cols int, act Act) error {
	a := &args{kernel: "bias_act_" + suffix(t)}
	a.dtype("T", t)
	a.pos("rows", rows)
	a.pos("cols", cols)
	a.ld("ldy", ldy, cols)
	a.ptr("y", y)
	a.act(act)
	l, r, c := a.i32("ldy", ldy), a.i32("rows", rows), a.i32("cols", cols)
	a.fits("y", rows, ldy)
	gx := min((cols+threads-1)/threads, 64)
	gy := min(rows, 65535)
	return k.launch(a, a.kernel, driver.Dim3{X: uint32(max(gx, 1)), Y: uint32(max(gy, 1)), Z: 1}, driver.D1(threads), 0, s,
		y, l, bias, r, c, int32(act))
}

// Act writes out[i] = act(in[i]) for n elements (out may alias in).
func (k *Set) Act(s driver.Stream, t DType, out, in driver.Ptr, n int, act Act) error {
	a := &args{kernel: "act_" + suffix(t)}
	a.dtype("T", t)
	a.pos("n", n)
	a.ptr("out", out)
	a.ptr("in", in)
	a.act(act)
	nn := a.fits("n", n)
	return k.launch(a, a.kernel, driver.D1(blocks1D(nn)), driver.D1(threads), 0, s, out, in, nn, int32(act))
}

// nm validates an N:M pattern and shape and returns rows, cols, n and m
// as the kernels' int32 parameters.
func (a *args) nm(rows, cols, n, m int) (r, c, nn, mm int32) {
	a.pos("rows", rows)
	a.pos("cols", cols)
	if n < 1 || n >= m || m > 16 {
		a.fail("pattern %d:%d, want 1 <= n < m <= 16", n, m)
	} else {
		if cols%m != 0 {
			a.fail("cols = %d is not a multiple of m = %d", cols, m)
		}
		if cols > 1<<27 {
			a.fail("cols = %d is too large", cols)
		}
	}
	return a.i32("rows", rows), a.i32("cols", cols), a.i32("n", n), a.i32("m", m)
}

// nm24 validates a 2:4 weight [rows, cols] for the kernels that work on
// groups of 4 rows too (rows a multiple of 4) and returns rows and cols
// as int32 parameters.
func (a *args) nm24(rows, cols int) (r, c int32) {
	r, c, _, _ = a.nm(rows, cols, 2, 4)
	if rows%4 != 0 {
		a.fail("rows = %d is not a multiple of 4", rows)
	}
	return r, c
}

// NMExpand writes the dense row-major [rows, cols] matrix (element type
// v) of an N:M tensor in the container's portable layout: vals rows*k
// elements (k = cols*n/m), idx rows*ceil(k*b/8) bytes.
func (k *Set) NMExpand(s driver.Stream, v DType, dense, vals, idx driver.Ptr, rows, cols, n, m int) error {
	a := &args{kernel: "nm_expand_" + suffix(v)}
	a.dtype("V", v)
	r, c, nn, mm := a.nm(rows, cols, n, m)
	a.ptr("dense", dense)
	a.ptr("vals", vals)
	a.ptr("idx", idx)
	a.fits("dense", rows, cols)
	return k.launch(a, a.kernel, driver.D1(rows), driver.D1(threads), 0, s, dense, vals, idx, r, c, nn, mm)
}

// SpMMNM computes y[i][r] = bias[r] + sum_c W[r][c] * x[i][c] for i < M,
// r < rows, with W an N:M [rows, cols] weight in the portable layout
// (values of type v) and x, y of type t: x is [M, cols] with row stride
// ldx, y is [M, rows] with row stride ldy; bias is fp32 [rows] or 0.
// Generic (any pattern); SpMV24 is the fast 2:4 path.
func (k *Set) SpMMNM(s driver.Stream, v, t DType, y driver.Ptr, ldy int, x driver.Ptr, ldx int, vals, idx, bias driver.Ptr, M, rows, cols, n, m int) error {
	a := &args{kernel: "spmm_nm_" + suffix(v) + "_" + suffix(t)}
	a.dtype("V", v)
	a.dtype("T", t)
	a.pos("M", M)
	r, c, nn, mm := a.nm(rows, cols, n, m)
	a.ld("ldy", ldy, rows)
	a.ld("ldx", ldx, cols)
	a.ptr("y", y)
	a.ptr("x", x)
	a.ptr("vals", vals)
	a.ptr("idx", idx)
	a.fits("x", M, ldx)
	a.fits("y", M, ldy)
	a.fits("vals", rows, cols)
	ly, lx := a.i32("ldy", ldy), a.i32("ldx", ldx)
	mi := a.i32("M", M)
	const warps = 4
	gy := min((M+7)/8, 65535)
	grid := driver.Dim3{X: uint32((rows + warps - 1) / warps), Y: uint32(max(gy, 1)), Z: 1}
	return k.launch(a, a.kernel, grid, driver.D1(32*warps), 0, s, y, ly, x, lx, vals, idx, bias, mi, r, c, nn, mm)
}

// SpMV24Bucket is the compile-time M tile that serves M (1..16), and the
// rows each block of that kernel covers.
func SpMV24Bucket(M int) (bucket, rowsPerBlock int) {
	for _, b := range spmvBuckets {
		if M <= b {
			rw := 2
			if b == 1 {
				rw = 1
			}
			return b, spmvWarps * rw
		}
	}
	return 0, 0
}

const spmvWarps = 4 // SPMV_WARPS in kernels.cu

// SpMV24 is SpMMNM for the 2:4 pattern with bf16 values and M <= 16,
// tuned for decode. It needs cols % 64 == 0, vals and x 16-byte aligned,
// idx 8-byte aligned and ldx*t.Size() a multiple of 16; it returns an
// error otherwise (the caller falls back to SpMMNM).
func (k *Set) SpMV24(s driver.Stream, t DType, y driver.Ptr, ldy int, x driver.Ptr, ldx int, vals, idx, bias driver.Ptr, M, rows, cols int) error {
	a := &args{kernel: "spmv24_bf16_" + suffix(t)}
	ly, lx, mi, r, c := a.check24(t, y, ldy, x, ldx, vals, idx, M, SpMV24MaxM, rows, cols)
	if a.err != nil {
		return a.err
	}
	bucket, rpb := SpMV24Bucket(M)
	name := fmt.Sprintf("%s_m%d", a.kernel, bucket)
	return k.launch(a, name, driver.D1((rows+rpb-1)/rpb), driver.D1(32*spmvWarps), 0, s, y, ly, x, lx, vals, idx, bias, mi, r, c)
}

// check24 validates the arguments the 2:4 kernels (SpMV24, SpMM24TC)
// share: M <= maxM, cols % 64 == 0, 16-byte aligned vals and x rows,
// 8-byte aligned idx, buffers that fit; it returns the int32 kernel
// arguments (a.err holds the first fault).
func (a *args) check24(t DType, y driver.Ptr, ldy int, x driver.Ptr, ldx int, vals, idx driver.Ptr, M, maxM, rows, cols int) (ly, lx, mi, r, c int32) {
	a.dtype("T", t)
	a.pos("M", M)
	if M > maxM {
		a.fail("M = %d exceeds %d", M, maxM)
	}
	a.pos("rows", rows)
	a.pos("cols", cols)
	if cols%64 != 0 {
		a.fail("cols = %d is not a multiple of 64", cols)
	}
	a.ld("ldy", ldy, rows)
	a.ld("ldx", ldx, cols)
	a.ptr("y", y)
	a.ptr("x", x)
	a.ptr("vals", vals)
	a.ptr("idx", idx)
	a.align("vals", vals, 16)
	a.align("x", x, 16)
	a.align("idx", idx, 8)
	if t.Size() != 0 && ldx*t.Size()%16 != 0 {
		a.fail("ldx = %d elements is not a multiple of 16 bytes", ldx)
	}
	a.fits("x", M, ldx)
	a.fits("y", M, ldy)
	a.fits("vals", rows, cols)
	return a.i32("ldy", ldy), a.i32("ldx", ldx), a.i32("M", M), a.i32("rows", rows), a.i32("cols", cols)
}

const (
	tcWarps = 8 // TC_WARPS in kernels.cu
	tcRows  = 16 * tcWarps
	tcStep  = 128
)

// SpMM24TCMaxM is the largest M SpMM24TC accepts.
const SpMM24TCMaxM = 16

// SpMM24TCBlocks is the default grid of SpMM24TCPlan: two resident
// blocks per SM on a 132-SM H100/H200 (callers that know the SM count
// pass 2*SMs).
const SpMM24TCBlocks = 264

// spmm24tcMinUnits is the fewest 128-row x 128-column units per block
// for which SpMM24TCPlan uses stream-K: with fewer, segments are short
// and most row blocks split (measured on an H200, docs/gpu-logs: stream-K
// 0.67-1.01x of dense at M = 16 on 6.7B shapes, 3.9 and 15.5 units per
// block, against 0.86-1.09x for a one-wave K split; 1.20-1.32x from 13B
// shapes, 19-79 units per block, against at most 1.08x).
const spmm24tcMinUnits = 16

// SpMM24TCPlan is SpMM24TC's launch for rows x cols on a grid of grid
// blocks (SpMM24TCBlocks when grid <= 0): blocks, maxC (the most blocks
// that contribute to one row block of 128 rows; 1: none is split, no
// workspace) and stepsPerBlock. With at least spmm24tcMinUnits units
// (128 rows x 128 columns) per block it is stream-K over exactly grid
// blocks (stepsPerBlock 0: they share the ceil(rows/128) x
// ceil(cols/128) units equally); otherwise a K split: max(1,
// grid/rowBlocks) slices of stepsPerBlock steps per row block, which is
// more than grid blocks when there are more row blocks than grid.
func SpMM24TCPlan(rows, cols, grid int) (blocks, maxC, stepsPerBlock int) {
	if grid <= 0 {
		grid = SpMM24TCBlocks
	}
	rowBlocks := (rows + tcRows - 1) / tcRows
	steps := (cols + tcStep - 1) / tcStep
	U := int64(rowBlocks) * int64(steps)
	if U < int64(grid)*spmm24tcMinUnits {
		slices := min(max(1, grid/rowBlocks), steps)
		stepsPerBlock = (steps + slices - 1) / slices
		slices = (steps + stepsPerBlock - 1) / stepsPerBlock
		return rowBlocks * slices, slices, stepsPerBlock
	}
	blocks = grid
	for rb := 0; rb < rowBlocks; rb++ {
		first := tcBlockOf(int64(rb)*int64(steps), U, blocks)
		last := tcBlockOf(int64(rb)*int64(steps)+int64(steps)-1, U, blocks)
		maxC = max(maxC, last-first+1)
	}
	return blocks, max(maxC, 1), 0
}

// tcBlockOf is tc_block_of: the block of G whose share [b*U/G,
// (b+1)*U/G) holds unit u.
func tcBlockOf(u, U int64, G int) int {
	return int(((u+1)*int64(G)+U-1)/U) - 1
}

// SpMM24TCWorkspace returns the bytes of the fp32 partial sums and of the
// int32 counters SpMM24TC needs for rows x cols on grid (0, 0 when no row
// block is split). The counters must be zero before the first launch;
// every launch leaves them zero.
func SpMM24TCWorkspace(rows, cols, grid int) (wsBytes, cntBytes int) {
	_, maxC, _ := SpMM24TCPlan(rows, cols, grid)
	return tcWorkspaceBytes(rows, maxC)
}

func tcWorkspaceBytes(rows, maxC int) (wsBytes, cntBytes int) {
	if maxC == 1 {
		return 0, 0
	}
	rb := (rows + tcRows - 1) / tcRows
	return rb * maxC * 16 * tcRows * 4, rb * 4
}

// SpMM24TCLayoutBytes returns the bytes of the streaming layout of a
// rows x cols 2:4 weight (values, index words); rows % 16 == 0 and
// cols % 64 == 0.
func SpMM24TCLayoutBytes(rows, cols int) (valBytes, idxBytes int) {
	blocks := rows / 16 * ((cols + tcStep - 1) / tcStep)
	return blocks * 2048, blocks * 256
}

// SpMM24TCLayout reorders a 2:4 weight from the portable layout (vals:
// rows x cols/2 bf16, little-endian bytes; idx: rows x cols/8 bytes) to
// the streaming layout SpMM24TC reads, so that each warp streams one
// contiguous range: values [group][step][h][rh][lane] (16 bytes each:
// lane (g, t) of 64-column half h and row half rh holds the 8 kept
// values 64*step + 32h + 8t.. of row 16*group + g + 8rh) and index words
// [group][step][h][rh][g] (8 bytes: the index bytes 16*step + 8h.. of
// that row), for groups of 16 rows and steps of 128 columns. A missing
// last half (cols % 128 == 64) is zeros. The bytes are those of the
// portable layout, moved (and padded).
func SpMM24TCLayout(vals, idx []byte, rows, cols int) (tv, ti []byte, err error) {
	if rows%16 != 0 || cols%64 != 0 {
		return nil, nil, fmt.Errorf("spmm24tc layout: %dx%d is not a multiple of 16x64", rows, cols)
	}
	if len(vals) != rows*cols || len(idx) != rows*cols/8 {
		return nil, nil, fmt.Errorf("spmm24tc layout: %d value and %d index bytes for %dx%d 2:4 (want %d, %d)",
			len(vals), len(idx), rows, cols, rows*cols, rows*cols/8)
	}
	vb, ib := SpMM24TCLayoutBytes(rows, cols)
	tv, ti = make([]byte, vb), make([]byte, ib)
	steps := (cols + tcStep - 1) / tcStep
	vrow, irow := cols, cols/8 // bytes per portable row
	for rg := 0; rg < rows/16; rg++ {
		for st := 0; st < steps; st++ {
			blk := rg*steps + st
			for h := 0; h < 2; h++ {
				if st*tcStep+64*h >= cols {
					continue
				}
				for rh := 0; rh < 2; rh++ {
					for lane := 0; lane < 32; lane++ {
						g, t := lane>>2, lane&3
						row := 16*rg + g + 8*rh
						src := row*vrow + 16*(8*st+4*h+t)
						copy(tv[((blk*4+2*h+rh)*32+lane)*16:][:16], vals[src:src+16])
					}
					for g := 0; g < 8; g++ {
						row := 16*rg + g + 8*rh
						src := row*irow + 8*(2*st+h)
						copy(ti[((blk*4+2*h+rh)*8+g)*8:][:8], idx[src:src+8])
					}
				}
			}
		}
	}
	return tv, ti, nil
}

// SpMM24TC computes what SpMV24 computes (y[i][r] = bias[r] + sum_c
// W[r][c] x[i][c], i < M <= 16, 2:4 bf16 weights in the streaming
// layout of SpMM24TCLayout: vals and idx) on the sparse tensor cores (mma.sp m16n8k32, fp32 accumulation) with
// the launch SpMM24TCPlan(rows, cols, grid) gives; ws and cnt are its
// workspace (SpMM24TCWorkspace; may be 0 when that is empty). x is
// rounded to bf16 on the fly when t is F32 (exact for BF16). It needs
// rows % 16 == 0, cols % 64 == 0, vals and x 16-byte aligned, idx 8-byte
// aligned and ldx*t.Size() a multiple of 16; it returns an error
// otherwise (the caller falls back to SpMV24 or SpMMNM). Launches that
// share ws and cnt must be ordered (one stream).
func (k *Set) SpMM24TC(s driver.Stream, t DType, y driver.Ptr, ldy int, x driver.Ptr, ldx int, vals, idx, bias, ws, cnt driver.Ptr, M, rows, cols, grid int) error {
	a := &args{kernel: "spmm24tc_bf16_" + suffix(t)}
	if rows%16 != 0 {
		a.fail("rows = %d is not a multiple of 16", rows)
	}
	ly, lx, mi, r, c := a.check24(t, y, ldy, x, ldx, vals, idx, M, SpMM24TCMaxM, rows, cols)
	if a.err != nil {
		return a.err
	}
	p := k.tcPlan(rows, cols, grid)
	blocks, maxC, spb := p.blocks, p.maxC, p.stepsPerBlock
	if maxC > 1 {
		a.ptr("ws", ws)
		a.ptr("cnt", cnt)
		a.align("cnt", cnt, 4)
		if a.err != nil {
			return a.err
		}
	}
	return k.launch(a, a.kernel, driver.D1(blocks), driver.D1(32*tcWarps), 0, s,
		y, ly, x, lx, vals, idx, bias, ws, cnt, mi, r, c, int32(maxC), int32(spb))
}

// NMGather writes (accumulate: adds) the kept positions of a dense
// [rows, cols] matrix (type t, row stride ldd) into out, fp32 [rows, k]
// in the kept-value layout of the N:M mask idx (portable indices, k =
// cols*n/m): the weight gradient of an N:M weight from the dense dW.
func (k *Set) NMGather(s driver.Stream, t DType, out, dense driver.Ptr, ldd int, idx driver.Ptr, rows, cols, n, m int, accumulate bool) error {
	a := &args{kernel: "nm_gather_" + suffix(t)}
	a.dtype("T", t)
	r, c, nn, mm := a.nm(rows, cols, n, m)
	a.ld("ldd", ldd, cols)
	a.ptr("out", out)
	a.ptr("dense", dense)
	a.ptr("idx", idx)
	a.fits("dense", rows, ldd)
	acc := int32(0)
	if accumulate {
		acc = 1
	}
	if t == F32 && n == 2 && m == 4 && ldd%4 == 0 && dense%16 == 0 && out%8 == 0 {
		// One thread per group of four: vector loads and stores.
		return k.launch(a, "nm_gather24_f32", driver.D1(blocks1D(int64(rows)*int64(cols/4))), driver.D1(threads), 0, s,
			out, dense, a.i32("ldd", ldd), idx, r, c, acc)
	}
	return k.launch(a, a.kernel, driver.D1(rows), driver.D1(threads), 0, s, out, dense, a.i32("ldd", ldd), idx, r, c, nn, mm, acc)
}

// NMExpandT writes the dense transposed double-pruned weight dt
// [cols, rows] (type v) of an N:M weight in the portable layout (vals,
// idx) whose kept values survive where keep (one byte per kept value,
// rows*k) is not 0: the input-gradient operand W_dpᵀ. Every element of
// dt is written.
func (k *Set) NMExpandT(s driver.Stream, v DType, dt, vals, idx, keep driver.Ptr, rows, cols, n, m int) error {
	a := &args{kernel: "nm_expand_t_" + suffix(v)}
	a.dtype("V", v)
	r, c, nn, mm := a.nm(rows, cols, n, m)
	a.ptr("dt", dt)
	a.ptr("vals", vals)
	a.ptr("idx", idx)
	a.ptr("keep", keep)
	a.fits("dt", rows, cols)
	if m > extTile {
		a.fail("m = %d exceeds %d", m, extTile)
	}
	if a.err != nil {
		return a.err
	}
	tw := extTile / m * m
	grid := driver.Dim3{X: uint32((cols + tw - 1) / tw), Y: uint32((rows + extTile - 1) / extTile), Z: 1}
	return k.launch(a, a.kernel, grid, driver.D1(threads), 0, s, dt, vals, idx, keep, r, c, nn, mm)
}

// NMPackT24 writes the values part of cuSPARSELt's compressed form of
// the double-pruned transpose W_dpᵀ [cols, rows] of a 2:4 bf16 weight W
// [rows, cols] in the portable layout (vals, idx) whose kept values
// survive where keep (one byte per kept value) is not 0, at most two in
// each group of four consecutive rows of a column: dst [cols, rows/2]
// bf16, each group's two slots in increasing row order, a lone value of
// the group's last row in the second slot, of another row in the first,
// zeros elsewhere (the layout package sparselt's CheckValues verifies).
// It replaces NMExpandT plus a cuSPARSELt compress while the transpose
// mask stays the same. rows and cols must be multiples of 4.
// The packing runs in nm_pack_t24_reg where it fits (packT24Reg), else
// in the tiled nm_pack_t24.
func (k *Set) NMPackT24(s driver.Stream, dst, vals, idx, keep driver.Ptr, rows, cols int) error {
	return k.nmPackT24(s, dst, vals, idx, keep, rows, cols, packT24Reg(dst, vals, idx, keep, cols))
}

// packT24Reg reports whether nm_pack_t24_reg takes a packing: cols a
// multiple of 32, vals and keep 16-byte aligned, idx and dst 4-byte.
func packT24Reg(dst, vals, idx, keep driver.Ptr, cols int) bool {
	return cols%32 == 0 && vals%16 == 0 && keep%16 == 0 && idx%4 == 0 && dst%4 == 0
}

// nmPackT24 is NMPackT24 with the kernel chosen: nm_pack_t24_reg when
// reg (which must fit: packT24Reg), else the tiled nm_pack_t24.
func (k *Set) nmPackT24(s driver.Stream, dst, vals, idx, keep driver.Ptr, rows, cols int, reg bool) error {
	a := &args{kernel: "nm_pack_t24_bf16"}
	tileCols, tileRows := packCols, packRows
	if reg {
		a.kernel = "nm_pack_t24_reg_bf16"
		tileCols, tileRows = packRegCols, packRegRows
		if !packT24Reg(dst, vals, idx, keep, cols) {
			a.fail("cols %d or an alignment does not fit (packT24Reg)", cols)
		}
	}
	r, c := a.nm24(rows, cols)
	a.ptr("dst", dst)
	a.ptr("vals", vals)
	a.ptr("idx", idx)
	a.ptr("keep", keep)
	a.fits("dst", rows, cols)
	if a.err != nil {
		return a.err
	}
	if uintptr(vals)%4 != 0 || uintptr(keep)%2 != 0 || uintptr(dst)%4 != 0 {
		a.fail("vals and dst must be 4-byte aligned, keep 2-byte aligned")
	}
	if a.err != nil {
		return a.err
	}
	grid := driver.Dim3{X: uint32((cols + tileCols - 1) / tileCols), Y: uint32((rows + tileRows - 1) / tileRows), Z: 1}
	return k.launch(a, a.kernel, grid, driver.D1(threads), 0, s, dst, vals, idx, keep, r, c)
}

// NMTMask24 recomputes the transpose mask of a 2:4 weight W [rows, cols]
// in the portable layout (fp32 values vals, indices idx) by magnitude:
// keep (one byte per kept value, W's values order) gets 1 for the kept
// values that are among the 2 of largest magnitude of their column in
// their group of 4 rows (all when there are at most 2; ties to the lower
// row; NaN above every number), 0 for the others: the trainer's
// --mask-refresh, as format.DoublePruneMagnitude. rows and cols must be
// multiples of 4.
func (k *Set) NMTMask24(s driver.Stream, keep, vals, idx driver.Ptr, rows, cols int) error {
	a := &args{kernel: "nm_tmask24_f32"}
	r, c := a.nm24(rows, cols)
	a.ptr("keep", keep)
	a.ptr("vals", vals)
	a.ptr("idx", idx)
	a.fits("vals", rows, cols)
	if a.err != nil {
		return a.err
	}
	grid := driver.Dim3{X: uint32((cols + extTile - 1) / extTile), Y: uint32((rows + extTile - 1) / extTile), Z: 1}
	return k.launch(a, a.kernel, grid, driver.D1(threads), 0, s, keep, vals, idx, r, c)
}

// AdamWStep holds one AdamW update's scalars as package train's CPU
// update (cpu.AdamWStep) takes them: the moment decays, the bias
// corrections BC1 = 1-Beta1^t and BC2 = 1-Beta2^t, the learning rate,
// Shrink = 1-LR·weight decay, Eps, and GradScale, the clipping factor
// applied to the gradient first (1: none). NewAdamWStep derives them.
type AdamWStep struct {
	Beta1, Beta2, BC1, BC2, LR, Shrink, Eps float64
	GradScale                               float32
}

// NewAdamWStep is the update of 1-based step t with weight decay wd, as
// package train derives it.
func NewAdamWStep(lr, beta1, beta2, eps, wd float64, t int, gradScale float32) AdamWStep {
	return AdamWStep{Beta1: beta1, Beta2: beta2, BC1: 1 - math.Pow(beta1, float64(t)), BC2: 1 - math.Pow(beta2, float64(t)),
		LR: lr, Shrink: 1 - lr*wd, Eps: eps, GradScale: gradScale}
}

// AdamW updates n parameters w (fp32) from grad with moments m1, m2
// (fp32, updated), bit-identically to package train's CPU AdamW; wbf,
// when not 0, receives the updated values as bf16 (the copy the forward
// kernels read).
func (k *Set) AdamW(s driver.Stream, w, grad, m1, m2, wbf driver.Ptr, n int, h AdamWStep) error {
	a := &args{kernel: "adamw_f32"}
	a.pos("n", n)
	a.ptr("w", w)
	a.ptr("grad", grad)
	a.ptr("m1", m1)
	a.ptr("m2", m2)
	if !(h.Beta1 >= 0 && h.Beta1 < 1) || !(h.Beta2 >= 0 && h.Beta2 < 1) || !(h.BC1 > 0 && h.BC1 <= 1) || !(h.BC2 > 0 && h.BC2 <= 1) {
		a.fail("beta1 %g, beta2 %g, bias corrections %g, %g out of range", h.Beta1, h.Beta2, h.BC1, h.BC2)
	}
	// Four elements per thread (the kernel's aligned path).
	return k.launch(a, a.kernel, driver.D1(blocks1D((int64(n)+3)/4)), driver.D1(threads), 0, s, w, grad, m1, m2, wbf, int64(n),
		h.GradScale, h.Beta1, 1-h.Beta1, h.Beta2, 1-h.Beta2, h.LR, h.Eps, h.Shrink, h.BC1, h.BC2)
}

// SumSquaresParts is the number of fp64 partial sums SumSquares needs
// as scratch.
const SumSquaresParts = 1024

// SumSquares adds the sum of squares of n fp32 values g to the fp64 at
// out, in fp64 and in an order fixed by n (per-block sums into parts,
// SumSquaresParts fp64 of scratch, then one block adds them), so the
// result has the same bits on every run.
func (k *Set) SumSquares(s driver.Stream, out, parts, g driver.Ptr, n int) error {
	a := &args{kernel: "sumsq_f32"}
	a.pos("n", n)
	a.ptr("out", out)
	a.ptr("parts", parts)
	a.ptr("g", g)
	a.align("out", out, 8)
	a.align("parts", parts, 8)
	blocks := min(blocks1D((int64(n)+3)/4), SumSquaresParts)
	if err := k.launch(a, a.kernel, driver.D1(blocks), driver.D1(threads), 0, s, parts, g, int64(n)); err != nil {
		return err
	}
	b := &args{kernel: "sum_f64"}
	return k.launch(b, b.kernel, driver.D1(1), driver.D1(threads), 0, s, out, parts, int32(blocks))
}

// KVAppend copies src [batch*seq, d] into cache [batch, maxLen, d] at
// positions past..past+seq-1 of each sequence.
func (k *Set) KVAppend(s driver.Stream, t DType, cache, src driver.Ptr, batch, seq, past, maxLen, d int) error {
	a := &args{kernel: "kv_append_" + suffix(t)}
	a.dtype("T", t)
	a.pos("batch", batch)
	a.pos("seq", seq)
	a.nonneg("past", past)
	a.pos("d", d)
	if past+seq > maxLen {
		a.fail("past %d + seq %d exceed maxLen %d", past, seq, maxLen)
	}
	a.ptr("cache", cache)
	a.ptr("src", src)
	a.fits("cache", batch, maxLen, d)
	n := a.fits("src", batch, seq, d)
	b, sq, p, ml, dd := a.i32("batch", batch), a.i32("seq", seq), a.i32("past", past), a.i32("maxLen", maxLen), a.i32("d", d)
	return k.launch(a, a.kernel, driver.D1(blocks1D(n)), driver.D1(threads), 0, s, cache, src, b, sq, p, ml, dd)
}

// AttnMaxHeadDim is the largest head size AttnSmall supports.
const AttnMaxHeadDim = 256

const attnWarps = 4 // ATTN_WARPS in kernels.cu

// AttnSmall computes causal multi-head attention for the seq new queries
// of each sequence (q, out [batch*seq, heads*headDim]) over the cached
// keys/values [batch, maxLen, heads*headDim] at positions 0..past+i
// whose int32 mask [batch, maskLd] entry is non-zero: softmax(scale *
// q.k) v in fp32 with the maximum subtracted; a query with no visible key
// gets zeros. Meant for decode (small seq) but correct for any seq.
func (k *Set) AttnSmall(s driver.Stream, t DType, out, q, kcache, vcache, mask driver.Ptr, maskLd, batch, seq, past, maxLen, heads, headDim int, scale float32) error {
	a := &args{kernel: "attn_small_" + suffix(t)}
	a.dtype("T", t)
	a.pos("headDim", headDim)
	if headDim > AttnMaxHeadDim {
		a.fail("headDim = %d exceeds %d", headDim, AttnMaxHeadDim)
	}
	a.attention(out, q, kcache, vcache, mask, maskLd, batch, seq, past, maxLen, heads, headDim)
	ml := a.i32("maskLd", maskLd)
	b, sq, p, mx := a.i32("batch", batch), a.i32("seq", seq), a.i32("past", past), a.i32("maxLen", maxLen)
	h, hd := a.i32("heads", heads), a.i32("headDim", headDim)
	a.i32("d", heads*headDim)
	if batch > 65535 {
		a.fail("batch = %d exceeds 65535", batch)
	}
	grid := driver.Dim3{X: uint32(max(heads, 1)), Y: uint32(max(batch, 1)), Z: 1}
	return k.launch(a, a.kernel, grid, driver.D1(32*attnWarps), 0, s, out, q, kcache, vcache, mask, ml, b, sq, p, mx, h, hd, scale)
}

// attention checks the arguments the attention kernels share (AttnSmall,
// AttnFused, AttnFusedBackward with its output o as out): q, out
// [batch*seq, heads*headDim], the caches [batch, maxLen, ...] holding
// past+seq keys, the mask [batch, maskLd].
func (a *args) attention(out, q, kcache, vcache, mask driver.Ptr, maskLd, batch, seq, past, maxLen, heads, headDim int) {
	a.pos("batch", batch)
	a.pos("seq", seq)
	a.nonneg("past", past)
	a.pos("heads", heads)
	if past+seq > maxLen {
		a.fail("past %d + seq %d exceed maxLen %d", past, seq, maxLen)
	}
	a.ld("maskLd", maskLd, past+seq)
	for _, p := range []struct {
		n string
		p driver.Ptr
	}{{"out", out}, {"q", q}, {"kcache", kcache}, {"vcache", vcache}, {"mask", mask}} {
		a.ptr(p.n, p.p)
	}
	a.fits("cache", batch, maxLen, heads, headDim)
	a.fits("mask", batch, maskLd)
}

// AttnFusedOK reports whether AttnFused takes a head size: 64 or 128.
func AttnFusedOK(headDim int) bool { return headDim == 64 || headDim == 128 }

// AttnFusedAligned reports whether AttnFused's buffers have its
// alignments: k and v 16 bytes, q and out 4.
func AttnFusedAligned(out, q, k, v driver.Ptr) bool { return (k|v)%16 == 0 && (q|out)%4 == 0 }

// AttnFusedBackwardAligned reports whether AttnFusedBackward's buffers
// have its alignments: q, k, v and dout 16 bytes, the others 4 (0, for a
// gradient not wanted, is aligned).
func AttnFusedBackwardAligned(dq, dk, dv, q, k, v, o, dout driver.Ptr) bool {
	return (q|k|v|dout)%16 == 0 && (o|dq|dk|dv)%4 == 0
}

// attnFusedQueries is FA_BQ in kernels.cu, the queries (or keys) of one
// block of the fused kernels, and attnFusedThreads their block size
// (__launch_bounds__(128)).
const (
	attnFusedQueries = 64
	attnFusedThreads = 128
)

// fusedAttention checks what the fused attention kernels add to
// attention's checks (head size, grid limits) and returns their grid.
func (a *args) fusedAttention(batch, seq, heads, headDim int) driver.Dim3 {
	if !AttnFusedOK(headDim) {
		a.fail("headDim = %d, want 64 or 128", headDim)
	}
	if batch > 65535 || heads > 65535 {
		a.fail("batch %d or heads %d exceeds 65535", batch, heads)
	}
	return driver.Dim3{X: uint32((max(seq, 1) + attnFusedQueries - 1) / attnFusedQueries), Y: uint32(max(heads, 1)), Z: uint32(max(batch, 1))}
}

// AttnFused is causal attention in one pass on the tensor cores
// (attn_fused*_bf16, flash-style: the scores stay in registers), bf16:
// out [batch*seq, d] for queries q [batch*seq, d] at positions past..
// past+seq-1 against keys and values k, v [batch, maxLen, d] (d =
// heads*headDim), each query seeing the keys j <= its position with
// mask[b*maskLd + j] != 0, zeros when it sees none; the same result as
// SoftmaxCausal's probabilities times V within bf16 rounding (P is
// rounded to bf16 before its product with V, unnormalised). headDim 64 or
// 128 (AttnFusedOK); k and v 16-byte aligned, q and out 4-byte aligned.
func (k *Set) AttnFused(s driver.Stream, out, q, kc, vc, mask driver.Ptr, maskLd, batch, seq, past, maxLen, heads, headDim int, scale float32) error {
	a := &args{kernel: fmt.Sprintf("attn_fused%d_bf16", headDim)}
	grid := a.fusedAttention(batch, seq, heads, headDim)
	a.attention(out, q, kc, vc, mask, maskLd, batch, seq, past, maxLen, heads, headDim)
	if !AttnFusedAligned(out, q, kc, vc) {
		a.fail("alignment: kcache %#x and vcache %#x must be 16-byte aligned, q %#x and out %#x 4-byte", uintptr(kc), uintptr(vc), uintptr(q), uintptr(out))
	}
	ml, sq, p, mx := a.i32("maskLd", maskLd), a.i32("seq", seq), a.i32("past", past), a.i32("maxLen", maxLen)
	d := a.i32("d", heads*headDim)
	return k.launch(a, a.kernel, grid, driver.D1(attnFusedThreads), 0, s, out, q, kc, vc, mask, ml, sq, p, mx, d, scale)
}

// AttnFusedBackward adds the gradients of AttnFused over whole sequences
// (past 0; k and v [batch*seq, d] as q) into dq, dk, dv (bf16 [batch*seq,
// d]; each may be 0 when not wanted), given the forward's output o and
// its gradient dout, in two kernels (attn_bwd_q*, attn_bwd_kv*): P is
// recomputed from the scores with each row's log-sum-exp, which the
// first kernel finds and writes to lse with Dq = dout·o per row (both
// fp32 [heads, batch*seq], scratch the caller provides), before its dQ;
// the second reads them for dK and dV. q, k, v and dout 16-byte
// aligned, the others 4-byte; headDim 64 or 128 (AttnFusedOK).
func (k *Set) AttnFusedBackward(s driver.Stream, dq, dk, dv, lse, dqdot, q, kc, vc, o, dout, mask driver.Ptr, batch, seq, heads, headDim int,
	scale float32) error {
	a := &args{kernel: fmt.Sprintf("attn_bwd_q%d_bf16", headDim)}
	grid := a.fusedAttention(batch, seq, heads, headDim)
	a.attention(o, q, kc, vc, mask, seq, batch, seq, 0, seq, heads, headDim)
	if !AttnFusedBackwardAligned(dq, dk, dv, q, kc, vc, o, dout) {
		a.fail("alignment: q, k, v and dout must be 16-byte aligned, o, dq, dk and dv 4-byte")
	}
	a.align("lse", lse, 4)
	a.align("dq_dot", dqdot, 4)
	a.ptr("dout", dout)
	a.ptr("lse", lse)
	a.ptr("dq_dot", dqdot)
	sq, d := a.i32("seq", seq), a.i32("d", heads*headDim)
	if err := k.launch(a, a.kernel, grid, driver.D1(attnFusedThreads), 0, s, dq, lse, dqdot, q, kc, vc, o, dout, mask, sq, d, scale); err != nil {
		return err
	}
	if dk == 0 && dv == 0 {
		return nil
	}
	return k.launch(a, fmt.Sprintf("attn_bwd_kv%d_bf16", headDim), grid, driver.D1(attnFusedThreads), 0, s, dk, dv, lse, dqdot, q, kc, vc,
		dout, mask, sq, d, scale)
}

// SoftmaxCausal computes, for batch entry b, probs [heads, seq, total]
// (type t; total = past+seq) from fp32 scores of the same shape: row
// (h, i) is the softmax of scale*scores over j <= past+i with mask[b][j]
// != 0 and 0 elsewhere; a row with no visible key is all zeros.
func (k *Set) SoftmaxCausal(s driver.Stream, t DType, probs, scores, mask driver.Ptr, maskLd, b, heads, seq, past int, scale float32) error {
	a := &args{kernel: "softmax_causal_" + suffix(t)}
	a.dtype("T", t)
	a.nonneg("b", b)
	a.pos("heads", heads)
	a.pos("seq", seq)
	a.nonneg("past", past)
	total := past + seq
	a.ld("maskLd", maskLd, total)
	a.ptr("probs", probs)
	a.ptr("scores", scores)
	a.ptr("mask", mask)
	a.fits("scores", heads, seq, total)
	a.fits("mask", b+1, maskLd)
	if heads > 65535 {
		a.fail("heads = %d exceeds 65535", heads)
	}
	ml, bb, h, sq, p, tt := a.i32("maskLd", maskLd), a.i32("b", b), a.i32("heads", heads), a.i32("seq", seq), a.i32("past", past), a.i32("total", total)
	grid := driver.Dim3{X: uint32(max(seq, 1)), Y: uint32(max(heads, 1)), Z: 1}
	return k.launch(a, a.kernel, grid, driver.D1(threads), 0, s, probs, scores, mask, ml, bb, h, sq, p, tt, scale)
}

func roundUp(v, m int) int { return (v + m - 1) / m * m }
