package kernels

import (
	"encoding/binary"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/slopeml/slope/format"
)

// nmCase is a random N:M weight [rows, cols] in the portable layout.
type nmCase struct {
	rows, cols, n, m int
	dense            []float32 // with zeros at pruned positions
	vals             []float32 // rows*k kept values
	idx              []byte    // packed index section
	k, rowBytes      int
}

// makeNM draws a random pattern and values; roundBF rounds the values to
// bf16 (so a bf16 upload is exact).
func makeNM(t testing.TB, rng *rand.Rand, rows, cols, n, m int, roundBF bool) *nmCase {
	t.Helper()
	p := format.NM{N: n, M: m}
	dense := make([]float32, rows*cols)
	keep := make([]bool, rows*cols)
	for g := 0; g < rows*cols/m; g++ {
		for _, i := range rng.Perm(m)[:n] {
			v := float32(rng.NormFloat64())
			if roundBF {
				v = format.BFloat16ToFloat32(format.Float32ToBFloat16(v))
			}
			dense[g*m+i] = v
			keep[g*m+i] = true
		}
	}
	vals, idx, err := format.SplitNM(p, rows, cols, dense, keep)
	if err != nil {
		t.Fatal(err)
	}
	rb, err := p.IndexRowBytes(cols)
	if err != nil {
		t.Fatal(err)
	}
	packed := make([]byte, rows*rb)
	if err := format.PackNMIndices(p, rows, cols, idx, packed); err != nil {
		t.Fatal(err)
	}
	k, _ := p.KeptPerRow(cols)
	return &nmCase{rows: rows, cols: cols, n: n, m: m, dense: dense, vals: vals, idx: packed, k: k, rowBytes: rb}
}

// dpTransposeRef is the dense double-pruned transpose [cols, rows] of the
// N:M weight (vals, unpacked in-group indices ix) whose kept values
// survive where keep is not 0 (one byte per kept value).
func dpTransposeRef(vals []float32, ix, keep []byte, rows, cols, n, m int) []float32 {
	k := len(vals) / rows
	want := make([]float32, rows*cols)
	for r := 0; r < rows; r++ {
		for j := 0; j < k; j++ {
			if keep[r*k+j] != 0 {
				want[((j/n)*m+int(ix[r*k+j]))*rows+r] = vals[r*k+j]
			}
		}
	}
	return want
}

// u16Bytes is v as little-endian bytes (a bf16 tensor's raw form).
func u16Bytes(v []uint16) []byte {
	b := make([]byte, 2*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint16(b[2*i:], x)
	}
	return b
}

// refSpMM is y[i][r] = bias[r] + sum_c dense[r][c]*x[i][c] in float64.
func refSpMM(dense []float32, rows, cols int, x []float32, ldx, M int, bias []float32) []float64 {
	y := make([]float64, M*rows)
	for i := 0; i < M; i++ {
		for r := 0; r < rows; r++ {
			var s float64
			if bias != nil {
				s = float64(bias[r])
			}
			for c := 0; c < cols; c++ {
				s += float64(dense[r*cols+c]) * float64(x[i*ldx+c])
			}
			y[i*rows+r] = s
		}
	}
	return y
}

// relL2 is ||got-want|| / ||want|| (the absolute norm when want is 0).
func relL2(got []float32, want []float64) float64 {
	var num, den float64
	for i, w := range want {
		d := float64(got[i]) - w
		num += d * d
		den += w * w
	}
	if math.IsNaN(num) {
		return math.Inf(1)
	}
	if den == 0 {
		return math.Sqrt(num)
	}
	return math.Sqrt(num / den)
}

func randVec(rng *rand.Rand, n int, roundBF bool) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(rng.NormFloat64())
		if roundBF {
			v[i] = format.BFloat16ToFloat32(format.Float32ToBFloat16(v[i]))
		}
	}
	return v
}

func toBF16(v []float32) []uint16 {
	h := make([]uint16, len(v))
	for i, x := range v {
		h[i] = format.Float32ToBFloat16(x)
	}
	return h
}

// skinnyInputs makes the inputs of a 2:4 product test of M <= 16 rows
// (SpMV24, SpMM24TC): x [M, ldx] with ldx = cols + 8·(M%3) (bf16-rounded
// when roundX), a bias for odd M (nil otherwise) and the output stride
// ldy = rows + M%2, so that strides and the bias vary with M.
func skinnyInputs(rng *rand.Rand, rows, cols, M int, roundX bool) (x []float32, ldx int, bias []float32, ldy int) {
	ldx, ldy = cols+8*(M%3), rows+M%2
	x = randVec(rng, M*ldx, roundX)
	if M%2 == 1 {
		bias = randVec(rng, rows, false)
	}
	return x, ldx, bias, ldy
}

// unpad returns the first rows values of each of y's M rows (stride ldy).
func unpad(y []float32, M, rows, ldy int) []float32 {
	got := make([]float32, M*rows)
	for i := 0; i < M; i++ {
		copy(got[i*rows:(i+1)*rows], y[i*ldy:])
	}
	return got
}

// nanSlice is n NaNs: outputs a kernel must overwrite.
func nanSlice(n int) []float32 {
	y := make([]float32, n)
	for i := range y {
		y[i] = float32(math.NaN())
	}
	return y
}

// randomTKeep is a random transpose mask of a 2:4 weight (portable
// indices ix): for each group of four rows of a column, a random subset
// of at most two of its kept values (none, one or two).
func randomTKeep(rng *rand.Rand, ix []byte, rows, cols int) []byte {
	k := cols / 2
	keep := make([]byte, rows*k)
	slot := make(map[[2]int]int, rows*k) // (row, col) -> kept value
	for r := 0; r < rows; r++ {
		for j := 0; j < k; j++ {
			slot[[2]int{r, (j/2)*4 + int(ix[r*k+j])}] = r*k + j
		}
	}
	for c := 0; c < cols; c++ {
		for g := 0; g < rows/4; g++ {
			var in []int
			for q := 0; q < 4; q++ {
				if e, ok := slot[[2]int{4*g + q, c}]; ok {
					in = append(in, e)
				}
			}
			rng.Shuffle(len(in), func(a, b int) { in[a], in[b] = in[b], in[a] })
			for _, e := range in[:min(len(in), rng.IntN(3))] {
				keep[e] = 1
			}
		}
	}
	return keep
}

// packT24Case is a random 2:4 weight rows x cols (bf16-exact values),
// a random transpose mask keep for it, and the values NMPackT24 must
// write (packT24Ref).
func packT24Case(t testing.TB, rng *rand.Rand, rows, cols int) (c *nmCase, keep []byte, want []float32) {
	c = makeNM(t, rng, rows, cols, 2, 4, true)
	ix := make([]uint8, len(c.vals))
	if err := format.UnpackNMIndices(format.NM{N: 2, M: 4}, rows, cols, c.idx, ix); err != nil {
		t.Fatal(err)
	}
	keep = randomTKeep(rng, ix, rows, cols)
	return c, keep, packT24Ref(c.vals, ix, keep, rows, cols)
}

// packT24Ref is the values part of cuSPARSELt's compressed W_dpᵀ as
// NMPackT24 writes it, built from the definition: [cols, rows/2], row c
// and group g holding the kept values of rows 4g..4g+3 of column c of W
// that keep marks, two in increasing row order, a lone one in slot 1 when
// it is row 4g+3 and in slot 0 otherwise, zeros elsewhere.
func packT24Ref(vals []float32, ix, keep []byte, rows, cols int) []float32 {
	k := cols / 2
	type entry struct {
		v  float32
		ok bool
	}
	dp := make([]entry, rows*cols) // [col][row]
	for r := 0; r < rows; r++ {
		for j := 0; j < k; j++ {
			if keep[r*k+j] != 0 {
				dp[((j/2)*4+int(ix[r*k+j]))*rows+r] = entry{vals[r*k+j], true}
			}
		}
	}
	out := make([]float32, cols*rows/2)
	for c := 0; c < cols; c++ {
		for g := 0; g < rows/4; g++ {
			var got []int
			for q := 0; q < 4; q++ {
				if dp[c*rows+4*g+q].ok {
					got = append(got, q)
				}
			}
			o := out[c*rows/2+2*g:]
			switch {
			case len(got) == 2:
				o[0], o[1] = dp[c*rows+4*g+got[0]].v, dp[c*rows+4*g+got[1]].v
			case len(got) == 1 && got[0] == 3:
				o[1] = dp[c*rows+4*g+3].v
			case len(got) == 1:
				o[0] = dp[c*rows+4*g+got[0]].v
			}
		}
	}
	return out
}

// maxAbsErr is the largest |got[i] − want[i]| and the largest |want[i]|
// (NaN in got counts as +Inf).
func maxAbsErr(got []float32, want []float64) (worst, scale float64) {
	for i, w := range want {
		d := math.Abs(float64(got[i]) - w)
		if math.IsNaN(d) {
			d = math.Inf(1)
		}
		worst, scale = max(worst, d), max(scale, math.Abs(w))
	}
	return worst, scale
}

// checkAttn compares a bf16 attention result (or gradient) got with its
// float64 reference: relative L2 error at most l2, every element within
// 2% of the largest |want| (a local mistake hides in the L2 average;
// the emulated kernels stay under 0.8%), and exactly 0 where want is
// (queries that see no key, keys no query sees).
func checkAttn(t *testing.T, what string, got []float32, want []float64, l2 float64) {
	t.Helper()
	e := relL2(got, want)
	worst, scale := maxAbsErr(got, want)
	if !(e <= l2) || !(worst <= 2e-2*scale) {
		t.Fatalf("%s: relative L2 error %.3g (at most %g), largest error %.3g of %.3g (at most 2%%)", what, e, l2, worst, scale)
	}
	for i, w := range want {
		if w == 0 && got[i] != 0 {
			t.Fatalf("%s: element %d is %g, want exactly 0", what, i, got[i])
		}
	}
	t.Logf("%s: relative L2 error %.3g, largest error %.3g of %.3g", what, e, worst, scale)
}
