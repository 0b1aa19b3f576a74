package cpu

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

// vecPaths runs f with the AVX2+FMA kernels (when the CPU has them) and
// with the Go kernels. It flips useAsm: not for parallel tests.
func vecPaths(t *testing.T, f func(t *testing.T)) {
	t.Helper()
	defer func() { useAsm = true }()
	if haveAVX2FMA {
		useAsm = true
		t.Run("asm", f)
	} else {
		t.Log("asm: not supported here, skipped")
	}
	useAsm = false
	t.Run("go", f)
}

// vecLens: every length 0..70 and a few large ones (head dimensions and
// odd sizes around the block boundaries).
func vecLens() []int {
	var ls []int
	for n := 0; n <= 70; n++ {
		ls = append(ls, n)
	}
	return append(ls, 95, 96, 97, 127, 128, 129, 255, 1000, 1023)
}

// guarded returns a random slice of length and capacity n whose backing
// array continues with pad copies of fill: a kernel that reads past the
// slice picks them up (NaN poisons a sum), one that writes past it
// changes them (guard returns the whole array).
func guarded(rng *rand.Rand, n, pad int, fill float32) []float32 {
	return guard(rng, n, pad, fill)[:n:n]
}

func guard(rng *rand.Rand, n, pad int, fill float32) []float32 {
	buf := make([]float32, n+pad)
	for i := range n {
		buf[i] = 2*rng.Float32() - 1
	}
	for i := n; i < len(buf); i++ {
		buf[i] = fill
	}
	return buf
}

const vecTiny = 1e-30

func dotRef(a, b []float32) (ref, mag float64) {
	for i := range a {
		p := float64(a[i]) * float64(b[i])
		ref += p
		mag += math.Abs(p)
	}
	return ref, mag
}

func TestDotVsRef(t *testing.T) {
	vecPaths(t, func(t *testing.T) {
		rng := rand.New(rand.NewPCG(1, 2))
		nan := float32(math.NaN())
		for _, n := range vecLens() {
			for _, extra := range []int{0, 1, 9} {
				// b longer than a (the contract): its extra elements are
				// NaN and must be ignored, as must anything past a.
				a := guarded(rng, n, 40, nan)
				bl := guarded(rng, n+extra, 40, nan)
				for i := n; i < n+extra; i++ {
					bl[i] = nan
				}
				// Scale one operand so the magnitudes vary by length.
				s := float32(math.Ldexp(1, n%7-3))
				for i := range a {
					a[i] *= s
				}
				ref, mag := dotRef(a, bl[:n])
				tol := float64(n+2)*0x1p-24*mag + vecTiny
				check := func(what string, got float32) {
					if d := math.Abs(float64(got) - ref); !(d <= tol) {
						t.Errorf("%s n=%d extra=%d: got %v want %v (|diff| %.3g > tol %.3g)", what, n, extra, got, ref, d, tol)
					}
				}
				check("Dot(a, b)", Dot(a, bl))
				// b shorter than a: the common prefix only.
				check("Dot(b, a)", Dot(bl, a))
				al := guarded(rng, n+extra, 40, nan)
				copy(al, a)
				for i := n; i < n+extra; i++ {
					al[i] = nan
				}
				check("Dot(a longer, b)", Dot(al, bl[:n:n]))
			}
		}
	})
}

func TestAxpyVsRef(t *testing.T) {
	vecPaths(t, func(t *testing.T) {
		rng := rand.New(rand.NewPCG(3, 4))
		nan := float32(math.NaN())
		const sentinel = 12345.5
		for _, n := range vecLens() {
			for _, extra := range []int{0, 1, 9} {
				alpha := float32(math.Ldexp(2*rng.Float64()-1, n%5-2))
				ybuf := guard(rng, n, 40, sentinel)
				y := ybuf[:n:n]
				// x longer than y (the contract): its extra elements are
				// NaN and must not reach y.
				x := guarded(rng, n+extra, 40, nan)
				for i := n; i < n+extra; i++ {
					x[i] = nan
				}
				y0 := append([]float32(nil), y...)
				Axpy(y, alpha, x)
				for i := range n {
					r := float64(y0[i]) + float64(alpha)*float64(x[i])
					tol := 4*0x1p-24*(math.Abs(float64(y0[i]))+math.Abs(float64(alpha)*float64(x[i]))) + vecTiny
					if d := math.Abs(float64(y[i]) - r); !(d <= tol) {
						t.Fatalf("n=%d extra=%d i=%d: got %v want %v (|diff| %.3g > tol %.3g)", n, extra, i, y[i], r, d, tol)
					}
				}
				for i, v := range ybuf[n:] {
					if v != sentinel {
						t.Fatalf("n=%d: wrote past y at +%d: %v", n, i, v)
					}
				}
				// x shorter than y: only y[:len(x)] changes.
				if n > 0 {
					k := n / 2
					yl := append([]float32(nil), y0...)
					yl = append(yl, y0...)
					want := append([]float32(nil), yl...)
					Axpy(yl, alpha, x[:k:k])
					Axpy(want[:k], alpha, x[:k])
					for i := range yl {
						if math.Float32bits(yl[i]) != math.Float32bits(want[i]) {
							t.Fatalf("n=%d short x (len %d): y[%d] = %v, want %v", n, k, i, yl[i], want[i])
						}
					}
				}
			}
		}
		// Nil and empty slices are fine.
		if got := Dot(nil, nil); got != 0 {
			t.Errorf("Dot(nil, nil) = %v", got)
		}
		Axpy(nil, 1, nil)
		Axpy([]float32{1}, 1, nil)
	})
}

// TestDotAxpyDeterministic checks that repeated calls, and calls on copies
// of the inputs at another alignment, give the same bits.
func TestDotAxpyDeterministic(t *testing.T) {
	vecPaths(t, func(t *testing.T) {
		rng := rand.New(rand.NewPCG(5, 6))
		for _, n := range vecLens() {
			a := randF32(rng, n)
			b := randF32(rng, n)
			want := math.Float32bits(Dot(a, b))
			// The same values 1..3 floats further into a fresh array.
			for rep := range 4 {
				a2 := make([]float32, n+rep)[rep:]
				b2 := make([]float32, n+3-rep)[3-rep:]
				copy(a2, a)
				copy(b2, b)
				if got := math.Float32bits(Dot(a2, b2)); got != want {
					t.Fatalf("Dot n=%d rep %d: bits %#x, want %#x", n, rep, got, want)
				}
			}
			y0 := randF32(rng, n)
			alpha := float32(rng.NormFloat64())
			y1 := append([]float32(nil), y0...)
			Axpy(y1, alpha, a)
			for rep := range 4 {
				y2 := make([]float32, n+rep)[rep:]
				copy(y2, y0)
				x2 := make([]float32, n+3-rep)[3-rep:]
				copy(x2, a)
				Axpy(y2, alpha, x2)
				for i := range y1 {
					if math.Float32bits(y1[i]) != math.Float32bits(y2[i]) {
						t.Fatalf("Axpy n=%d rep %d i=%d: %v != %v", n, rep, i, y2[i], y1[i])
					}
				}
			}
		}
	})
}

var dotSink float32

// BenchmarkDot and BenchmarkAxpy time the attention helpers at head
// dimensions 64 and 128 with the assembly and the Go kernels.
func BenchmarkDot(b *testing.B) {
	benchVec(b, func(x, y []float32) { dotSink += Dot(x, y) })
}

func BenchmarkAxpy(b *testing.B) {
	benchVec(b, func(x, y []float32) { Axpy(y, 0x1p-20, x) })
}

func benchVec(b *testing.B, f func(x, y []float32)) {
	defer func() { useAsm = true }()
	rng := rand.New(rand.NewPCG(7, 8))
	for _, n := range []int{64, 128} {
		x, y := randF32(rng, n), randF32(rng, n)
		for _, asm := range []bool{true, false} {
			name := "go"
			if asm {
				name = "asm"
			}
			b.Run(fmt.Sprintf("n=%d/%s", n, name), func(b *testing.B) {
				if asm && !haveAVX2FMA {
					b.Skip("no AVX2+FMA")
				}
				useAsm = asm
				b.SetBytes(int64(8 * n))
				for b.Loop() {
					f(x, y)
				}
			})
		}
	}
}
