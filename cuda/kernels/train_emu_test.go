package kernels

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/slopeml/slope/format"
)

// emuNMExpandT mirrors nm_expand_t_body over the launch NMExpandT makes:
// blocks and threads are loops, tile the shared tile. Every element of dt
// is written exactly once (counted in writes).
func emuNMExpandT(dt, vals []float32, idx, keep []byte, rows, cols, n, m int, writes []int) {
	const tile = extTile
	tw := tile / m * m
	k := cols / m * n
	b := nmBits(m)
	rowBytes := (k*b + 7) >> 3
	for by := 0; by < (rows+tile-1)/tile; by++ {
		for bx := 0; bx < (cols+tw-1)/tw; bx++ {
			var sh [tile][tile + 1]float32
			r0, c0 := by*tile, bx*tw
			g0, g1 := c0/m, min(cols, c0+tw)/m
			kt := (g1 - g0) * n
			for tid := 0; tid < threads; tid++ {
				for i := tid; i < tile*kt; i += threads {
					rr, j := i/kt, g0*n+(i-(i/kt)*kt)
					r := r0 + rr
					if r >= rows {
						continue
					}
					e := r*k + j
					if keep[e] == 0 {
						continue
					}
					c := (j/n)*m + nmIndex(idx[r*rowBytes:(r+1)*rowBytes], rowBytes, j, b)
					sh[rr][c-c0] = vals[e]
				}
			}
			for tid := 0; tid < threads; tid++ {
				for i := tid; i < tile*tile; i += threads {
					cc, rr := i/tile, i%tile
					c, r := c0+cc, r0+rr
					if cc < tw && c < cols && r < rows {
						dt[c*rows+r] = sh[rr][cc]
						writes[c*rows+r]++
					}
				}
			}
		}
	}
}

// TestEmulateNMExpandT: the tiled transpose writes every element once
// and equals the double-pruned transpose built on the host, for every
// pattern and ragged shapes (partial tiles in both directions).
func TestEmulateNMExpandT(t *testing.T) {
	rng := rand.New(rand.NewPCG(51, 52))
	for _, pt := range allPatterns() {
		n, m := pt[0], pt[1]
		for _, sh := range [][2]int{{m, m}, {3 * m, 5 * m}, {70, 17 * m}, {130, 40 * m}} {
			rows, cols := sh[0], sh[1]
			c := makeNM(t, rng, rows, cols, n, m, false)
			keep := make([]byte, len(c.vals))
			for i := range keep {
				keep[i] = byte(rng.IntN(2))
			}
			p := format.NM{N: n, M: m}
			ix := make([]uint8, len(c.vals))
			if err := format.UnpackNMIndices(p, rows, cols, c.idx, ix); err != nil {
				t.Fatal(err)
			}
			want := dpTransposeRef(c.vals, ix, keep, rows, cols, n, m)
			got := make([]float32, rows*cols)
			for i := range got {
				got[i] = float32(math.NaN())
			}
			writes := make([]int, rows*cols)
			emuNMExpandT(got, c.vals, c.idx, keep, rows, cols, n, m, writes)
			for i := range want {
				if writes[i] != 1 || got[i] != want[i] {
					t.Fatalf("%d:%d %dx%d: element %d written %d times, %v, want %v", n, m, rows, cols, i, writes[i], got[i], want[i])
				}
			}
		}
	}
}
