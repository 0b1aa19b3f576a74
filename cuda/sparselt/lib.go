package sparselt

import (
	"fmt"
	"unsafe"

	"github.com/slopeml/slope/cuda/dl"
	"github.com/slopeml/slope/cuda/driver"
)

// opaqueSize is the size of cuSPARSELt 0.8's handle, descriptor,
// algorithm selection and plan structs (uint8_t data[512], alignas(16)).
const (
	opaqueSize  = 512
	opaqueAlign = 16
)

// opaque is Go heap memory for one of cuSPARSELt's 512-byte structs. Go
// does not guarantee 16-byte alignment, so the struct lives at the first
// 16-aligned address inside buf. Heap objects never move, and the owner
// (Handle, Weight or plan) keeps it referenced for as long as cuSPARSELt
// may use it.
type opaque struct {
	buf [opaqueSize + opaqueAlign]byte
}

// newOpaque allocates an opaque on the heap.
func newOpaque() *opaque { return new(opaque) }

// ptr returns the 16-aligned address of the struct inside o.
func (o *opaque) ptr() unsafe.Pointer {
	p := unsafe.Pointer(&o.buf[0])
	return unsafe.Add(p, (opaqueAlign-uintptr(p)%opaqueAlign)%opaqueAlign)
}

// api holds the bound cuSPARSELt entry points. Struct arguments are
// addresses from opaque.ptr; statuses are cusparseStatus_t (int32).
type api struct {
	cusparseLtInit                      func(h unsafe.Pointer) int32
	cusparseLtDestroy                   func(h unsafe.Pointer) int32
	cusparseLtGetVersion                func(h unsafe.Pointer, v *int32) int32
	cusparseLtGetProperty               func(prop int32, v *int32) int32
	cusparseLtDenseDescriptorInit       func(h, mat unsafe.Pointer, rows, cols, ld int64, alignment uint32, valueType, order int32) int32
	cusparseLtStructuredDescriptorInit  func(h, mat unsafe.Pointer, rows, cols, ld int64, alignment uint32, valueType, order, sparsity int32) int32
	cusparseLtMatDescriptorDestroy      func(mat unsafe.Pointer) int32
	cusparseLtMatmulDescriptorInit      func(h, matmul unsafe.Pointer, opA, opB int32, a, b, c, d unsafe.Pointer, computeType int32) int32
	cusparseLtMatmulAlgSelectionInit    func(h, alg, matmul unsafe.Pointer, algEnum int32) int32
	cusparseLtMatmulAlgSelectionDestroy func(alg unsafe.Pointer) int32
	cusparseLtMatmulAlgSetAttribute     func(h, alg unsafe.Pointer, attr int32, data unsafe.Pointer, size uint64) int32
	cusparseLtMatmulDescSetAttribute    func(h, matmul unsafe.Pointer, attr int32, data unsafe.Pointer, size uint64) int32
	cusparseLtMatmulAlgGetAttribute     func(h, alg unsafe.Pointer, attr int32, data unsafe.Pointer, size uint64) int32
	cusparseLtMatmulGetWorkspace        func(h, plan unsafe.Pointer, size *uint64) int32
	cusparseLtMatmulPlanInit            func(h, plan, matmul, alg unsafe.Pointer) int32
	cusparseLtMatmulPlanDestroy         func(plan unsafe.Pointer) int32
	cusparseLtMatmul                    func(h, plan, alpha unsafe.Pointer, a, b driver.Ptr, beta unsafe.Pointer, c, d, ws driver.Ptr, streams *driver.Stream, numStreams int32) int32
	cusparseLtMatmulSearch              func(h, plan, alpha unsafe.Pointer, a, b driver.Ptr, beta unsafe.Pointer, c, d, ws driver.Ptr, streams *driver.Stream, numStreams int32) int32
	cusparseLtSpMMAPruneCheck2          func(h, sparse unsafe.Pointer, isSparseA, op int32, in, valid driver.Ptr, s driver.Stream) int32
	cusparseLtSpMMACompressedSize2      func(h, sparse unsafe.Pointer, size, bufSize *uint64) int32
	cusparseLtSpMMACompress2            func(h, sparse unsafe.Pointer, isSparseA, op int32, dense, compressed, buf driver.Ptr, s driver.Stream) int32
}

// libAPI is cuSPARSELt, bound once per process.
var libAPI = dl.API[api]{Spec: dl.CuSPARSELt, Table: func(a *api) map[string]any {
	return map[string]any{
		"cusparseLtInit":                      &a.cusparseLtInit,
		"cusparseLtDestroy":                   &a.cusparseLtDestroy,
		"cusparseLtGetVersion":                &a.cusparseLtGetVersion,
		"cusparseLtGetProperty":               &a.cusparseLtGetProperty,
		"cusparseLtDenseDescriptorInit":       &a.cusparseLtDenseDescriptorInit,
		"cusparseLtStructuredDescriptorInit":  &a.cusparseLtStructuredDescriptorInit,
		"cusparseLtMatDescriptorDestroy":      &a.cusparseLtMatDescriptorDestroy,
		"cusparseLtMatmulDescriptorInit":      &a.cusparseLtMatmulDescriptorInit,
		"cusparseLtMatmulAlgSelectionInit":    &a.cusparseLtMatmulAlgSelectionInit,
		"cusparseLtMatmulAlgSelectionDestroy": &a.cusparseLtMatmulAlgSelectionDestroy,
		"cusparseLtMatmulAlgSetAttribute":     &a.cusparseLtMatmulAlgSetAttribute,
		"cusparseLtMatmulDescSetAttribute":    &a.cusparseLtMatmulDescSetAttribute,
		"cusparseLtMatmulAlgGetAttribute":     &a.cusparseLtMatmulAlgGetAttribute,
		"cusparseLtMatmulGetWorkspace":        &a.cusparseLtMatmulGetWorkspace,
		"cusparseLtMatmulPlanInit":            &a.cusparseLtMatmulPlanInit,
		"cusparseLtMatmulPlanDestroy":         &a.cusparseLtMatmulPlanDestroy,
		"cusparseLtMatmul":                    &a.cusparseLtMatmul,
		"cusparseLtMatmulSearch":              &a.cusparseLtMatmulSearch,
		"cusparseLtSpMMAPruneCheck2":          &a.cusparseLtSpMMAPruneCheck2,
		"cusparseLtSpMMACompressedSize2":      &a.cusparseLtSpMMACompressedSize2,
		"cusparseLtSpMMACompress2":            &a.cusparseLtSpMMACompress2,
	}
}}

// load opens and binds cuSPARSELt (see dl.API).
func load() (*api, error) { return libAPI.Load() }

// Version loads cuSPARSELt (if needed) and returns its version as
// major·1000 + minor·100 + patch (CUSPARSELT_VERSION; 800 for 0.8.0),
// from cusparseLtGetProperty, which needs no handle and no GPU.
func Version() (int, error) {
	a, err := load()
	if err != nil {
		return 0, err
	}
	var v [3]int32
	for i := range v { // MAJOR_VERSION, MINOR_VERSION, PATCH_LEVEL
		if err := check("cusparseLtGetProperty", a.cusparseLtGetProperty(int32(i), &v[i])); err != nil {
			return 0, err
		}
	}
	return int(v[0])*1000 + int(v[1])*100 + int(v[2]), nil
}

// Library returns the path cuSPARSELt was loaded from ("" before a
// successful load).
func Library() string { return libAPI.Path() }

// statusNames maps cusparseStatus_t values (cusparse.h) to their names.
var statusNames = map[int32]string{
	0:  "CUSPARSE_STATUS_SUCCESS",
	1:  "CUSPARSE_STATUS_NOT_INITIALIZED",
	2:  "CUSPARSE_STATUS_ALLOC_FAILED",
	3:  "CUSPARSE_STATUS_INVALID_VALUE",
	4:  "CUSPARSE_STATUS_ARCH_MISMATCH",
	5:  "CUSPARSE_STATUS_MAPPING_ERROR",
	6:  "CUSPARSE_STATUS_EXECUTION_FAILED",
	7:  "CUSPARSE_STATUS_INTERNAL_ERROR",
	8:  "CUSPARSE_STATUS_MATRIX_TYPE_NOT_SUPPORTED",
	9:  "CUSPARSE_STATUS_ZERO_PIVOT",
	10: "CUSPARSE_STATUS_NOT_SUPPORTED",
	11: "CUSPARSE_STATUS_INSUFFICIENT_RESOURCES",
}

// StatusName returns the cusparseStatus_t name of st.
func StatusName(st int32) string {
	if n, ok := statusNames[st]; ok {
		return n
	}
	return fmt.Sprintf("CUSPARSE_STATUS_UNKNOWN_%d", st)
}

// check turns a cuSPARSELt status into a *driver.Error naming call, e.g.
// "cusparseLtMatmulPlanInit: CUSPARSE_STATUS_INVALID_VALUE (3)".
func check(call string, st int32) error {
	if st == 0 {
		return nil
	}
	return &driver.Error{Call: call, Status: st, Name: StatusName(st)}
}
