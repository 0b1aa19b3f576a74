package convert

import (
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"strings"
)

// Adapter initialisations (Options.AdapterInit).
const (
	// AdapterInitSlope is SLoPe's: L [in, r] drawn i.i.d. from
	// N(0, 1/in)·SlopeInitGain, R = 0, so the model computes exactly what
	// the pruned one does until the adapters are trained.
	AdapterInitSlope = "slope"
	// AdapterInitZero: L = 0 and R = 0.
	AdapterInitZero = "zero"
	// AdapterInitSVD: scale·L·R is the best rank-r approximation of the
	// transposed pruning residual (W − W_s)ᵀ, by RandomizedSVD.
	AdapterInitSVD = "svd"
)

// SlopeInitGain scales the N(0, 1/in) draws of L in the slope
// initialisation.
const SlopeInitGain = 0.01

// AdapterLName and AdapterRName name the adapter factors of a weight.
func AdapterLName(weight string) string { return weight + ".adapter_l" }

// AdapterRName names the R factor of a weight's adapter.
func AdapterRName(weight string) string { return weight + ".adapter_r" }

// weightRNG is the random source for one weight: it depends only on the
// seed and the weight's name, so results do not depend on tensor order.
func weightRNG(seed uint64, name string) *rand.Rand {
	h := fnv.New64a()
	h.Write([]byte(name))
	return rand.New(rand.NewPCG(seed, h.Sum64()))
}

// adapterFactors returns L [in, r] and R [r, out] (row-major) for a weight
// w [out, in] whose pruned version is ws, so that scale·L·R approximates
// (w − ws)ᵀ for svd and is zero for the other initialisations.
func adapterFactors(init string, w, ws []float32, out, in, rank int, scale float32, rng *rand.Rand) (l, r []float32, err error) {
	l, r = make([]float32, in*rank), make([]float32, rank*out)
	switch init {
	case AdapterInitZero:
	case AdapterInitSlope:
		sd := SlopeInitGain / math.Sqrt(float64(in))
		for i := range l {
			l[i] = float32(sd * rng.NormFloat64())
		}
	case AdapterInitSVD:
		e := make([]float32, len(w))
		for i := range w {
			e[i] = w[i] - ws[i]
		}
		// E [out, in] ≈ U·Σ·Vᵀ, so Eᵀ ≈ V·Σ·Uᵀ = scale·L·R with
		// L = V·√(Σ/|scale|) and R = sign(scale)·√(Σ/|scale|)·Uᵀ.
		d := RandomizedSVD(e, out, in, rank, rng)
		sgn := math.Copysign(1, float64(scale))
		for k := range d.S {
			f := math.Sqrt(d.S[k] / math.Abs(float64(scale)))
			for i := 0; i < in; i++ {
				l[i*rank+k] = float32(f * d.V[k][i])
			}
			for o := 0; o < out; o++ {
				r[k*out+o] = float32(sgn * f * d.U[k][o])
			}
		}
	default:
		return nil, nil, fmt.Errorf("--adapter-init %q: want slope, svd or zero", init)
	}
	return l, r, nil
}

// refitR returns the R [r, out] minimising ‖Eᵀ − scale·L·R‖_F for a fixed
// L [in, r] (the least-squares solution (LᵀL)⁻¹LᵀEᵀ/scale), where
// E = w − ws [out, in]; ok is false when LᵀL is singular.
func refitR(w, ws []float32, out, in, rank int, l []float32, scale float32) ([]float32, bool) {
	g := make([]float64, rank*rank)
	for i := 0; i < in; i++ {
		li := l[i*rank : (i+1)*rank]
		for a := 0; a < rank; a++ {
			for b := 0; b <= a; b++ {
				g[a*rank+b] += float64(li[a]) * float64(li[b])
			}
		}
	}
	var trace float64
	for a := 0; a < rank; a++ {
		trace += g[a*rank+a]
	}
	if trace == 0 {
		return nil, false
	}
	// Cholesky G = C·Cᵀ (lower), with a relative ridge of 1e-12.
	c := make([]float64, rank*rank)
	for a := 0; a < rank; a++ {
		for b := 0; b <= a; b++ {
			s := g[a*rank+b]
			if a == b {
				s += 1e-12 * trace / float64(rank)
			}
			for k := 0; k < b; k++ {
				s -= c[a*rank+k] * c[b*rank+k]
			}
			if a == b {
				if s <= 0 {
					return nil, false
				}
				c[a*rank+a] = math.Sqrt(s)
			} else {
				c[a*rank+b] = s / c[b*rank+b]
			}
		}
	}
	// B = Lᵀ·Eᵀ [r, out]: B[k, o] = Σ_i L[i, k]·E[o, i].
	b := make([]float64, rank*out)
	parallel(out, 16, func(lo, hi int) {
		for o := lo; o < hi; o++ {
			wr, sr := w[o*in:(o+1)*in], ws[o*in:(o+1)*in]
			for i := 0; i < in; i++ {
				e := float64(wr[i] - sr[i])
				if e == 0 {
					continue
				}
				for k := 0; k < rank; k++ {
					b[k*out+o] += float64(l[i*rank+k]) * e
				}
			}
		}
	})
	r := make([]float32, rank*out)
	x := make([]float64, rank)
	for o := 0; o < out; o++ {
		// Solve C·y = b, then Cᵀ·x = y.
		for a := 0; a < rank; a++ {
			s := b[a*out+o]
			for k := 0; k < a; k++ {
				s -= c[a*rank+k] * x[k]
			}
			x[a] = s / c[a*rank+a]
		}
		for a := rank - 1; a >= 0; a-- {
			s := x[a]
			for k := a + 1; k < rank; k++ {
				s -= c[k*rank+a] * x[k]
			}
			x[a] = s / c[a*rank+a]
		}
		for a := 0; a < rank; a++ {
			r[a*out+o] = float32(x[a] / float64(scale))
		}
	}
	return r, true
}

// rowSquares returns Σw² and Σ(w−ws)² of one row in float64, in eight
// interleaved partial sums (element i into sum i%8, combined as
// ((s0+s1)+(s2+s3))+((s4+s5)+(s6+s7)): sumTree8): one fixed order, shared
// by every caller (the fused 2:4 kernel's SIMD lanes included) so that
// the reported errors agree bit for bit, with short dependency chains.
func rowSquares(w, ws []float32) (a, b float64) {
	var sa, sb [8]float64
	n := len(w)
	ws = ws[:n]
	for i := range n {
		v := float64(w[i])
		d := v - float64(ws[i])
		sa[i&7] += v * v
		sb[i&7] += d * d
	}
	return sumTree8(&sa), sumTree8(&sb)
}

// sumTree8 adds eight partial sums in rowSquares's order.
func sumTree8(s *[8]float64) float64 {
	return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]))
}

// rowSquaresKept is rowSquares(w, ws) for ws = w where keep, 0 elsewhere
// (the pruned row stored without rounding), without materialising ws:
// the same values in the same order, so the same bits (a kept infinity
// gives v - v = NaN there too).
func rowSquaresKept(w []float32, keep []bool) (a, b float64) {
	var sa, sb [8]float64
	n := len(w)
	keep = keep[:n]
	for i := range n {
		v := float64(w[i])
		d := v
		if keep[i] {
			d = v - v
		}
		sa[i&7] += v * v
		sb[i&7] += d * d
	}
	return sumTree8(&sa), sumTree8(&sb)
}

// relErrors returns ‖w − ws‖/‖w‖ and, when l is not nil,
// ‖w − (ws + scale·(L·R)ᵀ)‖/‖w‖, in float64 (0 for a zero w).
func relErrors(w, ws []float32, out, in, rank int, l, r []float32, scale float32) (pruned, adapted float64) {
	// Per-row sums in parallel, added in row order: the same bits on any
	// number of cores.
	rowW, rowP := make([]float64, out), make([]float64, out)
	parallel(out, 16, func(lo, hi int) {
		for o := lo; o < hi; o++ {
			rowW[o], rowP[o] = rowSquares(w[o*in:(o+1)*in], ws[o*in:(o+1)*in])
		}
	})
	var nw, np float64
	for o := range rowW {
		nw += rowW[o]
		np += rowP[o]
	}
	if nw == 0 {
		return 0, 0
	}
	if l == nil {
		return math.Sqrt(np / nw), 0
	}
	sums := make([]float64, out)
	parallel(out, 16, func(lo, hi int) {
		for o := lo; o < hi; o++ {
			var s float64
			for i := 0; i < in; i++ {
				var lr float64
				for k := 0; k < rank; k++ {
					lr += float64(l[i*rank+k]) * float64(r[k*out+o])
				}
				d := float64(w[o*in+i]) - float64(ws[o*in+i]) - float64(scale)*lr
				s += d * d
			}
			sums[o] = s
		}
	})
	var na float64
	for _, s := range sums {
		na += s
	}
	return math.Sqrt(np / nw), math.Sqrt(na / nw)
}

// ParseAdapterInit checks an adapter initialisation name ("" is slope).
func ParseAdapterInit(s string) (string, error) {
	switch v := strings.ToLower(s); v {
	case "":
		return AdapterInitSlope, nil
	case AdapterInitSlope, AdapterInitSVD, AdapterInitZero:
		return v, nil
	}
	return "", fmt.Errorf("--adapter-init %q: want slope, svd or zero", s)
}
