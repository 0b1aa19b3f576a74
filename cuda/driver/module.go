package driver

import (
	"fmt"
	"math"
	"unsafe"
)

// Module is a loaded PTX or cubin image.
type Module struct {
	d      *Device
	handle uintptr
	funcs  map[string]*Function
}

// Function is a kernel of a Module.
type Function struct {
	Name   string
	handle uintptr
}

// LoadModule JIT-compiles a PTX image (or loads a cubin) for the device.
// The driver's error log is part of the error.
func (d *Device) LoadModule(image []byte) (*Module, error) {
	if err := d.guard("cuModuleLoadDataEx"); err != nil {
		return nil, err
	}
	img := make([]byte, len(image)+1) // NUL-terminated for PTX
	copy(img, image)
	log := make([]byte, 16<<10)
	opts := []int32{5, 6} // CU_JIT_ERROR_LOG_BUFFER, CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES
	vals := []uintptr{uintptr(unsafe.Pointer(&log[0])), uintptr(len(log))}
	var h uintptr
	st := d.a.cuModuleLoadDataEx(&h, unsafe.Pointer(&img[0]), uint32(len(opts)), &opts[0], &vals[0])
	if err := d.check("cuModuleLoadDataEx", st); err != nil {
		return nil, fmt.Errorf("%w: %s", err, CString(uintptr(unsafe.Pointer(&log[0]))))
	}
	return &Module{d: d, handle: h, funcs: map[string]*Function{}}, nil
}

// Function looks up a kernel by its (extern "C") name.
func (m *Module) Function(name string) (*Function, error) {
	if f := m.funcs[name]; f != nil {
		return f, nil
	}
	if err := m.d.guard("cuModuleGetFunction"); err != nil {
		return nil, err
	}
	var h uintptr
	if err := m.d.check("cuModuleGetFunction", m.d.a.cuModuleGetFunction(&h, m.handle, name)); err != nil {
		return nil, fmt.Errorf("kernel %s: %w", name, err)
	}
	f := &Function{Name: name, handle: h}
	m.funcs[name] = f
	return f, nil
}

// Unload releases the module.
func (m *Module) Unload() error {
	if err := m.d.guard("cuModuleUnload"); err != nil {
		return err
	}
	return m.d.check("cuModuleUnload", m.d.a.cuModuleUnload(m.handle))
}

// SetMaxDynamicShared raises f's dynamic shared memory limit.
func (d *Device) SetMaxDynamicShared(f *Function, bytes int) error {
	if err := d.guard("cuFuncSetAttribute"); err != nil {
		return err
	}
	// CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8
	return d.check("cuFuncSetAttribute", d.a.cuFuncSetAttribute(f.handle, 8, int32(bytes)))
}

// Dim3 is a grid or block size.
type Dim3 struct{ X, Y, Z uint32 }

// D1 is a one-dimensional Dim3.
func D1(x int) Dim3 { return Dim3{uint32(x), 1, 1} }

// Launch runs f. Each argument is passed by value according to its Go
// type: Ptr, uintptr, int64 and uint64 as 8 bytes; int32, uint32 and
// float32 as 4 bytes. Plain int is refused (its C width is ambiguous), as
// is any other type.
func (d *Device) Launch(f *Function, grid, block Dim3, sharedBytes int, s Stream, args ...any) error {
	if err := d.guard("cuLaunchKernel"); err != nil {
		return err
	}
	if len(args) > len(d.argv) {
		return fmt.Errorf("kernel %s: %d arguments, at most %d", f.Name, len(args), len(d.argv))
	}
	for i, a := range args {
		switch v := a.(type) {
		case Ptr:
			d.argv[i] = uint64(v)
		case uintptr:
			d.argv[i] = uint64(v)
		case int64:
			d.argv[i] = uint64(v)
		case uint64:
			d.argv[i] = v
		case int32:
			d.argv[i] = uint64(uint32(v))
		case uint32:
			d.argv[i] = uint64(v)
		case float32:
			d.argv[i] = uint64(math.Float32bits(v))
		case float64:
			d.argv[i] = math.Float64bits(v)
		default:
			return fmt.Errorf("kernel %s: argument %d has Go type %T; use Ptr, int32, uint32, int64, uint64, float32 or float64", f.Name, i, a)
		}
		// Little-endian: a 4-byte argument is the low half of its slot.
		d.argp[i] = uintptr(unsafe.Pointer(&d.argv[i]))
	}
	if grid.X == 0 || grid.Y == 0 || grid.Z == 0 {
		return nil // nothing to do
	}
	var params *uintptr
	if len(args) > 0 {
		params = &d.argp[0]
	}
	st := d.a.cuLaunchKernel(f.handle, grid.X, grid.Y, grid.Z, block.X, block.Y, block.Z, uint32(sharedBytes), s, params, nil)
	if err := d.check("cuLaunchKernel", st); err != nil {
		return fmt.Errorf("kernel %s grid %v block %v: %w", f.Name, grid, block, err)
	}
	return nil
}

// Event is a CUDA event for timing.
type Event struct {
	d      *Device
	handle uintptr
}

// NewEvent creates a timing event.
func (d *Device) NewEvent() (*Event, error) {
	if err := d.guard("cuEventCreate"); err != nil {
		return nil, err
	}
	var h uintptr
	if err := d.check("cuEventCreate", d.a.cuEventCreate(&h, 0)); err != nil {
		return nil, err
	}
	return &Event{d: d, handle: h}, nil
}

// Record records e on s.
func (e *Event) Record(s Stream) error {
	return e.d.check("cuEventRecord", e.d.a.cuEventRecord(e.handle, s))
}

// Synchronize waits for e.
func (e *Event) Synchronize() error {
	return e.d.check("cuEventSynchronize", e.d.a.cuEventSynchronize(e.handle))
}

// Since returns the milliseconds between start and e (both recorded and
// complete).
func (e *Event) Since(start *Event) (float32, error) {
	var ms float32
	err := e.d.check("cuEventElapsedTime", e.d.a.cuEventElapsedTime(&ms, start.handle, e.handle))
	return ms, err
}

// Destroy releases e.
func (e *Event) Destroy() error {
	return e.d.check("cuEventDestroy_v2", e.d.a.cuEventDestroy_v2(e.handle))
}

// Graph is an instantiated CUDA graph captured from a stream.
type Graph struct {
	d           *Device
	graph, exec uintptr
}

// Capture records the work fn enqueues on s (which must not be the legacy
// default stream) into a graph that Launch replays.
func (d *Device) Capture(s Stream, fn func() error) (*Graph, error) {
	if err := d.guard("cuStreamBeginCapture_v2"); err != nil {
		return nil, err
	}
	// CU_STREAM_CAPTURE_MODE_THREAD_LOCAL = 1
	if err := d.check("cuStreamBeginCapture_v2", d.a.cuStreamBeginCapture_v2(s, 1)); err != nil {
		return nil, err
	}
	ferr := fn()
	g := &Graph{d: d}
	if err := d.check("cuStreamEndCapture", d.a.cuStreamEndCapture(s, &g.graph)); err != nil || ferr != nil {
		if g.graph != 0 {
			d.a.cuGraphDestroy(g.graph)
		}
		if ferr != nil {
			return nil, fmt.Errorf("while capturing: %w", ferr)
		}
		return nil, err
	}
	if err := d.check("cuGraphInstantiateWithFlags", d.a.cuGraphInstantiateWithFlags(&g.exec, g.graph, 0)); err != nil {
		d.a.cuGraphDestroy(g.graph)
		return nil, err
	}
	return g, nil
}

// Launch replays the graph on s.
func (g *Graph) Launch(s Stream) error {
	return g.d.check("cuGraphLaunch", g.d.a.cuGraphLaunch(g.exec, s))
}

// Destroy releases the graph.
func (g *Graph) Destroy() error {
	err := g.d.check("cuGraphExecDestroy", g.d.a.cuGraphExecDestroy(g.exec))
	if e2 := g.d.check("cuGraphDestroy", g.d.a.cuGraphDestroy(g.graph)); err == nil {
		err = e2
	}
	return err
}
