package ops

import (
	"math"
	"math/rand/v2"
	"testing"
)

// TestAttendHeadsMaskRuns checks attendHeads on masks with several runs of
// visible keys (holes in the middle as well as left padding) against a
// float64 softmax over the visible keys, and that masked keys are never
// read: their key and value rows are NaN.
func TestAttendHeadsMaskRuns(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	nan := float32(math.NaN())
	for _, hd := range []int{8, 17, 64} {
		heads := 3
		s := &attentionStep{dim: heads * hd, heads: heads, headDim: hd, scale: float32(1 / math.Sqrt(float64(hd)))}
		for _, mask := range [][]int32{
			{1},
			{0, 0, 1, 1, 1, 1, 1},
			{1, 0, 1, 1, 0, 0, 1, 1, 1, 1, 1, 0, 1},
			{0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1},
			{0, 0, 0},
		} {
			const base = 2
			n := len(mask)
			rowsTotal := base + n + 1
			keys := make([]float32, rowsTotal*s.dim)
			vals := make([]float32, rowsTotal*s.dim)
			for r := range rowsTotal {
				visible := r >= base && r < base+n && mask[r-base] != 0
				for i := range s.dim {
					k, v := 2*rng.Float32()-1, 2*rng.Float32()-1
					if !visible {
						k, v = nan, nan
					}
					keys[r*s.dim+i], vals[r*s.dim+i] = k, v
				}
			}
			q := make([]float32, s.dim)
			for i := range q {
				q[i] = 4*rng.Float32() - 2
			}
			for _, hr := range [][2]int{{0, heads}, {1, 3}, {2, 3}} {
				hlo, hhi := hr[0], hr[1]
				y := make([]float32, s.dim)
				for i := range y {
					y[i] = 7 // heads outside hlo..hhi-1 stay as they are
				}
				s.attendHeads(y, q, keys, vals, base, hlo, hhi, mask, make([]float32, (hhi-hlo)*n), make([]float32, 2*(hhi-hlo)))
				for h := range heads {
					off := h * hd
					want := make([]float64, hd)
					if h < hlo || h >= hhi {
						for e := range want {
							want[e] = 7
						}
					} else {
						mx, sc := math.Inf(-1), make([]float64, n)
						for j := range n {
							if mask[j] == 0 {
								continue
							}
							for e := range hd {
								sc[j] += float64(q[off+e]) * float64(keys[(base+j)*s.dim+off+e])
							}
							sc[j] *= float64(s.scale)
							mx = max(mx, sc[j])
						}
						var sum float64
						for j := range n {
							if mask[j] == 0 {
								continue
							}
							p := math.Exp(sc[j] - mx)
							sum += p
							for e := range hd {
								want[e] += p * float64(vals[(base+j)*s.dim+off+e])
							}
						}
						for e := range want {
							if sum > 0 {
								want[e] /= sum
							}
						}
					}
					for e := range hd {
						if got := y[off+e]; !(math.Abs(float64(got)-want[e]) <= 1e-5) {
							t.Fatalf("hd=%d mask=%v heads %d..%d: y[head %d][%d] = %v, want %v", hd, mask, hlo, hhi, h, e, got, want[e])
						}
					}
				}
			}
		}
	}
}

// A masked (padding) row that is not finite does not reach the visible
// queries through the prefill path (Seq >= 8: one GEMM over every key),
// nor through the backward pass.
func TestAttentionMaskedRowNotFinite(t *testing.T) {
	const heads, hd, seq = 2, 8, 9
	dim := heads * hd
	s := &attentionStep{dim: dim, heads: heads, headDim: hd, scale: float32(1 / math.Sqrt(float64(hd)))}
	rng := rand.New(rand.NewPCG(3, 4))
	mk := func() *Value {
		v := &Value{Rows: seq, Dim: dim, Data: make([]float32, seq*dim)}
		for i := range v.Data {
			v.Data[i] = 2*rng.Float32() - 1
		}
		for i := 0; i < dim; i++ {
			v.Data[i] = float32(math.Inf(1)) // row 0: padding
		}
		return v
	}
	q, k, v := mk(), mk(), mk()
	mask := make([]int32, seq)
	for i := 1; i < seq; i++ {
		mask[i] = 1
	}
	c := &Call{Batch: 1, Seq: seq, Mask: mask, Threads: 1}
	out := &Value{Rows: seq, Dim: dim, Data: make([]float32, seq*dim)}
	if err := s.Forward(c, []*Value{q, k, v}, out); err != nil {
		t.Fatal(err)
	}
	for i, x := range out.Data[dim:] { // the visible queries
		if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
			t.Fatalf("forward: output %d of a visible query is %g", dim+i, x)
		}
	}
	g := &attentionGrad{attentionStep: s}
	gy := &Value{Rows: seq, Dim: dim, Data: make([]float32, seq*dim)}
	for i := range gy.Data {
		gy.Data[i] = 2*rng.Float32() - 1
	}
	gin := []*Value{
		{Rows: seq, Dim: dim, Data: make([]float32, seq*dim)},
		{Rows: seq, Dim: dim, Data: make([]float32, seq*dim)},
		{Rows: seq, Dim: dim, Data: make([]float32, seq*dim)},
	}
	if err := g.Backward(c, []*Value{q, k, v}, out, gy, gin); err != nil {
		t.Fatal(err)
	}
	for n, gv := range gin {
		for i, x := range gv.Data[dim:] {
			if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
				t.Fatalf("backward: gradient %d of input %d at a visible row is %g", dim+i, n, x)
			}
		}
	}
}
