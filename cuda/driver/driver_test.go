package driver

import (
	"errors"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/slopeml/slope/cuda/gputest"
)

// openOrReport opens GPU 0. Without one the test fails when
// SLOPE_REQUIRE_GPU=1 (the GPU script sets it) and is skipped with the
// reason otherwise, so a run without a GPU never reports GPU checks as
// passed.
func openOrReport(t *testing.T) *Device {
	t.Helper()
	d, err := Open(0)
	if err != nil {
		gputest.Unavailable(t, err, ErrNoDevice)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func TestNoDeviceIsAnError(t *testing.T) {
	t.Setenv("SLOPE_LIBCUDA", "/nonexistent/libcuda.so.1")
	if _, err := load(); err == nil {
		t.Fatal("load succeeded with SLOPE_LIBCUDA pointing nowhere")
	}
	_, err := Open(0)
	if !errors.Is(err, ErrNoDevice) {
		t.Fatalf("Open without a driver: %v, want ErrNoDevice", err)
	}
}

func TestLaunchArgTypes(t *testing.T) {
	d := &Device{inside: true}
	err := d.Launch(&Function{Name: "k"}, D1(1), D1(1), 0, 0, 3)
	if err == nil || !contains(err.Error(), "argument 0 has Go type int") {
		t.Fatalf("plain int accepted: %v", err)
	}
}

func TestGuard(t *testing.T) {
	d := &Device{}
	if _, err := d.Alloc(4); !errors.Is(err, ErrThread) {
		t.Fatalf("Alloc outside Do: %v", err)
	}
}

func contains(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}

// TestGPURoundTrip copies through device memory and runs a PTX kernel.
func TestGPURoundTrip(t *testing.T) {
	d := openOrReport(t)
	t.Logf("device: %v", d.Info)
	const ptx = `
.version 7.0
.target sm_80
.address_size 64
.visible .entry add1(.param .u64 p, .param .u32 n, .param .f32 v)
{
	.reg .b32 %r<4>;
	.reg .b64 %rd<4>;
	.reg .f32 %f<3>;
	.reg .pred %p;
	ld.param.u64 %rd1, [p];
	ld.param.u32 %r1, [n];
	ld.param.f32 %f1, [v];
	mov.u32 %r2, %tid.x;
	setp.ge.u32 %p, %r2, %r1;
	@%p bra DONE;
	cvta.to.global.u64 %rd2, %rd1;
	mul.wide.u32 %rd3, %r2, 4;
	add.s64 %rd2, %rd2, %rd3;
	ld.global.f32 %f2, [%rd2];
	add.f32 %f2, %f2, %f1;
	st.global.f32 [%rd2], %f2;
DONE:
	ret;
}
`
	err := d.Do(func() error {
		m, err := d.LoadModule([]byte(ptx))
		if err != nil {
			return err
		}
		f, err := m.Function("add1")
		if err != nil {
			return err
		}
		host := []float32{1, 2, 3, 4, 5}
		p, err := d.Alloc(4 * len(host))
		if err != nil {
			return err
		}
		defer d.Free(p)
		if err := d.CopyIn(p, unsafe.Pointer(&host[0]), 4*len(host)); err != nil {
			return err
		}
		if err := d.Launch(f, D1(1), D1(32), 0, 0, p, uint32(len(host)), float32(0.5)); err != nil {
			return err
		}
		out := make([]float32, len(host))
		if err := d.CopyOut(unsafe.Pointer(&out[0]), p, 4*len(out)); err != nil {
			return err
		}
		for i := range out {
			if out[i] != host[i]+0.5 {
				t.Errorf("out[%d] = %v, want %v", i, out[i], host[i]+0.5)
			}
		}
		if _, err := m.Function("nope"); err == nil {
			t.Error("missing kernel found")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestMemcpy2DLayout: every field Copy2D sets sits at its CUDA_MEMCPY2D
// offset (cuda.h), and the struct has its 128 bytes.
func TestMemcpy2DLayout(t *testing.T) {
	var p memcpy2D
	got := []uintptr{unsafe.Offsetof(p.srcMemoryType), unsafe.Offsetof(p.srcDevice), unsafe.Offsetof(p.srcPitch),
		unsafe.Offsetof(p.dstMemoryType), unsafe.Offsetof(p.dstDevice), unsafe.Offsetof(p.dstPitch),
		unsafe.Offsetof(p.widthInBytes), unsafe.Offsetof(p.height), unsafe.Sizeof(p)}
	want := []uintptr{16, 32, 48, 72, 88, 104, 112, 120, 128}
	if !slices.Equal(got, want) {
		t.Fatalf("CUDA_MEMCPY2D layout: offsets of srcMemoryType, srcDevice, srcPitch, dstMemoryType, dstDevice, dstPitch, WidthInBytes, Height and the size %v, want %v", got, want)
	}
}

// fakeDevice is a Device whose worker runs jobs without CUDA, as loop
// does, so Do and Close can be tested on machines without a GPU.
func fakeDevice() *Device {
	d := &Device{jobs: make(chan func()), done: make(chan struct{})}
	started := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		defer close(d.done)
		d.thread = threadID()
		close(started)
		for job := range d.jobs {
			job()
		}
	}()
	<-started
	return d
}

// TestDoNestedAndClose: a Do (or Close) inside Do returns an error
// instead of deadlocking, and Do racing Close never panics: each Do runs
// its job or reports the device closed.
func TestDoNestedAndClose(t *testing.T) {
	d := fakeDevice()
	var inner, closeInside error
	if err := d.Do(func() error {
		inner = d.Do(func() error { return nil })
		closeInside = d.Close()
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if runtime.GOOS == "linux" && (inner == nil || closeInside == nil) {
		t.Fatalf("nested Do: %v, Close inside Do: %v; want errors", inner, closeInside)
	}

	var wg sync.WaitGroup
	var ran, refused atomic.Int64
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 50 {
				err := d.Do(func() error { ran.Add(1); return nil })
				if err != nil {
					if !strings.Contains(err.Error(), "closed") {
						t.Errorf("Do: %v", err)
					}
					refused.Add(1)
					return
				}
			}
		}()
	}
	time.Sleep(time.Millisecond)
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if err := d.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := d.Do(func() error { return nil }); err == nil {
		t.Fatal("Do after Close succeeded")
	}
	t.Logf("%d jobs ran, %d goroutines refused", ran.Load(), refused.Load())
}
