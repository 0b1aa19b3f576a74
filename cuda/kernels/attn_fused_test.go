package kernels

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/slopeml/slope/format"
)

// emuMma16816 is mma.sync.m16n8k16.row.col.f32.bf16.bf16.f32 on a warp's
// registers (PTX ISA "Matrix Fragments for mma.m16n8k16 with floating
// point type"; g = lane/4, t = lane%4):
//   - A: register r of lane l holds A[g+8(r&1)][2t+8(r>>1)] (low half)
//     and the next column (high half);
//   - B: register r holds B[2t+8r][g] (low) and B[2t+8r+1][g] (high);
//   - C/D: d[i] = D[g+8(i>>1)][2t+(i&1)].
//
// The products are summed in float64 and added to C in float32.
func emuMma16816(d *[32][4]float32, a *[32][4]uint32, b *[32][2]uint32) {
	var A [16][16]float64
	var B [16][8]float64
	for l := 0; l < 32; l++ {
		g, t := l>>2, l&3
		for r := 0; r < 4; r++ {
			row, col := g+8*(r&1), 2*t+8*(r>>1)
			A[row][col], A[row][col+1] = float64(bfLo(a[l][r])), float64(bfHi(a[l][r]))
		}
		for r := 0; r < 2; r++ {
			B[2*t+8*r][g], B[2*t+8*r+1][g] = float64(bfLo(b[l][r])), float64(bfHi(b[l][r]))
		}
	}
	for l := 0; l < 32; l++ {
		g, t := l>>2, l&3
		for i := 0; i < 4; i++ {
			row, col := g+8*(i>>1), 2*t+(i&1)
			var s float64
			for k := 0; k < 16; k++ {
				s += A[row][k] * B[k][col]
			}
			d[l][i] += float32(s)
		}
	}
}

// f32Exp is the kernels' expf as the emulations model it: exp rounded
// once to float32.
func f32Exp(x float32) float32 { return float32(math.Exp(float64(x))) }

// attnFusedWarps is the warps of a fused attention block (16 rows each).
const attnFusedWarps = attnFusedThreads / 32

// bfWord reads the 32-bit word of two bf16 values at p[i], p[i+1].
func bfWord(p []uint16, i int) uint32 { return uint32(p[i]) | uint32(p[i+1])<<16 }

// emuAttnFused mirrors attn_fused_body<D> over the launch AttnFused makes:
// blocks and warps are loops, each warp's registers arrays over its
// lanes, the shuffles sums over a quad. Values are bf16 bits.
func emuAttnFused(out, q, k, v []uint16, mask []int32, maskLd, batch, seq, past, maxLen, heads, D, dim int, scale float32) {
	const bq, bk = attnFusedQueries, 64 // FA_BQ (the launch's), FA_BK
	ninf := float32(math.Inf(-1))
	for bt := 0; bt < batch; bt++ {
		for h := 0; h < heads; h++ {
			for bx := 0; bx < (seq+bq-1)/bq; bx++ {
				q0 := bx * bq
				ks, vt := emuMatrix(bk, D+8), emuMatrix(D, bk+8) // [key][d], [d][key]
				qb, kb, vb := bt*seq*dim+h*D, bt*maxLen*dim+h*D, bt*maxLen*dim+h*D
				mk := mask[bt*maskLd:]
				nkeys := past + min(q0+bq, seq)
				type warpState struct {
					qa   [][32][4]uint32 // [D/16]
					o    [][32][4]float32
					m, l [32][2]float32
				}
				ws := make([]warpState, attnFusedWarps)
				for w := range ws {
					st := &ws[w]
					qw := q0 + 16*w
					st.qa = emuFaLoadA(q, qb, qw, seq, dim, D)
					st.o = make([][32][4]float32, D/8)
					for lane := 0; lane < 32; lane++ {
						st.m[lane] = [2]float32{ninf, ninf}
					}
				}
				for k0 := 0; k0 < nkeys; k0 += bk {
					emuFaStage(ks, nil, k, kb, k0, nkeys, dim, D, bk)
					emuFaStage(nil, vt, v, vb, k0, nkeys, dim, D, bk)
					for w := range ws {
						st := &ws[w]
						qw := q0 + 16*w
						s := emuFaMmaRows(st.qa, ks, D, bk)
						for rr := 0; rr < 2; rr++ {
							for lane := 0; lane < 32; lane++ {
								g, t := lane>>2, lane&3
								qi := qw + g + 8*rr
								last := -1
								if qi < seq {
									last = past + qi
								}
								for nt := 0; nt < bk/8; nt++ {
									for e := 0; e < 2; e++ {
										key := k0 + nt*8 + 2*t + e
										x := scale * s[nt][lane][2*rr+e]
										if key > last || mk[min(key, nkeys-1)] == 0 {
											x = ninf
										}
										s[nt][lane][2*rr+e] = x
									}
								}
							}
							corr := emuFaOnline(s, rr, &st.m, &st.l)
							for lane := 0; lane < 32; lane++ {
								for nd := range st.o {
									st.o[nd][lane][2*rr] *= corr[lane]
									st.o[nd][lane][2*rr+1] *= corr[lane]
								}
							}
						}
						emuFaMmaTr(st.o, s, vt, D)
					}
				}
				for w := range ws {
					st := &ws[w]
					qw := q0 + 16*w
					for lane := 0; lane < 32; lane++ {
						g, t := lane>>2, lane&3
						for rr := 0; rr < 2; rr++ {
							qi := qw + g + 8*rr
							if qi >= seq {
								continue
							}
							inv := float32(0)
							if st.l[lane][rr] > 0 {
								inv = 1 / st.l[lane][rr]
							}
							row := (bt*seq+qi)*dim + h*D
							for nd := 0; nd < D/8; nd++ {
								out[row+nd*8+2*t] = format.Float32ToBFloat16(st.o[nd][lane][2*rr] * inv)
								out[row+nd*8+2*t+1] = format.Float32ToBFloat16(st.o[nd][lane][2*rr+1] * inv)
							}
						}
					}
				}
			}
		}
	}
}

// emuFaStage mirrors fa_stage<D, T>: rows [r0, r0+T) of src (head slice
// at base, row stride dim) into rows [T][D] and/or tr [D][T] (nil: not
// staged); rows at or past n zeros.
func emuFaStage(rows, tr [][]uint16, src []uint16, base, r0, n, dim, D, T int) {
	for i := 0; i < T*D/8; i++ {
		r, c8 := i%T, (i/T)*8
		for j := 0; j < 8; j++ {
			var x uint16
			if r0+r < n {
				x = src[base+(r0+r)*dim+c8+j]
			}
			if rows != nil {
				rows[r][c8+j] = x
			}
			if tr != nil {
				tr[c8+j][r] = x
			}
		}
	}
}

func emuMatrix(r, c int) [][]uint16 {
	m := make([][]uint16, r)
	for i := range m {
		m[i] = make([]uint16, c)
	}
	return m
}

// emuFaLoadA mirrors fa_load_a: A fragments of rows [r, r+16).
func emuFaLoadA(src []uint16, base, r, n, dim, D int) [][32][4]uint32 {
	a := make([][32][4]uint32, D/16)
	for lane := 0; lane < 32; lane++ {
		g, t := lane>>2, lane&3
		for kk := 0; kk < D/16; kk++ {
			for j := 0; j < 4; j++ {
				row, c := r+g+8*(j&1), 16*kk+2*t+8*(j>>1)
				if row < n {
					a[kk][lane][j] = bfWord(src, base+row*dim+c)
				}
			}
		}
	}
	return a
}

// emuFaMmaRows mirrors fa_mma_rows<D, T>: x = A·Bᵀ for a 16 x T tile, B
// rows staged in rows.
func emuFaMmaRows(a [][32][4]uint32, rows [][]uint16, D, T int) [][32][4]float32 {
	x := make([][32][4]float32, T/8)
	for nt := range x {
		for kk := 0; kk < D/16; kk++ {
			var b [32][2]uint32
			for lane := 0; lane < 32; lane++ {
				g, t := lane>>2, lane&3
				b[lane] = [2]uint32{bfWord(rows[nt*8+g], 16*kk+2*t), bfWord(rows[nt*8+g], 16*kk+8+2*t)}
			}
			emuMma16816(&x[nt], &a[kk], &b)
		}
	}
	return x
}

// emuFaMmaTr mirrors fa_mma_tr<D, T>: acc += X·B, X a 16 x T tile (T =
// 8·len(x)), B staged transposed in tr.
func emuFaMmaTr(acc [][32][4]float32, x [][32][4]float32, tr [][]uint16, D int) {
	for kk := 0; kk < len(x)/2; kk++ {
		var a [32][4]uint32
		for lane := 0; lane < 32; lane++ {
			x0, x1 := x[2*kk][lane], x[2*kk+1][lane]
			a[lane] = [4]uint32{bfPair(x0[0], x0[1]), bfPair(x0[2], x0[3]), bfPair(x1[0], x1[1]), bfPair(x1[2], x1[3])}
		}
		for nd := 0; nd < D/8; nd++ {
			var b [32][2]uint32
			for lane := 0; lane < 32; lane++ {
				g, t := lane>>2, lane&3
				b[lane] = [2]uint32{bfWord(tr[nd*8+g], 16*kk+2*t), bfWord(tr[nd*8+g], 16*kk+8+2*t)}
			}
			emuMma16816(&acc[nd], &a, &b)
		}
	}
}

// emuFaAddRows mirrors fa_add_rows.
func emuFaAddRows(dst []uint16, base int, acc [][32][4]float32, r, n, dim, D int) {
	for lane := 0; lane < 32; lane++ {
		g, t := lane>>2, lane&3
		for rr := 0; rr < 2; rr++ {
			row := r + g + 8*rr
			if row >= n {
				continue
			}
			for nd := 0; nd < D/8; nd++ {
				for e := 0; e < 2; e++ {
					i := base + row*dim + nd*8 + 2*t + e
					dst[i] = format.Float32ToBFloat16(format.BFloat16ToFloat32(dst[i]) + acc[nd][lane][2*rr+e])
				}
			}
		}
	}
}

// emuFaOnline mirrors fa_online for row half rr of a warp's tile x (m
// and l the warp's lanes' running max and sum) and returns each lane's
// factor exp(m_old - m_new).
func emuFaOnline(x [][32][4]float32, rr int, m, l *[32][2]float32) (corr [32]float32) {
	ninf := float32(math.Inf(-1))
	var mx, sum [32]float32
	for lane := 0; lane < 32; lane++ {
		mx[lane] = ninf
		for nt := range x {
			mx[lane] = max(mx[lane], x[nt][lane][2*rr], x[nt][lane][2*rr+1])
		}
	}
	quadMax(&mx)
	for lane := 0; lane < 32; lane++ {
		mnew := max(m[lane][rr], mx[lane])
		ref := mnew
		corr[lane] = f32Exp(m[lane][rr] - mnew)
		if mnew == ninf {
			ref, corr[lane] = 0, 1
		}
		for nt := range x {
			for e := 0; e < 2; e++ {
				p := f32Exp(x[nt][lane][2*rr+e] - ref)
				x[nt][lane][2*rr+e] = p
				sum[lane] += p
			}
		}
		m[lane][rr] = mnew
	}
	quadSum(&sum)
	for lane := 0; lane < 32; lane++ {
		l[lane][rr] = l[lane][rr]*corr[lane] + sum[lane]
	}
	return corr
}

// quadMax and quadSum are the kernel's two __shfl_xor_sync steps (1, 2):
// every lane of a quad gets the quad's max or sum.
func quadMax(x *[32]float32) {
	for l := 0; l < 32; l += 4 {
		m := max(x[l], x[l+1], x[l+2], x[l+3])
		x[l], x[l+1], x[l+2], x[l+3] = m, m, m, m
	}
}

func quadSum(x *[32]float32) {
	for l := 0; l < 32; l += 4 {
		s := (x[l] + x[l^1]) + (x[l^2] + x[l^3])
		x[l], x[l+1], x[l+2], x[l+3] = s, s, s, s
	}
}

// attnFusedCase is one fused-attention case: random bf16 q, k, v, and a
// mask with left padding (the first pad keys of batch entry 1 masked).
type attnFusedCase struct {
	batch, seq, past, maxLen, heads, D, pad int
}

func (c attnFusedCase) inputs(rng *rand.Rand) (q, k, v []float32, mask []int32, maskLd, dim int) {
	dim = c.heads * c.D
	q = randVec(rng, c.batch*c.seq*dim, true)
	k = randVec(rng, c.batch*c.maxLen*dim, true)
	v = randVec(rng, c.batch*c.maxLen*dim, true)
	maskLd = c.past + c.seq + 3
	return q, k, v, padMask(c.batch, maskLd, c.pad), maskLd, dim
}

// padMask is a [batch, ld] mask of ones but for the first pad keys of
// batch entry 1 (left padding).
func padMask(batch, ld, pad int) []int32 {
	mask := make([]int32, batch*ld)
	for bt := 0; bt < batch; bt++ {
		for j := 0; j < ld; j++ {
			if bt == 0 || j >= pad {
				mask[bt*ld+j] = 1
			}
		}
	}
	return mask
}

var attnFusedCases = []attnFusedCase{
	{batch: 1, seq: 16, maxLen: 16, heads: 1, D: 64},
	{batch: 2, seq: 70, maxLen: 70, heads: 2, D: 64, pad: 5},               // a second query block, padded queries without keys
	{batch: 2, seq: 40, past: 90, maxLen: 140, heads: 1, D: 128, pad: 100}, // a cache, whole tiles masked
	{batch: 1, seq: 130, maxLen: 130, heads: 2, D: 128},
}

// TestEmulateAttnFused: the kernel's mirror against float64 attention
// (bf16 tolerance: P and the output are rounded to bf16).
func TestEmulateAttnFused(t *testing.T) {
	rng := rand.New(rand.NewPCG(71, 72))
	for _, c := range attnFusedCases {
		q, k, v, mask, maskLd, dim := c.inputs(rng)
		scale := 1 / float32(math.Sqrt(float64(c.D)))
		want := attnRef(q, k, v, mask, maskLd, c.batch, c.seq, c.past, c.maxLen, c.heads, c.D, float64(scale))
		got := make([]uint16, len(want))
		for i := range got {
			got[i] = 0x7FC0 // NaN: every element must be written
		}
		emuAttnFused(got, toBF16(q), toBF16(k), toBF16(v), mask, maskLd, c.batch, c.seq, c.past, c.maxLen, c.heads, c.D, dim, scale)
		gf := make([]float32, len(got))
		for i, x := range got {
			gf[i] = format.BFloat16ToFloat32(x)
		}
		checkAttn(t, fmt.Sprintf("%+v", c), gf, want, 1e-2)
	}
}

// TestGPUAttnFused: attn_fused against float64 attention (bf16
// tolerance), the output poisoned first, on the emulation's cases.
func TestGPUAttnFused(t *testing.T) {
	g := openGPU(t)
	rng := rand.New(rand.NewPCG(73, 74))
	for _, c := range attnFusedCases {
		q, k, v, mask, maskLd, _ := c.inputs(rng)
		scale := 1 / float32(math.Sqrt(float64(c.D)))
		want := attnRef(q, k, v, mask, maskLd, c.batch, c.seq, c.past, c.maxLen, c.heads, c.D, float64(scale))
		var got []float32
		g.run(t, func() error {
			out := g.poison(2 * len(want))
			if err := g.k.AttnFused(0, out, g.putT(BF16, q), g.putT(BF16, k), g.putT(BF16, v), g.putI32(mask), maskLd,
				c.batch, c.seq, c.past, c.maxLen, c.heads, c.D, scale); err != nil {
				return err
			}
			got = g.getT(BF16, out, len(want))
			return nil
		})
		checkAttn(t, fmt.Sprintf("%+v", c), got, want, 1e-2)
	}
}
