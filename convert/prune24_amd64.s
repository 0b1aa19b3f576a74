// The AVX-512 form of the fused 2:4 kernel (half24.go); see
// prune24_amd64.go for the contract. Hand-written (avo v0.5.0 lacks
// VPCOMPRESSW); prune24_test.go checks it against the Go form.

//go:build amd64 && !purego

#include "textflag.h"

// func select24RowAVX512(w *byte, blocks int, inf uint64, bf16 uint64, values *byte, index *byte, ck *uint64, kept *uint32, sums *[16]float64, lut *[256]uint8) bool
TEXT ·select24RowAVX512(SB), NOSPLIT, $0-81
	MOVQ w+0(FP), SI
	MOVQ blocks+8(FP), CX
	MOVQ inf+16(FP), AX
	VPBROADCASTW AX, Z29          // +Inf's bits: larger magnitudes are NaNs
	MOVQ bf16+24(FP), R11
	MOVQ values+32(FP), DI
	MOVQ index+40(FP), BX
	MOVQ ck+48(FP), R8
	MOVQ kept+56(FP), R9
	MOVQ lut+72(FP), R10
	MOVL $0x7fff, AX
	VPBROADCASTW AX, Z28          // magnitude bits
	MOVL $1, AX
	VPBROADCASTW AX, Z30          // 1 per 16-bit lane
	MOVQ $0x3ff0000000000000, AX
	VPBROADCASTQ AX, Z31          // 1.0
	// Lanes j >= s of every group of 4: where the lane s places before
	// (a lower index) wins a tie.
	MOVL $0xEEEEEEEE, AX
	KMOVD AX, K1
	MOVL $0xCCCCCCCC, AX
	KMOVD AX, K2
	MOVL $0x88888888, AX
	KMOVD AX, K3
	VPXORQ Z12, Z12, Z12          // Σ v², lane l: elements ≡ l mod 8
	VPXORQ Z13, Z13, Z13          // Σ v² of the dropped entries (×0 for kept)

loop:
	VMOVDQU16 (SI), Z0            // 32 values: 8 groups of 4
	VPANDD Z28, Z0, Z1            // k: magnitudes
	VPCMPUW $6, Z29, Z1, K4       // k > inf: NaN
	KORTESTD K4, K4
	JNE nan
	VPROLQ $16, Z1, Z2            // lane j: lane j-1 of its group
	VPROLQ $32, Z1, Z3            // lane j-2
	VPROLQ $48, Z1, Z4            // lane j-3
	// b_s: lane j-s beats lane j (larger, or equal at a lower index).
	VPCMPUW $6, Z1, Z2, K4
	VPCMPUW $5, Z1, Z2, K1, K5
	KORD K4, K5, K4               // b1
	VPCMPUW $6, Z1, Z3, K5
	VPCMPUW $5, Z1, Z3, K2, K6
	KORD K5, K6, K5               // b2
	VPCMPUW $6, Z1, Z4, K6
	VPCMPUW $5, Z1, Z4, K3, K7
	KORD K6, K7, K6               // b3
	// Kept: beaten at most once (not by a majority of b1, b2, b3).
	KANDD K4, K5, K7
	KANDD K4, K6, K4
	KANDD K5, K6, K5
	KORD K7, K4, K7
	KORD K7, K5, K7
	KNOTD K7, K7

	VPCOMPRESSW Z0, K7, Z5        // the kept values, in order
	VMOVDQU Y5, (DI)
	VPADDW.Z Z30, Z1, K7, Z6      // column keys: k+1 where kept, else 0
	VMOVDQU64 Z6, (R8)
	KMOVD K7, AX
	MOVL AX, (R9)
	// Packed indices: a byte of kept bits (2 groups) -> its index byte.
	MOVL AX, DX
	MOVBLZX DL, R12
	MOVBLZX (R10)(R12*1), R12
	SHRL $8, DX
	MOVBLZX DL, R13
	MOVBLZX (R10)(R13*1), R13
	SHLL $8, R13
	ORL R13, R12
	SHRL $8, DX
	MOVBLZX DL, R13
	MOVBLZX (R10)(R13*1), R13
	SHLL $16, R13
	ORL R13, R12
	SHRL $8, DX
	MOVBLZX (R10)(DX*1), R13
	SHLL $24, R13
	ORL R13, R12
	MOVL R12, (BX)

	// Squares in float64 (exact for 16-bit floats).
	TESTQ R11, R11
	JNE bf16
	VCVTPH2PS Y0, Z7              // elements 0-15
	VEXTRACTI64X4 $1, Z0, Y8
	VCVTPH2PS Y8, Z8              // elements 16-31
	JMP squares
bf16:
	VPMOVZXWD Y0, Z7
	VPSLLD $16, Z7, Z7
	VEXTRACTI64X4 $1, Z0, Y8
	VPMOVZXWD Y8, Z8
	VPSLLD $16, Z8, Z8
squares:
	VCVTPS2PD Y7, Z9              // 0-7
	VEXTRACTF64X4 $1, Z7, Y10
	VCVTPS2PD Y10, Z10            // 8-15
	VCVTPS2PD Y8, Z11             // 16-23
	VEXTRACTF64X4 $1, Z8, Y14
	VCVTPS2PD Y14, Z14            // 24-31
	VMULPD Z9, Z9, Z9
	VMULPD Z10, Z10, Z10
	VMULPD Z11, Z11, Z11
	VMULPD Z14, Z14, Z14
	VADDPD Z9, Z12, Z12
	VADDPD Z10, Z12, Z12
	VADDPD Z11, Z12, Z12
	VADDPD Z14, Z12, Z12
	KNOTD K7, K4                  // dropped
	VMOVAPD.Z Z31, K4, Z15        // 1.0 where dropped, 0 where kept
	VFMADD231PD Z15, Z9, Z13
	KSHIFTRD $8, K4, K5
	VMOVAPD.Z Z31, K5, Z15
	VFMADD231PD Z15, Z10, Z13
	KSHIFTRD $16, K4, K5
	VMOVAPD.Z Z31, K5, Z15
	VFMADD231PD Z15, Z11, Z13
	KSHIFTRD $24, K4, K5
	VMOVAPD.Z Z31, K5, Z15
	VFMADD231PD Z15, Z14, Z13

	ADDQ $64, SI
	ADDQ $32, DI
	ADDQ $4, BX
	ADDQ $64, R8
	ADDQ $4, R9
	DECQ CX
	JNE loop

	MOVQ sums+64(FP), AX
	VMOVUPD Z12, (AX)
	VMOVUPD Z13, 64(AX)
	VZEROUPPER
	MOVB $1, ret+80(FP)
	RET

nan:
	VZEROUPPER
	MOVB $0, ret+80(FP)
	RET

// NOTMAJ24 sets k4 to the lanes where fewer than two of k1, k2, k3 are set
// (k5: scratch).
#define NOTMAJ24 \
	KANDD K1, K2, K4 \
	KORD K1, K2, K5 \
	KANDD K5, K3, K5 \
	KORD K4, K5, K4 \
	KNOTD K4, K4

// TMASK24ROW512 stores a row's 16 transpose-mask bits of a block: of the
// lanes K4 keeps, those the row keeps (kept bits at kp), in order.
#define TMASK24ROW512(kp, mp) \
	KMOVD K4, AX \
	MOVL kp, BX \
	PEXTL BX, AX, AX \
	MOVW AX, mp

// func tmask24AVX512(ck *uint64, kept *uint32, blocks int, ckRow int, keptRow int, mask *byte, maskRow int)
TEXT ·tmask24AVX512(SB), NOSPLIT, $0-56
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

tloop:
	VMOVDQU64 (SI), Z0
	VMOVDQU64 (SI)(R8*1), Z1
	VMOVDQU64 (SI)(R8*2), Z2
	VMOVDQU64 (R12), Z3
	// Row r keeps a column's entry when at most one other row beats it
	// (a larger key, or an equal one in a lower row).
	// Row 0: beaten by rows 1-3 when larger.
	VPCMPUW $6, Z0, Z1, K1
	VPCMPUW $6, Z0, Z2, K2
	VPCMPUW $6, Z0, Z3, K3
	NOTMAJ24
	TMASK24ROW512((DI), (DX))
	// Row 1: by row 0 when not smaller, rows 2-3 when larger.
	VPCMPUW $5, Z1, Z0, K1
	VPCMPUW $6, Z1, Z2, K2
	VPCMPUW $6, Z1, Z3, K3
	NOTMAJ24
	TMASK24ROW512((DI)(R9*1), (DX)(R10*1))
	// Row 2.
	VPCMPUW $5, Z2, Z0, K1
	VPCMPUW $5, Z2, Z1, K2
	VPCMPUW $6, Z2, Z3, K3
	NOTMAJ24
	TMASK24ROW512((DI)(R9*2), (DX)(R10*2))
	// Row 3.
	VPCMPUW $5, Z3, Z0, K1
	VPCMPUW $5, Z3, Z1, K2
	VPCMPUW $5, Z3, Z2, K3
	NOTMAJ24
	TMASK24ROW512((R13), (R14))

	ADDQ $64, SI
	ADDQ $64, R12
	ADDQ $4, DI
	ADDQ $4, R13
	ADDQ $2, DX
	ADDQ $2, R14
	DECQ CX
	JNE tloop
	VZEROUPPER
	RET
