package train

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"testing"

	"github.com/slopeml/slope/ops"
	"github.com/slopeml/slope/ops/cpu"
)

// fakeDevice is an ops.DeviceGradBackend whose "device memory" is a set
// of copies of the Params: each step runs the CPU backend's GradStep with
// its Params' Value, Grad and transpose mask swapped for the device's
// copies, so the host's Params change only through the optimizer's Load
// and Store. The arithmetic is the CPU trainer's, so a trainer on it must
// end bit-identical to one on the CPU; a path that reads or writes stale
// host or device state does not.
type fakeDevice struct {
	cpu *ops.CPUGrad
	mem map[*ops.Param]*fakeParam
	// hostMasks makes RefreshMasks refuse (ErrUnsupported): the trainer
	// then refreshes on the host.
	hostMasks bool
	// failOpt makes NewOptimizer fail (out of device memory).
	failOpt bool
	opts    int // open optimizers
	// live counts the tensors acquired and not released, peak its most.
	live, peak int
	loads      int // Load calls
}

type fakeParam struct {
	val, grad, m, v []float32
	tmask           []byte
}

type fakeTensor struct{ v *ops.Value }

func (t *fakeTensor) Rows() int { return t.v.Rows }
func (t *fakeTensor) Dim() int  { return t.v.Dim }

func newFakeDevice() *fakeDevice {
	return &fakeDevice{cpu: ops.NewCPUGrad(), mem: map[*ops.Param]*fakeParam{}}
}

func (f *fakeDevice) Name() string                         { return "fake-device" }
func (f *fakeDevice) Bind(b ops.Binding) (ops.Step, error) { return f.cpu.Bind(b) }
func (f *fakeDevice) Do(fn func() error) error             { return fn() }
func (f *fakeDevice) Begin(*ops.Call) error                { return nil }
func (f *fakeDevice) Release(ops.Tensor)                   { f.live-- }
func (f *fakeDevice) Acquire(rows, dim int) (ops.Tensor, error) {
	f.live++
	f.peak = max(f.peak, f.live)
	return &fakeTensor{&ops.Value{Rows: rows, Dim: dim, Data: make([]float32, rows*dim)}}, nil
}
func (f *fakeDevice) GatherRows(dst, src ops.Tensor, rows []int) error {
	return errors.New("fake device: GatherRows")
}
func (f *fakeDevice) Download(t ops.Tensor, out *ops.Value) error {
	v := t.(*fakeTensor).v
	out.Rows, out.Dim, out.Data = v.Rows, v.Dim, slices.Clone(v.Data)
	return nil
}
func (f *fakeDevice) NewCache(batch, maxLen int) (ops.DeviceCache, error) {
	return nil, errors.New("fake device: no cache")
}
func (f *fakeDevice) Zero(t ops.Tensor) error {
	clear(t.(*fakeTensor).v.Data)
	return nil
}

func (f *fakeDevice) CrossEntropy(logits ops.Tensor, targets []int32, scale float64, grad bool, loss []float64) error {
	y := logits.(*fakeTensor).v
	e := make([]float32, y.Dim)
	for r, tg := range targets {
		row := y.Row(r)
		if tg < 0 {
			loss[r] = 0
			if grad {
				clear(row)
			}
			continue
		}
		loss[r] = crossEntropyRow(e, row, int(tg), scale, grad)
		if grad {
			copy(row, e)
		}
	}
	return nil
}

func (f *fakeDevice) BindGrad(b ops.Binding, ps ops.ParamStore) (ops.GradStep, error) {
	s, err := f.cpu.BindGrad(b, ps)
	if err != nil {
		return nil, err
	}
	return &fakeStep{GradStep: s, f: f}, nil
}

// swap exchanges the host Params' slices with the device's copies.
func (f *fakeDevice) swap(ps []*ops.Param) error {
	for _, p := range ps {
		d := f.mem[p]
		if d == nil {
			return fmt.Errorf("fake device: param %q has no device copy", p.Name)
		}
		p.Value, d.val = d.val, p.Value
		p.Grad, d.grad = d.grad, p.Grad
		if p.NM != nil {
			p.NM.TMask, d.tmask = d.tmask, p.NM.TMask
		}
	}
	return nil
}

func (f *fakeDevice) NewOptimizer(params []*ops.Param) (ops.DeviceOptimizer, error) {
	if f.failOpt {
		return nil, errors.New("fake device: out of memory")
	}
	for _, p := range params {
		if f.mem[p] == nil {
			n := len(p.Value)
			// NaN until Load: a pass before Load shows.
			d := &fakeParam{val: make([]float32, n), grad: make([]float32, n), m: make([]float32, n), v: make([]float32, n)}
			for i := range d.val {
				d.val[i] = float32(math.NaN())
			}
			f.mem[p] = d
		}
	}
	f.opts++
	return &fakeOpt{f: f, params: params}, nil
}

func (f *fakeDevice) ReleaseParams(params []*ops.Param) error {
	for _, p := range params {
		delete(f.mem, p)
	}
	return nil
}

type fakeStep struct {
	ops.GradStep
	f *fakeDevice
}

func values(ts []ops.Tensor) []*ops.Value {
	vs := make([]*ops.Value, len(ts))
	for i, t := range ts {
		if t != nil {
			vs[i] = t.(*fakeTensor).v
		}
	}
	return vs
}

func (s *fakeStep) ForwardDevice(c *ops.Call, in []ops.Tensor, out ops.Tensor) error {
	if err := s.f.swap(s.Params()); err != nil {
		return err
	}
	defer s.f.swap(s.Params())
	return s.Forward(c, values(in), out.(*fakeTensor).v)
}

func (s *fakeStep) BackwardDevice(c *ops.Call, in []ops.Tensor, out, gout ops.Tensor, gin []ops.Tensor) error {
	if err := s.f.swap(s.Params()); err != nil {
		return err
	}
	defer s.f.swap(s.Params())
	return s.Backward(c, values(in), out.(*fakeTensor).v, gout.(*fakeTensor).v, values(gin))
}

type fakeOpt struct {
	f        *fakeDevice
	params   []*ops.Param
	masksNew bool
}

func (o *fakeOpt) Load(m, v [][]float32) error {
	o.f.loads++
	for k, p := range o.params {
		d := o.f.mem[p]
		copy(d.val, p.Value)
		copy(d.m, m[k])
		copy(d.v, v[k])
		if p.NM != nil {
			d.tmask = slices.Clone(p.NM.TMask)
		}
	}
	return nil
}

func (o *fakeOpt) Store(m, v [][]float32) error {
	for k, p := range o.params {
		d := o.f.mem[p]
		copy(p.Value, d.val)
		copy(m[k], d.m)
		copy(v[k], d.v)
		if o.masksNew && p.NM != nil {
			p.NM.TMask = slices.Clone(d.tmask)
		}
	}
	o.masksNew = false
	return nil
}

func (o *fakeOpt) ZeroGrads() error {
	for _, p := range o.params {
		clear(o.f.mem[p].grad)
	}
	return nil
}

func (o *fakeOpt) SumSquares() (float64, error) {
	var ss float64
	for _, p := range o.params {
		ss += sumSquares(o.f.mem[p].grad, 1)
	}
	return ss, nil
}

func (o *fakeOpt) AdamW(k int, st cpu.AdamWStep) error {
	d := o.f.mem[o.params[k]]
	cpu.AdamW(d.val, d.grad, d.m, d.v, st)
	return nil
}

func (o *fakeOpt) RefreshMasks() error {
	if o.f.hostMasks {
		return fmt.Errorf("fake device: %w", ops.ErrUnsupported)
	}
	for _, p := range o.params {
		nm := p.NM
		if nm == nil || nm.Rows%nm.Pattern.M != 0 {
			continue
		}
		d := o.f.mem[p]
		keep, err := nm.MagnitudeTKeep(d.val)
		if err != nil {
			return err
		}
		tmp := *nm
		tmp.TMask = nil
		if err := tmp.SetTKeep(keep); err != nil {
			return err
		}
		d.tmask = tmp.TMask
		o.masksNew = true
	}
	return nil
}

func (o *fakeOpt) Close() error {
	o.f.opts--
	return nil
}

var _ ops.DeviceGradBackend = (*fakeDevice)(nil)

// TestDeviceTrainerMatchesCPU runs the trainer's device path (train/device.go)
// on fakeDevice against the CPU trainer: ten steps with a mask refresh
// every 3 steps (on the device, and on the host when the device refuses),
// lazy adapters from step 6, an evaluation, a checkpoint at step 5
// resumed on the other side, and gradient accumulation over 2
// micro-batches of unequal size. Everything must be bit-identical: losses,
// weights, transpose masks, moments and the checkpoints' bytes of state.
func TestDeviceTrainerMatchesCPU(t *testing.T) {
	for _, c := range []struct {
		hostMasks bool
		accum     int
	}{{false, 1}, {true, 1}, {false, 2}} {
		t.Run(fmt.Sprintf("hostMasks=%v,accum=%d", c.hostMasks, c.accum), func(t *testing.T) { deviceTrainerMatchesCPU(t, c.hostMasks, c.accum) })
	}
}

func deviceTrainerMatchesCPU(t *testing.T, hostMasks bool, accum int) {
	model := tinySlope(t)
	dir := t.TempDir()
	o := Options{LR: 1e-3, Clip: 0.5, MaskRefresh: 3, Threads: 2, TotalSteps: 10, WarmupSteps: 2, Rank: 2, AdapterStart: 6, Seed: 7, Accum: accum}
	cpuT := openTrainer(t, model, o)
	fd := newFakeDevice()
	fd.hostMasks = hostMasks
	od := o
	od.Backend = fd
	devT, err := New(model, od) // closed below, where the release is checked
	if err != nil {
		t.Fatal(err)
	}
	if !devT.OnDevice() || cpuT.OnDevice() {
		t.Fatalf("OnDevice: %v on the fake device, %v on the CPU", devT.OnDevice(), cpuT.OnDevice())
	}
	rng := rand.New(rand.NewPCG(7, 8))
	batches := make([][][]int32, 10)
	for i := range batches {
		batches[i] = randBatch(rng, cpuT.Vocab(), 3, 9)
	}
	for step := 1; step <= 10; step++ {
		lc, err := cpuT.Step(batches[step-1])
		if err != nil {
			t.Fatal(err)
		}
		ld, err := devT.Step(batches[step-1])
		if err != nil {
			t.Fatalf("device step %d: %v", step, err)
		}
		if lc != ld {
			t.Fatalf("step %d: loss %v on the device, %v on the CPU", step, ld, lc)
		}
		if step == 4 {
			ec, err := cpuT.Eval(batches[0])
			if err != nil {
				t.Fatal(err)
			}
			ed, err := devT.Eval(batches[0])
			if err != nil || ed != ec {
				t.Fatalf("eval: %v (%v) on the device, %v on the CPU", ed, err, ec)
			}
		}
		if step == 5 {
			for _, c := range []struct {
				tr   *Trainer
				name string
			}{{cpuT, "cpu5.slope"}, {devT, "dev5.slope"}} {
				if err := c.tr.Save(filepath.Join(dir, c.name)); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	if err := devT.SyncHost(); err != nil {
		t.Fatal(err)
	}
	sameState(t, cpuT, devT)
	// Loads: the first pass, the rebinding for the adapters (step 6) and,
	// with host refreshes, the passes after steps 3 and 9 (6 shares the
	// adapters' load).
	// Every tensor went back, and a value's gradient as soon as it was
	// dead: never all values and all gradients at once.
	if fd.live != 0 || fd.peak >= 3*len(devT.dims)/2 {
		t.Errorf("%d tensors not given back; at most %d held at once for %d values", fd.live, fd.peak, len(devT.dims))
	}
	if want := map[bool]int{false: 2, true: 4}[hostMasks]; fd.loads != want {
		t.Errorf("%d loads to the device, want %d", fd.loads, want)
	}

	// Crossed resumes: the device's checkpoint on the CPU and the CPU's on
	// the device continue to the same state.
	for _, c := range []struct {
		ckpt    string
		backend ops.GradBackend
	}{{"dev5.slope", nil}, {"cpu5.slope", fd}} {
		or := o
		or.Backend = c.backend
		tr, err := Resume(filepath.Join(dir, c.ckpt), or)
		if err != nil {
			t.Fatal(err)
		}
		stepAll(t, tr, batches[5:])
		if err := tr.SyncHost(); err != nil {
			t.Fatal(err)
		}
		sameState(t, cpuT, tr)
		if err := tr.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if fd.opts != 1 {
		t.Errorf("%d device optimizers open, want 1 (the device trainer's)", fd.opts)
	}
	if err := devT.Close(); err != nil {
		t.Fatal(err)
	}
	if fd.opts != 0 || len(fd.mem) != 0 {
		t.Errorf("after Close: %d optimizers open, %d params on the device", fd.opts, len(fd.mem))
	}
}

// TestDeviceSetupFailureReleases: when the device cannot hold the state,
// New fails and leaves nothing on the device.
func TestDeviceSetupFailureReleases(t *testing.T) {
	fd := newFakeDevice()
	fd.failOpt = true
	// The fake's BindGrad puts nothing on the device; count what the
	// trainer asks it to release by giving it copies first.
	model := tinySlope(t)
	store := map[*ops.Param]bool{}
	rel := &releaseSpy{fakeDevice: fd, released: store}
	_, err := New(model, Options{Backend: rel})
	if err == nil {
		t.Fatal("New succeeded without device state")
	}
	if len(rel.bound) == 0 || len(rel.bound) != len(store) {
		t.Fatalf("%d params bound, %d released", len(rel.bound), len(store))
	}
	for p := range rel.bound {
		if !store[p] {
			t.Fatalf("param %q bound but not released", p.Name)
		}
	}
}

// releaseSpy records the Params its steps bind and those released.
type releaseSpy struct {
	*fakeDevice
	bound    map[*ops.Param]bool
	released map[*ops.Param]bool
}

func (r *releaseSpy) BindGrad(b ops.Binding, ps ops.ParamStore) (ops.GradStep, error) {
	s, err := r.fakeDevice.BindGrad(b, ps)
	if err == nil {
		if r.bound == nil {
			r.bound = map[*ops.Param]bool{}
		}
		for _, p := range s.Params() {
			r.bound[p] = true
		}
	}
	return s, err
}

func (r *releaseSpy) ReleaseParams(params []*ops.Param) error {
	for _, p := range params {
		r.released[p] = true
	}
	return nil
}
