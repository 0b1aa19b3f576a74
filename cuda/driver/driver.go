// Package driver binds the CUDA driver API through purego (no cgo) and
// runs all CUDA work of a device on one goroutine locked to its OS thread.
//
// A CUDA context is current on an OS thread, not on a goroutine: calls
// made from another thread fail with CUDA_ERROR_INVALID_CONTEXT. A Device
// therefore owns a worker goroutine that locked its thread and made the
// device's primary context current there; Do runs a function on it and
// waits. Every method of Device, Module and Event that touches the GPU,
// and every call into cuBLASLt and cuSPARSELt, must run inside Do (the
// methods check this and return ErrThread otherwise).
//
// Every failing call becomes an *Error naming the call and CUDA's status
// name (e.g. "cuMemAlloc_v2: CUDA_ERROR_OUT_OF_MEMORY (2)").
package driver

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/slopeml/slope/cuda/dl"
)

// Ptr is a device address (CUdeviceptr).
type Ptr uintptr

// Add offsets p by bytes.
func (p Ptr) Add(bytes int) Ptr { return p + Ptr(bytes) }

// Stream is a CUstream; 0 is the legacy default stream.
type Stream uintptr

// ErrThread is returned by a method called outside Do.
var ErrThread = errors.New("CUDA call outside Device.Do")

// ErrNoDevice wraps every reason a device cannot be opened: no library,
// no driver, no GPU.
var ErrNoDevice = errors.New("no CUDA device")

// Error is a failed CUDA call.
type Error struct {
	Call   string
	Status int32
	Name   string
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s: %s (%d)", e.Call, e.Name, e.Status)
}

// Status codes used by callers.
const (
	StatusOutOfMemory  = 2
	StatusInvalidValue = 1
)

type api struct {
	cuInit                       func(flags uint32) int32
	cuDriverGetVersion           func(v *int32) int32
	cuDeviceGetCount             func(n *int32) int32
	cuDeviceGet                  func(dev *int32, ordinal int32) int32
	cuDeviceGetName              func(name *byte, n int32, dev int32) int32
	cuDeviceGetAttribute         func(v *int32, attr int32, dev int32) int32
	cuDeviceTotalMem_v2          func(b *uint64, dev int32) int32
	cuDevicePrimaryCtxRetain     func(ctx *uintptr, dev int32) int32
	cuDevicePrimaryCtxRelease_v2 func(dev int32) int32
	cuCtxSetCurrent              func(ctx uintptr) int32
	cuCtxSynchronize             func() int32
	cuMemAlloc_v2                func(p *Ptr, bytes uint64) int32
	cuMemFree_v2                 func(p Ptr) int32
	cuMemGetInfo_v2              func(free, total *uint64) int32
	cuMemcpyHtoD_v2              func(dst Ptr, src unsafe.Pointer, bytes uint64) int32
	cuMemcpyDtoH_v2              func(dst unsafe.Pointer, src Ptr, bytes uint64) int32
	cuMemcpyDtoD_v2              func(dst, src Ptr, bytes uint64) int32
	cuMemcpyHtoDAsync_v2         func(dst Ptr, src unsafe.Pointer, bytes uint64, s Stream) int32
	cuMemcpyDtoDAsync_v2         func(dst, src Ptr, bytes uint64, s Stream) int32
	cuMemsetD8_v2                func(dst Ptr, v uint8, n uint64) int32
	cuMemcpy2DAsync_v2           func(p *memcpy2D, s Stream) int32
	cuMemsetD32_v2               func(dst Ptr, v uint32, n uint64) int32
	cuModuleLoadDataEx           func(m *uintptr, image unsafe.Pointer, n uint32, opts *int32, vals *uintptr) int32
	cuModuleGetFunction          func(f *uintptr, m uintptr, name string) int32
	cuModuleUnload               func(m uintptr) int32
	cuFuncSetAttribute           func(f uintptr, attr int32, v int32) int32
	cuLaunchKernel               func(f uintptr, gx, gy, gz, bx, by, bz, shared uint32, s Stream, params *uintptr, extra *uintptr) int32
	cuStreamCreate               func(s *Stream, flags uint32) int32
	cuStreamDestroy_v2           func(s Stream) int32
	cuStreamSynchronize          func(s Stream) int32
	cuEventCreate                func(e *uintptr, flags uint32) int32
	cuEventDestroy_v2            func(e uintptr) int32
	cuEventRecord                func(e uintptr, s Stream) int32
	cuEventSynchronize           func(e uintptr) int32
	cuEventElapsedTime           func(ms *float32, start, end uintptr) int32
	cuGetErrorName               func(status int32, s *uintptr) int32
	cuStreamBeginCapture_v2      func(s Stream, mode int32) int32
	cuStreamEndCapture           func(s Stream, g *uintptr) int32
	cuGraphInstantiateWithFlags  func(exec *uintptr, g uintptr, flags uint64) int32
	cuGraphLaunch                func(exec uintptr, s Stream) int32
	cuGraphExecDestroy           func(exec uintptr) int32
	cuGraphDestroy               func(g uintptr) int32
}

// cudaAPI is the driver library, bound once per process.
var cudaAPI = dl.API[api]{Spec: dl.CUDA, Table: func(a *api) map[string]any {
	return map[string]any{
		"cuInit": &a.cuInit, "cuDriverGetVersion": &a.cuDriverGetVersion,
		"cuDeviceGetCount": &a.cuDeviceGetCount, "cuDeviceGet": &a.cuDeviceGet,
		"cuDeviceGetName": &a.cuDeviceGetName, "cuDeviceGetAttribute": &a.cuDeviceGetAttribute,
		"cuDeviceTotalMem_v2": &a.cuDeviceTotalMem_v2, "cuDevicePrimaryCtxRetain": &a.cuDevicePrimaryCtxRetain,
		"cuDevicePrimaryCtxRelease_v2": &a.cuDevicePrimaryCtxRelease_v2, "cuCtxSetCurrent": &a.cuCtxSetCurrent,
		"cuCtxSynchronize": &a.cuCtxSynchronize, "cuMemAlloc_v2": &a.cuMemAlloc_v2, "cuMemFree_v2": &a.cuMemFree_v2,
		"cuMemGetInfo_v2": &a.cuMemGetInfo_v2, "cuMemcpyHtoD_v2": &a.cuMemcpyHtoD_v2,
		"cuMemcpyDtoH_v2": &a.cuMemcpyDtoH_v2, "cuMemcpyDtoD_v2": &a.cuMemcpyDtoD_v2,
		"cuMemcpyHtoDAsync_v2": &a.cuMemcpyHtoDAsync_v2, "cuMemcpyDtoDAsync_v2": &a.cuMemcpyDtoDAsync_v2,
		"cuMemsetD8_v2": &a.cuMemsetD8_v2, "cuMemcpy2DAsync_v2": &a.cuMemcpy2DAsync_v2, "cuMemsetD32_v2": &a.cuMemsetD32_v2,
		"cuModuleLoadDataEx": &a.cuModuleLoadDataEx, "cuModuleGetFunction": &a.cuModuleGetFunction,
		"cuModuleUnload": &a.cuModuleUnload, "cuFuncSetAttribute": &a.cuFuncSetAttribute,
		"cuLaunchKernel": &a.cuLaunchKernel, "cuStreamCreate": &a.cuStreamCreate,
		"cuStreamDestroy_v2": &a.cuStreamDestroy_v2, "cuStreamSynchronize": &a.cuStreamSynchronize,
		"cuEventCreate": &a.cuEventCreate, "cuEventDestroy_v2": &a.cuEventDestroy_v2,
		"cuEventRecord": &a.cuEventRecord, "cuEventSynchronize": &a.cuEventSynchronize,
		"cuEventElapsedTime": &a.cuEventElapsedTime, "cuGetErrorName": &a.cuGetErrorName,
		"cuStreamBeginCapture_v2": &a.cuStreamBeginCapture_v2, "cuStreamEndCapture": &a.cuStreamEndCapture,
		"cuGraphInstantiateWithFlags": &a.cuGraphInstantiateWithFlags, "cuGraphLaunch": &a.cuGraphLaunch,
		"cuGraphExecDestroy": &a.cuGraphExecDestroy, "cuGraphDestroy": &a.cuGraphDestroy,
	}
}}

// load binds the driver; errors wrap ErrNoDevice.
func load() (*api, error) {
	a, err := cudaAPI.Load()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNoDevice, err)
	}
	return a, nil
}

// check turns a status into an *Error naming call.
func (a *api) check(call string, st int32) error {
	if st == 0 {
		return nil
	}
	name := "CUDA_ERROR_UNKNOWN"
	var p uintptr
	if a.cuGetErrorName(st, &p) == 0 && p != 0 {
		name = CString(p)
	}
	return &Error{Call: call, Status: st, Name: name}
}

// CString copies a NUL-terminated C string.
func CString(p uintptr) string {
	if p == 0 {
		return ""
	}
	// Convert through memory: the address is C memory, not a Go pointer.
	base := *(*unsafe.Pointer)(unsafe.Pointer(&p))
	var b []byte
	for i := 0; i < 4096; i++ {
		c := *(*byte)(unsafe.Add(base, i))
		if c == 0 {
			break
		}
		b = append(b, c)
	}
	return string(b)
}

// Info describes a device.
type Info struct {
	Ordinal        int
	Name           string
	Major, Minor   int // compute capability
	SMs            int
	L2Bytes        int
	MaxSharedOptin int
	TotalMem       uint64
	DriverVersion  int
	Library        string
}

func (i Info) String() string {
	return fmt.Sprintf("%s (sm_%d%d, %d SMs, %.1f GiB, L2 %d MiB, driver %d.%d, %s)", i.Name, i.Major, i.Minor, i.SMs,
		float64(i.TotalMem)/(1<<30), i.L2Bytes>>20, i.DriverVersion/1000, i.DriverVersion%1000/10, i.Library)
}

// Device is one GPU with its primary context and worker thread.
type Device struct {
	Info
	a      *api
	dev    int32
	ctx    uintptr
	jobs   chan func()
	done   chan struct{}
	inside bool // set while a Do function runs (read only on the worker)
	// thread is the worker's OS thread id (0: unknown), set before the
	// first job; the worker goroutine is locked to that thread and no
	// other goroutine runs on it, so a Do from that thread is a nested one.
	thread int
	// closeMu is read-held by Do while it hands a job over, so Close
	// never closes jobs under a send; stopped is set under its write lock
	// (and read without it for the early checks).
	closeMu sync.RWMutex
	stopped atomic.Bool
	// launch argument arena (used only on the worker thread)
	argv [64]uint64
	argp [64]uintptr
}

// Available reports whether a CUDA device can be opened, and why not.
func Available() error {
	d, err := Open(0)
	if err != nil {
		return err
	}
	return d.Close()
}

// Open starts the worker for GPU ordinal and makes its primary context
// current there. Errors wrap ErrNoDevice when there is no usable GPU.
func Open(ordinal int) (*Device, error) {
	a, err := load()
	if err != nil {
		return nil, err
	}
	d := &Device{a: a, jobs: make(chan func()), done: make(chan struct{})}
	d.Library = cudaAPI.Path()
	started := make(chan error, 1)
	go d.loop(ordinal, started)
	if err := <-started; err != nil {
		return nil, err
	}
	return d, nil
}

func (d *Device) loop(ordinal int, started chan<- error) {
	runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
	defer close(d.done)
	d.thread = threadID()
	a := d.a
	err := func() error {
		if err := a.check("cuInit", a.cuInit(0)); err != nil {
			return fmt.Errorf("%w: %w", ErrNoDevice, err)
		}
		var n int32
		if err := a.check("cuDeviceGetCount", a.cuDeviceGetCount(&n)); err != nil {
			return fmt.Errorf("%w: %w", ErrNoDevice, err)
		}
		if ordinal < 0 || int(ordinal) >= int(n) {
			return fmt.Errorf("%w: GPU %d asked for, %d present", ErrNoDevice, ordinal, n)
		}
		if err := a.check("cuDeviceGet", a.cuDeviceGet(&d.dev, int32(ordinal))); err != nil {
			return err
		}
		if err := a.check("cuDevicePrimaryCtxRetain", a.cuDevicePrimaryCtxRetain(&d.ctx, d.dev)); err != nil {
			return err
		}
		if err := a.check("cuCtxSetCurrent", a.cuCtxSetCurrent(d.ctx)); err != nil {
			return err
		}
		return d.readInfo(ordinal)
	}()
	started <- err
	if err != nil {
		return
	}
	for job := range d.jobs {
		job()
	}
	a.cuCtxSynchronize()
	a.cuDevicePrimaryCtxRelease_v2(d.dev)
}

func (d *Device) readInfo(ordinal int) error {
	a := d.a
	d.Ordinal = ordinal
	var name [256]byte
	if err := a.check("cuDeviceGetName", a.cuDeviceGetName(&name[0], int32(len(name)), d.dev)); err != nil {
		return err
	}
	d.Name = CString(uintptr(unsafe.Pointer(&name[0])))
	attr := func(id int32) int {
		var v int32
		a.cuDeviceGetAttribute(&v, id, d.dev)
		return int(v)
	}
	d.Major, d.Minor = attr(75), attr(76)
	d.SMs, d.L2Bytes, d.MaxSharedOptin = attr(16), attr(38), attr(97)
	var v int32
	a.cuDriverGetVersion(&v)
	d.DriverVersion = int(v)
	return a.check("cuDeviceTotalMem_v2", a.cuDeviceTotalMem_v2(&d.TotalMem, d.dev))
}

// Do runs fn on the device's thread and returns its error. A Do from
// inside fn (on the device's thread) returns an error instead of
// deadlocking; so does a Do on a closed device. Do and Close may be
// called from any goroutines at once.
func (d *Device) Do(fn func() error) error {
	if d.stopped.Load() {
		return fmt.Errorf("device %d is closed", d.Ordinal)
	}
	// The worker's thread id is unique while the worker runs (it runs
	// until Close, checked just above: after that the id may be reused).
	if t := threadID(); t != 0 && t == d.thread {
		return errors.New("Device.Do called inside Device.Do (run the inner work directly)")
	}
	d.closeMu.RLock()
	if d.stopped.Load() {
		d.closeMu.RUnlock()
		return fmt.Errorf("device %d is closed", d.Ordinal)
	}
	errc := make(chan error, 1)
	d.jobs <- func() {
		d.inside = true
		defer func() {
			d.inside = false
			if r := recover(); r != nil {
				errc <- fmt.Errorf("panic on the CUDA thread: %v", r)
			}
		}()
		errc <- fn()
	}
	d.closeMu.RUnlock()
	return <-errc
}

// Close waits for the jobs handed over, synchronizes, releases the
// context and stops the worker. Device memory not freed is released with
// the context. Closing twice is a no-op; closing inside Do is an error.
func (d *Device) Close() error {
	if d.stopped.Load() {
		<-d.done
		return nil
	}
	if t := threadID(); t != 0 && t == d.thread {
		return errors.New("Device.Close called inside Device.Do")
	}
	d.closeMu.Lock()
	if !d.stopped.Load() {
		d.stopped.Store(true)
		close(d.jobs)
	}
	d.closeMu.Unlock()
	<-d.done // every Close returns once the worker is gone
	return nil
}

func (d *Device) guard(call string) error {
	if !d.inside {
		return fmt.Errorf("%s: %w", call, ErrThread)
	}
	return nil
}

// Check converts a status from another CUDA library loaded beside the
// driver into an error; libraries use their own names (see blaslt,
// sparselt), this is for driver statuses.
func (d *Device) check(call string, st int32) error { return d.a.check(call, st) }

// Alloc allocates bytes of device memory (at least 1).
func (d *Device) Alloc(bytes int) (Ptr, error) {
	if err := d.guard("cuMemAlloc_v2"); err != nil {
		return 0, err
	}
	var p Ptr
	err := d.check("cuMemAlloc_v2", d.a.cuMemAlloc_v2(&p, uint64(max(bytes, 1))))
	if err != nil {
		return 0, fmt.Errorf("%d bytes: %w", bytes, err)
	}
	return p, nil
}

// Free releases p (0 is ignored).
func (d *Device) Free(p Ptr) error {
	if p == 0 {
		return nil
	}
	if err := d.guard("cuMemFree_v2"); err != nil {
		return err
	}
	return d.check("cuMemFree_v2", d.a.cuMemFree_v2(p))
}

// MemInfo returns free and total device memory.
func (d *Device) MemInfo() (free, total uint64, err error) {
	if err := d.guard("cuMemGetInfo_v2"); err != nil {
		return 0, 0, err
	}
	err = d.check("cuMemGetInfo_v2", d.a.cuMemGetInfo_v2(&free, &total))
	return
}

// CopyIn copies host bytes to dst (synchronous: the bytes are on the
// device when it returns). From pageable memory cuMemcpyHtoD may return
// before its DMA has landed, and kernels on a non-blocking stream do not
// wait for the legacy stream it ran on: CopyIn waits for that stream.
func (d *Device) CopyIn(dst Ptr, src unsafe.Pointer, bytes int) error {
	if bytes == 0 {
		return nil
	}
	if err := d.guard("cuMemcpyHtoD_v2"); err != nil {
		return err
	}
	if err := d.check("cuMemcpyHtoD_v2", d.a.cuMemcpyHtoD_v2(dst, src, uint64(bytes))); err != nil {
		return err
	}
	return d.check("cuStreamSynchronize", d.a.cuStreamSynchronize(0))
}

// CopyOut copies device bytes to host memory (synchronous).
func (d *Device) CopyOut(dst unsafe.Pointer, src Ptr, bytes int) error {
	if bytes == 0 {
		return nil
	}
	if err := d.guard("cuMemcpyDtoH_v2"); err != nil {
		return err
	}
	return d.check("cuMemcpyDtoH_v2", d.a.cuMemcpyDtoH_v2(dst, src, uint64(bytes)))
}

// CopyDevice copies bytes between device buffers on stream s.
func (d *Device) CopyDevice(dst, src Ptr, bytes int, s Stream) error {
	if bytes == 0 {
		return nil
	}
	if err := d.guard("cuMemcpyDtoDAsync_v2"); err != nil {
		return err
	}
	return d.check("cuMemcpyDtoDAsync_v2", d.a.cuMemcpyDtoDAsync_v2(dst, src, uint64(bytes), s))
}

// Memset32 sets n 32-bit words at dst to v.
func (d *Device) Memset32(dst Ptr, v uint32, n int) error {
	if n == 0 {
		return nil
	}
	if err := d.guard("cuMemsetD32_v2"); err != nil {
		return err
	}
	return d.check("cuMemsetD32_v2", d.a.cuMemsetD32_v2(dst, v, uint64(n)))
}

// Memset8 sets n bytes at dst to v.
func (d *Device) Memset8(dst Ptr, v uint8, n int) error {
	if n == 0 {
		return nil
	}
	if err := d.guard("cuMemsetD8_v2"); err != nil {
		return err
	}
	return d.check("cuMemsetD8_v2", d.a.cuMemsetD8_v2(dst, v, uint64(n)))
}

// Synchronize waits for all work of the context.
func (d *Device) Synchronize() error {
	if err := d.guard("cuCtxSynchronize"); err != nil {
		return err
	}
	return d.check("cuCtxSynchronize", d.a.cuCtxSynchronize())
}

// NewStream creates a non-blocking stream.
func (d *Device) NewStream() (Stream, error) {
	if err := d.guard("cuStreamCreate"); err != nil {
		return 0, err
	}
	var s Stream
	return s, d.check("cuStreamCreate", d.a.cuStreamCreate(&s, 1))
}

// DestroyStream releases s.
func (d *Device) DestroyStream(s Stream) error {
	if s == 0 {
		return nil
	}
	if err := d.guard("cuStreamDestroy_v2"); err != nil {
		return err
	}
	return d.check("cuStreamDestroy_v2", d.a.cuStreamDestroy_v2(s))
}

// SyncStream waits for s.
func (d *Device) SyncStream(s Stream) error {
	if err := d.guard("cuStreamSynchronize"); err != nil {
		return err
	}
	return d.check("cuStreamSynchronize", d.a.cuStreamSynchronize(s))
}

// memcpy2D is CUDA_MEMCPY2D (cuda.h): 16 eight-byte fields (the memory
// type enums padded to 8 bytes). The blank fields are ones Copy2D leaves
// zero (device to device, whole rows from the start).
type memcpy2D struct {
	_, _          uint64 // srcXInBytes, srcY
	srcMemoryType uint64
	_             uintptr // srcHost
	srcDevice     Ptr
	_             uintptr // srcArray
	srcPitch      uint64
	_, _          uint64 // dstXInBytes, dstY
	dstMemoryType uint64
	_             uintptr // dstHost
	dstDevice     Ptr
	_             uintptr // dstArray
	dstPitch      uint64
	widthInBytes  uint64
	height        uint64
}

// Copy2D copies height rows of widthBytes from src (rows srcPitch bytes
// apart) to dst (dstPitch apart), device to device, on s.
func (d *Device) Copy2D(dst Ptr, dstPitch int, src Ptr, srcPitch int, widthBytes, height int, s Stream) error {
	if widthBytes == 0 || height == 0 {
		return nil
	}
	if err := d.guard("cuMemcpy2DAsync_v2"); err != nil {
		return err
	}
	const memoryTypeDevice = 2 // CU_MEMORYTYPE_DEVICE
	p := &memcpy2D{srcMemoryType: memoryTypeDevice, srcDevice: src, srcPitch: uint64(srcPitch),
		dstMemoryType: memoryTypeDevice, dstDevice: dst, dstPitch: uint64(dstPitch),
		widthInBytes: uint64(widthBytes), height: uint64(height)}
	return d.check("cuMemcpy2DAsync_v2", d.a.cuMemcpy2DAsync_v2(p, s))
}
