package kernels

import (
	"math"
	"math/bits"
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

// emuNMPackT24 mirrors nm_pack_t24_body over the launch NMPackT24
// makes; every element of dst is written once (counted in writes).
func emuNMPackT24(dst, vals []float32, idx, keep []byte, rows, cols int, writes []int) {
	const tile = extTile
	k := cols / 2
	rowBytes := (k*2 + 7) >> 3
	for by := 0; by < (rows+tile-1)/tile; by++ {
		for bx := 0; bx < (cols+tile-1)/tile; bx++ {
			var sh [tile][tile + 1]float32
			var present [tile]uint64
			r0, c0 := by*tile, bx*tile
			g0, g1 := c0/4, min(cols, c0+tile)/4
			kt := (g1 - g0) * 2
			for tid := 0; tid < threads; tid++ {
				for i := tid; i < tile*kt; i += threads {
					rr, j := i/kt, g0*2+(i-(i/kt)*kt)
					r := r0 + rr
					if r >= rows {
						continue
					}
					e := r*k + j
					if keep[e] == 0 {
						continue
					}
					cc := (j/2)*4 + nmIndex(idx[r*rowBytes:(r+1)*rowBytes], rowBytes, j, 2) - c0
					sh[rr][cc] = vals[e]
					present[cc] |= 1 << rr
				}
			}
			half := rows / 2
			for tid := 0; tid < threads; tid++ {
				for i := tid; i < tile*(tile/4); i += threads {
					cc, gg := i/(tile/4), i%(tile/4)
					c, r := c0+cc, r0+4*gg
					if c >= cols || r >= rows {
						continue
					}
					b := uint32(present[cc]>>(4*gg)) & 0xF
					var s0, s1 float32
					if b != 0 {
						q0 := bits.TrailingZeros32(b)
						b &= b - 1
						switch {
						case b != 0:
							s0, s1 = sh[4*gg+q0][cc], sh[4*gg+bits.TrailingZeros32(b)][cc]
						case q0 == 3:
							s1 = sh[4*gg+3][cc]
						default:
							s0 = sh[4*gg+q0][cc]
						}
					}
					d := c*half + r/2
					dst[d], dst[d+1] = s0, s1
					writes[d]++
					writes[d+1]++
				}
			}
		}
	}
}

// TestEmulateNMPackT24: the packing writes every slot once and equals
// the layout's definition (packT24Ref), for random transpose masks
// (empty, lone and full groups) and ragged shapes (partial tiles).
func TestEmulateNMPackT24(t *testing.T) {
	rng := rand.New(rand.NewPCG(53, 54))
	for _, sh := range [][2]int{{4, 4}, {12, 20}, {68, 132}, {128, 64}, {200, 72}} {
		rows, cols := sh[0], sh[1]
		c := makeNM(t, rng, rows, cols, 2, 4, false)
		ix := make([]uint8, len(c.vals))
		if err := format.UnpackNMIndices(format.NM{N: 2, M: 4}, rows, cols, c.idx, ix); err != nil {
			t.Fatal(err)
		}
		keep := randomTKeep(rng, ix, rows, cols)
		want := packT24Ref(c.vals, ix, keep, rows, cols)
		lone3 := 0
		for i := 1; i < len(want); i += 2 {
			if want[i-1] == 0 && want[i] != 0 {
				lone3++
			}
		}
		if rows >= 64 && lone3 == 0 {
			t.Fatalf("%dx%d: no group with a lone value in its last row: the rule is not exercised", rows, cols)
		}
		got := make([]float32, len(want))
		for i := range got {
			got[i] = float32(math.NaN())
		}
		writes := make([]int, len(want))
		emuNMPackT24(got, c.vals, c.idx, keep, rows, cols, writes)
		for i := range want {
			if writes[i] != 1 || got[i] != want[i] {
				t.Fatalf("%dx%d: slot %d written %d times, %v, want %v", rows, cols, i, writes[i], got[i], want[i])
			}
		}
	}
}
