package opstest

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sort"
	"testing"

	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/format/slopepb"
	"github.com/slopeml/slope/ops"
)

// Gradient conformance (issue 6). For every op, on random small shapes:
//   - the GradStep's Forward matches a float64 reference of the op
//     written here (|Δ| <= gradFwdAbs + gradFwdRel·max|want|);
//   - every input and parameter gradient matches central finite
//     differences of that float64 reference for the loss L = Σ out·r, r
//     random (|Δ| <= gradFDRel·(|want| + rms(gradient)) + 1e-7), except
//     SlopeLinear's input gradient, which is SLoPe's ∇Y·W_dp by definition
//     and is checked against an explicit float64 reference (and checked
//     to differ from ∇Y·W_s);
//   - Backward accumulates: a second call doubles every gradient;
//   - the whole embedded tiny model converted to SLoPe 2:4 (grad_model.go):
//     a few coordinates of every parameter against finite differences of
//     a float64 interpreter of its graph.

const (
	gradFwdAbs = 1e-5
	gradFwdRel = 1e-5
	gradFDEps  = 1e-4
	gradFDRel  = 1e-4
	// gradFDMax is the number of coordinates per tensor checked by finite
	// differences (all of them for smaller tensors).
	gradFDMax = 24
)

// RunGrad runs the gradient suite on a training backend.
func RunGrad(t *testing.T, be ops.GradBackend) {
	t.Run("Activations", func(t *testing.T) { gradActivations(t, be) })
	t.Run("Add", func(t *testing.T) { gradAdd(t, be) })
	t.Run("LayerNorm", func(t *testing.T) { gradLayerNorm(t, be) })
	t.Run("Linear", func(t *testing.T) { gradLinear(t, be) })
	t.Run("LMHead", func(t *testing.T) { gradLMHead(t, be) })
	t.Run("SlopeLinear", func(t *testing.T) { gradSlopeLinear(t, be) })
	t.Run("SlopeLinearRebind", func(t *testing.T) { gradRebindKeepsMask(t, be) })
	t.Run("Embedding", func(t *testing.T) { gradEmbedding(t, be) })
	t.Run("CausalAttention", func(t *testing.T) { gradAttention(t, be) })
	t.Run("Model", func(t *testing.T) { gradModel(t, be) })
}

// gradCase is one bound node with its inputs and float64 reference.
type gradCase struct {
	name   string
	node   *ops.Node
	f      *format.File
	c      *ops.Call
	in     [][]float32 // activation inputs, each [rows, dims[i]]
	dims   []int
	params map[string][]float32 // the values the test wrote (kept values for N:M)
	outDim int
	// ref is the op's forward in float64: v["in0"], v["in1"], ... are the
	// inputs, v[name] the parameters; it returns [rows, outDim].
	ref func(v map[string][]float64) []float64
	// inGrad replaces the finite-difference check of input i by an
	// explicit reference of the wanted gradient given gy.
	inGrad map[int]func(v map[string][]float64, gy []float64) []float64
	// check runs after binding (extra checks on the step's Params).
	check func(t *testing.T, s ops.GradStep)
}

// gradStats tracks the largest errors seen, for the test log.
type gradStats struct{ fwd, fd, acc float64 }

func inKey(i int) string { return fmt.Sprint("in", i) }

func to64(x []float32) []float64 {
	y := make([]float64, len(x))
	for i, v := range x {
		y[i] = float64(v)
	}
	return y
}

func runGradCase(t *testing.T, be ops.GradBackend, gc gradCase, rng *rand.Rand) gradStats {
	t.Helper()
	var st gradStats
	store := ops.NewParamStore(gc.f)
	s, err := be.BindGrad(ops.Binding{Node: gc.node, InDims: gc.dims, W: gc.f}, store)
	if err != nil {
		t.Fatalf("%s: bind: %v", gc.name, err)
	}
	if s.OutDim() != gc.outDim {
		t.Fatalf("%s: OutDim %d, want %d", gc.name, s.OutDim(), gc.outDim)
	}
	// The step's Params are exactly the test's tensors, with their values.
	params := map[string]*ops.Param{}
	for _, p := range s.Params() {
		params[p.Name] = p
		want, ok := gc.params[p.Name]
		if !ok {
			t.Fatalf("%s: unexpected param %q", gc.name, p.Name)
		}
		if !slices.Equal(p.Value, want) || len(p.Grad) != len(p.Value) {
			t.Fatalf("%s: param %q: value or grad length differs from what was written", gc.name, p.Name)
		}
	}
	if len(params) != len(gc.params) {
		t.Fatalf("%s: %d params, want %d", gc.name, len(params), len(gc.params))
	}
	if gc.check != nil {
		gc.check(t, s)
	}
	rows := gc.c.Rows()
	v := map[string][]float64{}
	in := make([]*ops.Value, len(gc.in))
	for i, x := range gc.in {
		v[inKey(i)] = to64(x)
		in[i] = value(rows, gc.dims[i], slices.Clone(x))
	}
	for n, p := range gc.params {
		v[n] = to64(p)
	}

	// (a) forward.
	out := value(rows, gc.outDim, make([]float32, rows*gc.outDim))
	if err := s.Forward(gc.c, in, out); err != nil {
		t.Fatalf("%s: forward: %v", gc.name, err)
	}
	want := gc.ref(v)
	var mx float64
	for _, w := range want {
		mx = math.Max(mx, math.Abs(w))
	}
	for i, w := range want {
		d := math.Abs(float64(out.Data[i]) - w)
		st.fwd = math.Max(st.fwd, d/(1+mx))
		if d > gradFwdAbs+gradFwdRel*mx || math.IsNaN(float64(out.Data[i])) {
			t.Fatalf("%s: forward element %d = %g, want %g", gc.name, i, out.Data[i], w)
		}
	}

	// Backward twice: the second call must double every gradient.
	r := randn(rng, rows*gc.outDim, 1)
	gout := value(rows, gc.outDim, r)
	gin := make([]*ops.Value, len(in))
	for i := range gin {
		gin[i] = value(rows, gc.dims[i], make([]float32, rows*gc.dims[i]))
	}
	for _, p := range params {
		clear(p.Grad)
	}
	if err := s.Backward(gc.c, in, out, gout, gin); err != nil {
		t.Fatalf("%s: backward: %v", gc.name, err)
	}
	got := map[string][]float32{}
	for i, g := range gin {
		got[inKey(i)] = slices.Clone(g.Data)
	}
	for n, p := range params {
		got[n] = slices.Clone(p.Grad)
	}
	if err := s.Backward(gc.c, in, out, gout, gin); err != nil {
		t.Fatalf("%s: backward: %v", gc.name, err)
	}
	second := map[string][]float32{}
	for i, g := range gin {
		second[inKey(i)] = g.Data
	}
	for n, p := range params {
		second[n] = p.Grad
	}
	for k, g1 := range got {
		sc := meanAbs(g1)
		for i, a := range g1 {
			d := math.Abs(float64(second[k][i]) - 2*float64(a))
			st.acc = math.Max(st.acc, d/(sc+1e-30))
			if d > 1e-5*(math.Abs(float64(a))+sc)+1e-12 {
				t.Fatalf("%s: %s[%d]: second Backward gives %g, want 2·%g (gradients must accumulate)", gc.name, k, i, second[k][i], a)
			}
		}
	}

	// (b) gradients against finite differences (or explicit references).
	loss := func() float64 {
		y := gc.ref(v)
		var l float64
		for i, w := range y {
			l += w * float64(r[i])
		}
		return l
	}
	keys := make([]string, 0, len(got))
	for k := range got {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		a := got[k]
		if len(a) != len(v[k]) {
			t.Fatalf("%s: gradient of %s has %d values, want %d", gc.name, k, len(a), len(v[k]))
		}
		sc := rms(a)
		var i int
		if _, err := fmt.Sscanf(k, "in%d", &i); err == nil && gc.inGrad[i] != nil {
			w := gc.inGrad[i](v, to64(r))
			for j, wj := range w {
				d := math.Abs(float64(a[j]) - wj)
				st.fd = math.Max(st.fd, d/(math.Abs(wj)+sc+1e-30))
				if d > 1e-4*(math.Abs(wj)+sc)+1e-7 {
					t.Fatalf("%s: gradient of %s[%d] = %g, want %g", gc.name, k, j, a[j], wj)
				}
			}
			continue
		}
		idx := coords(rng, len(a))
		x := v[k]
		for _, j := range idx {
			old := x[j]
			x[j] = old + gradFDEps
			lp := loss()
			x[j] = old - gradFDEps
			lm := loss()
			x[j] = old
			num := (lp - lm) / (2 * gradFDEps)
			d := math.Abs(float64(a[j]) - num)
			st.fd = math.Max(st.fd, d/(math.Abs(num)+sc+1e-30))
			if d > gradFDRel*(math.Abs(num)+sc)+1e-7 {
				t.Fatalf("%s: gradient of %s[%d] = %g, finite differences %g (|Δ| %g)", gc.name, k, j, a[j], num, d)
			}
		}
	}
	return st
}

// coords picks the coordinates to check: all, or gradFDMax at random.
func coords(rng *rand.Rand, n int) []int {
	if n <= gradFDMax {
		out := make([]int, n)
		for i := range out {
			out[i] = i
		}
		return out
	}
	return rng.Perm(n)[:gradFDMax]
}

func meanAbs(x []float32) float64 {
	var s float64
	for _, v := range x {
		s += math.Abs(float64(v))
	}
	return s / float64(max(len(x), 1))
}

func rms(x []float32) float64 {
	var s float64
	for _, v := range x {
		s += float64(v) * float64(v)
	}
	return math.Sqrt(s / float64(max(len(x), 1)))
}

func logStats(t *testing.T, all []gradStats) {
	var m gradStats
	for _, s := range all {
		m.fwd, m.fd, m.acc = math.Max(m.fwd, s.fwd), math.Max(m.fd, s.fd), math.Max(m.acc, s.acc)
	}
	t.Logf("largest errors: forward %.3g (relative to 1+max|y|), gradient %.3g (relative to |want|+rms), accumulation %.3g (relative to mean|g|)", m.fwd, m.fd, m.acc)
}

// ref64 is a dense float64 matrix product y [m, out] = x [m, in]·Wᵀ (+ b).
func ref64Linear(x []float64, m, in int, w []float64, out int, b []float64) []float64 {
	y := make([]float64, m*out)
	for r := 0; r < m; r++ {
		for o := 0; o < out; o++ {
			var s float64
			for i := 0; i < in; i++ {
				s += x[r*in+i] * w[o*in+i]
			}
			if b != nil {
				s += b[o]
			}
			y[r*out+o] = s
		}
	}
	return y
}

// gradCall is a call of batch sequences of seq tokens, mask all ones.
func gradCall(batch, seq int) *ops.Call { return call(batch, seq) }

var activationRefs = map[string]func(float64) float64{
	ops.OpRelu: func(x float64) float64 { return math.Max(x, 0) },
	ops.OpGelu: func(x float64) float64 { return 0.5 * x * (1 + math.Erf(x/math.Sqrt2)) },
	ops.OpGeluTanh: func(x float64) float64 {
		return 0.5 * x * (1 + math.Tanh(math.Sqrt(2/math.Pi)*(x+0.044715*x*x*x)))
	},
	ops.OpSilu:    func(x float64) float64 { return x / (1 + math.Exp(-x)) },
	ops.OpTanh:    math.Tanh,
	ops.OpSigmoid: func(x float64) float64 { return 1 / (1 + math.Exp(-x)) },
}

func gradActivations(t *testing.T, be ops.GradBackend) {
	rng := rand.New(rand.NewPCG(21, 1))
	refs := activationRefs
	f := newWeights(t).open()
	var st []gradStats
	ops_ := make([]string, 0, len(refs))
	for op := range refs {
		ops_ = append(ops_, op)
	}
	sort.Strings(ops_)
	for _, op := range ops_ {
		ref := refs[op]
		seq, dim := 1+rng.IntN(5), 1+rng.IntN(20)
		x := randn(rng, 2*seq*dim, 2)
		for i, v := range x { // away from Relu's kink
			if math.Abs(float64(v)) < 0.01 {
				x[i] = 0.5
			}
		}
		st = append(st, runGradCase(t, be, gradCase{
			name: op, node: node(op, []string{"x"}), f: f, c: gradCall(2, seq),
			in: [][]float32{x}, dims: []int{dim}, outDim: dim,
			ref: func(v map[string][]float64) []float64 {
				y := make([]float64, len(v["in0"]))
				for i, x := range v["in0"] {
					y[i] = ref(x)
				}
				return y
			},
		}, rng))
	}
	logStats(t, st)
}

func gradAdd(t *testing.T, be ops.GradBackend) {
	rng := rand.New(rand.NewPCG(22, 1))
	f := newWeights(t).open()
	seq, dim := 3, 7
	st := runGradCase(t, be, gradCase{
		name: "add", node: node(ops.OpAdd, []string{"a", "b"}), f: f, c: gradCall(2, seq),
		in: [][]float32{randn(rng, 2*seq*dim, 1), randn(rng, 2*seq*dim, 1)}, dims: []int{dim, dim}, outDim: dim,
		ref: func(v map[string][]float64) []float64 {
			y := slices.Clone(v["in0"])
			for i, b := range v["in1"] {
				y[i] += b
			}
			return y
		},
	}, rng)
	logStats(t, []gradStats{st})
}

func gradLayerNorm(t *testing.T, be ops.GradBackend) {
	rng := rand.New(rand.NewPCG(23, 1))
	var st []gradStats
	for _, affine := range []bool{true, false} {
		for _, dim := range []int{1 + rng.IntN(4), 5 + rng.IntN(30)} {
			seq := 1 + rng.IntN(4)
			wb := newWeights(t)
			params := map[string][]float32{}
			inputs := []string{"x", "", ""}
			if affine {
				params["ln.g"], params["ln.b"] = randn(rng, dim, 1), randn(rng, dim, 0.5)
				wb.dense("ln.g", slopepb.DType_FLOAT32, []uint64{uint64(dim)}, params["ln.g"])
				wb.dense("ln.b", slopepb.DType_FLOAT32, []uint64{uint64(dim)}, params["ln.b"])
				inputs = []string{"x", "ln.g", "ln.b"}
			}
			f := wb.open()
			x := randn(rng, 2*seq*dim, 2)
			for i := range x {
				x[i] += 1.5
			}
			const eps = 1e-5
			st = append(st, runGradCase(t, be, gradCase{
				name: name("layernorm dim=", dim, " affine=", affine), node: node(ops.OpLayerNorm, inputs, floatAttr("epsilon", eps)),
				f: f, c: gradCall(2, seq), in: [][]float32{x}, dims: []int{dim}, outDim: dim, params: params,
				ref: func(v map[string][]float64) []float64 {
					return layerNormRef64(v["in0"], dim, v["ln.g"], v["ln.b"], eps)
				},
			}, rng))
		}
	}
	logStats(t, st)
}

func gradLinear(t *testing.T, be ops.GradBackend) {
	rng := rand.New(rand.NewPCG(24, 1))
	var st []gradStats
	for _, withBias := range []bool{true, false} {
		seq, in, out := 1+rng.IntN(4), 1+rng.IntN(13), 1+rng.IntN(11)
		wb := newWeights(t)
		params := map[string][]float32{"fc.w": randn(rng, out*in, 0.5)}
		wb.dense("fc.w", slopepb.DType_FLOAT32, []uint64{uint64(out), uint64(in)}, params["fc.w"])
		inputs := []string{"x", "fc.w", ""}
		if withBias {
			params["fc.b"] = randn(rng, out, 0.5)
			wb.dense("fc.b", slopepb.DType_FLOAT32, []uint64{uint64(out)}, params["fc.b"])
			inputs[2] = "fc.b"
		}
		f := wb.open()
		m := 2 * seq
		st = append(st, runGradCase(t, be, gradCase{
			name: name("linear ", m, "x", in, "->", out, " bias=", withBias), node: node(ops.OpLinear, inputs), f: f,
			c: gradCall(2, seq), in: [][]float32{randn(rng, m*in, 1)}, dims: []int{in}, outDim: out, params: params,
			ref: func(v map[string][]float64) []float64 {
				return ref64Linear(v["in0"], m, in, v["fc.w"], out, v["fc.b"])
			},
		}, rng))
	}
	logStats(t, st)
}

func gradLMHead(t *testing.T, be ops.GradBackend) {
	rng := rand.New(rand.NewPCG(25, 1))
	const vocab, hid, npos, seq = 13, 6, 10, 3
	wb := newWeights(t)
	params := map[string][]float32{"emb": randn(rng, vocab*hid, 1)}
	wb.dense("emb", slopepb.DType_FLOAT32, []uint64{vocab, hid}, params["emb"])
	wb.dense("pos", slopepb.DType_FLOAT32, []uint64{npos, hid}, randn(rng, npos*hid, 1))
	f := wb.open()
	st := runGradCase(t, be, gradCase{
		name: "lmhead", node: node(ops.OpLMHead, []string{"x", "emb"}), f: f, c: gradCall(2, seq),
		in: [][]float32{randn(rng, 2*seq*hid, 1)}, dims: []int{hid}, outDim: vocab, params: params,
		ref: func(v map[string][]float64) []float64 {
			return ref64Linear(v["in0"], 2*seq, hid, v["emb"], vocab, nil)
		},
	}, rng)
	logStats(t, []gradStats{st})

	// Tied: the embedding and the head bound with one store share the
	// token table's Param, and both add into its Grad.
	store := ops.NewParamStore(f)
	emb, err := be.BindGrad(ops.Binding{Node: node(ops.OpEmbedding, []string{"input_ids", "attention_mask", "emb", "pos"}), W: f}, store)
	if err != nil {
		t.Fatal(err)
	}
	head, err := be.BindGrad(ops.Binding{Node: node(ops.OpLMHead, []string{"x", "emb"}), InDims: []int{hid}, W: f}, store)
	if err != nil {
		t.Fatal(err)
	}
	var pe, ph *ops.Param
	for _, p := range emb.Params() {
		if p.Name == "emb" {
			pe = p
		}
	}
	for _, p := range head.Params() {
		if p.Name == "emb" {
			ph = p
		}
	}
	if pe == nil || pe != ph {
		t.Fatalf("tied embedding and head do not share one Param (%p, %p)", pe, ph)
	}
	c := gradCall(2, seq)
	for i := range c.IDs {
		c.IDs[i] = int32(i % vocab)
	}
	x := value(2*seq, hid, make([]float32, 2*seq*hid))
	if err := emb.Forward(c, nil, x); err != nil {
		t.Fatal(err)
	}
	logits := value(2*seq, vocab, make([]float32, 2*seq*vocab))
	if err := head.Forward(c, []*ops.Value{x}, logits); err != nil {
		t.Fatal(err)
	}
	clear(pe.Grad)
	gl := value(2*seq, vocab, randn(rng, 2*seq*vocab, 1))
	gx := value(2*seq, hid, make([]float32, 2*seq*hid))
	if err := head.Backward(c, []*ops.Value{x}, logits, gl, []*ops.Value{gx}); err != nil {
		t.Fatal(err)
	}
	headOnly := slices.Clone(pe.Grad)
	if err := emb.Backward(c, nil, x, gx, nil); err != nil {
		t.Fatal(err)
	}
	// The embedding added gx into the rows of the ids it read.
	want := slices.Clone(headOnly)
	for r, id := range c.IDs {
		for e := 0; e < hid; e++ {
			want[int(id)*hid+e] += gx.Data[r*hid+e]
		}
	}
	for i, w := range want {
		if math.Abs(float64(pe.Grad[i]-w)) > 1e-5*(1+math.Abs(float64(w))) {
			t.Fatalf("tied grad[%d] = %g, want %g (head + embedding)", i, pe.Grad[i], w)
		}
	}
}

// randomTransposeMask picks, for every column and group of M rows, a
// random subset of at most N of W's kept values there (a valid transpose
// mask that magnitude pruning would generally not give).
func randomTransposeMask(rng *rand.Rand, p format.NM, rows, cols int, idx []uint8) []bool {
	kept := cols / p.M * p.N
	keep := make([]bool, len(idx))
	for g := 0; g < rows; g += p.M {
		byCol := map[int][]int{}
		for r := g; r < g+p.M; r++ {
			for k := 0; k < kept; k++ {
				c := k/p.N*p.M + int(idx[r*kept+k])
				byCol[c] = append(byCol[c], r*kept+k)
			}
		}
		for _, vs := range byCol {
			rng.Shuffle(len(vs), func(i, j int) { vs[i], vs[j] = vs[j], vs[i] })
			for _, v := range vs[:min(p.N, len(vs))] {
				keep[v] = true
			}
		}
	}
	return keep
}

func gradSlopeLinear(t *testing.T, be ops.GradBackend) {
	rng := rand.New(rand.NewPCG(26, 1))
	type tc struct {
		p              format.NM
		rank           int
		bias, withMask bool
		oddRows        bool   // out not a multiple of M: no transpose mask, W_dp = W_s
		maskName       string // the stored mask's name, given as input 3 ("": the conventional one, not given)
		seq            int    // tokens per sequence (0: 1-4); 40 gives 80 rows, where a backend may take another path
	}
	var st []gradStats
	for _, c := range []tc{
		{format.NM{N: 2, M: 4}, 0, true, true, false, "", 0},
		{format.NM{N: 2, M: 4}, 3, true, true, false, "", 0},
		{format.NM{N: 1, M: 4}, 2, false, true, false, "", 0},
		{format.NM{N: 3, M: 8}, 0, true, true, false, "", 0},
		{format.NM{N: 2, M: 4}, 2, false, false, false, "", 0}, // no stored mask: magnitude double pruning
		{format.NM{N: 2, M: 4}, 0, true, false, true, "", 0},
		{format.NM{N: 2, M: 4}, 0, true, true, false, "fc.tmask", 0}, // a mask of another name, named by the node
		{format.NM{N: 2, M: 4}, 3, true, true, false, "", 40},        // many rows, adapters (R nonzero)
	} {
		seq := 1 + rng.IntN(4)
		if c.seq > 0 {
			seq = c.seq
		}
		m := 2 * seq
		in := c.p.M * (2 + rng.IntN(3))
		out := c.p.M * (2 + rng.IntN(2))
		if c.oddRows {
			out++
		}
		kept := in / c.p.M * c.p.N
		wb := newWeights(t)
		_, vals, idx := pruneNM(c.p, out, in, randn(rng, out*in, 0.5))
		if err := wb.w.WriteNM("fc.w", slopepb.DType_FLOAT32, c.p, out, in, vals, idx); err != nil {
			t.Fatal(err)
		}
		var keep []bool
		if c.oddRows {
			keep = make([]bool, out*kept)
			for i := range keep {
				keep[i] = true
			}
		} else if c.withMask {
			keep = randomTransposeMask(rng, c.p, out, in, idx)
			name := "fc.w.transpose_mask"
			if c.maskName != "" {
				name = c.maskName
			}
			if err := wb.w.WriteTransposeMask(name, "fc.w", c.p, out, in, keep); err != nil {
				t.Fatal(err)
			}
		} else {
			var err error
			if keep, err = format.DoublePruneMagnitude(c.p, out, in, vals, idx); err != nil {
				t.Fatal(err)
			}
		}
		if !c.oddRows && !slices.Contains(keep, false) {
			t.Fatalf("transpose mask drops nothing: the input-gradient check could not fail")
		}
		params := map[string][]float32{"fc.w": vals}
		inputs := []string{"x", "fc.w", "", c.maskName, "", ""}
		if c.bias {
			params["fc.b"] = randn(rng, out, 0.5)
			wb.dense("fc.b", slopepb.DType_FLOAT32, []uint64{uint64(out)}, params["fc.b"])
			inputs[2] = "fc.b"
		}
		const scale = 0.75
		if c.rank > 0 {
			params["fc.L"], params["fc.R"] = randn(rng, in*c.rank, 0.5), randn(rng, c.rank*out, 0.5)
			if err := wb.w.WriteAdapter("fc.w", "fc.L", "fc.R", slopepb.DType_FLOAT32, in, out, c.rank, scale, params["fc.L"], params["fc.R"]); err != nil {
				t.Fatal(err)
			}
			inputs[4], inputs[5] = "fc.L", "fc.R"
		}
		f := wb.open()
		// dense expands kept values [out, kept] to [out, in], only those
		// with sel (nil: all).
		dense := func(vals []float64, sel []bool) []float64 {
			w := make([]float64, out*in)
			for o := 0; o < out; o++ {
				for k := 0; k < kept; k++ {
					j := o*kept + k
					if sel == nil || sel[j] {
						w[o*in+k/c.p.N*c.p.M+int(idx[j])] = vals[j]
					}
				}
			}
			return w
		}
		rank := c.rank
		ref := func(v map[string][]float64) []float64 {
			y := ref64Linear(v["in0"], m, in, dense(v["fc.w"], nil), out, v["fc.b"])
			if rank > 0 {
				l, r := v["fc.L"], v["fc.R"]
				for row := 0; row < m; row++ {
					for k := 0; k < rank; k++ {
						var xl float64
						for i := 0; i < in; i++ {
							xl += v["in0"][row*in+i] * l[i*rank+k]
						}
						for o := 0; o < out; o++ {
							y[row*out+o] += scale * xl * r[k*out+o]
						}
					}
				}
			}
			return y
		}
		// inGrad: gy·W (W_dp with sel = keep, W_s with nil) + s·(gy·Rᵀ)·Lᵀ.
		inGrad := func(v map[string][]float64, gy []float64, sel []bool) []float64 {
			w := dense(v["fc.w"], sel)
			gx := make([]float64, m*in)
			for row := 0; row < m; row++ {
				for i := 0; i < in; i++ {
					var s float64
					for o := 0; o < out; o++ {
						s += gy[row*out+o] * w[o*in+i]
					}
					gx[row*in+i] = s
				}
				for k := 0; k < rank; k++ {
					var g float64
					for o := 0; o < out; o++ {
						g += gy[row*out+o] * v["fc.R"][k*out+o]
					}
					for i := 0; i < in; i++ {
						gx[row*in+i] += scale * g * v["fc.L"][i*rank+k]
					}
				}
			}
			return gx
		}
		var gotGX []float32
		x := randn(rng, m*in, 1)
		nm := name("slopelinear ", c.p, " ", m, "x", in, "->", out, " rank=", rank, " bias=", c.bias, " mask=", c.withMask, " oddRows=", c.oddRows)
		st = append(st, runGradCase(t, be, gradCase{
			name: nm, node: node(ops.OpSlopeLinear, inputs, intAttr("n", int64(c.p.N)), intAttr("m", int64(c.p.M))), f: f,
			c: gradCall(2, seq), in: [][]float32{x}, dims: []int{in}, outDim: out, params: params, ref: ref,
			inGrad: map[int]func(v map[string][]float64, gy []float64) []float64{
				0: func(v map[string][]float64, gy []float64) []float64 { return inGrad(v, gy, keep) },
			},
			check: func(t *testing.T, s ops.GradStep) {
				for _, p := range s.Params() {
					if p.Name != "fc.w" {
						continue
					}
					if p.NM == nil || p.NM.Pattern != c.p || p.NM.Rows != out || p.NM.Cols != in {
						t.Fatalf("%s: NM param does not describe the weight", nm)
					}
					gotIdx, err := p.NM.IdxCopy()
					if err != nil {
						t.Fatal(err)
					}
					gotKeep, err := p.NM.TKeepCopy()
					if err != nil {
						t.Fatal(err)
					}
					if !slices.Equal(gotIdx, idx) || !slices.Equal(gotKeep, keep) {
						t.Fatalf("%s: NM param does not hold the weight's indices and transpose mask", nm)
					}
				}
			},
		}, rng))
		if c.oddRows {
			continue // W_dp = W_s: the finite differences above checked it
		}
		// The SLoPe input gradient differs from the dense ∇Y·W_s: bind
		// again, run one backward, compare with both references.
		s, err := be.BindGrad(ops.Binding{Node: node(ops.OpSlopeLinear, inputs, intAttr("n", int64(c.p.N)), intAttr("m", int64(c.p.M))), InDims: []int{in}, W: f}, ops.NewParamStore(f))
		if err != nil {
			t.Fatal(err)
		}
		cl := gradCall(2, seq)
		yv := value(m, out, make([]float32, m*out))
		xv := value(m, in, x)
		if err := s.Forward(cl, []*ops.Value{xv}, yv); err != nil {
			t.Fatal(err)
		}
		gy := randn(rng, m*out, 1)
		gx := value(m, in, make([]float32, m*in))
		if err := s.Backward(cl, []*ops.Value{xv}, yv, value(m, out, gy), []*ops.Value{gx}); err != nil {
			t.Fatal(err)
		}
		gotGX = gx.Data
		v := map[string][]float64{}
		for n, p := range params {
			v[n] = to64(p)
		}
		ws := inGrad(v, to64(gy), nil)
		var differs float64
		for i, w := range ws {
			differs = math.Max(differs, math.Abs(float64(gotGX[i])-w))
		}
		if differs < 1e-2 {
			t.Fatalf("%s: input gradient equals ∇Y·W_s (max |Δ| %g): the double-pruned W_dp is not used", nm, differs)
		}
	}
	logStats(t, st)
}

// embeddingRef64 is the Embedding forward in float64.
func embeddingRef64(v map[string][]float64, c *ops.Call, width, hid, off int, proj bool) []float64 {
	total := c.Past + c.Seq
	y := make([]float64, c.Rows()*hid)
	for b := 0; b < c.Batch; b++ {
		mask := c.Mask[b*total : (b+1)*total]
		for s := 0; s < c.Seq; s++ {
			t := c.Past + s
			p := -1
			if mask[t] == 1 {
				for _, m := range mask[:t+1] {
					p += int(m)
				}
			}
			id := int(c.IDs[b*c.Seq+s])
			for o := 0; o < hid; o++ {
				var e float64
				if proj {
					for i := 0; i < width; i++ {
						e += v["pin"][o*width+i] * v["tok"][id*width+i]
					}
				} else {
					e = v["tok"][id*hid+o]
				}
				y[(b*c.Seq+s)*hid+o] = e + v["pos"][(p+off)*hid+o]
			}
		}
	}
	return y
}

func gradEmbedding(t *testing.T, be ops.GradBackend) {
	rng := rand.New(rand.NewPCG(27, 1))
	const vocab, hid, proj, npos, off = 11, 5, 3, 12, 2
	var st []gradStats
	for _, withProj := range []bool{false, true} {
		wb := newWeights(t)
		width := hid
		if withProj {
			width = proj
		}
		params := map[string][]float32{"tok": randn(rng, vocab*width, 1), "pos": randn(rng, npos*hid, 1)}
		wb.dense("tok", slopepb.DType_FLOAT32, []uint64{vocab, uint64(width)}, params["tok"])
		wb.dense("pos", slopepb.DType_FLOAT32, []uint64{npos, hid}, params["pos"])
		inputs := []string{"input_ids", "attention_mask", "tok", "pos"}
		if withProj {
			params["pin"] = randn(rng, hid*proj, 1)
			wb.dense("pin", slopepb.DType_FLOAT32, []uint64{hid, proj}, params["pin"])
			inputs = append(inputs, "pin")
		}
		f := wb.open()
		const batch, seq = 2, 6
		c := gradCall(batch, seq)
		c.Mask[seq], c.Mask[seq+1] = 0, 0 // row 1 left-padded by 2
		for i := range c.IDs {
			c.IDs[i] = int32(rng.IntN(vocab))
		}
		c.IDs[3] = c.IDs[4] // a repeated token: its rows' gradients add up
		st = append(st, runGradCase(t, be, gradCase{
			name: name("embedding proj=", withProj), node: node(ops.OpEmbedding, inputs, intAttr("position_offset", off)), f: f,
			c: c, outDim: hid, params: params,
			ref: func(v map[string][]float64) []float64 { return embeddingRef64(v, c, width, hid, off, withProj) },
		}, rng))
	}
	logStats(t, st)
}

// attentionRef64 is CausalAttention over whole sequences in float64.
func attentionRef64(q, k, v []float64, mask []int32, batch, seq, heads, hd int, scale float64) []float64 {
	dim := heads * hd
	y := make([]float64, batch*seq*dim)
	sc := make([]float64, seq)
	for b := 0; b < batch; b++ {
		for h := 0; h < heads; h++ {
			at := func(x []float64, j, e int) float64 { return x[(b*seq+j)*dim+h*hd+e] }
			for i := 0; i < seq; i++ {
				mx := math.Inf(-1)
				for j := 0; j <= i; j++ {
					if mask[b*seq+j] == 0 {
						continue
					}
					var s float64
					for e := 0; e < hd; e++ {
						s += at(q, i, e) * at(k, j, e)
					}
					sc[j] = s * scale
					mx = math.Max(mx, sc[j])
				}
				if math.IsInf(mx, -1) {
					continue
				}
				var sum float64
				for j := 0; j <= i; j++ {
					if mask[b*seq+j] == 1 {
						sum += math.Exp(sc[j] - mx)
					}
				}
				for j := 0; j <= i; j++ {
					if mask[b*seq+j] == 1 {
						p := math.Exp(sc[j]-mx) / sum
						for e := 0; e < hd; e++ {
							y[(b*seq+i)*dim+h*hd+e] += p * at(v, j, e)
						}
					}
				}
			}
		}
	}
	return y
}

func gradAttention(t *testing.T, be ops.GradBackend) {
	rng := rand.New(rand.NewPCG(28, 1))
	var st []gradStats
	// Short, long (>= 8 tokens: the inference kernel's GEMM path) and
	// longer than the CPU backend's chunk of 64 queries, with small heads;
	// then two chunks with a head of 64, as real models have (the packed
	// keys and values read by prefix, the accumulating products).
	type shape struct{ seq, heads, hd int }
	shapes := []shape{
		{2 + rng.IntN(5), 1 + rng.IntN(3), 1 + rng.IntN(4)},
		{9 + rng.IntN(3), 1 + rng.IntN(3), 1 + rng.IntN(4)},
		{65 + rng.IntN(12), 1 + rng.IntN(3), 1 + rng.IntN(4)},
		{66 + rng.IntN(8), 1, 64},
	}
	for _, sh := range shapes {
		seq, heads, hd := sh.seq, sh.heads, sh.hd
		dim := heads * hd
		const batch = 2
		f := newWeights(t).open()
		c := gradCall(batch, seq)
		c.Mask[seq], c.Mask[seq+1] = 0, 0 // row 1 left-padded by 2
		scale := 1 / math.Sqrt(float64(hd))
		n := node(ops.OpCausalAttention, []string{"q", "k", "v", "attention_mask"}, intAttr("num_heads", int64(heads)), floatAttr("scale", float32(scale)))
		sc32 := float64(float32(scale))
		st = append(st, runGradCase(t, be, gradCase{
			name: name("attention seq=", seq, " heads=", heads, " hd=", hd), node: n, f: f, c: c,
			in:   [][]float32{randn(rng, batch*seq*dim, 1), randn(rng, batch*seq*dim, 1), randn(rng, batch*seq*dim, 1)},
			dims: []int{dim, dim, dim}, outDim: dim,
			ref: func(v map[string][]float64) []float64 {
				return attentionRef64(v["in0"], v["in1"], v["in2"], c.Mask, batch, seq, heads, hd, sc32)
			},
		}, rng))
	}
	logStats(t, st)
}

// layerNormRef64 is LayerNorm over rows of width dim in float64 (g, b nil:
// not affine).
func layerNormRef64(x []float64, dim int, g, b []float64, eps float64) []float64 {
	y := make([]float64, len(x))
	for r := 0; r < len(x)/dim; r++ {
		row := x[r*dim : (r+1)*dim]
		var mean, vr float64
		for _, a := range row {
			mean += a
		}
		mean /= float64(dim)
		for _, a := range row {
			vr += (a - mean) * (a - mean)
		}
		sd := math.Sqrt(vr/float64(dim) + eps)
		for i, a := range row {
			z := (a - mean) / sd
			if g != nil {
				z *= g[i]
			}
			if b != nil {
				z += b[i]
			}
			y[r*dim+i] = z
		}
	}
	return y
}

// gradRebindKeepsMask: binding a SlopeLinear node that names its own
// transpose mask again (as the trainer does when adapters join) keeps the
// Param's mask as a refresh left it, instead of loading the stored one
// over it.
func gradRebindKeepsMask(t *testing.T, be ops.GradBackend) {
	rng := rand.New(rand.NewPCG(31, 1))
	p := format.NM{N: 2, M: 4}
	const out, in = 8, 16
	_, vals, idx := pruneNM(p, out, in, randn(rng, out*in, 1))
	wb := newWeights(t)
	if err := wb.w.WriteNM("fc.w", slopepb.DType_FLOAT32, p, out, in, vals, idx); err != nil {
		t.Fatal(err)
	}
	stored := randomTransposeMask(rng, p, out, in, idx)
	if err := wb.w.WriteTransposeMask("fc.tmask", "fc.w", p, out, in, stored); err != nil {
		t.Fatal(err)
	}
	f := wb.open()
	n := node(ops.OpSlopeLinear, []string{"x", "fc.w", "", "fc.tmask", "", ""}, intAttr("n", 2), intAttr("m", 4))
	store := ops.NewParamStore(f)
	bind := func() *ops.Param {
		s, err := be.BindGrad(ops.Binding{Node: n, InDims: []int{in}, W: f}, store)
		if err != nil {
			t.Fatal(err)
		}
		return s.Params()[0]
	}
	w := bind()
	if got, err := w.NM.TKeepCopy(); err != nil || !slices.Equal(got, stored) {
		t.Fatalf("first bind: transpose mask %v (%v), want the stored one", got, err)
	}
	refreshed, err := format.DoublePruneMagnitude(p, out, in, vals, idx)
	if err != nil {
		t.Fatal(err)
	}
	if slices.Equal(refreshed, stored) {
		t.Fatal("the refreshed mask equals the stored one: the test could not fail")
	}
	if err := w.NM.SetTKeep(refreshed); err != nil {
		t.Fatal(err)
	}
	if w2 := bind(); w2 != w {
		t.Fatal("binding again made another Param")
	}
	if got, err := w.NM.TKeepCopy(); err != nil || !slices.Equal(got, refreshed) {
		t.Errorf("after binding again: transpose mask %v (%v), want the refreshed %v", got, err, refreshed)
	}
}
