//go:build amd64 && !purego

package cpu

import (
	"math"
	"math/rand/v2"
	"testing"
	"unsafe"

	"github.com/slopeml/slope/format"
)

// TestPairSegKernel: the AVX2 segment kernel gives each row the bits of
// the per-call pattern-pair kernels run by pairSegmentCalls (AVX-512's
// form of a segment, here with the AVX2 kernels: batches of 6, the rest
// in one call) at its own two slots of out, and both write nothing else.
func TestPairSegKernel(t *testing.T) {
	if !asmOn() {
		t.Skip("no AVX2 assembly kernels on this CPU or build")
	}
	rng := rand.New(rand.NewPCG(3, 4))
	const nr = 40 // rows of gy
	for _, m := range []int{1, 7, 8, 13, 64, 515} {
		ld := m + 5
		gy, xa, xb := randF32(rng, nr*ld), randF32(rng, m), randF32(rng, m)
		for n := 0; n <= 14; n++ {
			rows := make([]int32, n)
			for j, r := range rng.Perm(nr)[:n] {
				rows[j] = int32(r)
			}
			out := make([]float32, 2*nr)
			for i := range out {
				out[i] = float32(math.NaN())
			}
			sddmmPairSegAsm(&gy[0], 4*ld, unsafe.SliceData(rows), n, &xa[0], &xb[0], m, &out[0])
			want := make([]float32, 2*nr)
			for i := range want {
				want[i] = float32(math.NaN())
			}
			pairSegmentCalls(sddmmPairFnsAVX2[:], &gy[0], 4*ld, rows, xa, xb, m, want)
			for i := range out {
				if math.Float32bits(out[i]) != math.Float32bits(want[i]) {
					t.Fatalf("m %d, %d rows: out[%d] = %v, want %v", m, n, i, out[i], want[i])
				}
			}
		}
	}
}

// TestSpmmPanels: the AVX2 sparse GEMM gives the same bits with its full
// panels run by one spmmPanels call per block and K chunk as with three
// spmmTile calls per panel, for Linear (with and without bias) and
// LinearAdd: a ragged last panel (404 outputs), several panel groups and
// K chunks (In = 2400: 1200 kept steps per output, chunks of 64), ragged
// row blocks (m = 40, 48, 56, 130: every kernel width) and 1 and 3 threads, in float32 and bf16, for
// 2:4 and another pattern.
func TestSpmmPanels(t *testing.T) {
	if !haveAVX2FMA {
		t.Skip("no AVX2+FMA on this CPU: the kernel is never used")
	}
	defer func() { useAsm, useAVX512, spmmPanelsOn = true, true, true }()
	useAsm, useAVX512 = true, false
	rng := rand.New(rand.NewPCG(9, 10))
	for _, p := range []format.NM{{N: 2, M: 4}, {N: 2, M: 8}} {
		for _, dt := range []DType{Float32, BFloat16} {
			for _, sh := range [][2]int{{404, 160}, {64, 2400}, {8, 16}} {
				out, in := sh[0], sh[1]
				w, _ := randNM(t, rng, p, dt, out, in)
				s, err := PrepareNM(w)
				if err != nil {
					t.Fatal(err)
				}
				for _, m := range []int{40, 48, 56, 130} { // last row blocks of 8, 16, 24 and 2 (8) rows
					x, bias, y0 := randF32(rng, m*in), randF32(rng, out), randF32(rng, m*out)
					for _, threads := range []int{1, 3} {
						for _, mode := range []string{"bias", "nobias", "add"} {
							got, want := linearWith(t, s, true, mode, y0, x, m, bias, threads), linearWith(t, s, false, mode, y0, x, m, bias, threads)
							for i := range got {
								if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
									t.Fatalf("%v %v [%d,%d] m %d threads %d %s: y[%d] = %v, want %v",
										p, dt, out, in, m, threads, mode, i, got[i], want[i])
								}
							}
						}
					}
				}
			}
		}
	}
}

// linearWith runs s on x (Linear with bias, without, or LinearAdd by
// mode) into a copy of y0, with the AVX2 panel kernel on or off.
func linearWith(t *testing.T, s *Sparse, panels bool, mode string, y0, x []float32, m int, bias []float32, threads int) []float32 {
	t.Helper()
	spmmPanelsOn = panels
	y := append([]float32(nil), y0...)
	var err error
	switch mode {
	case "bias":
		err = s.Linear(y, x, m, bias, threads)
	case "nobias":
		err = s.Linear(y, x, m, nil, threads)
	default:
		err = s.LinearAdd(y, x, m, threads)
	}
	if err != nil {
		t.Fatal(err)
	}
	return y
}
