package kernels

import (
	"fmt"
	"github.com/slopeml/slope/cuda/gputest"
	"math"
	"math/rand/v2"
	"sync"
	"testing"
	"unsafe"

	"github.com/slopeml/slope/cuda/driver"
	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/ops"
)

var (
	gpuOnce sync.Once
	gpuDev  *driver.Device
	gpuSet  *Set
	gpuErr  error
)

// openGPU opens GPU 0 and loads the kernels once for the package. Without
// a GPU the test is skipped, or fails when SLOPE_REQUIRE_GPU=1.
func openGPU(t testing.TB) *gpu {
	t.Helper()
	gpuOnce.Do(func() {
		gpuDev, gpuErr = driver.Open(0)
		if gpuErr != nil {
			return
		}
		gpuErr = gpuDev.Do(func() error {
			var err error
			gpuSet, err = Load(gpuDev)
			return err
		})
		if gpuErr != nil {
			gpuErr = fmt.Errorf("%s: %w", gpuDev.Info, gpuErr)
		}
	})
	if gpuErr != nil {
		if gpuDev != nil { // a GPU, but the kernels do not load
			t.Fatalf("GPU: %v", gpuErr)
		}
		gputest.Unavailable(t, gpuErr, driver.ErrNoDevice)
	}
	return &gpu{d: gpuDev, k: gpuSet}
}

// gpu runs one test case on the device thread. Its helpers record the
// first error instead of calling t.Fatal (which must not run on the CUDA
// worker goroutine) and return zero values after it.
type gpu struct {
	d    *driver.Device
	k    *Set
	err  error
	ptrs []driver.Ptr
}

// run executes fn inside Do, synchronizes, and frees every buffer.
func (g *gpu) run(t testing.TB, fn func() error) {
	t.Helper()
	err := g.d.Do(func() error {
		defer func() {
			for _, p := range g.ptrs {
				g.d.Free(p)
			}
			g.ptrs = nil
		}()
		if err := fn(); err != nil {
			return err
		}
		if g.err != nil {
			return g.err
		}
		return g.d.Synchronize()
	})
	if err != nil {
		t.Fatal(err)
	}
}

func (g *gpu) alloc(bytes int) driver.Ptr {
	if g.err != nil {
		return 0
	}
	p, err := g.d.Alloc(bytes)
	if err != nil {
		g.err = err
		return 0
	}
	g.ptrs = append(g.ptrs, p)
	return p
}

// poison allocates bytes filled with 0xFF (NaN in f32 and bf16).
func (g *gpu) poison(bytes int) driver.Ptr {
	p := g.alloc(bytes)
	if g.err == nil {
		g.err = g.d.Memset8(p, 0xFF, bytes)
	}
	return p
}

func (g *gpu) putBytes(b unsafe.Pointer, n int) driver.Ptr {
	p := g.alloc(n)
	if g.err == nil {
		g.err = g.d.CopyIn(p, b, n)
	}
	return p
}

func (g *gpu) putF32(v []float32) driver.Ptr { return g.putBytes(unsafe.Pointer(&v[0]), 4*len(v)) }
func (g *gpu) putI32(v []int32) driver.Ptr   { return g.putBytes(unsafe.Pointer(&v[0]), 4*len(v)) }
func (g *gpu) putU8(v []byte) driver.Ptr     { return g.putBytes(unsafe.Pointer(&v[0]), len(v)) }
func (g *gpu) putU16(v []uint16) driver.Ptr  { return g.putBytes(unsafe.Pointer(&v[0]), 2*len(v)) }

// putT uploads v as elements of type t.
func (g *gpu) putT(t DType, v []float32) driver.Ptr {
	if t == BF16 {
		return g.putU16(toBF16(v))
	}
	return g.putF32(v)
}

// getT downloads n elements of type t as floats.
func (g *gpu) getT(t DType, p driver.Ptr, n int) []float32 {
	out := make([]float32, n)
	if g.err != nil {
		return out
	}
	if t == BF16 {
		h := make([]uint16, n)
		g.err = g.d.CopyOut(unsafe.Pointer(&h[0]), p, 2*n)
		for i, b := range h {
			out[i] = format.BFloat16ToFloat32(b)
		}
		return out
	}
	g.err = g.d.CopyOut(unsafe.Pointer(&out[0]), p, 4*n)
	return out
}

func tol(t DType) float64 {
	if t == BF16 {
		return 1e-2
	}
	return 1e-5
}

// rnd returns n normal values, bf16-representable when t is BF16 (so the
// reference sees exactly what the GPU reads).
func rnd(rng *rand.Rand, t DType, n int) []float32 { return randVec(rng, n, t == BF16) }

func check(t *testing.T, what string, dt DType, got []float32, want []float64) {
	t.Helper()
	if e := relL2(got, want); !(e <= tol(dt)) {
		t.Errorf("%s (%v): relative L2 error %.3g > %.0e", what, dt, e, tol(dt))
	}
}

var dtypes = []DType{F32, BF16}

func TestGPUConvert(t *testing.T) {
	g := openGPU(t)
	rng := rand.New(rand.NewPCG(1, 1))
	n := 100003
	src := make([]float32, n)
	for i := range src {
		src[i] = float32(rng.NormFloat64() * math.Pow(2, float64(rng.IntN(40)-20)))
	}
	// ties and specials
	src[0], src[1], src[2] = math.Float32frombits(0x3f808000), math.Float32frombits(0x3f818000), float32(math.Inf(-1))
	src[3], src[4] = math.MaxFloat32, float32(math.Copysign(0, -1))
	var bf []uint16
	var back []float32
	g.run(t, func() error {
		s := g.putF32(src)
		d := g.poison(2 * n)
		if err := g.k.Convert(0, F32, BF16, d, s, n); err != nil {
			return err
		}
		bf = make([]uint16, n)
		if g.err == nil {
			g.err = g.d.CopyOut(unsafe.Pointer(&bf[0]), d, 2*n)
		}
		f := g.poison(4 * n)
		if err := g.k.Convert(0, BF16, F32, f, d, n); err != nil {
			return err
		}
		back = g.getT(F32, f, n)
		return nil
	})
	for i, v := range src {
		if want := format.Float32ToBFloat16(v); bf[i] != want {
			t.Fatalf("f32->bf16 of %v (%#x): %#x, want %#x", v, math.Float32bits(v), bf[i], want)
		}
		if want := format.BFloat16ToFloat32(bf[i]); math.Float32bits(back[i]) != math.Float32bits(want) {
			t.Fatalf("bf16->f32 of %#x: %v, want %v", bf[i], back[i], want)
		}
	}
}

func TestGPUEmbedding(t *testing.T) {
	g := openGPU(t)
	rng := rand.New(rand.NewPCG(2, 1))
	for _, dt := range dtypes {
		for _, dim := range []int{1, 33, 300, 1030} {
			vocab, npos, rows := 50, 40, 7
			tok, pos := rnd(rng, dt, vocab*dim), rnd(rng, dt, npos*dim)
			ids, positions := make([]int32, rows), make([]int32, rows)
			want := make([]float64, rows*dim)
			for r := range ids {
				ids[r], positions[r] = int32(rng.IntN(vocab)), int32(rng.IntN(npos))
				for c := 0; c < dim; c++ {
					want[r*dim+c] = float64(tok[int(ids[r])*dim+c]) + float64(pos[int(positions[r])*dim+c])
				}
			}
			var got []float32
			g.run(t, func() error {
				out := g.poison(rows * dim * dt.Size())
				if err := g.k.Embedding(0, dt, out, g.putI32(ids), g.putI32(positions), g.putT(dt, tok), g.putT(dt, pos), rows, dim); err != nil {
					return err
				}
				got = g.getT(dt, out, rows*dim)
				return nil
			})
			check(t, fmt.Sprintf("embedding dim %d", dim), dt, got, want)
		}
	}
}

func TestGPULayerNorm(t *testing.T) {
	g := openGPU(t)
	rng := rand.New(rand.NewPCG(3, 1))
	for _, dt := range dtypes {
		for _, dim := range []int{1, 7, 256, 1000, 4099} {
			for _, affine := range []bool{false, true} {
				rows := 5
				x := rnd(rng, dt, rows*dim)
				for i := range x { // an offset mean stresses the two-pass variance
					x[i] += 3
					if dt == BF16 {
						x[i] = format.BFloat16ToFloat32(format.Float32ToBFloat16(x[i]))
					}
				}
				var gamma, beta []float32
				if affine {
					gamma, beta = randVec(rng, dim, false), randVec(rng, dim, false)
				}
				const eps = 1e-5
				want := make([]float64, rows*dim)
				for r := 0; r < rows; r++ {
					row := x[r*dim : (r+1)*dim]
					var mean, vr float64
					for _, v := range row {
						mean += float64(v)
					}
					mean /= float64(dim)
					for _, v := range row {
						vr += (float64(v) - mean) * (float64(v) - mean)
					}
					inv := 1 / math.Sqrt(vr/float64(dim)+eps)
					for c, v := range row {
						z := (float64(v) - mean) * inv
						if affine {
							z = z*float64(gamma[c]) + float64(beta[c])
						}
						want[r*dim+c] = z
					}
				}
				var got []float32
				g.run(t, func() error {
					var gp, bp driver.Ptr
					if affine {
						gp, bp = g.putF32(gamma), g.putF32(beta)
					}
					out := g.poison(rows * dim * dt.Size())
					if err := g.k.LayerNorm(0, dt, out, g.putT(dt, x), gp, bp, rows, dim, eps); err != nil {
						return err
					}
					got = g.getT(dt, out, rows*dim)
					return nil
				})
				if dim == 1 { // output is beta (or 0): compare absolutely
					for i, v := range got {
						if math.Abs(float64(v)-want[i]) > 1e-2 {
							t.Errorf("layernorm dim 1 (%v): %v, want %v", dt, v, want[i])
						}
					}
					continue
				}
				check(t, fmt.Sprintf("layernorm dim %d affine %v", dim, affine), dt, got, want)
			}
		}
	}
}

var acts = []struct {
	a  Act
	op string
}{{ActRelu, ops.OpRelu}, {ActGelu, ops.OpGelu}, {ActGeluTanh, ops.OpGeluTanh}, {ActSilu, ops.OpSilu}, {ActTanh, ops.OpTanh}, {ActSigmoid, ops.OpSigmoid}}

// actRef is the activation in float64 (package ops' formulas).
func actRef(a Act, x float64) float64 {
	switch a {
	case ActRelu:
		return max(x, 0)
	case ActGelu:
		return 0.5 * x * (1 + math.Erf(x/math.Sqrt2))
	case ActGeluTanh:
		return 0.5 * x * (1 + math.Tanh(math.Sqrt(2/math.Pi)*(x+0.044715*x*x*x)))
	case ActSilu:
		return x / (1 + math.Exp(-x))
	case ActTanh:
		return math.Tanh(x)
	case ActSigmoid:
		return 1 / (1 + math.Exp(-x))
	}
	return x
}

func TestActRefMatchesOps(t *testing.T) {
	for _, a := range acts {
		f, ok := ops.Activation(a.op)
		if !ok {
			t.Fatalf("ops has no %s", a.op)
		}
		for _, x := range []float32{-5, -1.3, -0.1, 0, 0.2, 0.9, 3, 7} {
			if d := math.Abs(float64(f(x)) - actRef(a.a, float64(x))); d > 1e-6 {
				t.Errorf("%s(%v): ops %v, ref %v", a.op, x, f(x), actRef(a.a, float64(x)))
			}
		}
	}
}

func TestGPUAddAct(t *testing.T) {
	g := openGPU(t)
	rng := rand.New(rand.NewPCG(4, 1))
	for _, dt := range dtypes {
		for _, n := range []int{1, 1000, 70001} {
			a, b := rnd(rng, dt, n), rnd(rng, dt, n)
			want := make([]float64, n)
			for i := range want {
				want[i] = float64(a[i]) + float64(b[i])
			}
			var got []float32
			g.run(t, func() error {
				out := g.poison(n * dt.Size())
				if err := g.k.Add(0, dt, out, g.putT(dt, a), g.putT(dt, b), n); err != nil {
					return err
				}
				got = g.getT(dt, out, n)
				return nil
			})
			check(t, fmt.Sprintf("add n %d", n), dt, got, want)
			for _, ac := range append(acts, struct {
				a  Act
				op string
			}{ActNone, "none"}) {
				for i := range want {
					want[i] = actRef(ac.a, float64(a[i]))
				}
				g.run(t, func() error {
					out := g.poison(n * dt.Size())
					if err := g.k.Act(0, dt, out, g.putT(dt, a), n, ac.a); err != nil {
						return err
					}
					got = g.getT(dt, out, n)
					return nil
				})
				check(t, fmt.Sprintf("act %s n %d", ac.op, n), dt, got, want)
			}
		}
		for _, sh := range [][3]int{{1, 1, 1}, {3, 33, 40}, {7, 300, 300}, {70, 1000, 1024}} {
			rows, cols, ldy := sh[0], sh[1], sh[2]
			for _, ac := range acts {
				for _, withBias := range []bool{false, true} {
					y := rnd(rng, dt, rows*ldy)
					var bias []float32
					if withBias {
						bias = randVec(rng, cols, false)
					}
					want := make([]float64, rows*ldy)
					for r := 0; r < rows; r++ {
						for c := 0; c < ldy; c++ {
							v := float64(y[r*ldy+c])
							if c < cols {
								if withBias {
									v += float64(bias[c])
								}
								v = actRef(ac.a, v)
							}
							want[r*ldy+c] = v // padding columns untouched
						}
					}
					var got []float32
					g.run(t, func() error {
						var bp driver.Ptr
						if withBias {
							bp = g.putF32(bias)
						}
						yp := g.putT(dt, y)
						if err := g.k.BiasAct(0, dt, yp, ldy, bp, rows, cols, ac.a); err != nil {
							return err
						}
						got = g.getT(dt, yp, rows*ldy)
						return nil
					})
					check(t, fmt.Sprintf("bias_act %s %dx%d/%d bias %v", ac.op, rows, cols, ldy, withBias), dt, got, want)
				}
			}
		}
	}
}

func TestGPUNMExpand(t *testing.T) {
	g := openGPU(t)
	rng := rand.New(rand.NewPCG(5, 1))
	for _, v := range dtypes {
		for _, p := range allPatterns() {
			n, m := p[0], p[1]
			if m > 5 && m < 15 && (n+m)%3 != 0 { // a third of the middle patterns keep the test short
				continue
			}
			rows, cols := 1+rng.IntN(6), m*(1+rng.IntN(50))
			c := makeNM(t, rng, rows, cols, n, m, v == BF16)
			var got []float32
			g.run(t, func() error {
				dense := g.poison(rows * cols * v.Size())
				if err := g.k.NMExpand(0, v, dense, g.putT(v, c.vals), g.putU8(c.idx), rows, cols, n, m); err != nil {
					return err
				}
				got = g.getT(v, dense, rows*cols)
				return nil
			})
			for i := range got {
				if got[i] != c.dense[i] {
					t.Fatalf("nm_expand %v %d:%d %dx%d: element %d = %v, want %v", v, n, m, rows, cols, i, got[i], c.dense[i])
				}
			}
		}
	}
}

func TestGPUSpMMNM(t *testing.T) {
	g := openGPU(t)
	rng := rand.New(rand.NewPCG(6, 1))
	for _, v := range dtypes {
		for _, dt := range dtypes {
			for _, p := range [][2]int{{1, 2}, {2, 4}, {3, 8}, {5, 8}, {4, 16}, {15, 16}, {2, 3}, {6, 7}} {
				n, m := p[0], p[1]
				for _, M := range []int{1, 3, 20} {
					rows, cols := 1+rng.IntN(70), m*(1+rng.IntN(60))
					c := makeNM(t, rng, rows, cols, n, m, v == BF16)
					ldx, ldy := cols+3, rows+1
					x := rnd(rng, dt, M*ldx)
					var bias []float32
					if M != 3 {
						bias = randVec(rng, rows, false)
					}
					want := refSpMM(c.dense, rows, cols, x, ldx, M, bias)
					var y []float32
					g.run(t, func() error {
						var bp driver.Ptr
						if bias != nil {
							bp = g.putF32(bias)
						}
						yp := g.poison(M * ldy * dt.Size())
						if err := g.k.SpMMNM(0, v, dt, yp, ldy, g.putT(dt, x), ldx, g.putT(v, c.vals), g.putU8(c.idx), bp, M, rows, cols, n, m); err != nil {
							return err
						}
						y = g.getT(dt, yp, M*ldy)
						return nil
					})
					got := make([]float32, M*rows)
					for i := 0; i < M; i++ {
						copy(got[i*rows:(i+1)*rows], y[i*ldy:])
					}
					check(t, fmt.Sprintf("spmm_nm V=%v %d:%d M %d %dx%d", v, n, m, M, rows, cols), dt, got, want)
				}
			}
		}
	}
}

func TestGPUSpMV24(t *testing.T) {
	g := openGPU(t)
	rng := rand.New(rand.NewPCG(7, 1))
	for _, dt := range dtypes {
		for _, sh := range [][2]int{{1, 64}, {7, 192}, {64, 2048}, {333, 4160}, {9, 6144}, {1024, 4096}} {
			rows, cols := sh[0], sh[1]
			c := makeNM(t, rng, rows, cols, 2, 4, true)
			for _, M := range []int{1, 2, 3, 8, 13, 16} {
				x, ldx, bias, ldy := skinnyInputs(rng, rows, cols, M, dt == BF16)
				want := refSpMM(c.dense, rows, cols, x, ldx, M, bias)
				var y []float32
				g.run(t, func() error {
					var bp driver.Ptr
					if bias != nil {
						bp = g.putF32(bias)
					}
					yp := g.poison(M * ldy * dt.Size())
					if err := g.k.SpMV24(0, dt, yp, ldy, g.putT(dt, x), ldx, g.putU16(toBF16(c.vals)), g.putU8(c.idx), bp, M, rows, cols); err != nil {
						return err
					}
					y = g.getT(dt, yp, M*ldy)
					return nil
				})
				check(t, fmt.Sprintf("spmv24 M %d %dx%d", M, rows, cols), dt, unpad(y, M, rows, ldy), want)
			}
		}
	}
}

// TestGPUSpMM24TC checks the sparse tensor-core path against float64.
// x is rounded to bf16 for the tensor cores, so the f32 path gets the
// bf16 tolerance (1e-2) as well.
func TestGPUSpMM24TC(t *testing.T) {
	g := openGPU(t)
	rng := rand.New(rand.NewPCG(8, 1))
	for _, dt := range dtypes {
		for _, sh := range [][2]int{{16, 64}, {48, 320}, {256, 1024}, {1024, 4160}, {4096, 4096}, {9216, 576}, {36864, 192}} {
			rows, cols := sh[0], sh[1]
			c := makeNM(t, rng, rows, cols, 2, 4, true)
			tv, ti, err := SpMM24TCLayout(u16Bytes(toBF16(c.vals)), c.idx, rows, cols)
			if err != nil {
				t.Fatal(err)
			}
			for _, M := range []int{1, 2, 5, 8, 9, 16} {
				x, ldx, bias, ldy := skinnyInputs(rng, rows, cols, M, dt == BF16)
				want := refSpMM(c.dense, rows, cols, x, ldx, M, bias)
				// Grids: the default, one block, 24 blocks and one block per
				// unit (the most splitting); each launched twice on one
				// workspace (the counters must come back to zero), y
				// poisoned before each launch.
				for _, target := range []int{0, 1, 24, 1 << 20} {
					blocks, maxC, _ := SpMM24TCPlan(rows, cols, target)
					var ys [2][]float32
					g.run(t, func() error {
						var bp driver.Ptr
						if bias != nil {
							bp = g.putF32(bias)
						}
						var ws, cnt driver.Ptr
						if wb, cb := SpMM24TCWorkspace(rows, cols, target); wb > 0 {
							ws, cnt = g.poison(wb), g.putU8(make([]byte, cb))
						}
						xp, vp, ip := g.putT(dt, x), g.putU8(tv), g.putU8(ti)
						for rep := range ys {
							yp := g.poison(M * ldy * dt.Size())
							if err := g.k.SpMM24TC(0, dt, yp, ldy, xp, ldx, vp, ip, bp, ws, cnt, M, rows, cols, target); err != nil {
								return err
							}
							ys[rep] = g.getT(dt, yp, M*ldy)
						}
						return nil
					})
					for rep, y := range ys {
						if e := relL2(unpad(y, M, rows, ldy), want); !(e <= 1e-2) {
							t.Errorf("spmm24tc %v M %d %dx%d grid %d (%d blocks, up to %d per row block) launch %d: relative L2 error %.3g > 1e-2",
								dt, M, rows, cols, target, blocks, maxC, rep, e)
						}
					}
				}
			}
		}
	}
}

// attnRef is causal attention in float64: q, out [batch*seq, d], caches
// [batch, maxLen, d], mask [batch, maskLd].
func attnRef(q, kc, vc []float32, mask []int32, maskLd, batch, seq, past, maxLen, heads, hd int, scale float64) []float64 {
	d := heads * hd
	out := make([]float64, batch*seq*d)
	for b := 0; b < batch; b++ {
		for h := 0; h < heads; h++ {
			for i := 0; i < seq; i++ {
				qr := q[(b*seq+i)*d+h*hd:][:hd]
				p := attnProbsRef(qr, kc[b*maxLen*d+h*hd:], d, mask[b*maskLd:], past+i+1, scale)
				o := out[(b*seq+i)*d+h*hd:][:hd]
				for j, pj := range p {
					if pj == 0 {
						continue
					}
					vr := vc[(b*maxLen+j)*d+h*hd:][:hd]
					for e := range o {
						o[e] += pj * float64(vr[e])
					}
				}
			}
		}
	}
	return out
}

// attnProbsRef is one query's softmax in float64 over its first n keys,
// key j at keys[j*stride:][:len(qr)], visible where mask[j] != 0: the
// probabilities (0 at hidden keys), or nil when no key is visible (the
// query's output and gradients are zero).
func attnProbsRef(qr, keys []float32, stride int, mask []int32, n int, scale float64) []float64 {
	p := make([]float64, n)
	mx := math.Inf(-1)
	for j := range p {
		if mask[j] == 0 {
			continue
		}
		kr := keys[j*stride:][:len(qr)]
		var s float64
		for e := range qr {
			s += float64(qr[e]) * float64(kr[e])
		}
		p[j] = scale * s
		mx = max(mx, p[j])
	}
	if math.IsInf(mx, -1) {
		return nil
	}
	var sum float64
	for j := range p {
		if mask[j] != 0 {
			p[j] = math.Exp(p[j] - mx)
			sum += p[j]
		} else {
			p[j] = 0
		}
	}
	for j := range p {
		p[j] /= sum
	}
	return p
}

// attnMask: sequence 0 sees everything, 1 is left-padded by 3, 2 is
// padded over its first past+1 positions (its first new query sees no key).
func attnMask(batch, maskLd, past int) []int32 {
	mask := make([]int32, batch*maskLd)
	for b := 0; b < batch; b++ {
		for j := 0; j < maskLd; j++ {
			v := int32(1)
			if (b%3 == 1 && j < 3) || (b%3 == 2 && j <= past) {
				v = 0
			}
			mask[b*maskLd+j] = v
		}
	}
	return mask
}

func TestGPUAttention(t *testing.T) {
	g := openGPU(t)
	rng := rand.New(rand.NewPCG(8, 1))
	for _, dt := range dtypes {
		for _, c := range []struct{ seq, past, hd int }{{1, 5, 64}, {7, 5, 64}, {7, 5, 40}, {1, 0, 128}, {3, 300, 256}, {12, 0, 32}} {
			batch, heads, maxLen := 3, 3, c.past+c.seq+4
			d := heads * c.hd
			maskLd := c.past + c.seq + 2
			mask := attnMask(batch, maskLd, c.past)
			q, kn, vn := rnd(rng, dt, batch*c.seq*d), rnd(rng, dt, batch*c.seq*d), rnd(rng, dt, batch*c.seq*d)
			kc, vc := rnd(rng, dt, batch*maxLen*d), rnd(rng, dt, batch*maxLen*d)
			// the reference cache after the append
			kr, vr := append([]float32(nil), kc...), append([]float32(nil), vc...)
			for b := 0; b < batch; b++ {
				copy(kr[(b*maxLen+c.past)*d:], kn[b*c.seq*d:(b+1)*c.seq*d])
				copy(vr[(b*maxLen+c.past)*d:], vn[b*c.seq*d:(b+1)*c.seq*d])
			}
			scale := 1 / math.Sqrt(float64(c.hd))
			want := attnRef(q, kr, vr, mask, maskLd, batch, c.seq, c.past, maxLen, heads, c.hd, float64(float32(scale)))
			var got, gotK []float32
			g.run(t, func() error {
				kp, vp := g.putT(dt, kc), g.putT(dt, vc)
				if err := g.k.KVAppend(0, dt, kp, g.putT(dt, kn), batch, c.seq, c.past, maxLen, d); err != nil {
					return err
				}
				if err := g.k.KVAppend(0, dt, vp, g.putT(dt, vn), batch, c.seq, c.past, maxLen, d); err != nil {
					return err
				}
				out := g.poison(batch * c.seq * d * dt.Size())
				if err := g.k.AttnSmall(0, dt, out, g.putT(dt, q), kp, vp, g.putI32(mask), maskLd, batch, c.seq, c.past, maxLen, heads, c.hd, float32(scale)); err != nil {
					return err
				}
				got = g.getT(dt, out, batch*c.seq*d)
				gotK = g.getT(dt, kp, batch*maxLen*d)
				return nil
			})
			for i := range kr {
				if gotK[i] != kr[i] {
					t.Fatalf("kv_append %v seq %d past %d: element %d = %v, want %v", dt, c.seq, c.past, i, gotK[i], kr[i])
				}
			}
			check(t, fmt.Sprintf("attn_small seq %d past %d hd %d", c.seq, c.past, c.hd), dt, got, want)
			// the first new query of sequence 2 sees no key: exactly zero
			for e := 0; e < d; e++ {
				if v := got[2*c.seq*d+e]; v != 0 {
					t.Fatalf("attn_small %v seq %d: padded query element %d = %v, want 0", dt, c.seq, e, v)
				}
			}
		}
	}
}

func TestGPUSoftmaxCausal(t *testing.T) {
	g := openGPU(t)
	rng := rand.New(rand.NewPCG(9, 1))
	for _, dt := range dtypes {
		for _, c := range []struct{ seq, past int }{{7, 5}, {1, 0}, {16, 0}, {9, 1000}} {
			batch, heads := 3, 3
			total := c.past + c.seq
			maskLd := total + 1
			mask := attnMask(batch, maskLd, c.past)
			scale := float32(0.37)
			for b := 0; b < batch; b++ {
				scores := randVec(rng, heads*c.seq*total, false)
				for i := range scores {
					scores[i] *= 4
				}
				want := make([]float64, len(scores))
				for h := 0; h < heads; h++ {
					for i := 0; i < c.seq; i++ {
						row := scores[(h*c.seq+i)*total:][:total]
						w := want[(h*c.seq+i)*total:][:total]
						mx := math.Inf(-1)
						for j := 0; j <= c.past+i; j++ {
							if mask[b*maskLd+j] != 0 {
								mx = max(mx, float64(scale*row[j]))
							}
						}
						if math.IsInf(mx, -1) {
							continue
						}
						var sum float64
						for j := 0; j <= c.past+i; j++ {
							if mask[b*maskLd+j] != 0 {
								w[j] = math.Exp(float64(scale*row[j]) - mx)
								sum += w[j]
							}
						}
						for j := range w {
							w[j] /= sum
						}
					}
				}
				var got []float32
				g.run(t, func() error {
					out := g.poison(len(scores) * dt.Size())
					if err := g.k.SoftmaxCausal(0, dt, out, g.putF32(scores), g.putI32(mask), maskLd, b, heads, c.seq, c.past, scale); err != nil {
						return err
					}
					got = g.getT(dt, out, len(scores))
					return nil
				})
				check(t, fmt.Sprintf("softmax_causal b %d seq %d past %d", b, c.seq, c.past), dt, got, want)
				for i, w := range want {
					if w == 0 && got[i] != 0 {
						t.Fatalf("softmax_causal %v b %d: element %d = %v, want exactly 0", dt, b, i, got[i])
					}
				}
			}
		}
	}
}
