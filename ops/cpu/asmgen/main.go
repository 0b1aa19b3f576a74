// Command asmgen generates the AVX2+FMA(+F16C) kernels of package
// github.com/slopeml/slope/ops/cpu with avo. It is its own module so that
// the main module does not depend on avo. Run it through go generate in
// ops/cpu:
//
//	cd asmgen && go run . -out ../kernels_amd64.s -stubs ../kernels_amd64_stubs.go -pkg cpu
//
// It also generates the attention helpers dotAVX2 and axpyAVX2 (vector
// dot product and y += alpha·x over any length) and their many-row forms
// dotRowsAVX2 and axpyRowsAVX2 (one query against many key rows, many
// weighted value rows into one output).
//
// Every kernel works on fixed layouts chosen by the Go side (see the doc
// comment of each TEXT block); none of them checks bounds: the Go wrappers
// in package cpu do, before calling.
package main

import (
	"fmt"
	"math"
	"math/bits"

	. "github.com/mmcloughlin/avo/build"
	. "github.com/mmcloughlin/avo/operand"
	. "github.com/mmcloughlin/avo/reg"
)

// dtype is a weight storage type.
type dtype int

const (
	f32 dtype = iota
	bf16
	f16
)

var allDTypes = []dtype{f32, bf16, f16}

func (d dtype) name() string { return [...]string{"F32", "BF16", "F16"}[d] }
func (d dtype) size() int    { return [...]int{4, 2, 2}[d] }

// nibbleShifts is the constant vector {0, 4, ..., 28}: VPSRLVD by it moves
// nibble l of a broadcast dword into the low bits of lane l; pairShifts
// is {2, 6, ..., 30}, for the second 2-bit index of a 2:4 nibble; hiMask
// is 0xffff0000 in every lane (the odd bf16 of a pair as float32).
var nibbleShifts, pairShifts, hiMask Mem

// tailMask is 8 dwords of all ones followed by 8 zero dwords: the 8
// dwords at tailMask+4*(8-m) are a VMASKMOVPS mask of the first m lanes.
var tailMask Mem

func main() {
	ConstraintExpr("amd64,!purego")

	nibbleShifts = GLOBL("nibbleShifts", RODATA|NOPTR)
	for i := 0; i < 8; i++ {
		DATA(4*i, U32(uint32(4*i)))
	}
	pairShifts = GLOBL("pairShifts", RODATA|NOPTR)
	for i := 0; i < 8; i++ {
		DATA(4*i, U32(uint32(4*i+2)))
	}
	hiMask = GLOBL("hiMask", RODATA|NOPTR)
	for i := 0; i < 8; i++ {
		DATA(4*i, U32(0xffff0000))
	}

	tailMask = GLOBL("tailMask", RODATA|NOPTR)
	for i := 0; i < 16; i++ {
		v := uint32(0)
		if i < 8 {
			v = 0xffffffff
		}
		DATA(4*i, U32(v))
	}

	genFMAPeak()
	for _, d := range allDTypes {
		genGEMV(d)
	}
	for mr := 1; mr <= 6; mr++ {
		genGEMM(mr)
	}
	genCvt(bf16)
	genCvt(f16)
	for _, d := range allDTypes {
		for _, n := range []int{0, 1, 2, 4} {
			genSPMV(d, n)
		}
	}
	for _, d := range allDTypes {
		genSPMV24(d)
	}
	for _, d := range allDTypes {
		genSpPrep(d)
		genSpPrep24(d)
	}
	genTranspose8(transposeStore)
	genTranspose8(transposeBias)
	genTranspose8(transposeAdd)
	for _, mb := range []int{16, 32, 48, 64} {
		for r := 1; r <= 4; r++ {
			genSPMM512(mb, r)
		}
	}

	for _, mb := range []int{8, 16, 24, 32} {
		for r := 1; r <= 3; r++ {
			genSPMM(mb, r)
		}
		genSPMMPanels(mb)
	}
	genDot()
	genAxpy()
	genDotRows()
	genAxpyRows()
	genSDDMM8()
	for r := 1; r <= 4; r++ {
		genSDDMMZ(r)
	}
	for r := 1; r <= sddmmPairRows; r++ {
		genSDDMMPair(r)
	}
	for r := 1; r <= sddmmPairRowsAVX2; r++ {
		genSDDMMPairAVX2(r)
	}
	genSDDMMPairSegAVX2()
	genExpShiftSum()
	genExpShiftSumAVX2()
	genAdamW()
	genAdamWAVX2()
	genGatherF32()
	genGatherF32AVX2()
	Generate()
}

// loadW returns 8 weights of dtype d at m as float32: the memory operand
// itself for f32 (to be folded into the FMA), otherwise a register holding
// the converted values (bf16: zero-extend to 32 bits and shift into the
// high half; f16: VCVTPH2PS).
func loadW(d dtype, m Mem) Op {
	switch d {
	case bf16:
		v := YMM()
		VPMOVZXWD(m, v)
		VPSLLD(U8(16), v, v)
		return v
	case f16:
		v := YMM()
		VCVTPH2PS(m, v)
		return v
	}
	return m
}

func zeroAll(rs []VecVirtual) {
	for _, r := range rs {
		VXORPS(r, r, r)
	}
}

func ymms(n int) []VecVirtual {
	rs := make([]VecVirtual, n)
	for i := range rs {
		rs[i] = YMM()
	}
	return rs
}

// genFMAPeak: a register-only loop of 12 independent VFMADD231PS chains,
// 192 FLOPs per iteration; measures the core's FMA throughput.
func genFMAPeak() {
	TEXT("fmaPeakAVX2", NOSPLIT, "func(iters int)")
	Doc("fmaPeakAVX2 runs iters (>= 1) iterations of 12 independent 8-wide FMAs.")
	n := Load(Param("iters"), GP64())
	acc := ymms(12)
	zeroAll(acc)
	a, b := YMM(), YMM()
	VXORPS(a, a, a)
	VXORPS(b, b, b)
	Label("fmapeak_loop")
	for i := range acc {
		VFMADD231PS(a, b, acc[i])
	}
	DECQ(n)
	JNZ(LabelRef("fmapeak_loop"))
	VZEROUPPER()
	RET()
}

// genGEMV: dense y[p*16+j] += sum_k x[k] * W_p[k][j] for np panels of 16
// outputs stored [k][16] contiguously. Four k steps per iteration into 8
// accumulators, reduced in a fixed order at the end of each panel.
func genGEMV(d dtype) {
	name := "gemv" + d.name() + "AVX2"
	es := d.size()
	TEXT(name, NOSPLIT, "func(x *float32, w *byte, k int, np int, y *float32)")
	Doc(name+" adds x·W_p to y[16p:16p+16] for np (>= 1) panels W_p of",
		"16 outputs stored [k][16] back to back; k >= 1.")
	x0 := Load(Param("x"), GP64())
	w := Load(Param("w"), GP64())
	k := Load(Param("k"), GP64())
	np := Load(Param("np"), GP64())
	y := Load(Param("y"), GP64())

	Label(name + "_panel")
	acc := ymms(8)
	zeroAll(acc)
	xp := GP64()
	MOVQ(x0, xp)
	kk := GP64()
	MOVQ(k, kk)

	Label(name + "_k4")
	CMPQ(kk, U8(4))
	JL(LabelRef(name + "_k1"))
	for u := 0; u < 4; u++ {
		xb := YMM()
		VBROADCASTSS(Mem{Base: xp, Disp: 4 * u}, xb)
		for h := 0; h < 2; h++ {
			VFMADD231PS(loadW(d, Mem{Base: w, Disp: (u*16 + h*8) * es}), xb, acc[2*u+h])
		}
	}
	for b := 0; b < 64*es; b += 64 {
		PREFETCHT0(Mem{Base: w, Disp: spmvPrefetch + b})
	}
	ADDQ(U8(16), xp)
	ADDQ(U32(64*es), w)
	SUBQ(U8(4), kk)
	JMP(LabelRef(name + "_k4"))

	Label(name + "_k1")
	TESTQ(kk, kk)
	JZ(LabelRef(name + "_reduce"))
	xb := YMM()
	VBROADCASTSS(Mem{Base: xp}, xb)
	for h := 0; h < 2; h++ {
		VFMADD231PS(loadW(d, Mem{Base: w, Disp: h * 8 * es}), xb, acc[h])
	}
	ADDQ(U8(4), xp)
	ADDQ(U32(16*es), w)
	DECQ(kk)
	JMP(LabelRef(name + "_k1"))

	Label(name + "_reduce")
	for h := 0; h < 2; h++ {
		VADDPS(acc[2+h], acc[h], acc[h])
		VADDPS(acc[6+h], acc[4+h], acc[4+h])
		VADDPS(acc[4+h], acc[h], acc[h])
		ym := Mem{Base: y, Disp: 32 * h}
		VADDPS(ym, acc[h], acc[h])
		VMOVUPS(acc[h], ym)
	}
	ADDQ(U8(64), y)
	DECQ(np)
	JNZ(LabelRef(name + "_panel"))
	VZEROUPPER()
	RET()
}

// genGEMM: the register-blocked micro-kernel C[mr][16] += A[mr][k]·B[k][16]
// (mr <= 6, 2*mr accumulators; A rows broadcast from row-major storage, B a
// [k][16] fp32 panel). Each accumulator is one FMA chain over k in order,
// so every mr variant computes a given element bit-identically.
func genGEMM(mr int) {
	name := fmt.Sprintf("gemmF32x%dAVX2", mr)
	TEXT(name, NOSPLIT, "func(a *float32, lda int, b *float32, k int, c *float32, ldc int)")
	Doc(fmt.Sprintf("%s adds A·B to C for %d rows: A rows lda floats apart,", name, mr),
		"B a [k][16] panel, C rows ldc floats apart, 16 columns; k >= 1.")
	a0 := Load(Param("a"), GP64())
	lda := Load(Param("lda"), GP64())
	SHLQ(U8(2), lda)
	b := Load(Param("b"), GP64())
	k := Load(Param("k"), GP64())
	var a3 GPVirtual
	if mr > 3 {
		a3 = GP64()
		LEAQ(Mem{Base: a0, Index: lda, Scale: 2}, a3)
		ADDQ(lda, a3)
	}
	row := func(r int) Mem {
		switch r {
		case 0:
			return Mem{Base: a0}
		case 1:
			return Mem{Base: a0, Index: lda, Scale: 1}
		case 2:
			return Mem{Base: a0, Index: lda, Scale: 2}
		case 3:
			return Mem{Base: a3}
		case 4:
			return Mem{Base: a3, Index: lda, Scale: 1}
		}
		return Mem{Base: a3, Index: lda, Scale: 2}
	}
	acc := make([][2]VecVirtual, mr)
	for r := range acc {
		acc[r] = [2]VecVirtual{YMM(), YMM()}
		zeroAll(acc[r][:])
	}
	{
		// C's rows, wanted after the K loop: fetched now, so that a C too
		// large for the caches (an LM head's logits) does not stall the
		// adds at the end.
		c := Load(Param("c"), GP64())
		ldc := Load(Param("ldc"), GP64())
		SHLQ(U8(2), ldc)
		for r := 0; r < mr; r++ {
			PREFETCHT0(Mem{Base: c})
			if r+1 < mr {
				ADDQ(ldc, c)
			}
		}
	}
	b0, b1 := YMM(), YMM()
	Label(name + "_loop")
	VMOVUPS(Mem{Base: b}, b0)
	VMOVUPS(Mem{Base: b, Disp: 32}, b1)
	for r := 0; r < mr; r++ {
		t := YMM()
		VBROADCASTSS(row(r), t)
		VFMADD231PS(b0, t, acc[r][0])
		VFMADD231PS(b1, t, acc[r][1])
	}
	ADDQ(U8(4), a0)
	if mr > 3 {
		ADDQ(U8(4), a3)
	}
	ADDQ(U8(64), b)
	DECQ(k)
	JNZ(LabelRef(name + "_loop"))

	c := Load(Param("c"), GP64())
	ldc := Load(Param("ldc"), GP64())
	SHLQ(U8(2), ldc)
	for r := 0; r < mr; r++ {
		for h := 0; h < 2; h++ {
			cm := Mem{Base: c, Disp: 32 * h}
			VADDPS(cm, acc[r][h], acc[r][h])
			VMOVUPS(acc[r][h], cm)
		}
		if r+1 < mr {
			ADDQ(ldc, c)
		}
	}
	VZEROUPPER()
	RET()
}

// genCvt: dst[i] = float32(src[i]) for n (a positive multiple of 8)
// bf16 or f16 elements.
func genCvt(d dtype) {
	name := "cvt" + d.name() + "AVX2"
	TEXT(name, NOSPLIT, "func(dst *float32, src *byte, n int)")
	Doc(name + " widens n (a positive multiple of 8) elements to float32.")
	dst := Load(Param("dst"), GP64())
	src := Load(Param("src"), GP64())
	n := Load(Param("n"), GP64())
	Label(name + "_loop")
	v := loadW(d, Mem{Base: src})
	VMOVUPS(v, Mem{Base: dst})
	ADDQ(U8(16), src)
	ADDQ(U8(32), dst)
	SUBQ(U8(8), n)
	JNZ(LabelRef(name + "_loop"))
	VZEROUPPER()
	RET()
}

// genSPMV: sparse GEMV for patterns with M <= 8 on panels of 8 outputs (one
// per lane). Per group g and slot s the panel stores one dword of 8 index
// nibbles (lane l's in-group index at bits 4l..4l+3) and 8 values (lane
// order). The kernel gathers x[g*M + idx] for the 8 lanes with one
// VPERMPS from the 8-float window at x[g*M] (x must be readable 8 floats
// past its end), and accumulates with FMA into 4 accumulators (group mod
// 4), reduced in a fixed order per panel. n > 0 specialises the slot count;
// n == 0 reads it from the argument.
func genSPMV(d dtype, n int) {
	name := "spmv" + d.name()
	if n > 0 {
		name += fmt.Sprintf("N%d", n)
	}
	name += "AVX2"
	es := d.size()
	TEXT(name, NOSPLIT, "func(x *float32, vals *byte, idx *uint32, groups int, n int, m int, np int, y *float32)")
	Doc(name+" adds the product of np (>= 1) sparse panels of 8 outputs with x",
		"to y[8p:8p+8]; groups >= 1 groups of m <= 8 inputs, n kept per group.")
	x0 := Load(Param("x"), GP64())
	vals := Load(Param("vals"), GP64())
	idx := Load(Param("idx"), GP64())
	groups := Load(Param("groups"), GP64())
	var nr GPVirtual
	if n == 0 {
		nr = GP64()
		Load(Param("n"), nr)
	}
	ms := Load(Param("m"), GP64())
	SHLQ(U8(2), ms)
	np := Load(Param("np"), GP64())
	y := Load(Param("y"), GP64())

	lbl := 0
	group := func(acc VecVirtual) {
		slot := func(s int) {
			t := YMM()
			VPBROADCASTD(Mem{Base: idx, Disp: 4 * s}, t)
			VPSRLVD(nibbleShifts, t, t)
			VPERMPS(Mem{Base: xpReg}, t, t)
			VFMADD231PS(loadW(d, Mem{Base: vals, Disp: 8 * es * s}), t, acc)
		}
		if n > 0 {
			for s := 0; s < n; s++ {
				slot(s)
			}
			ADDQ(U8(4*n), idx)
			ADDQ(U32(8*es*n), vals)
			return
		}
		lbl++
		l := fmt.Sprintf("%s_slot%d", name, lbl)
		ss := GP64()
		MOVQ(nr, ss)
		Label(l)
		slot(0)
		ADDQ(U8(4), idx)
		ADDQ(U8(8*es), vals)
		DECQ(ss)
		JNZ(LabelRef(l))
	}

	Label(name + "_panel")
	acc := ymms(4)
	zeroAll(acc)
	xpReg = GP64()
	MOVQ(x0, xpReg)
	gg := GP64()
	MOVQ(groups, gg)

	Label(name + "_g4")
	CMPQ(gg, U8(4))
	JL(LabelRef(name + "_g1"))
	for u := 0; u < 4; u++ {
		group(acc[u])
		ADDQ(ms, xpReg)
	}
	if n > 0 {
		// the values of the 4 groups just done: 4*n*8*es bytes
		for b := 0; b < 4*n*8*es; b += 64 {
			PREFETCHT0(Mem{Base: vals, Disp: spmvPrefetch + b})
		}
	} else {
		PREFETCHT0(Mem{Base: vals, Disp: spmvPrefetch})
	}
	SUBQ(U8(4), gg)
	JMP(LabelRef(name + "_g4"))

	Label(name + "_g1")
	TESTQ(gg, gg)
	JZ(LabelRef(name + "_reduce"))
	group(acc[0])
	ADDQ(ms, xpReg)
	DECQ(gg)
	JMP(LabelRef(name + "_g1"))

	Label(name + "_reduce")
	VADDPS(acc[1], acc[0], acc[0])
	VADDPS(acc[3], acc[2], acc[2])
	VADDPS(acc[2], acc[0], acc[0])
	VADDPS(Mem{Base: y}, acc[0], acc[0])
	VMOVUPS(acc[0], Mem{Base: y})
	ADDQ(U8(32), y)
	DECQ(np)
	JNZ(LabelRef(name + "_panel"))
	VZEROUPPER()
	RET()
}

// xpReg is the x window pointer of the SPMV kernel being generated.
var xpReg GPVirtual

// genSpPrep: expands one sparse panel (8 outputs, groups*n steps) into the
// scratch form of the sparse GEMM kernel: per step 8 absolute byte offsets
// (g*m + idx)<<sh into a transposed activation block with rows of 2^sh
// bytes (128 for the AVX2 kernel, 256 for AVX-512), and 8 float32 values.
func genSpPrep(d dtype) {
	name := "spPrep" + d.name() + "AVX2"
	es := d.size()
	TEXT(name, NOSPLIT, "func(off *uint32, vals *float32, idx *uint32, src *byte, groups int, n int, gstep int, rsh int)")
	Doc(name+" writes offsets (g*M+idx)<<sh and float32 values of one panel",
		"(groups >= 1 groups, n >= 1 slots) into off and vals, 8 per step;",
		"gstep = M<<sh, rsh = 28-sh.")
	off := Load(Param("off"), GP64())
	vals := Load(Param("vals"), GP64())
	idx := Load(Param("idx"), GP64())
	src := Load(Param("src"), GP64())
	groups := Load(Param("groups"), GP64())
	nr := Load(Param("n"), GP64())
	m := GP64()
	Load(Param("gstep"), m)
	cnt := XMM()
	MOVQ(Load(Param("rsh"), GP64()), cnt)
	step := YMM()
	VMOVD(m.As32(), step.AsX())
	VPBROADCASTD(step.AsX(), step)
	base := YMM()
	VPXOR(base, base, base)

	Label(name + "_group")
	ss := GP64()
	MOVQ(nr, ss)
	Label(name + "_slot")
	t := YMM()
	VPBROADCASTD(Mem{Base: idx}, t)
	VPSRLVD(nibbleShifts, t, t)
	VPSLLD(U8(28), t, t)
	VPSRLD(cnt, t, t)
	VPADDD(base, t, t)
	VMOVDQU(t, Mem{Base: off})
	v := loadW(d, Mem{Base: src})
	if d == f32 {
		r := YMM()
		VMOVUPS(v, r)
		v = r
	}
	VMOVUPS(v, Mem{Base: vals})
	ADDQ(U8(4), idx)
	ADDQ(U8(8*es), src)
	ADDQ(U8(32), off)
	ADDQ(U8(32), vals)
	DECQ(ss)
	JNZ(LabelRef(name + "_slot"))
	VPADDD(step, base, base)
	DECQ(groups)
	JNZ(LabelRef(name + "_group"))
	VZEROUPPER()
	RET()
}

// genSPMM: the sparse GEMM micro-kernel, vectorised over activation rows:
// for r outputs (lanes l0..l0+r-1 of a scratch panel from spPrep: per step
// 8 byte offsets and 8 float32 values, 32 bytes apart; off points at lane
// l0 of step 0, vals at lane 0) and mb rows of a
// transposed activation block XT (rows of 32 floats, 128 bytes),
// acc[j][q] += val[t][l0+j] * XT[off[t][l0+j]/128][8q:8q+8] over all steps
// t, one FMA chain per accumulator. The X rows are FMA memory operands
// (the gather is the addressing), so loads bound the kernel (Zen 3: two
// 256-bit loads per cycle), and each step spends as few as it can on the
// rest: the r lanes' values come from one load (VBROADCASTSS for 1 lane,
// VBROADCASTSD for 2, VBROADCASTF128 for 3, which reads lanes l0..l0+3,
// so l0 <= 4) spread with in-lane VPERMILPS, and two lanes' offsets from
// one 64-bit load (R3: 15 loads per 12 FMAs, against 18 when each lane's
// value and offset were loaded apart: 1.03-1.16x in BenchmarkTrainLinear,
// 2:4, on Zen 3, 2026-11-27). The accumulators start from
// and end in yt ([r][mb]), so a K range can be split into consecutive
// calls with bit-identical results.
func genSPMM(mb, r int) {
	name := fmt.Sprintf("spmmB%dR%dAVX2", mb, r)
	TEXT(name, NOSPLIT, "func(xt *float32, off *uint32, vals *float32, l0 int, steps int, yt *float32)")
	Doc(fmt.Sprintf("%s accumulates %d outputs (lanes l0.. of the panel) for %d activation rows into yt ([%d][%d]); steps >= 1.", name, r, mb, r, mb))
	xt := Load(Param("xt"), GP64())
	off := Load(Param("off"), GP64())
	vals := Load(Param("vals"), GP64())
	l0 := GP64()
	Load(Param("l0"), l0)
	LEAQ(Mem{Base: vals, Index: l0, Scale: 4}, vals)
	end := Load(Param("steps"), GP64())
	SHLQ(U8(5), end)
	yt := Load(Param("yt"), GP64())
	spmmTile(name, mb, r, 0, xt, off, vals, end, yt)
	VZEROUPPER()
	RET()
}

// spmmTile emits genSPMM's body for r outputs at lane l0 of the panel
// whose scratch off and vals point at (its lane 0; genSPMM passes
// l0 = 0 with both pointers already at its lane), accumulating into
// yt[l0*mb:(l0+r)*mb]; end holds steps*32. label prefixes its loop's
// label.
func spmmTile(label string, mb, r, l0 int, xt, off, vals, end, yt Register) {
	q := mb / 8
	acc := make([][]VecVirtual, r)
	for j := range acc {
		acc[j] = ymms(q)
		for p := range acc[j] {
			VMOVUPS(Mem{Base: yt, Disp: 4 * ((l0+j)*mb + 8*p)}, acc[j][p])
		}
	}
	i := GP64()
	XORQ(i, i)
	Label(label + "_loop")
	w := YMM()
	vm := Mem{Base: vals, Index: i, Scale: 1, Disp: 4 * l0}
	switch r {
	case 1:
		VBROADCASTSS(vm, w)
	case 2:
		VBROADCASTSD(vm, w)
	default:
		VBROADCASTF128(vm, w)
	}
	offs := make([]GPVirtual, r)
	for j := 0; j < r; j += 2 {
		if j+1 < r {
			pair := GP64()
			MOVQ(Mem{Base: off, Index: i, Scale: 1, Disp: 4 * (l0 + j)}, pair)
			offs[j] = GP64()
			MOVL(pair.As32(), offs[j].As32())
			SHRQ(U8(32), pair)
			offs[j+1] = pair
		} else {
			offs[j] = GP64()
			MOVL(Mem{Base: off, Index: i, Scale: 1, Disp: 4 * (l0 + j)}, offs[j].As32())
		}
	}
	for j := 0; j < r; j++ {
		b := w
		if r > 1 {
			b = YMM()
			VPERMILPS(U8(0x55*j), w, b)
		}
		for p := 0; p < q; p++ {
			VFMADD231PS(Mem{Base: xt, Index: offs[j], Scale: 1, Disp: 32 * p}, b, acc[j][p])
		}
	}
	ADDQ(U8(32), i)
	CMPQ(i, end)
	JNE(LabelRef(label + "_loop"))
	for j := 0; j < r; j++ {
		for p := 0; p < q; p++ {
			VMOVUPS(acc[j][p], Mem{Base: yt, Disp: 4 * ((l0+j)*mb + 8*p)})
		}
	}
}

// genSPMMPanels: genSPMM over whole panels, one call per K chunk and
// block: for each of pn full panels (8 lanes) the tiles of lanes 0-2,
// 3-5 and 6-7, exactly as three genSPMM calls (the same FMA chains, so
// the same bits). Panel k's scratch starts pstride bytes after panel
// k-1's, in off and in vals alike, and its accumulators 32*mb bytes after
// k-1's in yt ([pn][8][mb]). A K chunk of 64 steps was 15% slower per
// step as three calls per panel than as one long call (Zen 3,
// 2026-11-28): the calls' Go side and the accumulators' loads and stores
// per tile, not split further.
func genSPMMPanels(mb int) {
	name := fmt.Sprintf("spmmPanelsB%dAVX2", mb)
	TEXT(name, NOSPLIT, "func(xt *float32, off *uint32, vals *float32, pstride int, pn int, steps int, yt *float32)")
	Doc(fmt.Sprintf("%s accumulates pn (>= 1) full panels of 8 outputs for %d activation rows into yt ([pn][8][%d]); steps >= 1.", name, mb, mb))
	xt := Load(Param("xt"), GP64())
	off := Load(Param("off"), GP64())
	vals := Load(Param("vals"), GP64())
	pstride := Load(Param("pstride"), GP64())
	pn := Load(Param("pn"), GP64())
	end := Load(Param("steps"), GP64())
	SHLQ(U8(5), end)
	yt := Load(Param("yt"), GP64())
	Label(name + "_panel")
	spmmTile(name+"_l0", mb, 3, 0, xt, off, vals, end, yt)
	spmmTile(name+"_l3", mb, 3, 3, xt, off, vals, end, yt)
	spmmTile(name+"_l6", mb, 2, 6, xt, off, vals, end, yt)
	ADDQ(pstride, off)
	ADDQ(pstride, vals)
	ADDQ(U32(32*mb), yt)
	DECQ(pn)
	JNZ(LabelRef(name + "_panel"))
	VZEROUPPER()
	RET()
}

// genSPMV24: the 2:4 sparse GEMV on panels of 8 outputs. Per group one
// dword holds the lanes' two 2-bit indices (lane l: bits 4l..4l+1 and
// 4l+2..4l+3); the 4 inputs x[4g:4g+4] are broadcast to both 128-bit
// halves and gathered per slot with the in-lane VPERMILPS. Values are
// [group][slot][lane] (f32, f16) or [group][lane][slot] pairs (bf16: one
// 32-byte load, VPSLLD 16 gives slot 0, VPAND 0xffff0000 slot 1). Eight
// accumulators (4 groups x 2 slots), reduced in a fixed order per panel.
func genSPMV24(d dtype) {
	name := "spmv24" + d.name() + "AVX2"
	TEXT(name, NOSPLIT, "func(x *float32, vals *byte, idx *uint32, groups int, np int, y *float32)")
	Doc(name+" adds the product of np (>= 1) 2:4 panels of 8 outputs with x",
		"to y[8p:8p+8]; groups >= 1 groups of 4 inputs.")
	x0 := Load(Param("x"), GP64())
	vals := Load(Param("vals"), GP64())
	idx := Load(Param("idx"), GP64())
	groups := Load(Param("groups"), GP64())
	np := Load(Param("np"), GP64())
	y := Load(Param("y"), GP64())
	gstep := 2 * 8 * d.size()

	var xp GPVirtual
	group := func(a0, a1 VecVirtual, u int) {
		w := YMM()
		VBROADCASTF128(Mem{Base: xp, Disp: 16 * u}, w)
		ix := YMM()
		VPBROADCASTD(Mem{Base: idx, Disp: 4 * u}, ix)
		p1 := YMM()
		VPSRLVD(pairShifts, ix, p1)
		VPSRLVD(nibbleShifts, ix, ix)
		VPERMILPS(ix, w, ix)
		VPERMILPS(p1, w, p1)
		vm := Mem{Base: vals, Disp: gstep * u}
		switch d {
		case f32:
			VFMADD231PS(vm, ix, a0)
			VFMADD231PS(vm.Offset(32), p1, a1)
		case bf16:
			v := YMM()
			VMOVDQU(vm, v)
			v1 := YMM()
			VPAND(hiMask, v, v1)
			VPSLLD(U8(16), v, v)
			VFMADD231PS(v, ix, a0)
			VFMADD231PS(v1, p1, a1)
		case f16:
			v := YMM()
			VCVTPH2PS(vm, v)
			VFMADD231PS(v, ix, a0)
			VCVTPH2PS(vm.Offset(16), v)
			VFMADD231PS(v, p1, a1)
		}
	}

	Label(name + "_panel")
	acc := ymms(8)
	zeroAll(acc)
	xp = GP64()
	MOVQ(x0, xp)
	gg := GP64()
	MOVQ(groups, gg)

	Label(name + "_g4")
	CMPQ(gg, U8(4))
	JL(LabelRef(name + "_g1"))
	for u := 0; u < 4; u++ {
		group(acc[2*u], acc[2*u+1], u)
	}
	for b := 0; b < 4*gstep; b += 64 {
		PREFETCHT0(Mem{Base: vals, Disp: spmvPrefetch + b})
	}
	ADDQ(U8(64), xp)
	ADDQ(U8(16), idx)
	ADDQ(U32(4*gstep), vals)
	SUBQ(U8(4), gg)
	JMP(LabelRef(name + "_g4"))

	Label(name + "_g1")
	TESTQ(gg, gg)
	JZ(LabelRef(name + "_reduce"))
	group(acc[0], acc[1], 0)
	ADDQ(U8(16), xp)
	ADDQ(U8(4), idx)
	ADDQ(U32(gstep), vals)
	DECQ(gg)
	JMP(LabelRef(name + "_g1"))

	Label(name + "_reduce")
	for k := 0; k < 4; k++ {
		VADDPS(acc[2*k+1], acc[2*k], acc[2*k])
	}
	VADDPS(acc[2], acc[0], acc[0])
	VADDPS(acc[6], acc[4], acc[4])
	VADDPS(acc[4], acc[0], acc[0])
	VADDPS(Mem{Base: y}, acc[0], acc[0])
	VMOVUPS(acc[0], Mem{Base: y})
	ADDQ(U8(32), y)
	DECQ(np)
	JNZ(LabelRef(name + "_panel"))
	VZEROUPPER()
	RET()
}

// spmvPrefetch is how far ahead (bytes) the GEMV kernels prefetch their
// weights (PREFETCHT0 per 64-byte line of each unrolled iteration): it
// keeps streams from memory at full speed.
const spmvPrefetch = 2048

// genSpPrep24: genSpPrep for the 2:4 panel layout of genSPMV24.
func genSpPrep24(d dtype) {
	name := "spPrep24" + d.name() + "AVX2"
	TEXT(name, NOSPLIT, "func(off *uint32, vals *float32, idx *uint32, src *byte, groups int, gstep int, rsh int)")
	Doc(name+" writes offsets (4g+idx)<<sh and float32 values of one 2:4 panel",
		"(groups >= 1) into off and vals, 8 per step, 2 steps per group;",
		"gstep = 4<<sh, rsh = 30-sh.")
	off := Load(Param("off"), GP64())
	vals := Load(Param("vals"), GP64())
	idx := Load(Param("idx"), GP64())
	src := Load(Param("src"), GP64())
	groups := Load(Param("groups"), GP64())
	m := GP64()
	Load(Param("gstep"), m)
	cnt := XMM()
	MOVQ(Load(Param("rsh"), GP64()), cnt)
	step := YMM()
	VMOVD(m.As32(), step.AsX())
	VPBROADCASTD(step.AsX(), step)
	base := YMM()
	VPXOR(base, base, base)

	Label(name + "_group")
	ix := YMM()
	VPBROADCASTD(Mem{Base: idx}, ix)
	for s, sh := range []Mem{nibbleShifts, pairShifts} {
		t := YMM()
		VPSRLVD(sh, ix, t)
		VPSLLD(U8(30), t, t)
		VPSRLD(cnt, t, t)
		VPADDD(base, t, t)
		VMOVDQU(t, Mem{Base: off, Disp: 32 * s})
	}
	switch d {
	case f32:
		for s := 0; s < 2; s++ {
			v := YMM()
			VMOVUPS(Mem{Base: src, Disp: 32 * s}, v)
			VMOVUPS(v, Mem{Base: vals, Disp: 32 * s})
		}
	case bf16:
		v, v1 := YMM(), YMM()
		VMOVDQU(Mem{Base: src}, v)
		VPAND(hiMask, v, v1)
		VPSLLD(U8(16), v, v)
		VMOVUPS(v, Mem{Base: vals})
		VMOVUPS(v1, Mem{Base: vals, Disp: 32})
	case f16:
		for s := 0; s < 2; s++ {
			v := YMM()
			VCVTPH2PS(Mem{Base: src, Disp: 16 * s}, v)
			VMOVUPS(v, Mem{Base: vals, Disp: 32 * s})
		}
	}
	ADDQ(U8(4), idx)
	ADDQ(U8(uint8(16*d.size())), src)
	ADDQ(U8(64), off)
	ADDQ(U8(64), vals)
	VPADDD(step, base, base)
	DECQ(groups)
	JNZ(LabelRef(name + "_group"))
	VZEROUPPER()
	RET()
}

// transposeMode is what genTranspose8's variants do with the
// transposed rows: store them, add a bias vector first, or add them to
// dst.
type transposeMode int

const (
	transposeStore transposeMode = iota
	transposeBias
	transposeAdd
)

// genTranspose8: for nc8 (>= 1) chunks of 8 columns, transposes the 8x8
// block of rows src, src+lda, ... (floats) into 8 rows of 8 floats at dst,
// dst+ldd, ... (ldd in floats; the next chunk starts 8 rows of dst later).
// The bias variant adds bias[0:8] to every output row; the add variant
// adds the transposed block to dst.
func genTranspose8(mode transposeMode) {
	bias := mode == transposeBias
	name := "transpose8AVX2"
	sig := "func(dst *float32, ldd int, src *float32, lda int, nc8 int)"
	switch mode {
	case transposeBias:
		name = "transpose8BiasAVX2"
		sig = "func(dst *float32, ldd int, src *float32, lda int, nc8 int, bias *float32)"
	case transposeAdd:
		name = "transpose8AddAVX2"
	}
	TEXT(name, NOSPLIT, sig)
	switch mode {
	case transposeBias:
		Doc(name + " writes dst[c*ldd + r] = bias[r] + src[r*lda + c] for r < 8, c < 8*nc8.")
	case transposeAdd:
		Doc(name + " adds src[r*lda + c] to dst[c*ldd + r] for r < 8, c < 8*nc8.")
	default:
		Doc(name + " writes dst[c*ldd + r] = src[r*lda + c] for r < 8, c < 8*nc8.")
	}
	var bv VecVirtual
	if bias {
		bv = YMM()
		VMOVUPS(Mem{Base: Load(Param("bias"), GP64())}, bv)
	}
	dst := Load(Param("dst"), GP64())
	ldd := Load(Param("ldd"), GP64())
	SHLQ(U8(2), ldd)
	src := Load(Param("src"), GP64())
	lda := Load(Param("lda"), GP64())
	SHLQ(U8(2), lda)
	n := Load(Param("nc8"), GP64())
	s3, s6 := GP64(), GP64()
	LEAQ(Mem{Base: src, Index: lda, Scale: 2}, s3)
	ADDQ(lda, s3)
	LEAQ(Mem{Base: s3, Index: lda, Scale: 2}, s6)
	ADDQ(lda, s6)
	rows := []Mem{
		{Base: src}, {Base: src, Index: lda, Scale: 1}, {Base: src, Index: lda, Scale: 2},
		{Base: s3}, {Base: s3, Index: lda, Scale: 1}, {Base: s3, Index: lda, Scale: 2},
		{Base: s6}, {Base: s6, Index: lda, Scale: 1},
	}
	Label(name + "_loop")
	r := ymms(8)
	for i := range r {
		VMOVUPS(rows[i], r[i])
	}
	// unpack pairs of rows
	t := ymms(8)
	for i := 0; i < 4; i++ {
		VUNPCKLPS(r[2*i+1], r[2*i], t[2*i])
		VUNPCKHPS(r[2*i+1], r[2*i], t[2*i+1])
	}
	// t0 = a0 b0 a1 b1 | a4 b4 a5 b5 ; t1 = a2 b2 a3 b3 | ...
	u := r
	for i := 0; i < 2; i++ {
		VSHUFPS(U8(0x44), t[4*i+2], t[4*i], u[4*i])
		VSHUFPS(U8(0xee), t[4*i+2], t[4*i], u[4*i+1])
		VSHUFPS(U8(0x44), t[4*i+3], t[4*i+1], u[4*i+2])
		VSHUFPS(U8(0xee), t[4*i+3], t[4*i+1], u[4*i+3])
	}
	// u0 = col0 rows0-3 | col4 rows0-3 ... u4 = col0 rows 4-7 | col4 rows 4-7
	d := dst
	outs := []struct{ a, b, imm int }{{0, 4, 0x20}, {1, 5, 0x20}, {2, 6, 0x20}, {3, 7, 0x20}, {0, 4, 0x31}, {1, 5, 0x31}, {2, 6, 0x31}, {3, 7, 0x31}}
	for c, o := range outs {
		v := t[c]
		VPERM2F128(U8(uint8(o.imm)), u[o.b], u[o.a], v)
		if bias {
			VADDPS(v, bv, v)
		}
		if mode == transposeAdd {
			VADDPS(Mem{Base: d}, v, v)
		}
		VMOVUPS(v, Mem{Base: d})
		ADDQ(ldd, d)
	}
	ADDQ(U8(32), src)
	ADDQ(U8(32), s3)
	ADDQ(U8(32), s6)
	DECQ(n)
	JNZ(LabelRef(name + "_loop"))
	VZEROUPPER()
	RET()
}

// genSPMM512: the AVX-512F version of genSPMM: mb rows (mb/16 ZMM
// registers per output) of a transposed block with 64-float (256-byte)
// rows, r outputs; the value is broadcast from memory. Like genSPMM it
// accumulates into yt.
func genSPMM512(mb, r int) {
	name := fmt.Sprintf("spmmZ%dR%dAVX512", mb, r)
	TEXT(name, NOSPLIT, "func(xt *float32, off *uint32, vals *float32, l0 int, steps int, yt *float32)")
	Doc(fmt.Sprintf("%s accumulates %d outputs (lanes l0.. of the panel) for %d activation rows into yt ([%d][%d]); steps >= 1.", name, r, mb, r, mb))
	xt := Load(Param("xt"), GP64())
	off := Load(Param("off"), GP64())
	vals := Load(Param("vals"), GP64())
	l0 := Load(Param("l0"), GP64())
	SHLQ(U8(2), l0)
	ADDQ(l0, vals)
	end := Load(Param("steps"), GP64())
	SHLQ(U8(5), end)
	q := mb / 16
	yt := Load(Param("yt"), GP64())
	acc := make([][]VecVirtual, r)
	for j := range acc {
		acc[j] = make([]VecVirtual, q)
		for p := range acc[j] {
			acc[j][p] = ZMM()
			VMOVUPS(Mem{Base: yt, Disp: 4 * (j*mb + 16*p)}, acc[j][p])
		}
	}
	i := GP64()
	XORQ(i, i)
	Label(name + "_loop")
	for j := 0; j < r; j++ {
		o := GP64()
		MOVL(Mem{Base: off, Index: i, Scale: 1, Disp: 4 * j}, o.As32())
		b := ZMM()
		VBROADCASTSS(Mem{Base: vals, Index: i, Scale: 1, Disp: 4 * j}, b)
		for p := 0; p < q; p++ {
			VFMADD231PS(Mem{Base: xt, Index: o, Scale: 1, Disp: 64 * p}, b, acc[j][p])
		}
	}
	ADDQ(U8(32), i)
	CMPQ(i, end)
	JNE(LabelRef(name + "_loop"))
	for j := 0; j < r; j++ {
		for p := 0; p < q; p++ {
			VMOVUPS(acc[j][p], Mem{Base: yt, Disp: 4 * (j*mb + 16*p)})
		}
	}
	VZEROUPPER()
	RET()
}

// genDot: the attention dot product Σ a[i]·b[i] over n >= 0 elements. Four
// independent 8-wide FMA chains over blocks of 32, added pairwise
// ((0+1)+(2+3)), then one chain over blocks of 8, a horizontal sum in a
// fixed order (high half + low half, then the two 64-bit halves, then the
// two remaining lanes) and a scalar FMA per remaining element. The order
// depends only on n.
func genDot() {
	name := "dotAVX2"
	TEXT(name, NOSPLIT, "func(a *float32, b *float32, n int) float32")
	Doc(name+" returns Σ a[i]·b[i] for i < n (n >= 0), in an order fixed by n:",
		"4 FMA chains over blocks of 32, one over blocks of 8, then a scalar tail.")
	a := Load(Param("a"), GP64())
	b := Load(Param("b"), GP64())
	n := Load(Param("n"), GP64())
	acc := ymms(4)
	zeroAll(acc)

	Label(name + "_b32")
	CMPQ(n, U8(32))
	JL(LabelRef(name + "_fold"))
	for u := 0; u < 4; u++ {
		t := YMM()
		VMOVUPS(Mem{Base: a, Disp: 32 * u}, t)
		VFMADD231PS(Mem{Base: b, Disp: 32 * u}, t, acc[u])
	}
	ADDQ(U8(128), a)
	ADDQ(U8(128), b)
	SUBQ(U8(32), n)
	JMP(LabelRef(name + "_b32"))

	Label(name + "_fold")
	VADDPS(acc[1], acc[0], acc[0])
	VADDPS(acc[3], acc[2], acc[2])
	VADDPS(acc[2], acc[0], acc[0])

	Label(name + "_b8")
	CMPQ(n, U8(8))
	JL(LabelRef(name + "_hsum"))
	t := YMM()
	VMOVUPS(Mem{Base: a}, t)
	VFMADD231PS(Mem{Base: b}, t, acc[0])
	ADDQ(U8(32), a)
	ADDQ(U8(32), b)
	SUBQ(U8(8), n)
	JMP(LabelRef(name + "_b8"))

	Label(name + "_hsum")
	s := XMM()
	VEXTRACTF128(U8(1), acc[0], s)
	VADDPS(acc[0].AsX(), s, s)
	h := XMM()
	VMOVHLPS(s, s, h)
	VADDPS(h, s, s)
	VMOVSHDUP(s, h)
	VADDSS(h, s, s)

	Label(name + "_tail")
	TESTQ(n, n)
	JZ(LabelRef(name + "_done"))
	x := XMM()
	VMOVSS(Mem{Base: a}, x)
	VFMADD231SS(Mem{Base: b}, x, s)
	ADDQ(U8(4), a)
	ADDQ(U8(4), b)
	DECQ(n)
	JMP(LabelRef(name + "_tail"))

	// VZEROUPPER first: the store avo emits is a legacy-SSE MOVSS.
	Label(name + "_done")
	VZEROUPPER()
	Store(s, ReturnIndex(0))
	RET()
}

// genAxpy: y[i] += alpha·x[i] for i < n (n >= 0), one FMA per element
// (8-wide over blocks of 32 and 8, scalar for the tail), so every element
// is fma(alpha, x[i], y[i]) whatever its position.
func genAxpy() {
	name := "axpyAVX2"
	TEXT(name, NOSPLIT, "func(y *float32, alpha float32, x *float32, n int)")
	Doc(name+" computes y[i] = fma(alpha, x[i], y[i]) for i < n (n >= 0);",
		"x and y must not overlap unless they are equal.")
	y := Load(Param("y"), GP64())
	al := YMM()
	VBROADCASTSS(paramAddr("alpha"), al)
	x := Load(Param("x"), GP64())
	n := Load(Param("n"), GP64())

	Label(name + "_b32")
	CMPQ(n, U8(32))
	JL(LabelRef(name + "_b8"))
	for u := 0; u < 4; u++ {
		t := YMM()
		VMOVUPS(Mem{Base: y, Disp: 32 * u}, t)
		VFMADD231PS(Mem{Base: x, Disp: 32 * u}, al, t)
		VMOVUPS(t, Mem{Base: y, Disp: 32 * u})
	}
	ADDQ(U8(128), y)
	ADDQ(U8(128), x)
	SUBQ(U8(32), n)
	JMP(LabelRef(name + "_b32"))

	Label(name + "_b8")
	CMPQ(n, U8(8))
	JL(LabelRef(name + "_tail"))
	t := YMM()
	VMOVUPS(Mem{Base: y}, t)
	VFMADD231PS(Mem{Base: x}, al, t)
	VMOVUPS(t, Mem{Base: y})
	ADDQ(U8(32), y)
	ADDQ(U8(32), x)
	SUBQ(U8(8), n)
	JMP(LabelRef(name + "_b8"))

	Label(name + "_tail")
	TESTQ(n, n)
	JZ(LabelRef(name + "_done"))
	s := XMM()
	VMOVSS(Mem{Base: y}, s)
	VFMADD231SS(Mem{Base: x}, al.AsX(), s)
	VMOVSS(s, Mem{Base: y})
	ADDQ(U8(4), y)
	ADDQ(U8(4), x)
	DECQ(n)
	JMP(LabelRef(name + "_tail"))

	Label(name + "_done")
	VZEROUPPER()
	RET()
}

// paramAddr returns the stack address of the scalar argument name.
func paramAddr(name string) Mem {
	b, err := Param(name).Resolve()
	if err != nil {
		panic(err)
	}
	return b.Addr
}

// loadTailMask sets mask to the VMASKMOVPS mask of the first n%8 lanes
// (all zero when 8 divides n); n is left as is.
func loadTailMask(n Register, mask VecVirtual) {
	VMOVDQU(tailMaskAt(n), mask)
}

// tailMaskAt returns the address of the VMASKMOVPS mask of the first n%8
// lanes in tailMask (n itself is left alone).
func tailMaskAt(n Register) Mem {
	t := GP64()
	MOVQ(n, t)
	ANDQ(U8(7), t)
	NEGQ(t)
	ADDQ(U8(8), t)
	tbl := GP64()
	LEAQ(tailMask, tbl)
	return Mem{Base: tbl, Index: t, Scale: 4}
}

// genDotRows: out[j] = Σ_i q[i]·k[j*ld+i] for j < rows, i < n (rows >= 1,
// n >= 1, ld >= 0 in floats). Rows go 4 at a time, then one at a time;
// every row is computed the same way whatever its position: two 8-wide
// FMA chains per row, c0 over even and c1 over odd blocks of 8 within
// blocks of 16, then c0 takes a remaining full block of 8 and c1 the
// zero-padded last n%8 elements (masked loads: nothing past them is
// read); c = c0+c1, reduced by VHADDPS as ((c0+c1)+(c2+c3)) +
// ((c4+c5)+(c6+c7)) over its lanes. In the 4-row step the four
// reductions share three VHADDPS, a lane extract and one add, and the
// four sums are stored with one 16-byte store. The order depends only on
// n. q is reloaded from memory (L1) for every block: 16 YMM registers do
// not hold 8 accumulators and a 64-float q.
func genDotRows() {
	name := "dotRowsAVX2"
	TEXT(name, NOSPLIT, "func(out *float32, q *float32, k *float32, ld int, rows int, n int)")
	Doc(name+" sets out[j] = Σ q[i]·k[j*ld+i] over i < n for j < rows",
		"(rows >= 1, n >= 1, ld >= 0 floats), in an order fixed by n.")
	out := Load(Param("out"), GP64())
	q := Load(Param("q"), GP64())
	k := Load(Param("k"), GP64())
	ld := Load(Param("ld"), GP64())
	SHLQ(U8(2), ld)
	rows := Load(Param("rows"), GP64())
	n := Load(Param("n"), GP64())
	ld3 := GP64()
	LEAQ(Mem{Base: ld, Index: ld, Scale: 2}, ld3)
	mask := YMM()
	loadTailMask(n, mask)

	// body emits the loop over the columns of nr (1 or 4) rows starting
	// at k into c0[:nr], c1[:nr], leaving c0[r] = c0[r]+c1[r].
	c0, c1 := ymms(4), ymms(4)
	body := func(tag string, nr int) {
		row := func(kp GPVirtual, r, disp int) Mem {
			switch r {
			case 0:
				return Mem{Base: kp, Disp: disp}
			case 3:
				return Mem{Base: kp, Index: ld3, Scale: 1, Disp: disp}
			}
			return Mem{Base: kp, Index: ld, Scale: uint8(r), Disp: disp}
		}
		zeroAll(c0[:nr])
		zeroAll(c1[:nr])
		qp, kp, cnt := GP64(), GP64(), GP64()
		MOVQ(q, qp)
		MOVQ(k, kp)
		MOVQ(n, cnt)
		Label(tag + "_b16")
		CMPQ(cnt, U8(16))
		JL(LabelRef(tag + "_b8"))
		t0, t1 := YMM(), YMM()
		VMOVUPS(Mem{Base: qp}, t0)
		VMOVUPS(Mem{Base: qp, Disp: 32}, t1)
		for r := 0; r < nr; r++ {
			VFMADD231PS(row(kp, r, 0), t0, c0[r])
			VFMADD231PS(row(kp, r, 32), t1, c1[r])
		}
		ADDQ(U8(64), qp)
		ADDQ(U8(64), kp)
		SUBQ(U8(16), cnt)
		JMP(LabelRef(tag + "_b16"))

		Label(tag + "_b8")
		CMPQ(cnt, U8(8))
		JL(LabelRef(tag + "_tail"))
		t := YMM()
		VMOVUPS(Mem{Base: qp}, t)
		for r := 0; r < nr; r++ {
			VFMADD231PS(row(kp, r, 0), t, c0[r])
		}
		ADDQ(U8(32), qp)
		ADDQ(U8(32), kp)
		SUBQ(U8(8), cnt)

		Label(tag + "_tail")
		TESTQ(cnt, cnt)
		JZ(LabelRef(tag + "_fold"))
		tq := YMM()
		VMASKMOVPS(Mem{Base: qp}, mask, tq)
		for r := 0; r < nr; r++ {
			tk := YMM()
			VMASKMOVPS(row(kp, r, 0), mask, tk)
			VFMADD231PS(tk, tq, c1[r])
		}

		Label(tag + "_fold")
		for r := 0; r < nr; r++ {
			VADDPS(c1[r], c0[r], c0[r])
		}
	}

	Label(name + "_r4")
	CMPQ(rows, U8(4))
	JL(LabelRef(name + "_r1"))
	body(name+"_4", 4)
	hsum4(c0[:4], Mem{Base: out})
	ADDQ(U8(16), out)
	LEAQ(Mem{Base: k, Index: ld, Scale: 4}, k)
	SUBQ(U8(4), rows)
	JMP(LabelRef(name + "_r4"))

	Label(name + "_r1")
	TESTQ(rows, rows)
	JZ(LabelRef(name + "_done"))
	body(name+"_1", 1)
	h := YMM()
	VHADDPS(c0[0], c0[0], h)
	VHADDPS(h, h, h)
	s1 := XMM()
	VEXTRACTF128(U8(1), h, s1)
	VADDPS(s1, h.AsX(), s1)
	VMOVSS(s1, Mem{Base: out})
	ADDQ(U8(4), out)
	ADDQ(ld, k)
	DECQ(rows)
	JMP(LabelRef(name + "_r1"))

	Label(name + "_done")
	VZEROUPPER()
	RET()
}

// genAxpyRows: y[i] += Σ_j p[j]·v[j*ld+i] for i < n, j < rows (rows >= 1,
// n >= 1, ld >= 0 in floats), each y element one FMA chain over j
// ascending: y = fma(p[j], v[j*ld+i], y), as rows calls of axpyAVX2 would
// compute it. y is held in registers a block at a time: blocks of 64
// (8 YMM), then at most one of 32, 16 and 8, then the last n%8 elements
// with masked loads and stores; each block streams the rows once.
func genAxpyRows() {
	name := "axpyRowsAVX2"
	TEXT(name, NOSPLIT, "func(y *float32, p *float32, v *float32, ld int, rows int, n int)")
	Doc(name+" computes y[i] = fma(p[j], v[j*ld+i], y[i]) for j = 0..rows-1 in",
		"turn, for i < n (rows >= 1, n >= 1, ld >= 0 floats); v must not overlap y.")
	y := Load(Param("y"), GP64())
	p := Load(Param("p"), GP64())
	v := Load(Param("v"), GP64())
	ld := Load(Param("ld"), GP64())
	SHLQ(U8(2), ld)
	rows := Load(Param("rows"), GP64())
	n := Load(Param("n"), GP64())
	mask := YMM()
	loadTailMask(n, mask)
	acc := ymms(8)

	// block emits one pass over the rows for w vectors of y at y (w = 0:
	// the masked tail), then advances y and v past them and n by 8w.
	block := func(tag string, w int, repeat bool) {
		next := tag + "_next"
		Label(tag)
		if w == 0 {
			TESTQ(n, n)
			JZ(LabelRef(next))
		} else {
			CMPQ(n, U8(8*w))
			JL(LabelRef(next))
		}
		nv := max(w, 1)
		for u := 0; u < w; u++ {
			VMOVUPS(Mem{Base: y, Disp: 32 * u}, acc[u])
		}
		if w == 0 {
			VMASKMOVPS(Mem{Base: y}, mask, acc[0])
		}
		pp, vp, j := GP64(), GP64(), GP64()
		MOVQ(p, pp)
		MOVQ(v, vp)
		MOVQ(rows, j)
		Label(tag + "_row")
		b := YMM()
		VBROADCASTSS(Mem{Base: pp}, b)
		if w == 0 {
			t := YMM()
			VMASKMOVPS(Mem{Base: vp}, mask, t)
			VFMADD231PS(t, b, acc[0])
		}
		for u := 0; u < w; u++ {
			VFMADD231PS(Mem{Base: vp, Disp: 32 * u}, b, acc[u])
		}
		ADDQ(U8(4), pp)
		ADDQ(ld, vp)
		DECQ(j)
		JNZ(LabelRef(tag + "_row"))
		for u := 0; u < w; u++ {
			VMOVUPS(acc[u], Mem{Base: y, Disp: 32 * u})
		}
		if w == 0 {
			VMASKMOVPS(acc[0], mask, Mem{Base: y})
			JMP(LabelRef(next))
		} else {
			ADDQ(U32(32*nv), y)
			ADDQ(U32(32*nv), v)
			SUBQ(U8(8*w), n)
			if repeat {
				JMP(LabelRef(tag))
			}
		}
		Label(next)
	}
	block(name+"_w8", 8, true)
	block(name+"_w4", 4, false)
	block(name+"_w2", 2, false)
	block(name+"_w1", 1, false)
	block(name+"_tail", 0, false)
	VZEROUPPER()
	RET()
}

// genSDDMM8: out[j] = Σ_{r < n} a[r]·x[offs[j]/4 + r] for the 8 rows of x
// at byte offsets offs[0..7] (n >= 8, a multiple of 8): the kept-position
// dot products of an N:M weight gradient. One 8-wide FMA chain per j over
// the blocks of 8 (the a block loaded once for all eight), then per j the
// lane sum [(l0+l1)+(l2+l3)] + [(l4+l5)+(l6+l7)] (VHADDPS twice, then the
// two 128-bit halves added).
func genSDDMM8() {
	name := "sddmm8AVX2"
	TEXT(name, NOSPLIT, "func(a *float32, x *float32, offs *[8]int64, n int, out *[8]float32)")
	Doc(name+" sets out[j] = Σ_{r<n} a[r]·x[offs[j]/4+r] for j < 8 (n >= 8, a multiple",
		"of 8): 8 FMA chains over blocks of 8 rows, each reduced by a fixed tree.")
	a := Load(Param("a"), GP64())
	x := Load(Param("x"), GP64())
	offs := Load(Param("offs"), GP64())
	n := Load(Param("n"), GP64())
	SHLQ(U8(2), n)
	p := basePlusOffsets(x, offs, 8)
	acc := ymms(8)
	zeroAll(acc)
	r := GP64()
	XORQ(r, r)
	Label(name + "_loop")
	g := YMM()
	VMOVUPS(Mem{Base: a, Index: r, Scale: 1}, g)
	for j := range p {
		VFMADD231PS(Mem{Base: p[j], Index: r, Scale: 1}, g, acc[j])
	}
	ADDQ(U8(32), r)
	CMPQ(r, n)
	JL(LabelRef(name + "_loop"))

	out := Load(Param("out"), GP64())
	for h := 0; h < 2; h++ {
		hsum4(acc[4*h:4*h+4], Mem{Base: out, Disp: 16 * h})
	}
	VZEROUPPER()
	RET()
}

// genSDDMMZ(r): the kept-position weight gradient of r consecutive output
// rows of an N:M weight over one window of 16 kept positions whose
// columns lie in the 32 columns x[·][0:32]: per row i < n, the 32 columns
// of x (masked loads: lanes past the matrix read nothing) are permuted
// per output into its 16 kept columns (VPERMT2PS with the output's index
// vector), and acc_j += gy[i][j]·permuted (an FMA with gy broadcast).
// Each lane is one FMA chain over the rows in order from zero, the same
// arithmetic as the dense GEMM's chain for that element.
func genSDDMMZ(r int) {
	name := fmt.Sprintf("sddmmZR%dAVX512", r)
	TEXT(name, NOSPLIT, "func(gy *float32, ldg int, x *float32, ldx int, n int, idx *int32, masks int, out *float32)")
	Doc(fmt.Sprintf("%s sets out[j*16+l] = Σ_{i<n} gy[i*ldg+j]·x[i*ldx+idx[j*16+l]] for j < %d, l < 16", name, r),
		"(n >= 1, idx in [0, 32); columns 0-15 of x loaded under mask bits 0-15, 16-31 under bits 16-31).")
	gy := Load(Param("gy"), GP64())
	ldg := Load(Param("ldg"), GP64())
	SHLQ(U8(2), ldg)
	x := Load(Param("x"), GP64())
	ldx := Load(Param("ldx"), GP64())
	SHLQ(U8(2), ldx)
	n := Load(Param("n"), GP64())
	idx := Load(Param("idx"), GP64())
	masks := GP64()
	Load(Param("masks"), masks)
	klo, khi := K(), K()
	KMOVW(masks.As32(), klo)
	SHRQ(U8(16), masks)
	KMOVW(masks.As32(), khi)
	ix := make([]VecVirtual, r)
	acc := make([]VecVirtual, r)
	for j := 0; j < r; j++ {
		ix[j] = ZMM()
		VMOVUPS(Mem{Base: idx, Disp: 64 * j}, ix[j])
		acc[j] = ZMM()
		VPXORD(acc[j], acc[j], acc[j])
	}
	Label(name + "_loop")
	lo, hi := ZMM(), ZMM()
	VMOVUPS_Z(Mem{Base: x}, klo, lo)
	VMOVUPS_Z(Mem{Base: x, Disp: 64}, khi, hi)
	for j := 0; j < r; j++ {
		t := ZMM()
		VMOVAPS(lo, t)
		VPERMT2PS(hi, ix[j], t)
		VFMADD231PS_BCST(Mem{Base: gy, Disp: 4 * j}, t, acc[j])
	}
	ADDQ(ldg, gy)
	ADDQ(ldx, x)
	DECQ(n)
	JNZ(LabelRef(name + "_loop"))
	out := Load(Param("out"), GP64())
	for j := 0; j < r; j++ {
		VMOVUPS(acc[j], Mem{Base: out, Disp: 64 * j})
	}
	VZEROUPPER()
	RET()
}

// genSDDMMPairSegAVX2: the AVX2 pattern-pair kernel over a whole segment
// of rows that keep the same two columns a and b of one group, in
// batches of 6 rows and one last batch of 1-5:
// out[2·rows[j]] = Σ_{i<m} gy[rows[j]·ld/4+i]·xa[i] and out[2·rows[j]+1]
// the same with xb, for j < n (n >= 0, m >= 1; rows are int32 row
// numbers, ld the rows' stride in bytes). Each pair of sums is
// sddmmPairR<k>AVX2's, so the same bits; the results go to each row's own
// two slots of out instead of a packed array (the caller lays out a
// group's results by row, in L1, and adds them into the gradient later).
func genSDDMMPairSegAVX2() {
	name := "sddmmPairSegAVX2"
	TEXT(name, NOSPLIT, "func(gy *float32, ld int, rows *int32, n int, xa *float32, xb *float32, m int, out *float32)")
	Doc(name+" sets out[2·rows[j]] = Σ_{i<m} gy[rows[j]·ld/4+i]·xa[i] and out[2·rows[j]+1] = Σ_{i<m} gy[rows[j]·ld/4+i]·xb[i]",
		"for j < n (n >= 0, m >= 1), in batches of 6 rows with sddmmPairR<k>AVX2's arithmetic.")
	rows := Load(Param("rows"), GP64())
	cnt := Load(Param("n"), GP64())
	Label(name + "_batch")
	CMPQ(cnt, U8(sddmmPairRowsAVX2))
	JL(LabelRef(name + "_tail"))
	sddmmPairSegBatch(name+"_r6", sddmmPairRowsAVX2, rows)
	ADDQ(U8(4*sddmmPairRowsAVX2), rows)
	SUBQ(U8(sddmmPairRowsAVX2), cnt)
	JMP(LabelRef(name + "_batch"))
	Label(name + "_tail")
	for r := 1; r < sddmmPairRowsAVX2; r++ {
		CMPQ(cnt, U8(r))
		JE(LabelRef(fmt.Sprintf("%s_t%d", name, r)))
	}
	VZEROUPPER()
	RET()
	for r := 1; r < sddmmPairRowsAVX2; r++ {
		Label(fmt.Sprintf("%s_t%d", name, r))
		sddmmPairSegBatch(fmt.Sprintf("%s_r%d", name, r), r, rows)
		VZEROUPPER()
		RET()
	}
}

// sddmmPairSegBatch emits one batch of r rows of genSDDMMPairSegAVX2 (the
// rows' numbers at rows[0:r]): genSDDMMPairWidth's loop, tail and
// reduction, then each row's two sums stored at out + 8·row.
func sddmmPairSegBatch(name string, r int, rows Register) {
	gy := Load(Param("gy"), GP64())
	ld := Load(Param("ld"), GP64())
	p := make([]GPVirtual, r)
	for j := range p {
		p[j] = GP64()
		MOVLQSX(Mem{Base: rows, Disp: 4 * j}, p[j])
		IMULQ(ld, p[j])
		ADDQ(gy, p[j])
	}
	xa := Load(Param("xa"), GP64())
	xb := Load(Param("xb"), GP64())
	n := Load(Param("m"), GP64())
	acc := sddmmPairSums(name, p, xa, xb, n, false)
	out := Load(Param("out"), GP64())
	hsumQuads(append([]VecVirtual(nil), acc...), func(h int, sums VecVirtual) {
		for q := 0; q < 2 && 2*h+q < r; q++ {
			at := GP64()
			MOVLQSX(Mem{Base: rows, Disp: 4 * (2*h + q)}, at)
			dst := Mem{Base: out, Index: at, Scale: 8}
			if q == 0 {
				VMOVLPS(sums, dst)
			} else {
				VMOVHPS(sums, dst)
			}
		}
	})
}

// sddmmPairSums emits genSDDMMPairWidth's sums for the rows at the
// pointers p over n elements of xa and xb (z: ZMM, 16 lanes; else YMM, 8
// lanes): 2·len(p) accumulators from zero, the full blocks in a loop, the
// last n%lanes elements under a mask (n is clobbered), then the label
// name_reduce. It returns the accumulators (row j's a sum at 2j, its b
// sum at 2j+1).
func sddmmPairSums(name string, p []GPVirtual, xa, xb, n Register, z bool) []VecVirtual {
	r := len(p)
	vec, lanes := YMM, 8
	if z {
		vec, lanes = ZMM, 16
	}
	cnt := GP64()
	MOVQ(n, cnt)
	SHRQ(U8(bits.TrailingZeros(uint(lanes))), cnt)
	acc := make([]VecVirtual, 2*r)
	for j := range acc {
		acc[j] = vec()
		if z {
			VPXORD(acc[j], acc[j], acc[j])
		} else {
			VXORPS(acc[j], acc[j], acc[j])
		}
	}
	i := GP64()
	XORQ(i, i)
	step := func(load func(m Mem, dst VecVirtual)) {
		va, vb := vec(), vec()
		load(Mem{Base: xa, Index: i, Scale: 1}, va)
		load(Mem{Base: xb, Index: i, Scale: 1}, vb)
		for j := 0; j < r; j++ {
			g := vec()
			load(Mem{Base: p[j], Index: i, Scale: 1}, g)
			VFMADD231PS(g, va, acc[2*j])
			VFMADD231PS(g, vb, acc[2*j+1])
		}
	}
	TESTQ(cnt, cnt)
	JZ(LabelRef(name + "_tail"))
	Label(name + "_loop")
	step(func(m Mem, dst VecVirtual) { VMOVUPS(m, dst) })
	ADDQ(U8(4*lanes), i)
	DECQ(cnt)
	JNZ(LabelRef(name + "_loop"))
	Label(name + "_tail")
	if z {
		ANDQ(U8(15), n)
		JZ(LabelRef(name + "_reduce"))
		k := lowLanes(n)
		step(func(m Mem, dst VecVirtual) { VMOVUPS_Z(m, k, dst) })
	} else {
		TESTQ(U32(7), n)
		JZ(LabelRef(name + "_reduce"))
		// The mask stays in the table: each masked load reads it there
		// into the register it then fills.
		mask := tailMaskAt(n)
		step(func(m Mem, dst VecVirtual) {
			VMOVDQU(mask, dst)
			VMASKMOVPS(m, dst, dst)
		})
	}
	Label(name + "_reduce")
	return acc
}

// labelSeq numbers labels a generator emits more than once.
var labelSeq int

// sddmmPairRows is the most rows genSDDMMPair serves per call: 2r
// accumulators, two x vectors and a row of gy fit in 32 ZMM registers.
const sddmmPairRows = 8

// genSDDMMPair(r): the kept-position weight gradient of r output rows that
// keep the same two columns a and b of one group, from the transposes:
// out[2j] = Σ_{i<n} gy[rows[j]/4+i]·xa[i], out[2j+1] = Σ gy[rows[j]/4+i]·xb[i]
// (rows holds byte offsets from gy; n >= 1). Each of the 2r sums runs 16
// lane chains over blocks of 16 elements (the last n%16 under a zeroing
// mask: nothing past n is read), the 16 lanes then summed by a fixed tree:
// high and low 256 bits added, then VHADDPS over four sums at a time as
// sddmm8AVX2 does. The order depends only on n. out has room for
// 4·ceil(2r/4) floats (the padding is written as zero).
func genSDDMMPair(r int) { genSDDMMPairWidth(r, true) }

// sddmmPairRowsAVX2 is the most rows genSDDMMPairAVX2 serves per call:
// 2r accumulators, two x vectors and a row of gy in 16 YMM registers.
const sddmmPairRowsAVX2 = 6

// genSDDMMPairAVX2(r) is genSDDMMPair on 8 lanes for CPUs without
// AVX-512: the same sums, 8 lane chains over blocks of 8 (the last n%8
// under a VMASKMOVPS mask: nothing past n is read), reduced by the same
// VHADDPS tree. The order depends only on n.
func genSDDMMPairAVX2(r int) { genSDDMMPairWidth(r, false) }

// genSDDMMPairWidth writes genSDDMMPair (z: ZMM, 16 lanes) or
// genSDDMMPairAVX2 (YMM, 8 lanes).
func genSDDMMPairWidth(r int, z bool) {
	name := fmt.Sprintf("sddmmPairR%dAVX2", r)
	if z {
		name = fmt.Sprintf("sddmmPairR%dAVX512", r)
	}
	TEXT(name, NOSPLIT, "func(gy *float32, rows *int64, xa *float32, xb *float32, n int, out *float32)")
	if z {
		Doc(fmt.Sprintf("%s sets out[2j] = Σ_{i<n} gy[rows[j]/4+i]·xa[i] and out[2j+1] = Σ_{i<n} gy[rows[j]/4+i]·xb[i]", name),
			fmt.Sprintf("for j < %d (n >= 1; lane chains over blocks of 16, a fixed reduction tree; out padded to a multiple of 4 with zeros).", r))
	} else {
		Doc(fmt.Sprintf("%s is sddmmPairR%dAVX512 on 8 lanes: out[2j] = Σ_{i<n} gy[rows[j]/4+i]·xa[i],", name, r),
			fmt.Sprintf("out[2j+1] = Σ_{i<n} gy[rows[j]/4+i]·xb[i] for j < %d (n >= 1; out padded to a multiple of 4 with zeros).", r))
	}
	gy := Load(Param("gy"), GP64())
	rows := Load(Param("rows"), GP64())
	p := basePlusOffsets(gy, rows, r)
	xa := Load(Param("xa"), GP64())
	xb := Load(Param("xb"), GP64())
	n := Load(Param("n"), GP64())
	acc := sddmmPairSums(name, p, xa, xb, n, z)
	out := Load(Param("out"), GP64())
	ys := make([]VecVirtual, 0, 2*r+3)
	for _, a := range acc {
		if !z {
			ys = append(ys, a)
			continue
		}
		hi := YMM()
		VEXTRACTF64X4(U8(1), a, hi)
		y := YMM()
		VADDPS(hi, a.AsY(), y)
		ys = append(ys, y)
	}
	hsumQuads(ys, func(h int, sums VecVirtual) { VMOVUPS(sums, Mem{Base: out, Disp: 16 * h}) })
	VZEROUPPER()
	RET()
}

// hsumQuads pads the YMM vectors ys with zero vectors to a multiple of 4
// and hands the lane sums of each 4 (hsum4Reg: sums h*4..h*4+3 in one XMM
// register) to use, quad by quad.
func hsumQuads(ys []VecVirtual, use func(h int, sums VecVirtual)) {
	for len(ys)%4 != 0 {
		y := YMM()
		VXORPS(y, y, y)
		ys = append(ys, y)
	}
	for h := 0; h < len(ys)/4; h++ {
		use(h, hsum4Reg(ys[4*h:4*h+4]))
	}
}

// expConstVals are genExpShiftSum's constants (the expConsts table), in order: the
// clamps (exp of anything below -104 rounds to zero in float32, of
// anything above 100 to +Inf; the upper one keeps 2^k inside the float32
// exponent range for genExpShiftSumAVX2's two-step scaling), log2(e),
// ln 2 split into a high part exact in float32 with its low bits zero
// and the rest (Cody-Waite), and the Taylor coefficients 1/k! for
// k = 7 down to 0.
var expConstVals = []float32{
	-104, 100,
	1.44269504088896341,
	0.693145751953125, 1.428606765330187045e-06,
	1.0 / 5040, 1.0 / 720, 1.0 / 120, 1.0 / 24, 1.0 / 6, 0.5, 1, 1,
}

// genExpShiftSum: dst[i] = exp(src[i] - shift) in float32 for i < n, and
// the sum of the dst values in float64, per 16 elements: x = min(max(src -
// shift, -104), 100); k = round(x·log2 e); r = x - k·ln2hi - k·ln2lo
// (|r| <= ln 2/2); p = Σ_{j<=7} r^j/j! by Horner; dst = p·2^k (VSCALEFPS,
// which rounds once into the subnormals and to zero below them). The
// sums run in two float64 chains (low and high 8 lanes), added lane by
// lane in a fixed tree at the end. The last n%16 elements go under a
// zeroing mask (nothing past n is read or written). For finite shift
// and src <= shift the results are within 2 ulp of exp in float32.
func genExpShiftSum() {
	name := "expShiftSumAVX512"
	TEXT(name, NOSPLIT, "func(dst *float32, src *float32, n int, shift float32) float64")
	Doc(name+" sets dst[i] = exp(src[i]-shift) for i < n (float32, within 2 ulp for finite",
		"src <= shift) and returns Σ dst[i] summed in float64 (fixed order).")
	tbl := GLOBL("expConsts", RODATA|NOPTR)
	for i, v := range expConstVals {
		DATA(4*i, U32(math.Float32bits(v))) // bits: avo prints whole floats as integers
	}
	dst := Load(Param("dst"), GP64())
	src := Load(Param("src"), GP64())
	n := Load(Param("n"), GP64())
	sh := ZMM()
	VBROADCASTSS(paramAddr("shift"), sh)
	base := GP64()
	LEAQ(tbl, base)
	c := make([]VecVirtual, len(expConstVals))
	for i := range c {
		c[i] = ZMM()
		VBROADCASTSS(Mem{Base: base, Disp: 4 * i}, c[i])
	}
	lo, hi, log2e, ln2hi, ln2lo, poly := c[0], c[1], c[2], c[3], c[4], c[5:]
	s0, s1 := ZMM(), ZMM()
	VPXORQ(s0, s0, s0)
	VPXORQ(s1, s1, s1)
	cnt := GP64()
	MOVQ(n, cnt)
	SHRQ(U8(4), cnt)
	i := GP64()
	XORQ(i, i)
	// body computes exp into a register from x already loaded.
	body := func(x VecVirtual) VecVirtual {
		k := ZMM()
		expReduce(x, k, sh, lo, hi, log2e, ln2hi, ln2lo, func(k VecVirtual) { VRNDSCALEPS(U8(0), k, k) })
		p := ZMM()
		VMOVAPS(poly[0], p)
		for _, cj := range poly[1:] {
			VFMADD213PS(cj, x, p)
		}
		e := ZMM()
		VSCALEFPS(k, p, e)
		return e
	}
	sum := func(e VecVirtual) {
		d0, d1 := ZMM(), ZMM()
		VCVTPS2PD(e.AsY(), d0)
		hi := YMM()
		VEXTRACTF64X4(U8(1), e, hi)
		VCVTPS2PD(hi, d1)
		VADDPD(d0, s0, s0)
		VADDPD(d1, s1, s1)
	}
	TESTQ(cnt, cnt)
	JZ(LabelRef(name + "_tail"))
	Label(name + "_loop")
	x := ZMM()
	VMOVUPS(Mem{Base: src, Index: i, Scale: 1}, x)
	e := body(x)
	VMOVUPS(e, Mem{Base: dst, Index: i, Scale: 1})
	sum(e)
	ADDQ(U8(64), i)
	DECQ(cnt)
	JNZ(LabelRef(name + "_loop"))
	Label(name + "_tail")
	ANDQ(U8(15), n)
	JZ(LabelRef(name + "_reduce"))
	k := lowLanes(n)
	xt := ZMM()
	VMOVUPS_Z(Mem{Base: src, Index: i, Scale: 1}, k, xt)
	et := body(xt)
	VMOVAPS_Z(et, k, et)
	VMOVUPS(et, k, Mem{Base: dst, Index: i, Scale: 1})
	sum(et)
	Label(name + "_reduce")
	VADDPD(s1, s0, s0)
	h := YMM()
	VEXTRACTF64X4(U8(1), s0, h)
	VADDPD(h, s0.AsY(), h)
	Store(sumPD4(h), ReturnIndex(0))
	VZEROUPPER()
	RET()
}

// expReduce is the exponential kernels' range reduction, in place:
// x = min(max(x - sh, lo), hi); k = round(x·log2e) to nearest even (by
// round, the width's instruction); x -= k·ln2hi; x -= k·ln2lo (fused).
func expReduce(x, k, sh, lo, hi, log2e, ln2hi, ln2lo VecVirtual, round func(k VecVirtual)) {
	VSUBPS(sh, x, x)
	VMAXPS(lo, x, x)
	VMINPS(hi, x, x)
	VMULPS(log2e, x, k)
	round(k)
	VFNMADD231PS(ln2hi, k, x)
	VFNMADD231PS(ln2lo, k, x)
}

// sumPD4 returns an XMM whose low lane is the sum of y's 4 float64 lanes,
// added as (y0 + y2) + (y1 + y3).
func sumPD4(y VecVirtual) VecVirtual {
	hx := XMM()
	VEXTRACTF128(U8(1), y, hx)
	VADDPD(hx, y.AsX(), hx)
	hs := XMM()
	VPERMILPD(U8(1), hx, hs)
	VADDSD(hs, hx, hx)
	return hx
}

// genExpShiftSumAVX2 is genExpShiftSum for CPUs without AVX-512, 8 values
// at a time with the same constants and operations, so each value has
// the same bits as the AVX-512 kernel's. Without VSCALEFPS, p·2^k is two
// products by powers of two built from the exponent bits, 2^(k>>1) (exact)
// then 2^(k-(k>>1)), which rounds once into the subnormals as VSCALEFPS
// does (-150 <= k <= 145 after the clamps, so both halves are normal
// powers of two). The sums
// run in two float64 chains (low and high 4 lanes). The last n%8
// elements go under a VMASKMOVPS mask (nothing past n is read or
// written; masked lanes are zeroed before the sum). The polynomial's
// coefficients are memory operands: 16 registers would not hold them all.
func genExpShiftSumAVX2() {
	name := "expShiftSumAVX2"
	TEXT(name, NOSPLIT, "func(dst *float32, src *float32, n int, shift float32) float64")
	Doc(name+" is expShiftSumAVX512 on 8 lanes (AVX2): dst[i] = exp(src[i]-shift) for i < n,",
		"the same bits per value, and Σ dst[i] summed in float64 (fixed order).")
	tbl := GLOBL("expConsts2", RODATA|NOPTR)
	for i, v := range expConstVals {
		DATA(4*i, U32(math.Float32bits(v)))
	}
	DATA(4*len(expConstVals), U32(127))
	dst := Load(Param("dst"), GP64())
	src := Load(Param("src"), GP64())
	n := Load(Param("n"), GP64())
	sh := YMM()
	VBROADCASTSS(paramAddr("shift"), sh)
	base := GP64()
	LEAQ(tbl, base)
	c := func(i int) Mem { return Mem{Base: base, Disp: 4 * i} }
	lo, hi, log2e, ln2hi, ln2lo, bias := YMM(), YMM(), YMM(), YMM(), YMM(), YMM()
	VBROADCASTSS(c(0), lo)
	VBROADCASTSS(c(1), hi)
	VBROADCASTSS(c(2), log2e)
	VBROADCASTSS(c(3), ln2hi)
	VBROADCASTSS(c(4), ln2lo)
	VPBROADCASTD(c(len(expConstVals)), bias)
	s0, s1 := YMM(), YMM()
	VXORPD(s0, s0, s0)
	VXORPD(s1, s1, s1)
	cnt := GP64()
	MOVQ(n, cnt)
	SHRQ(U8(3), cnt)
	i := GP64()
	XORQ(i, i)
	body := func(x VecVirtual) VecVirtual {
		k := YMM()
		expReduce(x, k, sh, lo, hi, log2e, ln2hi, ln2lo, func(k VecVirtual) { VROUNDPS(U8(0), k, k) })
		p := YMM()
		VBROADCASTSS(c(5), p)
		for j := 6; j < len(expConstVals); j++ {
			cj := YMM()
			VBROADCASTSS(c(j), cj)
			VFMADD213PS(cj, x, p)
		}
		ki := YMM()
		VCVTPS2DQ(k, ki)
		ka := YMM()
		VPSRAD(U8(1), ki, ka)
		VPSUBD(ka, ki, ki)
		VPADDD(bias, ka, ka)
		VPSLLD(U8(23), ka, ka)
		VPADDD(bias, ki, ki)
		VPSLLD(U8(23), ki, ki)
		VMULPS(ka, p, p)
		VMULPS(ki, p, p)
		return p
	}
	sum := func(e VecVirtual) {
		d0, d1 := YMM(), YMM()
		VCVTPS2PD(e.AsX(), d0)
		hi := XMM()
		VEXTRACTF128(U8(1), e, hi)
		VCVTPS2PD(hi, d1)
		VADDPD(d0, s0, s0)
		VADDPD(d1, s1, s1)
	}
	TESTQ(cnt, cnt)
	JZ(LabelRef(name + "_tail"))
	Label(name + "_loop")
	x := YMM()
	VMOVUPS(Mem{Base: src, Index: i, Scale: 1}, x)
	e := body(x)
	VMOVUPS(e, Mem{Base: dst, Index: i, Scale: 1})
	sum(e)
	ADDQ(U8(32), i)
	DECQ(cnt)
	JNZ(LabelRef(name + "_loop"))
	Label(name + "_tail")
	TESTQ(U32(7), n)
	JZ(LabelRef(name + "_reduce"))
	mask := YMM()
	loadTailMask(n, mask)
	xt := YMM()
	VMASKMOVPS(Mem{Base: src, Index: i, Scale: 1}, mask, xt)
	et := body(xt)
	VANDPS(mask, et, et)
	VMASKMOVPS(et, mask, Mem{Base: dst, Index: i, Scale: 1})
	sum(et)
	Label(name + "_reduce")
	VADDPD(s1, s0, s0)
	Store(sumPD4(s0), ReturnIndex(0))
	VZEROUPPER()
	RET()
}

// adamwMath is the AdamW arithmetic of genAdamW and genAdamWAVX2 on
// float64 vectors (g, m, v, w widened; c = [b1, c1, b2, c2, bc1, bc2, lr,
// shrink, eps] broadcast; t a scratch register of their width), each
// operation rounded as the scalar Go expression is:
//
//	m' = b1·m + c1·g;  v' = b2·v + (c2·g)·g
//	w' = w·shrink - (lr·(m'/bc1)) / (sqrt(v'/bc2) + eps)
//
// m', v' and w' narrowed to float32 by narrow and handed to the stores.
func adamwMath(c []VecVirtual, gd, md, vd, wd, t VecVirtual, narrow func(VecVirtual) VecVirtual, storeM, storeV, storeW func(VecVirtual)) {
	b1, c1, b2, c2, bc1, bc2, lr, shrink, eps := c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8]
	VMULPD(b1, md, md)
	VMULPD(c1, gd, t)
	VADDPD(t, md, md)
	VMULPD(b2, vd, vd)
	VMULPD(c2, gd, t)
	VMULPD(gd, t, t)
	VADDPD(t, vd, vd)
	storeM(narrow(md))
	storeV(narrow(vd))
	VMULPD(shrink, wd, wd)
	VDIVPD(bc1, md, md)
	VMULPD(md, lr, md)
	VDIVPD(bc2, vd, vd)
	VSQRTPD(vd, vd)
	VADDPD(eps, vd, vd)
	VDIVPD(vd, md, md)
	VSUBPD(md, wd, wd)
	storeW(narrow(wd))
}

// genAdamWAVX2 is genAdamW for CPUs without AVX-512: 4 values per
// iteration (float64 arithmetic in one YMM), the same operations in the
// same order, so the same bits as the scalar loop. The last n%4 values are
// left to the caller (the scalar loop), which keeps this kernel free of
// masks; it returns how many values it updated.
func genAdamWAVX2() {
	name := "adamWAVX2"
	TEXT(name, NOSPLIT, "func(w *float32, grad *float32, m *float32, v *float32, n int, k *[9]float64, gscale float32, zero int) int")
	Doc(name+" runs adamWAVX512's step over the first n&^3 values on 4 lanes (AVX2) and returns",
		"n&^3; the caller updates the rest with the scalar loop (the same bits).")
	w := Load(Param("w"), GP64())
	g := Load(Param("grad"), GP64())
	m := Load(Param("m"), GP64())
	v := Load(Param("v"), GP64())
	n := Load(Param("n"), GP64())
	kp := Load(Param("k"), GP64())
	c := make([]VecVirtual, 9)
	for j := range c {
		c[j] = YMM()
		VBROADCASTSD(Mem{Base: kp, Disp: 8 * j}, c[j])
	}
	gs := XMM()
	VBROADCASTSS(paramAddr("gscale"), gs)
	zero := GP64()
	Load(Param("zero"), zero)
	ANDQ(I32(-4), n)
	i := GP64()
	XORQ(i, i)
	end := GP64()
	MOVQ(n, end)
	SHLQ(U8(2), end)
	TESTQ(end, end)
	JZ(LabelRef(name + "_done"))
	Label(name + "_loop")
	at := func(base Register) Mem { return Mem{Base: base, Index: i, Scale: 1} }
	gd, md, vd, wd := YMM(), YMM(), YMM(), YMM()
	for _, lv := range []struct {
		base Register
		dst  VecVirtual
	}{{g, gd}, {m, md}, {v, vd}, {w, wd}} {
		f := XMM()
		VMOVUPS(at(lv.base), f)
		if lv.base == g {
			VMULPS(gs, f, f) // float32(g·gscale)
		}
		VCVTPS2PD(f, lv.dst)
	}
	skip := name + "_keep"
	TESTQ(zero, zero)
	JZ(LabelRef(skip))
	z := XMM()
	VXORPS(z, z, z)
	VMOVUPS(z, at(g))
	Label(skip)
	narrow := func(d VecVirtual) VecVirtual {
		f := XMM()
		VCVTPD2PSY(d, f)
		return f
	}
	adamwMath(c, gd, md, vd, wd, YMM(), narrow,
		func(f VecVirtual) { VMOVUPS(f, at(m)) }, func(f VecVirtual) { VMOVUPS(f, at(v)) }, func(f VecVirtual) { VMOVUPS(f, at(w)) })
	ADDQ(U8(16), i)
	CMPQ(i, end)
	JNE(LabelRef(name + "_loop"))
	Label(name + "_done")
	Store(n, ReturnIndex(0))
	VZEROUPPER()
	RET()
}

// genAdamW: one AdamW step over n float32 values with float64 arithmetic,
// 8 values per iteration (the last n%8 under a mask), each operation
// rounded as Go rounds the scalar expression (no fused multiply-adds),
// so the results are bit-identical to the scalar loop (cpu.adamWGo):
//
//	m' = b1·m + c1·g;  v' = b2·v + (c2·g)·g  (c1 = 1-b1, c2 = 1-b2)
//	w' = w·shrink - (lr·(m'/bc1)) / (sqrt(v'/bc2) + eps)
//
// m', v' and w' stored as float32 (rounded to nearest), where g is the
// gradient times gscale in float32 (one rounding; 1 leaves it as is).
// With zero != 0 the gradient is set to zero once read. k points to
// [b1, c1, b2, c2, bc1, bc2, lr, shrink, eps].
func genAdamW() {
	name := "adamWAVX512"
	TEXT(name, NOSPLIT, "func(w *float32, grad *float32, m *float32, v *float32, n int, k *[9]float64, gscale float32, zero int)")
	Doc(name+" runs one AdamW step over n values with float64 arithmetic rounded as the scalar",
		"Go expression is (see genAdamW); k is [b1, 1-b1, b2, 1-b2, bc1, bc2, lr, shrink, eps];",
		"the gradient is scaled by gscale (float32) first, and zeroed when zero != 0.")
	w := Load(Param("w"), GP64())
	g := Load(Param("grad"), GP64()) // ("g" names a register in Go assembly)
	m := Load(Param("m"), GP64())
	v := Load(Param("v"), GP64())
	n := Load(Param("n"), GP64())
	kp := Load(Param("k"), GP64())
	c := make([]VecVirtual, 9)
	for j := range c {
		c[j] = ZMM()
		VBROADCASTSD(Mem{Base: kp, Disp: 8 * j}, c[j])
	}
	gs := YMM()
	VBROADCASTSS(paramAddr("gscale"), gs)
	zero := GP64()
	Load(Param("zero"), zero)
	zeros := YMM()
	VXORPS(zeros, zeros, zeros)
	cnt := GP64()
	MOVQ(n, cnt)
	SHRQ(U8(3), cnt)
	i := GP64()
	XORQ(i, i)
	step := func(load func(Mem, VecVirtual), store func(VecVirtual, Mem)) {
		at := func(base Register) Mem { return Mem{Base: base, Index: i, Scale: 1} }
		gd, md, vd, wd := ZMM(), ZMM(), ZMM(), ZMM()
		for _, lv := range []struct {
			base Register
			dst  VecVirtual
		}{{g, gd}, {m, md}, {v, vd}, {w, wd}} {
			f := YMM()
			load(at(lv.base), f)
			if lv.base == g {
				VMULPS(gs, f, f) // float32(g·gscale)
			}
			VCVTPS2PD(f, lv.dst)
		}
		// The gradient, read: zeroed when asked (a branch on the flag).
		skip := fmt.Sprintf("%s_keep%d", name, labelSeq)
		labelSeq++
		TESTQ(zero, zero)
		JZ(LabelRef(skip))
		store(zeros, at(g))
		Label(skip)
		narrow := func(d VecVirtual) VecVirtual {
			f := YMM()
			VCVTPD2PS(d, f)
			return f
		}
		adamwMath(c, gd, md, vd, wd, ZMM(), narrow,
			func(f VecVirtual) { store(f, at(m)) }, func(f VecVirtual) { store(f, at(v)) }, func(f VecVirtual) { store(f, at(w)) })
	}
	TESTQ(cnt, cnt)
	JZ(LabelRef(name + "_tail"))
	Label(name + "_loop")
	step(func(a Mem, d VecVirtual) { VMOVUPS(a, d) }, func(s VecVirtual, a Mem) { VMOVUPS(s, a) })
	ADDQ(U8(32), i)
	DECQ(cnt)
	JNZ(LabelRef(name + "_loop"))
	Label(name + "_tail")
	ANDQ(U8(7), n)
	JZ(LabelRef(name + "_done"))
	k := lowLanes(n)
	step(func(a Mem, d VecVirtual) { VMOVUPS_Z(a, k, d) }, func(s VecVirtual, a Mem) { VMOVUPS(s, k, a) })
	Label(name + "_done")
	VZEROUPPER()
	RET()
}

// genGatherF32: dst[i] = vals[src[i]] for src[i] >= 0, 0 for src[i] < 0,
// i < n; 16 at a time by VGATHERDPS under the mask of non-negative
// sources (the last n%16 under a further mask: nothing past n is read or
// written). The caller guarantees src[i] < len(vals).
func genGatherF32() {
	name := "gatherF32AVX512"
	TEXT(name, NOSPLIT, "func(dst *float32, vals *float32, src *int32, n int)")
	Doc(name+" sets dst[i] = vals[src[i]] where src[i] >= 0 and 0 where src[i] < 0, for i < n",
		"(every src[i] < len(vals), the caller's to ensure).")
	dst := Load(Param("dst"), GP64())
	vals := Load(Param("vals"), GP64())
	src := Load(Param("src"), GP64())
	n := Load(Param("n"), GP64())
	cnt := GP64()
	MOVQ(n, cnt)
	SHRQ(U8(4), cnt)
	zero := ZMM()
	VPXORD(zero, zero, zero)
	i := GP64()
	XORQ(i, i)
	step := func(lanes Register) {
		ix := ZMM()
		if lanes == nil {
			VMOVDQU32(Mem{Base: src, Index: i, Scale: 1}, ix)
		} else {
			VMOVDQU32_Z(Mem{Base: src, Index: i, Scale: 1}, lanes, ix)
		}
		k := K()
		VPCMPD(U8(5), zero, ix, k) // ix >= 0 (not less than)
		if lanes != nil {
			KANDW(lanes, k, k)
		}
		v := ZMM()
		VPXORD(v, v, v)
		VGATHERDPS(Mem{Base: vals, Index: ix, Scale: 4}, k, v)
		if lanes == nil {
			VMOVUPS(v, Mem{Base: dst, Index: i, Scale: 1})
		} else {
			VMOVUPS(v, lanes, Mem{Base: dst, Index: i, Scale: 1})
		}
	}
	TESTQ(cnt, cnt)
	JZ(LabelRef(name + "_tail"))
	Label(name + "_loop")
	step(nil)
	ADDQ(U8(64), i)
	DECQ(cnt)
	JNZ(LabelRef(name + "_loop"))
	Label(name + "_tail")
	ANDQ(U8(15), n)
	JZ(LabelRef(name + "_done"))
	lanes := lowLanes(n)
	step(lanes)
	Label(name + "_done")
	VZEROUPPER()
	RET()
}

// genGatherF32AVX2: gatherF32AVX512 on 8 lanes (AVX2 VGATHERDPS, whose
// mask lanes are the indices >= 0), over n &^ 7 values; it returns how
// many it did (the caller finishes the tail).
func genGatherF32AVX2() {
	name := "gatherF32AVX2"
	TEXT(name, NOSPLIT, "func(dst *float32, vals *float32, src *int32, n int) int")
	Doc(name+" sets dst[i] = vals[src[i]] where src[i] >= 0 and 0 where src[i] < 0, for i < n &^ 7,",
		"and returns n &^ 7 (every src[i] < len(vals), the caller's to ensure).")
	dst := Load(Param("dst"), GP64())
	vals := Load(Param("vals"), GP64())
	src := Load(Param("src"), GP64())
	n := Load(Param("n"), GP64())
	ANDQ(I32(-8), n)
	Store(n, ReturnIndex(0))
	minus1 := YMM()
	VPCMPEQD(minus1, minus1, minus1)
	i := GP64()
	XORQ(i, i)
	SHLQ(U8(2), n)
	JZ(LabelRef(name + "_done"))
	Label(name + "_loop")
	ix := YMM()
	VMOVDQU(Mem{Base: src, Index: i, Scale: 1}, ix)
	mask := YMM()
	VPCMPGTD(minus1, ix, mask) // ix > -1
	v := YMM()
	VXORPS(v, v, v)
	VGATHERDPS(mask, Mem{Base: vals, Index: ix, Scale: 4}, v)
	VMOVUPS(v, Mem{Base: dst, Index: i, Scale: 1})
	ADDQ(U8(32), i)
	CMPQ(i, n)
	JNE(LabelRef(name + "_loop"))
	Label(name + "_done")
	VZEROUPPER()
	RET()
}

// lowLanes returns a mask register with the low n bits set (n < 16: the
// lanes of a partial last block).
func lowLanes(n Register) Register {
	one := GP64()
	MOVQ(U32(1), one)
	SHLXQ(n, one, one)
	DECQ(one)
	k := K()
	KMOVW(one.As32(), k)
	return k
}

// hsum4 stores the lane sums of the four YMM vectors q as four floats at
// dst: ((q0 pairs + q1 pairs) ...) by VHADDPS, then the two 128-bit
// halves added (a fixed order).
func hsum4(q []VecVirtual, dst Mem) {
	VMOVUPS(hsum4Reg(q), dst)
}

// hsum4Reg is hsum4 leaving the four sums in an XMM register.
func hsum4Reg(q []VecVirtual) VecVirtual {
	t0, t1, u := YMM(), YMM(), YMM()
	VHADDPS(q[1], q[0], t0)
	VHADDPS(q[3], q[2], t1)
	VHADDPS(t1, t0, u)
	hi := XMM()
	VEXTRACTF128(U8(1), u, hi)
	VADDPS(hi, u.AsX(), hi)
	return hi
}

// basePlusOffsets loads n int64 byte offsets from offs and returns the
// registers base + offs[j].
func basePlusOffsets(base, offs Register, n int) []GPVirtual {
	p := make([]GPVirtual, n)
	for j := range p {
		p[j] = GP64()
		MOVQ(Mem{Base: offs, Disp: 8 * j}, p[j])
		ADDQ(base, p[j])
	}
	return p
}
