package cpu

// LowRank is a low-rank adapter (L [in, r], R [r, out], float32) prepared
// for Add: both factors packed into the 16-column panels of the dense
// kernels, (ceil(r/16)*in + ceil(out/16)*r)*16 floats, about the raw
// size. It is immutable and safe for concurrent use.
type LowRank struct {
	in, out, r int
	lp, rp     panels
}

// PrepareLowRank checks and packs the factors of y += scale·(x·L)·R.
func PrepareLowRank(in, out, r int, l, rr []float32) (*LowRank, error) {
	if err := checkLowRank("prepare low-rank", nil, nil, 0, in, out, r, l, rr); err != nil {
		return nil, err
	}
	npl := (r + panelW - 1) / panelW
	lp := make([]float32, npl*in*panelW)
	for q := 0; q < npl; q++ {
		cols := min(panelW, r-q*panelW)
		for k := 0; k < in; k++ {
			copy(lp[(q*in+k)*panelW:], l[k*r+q*panelW:k*r+q*panelW+cols])
		}
	}
	npr := (out + panelW - 1) / panelW
	rp := make([]float32, npr*r*panelW)
	for q := 0; q < npr; q++ {
		cols := min(panelW, out-q*panelW)
		for j := 0; j < r; j++ {
			copy(rp[(q*r+j)*panelW:], rr[j*out+q*panelW:j*out+q*panelW+cols])
		}
	}
	return &LowRank{
		in: in, out: out, r: r,
		lp: panels{dt: Float32, k: in, n: npl * panelW, np: npl, w: wbuf{f32: lp}},
		rp: panels{dt: Float32, k: r, n: out, np: npr, w: wbuf{f32: rp}},
	}, nil
}

// Add computes y += scale·(x·L)·R for x [m, in] and y [m, out]; threads
// <= 0 means runtime.GOMAXPROCS(0). The [m, r] intermediate T = x·L is
// kept in a scratch buffer (r rounded up to 16 columns), scaled, and T·R
// accumulated into y, both with the dense fp32 kernels (GEMV below 4
// rows, the 6x16 GEMM otherwise).
func (a *LowRank) Add(y, x []float32, m int, scale float32, threads int) error {
	if a == nil {
		return errNil
	}
	if err := checkIO("low-rank add", y, x, m, a.in, a.out, nil); err != nil {
		return err
	}
	if m == 0 {
		return nil
	}
	t := ResolveThreads(threads)
	rp := a.lp.n
	tb := GetF32(m * rp)
	defer PutF32(tb)
	tm := *tb
	clear(tm)
	a.lp.mulAdd(tm, rp, x, a.in, m, nil, false, t)
	for i := range tm {
		tm[i] *= scale
	}
	a.rp.mulAdd(y, a.out, tm, rp, m, nil, false, t)
	return nil
}

// LowRankAdd computes y += scale·(x·L)·R for x [m, in], L [in, r] and
// R [r, out], all float32 row-major; threads <= 0 means
// runtime.GOMAXPROCS(0). It packs the factors on every call
// (PrepareLowRank) and runs Add: a runtime that applies the same adapter
// repeatedly should keep the prepared form.
func LowRankAdd(y, x []float32, m, in, out, r int, l, rr []float32, scale float32, threads int) error {
	const op = "low-rank add"
	if err := checkLowRank(op, y, x, m, in, out, r, l, rr); err != nil {
		return err
	}
	if m == 0 {
		return nil
	}
	a, err := PrepareLowRank(in, out, r, l, rr)
	if err != nil {
		return err
	}
	return a.Add(y, x, m, scale, threads)
}
