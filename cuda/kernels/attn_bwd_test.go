package kernels

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/slopeml/slope/cuda/driver"
	"github.com/slopeml/slope/format"
)

// The mirror of attn_bwd_q_body and attn_bwd_kv_body (kernels.cu), with
// the helpers fa_* (attn_fused_test.go) over a warp's lanes. Values are
// bf16 bits, lse and dq_dot float32.

const emuFbT = 32 // FB_T

// emuAttnBwdQ mirrors attn_bwd_q_body over its launch (dq may be nil).
func emuAttnBwdQ(dq []uint16, lse, dqdot []float32, q, k, v, o, dout []uint16, mask []int32, batch, seq, heads, D int, scale float32) {
	dim := heads * D
	ninf, pinf := float32(math.Inf(-1)), float32(math.Inf(1))
	for bt := 0; bt < batch; bt++ {
		for h := 0; h < heads; h++ {
			for bx := 0; bx < (seq+attnFusedQueries-1)/attnFusedQueries; bx++ {
				q0 := bx * attnFusedQueries
				base := bt*seq*dim + h*D
				mk := mask[bt*seq:]
				stat := h*batch*seq + bt*seq
				nkeys := min(q0+attnFusedQueries, seq)
				ks, vs, kt := emuMatrix(emuFbT, D+8), emuMatrix(emuFbT, D+8), emuMatrix(D, emuFbT+8)
				type warpState struct {
					qa, da       [][32][4]uint32
					dd, m, l, ls [32][2]float32
					acc          [][32][4]float32
				}
				ws := make([]warpState, attnFusedWarps)
				for w := range ws {
					st := &ws[w]
					qw := q0 + 16*w
					st.qa, st.da = emuFaLoadA(q, base, qw, seq, dim, D), emuFaLoadA(dout, base, qw, seq, dim, D)
					for lane := 0; lane < 32; lane++ {
						g, t := lane>>2, lane&3
						for kk := 0; kk < D/16; kk++ {
							for j := 0; j < 4; j++ {
								row, c := qw+g+8*(j&1), 16*kk+2*t+8*(j>>1)
								if row < seq {
									ox, oy := format.BFloat16ToFloat32(o[base+row*dim+c]), format.BFloat16ToFloat32(o[base+row*dim+c+1])
									st.dd[lane][j&1] += bfLo(st.da[kk][lane][j])*ox + bfHi(st.da[kk][lane][j])*oy
								}
							}
						}
						st.m[lane] = [2]float32{ninf, ninf}
					}
					st.acc = make([][32][4]float32, D/8)
				}
				for k0 := 0; k0 < nkeys; k0 += emuFbT {
					emuFaStage(ks, nil, k, base, k0, nkeys, dim, D, emuFbT)
					for w := range ws {
						st := &ws[w]
						qw := q0 + 16*w
						s := emuFaMmaRows(st.qa, ks, D, emuFbT)
						for rr := 0; rr < 2; rr++ {
							for lane := 0; lane < 32; lane++ {
								g, t := lane>>2, lane&3
								qi := qw + g + 8*rr
								for nt := 0; nt < emuFbT/8; nt++ {
									for e := 0; e < 2; e++ {
										key := k0 + nt*8 + 2*t + e
										x := scale * s[nt][lane][2*rr+e]
										if qi >= seq || key > qi || mk[min(key, nkeys-1)] == 0 {
											x = ninf
										}
										s[nt][lane][2*rr+e] = x
									}
								}
							}
							emuFaOnline(s, rr, &st.m, &st.l)
						}
					}
				}
				for w := range ws {
					st := &ws[w]
					qw := q0 + 16*w
					for rr := 0; rr < 2; rr++ {
						var dd [32]float32
						for lane := range dd {
							dd[lane] = st.dd[lane][rr]
						}
						quadSum(&dd)
						for lane := 0; lane < 32; lane++ {
							g, t := lane>>2, lane&3
							st.dd[lane][rr] = dd[lane]
							st.ls[lane][rr] = pinf
							if st.l[lane][rr] > 0 {
								st.ls[lane][rr] = st.m[lane][rr] + float32(math.Log(float64(st.l[lane][rr])))
							}
							if qi := qw + g + 8*rr; t == 0 && qi < seq {
								lse[stat+qi], dqdot[stat+qi] = st.ls[lane][rr], st.dd[lane][rr]
							}
						}
					}
				}
				if dq == nil {
					continue
				}
				for k0 := 0; k0 < nkeys; k0 += emuFbT {
					emuFaStage(ks, kt, k, base, k0, nkeys, dim, D, emuFbT)
					emuFaStage(vs, nil, v, base, k0, nkeys, dim, D, emuFbT)
					for w := range ws {
						st := &ws[w]
						qw := q0 + 16*w
						s, dp := emuFaMmaRows(st.qa, ks, D, emuFbT), emuFaMmaRows(st.da, vs, D, emuFbT)
						for lane := 0; lane < 32; lane++ {
							g, t := lane>>2, lane&3
							for rr := 0; rr < 2; rr++ {
								qi := qw + g + 8*rr
								for nt := 0; nt < emuFbT/8; nt++ {
									for e := 0; e < 2; e++ {
										key := k0 + nt*8 + 2*t + e
										var p float32
										if qi < seq && key <= qi && mk[min(key, nkeys-1)] != 0 {
											p = f32Exp(scale*s[nt][lane][2*rr+e] - st.ls[lane][rr])
										}
										s[nt][lane][2*rr+e] = scale * p * (dp[nt][lane][2*rr+e] - st.dd[lane][rr])
									}
								}
							}
						}
						emuFaMmaTr(st.acc, s, kt, D)
					}
				}
				for w := range ws {
					emuFaAddRows(dq, base, ws[w].acc, q0+16*w, seq, dim, D)
				}
			}
		}
	}
}

// emuAttnBwdKV mirrors attn_bwd_kv_body over its launch (dk, dv may be
// nil).
func emuAttnBwdKV(dk, dv []uint16, lse, dqdot []float32, q, k, v, dout []uint16, mask []int32, batch, seq, heads, D int, scale float32) {
	dim := heads * D
	pinf := float32(math.Inf(1))
	for bt := 0; bt < batch; bt++ {
		for h := 0; h < heads; h++ {
			for bx := 0; bx < (seq+attnFusedQueries-1)/attnFusedQueries; bx++ {
				k0 := bx * attnFusedQueries
				base := bt*seq*dim + h*D
				mk := mask[bt*seq:]
				stat := h*batch*seq + bt*seq
				qs, qt, ds, dt := emuMatrix(emuFbT, D+8), emuMatrix(D, emuFbT+8), emuMatrix(emuFbT, D+8), emuMatrix(D, emuFbT+8)
				var sl, sd [emuFbT]float32
				type warpState struct {
					ka, va [][32][4]uint32
					gk, gv [][32][4]float32
					kon    [32][2]bool
				}
				ws := make([]warpState, attnFusedWarps)
				for w := range ws {
					st := &ws[w]
					kw := k0 + 16*w
					st.ka, st.va = emuFaLoadA(k, base, kw, seq, dim, D), emuFaLoadA(v, base, kw, seq, dim, D)
					st.gk, st.gv = make([][32][4]float32, D/8), make([][32][4]float32, D/8)
					for lane := 0; lane < 32; lane++ {
						g := lane >> 2
						for rr := 0; rr < 2; rr++ {
							st.kon[lane][rr] = kw+g+8*rr < seq && mk[min(kw+g+8*rr, seq-1)] != 0
						}
					}
				}
				for r0 := k0; r0 < seq; r0 += emuFbT {
					emuFaStage(qs, qt, q, base, r0, seq, dim, D, emuFbT)
					emuFaStage(ds, dt, dout, base, r0, seq, dim, D, emuFbT)
					for i := 0; i < emuFbT; i++ {
						sl[i], sd[i] = pinf, 0
						if r0+i < seq {
							sl[i], sd[i] = lse[stat+r0+i], dqdot[stat+r0+i]
						}
					}
					for w := range ws {
						st := &ws[w]
						kw := k0 + 16*w
						s, dp := emuFaMmaRows(st.ka, qs, D, emuFbT), emuFaMmaRows(st.va, ds, D, emuFbT)
						for lane := 0; lane < 32; lane++ {
							g, t := lane>>2, lane&3
							for rr := 0; rr < 2; rr++ {
								key := kw + g + 8*rr
								for nt := 0; nt < emuFbT/8; nt++ {
									for e := 0; e < 2; e++ {
										qc := nt*8 + 2*t + e
										var p float32
										if st.kon[lane][rr] && key <= r0+qc {
											p = f32Exp(scale*s[nt][lane][2*rr+e] - sl[qc])
										}
										s[nt][lane][2*rr+e] = p
										dp[nt][lane][2*rr+e] = scale * p * (dp[nt][lane][2*rr+e] - sd[qc])
									}
								}
							}
						}
						emuFaMmaTr(st.gv, s, dt, D)
						emuFaMmaTr(st.gk, dp, qt, D)
					}
				}
				for w := range ws {
					if dk != nil {
						emuFaAddRows(dk, base, ws[w].gk, k0+16*w, seq, dim, D)
					}
					if dv != nil {
						emuFaAddRows(dv, base, ws[w].gv, k0+16*w, seq, dim, D)
					}
				}
			}
		}
	}
}

// attnBwdRef is the attention backward in float64 over whole sequences
// (mask [batch, seq]): dq, dk, dv [batch·seq, dim] from dout.
func attnBwdRef(q, k, v, dout []float32, mask []int32, batch, seq, heads, D int, scale float64) (dq, dk, dv []float64) {
	dim := heads * D
	n := batch * seq * dim
	dq, dk, dv = make([]float64, n), make([]float64, n), make([]float64, n)
	for bt := 0; bt < batch; bt++ {
		for h := 0; h < heads; h++ {
			at := func(x []float32, r, d int) float64 { return float64(x[(bt*seq+r)*dim+h*D+d]) }
			for i := 0; i < seq; i++ {
				qr := q[(bt*seq+i)*dim+h*D:][:D]
				p := attnProbsRef(qr, k[bt*seq*dim+h*D:], dim, mask[bt*seq:], i+1, scale)
				if p == nil {
					continue
				}
				dp := make([]float64, i+1)
				var dot float64
				for j := range p {
					for d := 0; d < D; d++ {
						dp[j] += at(dout, i, d) * at(v, j, d)
					}
					dot += p[j] * dp[j]
				}
				for j := range p {
					ds := scale * p[j] * (dp[j] - dot)
					for d := 0; d < D; d++ {
						dq[(bt*seq+i)*dim+h*D+d] += ds * at(k, j, d)
						dk[(bt*seq+j)*dim+h*D+d] += ds * at(q, i, d)
						dv[(bt*seq+j)*dim+h*D+d] += p[j] * at(dout, i, d)
					}
				}
			}
		}
	}
	return dq, dk, dv
}

// attnBwdCase: whole sequences (past 0) with left padding in entry 1.
type attnBwdCase struct{ batch, seq, heads, D, pad int }

// scale is the softmax scale of the case's kernels, 1/sqrt(D) in float32;
// the references take the same value.
func (c attnBwdCase) scale() float32 { return 1 / float32(math.Sqrt(float64(c.D))) }

var attnBwdCases = []attnBwdCase{
	{batch: 1, seq: 16, heads: 1, D: 64},
	{batch: 2, seq: 70, heads: 2, D: 64, pad: 5},
	{batch: 1, seq: 100, heads: 1, D: 128, pad: 0},
	{batch: 2, seq: 40, heads: 1, D: 128, pad: 33},
}

// inputs: q, k, v, dout bf16-exact; O the forward's output (float64
// attention rounded to bf16); the gradients' prior values (the kernels
// add into them).
func (c attnBwdCase) inputs(rng *rand.Rand) (q, k, v, o, dout []float32, mask []int32, prior [3][]float32) {
	dim := c.heads * c.D
	n := c.batch * c.seq * dim
	q, k, v, dout = randVec(rng, n, true), randVec(rng, n, true), randVec(rng, n, true), randVec(rng, n, true)
	mask = padMask(c.batch, c.seq, c.pad)
	ref := attnRef(q, k, v, mask, c.seq, c.batch, c.seq, 0, c.seq, c.heads, c.D, float64(c.scale()))
	o = make([]float32, n)
	for i, x := range ref {
		o[i] = bfRound(float32(x))
	}
	for i := range prior {
		prior[i] = randVec(rng, n, true)
	}
	return q, k, v, o, dout, mask, prior
}

// want is the reference gradients plus the priors.
func (c attnBwdCase) want(q, k, v, dout []float32, mask []int32, prior [3][]float32) [3][]float64 {
	dq, dk, dv := attnBwdRef(q, k, v, dout, mask, c.batch, c.seq, c.heads, c.D, float64(c.scale()))
	out := [3][]float64{dq, dk, dv}
	for i := range out {
		for j := range out[i] {
			out[i][j] += float64(prior[i][j])
		}
	}
	return out
}

// check compares the gradients got (dq, dk, dv; nil: not computed) with
// want, each without its prior value, so the error is relative to the
// gradient itself.
func (c attnBwdCase) check(t *testing.T, got [3][]float32, prior [3][]float32, want [3][]float64) {
	t.Helper()
	for i, name := range []string{"dq", "dk", "dv"} {
		if got[i] == nil {
			continue
		}
		diff, ref := make([]float32, len(got[i])), make([]float64, len(got[i]))
		for j := range got[i] {
			diff[j], ref[j] = got[i][j]-prior[i][j], want[i][j]-float64(prior[i][j])
		}
		checkAttn(t, fmt.Sprintf("%+v %s", c, name), diff, ref, 2e-2)
	}
}

// TestEmulateAttnBwd: the two backward kernels' mirror against float64
// gradients (bf16 tolerance), added into prior values.
func TestEmulateAttnBwd(t *testing.T) {
	rng := rand.New(rand.NewPCG(75, 76))
	for _, c := range attnBwdCases {
		q, k, v, o, dout, mask, prior := c.inputs(rng)
		want := c.want(q, k, v, dout, mask, prior)
		var got [3][]uint16
		for i := range got {
			got[i] = toBF16(prior[i])
		}
		lse, dqdot := make([]float32, c.heads*c.batch*c.seq), make([]float32, c.heads*c.batch*c.seq)
		scale := c.scale()
		emuAttnBwdQ(got[0], lse, dqdot, toBF16(q), toBF16(k), toBF16(v), toBF16(o), toBF16(dout), mask, c.batch, c.seq, c.heads, c.D, scale)
		emuAttnBwdKV(got[1], got[2], lse, dqdot, toBF16(q), toBF16(k), toBF16(v), toBF16(dout), mask, c.batch, c.seq, c.heads, c.D, scale)
		var gf [3][]float32
		for i := range got {
			gf[i] = make([]float32, len(got[i]))
			for j, x := range got[i] {
				gf[i][j] = format.BFloat16ToFloat32(x)
			}
		}
		c.check(t, gf, prior, want)
	}
}

// TestGPUAttnBwd: AttnFusedBackward against float64 gradients (bf16
// tolerance), added into prior values, on the emulation's cases with all
// three gradients; then with dk and dv not wanted (dq alone) on the
// first case and dq not wanted on the second (the first kernel then only
// finds the statistics).
func TestGPUAttnBwd(t *testing.T) {
	g := openGPU(t)
	rng := rand.New(rand.NewPCG(77, 78))
	for ci, c := range attnBwdCases {
		q, k, v, o, dout, mask, prior := c.inputs(rng)
		want := c.want(q, k, v, dout, mask, prior)
		scale := c.scale()
		wanted := [][3]bool{{true, true, true}}
		switch ci {
		case 0:
			wanted = append(wanted, [3]bool{true, false, false})
		case 1:
			wanted = append(wanted, [3]bool{false, true, true})
		}
		for _, w := range wanted {
			var got [3][]float32
			g.run(t, func() error {
				var grads [3]driver.Ptr
				for i := range grads {
					if w[i] {
						grads[i] = g.putT(BF16, prior[i])
					}
				}
				stats := c.heads * c.batch * c.seq
				if err := g.k.AttnFusedBackward(0, grads[0], grads[1], grads[2], g.poison(4*stats), g.poison(4*stats), g.putT(BF16, q),
					g.putT(BF16, k), g.putT(BF16, v), g.putT(BF16, o), g.putT(BF16, dout), g.putI32(mask), c.batch, c.seq, c.heads, c.D, scale); err != nil {
					return err
				}
				for i, p := range grads {
					if p != 0 {
						got[i] = g.getT(BF16, p, len(want[i]))
					}
				}
				return nil
			})
			c.check(t, got, prior, want)
		}
	}
}
