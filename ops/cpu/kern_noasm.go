//go:build !amd64 || purego

package cpu

import "unsafe"

// Without the assembly kernels every dispatch takes the Go path; the
// functions below are never called.
const (
	haveAsmBuild = false // (Kernels: no assembly in this build)
	haveAVX2FMA  = false
	haveF16C     = false
	haveAVX512   = false
)

func noAsm() { panic("cpu: assembly kernels are not built") }

func fmaPeak(int)                                                                    { noAsm() }
func gemvAsm(DType, *float32, unsafe.Pointer, int, int, *float32)                    { noAsm() }
func gemmTileAsm(int, *float32, int, *float32, int, *float32, int)                   { noAsm() }
func cvtAsm(DType, *float32, unsafe.Pointer, int)                                    { noAsm() }
func spmvAsm(DType, int, *float32, unsafe.Pointer, *uint32, int, int, int, *float32) { noAsm() }
func spmv24Asm(DType, *float32, unsafe.Pointer, *uint32, int, int, *float32)         { noAsm() }
func spPrepAsm(DType, *uint32, *float32, *uint32, unsafe.Pointer, int, int, int, int) {
	noAsm()
}
func spPrep24Asm(DType, *uint32, *float32, *uint32, unsafe.Pointer, int, int, int)       { noAsm() }
func spmmAsm(int, int, *float32, *uint32, *float32, int, int, *float32)                  { noAsm() }
func spmmZAsm(int, int, *float32, *uint32, *float32, int, int, *float32)                 { noAsm() }
func spmmPanelsAsm(int, *float32, *uint32, *float32, int, int, int, *float32)            { noAsm() }
func transposeAsm(*float32, int, *float32, int, int)                                     { noAsm() }
func transposeAddAsm(*float32, int, *float32, int, int)                                  { noAsm() }
func transposeBiasAsm(*float32, int, *float32, int, int, *float32)                       { noAsm() }
func dotAsm(*float32, *float32, int) float32                                             { noAsm(); return 0 }
func axpyAsm(*float32, float32, *float32, int)                                           { noAsm() }
func dotRowsAsm(*float32, *float32, *float32, int, int, int)                             { noAsm() }
func axpyRowsAsm(*float32, *float32, *float32, int, int, int)                            { noAsm() }
func sddmmAsm(*float32, *float32, *[8]int64, int, *[8]float32)                           { noAsm() }
func sddmmZAsm(int, *float32, int, *float32, int, int, *int32, int, *float32)            { noAsm() }
func sddmmPairKernels() []sddmmPairFn                                                    { noAsm(); return nil }
func sddmmPairSegAsm(*float32, int, *int32, int, *float32, *float32, int, *float32)      { noAsm() }
func adamWAVX512(*float32, *float32, *float32, *float32, int, *[9]float64, float32, int) { noAsm() }
func gatherF32AVX512(*float32, *float32, *int32, int)                                    { noAsm() }
func expShiftSumAVX512(*float32, *float32, int, float32) float64                         { noAsm(); return 0 }
func adamWAVX2(*float32, *float32, *float32, *float32, int, *[9]float64, float32, int) int {
	noAsm()
	return 0
}
func expShiftSumAVX2(*float32, *float32, int, float32) float64 { noAsm(); return 0 }
func gatherF32AVX2(*float32, *float32, *int32, int) int        { noAsm(); return 0 }
