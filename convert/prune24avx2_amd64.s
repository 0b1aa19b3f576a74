// The AVX2 form of the fused 2:4 kernel (half24.go), for CPUs without
// AVX-512; see prune24_amd64.go for the contract. Hand-written;
// prune24_test.go checks it against the Go form.

//go:build amd64 && !purego

#include "textflag.h"

// VPSHUFB controls that rotate the 16-bit lanes of every group of 4 (a
// qword): lane j gets lane j-s, for s = 1, 2, 3.
DATA rot24<>+0(SB)/8, $0x0504030201000706
DATA rot24<>+8(SB)/8, $0x0d0c0b0a09080f0e
DATA rot24<>+16(SB)/8, $0x0504030201000706
DATA rot24<>+24(SB)/8, $0x0d0c0b0a09080f0e
DATA rot24<>+32(SB)/8, $0x0302010007060504
DATA rot24<>+40(SB)/8, $0x0b0a09080f0e0d0c
DATA rot24<>+48(SB)/8, $0x0302010007060504
DATA rot24<>+56(SB)/8, $0x0b0a09080f0e0d0c
DATA rot24<>+64(SB)/8, $0x0100070605040302
DATA rot24<>+72(SB)/8, $0x09080f0e0d0c0b0a
DATA rot24<>+80(SB)/8, $0x0100070605040302
DATA rot24<>+88(SB)/8, $0x09080f0e0d0c0b0a
GLOBL rot24<>(SB), RODATA|NOPTR, $96

// Lanes j >= s of every group of 4, for s = 1, 2, 3: where lane j-s has
// the lower index and wins a tie.
DATA m24<>+0(SB)/8, $0xffffffffffff0000
DATA m24<>+8(SB)/8, $0xffffffffffff0000
DATA m24<>+16(SB)/8, $0xffffffffffff0000
DATA m24<>+24(SB)/8, $0xffffffffffff0000
DATA m24<>+32(SB)/8, $0xffffffff00000000
DATA m24<>+40(SB)/8, $0xffffffff00000000
DATA m24<>+48(SB)/8, $0xffffffff00000000
DATA m24<>+56(SB)/8, $0xffffffff00000000
DATA m24<>+64(SB)/8, $0xffff000000000000
DATA m24<>+72(SB)/8, $0xffff000000000000
DATA m24<>+80(SB)/8, $0xffff000000000000
DATA m24<>+88(SB)/8, $0xffff000000000000
GLOBL m24<>(SB), RODATA|NOPTR, $96

// func select24RowAVX2(w *byte, blocks int, inf uint64, bf16 uint64, values *byte, index *byte, ck *uint64, kept *uint16, sums *[16]float64, lut16 *[256][16]uint8, lut *[256]uint8) bool
TEXT ·select24RowAVX2(SB), NOSPLIT, $0-89
	MOVQ w+0(FP), SI
	MOVQ blocks+8(FP), CX
	MOVQ inf+16(FP), AX
	VMOVD AX, X14
	VPBROADCASTW X14, Y14         // +Inf's bits: larger magnitudes are NaNs
	MOVQ bf16+24(FP), R11
	MOVQ values+32(FP), DI
	MOVQ index+40(FP), BX
	MOVQ ck+48(FP), R8
	MOVQ kept+56(FP), R9
	MOVQ lut16+72(FP), R10
	MOVQ lut+80(FP), R13
	MOVL $0x7fff, AX
	VMOVD AX, X15
	VPBROADCASTW X15, Y15         // magnitude bits
	MOVL $1, AX
	VMOVD AX, X13
	VPBROADCASTW X13, Y13         // 1 per 16-bit lane
	MOVQ $0x3ff0000000000000, AX
	VMOVQ AX, X12
	VBROADCASTSD X12, Y12         // 1.0
	MOVL $0x55555555, R14         // one bit per 16-bit lane of a VPMOVMSKB
	VPXOR Y8, Y8, Y8              // Σ v², lanes 0-3 (elements ≡ 0-3 mod 8)
	VPXOR Y9, Y9, Y9              // lanes 4-7
	VPXOR Y10, Y10, Y10           // Σ v² of the dropped entries, lanes 0-3
	VPXOR Y11, Y11, Y11           // lanes 4-7

loop:
	VMOVDQU (SI), Y0              // 16 values: 4 groups of 4
	VPAND Y15, Y0, Y1             // k: magnitudes (signed compares are fine)
	VPCMPGTW Y14, Y1, Y2          // k > inf: NaN
	VPTEST Y2, Y2
	JNE nan
	// b_s: lane j-s beats lane j (larger, or equal at a lower index).
	VPSHUFB rot24<>+0(SB), Y1, Y2
	VPCMPGTW Y1, Y2, Y3
	VPCMPGTW Y2, Y1, Y4
	VPANDN m24<>+0(SB), Y4, Y4
	VPOR Y4, Y3, Y3               // b1
	VPSHUFB rot24<>+32(SB), Y1, Y2
	VPCMPGTW Y1, Y2, Y5
	VPCMPGTW Y2, Y1, Y4
	VPANDN m24<>+32(SB), Y4, Y4
	VPOR Y4, Y5, Y5               // b2
	VPSHUFB rot24<>+64(SB), Y1, Y2
	VPCMPGTW Y1, Y2, Y6
	VPCMPGTW Y2, Y1, Y4
	VPANDN m24<>+64(SB), Y4, Y4
	VPOR Y4, Y6, Y6               // b3
	// Dropped: beaten by a majority of b1, b2, b3.
	VPAND Y3, Y5, Y7
	VPOR Y3, Y5, Y4
	VPAND Y6, Y4, Y4
	VPOR Y4, Y7, Y7               // Y7: 0xffff where dropped

	VPMOVMSKB Y7, AX
	NOTL AX
	PEXTL R14, AX, AX             // kept bits, one per value
	MOVW AX, (R9)
	// The kept values: per 128-bit lane, its 4 to the low 8 bytes.
	MOVBLZX AL, DX
	SHLQ $4, DX
	VMOVDQU (R10)(DX*1), X2
	MOVL AX, DX
	SHRL $8, DX
	SHLQ $4, DX
	VINSERTI128 $1, (R10)(DX*1), Y2, Y2
	VPSHUFB Y2, Y0, Y2
	VPERMQ $0x08, Y2, Y2
	VMOVDQU X2, (DI)
	// Packed indices: a byte of kept bits (2 groups) -> its index byte.
	MOVBLZX AL, DX
	MOVBLZX (R13)(DX*1), DX
	MOVL AX, R12
	SHRL $8, R12
	MOVBLZX (R13)(R12*1), R12
	SHLL $8, R12
	ORL R12, DX
	MOVW DX, (BX)
	// Column keys: k+1 where kept, else 0.
	VPADDW Y13, Y1, Y2
	VPANDN Y2, Y7, Y2
	VMOVDQU Y2, (R8)

	// Squares in float64 (exact for 16-bit floats).
	TESTQ R11, R11
	JNE bf16
	VCVTPH2PS X0, Y3              // elements 0-7
	VEXTRACTI128 $1, Y0, X4
	VCVTPH2PS X4, Y4              // 8-15
	JMP squares
bf16:
	VPMOVZXWD X0, Y3
	VPSLLD $16, Y3, Y3
	VEXTRACTI128 $1, Y0, X4
	VPMOVZXWD X4, Y4
	VPSLLD $16, Y4, Y4
squares:
	VCVTPS2PD X3, Y0              // 0-3
	VEXTRACTF128 $1, Y3, X3
	VCVTPS2PD X3, Y3              // 4-7
	VCVTPS2PD X4, Y1              // 8-11
	VEXTRACTF128 $1, Y4, X4
	VCVTPS2PD X4, Y4              // 12-15
	VMULPD Y0, Y0, Y0
	VMULPD Y3, Y3, Y3
	VMULPD Y1, Y1, Y1
	VMULPD Y4, Y4, Y4
	VADDPD Y0, Y8, Y8
	VADDPD Y3, Y9, Y9
	VADDPD Y1, Y8, Y8
	VADDPD Y4, Y9, Y9
	// 1.0 where dropped, 0 where kept (a kept square times 0).
	VPMOVSXWQ X7, Y2
	VPAND Y12, Y2, Y2
	VFMADD231PD Y2, Y0, Y10
	VPSRLDQ $8, X7, X5
	VPMOVSXWQ X5, Y2
	VPAND Y12, Y2, Y2
	VFMADD231PD Y2, Y3, Y11
	VEXTRACTI128 $1, Y7, X5
	VPMOVSXWQ X5, Y2
	VPAND Y12, Y2, Y2
	VFMADD231PD Y2, Y1, Y10
	VPSRLDQ $8, X5, X5
	VPMOVSXWQ X5, Y2
	VPAND Y12, Y2, Y2
	VFMADD231PD Y2, Y4, Y11

	ADDQ $32, SI
	ADDQ $16, DI
	ADDQ $2, BX
	ADDQ $32, R8
	ADDQ $2, R9
	DECQ CX
	JNE loop

	MOVQ sums+64(FP), AX
	VMOVUPD Y8, (AX)
	VMOVUPD Y9, 32(AX)
	VMOVUPD Y10, 64(AX)
	VMOVUPD Y11, 96(AX)
	VZEROUPPER
	MOVB $1, ret+88(FP)
	RET

nan:
	VZEROUPPER
	MOVB $0, ret+88(FP)
	RET

// MAJ24 sets d to the lane-wise majority of a, b, c (t: scratch).
#define MAJ24(a, b, c, t, d) \
	VPAND a, b, d \
	VPOR a, b, t \
	VPAND c, t, t \
	VPOR t, d, d

// TMASK24ROW stores row r's 8 transpose-mask bits of a block: the kept
// lanes (kept bits at kp) of the lanes that maj does not drop.
#define TMASK24ROW(maj, kp, mp) \
	VPMOVMSKB maj, AX \
	NOTL AX \
	PEXTL R11, AX, AX \
	MOVWLZX kp, BX \
	PEXTL BX, AX, AX \
	MOVB AX, mp

// func tmask24AVX2(ck *uint64, kept *uint16, blocks int, ckRow int, keptRow int, mask *byte, maskRow int)
TEXT ·tmask24AVX2(SB), NOSPLIT, $0-56
	MOVQ ck+0(FP), SI
	MOVQ kept+8(FP), DI
	MOVQ blocks+16(FP), CX
	MOVQ ckRow+24(FP), R8
	MOVQ keptRow+32(FP), R9
	MOVQ mask+40(FP), DX
	MOVQ maskRow+48(FP), R10
	LEAQ (SI)(R8*2), R12
	ADDQ R8, R12                  // ck row 3
	LEAQ (DI)(R9*2), R13
	ADDQ R9, R13                  // kept row 3
	LEAQ (DX)(R10*2), R14
	ADDQ R10, R14                 // mask row 3
	MOVL $0x55555555, R11
	VPCMPEQW Y15, Y15, Y15        // all ones

tloop:
	VMOVDQU (SI), Y0
	VMOVDQU (SI)(R8*1), Y1
	VMOVDQU (SI)(R8*2), Y2
	VMOVDQU (R12), Y3
	// gji: row j's key above row i's (keys are below 0x8000).
	VPCMPGTW Y0, Y1, Y4           // g10
	VPCMPGTW Y0, Y2, Y5           // g20
	VPCMPGTW Y0, Y3, Y6           // g30
	VPCMPGTW Y1, Y2, Y7           // g21
	VPCMPGTW Y1, Y3, Y8           // g31
	VPCMPGTW Y2, Y3, Y9           // g32
	// A row drops a column's entry when a majority of the other rows
	// beat it: a larger key, or an equal one in a lower row (not g).
	MAJ24(Y4, Y5, Y6, Y10, Y11)
	TMASK24ROW(Y11, (DI), (DX))
	VPXOR Y15, Y4, Y12
	MAJ24(Y12, Y7, Y8, Y10, Y11)
	TMASK24ROW(Y11, (DI)(R9*1), (DX)(R10*1))
	VPXOR Y15, Y5, Y12
	VPXOR Y15, Y7, Y13
	MAJ24(Y12, Y13, Y9, Y10, Y11)
	TMASK24ROW(Y11, (DI)(R9*2), (DX)(R10*2))
	VPXOR Y15, Y6, Y12
	VPXOR Y15, Y8, Y13
	VPXOR Y15, Y9, Y14
	MAJ24(Y12, Y13, Y14, Y10, Y11)
	TMASK24ROW(Y11, (R13), (R14))

	ADDQ $32, SI
	ADDQ $32, R12
	ADDQ $2, DI
	ADDQ $2, R13
	INCQ DX
	INCQ R14
	DECQ CX
	JNE tloop
	VZEROUPPER
	RET
