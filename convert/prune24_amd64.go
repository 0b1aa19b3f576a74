//go:build amd64 && !purego

package convert

import "golang.org/x/sys/cpu"

// prune24AVX512 says whether the fused 2:4 kernel runs its AVX-512 form
// (AVX-512 F and BW, VBMI2's VPCOMPRESSW, BMI2's PEXT); tests turn it off
// to check the Go form.
var prune24AVX512 = cpu.X86.HasAVX512F && cpu.X86.HasAVX512BW && cpu.X86.HasAVX512VBMI2 && cpu.X86.HasBMI2

// prune24AVX2 says whether the AVX2 form runs where the AVX-512 one does
// not (AVX2, FMA, F16C, BMI2).
var prune24AVX2 = cpu.X86.HasAVX2 && cpu.X86.HasFMA && cpu.X86.HasF16C && cpu.X86.HasBMI2

// select24RowAVX512 is select24Row and squares24Row on a row of blocks x
// 32 16-bit floats at w: it writes the kept values (32 bytes per block),
// the packed indices (4 bytes per block, lut mapping a byte of kept bits
// to an index byte), the column keys (|w|+1 where kept, 0 where dropped:
// 64 bytes per block) and the kept bits (a uint32 per block), and to sums
// the eight partial sums of the squares (element i into lane i%8) and
// then those of the dropped entries' squares (a kept entry's square times
// 0). It returns false at a NaN (magnitude bits above inf), the outputs
// then incomplete. bf16 is 1 for bfloat16, 0 for float16.
//
//go:noescape
func select24RowAVX512(w *byte, blocks int, inf uint64, bf16 uint64, values *byte, index *byte, ck *uint64, kept *uint32, sums *[16]float64, lut *[256]uint8) bool

// tmask24AVX512 is doublePrune24Half on a group of 4 rows of blocks x 32
// columns: ck and kept are select24RowAVX512's column keys and kept bits
// of the 4 rows (rows ckRow and keptRow bytes apart), mask the 4 rows'
// transpose masks (maskRow bytes apart; 2 bytes per block).
//
//go:noescape
func tmask24AVX512(ck *uint64, kept *uint32, blocks int, ckRow int, keptRow int, mask *byte, maskRow int)

// select24RowAVX2 is select24RowAVX512 on blocks of 16 values: per block
// 16 bytes of kept values, 2 index bytes, 32 bytes of column keys and a
// uint16 of kept bits; lut16 maps a byte of kept bits (the two groups of
// a 128-bit lane) to the VPSHUFB control that moves their kept values to
// the lane's low 8 bytes. sums: the eight lanes of the squares, then
// those of the dropped squares, as select24RowAVX512's.
//
//go:noescape
func select24RowAVX2(w *byte, blocks int, inf uint64, bf16 uint64, values *byte, index *byte, ck *uint64, kept *uint16, sums *[16]float64, lut16 *[256][16]uint8, lut *[256]uint8) bool

// tmask24AVX2 is tmask24AVX512 on blocks of 16 columns (1 mask byte per
// row and block).
//
//go:noescape
func tmask24AVX2(ck *uint64, kept *uint16, blocks int, ckRow int, keptRow int, mask *byte, maskRow int)
