//go:build !amd64 || purego

package convert

// prune24AVX512 is false where there is no AVX-512 form of the fused 2:4
// kernel.
var prune24AVX512 = false

var prune24AVX2 = false

func select24RowAVX512(w *byte, blocks int, inf uint64, bf16 uint64, values *byte, index *byte, ck *uint64, kept *uint32, sums *[16]float64, lut *[256]uint8) bool {
	panic("convert: no AVX-512 2:4 kernel on this platform")
}

func tmask24AVX512(ck *uint64, kept *uint32, blocks int, ckRow int, keptRow int, mask *byte, maskRow int) {
	panic("convert: no AVX-512 2:4 kernel on this platform")
}

func select24RowAVX2(w *byte, blocks int, inf uint64, bf16 uint64, values *byte, index *byte, ck *uint64, kept *uint16, sums *[16]float64, lut16 *[256][16]uint8, lut *[256]uint8) bool {
	panic("convert: no AVX2 2:4 kernel on this platform")
}

func tmask24AVX2(ck *uint64, kept *uint16, blocks int, ckRow int, keptRow int, mask *byte, maskRow int) {
	panic("convert: no AVX2 2:4 kernel on this platform")
}
