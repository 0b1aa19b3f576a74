package kernels

import (
	"encoding/binary"
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
// makes (bf16 values as their bits); every element of dst is written
// once (counted in writes).
func emuNMPackT24(dst, vals []uint16, idx, keep []byte, rows, cols int, writes []int) {
	k := cols / 2
	rowBytes := (k*2 + 7) >> 3
	for by := 0; by < (rows+packRows-1)/packRows; by++ {
		for bx := 0; bx < (cols+packCols-1)/packCols; bx++ {
			// Shared memory starts as garbage: only tp is cleared, as the
			// kernel's tp32 loop does.
			var tv [packCols][packRows + 2]uint16
			var tp [packCols][packRows + 4]byte
			for c := range tv {
				for r := range tv[c] {
					tv[c][r] = 0xFFFF
				}
			}
			for c := range tp {
				for r := range tp[c] {
					tp[c][r] = 0xFF
				}
			}
			for tid := 0; tid < threads; tid++ {
				for i := tid; i < packCols*(packRows+4)/4; i += threads {
					w := 4 * i // tp32[i]: four bytes of the flat array
					for b := 0; b < 4; b++ {
						tp[(w+b)/(packRows+4)][(w+b)%(packRows+4)] = 0
					}
				}
			}
			r0, c0 := by*packRows, bx*packCols
			gt := min(cols-c0, packCols) / 4
			rt := min(rows-r0, packRows)
			for tid := 0; tid < threads; tid++ {
				for i := tid; i < rt*gt; i += threads {
					rr, gl := i/gt, i%gt
					r, gi := r0+rr, c0/4+i%gt
					e := r*k + 2*gi
					if keep[e] == 0 && keep[e+1] == 0 {
						continue
					}
					code := idx[r*rowBytes+gi>>1] >> ((gi & 1) * 4) & 0xF
					bit := byte(1) << (rr & 3)
					if keep[e] != 0 {
						cc := 4*gl + int(code&3)
						tv[cc][rr], tp[cc][rr] = vals[e], bit
					}
					if keep[e+1] != 0 {
						cc := 4*gl + int(code>>2)
						tv[cc][rr], tp[cc][rr] = vals[e+1], bit
					}
				}
			}
			half := rows / 2
			qt := rt / 4
			for tid := 0; tid < threads; tid++ {
				for i := tid; i < gt*4*qt; i += threads {
					cc, gg := i/qt, i%qt
					b := uint32(tp[cc][4*gg] | tp[cc][4*gg+1] | tp[cc][4*gg+2] | tp[cc][4*gg+3])
					var s0, s1 uint16
					if b != 0 {
						q0 := bits.TrailingZeros32(b)
						rest := b & (b - 1)
						switch {
						case rest != 0:
							s0, s1 = tv[cc][4*gg+q0], tv[cc][4*gg+bits.TrailingZeros32(rest)]
						case q0 == 3:
							s1 = tv[cc][4*gg+3]
						default:
							s0 = tv[cc][4*gg+q0]
						}
					}
					d := (c0+cc)*half + r0/2 + 2*gg
					dst[d], dst[d+1] = s0, s1
					writes[d]++
					writes[d+1]++
				}
			}
		}
	}
}

// emuNMPackT24Reg mirrors nm_pack_t24_reg_bf16 over the launch
// nmPackT24 makes with reg (cols a multiple of 32); every element of dst
// is written once (counted in writes).
func emuNMPackT24Reg(dst, vals []uint16, idx, keep []byte, rows, cols int, writes []int) {
	const groups = 8 // PACKR_GROUPS
	k, rowBytes, half := cols/2, cols>>3, rows/2
	le32 := binary.LittleEndian.Uint32
	for by := 0; by < (rows+packRegRows-1)/packRegRows; by++ {
		for bx := 0; bx < (cols+packRegCols-1)/packRegCols; bx++ {
			for tid := 0; tid < threads; tid++ {
				lane, warp := tid&31, tid>>5
				rg := by*32 + lane
				gi0 := (bx*(threads>>5) + warp) * groups
				if 4*rg >= rows || 4*gi0 >= cols {
					continue
				}
				// The loads: 16 values (8 words), 16 keep bytes (4 words),
				// one idx word per row.
				var vw [4][8]uint32
				var kw [4][4]uint32
				var code [4]uint32
				for q := 0; q < 4; q++ {
					r := 4*rg + q
					for w := 0; w < 8; w++ {
						vw[q][w] = bfWord(vals, r*k+2*gi0+2*w)
					}
					for w := 0; w < 4; w++ {
						kw[q][w] = le32(keep[r*k+2*gi0+4*w:])
					}
					code[q] = le32(idx[r*rowBytes+gi0/2:])
				}
				for g := 0; g < groups; g++ {
					var v, kb, cd [4]uint32
					for q := 0; q < 4; q++ {
						v[q] = vw[q][g]
						kb[q] = kw[q][g>>1] >> ((g & 1) * 16)
						cd[q] = (code[q] >> (4 * g)) & 0xF
					}
					for c := uint32(0); c < 4; c++ {
						var out uint32
						n, last := 0, 0
						for q := 0; q < 4; q++ {
							p0 := kb[q]&0xFF != 0 && cd[q]&3 == c
							p1 := kb[q]&0xFF00 != 0 && cd[q]>>2 == c
							if p0 || p1 {
								x := v[q] >> 16
								if p0 {
									x = v[q] & 0xFFFF
								}
								switch n {
								case 0:
									out = x
								case 1:
									out |= x << 16
								}
								n++
								last = q
							}
						}
						if n == 1 && last == 3 {
							out <<= 16
						}
						d := (4*(gi0+g)+int(c))*half + 2*rg
						dst[d], dst[d+1] = uint16(out), uint16(out>>16)
						writes[d]++
						writes[d+1]++
					}
				}
			}
		}
	}
}

// TestEmulateNMPackT24: both packing kernels write every slot once and
// equal the layout's definition (packT24Ref), for random transpose masks
// (empty, lone and full groups) and ragged shapes (partial tiles and
// blocks; nm_pack_t24_reg only takes widths that are multiples of 32).
func TestEmulateNMPackT24(t *testing.T) {
	rng := rand.New(rand.NewPCG(53, 54))
	for _, kern := range []struct {
		name   string
		emu    func(dst, vals []uint16, idx, keep []byte, rows, cols int, writes []int)
		shapes [][2]int
	}{
		{"nm_pack_t24", emuNMPackT24, [][2]int{{4, 4}, {12, 20}, {68, 132}, {128, 64}, {200, 72}, {64, 260}, {132, 388}}},
		{"nm_pack_t24_reg", emuNMPackT24Reg, [][2]int{{4, 32}, {12, 64}, {132, 160}, {128, 256}, {260, 288}, {64, 544}}},
	} {
		for _, sh := range kern.shapes {
			rows, cols := sh[0], sh[1]
			c, keep, want := packT24Case(t, rng, rows, cols)
			lone3 := 0
			for i := 1; i < len(want); i += 2 {
				if want[i-1] == 0 && want[i] != 0 {
					lone3++
				}
			}
			if rows >= 64 && lone3 == 0 {
				t.Fatalf("%dx%d: no group with a lone value in its last row: the rule is not exercised", rows, cols)
			}
			got := make([]uint16, len(want))
			for i := range got {
				got[i] = 0xFFFF
			}
			writes := make([]int, len(want))
			kern.emu(got, toBF16(c.vals), c.idx, keep, rows, cols, writes)
			for i := range want {
				if writes[i] != 1 || got[i] != format.Float32ToBFloat16(want[i]) {
					t.Fatalf("%s %dx%d: slot %d written %d times, %v, want %v", kern.name, rows, cols, i, writes[i], got[i], want[i])
				}
			}
		}
	}
}

// emuNMTMask24 mirrors nm_tmask24_body over the launch NMTMask24 makes;
// every kept value's keep byte is written once (counted in writes).
func emuNMTMask24(keep []byte, vals []float32, idx []byte, rows, cols int, writes []int) {
	const tile = extTile
	k := cols / 2
	rowBytes := (k*2 + 7) >> 3
	for by := 0; by < (rows+tile-1)/tile; by++ {
		for bx := 0; bx < (cols+tile-1)/tile; bx++ {
			// Shared memory starts as garbage: only tk is cleared, as the
			// kernel does.
			var tk [tile][tile + 1]uint32
			var tj [tile][tile + 4]uint8
			for c := range tk {
				for r := range tk[c] {
					tk[c][r] = 0xFFFFFFFF
				}
				for r := range tj[c] {
					tj[c][r] = 0xFF
				}
			}
			for tid := 0; tid < threads; tid++ {
				for i := tid; i < tile*(tile+1); i += threads {
					tk[i/(tile+1)][i%(tile+1)] = 0
				}
			}
			r0, c0 := by*tile, bx*tile
			gt := min(cols-c0, tile) / 4
			rt := min(rows-r0, tile)
			for tid := 0; tid < threads; tid++ {
				for i := tid; i < rt*gt*2; i += threads {
					rr, jl := i/(gt*2), i%(gt*2)
					r, j := r0+rr, c0/2+i%(gt*2)
					cc := (jl>>1)*4 + nmIndex(idx[r*rowBytes:(r+1)*rowBytes], rowBytes, j, 2)
					tk[cc][rr] = math.Float32bits(vals[r*k+j])&0x7FFFFFFF + 1
					tj[cc][rr] = uint8(jl)
				}
			}
			qt := rt / 4
			for tid := 0; tid < threads; tid++ {
				for i := tid; i < gt*4*qt; i += threads {
					cc, gg := i/qt, i%qt
					var key [4]uint32
					for q := range key {
						key[q] = tk[cc][4*gg+q]
					}
					for q := range key {
						if key[q] == 0 {
							continue
						}
						beaten := 0
						for o := range key {
							if key[o] > key[q] || (o < q && key[o] == key[q]) {
								beaten++
							}
						}
						e := (r0+4*gg+q)*k + c0/2 + int(tj[cc][4*gg+q])
						keep[e] = 0
						if beaten < 2 {
							keep[e] = 1
						}
						writes[e]++
					}
				}
			}
		}
	}
}

// tmask24Want is format.DoublePruneMagnitude's transpose mask of the 2:4
// case c [rows, cols].
func tmask24Want(t *testing.T, c *nmCase, rows, cols int) []bool {
	t.Helper()
	ix := make([]uint8, len(c.vals))
	if err := format.UnpackNMIndices(format.NM{N: 2, M: 4}, rows, cols, c.idx, ix); err != nil {
		t.Fatal(err)
	}
	want, err := format.DoublePruneMagnitude(format.NM{N: 2, M: 4}, rows, cols, c.vals, ix)
	if err != nil {
		t.Fatal(err)
	}
	return want
}

// tmask24Cases are 2:4 weights for the transpose-mask refresh: random
// values, plus ties (values from a few magnitudes, both signs) and NaNs.
func tmask24Cases(t *testing.T, rng *rand.Rand, rows, cols int) (plain, ties *nmCase) {
	plain = makeNM(t, rng, rows, cols, 2, 4, false)
	ties = makeNM(t, rng, rows, cols, 2, 4, false)
	for i := range ties.vals {
		ties.vals[i] = float32(rng.IntN(3)) * float32(1-2*rng.IntN(2))
		if rng.IntN(97) == 0 {
			ties.vals[i] = float32(math.NaN())
		}
	}
	return plain, ties
}

// TestEmulateNMTMask24: the refresh writes every kept value's byte once
// and decides as format.DoublePruneMagnitude, with ties, zeros, NaNs and
// partial tiles.
func TestEmulateNMTMask24(t *testing.T) {
	rng := rand.New(rand.NewPCG(57, 58))
	for _, sh := range [][2]int{{4, 4}, {12, 20}, {68, 132}, {128, 64}, {200, 72}} {
		rows, cols := sh[0], sh[1]
		plain, ties := tmask24Cases(t, rng, rows, cols)
		for _, c := range []*nmCase{plain, ties} {
			want := tmask24Want(t, c, rows, cols)
			got := make([]byte, len(c.vals))
			for i := range got {
				got[i] = 7
			}
			writes := make([]int, len(got))
			emuNMTMask24(got, c.vals, c.idx, rows, cols, writes)
			for i, w := range want {
				if writes[i] != 1 || (got[i] == 1) != w || got[i] > 1 {
					t.Fatalf("%dx%d: kept value %d written %d times, keep %d, want %v", rows, cols, i, writes[i], got[i], w)
				}
			}
		}
	}
}
