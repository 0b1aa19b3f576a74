//go:build amd64 && !purego

package cpu

import (
	"unsafe"

	"golang.org/x/sys/cpu"
)

// CPU features of the assembly kernels (x/sys/cpu also checks that the
// OS saves the YMM and ZMM state). TestKernelFeaturesAreDispatched checks
// that every kernel needs only what its variable here tests.
const haveAsmBuild = true // (Kernels: the assembly is built in)

var (
	haveAVX2FMA = cpu.X86.HasAVX2 && cpu.X86.HasFMA
	haveF16C    = haveAVX2FMA && cpu.X86.HasF16C
	haveAVX512  = haveAVX2FMA && cpu.X86.HasAVX512F && cpu.X86.HasAVX512VL && cpu.X86.HasBMI2
)

func fmaPeak(iters int) { fmaPeakAVX2(iters) }

func gemvAsm(dt DType, x *float32, w unsafe.Pointer, k, np int, y *float32) {
	switch dt {
	case Float32:
		gemvF32AVX2(x, (*byte)(w), k, np, y)
	case BFloat16:
		gemvBF16AVX2(x, (*byte)(w), k, np, y)
	default:
		gemvF16AVX2(x, (*byte)(w), k, np, y)
	}
}

var gemmTileFns = [...]func(a *float32, lda int, b *float32, k int, c *float32, ldc int){
	nil, gemmF32x1AVX2, gemmF32x2AVX2, gemmF32x3AVX2, gemmF32x4AVX2, gemmF32x5AVX2, gemmF32x6AVX2,
}

func gemmTileAsm(mr int, a *float32, lda int, b *float32, k int, c *float32, ldc int) {
	gemmTileFns[mr](a, lda, b, k, c, ldc)
}

func cvtAsm(dt DType, dst *float32, src unsafe.Pointer, n int) {
	if dt == BFloat16 {
		cvtBF16AVX2(dst, (*byte)(src), n)
	} else {
		cvtF16AVX2(dst, (*byte)(src), n)
	}
}

type spmvFn = func(x *float32, vals *byte, idx *uint32, groups int, n int, m int, np int, y *float32)

// spmvFns[dtype][variant]: variant 0 reads N from its argument, 1..3 are
// specialised for N = 1, 2, 4.
var spmvFns = [3][4]spmvFn{
	{spmvF32AVX2, spmvF32N1AVX2, spmvF32N2AVX2, spmvF32N4AVX2},
	{spmvBF16AVX2, spmvBF16N1AVX2, spmvBF16N2AVX2, spmvBF16N4AVX2},
	{spmvF16AVX2, spmvF16N1AVX2, spmvF16N2AVX2, spmvF16N4AVX2},
}

func dtIndex(dt DType) int {
	switch dt {
	case Float32:
		return 0
	case BFloat16:
		return 1
	}
	return 2
}

func spmvAsm(dt DType, n int, x *float32, vals unsafe.Pointer, idx *uint32, groups, m, np int, y *float32) {
	v := 0
	switch n {
	case 1:
		v = 1
	case 2:
		v = 2
	case 4:
		v = 3
	}
	spmvFns[dtIndex(dt)][v](x, (*byte)(vals), idx, groups, n, m, np, y)
}

func spPrepAsm(dt DType, off *uint32, vals *float32, idx *uint32, src unsafe.Pointer, groups, n, gstep, rsh int) {
	switch dt {
	case Float32:
		spPrepF32AVX2(off, vals, idx, (*byte)(src), groups, n, gstep, rsh)
	case BFloat16:
		spPrepBF16AVX2(off, vals, idx, (*byte)(src), groups, n, gstep, rsh)
	default:
		spPrepF16AVX2(off, vals, idx, (*byte)(src), groups, n, gstep, rsh)
	}
}

func spmv24Asm(dt DType, x *float32, vals unsafe.Pointer, idx *uint32, groups, np int, y *float32) {
	switch dt {
	case Float32:
		spmv24F32AVX2(x, (*byte)(vals), idx, groups, np, y)
	case BFloat16:
		spmv24BF16AVX2(x, (*byte)(vals), idx, groups, np, y)
	default:
		spmv24F16AVX2(x, (*byte)(vals), idx, groups, np, y)
	}
}

func spPrep24Asm(dt DType, off *uint32, vals *float32, idx *uint32, src unsafe.Pointer, groups, gstep, rsh int) {
	switch dt {
	case Float32:
		spPrep24F32AVX2(off, vals, idx, (*byte)(src), groups, gstep, rsh)
	case BFloat16:
		spPrep24BF16AVX2(off, vals, idx, (*byte)(src), groups, gstep, rsh)
	default:
		spPrep24F16AVX2(off, vals, idx, (*byte)(src), groups, gstep, rsh)
	}
}

func transposeAsm(dst *float32, ldd int, src *float32, lda, nc8 int) {
	transpose8AVX2(dst, ldd, src, lda, nc8)
}

func transposeAddAsm(dst *float32, ldd int, src *float32, lda, nc8 int) {
	transpose8AddAVX2(dst, ldd, src, lda, nc8)
}

func transposeBiasAsm(dst *float32, ldd int, src *float32, lda, nc8 int, bias *float32) {
	transpose8BiasAVX2(dst, ldd, src, lda, nc8, bias)
}

type spmmFn = func(xt *float32, off *uint32, vals *float32, l0 int, steps int, yt *float32)

// spmmFns[mb/8-1][r-1].
var spmmFns = [4][3]spmmFn{
	{spmmB8R1AVX2, spmmB8R2AVX2, spmmB8R3AVX2},
	{spmmB16R1AVX2, spmmB16R2AVX2, spmmB16R3AVX2},
	{spmmB24R1AVX2, spmmB24R2AVX2, spmmB24R3AVX2},
	{spmmB32R1AVX2, spmmB32R2AVX2, spmmB32R3AVX2},
}

func spmmAsm(mb, r int, xt *float32, off *uint32, vals *float32, l0, steps int, yt *float32) {
	spmmFns[mb/8-1][r-1](xt, off, vals, l0, steps, yt)
}

var spmmPanelsFns = [4]func(xt *float32, off *uint32, vals *float32, pstride int, pn int, steps int, yt *float32){
	spmmPanelsB8AVX2, spmmPanelsB16AVX2, spmmPanelsB24AVX2, spmmPanelsB32AVX2,
}

func spmmPanelsAsm(mb int, xt *float32, off *uint32, vals *float32, pstride, pn, steps int, yt *float32) {
	spmmPanelsFns[mb/8-1](xt, off, vals, pstride, pn, steps, yt)
}

// spmmZFns[mb/16-1][r-1].
var spmmZFns = [4][4]spmmFn{
	{spmmZ16R1AVX512, spmmZ16R2AVX512, spmmZ16R3AVX512, spmmZ16R4AVX512},
	{spmmZ32R1AVX512, spmmZ32R2AVX512, spmmZ32R3AVX512, spmmZ32R4AVX512},
	{spmmZ48R1AVX512, spmmZ48R2AVX512, spmmZ48R3AVX512, spmmZ48R4AVX512},
	{spmmZ64R1AVX512, spmmZ64R2AVX512, spmmZ64R3AVX512, spmmZ64R4AVX512},
}

func spmmZAsm(mb, r int, xt *float32, off *uint32, vals *float32, l0, steps int, yt *float32) {
	spmmZFns[mb/16-1][r-1](xt, off, vals, l0, steps, yt)
}

func dotAsm(a, b *float32, n int) float32 { return dotAVX2(a, b, n) }

func axpyAsm(y *float32, alpha float32, x *float32, n int) { axpyAVX2(y, alpha, x, n) }

func dotRowsAsm(out, q, k *float32, ld, rows, n int) { dotRowsAVX2(out, q, k, ld, rows, n) }

func axpyRowsAsm(y, p, v *float32, ld, rows, n int) { axpyRowsAVX2(y, p, v, ld, rows, n) }

func sddmmAsm(a, x *float32, offs *[8]int64, n int, out *[8]float32) { sddmm8AVX2(a, x, offs, n, out) }

var sddmmZFns = [...]func(gy *float32, ldg int, x *float32, ldx int, n int, idx *int32, masks int, out *float32){
	sddmmZR1AVX512, sddmmZR2AVX512, sddmmZR3AVX512, sddmmZR4AVX512,
}

func sddmmZAsm(r int, gy *float32, ldg int, x *float32, ldx int, n int, idx *int32, masks int, out *float32) {
	sddmmZFns[r-1](gy, ldg, x, ldx, n, idx, masks, out)
}

var sddmmPairFns = [...]sddmmPairFn{
	sddmmPairR1AVX512, sddmmPairR2AVX512, sddmmPairR3AVX512, sddmmPairR4AVX512,
	sddmmPairR5AVX512, sddmmPairR6AVX512, sddmmPairR7AVX512, sddmmPairR8AVX512,
}

var sddmmPairFnsAVX2 = [...]sddmmPairFn{
	sddmmPairR1AVX2, sddmmPairR2AVX2, sddmmPairR3AVX2, sddmmPairR4AVX2, sddmmPairR5AVX2, sddmmPairR6AVX2,
}

func sddmmPairSegAsm(gy *float32, ld int, rows *int32, n int, xa, xb *float32, m int, out *float32) {
	sddmmPairSegAVX2(gy, ld, rows, n, xa, xb, m, out)
}

// sddmmPairKernels returns the pattern-pair kernels of this CPU, the
// one for r rows at [r-1]: 8 with AVX-512, 6 with AVX2.
func sddmmPairKernels() []sddmmPairFn {
	if asm512On() {
		return sddmmPairFns[:]
	}
	return sddmmPairFnsAVX2[:]
}
