package cpu

import "math"

// AdamWStep holds one AdamW update's scalars for a parameter: the moment
// decays, the bias corrections bc1 = 1-Beta1^t and bc2 = 1-Beta2^t, the
// learning rate, Shrink = 1-LR·weight decay (decoupled decay) and Eps;
// GradScale multiplies the gradient first, in float32 (gradient clipping;
// 0 stands for 1, which leaves it as is), and ZeroGrad sets the gradient
// to zero once read (for the next step's accumulation, without a pass of
// its own).
type AdamWStep struct {
	Beta1, Beta2, BC1, BC2, LR, Shrink, Eps float64
	GradScale                               float32
	ZeroGrad                                bool
}

// AdamW applies one step to the float32 values w with gradients g and
// moments m, v (all the same length, updated in place), in float64
// arithmetic, each operation rounded once (no fused multiply-adds):
//
//	g  = float32(grad·GradScale)
//	m' = β1·m + (1-β1)·g
//	v' = β2·v + ((1-β2)·g)·g
//	w' = w·Shrink - (LR·(m'/BC1)) / (sqrt(v'/BC2) + Eps)
//
// with m', v', w' stored as float32 (m' and v' enter w' unrounded), and
// grad zeroed with ZeroGrad.
// Elementwise: any split of the slices gives the same bits, and the
// AVX-512 kernel (8 values per instruction) and the AVX2 one (4) give the
// same bits as the scalar loop.
func AdamW(w, g, m, v []float32, s AdamWStep) {
	n := len(w)
	if len(g) != n || len(m) != n || len(v) != n {
		panic("cpu: AdamW: slices of different lengths")
	}
	if n == 0 {
		return
	}
	if s.GradScale == 0 {
		s.GradScale = 1
	}
	if asmOn() {
		k := [9]float64{s.Beta1, 1 - s.Beta1, s.Beta2, 1 - s.Beta2, s.BC1, s.BC2, s.LR, s.Shrink, s.Eps}
		zero := 0
		if s.ZeroGrad {
			zero = 1
		}
		if asm512On() {
			adamWAVX512(&w[0], &g[0], &m[0], &v[0], n, &k, s.GradScale, zero)
			return
		}
		done := adamWAVX2(&w[0], &g[0], &m[0], &v[0], n, &k, s.GradScale, zero)
		w, g, m, v = w[done:], g[done:], m[done:], v[done:]
		if len(w) == 0 {
			return
		}
	}
	adamWGo(w, g, m, v, s)
}

// adamWGo is AdamW's reference and portable path. The explicit float64
// conversions keep the compiler from fusing products into additions.
func adamWGo(w, g, m, v []float32, s AdamWStep) {
	c1, c2 := 1-s.Beta1, 1-s.Beta2
	gs := s.GradScale
	if gs == 0 {
		gs = 1
	}
	g, m, v = g[:len(w)], m[:len(w)], v[:len(w)]
	for i := range w {
		gi := float64(g[i] * gs)
		if s.ZeroGrad {
			g[i] = 0
		}
		mi := float64(s.Beta1*float64(m[i])) + float64(c1*gi)
		vi := float64(s.Beta2*float64(v[i])) + float64(float64(c2*gi)*gi)
		m[i], v[i] = float32(mi), float32(vi)
		upd := float64(s.LR*float64(mi/s.BC1)) / (math.Sqrt(vi/s.BC2) + s.Eps)
		w[i] = float32(float64(float64(w[i])*s.Shrink) - upd)
	}
}
