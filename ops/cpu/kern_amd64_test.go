//go:build amd64 && !purego

package cpu

import (
	"math"
	"math/rand/v2"
	"testing"
	"unsafe"
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
