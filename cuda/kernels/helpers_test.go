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
