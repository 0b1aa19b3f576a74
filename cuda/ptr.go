package cuda

import "unsafe"

func ptrOf(v []int32) unsafe.Pointer { return unsafe.Pointer(unsafe.SliceData(v)) }
