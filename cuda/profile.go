package cuda

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"

	"github.com/slopeml/slope/cuda/driver"
	"github.com/slopeml/slope/ops"
)

// The GPU profile (Options.Profile; `slope train --gpu-profile`, `slope
// bench --gpu-profile`): CUDA events around each op's forward (per count
// of new tokens, so prefill and decode sum apart) and, in training, its
// backward, the parts of a training linear's products, the loss and the
// optimizer's stages, summed per label. It answers "where does a step's
// GPU time go" without a profiler on the machine. Recording the events
// costs host time, so a profiled run is a little slower than a plain one,
// and a span also holds the host's launch gaps inside it: small ops look
// slower than they run.

// profiler holds the spans recorded and not yet read, and the sums.
type profiler struct {
	dev     *driver.Device
	s       driver.Stream
	free    []*driver.Event
	pending []profSpan
	stack   []string // labels of the spans open now, outermost first
	totals  map[profKey]*profTotal
	// err: the first event call that failed; recording stops there and
	// the report says so.
	err error
}

// profKey names a sum: a span's label and that of the span around it
// ("" at the top).
type profKey struct{ parent, label string }

type profSpan struct {
	key        profKey
	start, end *driver.Event
}

type profTotal struct {
	calls int
	ms    float64
}

// profFlushAt is how many spans wait before their times are read (one
// wait on the stream per batch).
const profFlushAt = 1024

func newProfiler(dev *driver.Device, s driver.Stream) *profiler {
	return &profiler{dev: dev, s: s, totals: map[profKey]*profTotal{}}
}

// record returns an event recorded on the stream now.
func (p *profiler) record() (*driver.Event, error) {
	var e *driver.Event
	if n := len(p.free); n > 0 {
		e, p.free = p.free[n-1], p.free[:n-1]
	} else {
		var err error
		if e, err = p.dev.NewEvent(); err != nil {
			return nil, err
		}
	}
	if err := e.Record(p.s); err != nil {
		p.free = append(p.free, e)
		return nil, err
	}
	return e, nil
}

// timed runs fn between two events on the backend's stream and adds the
// GPU time between them to label's sum (under the span around it, if
// any). Without a profile it just runs fn. Call inside Do.
func (b *Backend) timed(label string, fn func() error) error {
	p := b.prof
	if p == nil || p.err != nil {
		return fn()
	}
	start, err := p.record()
	if err != nil {
		p.err = fmt.Errorf("profile: %w", err)
		return fn()
	}
	key := profKey{label: label}
	if n := len(p.stack); n > 0 {
		key.parent = p.stack[n-1]
	}
	p.stack = append(p.stack, label)
	ferr := fn()
	p.stack = p.stack[:len(p.stack)-1]
	end, err := p.record()
	if err != nil {
		p.free = append(p.free, start)
		p.err = fmt.Errorf("profile: %w", err)
		return ferr
	}
	p.pending = append(p.pending, profSpan{key: key, start: start, end: end})
	if len(p.pending) >= profFlushAt {
		p.flush()
	}
	return ferr
}

// flush waits for the pending spans and adds their times to the sums.
func (p *profiler) flush() {
	if len(p.pending) == 0 {
		return
	}
	defer func() {
		for _, sp := range p.pending {
			p.free = append(p.free, sp.start, sp.end)
		}
		p.pending = p.pending[:0]
	}()
	if p.err != nil {
		return
	}
	if err := p.pending[len(p.pending)-1].end.Synchronize(); err != nil {
		p.err = fmt.Errorf("profile: %w", err)
		return
	}
	for _, sp := range p.pending {
		ms, err := sp.end.Since(sp.start)
		if err != nil {
			p.err = fmt.Errorf("profile: %w", err)
			return
		}
		t := p.totals[sp.key]
		if t == nil {
			t = &profTotal{}
			p.totals[sp.key] = t
		}
		t.calls++
		t.ms += float64(ms)
	}
}

func (p *profiler) destroy() error {
	p.flush()
	var errs []error
	for _, e := range p.free {
		errs = append(errs, e.Destroy())
	}
	p.free = nil
	return errors.Join(errs...)
}

// Profiling reports whether this Backend records a profile
// (Options.Profile); false for a nil Backend.
func (b *Backend) Profiling() bool { return b != nil && b.prof != nil }

// ProfileReset drops the sums so far (say, those of a first step, which
// includes one-time set-up); without a profile (or a Backend) it does
// nothing.
func (b *Backend) ProfileReset() error {
	if !b.Profiling() {
		return nil
	}
	return b.dev.Do(func() error {
		b.prof.flush()
		clear(b.prof.totals)
		return b.prof.err
	})
}

// ProfileReport writes the profile's sums divided by n (> 0) units (a
// "step", a "run") as a tree: the top-level spans by time, each with the
// parts inside it.
func (b *Backend) ProfileReport(w io.Writer, n int, unit string) error {
	if b.prof == nil {
		return errors.New("cuda: no profile (Options.Profile)")
	}
	n = max(n, 1)
	var rows []profRow
	err := b.dev.Do(func() error {
		b.prof.flush()
		rows = profileRows(b.prof.totals)
		return b.prof.err
	})
	if err != nil {
		return err
	}
	var top float64
	for _, r := range rows {
		if r.depth == 0 {
			top += r.ms
		}
	}
	fmt.Fprintf(w, "GPU time per %s (CUDA events, mean of %d): %.3f ms in the spans below\n", unit, n, top/float64(n))
	fmt.Fprintf(w, "%10s %7s %8s  %s\n", "ms/"+unit, "share", "calls", "what")
	for _, r := range rows {
		share := ""
		if r.depth == 0 && top > 0 {
			share = fmt.Sprintf("%.1f%%", 100*r.ms/top)
		}
		fmt.Fprintf(w, "%10.3f %7s %8.1f  %*s%s\n", r.ms/float64(n), share, float64(r.calls)/float64(n), 2*r.depth, "", r.label)
	}
	return nil
}

type profRow struct {
	label string
	depth int
	calls int
	ms    float64
}

// profileRows orders the sums as a tree: children under their parent,
// siblings by time, most first. A label used under several parents
// appears under each.
func profileRows(totals map[profKey]*profTotal) []profRow {
	children := map[string][]profKey{}
	for k := range totals {
		children[k.parent] = append(children[k.parent], k)
	}
	for _, ks := range children {
		slices.SortFunc(ks, func(a, b profKey) int {
			return cmp.Or(cmp.Compare(totals[b].ms, totals[a].ms), cmp.Compare(a.label, b.label))
		})
	}
	var rows []profRow
	var walk func(parent string, depth int)
	walk = func(parent string, depth int) {
		if depth > 8 { // a label nested in itself
			return
		}
		for _, k := range children[parent] {
			t := totals[k]
			rows = append(rows, profRow{label: k.label, depth: depth, calls: t.calls, ms: t.ms})
			walk(k.label, depth+1)
		}
	}
	walk("", 0)
	return rows
}

// layerNumber matches the layer index in a node name.
var layerNumber = regexp.MustCompile(`\.\d+\.`)

// profileGroup names a node for the profile: its op type and name, with
// the layer index as * so that the layers sum together.
func profileGroup(opType, node string) string {
	return opType + " " + layerNumber.ReplaceAllString(node, ".*.")
}

// timedStep times an inference step's forward (Options.Profile), per count
// of new tokens.
type timedStep struct {
	deviceStep
	b     *Backend
	label string
}

func (s *timedStep) ForwardDevice(c *ops.Call, in []ops.Tensor, out ops.Tensor) error {
	return s.b.timed(fmt.Sprintf("%s forward, %d new tokens", s.label, c.Seq), func() error { return s.deviceStep.ForwardDevice(c, in, out) })
}

// timedGradStep times a training step's forward and backward (Options.Profile).
type timedGradStep struct {
	deviceGradStep
	b     *Backend
	label string
}

func (s *timedGradStep) ForwardDevice(c *ops.Call, in []ops.Tensor, out ops.Tensor) error {
	return s.b.timed(s.label+" forward", func() error { return s.deviceGradStep.ForwardDevice(c, in, out) })
}

func (s *timedGradStep) BackwardDevice(c *ops.Call, in []ops.Tensor, out, gout ops.Tensor, gin []ops.Tensor) error {
	return s.b.timed(s.label+" backward", func() error { return s.deviceGradStep.BackwardDevice(c, in, out, gout, gin) })
}
