package train

import (
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"slices"

	"google.golang.org/protobuf/proto"

	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/format/onnxpb"
	"github.com/slopeml/slope/format/slopepb"
	"github.com/slopeml/slope/ops"
)

// Lazy adapters (issue 6, the SLoPe step): when the step count reaches
// the adapter start, every SlopeLinear of the graph gains plain low-rank
// adapters L [in, r] (inputs 4) and R [r, out] (input 5) with output scale
// s: L is drawn from N(0, 1/in)·AdapterInitGain from (Seed, weight name),
// R = 0, so the model computes exactly what it computed before and the
// loss is continuous. The plan is re-bound over the modified graph; every
// existing Param is kept by name.

// Adapter defaults.
const (
	// DefaultAdapterStartFrac is SLoPe's: adapters for the final 1% of
	// the run.
	DefaultAdapterStartFrac = 0.99
	// DefaultAdapterScale is the output scale s of the adapters.
	DefaultAdapterScale = 1
	// AdapterInitGain scales the N(0, 1/in) draws of L.
	AdapterInitGain = 0.01
)

// Adapter factor name suffixes (convert's naming).
const (
	adapterLSuffix = ".adapter_l"
	adapterRSuffix = ".adapter_r"
)

// adapterStep is the resolved step at which adapters are added, or -1
// for never.
func (o Options) adapterStep() int {
	if o.Rank <= 0 && o.RankFrac <= 0 {
		return -1
	}
	switch {
	case o.AdapterStart < 0:
		return -1
	case o.AdapterStart > 0:
		return o.AdapterStart
	}
	frac := o.AdapterStartFrac
	if frac == 0 {
		frac = DefaultAdapterStartFrac
	}
	if o.TotalSteps <= 0 || frac >= 1 {
		return -1
	}
	// The first step s with s >= frac*TotalSteps, the product rounded to
	// 1e-9 first (0.57*100 is 56.99999999999999 in float64, and the run
	// means step 57), and at the latest the last step: a fraction in
	// (0, 1) always adds adapters.
	return min(int(math.Ceil(frac*float64(o.TotalSteps)-1e-9)), o.TotalSteps-1)
}

// AdapterStartStep is the step at which adapters are (or were) added; ok
// is false when the run adds none.
func (t *Trainer) AdapterStartStep() (step int, ok bool) {
	if t.adapterAt >= 0 {
		return t.adapterAt, true
	}
	s := t.o.adapterStep()
	return s, s >= 0
}

// AdaptersActive reports whether the graph has adapters.
func (t *Trainer) AdaptersActive() bool { return len(t.adapterNames) > 0 }

// overlay is the container's tensors plus the adapters added in memory.
type overlay struct {
	*format.File
	desc map[string]*slopepb.Tensor
	vals map[string]*ops.Param
}

func (w *overlay) Lookup(name string) (*slopepb.Tensor, error) {
	if d, ok := w.desc[name]; ok {
		return d, nil
	}
	return w.File.Lookup(name)
}

func (w *overlay) Dense(name string) ([]float32, error) {
	if p, ok := w.vals[name]; ok {
		return slices.Clone(p.Value), nil
	}
	return w.File.Dense(name)
}

func (w *overlay) NM(name string) (*format.NMView, error) {
	if _, ok := w.desc[name]; ok {
		return nil, fmt.Errorf("tensor %q is not NM: %w", name, ops.ErrUnsupported)
	}
	return w.File.NM(name)
}

func (w *overlay) Raw(name string) ([]byte, error) {
	if p, ok := w.vals[name]; ok {
		raw := make([]byte, 4*len(p.Value))
		if err := format.EncodeFloats(slopepb.DType_FLOAT32, p.Value, raw); err != nil {
			return nil, err
		}
		return raw, nil
	}
	return w.File.Raw(name)
}

// paramStore gives the in-memory adapters first, then the container's
// Params (created once, shared by name).
type paramStore struct {
	mem   *ops.MemParamStore
	extra map[string]*ops.Param
}

func (s *paramStore) Param(name string) (*ops.Param, error) {
	if p, ok := s.extra[name]; ok {
		return p, nil
	}
	return s.mem.Param(name)
}

// graphAdapters lists the adapter factor names that g's SlopeLinear
// nodes reference (inputs 4 and 5).
func graphAdapters(g *onnxpb.GraphProto) map[string]bool {
	names := map[string]bool{}
	for _, n := range g.GetNode() {
		if n.OpType != ops.OpSlopeLinear {
			continue
		}
		for _, i := range []int{4, 5} {
			if i < len(n.Input) && n.Input[i] != "" {
				names[n.Input[i]] = true
			}
		}
	}
	return names
}

// bind compiles t.graph over t.weights and orders the Params: the
// container's non-adapter Params in binding order, then the adapter
// factors in binding order (the order in which they were added), so that
// a resumed run sums and updates them exactly as the original did.
func (t *Trainer) bind() error {
	// A rebind (new adapters) starts from the host's state.
	if err := t.SyncHost(); err != nil {
		return err
	}
	var be ops.GradBackend = ops.NewCPUGrad()
	if t.o.Backend != nil {
		be = t.o.Backend
	}
	plan, err := ops.Compile(t.graph, t.weights, func(b ops.Binding) (ops.GradStep, error) {
		return be.BindGrad(b, t.pstore)
	})
	if err != nil {
		return err
	}
	t.plan, t.dims, t.logits = plan.Steps, plan.Dims, plan.Logits
	t.vocab = t.dims[t.logits]
	t.adapterNames = graphAdapters(t.graph)
	var base, ad []*ops.Param
	seen := map[*ops.Param]bool{}
	add := func(p *ops.Param) {
		if seen[p] {
			return
		}
		seen[p] = true
		if t.adapterNames[p.Name] {
			ad = append(ad, p)
		} else {
			base = append(base, p)
		}
	}
	for _, p := range t.store.All() {
		add(p)
	}
	for _, ps := range t.plan {
		for _, p := range ps.Step.Params() {
			add(p) // adapters from the overlay
		}
	}
	old := map[string]int{}
	for k, p := range t.params {
		old[p.Name] = k
	}
	params := append(base, ad...)
	m, v := make([][]float32, len(params)), make([][]float32, len(params))
	decay, born := make([]bool, len(params)), make([]int, len(params))
	for k, p := range params {
		if j, ok := old[p.Name]; ok {
			m[k], v[k], born[k] = t.m[j], t.v[j], t.born[j]
		} else {
			m[k], v[k] = make([]float32, len(p.Value)), make([]float32, len(p.Value))
		}
		decay[k] = len(p.Shape) == 2
	}
	t.params, t.m, t.v, t.decay, t.born = params, m, v, decay, born
	return t.bindDevice(be)
}

// adapterRank is the rank of the adapter of a weight [out, in].
func (t *Trainer) adapterRank(in, out int) int {
	r := t.o.Rank
	if r <= 0 {
		h := int(t.file.Manifest().GetArchitecture().GetOpt().GetHiddenSize())
		if h <= 0 {
			h = in
		}
		r = int(math.Round(t.o.RankFrac * float64(h)))
	}
	return max(1, min(r, in, out))
}

// adapterRNG draws weight's L: it depends only on the seed and the name.
func adapterRNG(seed uint64, weight string) *rand.Rand {
	h := fnv.New64a()
	h.Write([]byte(weight))
	return rand.New(rand.NewPCG(seed^0x5104e, h.Sum64()))
}

// AddAdapters adds plain adapters to every SlopeLinear that has none and
// re-binds the plan. The model's output is unchanged (R = 0). Step calls
// it when the step count reaches the adapter start.
func (t *Trainer) AddAdapters() error {
	if t.o.Rank <= 0 && t.o.RankFrac <= 0 {
		return errors.New("train: adapters need Rank or RankFrac")
	}
	g := proto.Clone(t.graph).(*onnxpb.GraphProto)
	scale := float32(t.o.AdapterScale)
	var added []string
	for i, n := range g.Node {
		if n.OpType != ops.OpSlopeLinear {
			continue
		}
		for len(n.Input) < 6 {
			n.Input = append(n.Input, "")
		}
		if n.Input[4] != "" || n.Input[5] != "" {
			continue
		}
		node := ops.NewNode(i, n)
		if mr, _ := node.Int("merged_rank", 0); mr != 0 {
			continue
		}
		w, err := t.pstore.Param(n.Input[1])
		if err != nil {
			return fmt.Errorf("train: adapter of node %q: %w", n.Name, err)
		}
		if w.NM == nil {
			return fmt.Errorf("train: adapter of node %q: weight %q is not N:M", n.Name, w.Name)
		}
		out, in := w.NM.Rows, w.NM.Cols
		r := t.adapterRank(in, out)
		lName, rName := w.Name+adapterLSuffix, w.Name+adapterRSuffix
		for _, nm := range []string{lName, rName} {
			if _, err := t.weights.Lookup(nm); err == nil {
				return fmt.Errorf("train: adapter tensor %q already exists", nm)
			}
		}
		l := make([]float32, in*r)
		rng := adapterRNG(t.o.Seed, w.Name)
		sd := AdapterInitGain / math.Sqrt(float64(in))
		for j := range l {
			l[j] = float32(sd * rng.NormFloat64())
		}
		for _, f := range []struct {
			name   string
			factor slopepb.AdapterParams_Factor
			shape  []int
			val    []float32
		}{
			{lName, slopepb.AdapterParams_L, []int{in, r}, l},
			{rName, slopepb.AdapterParams_R, []int{r, out}, make([]float32, r*out)},
		} {
			t.weights.desc[f.name] = &slopepb.Tensor{Name: f.name, Dtype: slopepb.DType_FLOAT32,
				Shape: []uint64{uint64(f.shape[0]), uint64(f.shape[1])}, Encoding: slopepb.Encoding_LOW_RANK,
				Adapter: &slopepb.AdapterParams{Weight: w.Name, Factor: f.factor, Scale: scale}}
			p := &ops.Param{Name: f.name, Value: f.val, Grad: make([]float32, len(f.val)), Shape: f.shape}
			t.weights.vals[f.name] = p
			t.pstore.extra[f.name] = p
			added = append(added, f.name)
		}
		n.Input[4], n.Input[5] = lName, rName
	}
	if len(added) == 0 {
		return nil
	}
	prev := t.graph
	t.graph = g
	if err := t.bind(); err != nil {
		t.graph = prev
		for _, nm := range added {
			delete(t.weights.desc, nm)
			delete(t.weights.vals, nm)
			delete(t.pstore.extra, nm)
		}
		if berr := t.bind(); berr != nil {
			return errors.Join(err, berr)
		}
		return fmt.Errorf("train: adding adapters: %w", err)
	}
	for k, p := range t.params {
		if t.adapterNames[p.Name] && slices.Contains(added, p.Name) {
			t.born[k] = t.step
		}
	}
	t.adapterAt = t.step
	return nil
}

// maybeAddAdapters adds the adapters once the step count reaches the
// adapter start.
func (t *Trainer) maybeAddAdapters() error {
	if t.AdaptersActive() {
		return nil
	}
	if s := t.o.adapterStep(); s >= 0 && t.step >= s {
		return t.AddAdapters()
	}
	return nil
}
