package opstest

import (
	"math"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"testing"

	"github.com/slopeml/slope/convert"
	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/ops"
)

// gradModel checks whole-model gradients: the embedded tiny OPT (two
// decoder layers) converted to SLoPe 2:4 is bound as GradSteps; the
// gradient of L = Σ logits·r w.r.t. a few coordinates of every parameter
// is compared with central finite differences of a float64 interpreter of
// the graph written here (from the container's tensors, not the
// backend's Params). The transpose masks are set to keep everything for
// this check, so that SLoPe's input gradient is the true one.
func gradModel(t *testing.T, be ops.GradBackend) {
	fn := filepath.Join(t.TempDir(), "tiny.slope")
	if _, err := convert.DenseToSlope(t.Context(), convert.Options{In: convert.TinyLabel, Out: fn, NM: "2:4", DType: "fp32"}); err != nil {
		t.Fatal(err)
	}
	f, err := format.Open(fn, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	g := f.Manifest().GetGraph()
	rng := rand.New(rand.NewPCG(29, 1))

	// Bind every node as a GradStep over one store.
	store := ops.NewParamStore(f)
	type bound struct {
		node *ops.Node
		step ops.GradStep
		in   []string
	}
	var steps []bound
	dims := map[string]int{}
	nm := 0
	for i, n := range g.Node {
		node := ops.NewNode(i, n)
		acts, err := ops.ActivationInputs(n.OpType)
		if err != nil {
			t.Fatal(err)
		}
		b := bound{node: node}
		var inDims []int
		for _, a := range acts {
			b.in = append(b.in, node.Input(a))
			inDims = append(inDims, dims[node.Input(a)])
		}
		if b.step, err = be.BindGrad(ops.Binding{Node: node, InDims: inDims, W: f}, store); err != nil {
			t.Fatal(err)
		}
		dims[n.Output[0]] = b.step.OutDim()
		steps = append(steps, b)
		if n.OpType == ops.OpSlopeLinear {
			nm++
		}
	}
	if nm == 0 {
		t.Fatal("the converted model has no SlopeLinear")
	}
	params := map[string]*ops.Param{}
	for _, s := range steps {
		for _, p := range s.step.Params() {
			if q := params[p.Name]; q != nil && q != p {
				t.Fatalf("param %q is two Params", p.Name)
			}
			params[p.Name] = p
			if p.NM != nil {
				keep, err := p.NM.TKeepCopy()
				if err != nil {
					t.Fatal(err)
				}
				if !slices.Contains(keep, false) {
					t.Fatalf("param %q: the converted transpose mask drops nothing", p.Name)
				}
				for i := range keep {
					keep[i] = true
				}
				if err := p.NM.SetTKeep(keep); err != nil {
					t.Fatal(err)
				}
			}
		}
	}

	const batch, seq = 2, 5
	c := gradCall(batch, seq)
	c.Mask[seq], c.Mask[seq+1] = 0, 0 // row 1 left-padded by 2
	vocab := dims["logits"]
	for i := range c.IDs {
		c.IDs[i] = int32(rng.IntN(vocab))
	}
	rows := c.Rows()

	// Forward and backward through the steps.
	vals := map[string]*ops.Value{}
	for _, s := range steps {
		in := make([]*ops.Value, len(s.in))
		for i, n := range s.in {
			in[i] = vals[n]
		}
		d := s.step.OutDim()
		out := value(rows, d, make([]float32, rows*d))
		if err := s.step.Forward(c, in, out); err != nil {
			t.Fatalf("%s: %v", s.node.Name, err)
		}
		vals[s.node.Outputs[0]] = out
	}
	r := randn(rng, rows*vocab, 1)
	grads := map[string]*ops.Value{"logits": value(rows, vocab, slices.Clone(r))}
	for i := len(steps) - 1; i >= 0; i-- {
		s := steps[i]
		gout := grads[s.node.Outputs[0]]
		if gout == nil {
			t.Fatalf("%s: output unused", s.node.Name)
		}
		in := make([]*ops.Value, len(s.in))
		gin := make([]*ops.Value, len(s.in))
		for j, n := range s.in {
			in[j] = vals[n]
			if grads[n] == nil {
				grads[n] = value(rows, dims[n], make([]float32, rows*dims[n]))
			}
			gin[j] = grads[n]
		}
		if err := s.step.Backward(c, in, vals[s.node.Outputs[0]], gout, gin); err != nil {
			t.Fatalf("%s backward: %v", s.node.Name, err)
		}
	}

	// The float64 interpreter over the container's tensors (dense, NM
	// expanded).
	w64 := map[string][]float64{}
	for name := range params {
		d, err := f.Dense(name)
		if err != nil {
			t.Fatal(err)
		}
		w64[name] = to64(d)
	}
	logits := func() []float64 {
		v := map[string][]float64{}
		for _, s := range steps {
			n := s.node
			var y []float64
			in := func(i int) []float64 { return v[s.in[i]] }
			wt := func(i int) []float64 {
				if n.Input(i) == "" {
					return nil
				}
				return w64[n.Input(i)]
			}
			switch n.OpType {
			case ops.OpEmbedding:
				off, _ := n.Int("position_offset", 2)
				tok := params[n.Input(2)]
				ev := map[string][]float64{"tok": wt(2), "pos": wt(3), "pin": wt(4)}
				y = embeddingRef64(ev, c, tok.Shape[1], s.step.OutDim(), int(off), n.Input(4) != "")
			case ops.OpLayerNorm:
				eps, _ := n.Float("epsilon", 1e-5)
				y = layerNormRef64(in(0), dims[s.in[0]], wt(1), wt(2), float64(eps))
			case ops.OpLinear, ops.OpSlopeLinear, ops.OpLMHead:
				if n.OpType == ops.OpSlopeLinear && (n.Input(4) != "" || n.Input(5) != "") {
					t.Fatal("adapters in the converted model")
				}
				var b []float64
				if n.OpType != ops.OpLMHead {
					b = wt(2)
				}
				y = ref64Linear(in(0), rows, dims[s.in[0]], wt(1), s.step.OutDim(), b)
			case ops.OpCausalAttention:
				heads, _ := n.Int("num_heads", 0)
				d := dims[s.in[0]]
				scale, _ := n.Float("scale", float32(1/math.Sqrt(float64(d/int(heads)))))
				y = attentionRef64(in(0), in(1), in(2), c.Mask, batch, seq, int(heads), d/int(heads), float64(scale))
			case ops.OpAdd:
				y = slices.Clone(in(0))
				for i, b := range in(1) {
					y[i] += b
				}
			default:
				ref, ok := activationRefs[n.OpType]
				if !ok {
					t.Fatalf("no reference for op %s", n.OpType)
				}
				y = make([]float64, len(in(0)))
				for i, x := range in(0) {
					y[i] = ref(x)
				}
			}
			v[n.Outputs[0]] = y
		}
		return v["logits"]
	}
	want := logits()
	var mx float64
	for _, w := range want {
		mx = math.Max(mx, math.Abs(w))
	}
	var fwd float64
	for i, w := range want {
		d := math.Abs(float64(vals["logits"].Data[i]) - w)
		fwd = math.Max(fwd, d/(1+mx))
		if d > 1e-4*(1+mx) {
			t.Fatalf("model logits[%d] = %g, float64 reference %g", i, vals["logits"].Data[i], w)
		}
	}
	loss := func() float64 {
		var l float64
		for i, y := range logits() {
			l += y * float64(r[i])
		}
		return l
	}

	// Finite differences on a few coordinates of every parameter: those
	// with the largest gradients, and one at random.
	names := make([]string, 0, len(params))
	for n := range params {
		names = append(names, n)
	}
	slices.Sort(names)
	var worst float64
	checked := 0
	for _, name := range names {
		p := params[name]
		// dense position of each stored value.
		pos := make([]int, len(p.Value))
		for i := range pos {
			pos[i] = i
		}
		if p.NM != nil {
			v, err := f.NM(name)
			if err != nil {
				t.Fatal(err)
			}
			idx := make([]uint8, len(p.Value))
			if err := format.UnpackNMIndices(v.Pattern, v.Rows, v.Cols, v.Indices, idx); err != nil {
				t.Fatal(err)
			}
			kept := len(idx) / v.Rows
			for j := range pos {
				row, k := j/kept, j%kept
				pos[j] = row*v.Cols + k/v.Pattern.N*v.Pattern.M + int(idx[j])
			}
		}
		order := make([]int, len(p.Grad))
		for i := range order {
			order[i] = i
		}
		slices.SortFunc(order, func(a, b int) int {
			return -cmpFloat(math.Abs(float64(p.Grad[a])), math.Abs(float64(p.Grad[b])))
		})
		sc := rms(p.Grad)
		for _, j := range append(order[:min(2, len(order))], rng.IntN(len(order))) {
			x := w64[name]
			old := x[pos[j]]
			const eps = 1e-6 // small: Relu kinks are near at 1e-4
			x[pos[j]] = old + eps
			lp := loss()
			x[pos[j]] = old - eps
			lm := loss()
			x[pos[j]] = old
			num := (lp - lm) / (2 * eps)
			d := math.Abs(float64(p.Grad[j]) - num)
			if math.Abs(num)+sc > 1e-5 { // not the (exactly zero) k_proj.bias gradients
				worst = math.Max(worst, d/(math.Abs(num)+sc))
			}
			checked++
			if d > gradFDRel*(math.Abs(num)+sc)+1e-6 {
				t.Errorf("model: gradient of %s[%d] = %g, finite differences %g (|Δ| %g)", name, j, p.Grad[j], num, d)
			}
		}
	}
	t.Logf("%d params, %d SlopeLinear, %d coordinates: largest errors: logits %.3g (relative to 1+max|y|), gradient %.3g (relative to |want|+rms)", len(params), nm, checked, fwd, worst)
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
