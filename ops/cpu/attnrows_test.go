package cpu

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

// rowsShape is one DotRows/AxpyRows test case: n columns, rows rows, ld
// floats apart.
type rowsShape struct{ n, rows, ld int }

// rowsShapes returns fixed shapes around the kernels' block boundaries
// (n around 8, 16, 64, 128; rows around 4) and random ones with n in
// 1..160, rows in 0..300 and ld > n.
func rowsShapes(rng *rand.Rand) []rowsShape {
	var ss []rowsShape
	for _, n := range []int{1, 2, 7, 8, 9, 15, 16, 17, 24, 31, 32, 33, 63, 64, 65, 80, 96, 127, 128, 129, 160} {
		for _, rows := range []int{0, 1, 2, 3, 4, 5, 7, 8, 9, 33} {
			ss = append(ss, rowsShape{n, rows, n + 1 + (n+rows)%9})
		}
		ss = append(ss, rowsShape{n, 5, n}) // rows back to back
	}
	for range 200 {
		n := 1 + rng.IntN(160)
		ss = append(ss, rowsShape{n, rng.IntN(301), n + 1 + rng.IntN(40)})
	}
	return ss
}

// rowsData returns rows rows of n random values ld floats apart, the gaps
// between rows and pad floats after the last row set to fill, and the
// slice cut after the last row (capacity to the end of the padding).
func rowsData(rng *rand.Rand, s rowsShape, pad int, fill float32) []float32 {
	size := 0
	if s.rows > 0 {
		size = (s.rows-1)*s.ld + s.n
	}
	buf := make([]float32, size+pad)
	for i := range buf {
		buf[i] = fill
	}
	for j := range s.rows {
		for i := range s.n {
			buf[j*s.ld+i] = 2*rng.Float32() - 1
		}
	}
	return buf[:size]
}

func TestDotRowsVsRef(t *testing.T) {
	vecPaths(t, func(t *testing.T) {
		rng := rand.New(rand.NewPCG(11, 12))
		nan := float32(math.NaN())
		const sentinel = 12345.5
		for _, s := range rowsShapes(rng) {
			q := guarded(rng, s.n, 40, nan)
			sc := float32(math.Ldexp(1, s.n%7-3))
			for i := range q {
				q[i] *= sc
			}
			k := rowsData(rng, s, 40, nan)
			obuf := guard(rng, s.rows, 40, sentinel)
			out := obuf[:s.rows:s.rows]
			DotRows(out, q, k, s.ld, s.rows)
			for j := range s.rows {
				ref, mag := dotRef(q, k[j*s.ld:j*s.ld+s.n])
				tol := float64(s.n+2)*0x1p-24*mag + vecTiny
				if d := math.Abs(float64(out[j]) - ref); !(d <= tol) {
					t.Fatalf("n=%d rows=%d ld=%d: out[%d] = %v, want %v (|diff| %.3g > tol %.3g)", s.n, s.rows, s.ld, j, out[j], ref, d, tol)
				}
				// The same bits whatever the row's position and the row count.
				one := []float32{sentinel}
				DotRows(one, q, k[j*s.ld:], s.ld, 1)
				if math.Float32bits(one[0]) != math.Float32bits(out[j]) {
					t.Fatalf("n=%d rows=%d ld=%d: row %d alone gives %v, in the batch %v", s.n, s.rows, s.ld, j, one[0], out[j])
				}
				// The Go kernel is Dot's, row by row.
				if !useAsm {
					if want := Dot(q, k[j*s.ld:j*s.ld+s.n]); math.Float32bits(want) != math.Float32bits(out[j]) {
						t.Fatalf("go n=%d row %d: %v, Dot gives %v", s.n, j, out[j], want)
					}
				}
			}
			for i, v := range obuf[s.rows:] {
				if v != sentinel {
					t.Fatalf("n=%d rows=%d: wrote past out at +%d: %v", s.n, s.rows, i, v)
				}
			}
		}
	})
}

// TestDotRowsAsmVsGo compares the two kernels on the same inputs.
func TestDotRowsAsmVsGo(t *testing.T) {
	if !haveAVX2FMA {
		t.Skip("no AVX2+FMA")
	}
	defer func() { useAsm = true }()
	rng := rand.New(rand.NewPCG(13, 14))
	for _, s := range rowsShapes(rng) {
		q := randF32(rng, s.n)
		k := rowsData(rng, s, 0, 0)
		a, g := make([]float32, s.rows), make([]float32, s.rows)
		useAsm = true
		DotRows(a, q, k, s.ld, s.rows)
		useAsm = false
		DotRows(g, q, k, s.ld, s.rows)
		for j := range a {
			_, mag := dotRef(q, k[j*s.ld:j*s.ld+s.n])
			if d := math.Abs(float64(a[j]) - float64(g[j])); !(d <= 2*float64(s.n+2)*0x1p-24*mag+vecTiny) {
				t.Fatalf("n=%d rows=%d: row %d asm %v go %v", s.n, s.rows, j, a[j], g[j])
			}
		}
	}
}

func TestDotRowsContract(t *testing.T) {
	vecPaths(t, func(t *testing.T) {
		rng := rand.New(rand.NewPCG(15, 16))
		const sentinel = 12345.5
		n, ld := 20, 24
		q := randF32(rng, n)
		k := randF32(rng, 9*ld+n) // 10 rows
		full := make([]float32, 10)
		DotRows(full, q, k, ld, 10)
		check := func(what string, out []float32, want int) {
			t.Helper()
			for j, v := range out {
				if j < want && math.Float32bits(v) != math.Float32bits(full[j]) {
					t.Errorf("%s: out[%d] = %v, want %v", what, j, v, full[j])
				}
				if j >= want && v != sentinel {
					t.Errorf("%s: out[%d] = %v, want it untouched", what, j, v)
				}
			}
		}
		fresh := func(m int) []float32 {
			o := make([]float32, m)
			for i := range o {
				o[i] = sentinel
			}
			return o
		}
		o := fresh(12)
		DotRows(o[:7], q, k, ld, 10) // short out
		check("short out", o, 7)
		o = fresh(12)
		DotRows(o, q, k[:6*ld+n-1], ld, 10) // row 6 does not fit
		check("short k", o, 6)
		o = fresh(12)
		DotRows(o, q, k, ld, 12) // rows past k
		check("rows past k", o, 10)
		for _, c := range []struct{ ld, rows int }{{-1, 3}, {ld, 0}, {ld, -2}} {
			o = fresh(4)
			DotRows(o, q, k, c.ld, c.rows)
			check("nothing", o, 0)
		}
		o = fresh(4)
		DotRows(o, q, k[:n-1], ld, 3)
		check("k shorter than q", o, 0)
		o = fresh(4)
		DotRows(o, nil, nil, ld, 3)
		for j, v := range o[:1] {
			if v != 0 {
				t.Errorf("empty q, empty k: out[%d] = %v, want 0", j, v)
			}
		}
		check("empty q", o[1:], 0)
		o = fresh(4)
		DotRows(o, nil, k, ld, 3)
		for j, v := range o {
			if want := float32(0); j < 3 && v != want || j >= 3 && v != sentinel {
				t.Errorf("empty q: out[%d] = %v", j, v)
			}
		}
		// ld = 0: every row is the first.
		o = fresh(3)
		DotRows(o, q, k[:n], 0, 3)
		for j, v := range o {
			if math.Float32bits(v) != math.Float32bits(full[0]) {
				t.Errorf("ld=0: out[%d] = %v, want %v", j, v, full[0])
			}
		}
		DotRows(nil, nil, nil, 0, 0)
	})
}

func TestAxpyRowsVsRef(t *testing.T) {
	vecPaths(t, func(t *testing.T) {
		rng := rand.New(rand.NewPCG(17, 18))
		nan := float32(math.NaN())
		const sentinel = 12345.5
		for _, s := range rowsShapes(rng) {
			ybuf := guard(rng, s.n, 40, sentinel)
			y := ybuf[:s.n:s.n]
			sc := math.Ldexp(1, s.n%5-2)
			p := guarded(rng, s.rows, 40, nan)
			for j := range p {
				p[j] = float32(sc * rng.Float64())
			}
			v := rowsData(rng, s, 40, nan)
			y0 := append([]float32(nil), y...)
			AxpyRows(y, p, v, s.ld, s.rows)
			for i := range s.n {
				ref, mag := float64(y0[i]), math.Abs(float64(y0[i]))
				for j := range s.rows {
					t := float64(p[j]) * float64(v[j*s.ld+i])
					ref += t
					mag += math.Abs(t)
				}
				tol := float64(2*s.rows+2)*0x1p-24*mag + vecTiny
				if d := math.Abs(float64(y[i]) - ref); !(d <= tol) {
					t.Fatalf("n=%d rows=%d ld=%d: y[%d] = %v, want %v (|diff| %.3g > tol %.3g)", s.n, s.rows, s.ld, i, y[i], ref, d, tol)
				}
			}
			for i, x := range ybuf[s.n:] {
				if x != sentinel {
					t.Fatalf("n=%d rows=%d: wrote past y at +%d: %v", s.n, s.rows, i, x)
				}
			}
			// Bit for bit the same as one Axpy per row, j ascending.
			want := append([]float32(nil), y0...)
			for j := range s.rows {
				Axpy(want, p[j], v[j*s.ld:j*s.ld+s.n])
			}
			for i := range want {
				if math.Float32bits(want[i]) != math.Float32bits(y[i]) {
					t.Fatalf("n=%d rows=%d: y[%d] = %v, Axpy per row gives %v", s.n, s.rows, i, y[i], want[i])
				}
			}
		}
	})
}

func TestAxpyRowsContract(t *testing.T) {
	vecPaths(t, func(t *testing.T) {
		rng := rand.New(rand.NewPCG(19, 20))
		n, ld := 20, 24
		y0 := randF32(rng, n)
		p := randF32(rng, 10)
		v := randF32(rng, 9*ld+n)
		run := func(rows int) []float32 {
			y := append([]float32(nil), y0...)
			AxpyRows(y, p, v, ld, rows)
			return y
		}
		same := func(what string, got, want []float32) {
			t.Helper()
			for i := range want {
				if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
					t.Errorf("%s: y[%d] = %v, want %v", what, i, got[i], want[i])
					return
				}
			}
		}
		y := append([]float32(nil), y0...)
		AxpyRows(y, p[:7], v, ld, 10) // short p
		same("short p", y, run(7))
		y = append([]float32(nil), y0...)
		AxpyRows(y, p, v[:6*ld+n-1], ld, 10) // row 6 does not fit
		same("short v", y, run(6))
		y = append([]float32(nil), y0...)
		AxpyRows(y, p, v, ld, 12)
		same("rows past v", y, run(10))
		for _, c := range []struct{ ld, rows int }{{-1, 3}, {ld, 0}, {ld, -2}} {
			y = append([]float32(nil), y0...)
			AxpyRows(y, p, v, c.ld, c.rows)
			same("nothing", y, y0)
		}
		AxpyRows(nil, p, v, ld, 3)
		AxpyRows(nil, nil, nil, 0, 0)
		// ld = 0: the first row rows times.
		y = append([]float32(nil), y0...)
		AxpyRows(y, p, v[:n], 0, 3)
		want := append([]float32(nil), y0...)
		for j := range 3 {
			Axpy(want, p[j], v[:n])
		}
		same("ld=0", y, want)
	})
}

var rowsSink float32

// BenchmarkDotRows and BenchmarkAxpyRows time 256 rows at head dimensions
// 64 and 128 (rows 12 heads apart, as in a KV cache), against the
// one-call-per-row form.
func BenchmarkDotRows(b *testing.B) {
	benchRows(b, func(out, q, k, _ []float32, ld, rows int, each bool) {
		if each {
			for j := range rows {
				out[j] = Dot(q, k[j*ld:j*ld+len(q)])
			}
			return
		}
		DotRows(out, q, k, ld, rows)
	})
}

func BenchmarkAxpyRows(b *testing.B) {
	benchRows(b, func(p, _, v, y []float32, ld, rows int, each bool) {
		if each {
			for j := range rows {
				Axpy(y, p[j], v[j*ld:j*ld+len(y)])
			}
			return
		}
		AxpyRows(y, p, v, ld, rows)
	})
}

func benchRows(b *testing.B, f func(a, q, k, y []float32, ld, rows int, each bool)) {
	defer func() { useAsm = true }()
	rng := rand.New(rand.NewPCG(21, 22))
	const rows = 256
	for _, n := range []int{64, 128} {
		ld := 12 * n
		q, y := randF32(rng, n), randF32(rng, n)
		k := randF32(rng, rows*ld)
		a := randF32(rng, rows)
		for j := range a {
			a[j] *= 0x1p-20
		}
		for _, mode := range []string{"rows-asm", "each-asm", "rows-go", "each-go"} {
			b.Run(fmt.Sprintf("n=%d/%s", n, mode), func(b *testing.B) {
				asm := mode[len(mode)-3:] == "asm"
				if asm && !haveAVX2FMA {
					b.Skip("no AVX2+FMA")
				}
				useAsm = asm
				for b.Loop() {
					f(a, q, k, y, ld, rows, mode[:4] == "each")
				}
				rowsSink += a[0]
			})
		}
	}
}
