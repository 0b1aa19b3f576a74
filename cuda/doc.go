// Package cuda is the NVIDIA GPU backend of the runtime: kernels for the
// ai.slope ops (see package ops) using the CUDA driver API, cuBLASLt for
// dense matrix products and cuSPARSELt for 2:4 sparse ones.
//
// # Status
//
// Nothing is implemented yet; this file states the contract the package
// is built to. Everything below is planned.
//
// # Contract (planned)
//
// No cgo, no CUDA at build time. The package builds with CGO_ENABLED=0 on
// any platform and needs neither the CUDA toolkit nor a GPU to compile or
// to be linked into a binary. It loads libcuda, libcublasLt and
// libcusparseLt at run time with purego (dlopen), and reports their
// absence, or a missing symbol, driver or device, as an error from its
// constructor; the rest of the program keeps working with other backends.
//
// One locked OS thread. A CUDA context is bound to an OS thread, so every
// CUDA call of a backend instance runs on one goroutine locked to its
// thread (runtime.LockOSThread); other goroutines submit work to it and
// wait for the result. Callers never see thread affinity.
//
// Memory. Weights are uploaded once per loaded model; N:M weights are
// compressed into cuSPARSELt's layout at upload. Device memory is released
// by Close, and errors name the op, tensor and CUDA status.
package cuda
