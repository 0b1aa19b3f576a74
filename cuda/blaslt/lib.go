package blaslt

import (
	"fmt"
	"unsafe"

	"github.com/slopeml/slope/cuda/dl"
	"github.com/slopeml/slope/cuda/driver"
)

// api holds the bound cuBLASLt entry points. Handles, descriptors,
// layouts and preferences are C pointers (uintptr); statuses are
// cublasStatus_t (a C enum, int32).
type api struct {
	cublasLtCreate                       func(h *uintptr) int32
	cublasLtDestroy                      func(h uintptr) int32
	cublasLtGetVersion                   func() uint64
	cublasLtMatmulDescCreate             func(desc *uintptr, computeType int32, scaleType int32) int32
	cublasLtMatmulDescDestroy            func(desc uintptr) int32
	cublasLtMatmulDescSetAttribute       func(desc uintptr, attr int32, buf unsafe.Pointer, size uint64) int32
	cublasLtMatrixLayoutCreate           func(l *uintptr, typ int32, rows, cols uint64, ld int64) int32
	cublasLtMatrixLayoutDestroy          func(l uintptr) int32
	cublasLtMatrixLayoutSetAttribute     func(l uintptr, attr int32, buf unsafe.Pointer, size uint64) int32
	cublasLtMatmulPreferenceCreate       func(p *uintptr) int32
	cublasLtMatmulPreferenceDestroy      func(p uintptr) int32
	cublasLtMatmulPreferenceSetAttribute func(p uintptr, attr int32, buf unsafe.Pointer, size uint64) int32
	cublasLtMatmulAlgoGetHeuristic       func(h, desc, a, b, c, d, pref uintptr, requested int32, results *heuristicResult, returned *int32) int32
	// cublasLtMatmul has 16 arguments (purego allows 32).
	cublasLtMatmul func(h, desc uintptr, alpha unsafe.Pointer, a driver.Ptr, adesc uintptr, b driver.Ptr, bdesc uintptr,
		beta unsafe.Pointer, c driver.Ptr, cdesc uintptr, d driver.Ptr, ddesc uintptr, algo *matmulAlgo,
		workspace driver.Ptr, workspaceSize uint64, stream driver.Stream) int32
}

// libAPI is cuBLASLt, bound once per process.
var libAPI = dl.API[api]{Spec: dl.CuBLASLt, Table: func(a *api) map[string]any {
	return map[string]any{
		"cublasLtCreate":                       &a.cublasLtCreate,
		"cublasLtDestroy":                      &a.cublasLtDestroy,
		"cublasLtGetVersion":                   &a.cublasLtGetVersion,
		"cublasLtMatmulDescCreate":             &a.cublasLtMatmulDescCreate,
		"cublasLtMatmulDescDestroy":            &a.cublasLtMatmulDescDestroy,
		"cublasLtMatmulDescSetAttribute":       &a.cublasLtMatmulDescSetAttribute,
		"cublasLtMatrixLayoutCreate":           &a.cublasLtMatrixLayoutCreate,
		"cublasLtMatrixLayoutDestroy":          &a.cublasLtMatrixLayoutDestroy,
		"cublasLtMatrixLayoutSetAttribute":     &a.cublasLtMatrixLayoutSetAttribute,
		"cublasLtMatmulPreferenceCreate":       &a.cublasLtMatmulPreferenceCreate,
		"cublasLtMatmulPreferenceDestroy":      &a.cublasLtMatmulPreferenceDestroy,
		"cublasLtMatmulPreferenceSetAttribute": &a.cublasLtMatmulPreferenceSetAttribute,
		"cublasLtMatmulAlgoGetHeuristic":       &a.cublasLtMatmulAlgoGetHeuristic,
		"cublasLtMatmul":                       &a.cublasLtMatmul,
	}
}}

// load opens and binds cuBLASLt (see dl.API).
func load() (*api, error) { return libAPI.Load() }

// Version loads cuBLASLt (if needed) and returns cublasLtGetVersion(),
// e.g. 130100 for 13.1.0. It needs no GPU.
func Version() (int, error) {
	a, err := load()
	if err != nil {
		return 0, err
	}
	return int(a.cublasLtGetVersion()), nil
}

// Library returns the path cuBLASLt was loaded from ("" before a
// successful load).
func Library() string { return libAPI.Path() }

// statusNames maps cublasStatus_t values (cublas_api.h) to their names.
var statusNames = map[int32]string{
	0:  "CUBLAS_STATUS_SUCCESS",
	1:  "CUBLAS_STATUS_NOT_INITIALIZED",
	3:  "CUBLAS_STATUS_ALLOC_FAILED",
	7:  "CUBLAS_STATUS_INVALID_VALUE",
	8:  "CUBLAS_STATUS_ARCH_MISMATCH",
	11: "CUBLAS_STATUS_MAPPING_ERROR",
	13: "CUBLAS_STATUS_EXECUTION_FAILED",
	14: "CUBLAS_STATUS_INTERNAL_ERROR",
	15: "CUBLAS_STATUS_NOT_SUPPORTED",
	16: "CUBLAS_STATUS_LICENSE_ERROR",
}

// StatusName returns the cublasStatus_t name of st.
func StatusName(st int32) string {
	if n, ok := statusNames[st]; ok {
		return n
	}
	return fmt.Sprintf("CUBLAS_STATUS_UNKNOWN_%d", st)
}

// check turns a cuBLASLt status into a *driver.Error naming call, e.g.
// "cublasLtMatmul: CUBLAS_STATUS_NOT_SUPPORTED (15)".
func check(call string, st int32) error {
	if st == 0 {
		return nil
	}
	return &driver.Error{Call: call, Status: st, Name: StatusName(st)}
}
