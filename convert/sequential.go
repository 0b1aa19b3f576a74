package convert

import (
	"context"
	"fmt"
	"math"
	"strings"
	"time"
	"unsafe"

	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/format/onnxpb"
	"github.com/slopeml/slope/format/slopepb"
	"github.com/slopeml/slope/ops"
	"github.com/slopeml/slope/ops/cpu"
)

// LayerReport is the calibrated pruning of one decoder layer.
type LayerReport struct {
	Layer int `json:"layer"`
	// Layers is the model's number of decoder layers.
	Layers int `json:"layers"`
	// Seconds for the layer: its forward passes, statistics and pruning.
	Seconds float64 `json:"seconds"`
	// Weights pruned in the layer (canonical names), in pruning order.
	Weights []string `json:"weights,omitempty"`
}

// calibResult is a weight pruned by a calibrated method.
type calibResult struct {
	ws      []float32 // pruned (and, for sparsegpt, updated) values, rounded to the output dtype
	keep    []bool
	p       format.NM
	reason  string
	relErr  float64 // ‖X(W − W_s)ᵀ‖/‖XWᵀ‖ on the calibration inputs
	seconds float64
}

// calibrator prunes the decoder layers one after the other with a
// calibrated method. It runs the model's graph node by node on the CPU
// backend (the runtime's kernels): the embedding once, then each decoder
// layer on the hidden states the already-pruned layers before it
// produced. Within a layer the linears are pruned in graph order, each
// before its node runs, so every linear's inputs come from the layer's own
// earlier sublayers already pruned ("true sequential"): q, k, v share the
// LayerNorm output (one set of statistics), out_proj sees the attention
// output of the pruned q, k, v, fc1 the LayerNorm of the residual with the
// pruned out_proj, fc2 the activation of the pruned fc1. The forward uses
// W_s rounded to the output dtype, without adapters.
//
// The samples go through a layer in chunks of whole samples (about
// calibChunkTokens tokens each), once per distinct input of its pruned
// linears (the layer up to that input, gathering its statistics) and once
// more to the layer's output, as the reference implementations do for
// true sequential pruning; a pass starts at an earlier pass's stash when
// there is one (pass). Memory: up to three hidden states [samples·seq,
// hidden] (the layer's input, its output and the stash), one layer's
// weights, one chunk's activations, and one input's statistics at a time
// (sparsegpt: a D×D float64 Hessian and its factor for the widest input
// D). When all samples fit one chunk, the passes continue each other: one
// forward of the layer, holding all its activations. The chunking
// does not change the result: every statistic is summed in sample order
// (the Hessian over the same 2048-row blocks), so any chunk size gives the
// same bits.
type calibrator struct {
	src    Source
	method string
	decide func(name string, t *Tensor) (prune bool, reason string, p format.NM)
	round  func(src slopepb.DType, x []float32)
	// ctx cancels the layer in progress between its nodes and weights
	// (set by ensure).
	ctx    context.Context
	sgpt   SparseGPTOptions
	be     ops.Backend
	call   *ops.Call
	layers [][]*onnxpb.NodeProto
	ids    [][]int // node ids (graph order) of each layer's nodes
	hName  string  // name of the value h holds
	h      *ops.Value
	// chunk is the number of samples a layer's forward takes at once.
	chunk  int
	next   int
	done   map[string]*calibResult
	report func(LayerReport)
	// Reports of the layers done.
	Reports []LayerReport
}

// memWeights are weights held in memory as float32 (ops.Weights).
type memWeights map[string]*Tensor

func (m memWeights) Lookup(name string) (*slopepb.Tensor, error) {
	t, ok := m[name]
	if !ok {
		return nil, fmt.Errorf("calibration: weight %q not loaded", name)
	}
	shape := make([]uint64, len(t.Shape))
	for i, d := range t.Shape {
		shape[i] = uint64(d)
	}
	return &slopepb.Tensor{Name: name, Dtype: slopepb.DType_FLOAT32, Shape: shape, Encoding: slopepb.Encoding_DENSE}, nil
}

func (m memWeights) Dense(name string) ([]float32, error) {
	if _, err := m.Lookup(name); err != nil {
		return nil, err
	}
	return m[name].Data, nil
}

func (m memWeights) NM(name string) (*format.NMView, error) {
	return nil, fmt.Errorf("calibration: weight %q is dense", name)
}

func (m memWeights) Raw(name string) ([]byte, error) {
	if _, err := m.Lookup(name); err != nil {
		return nil, err
	}
	d := m[name].Data
	if len(d) == 0 {
		return nil, nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&d[0])), 4*len(d)), nil
}

// newCalibrator builds the dense graph of the source, runs its embedding
// on the samples and is then ready for layer 0. chunk is the samples a
// layer's forward takes at once (0: about calibChunkTokens tokens).
func newCalibrator(src Source, method string, samples [][]int32, chunk int, decide func(string, *Tensor) (bool, string, format.NM),
	round func(slopepb.DType, []float32), report func(LayerReport)) (*calibrator, error) {
	cfg := src.Config()
	g, err := BuildOPTGraph(cfg, nil)
	if err != nil {
		return nil, err
	}
	c := &calibrator{src: src, method: method, decide: decide, round: round, be: ops.NewCPU(), report: report,
		layers: make([][]*onnxpb.NodeProto, cfg.NumHiddenLayers), ids: make([][]int, cfg.NumHiddenLayers),
		done: map[string]*calibResult{}}
	for id, n := range g.Node {
		if rest, ok := strings.CutPrefix(n.Name, "layers."); ok {
			li, ok := layerOf("decoder.layers." + rest)
			if !ok || li >= len(c.layers) {
				return nil, fmt.Errorf("calibration: graph node %q", n.Name)
			}
			c.layers[li] = append(c.layers[li], n)
			c.ids[li] = append(c.ids[li], id)
		}
	}
	if len(g.Node) == 0 || g.Node[0].OpType != ops.OpEmbedding {
		return nil, fmt.Errorf("calibration: the graph does not start with an Embedding node")
	}
	embed := g.Node[:1]
	seq := len(samples[0])
	c.chunk = chunk
	if chunk <= 0 {
		c.chunk = max(1, calibChunkTokens/seq)
	}
	c.call = &ops.Call{Batch: len(samples), Seq: seq}
	for _, s := range samples {
		c.call.IDs = append(c.call.IDs, s...)
	}
	c.call.Mask = make([]int32, len(c.call.IDs))
	for i := range c.call.Mask {
		c.call.Mask[i] = 1
	}
	w := memWeights{}
	if err := c.load(w, embed[0]); err != nil {
		return nil, err
	}
	step, err := c.bind(embed[0], 0, w, nil)
	if err != nil {
		return nil, err
	}
	vals := map[string]*ops.Value{}
	if err := c.run(step, embed[0], c.call, 0, vals); err != nil {
		return nil, err
	}
	c.hName, c.h = embed[0].Output[0], vals[embed[0].Output[0]]
	return c, nil
}

// calibChunkTokens is about the number of tokens a calibration forward
// takes at once (whole samples, at least one): 8192 rows of fc1's output
// at OPT-1.3B's width are 256 MiB.
const calibChunkTokens = 8192

// load reads the weights node n uses from the source into w.
func (c *calibrator) load(w memWeights, n *onnxpb.NodeProto) error {
	acts, err := ops.ActivationInputs(n.OpType)
	if err != nil {
		return err
	}
	for i, in := range n.Input {
		if in == "" || in == "input_ids" || in == "attention_mask" || containsInt(acts, i) {
			continue
		}
		if _, ok := w[in]; ok {
			continue
		}
		t, err := c.src.Tensor(in)
		if err != nil {
			return err
		}
		if t.Numel() != len(t.Data) {
			return fmt.Errorf("tensor %q (%s): %d values for shape %v", in, t.SourceName, len(t.Data), t.Shape)
		}
		// As the file will store it (--dtype): later layers are calibrated
		// on the activations the converted model produces.
		c.round(t.DType, t.Data)
		w[in] = t
	}
	return nil
}

func containsInt(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// bind binds node n (graph id) against w; dims are the widths of the
// values it reads (nil: none, for the embedding).
func (c *calibrator) bind(n *onnxpb.NodeProto, id int, w memWeights, dims []int) (ops.Step, error) {
	step, err := c.be.Bind(ops.Binding{Node: ops.NewNode(id, n), InDims: dims, W: w})
	if err != nil {
		return nil, fmt.Errorf("calibration: %w", err)
	}
	return step, nil
}

// inputsOf returns the values node n reads, from vals.
func inputsOf(n *onnxpb.NodeProto, vals map[string]*ops.Value) ([]*ops.Value, error) {
	acts, err := ops.ActivationInputs(n.OpType)
	if err != nil {
		return nil, err
	}
	in := make([]*ops.Value, len(acts))
	for k, a := range acts {
		name := ""
		if a < len(n.Input) {
			name = n.Input[a]
		}
		v, ok := vals[name]
		if !ok {
			return nil, fmt.Errorf("calibration: node %q reads %q, not computed", n.Name, name)
		}
		in[k] = v
	}
	return in, nil
}

// run runs node n's step on call (whose first sample is sample0 of the
// calibration set), reading and adding to vals.
func (c *calibrator) run(step ops.Step, n *onnxpb.NodeProto, call *ops.Call, sample0 int, vals map[string]*ops.Value) error {
	in, err := inputsOf(n, vals)
	if err != nil {
		return err
	}
	rows := call.Rows()
	out := &ops.Value{Rows: rows, Dim: step.OutDim(), Data: make([]float32, rows*step.OutDim())}
	if err := step.Forward(call, in, out); err != nil {
		return fmt.Errorf("calibration: node %q (%s): %w", n.Name, n.OpType, err)
	}
	// Say where activations stop being finite (the pruning's own errors,
	// a NaN score or a non-positive-definite Hessian, would not).
	for i, v := range out.Data {
		if f := float64(v); math.IsNaN(f) || math.IsInf(f, 0) {
			r := i / out.Dim
			return fmt.Errorf("calibration: node %q (%s) outputs %g at sample %d, token %d, column %d: the source's weights or the calibration tokens give non-finite activations",
				n.Name, n.OpType, v, sample0+r/call.Seq, r%call.Seq, i%out.Dim)
		}
	}
	vals[n.Output[0]] = out
	return nil
}

// chunks splits the samples into runs of c.chunk (the last one shorter),
// each of at least cpu.BlockedRows rows (token rows: samples x seq), so
// that the kernels compute every row as they would in one call of all
// samples: the chunking then never changes a bit.
func (c *calibrator) chunks() [][2]int {
	samples, seq := c.call.Batch, c.call.Seq
	size := max(c.chunk, (cpu.BlockedRows+seq-1)/seq)
	var out [][2]int
	for s0 := 0; s0 < samples; s0 += size {
		s1 := min(s0+size, samples)
		if n := len(out); n > 0 && (s1-s0)*seq < cpu.BlockedRows {
			out[n-1][1] = s1 // too short a last run joins the one before
			continue
		}
		out = append(out, [2]int{s0, s1})
	}
	return out
}

// chunkCall is the call of samples [s0, s1) of the calibration set.
func (c *calibrator) chunkCall(s0, s1 int) *ops.Call {
	seq := c.call.Seq
	return &ops.Call{Batch: s1 - s0, Seq: seq, IDs: c.call.IDs[s0*seq : s1*seq], Mask: c.call.Mask[s0*seq : s1*seq]}
}

// ensure prunes the layers up to and including layer li (in order).
func (c *calibrator) ensure(ctx context.Context, li int) error {
	for c.next <= li && c.next < len(c.layers) {
		c.ctx = ctx
		if err := c.layer(c.next); err != nil {
			return fmt.Errorf("calibrated pruning (%s) of decoder layer %d: %w", c.method, c.next, err)
		}
		c.next++
	}
	return nil
}

// take returns (and forgets) the pruning of weight name, nil if none.
func (c *calibrator) take(name string) *calibResult {
	r := c.done[name]
	delete(c.done, name)
	return r
}

// inputStats are the statistics of one linear input, shared by the
// linears that read it, summed over the chunks in sample order.
type inputStats struct {
	sq []float64 // wanda: per column, the sum of squares
	h  *Hessian  // sparsegpt
}

// add adds the rows of x [rows, D] to the statistics method needs.
func (st *inputStats) add(method string, x *ops.Value) error {
	switch method {
	case MethodWanda:
		if st.sq == nil {
			st.sq = make([]float64, x.Dim)
		}
		addColumnSquares(st.sq, x.Data, x.Rows, x.Dim)
	case MethodSparseGPT:
		if st.h == nil {
			st.h = NewHessian(x.Dim)
		}
		return st.h.Add(x.Data, x.Rows)
	}
	return nil
}

// sqrtAll replaces each value by its square root.
func sqrtAll(v []float64) {
	for j, x := range v {
		v[j] = math.Sqrt(x)
	}
}

// addColumnSquares adds the squares of x's columns [rows, cols] to sq,
// row after row (ColumnNorms is its square roots).
func addColumnSquares(sq []float64, x []float32, rows, cols int) {
	parallel(cols, 16, func(lo, hi int) {
		for t := 0; t < rows; t++ {
			r := x[t*cols : (t+1)*cols]
			for j := lo; j < hi; j++ {
				v := float64(r[j])
				sq[j] += v * v
			}
		}
	})
}

// layerPlan is a layer's nodes as the passes over the samples run them.
type layerPlan struct {
	nodes   []*onnxpb.NodeProto
	ids     []int
	lastUse map[string]int
	// sweep, when all samples fit one chunk, keeps the values between the
	// passes, so that each pass only continues the last one: one forward
	// of the layer in all, as without chunks.
	sweep *sweep
	// stash, with chunks, holds for all samples the values that an
	// earlier pass found live at its stop, so later passes start there
	// instead of at the layer's first node (see pass).
	stash *stash
}

// stash is the values live at node at (made by nodes before it, read by
// it or later ones), for all samples; the layer's input is not among
// them (c.h holds it).
type stash struct {
	at   int
	vals map[string]*ops.Value
}

type sweep struct {
	vals map[string]*ops.Value
	next int // the first node not run yet
}

func (c *calibrator) layer(li int) error {
	start := time.Now()
	nodes := c.layers[li]
	w := memWeights{}
	plan := &layerPlan{nodes: nodes, ids: c.ids[li], lastUse: map[string]int{}}
	if len(c.chunks()) == 1 {
		plan.sweep = &sweep{vals: map[string]*ops.Value{c.hName: c.h}}
	}
	for k, n := range nodes {
		if err := c.load(w, n); err != nil {
			return err
		}
		for _, in := range n.Input {
			plan.lastUse[in] = k
		}
	}
	steps := make([]ops.Step, len(nodes)) // bound on first use; rebound when a weight is pruned
	// One input's statistics at a time: a later linear reading an earlier
	// input again gathers them again (the same bits: the nodes before it
	// are pruned already).
	var st *inputStats
	stIn := ""
	errs := map[int]*relErrSum{} // by node: pruned linears whose error the next pass sums
	rep := LayerReport{Layer: li, Layers: len(c.layers)}
	for k, n := range nodes {
		if n.OpType != ops.OpLinear || len(n.Input) < 2 {
			continue
		}
		name := n.Input[1]
		t := w[name]
		prune, reason, p := c.decide(name, t)
		if !prune {
			continue
		}
		if st == nil || stIn != n.Input[0] {
			st, stIn = &inputStats{}, n.Input[0]
			if _, err := c.pass(plan, k, w, steps, errs, st); err != nil {
				return err
			}
		}
		r, err := c.prune(name, t, p, st)
		if err != nil {
			return err
		}
		r.reason = reason
		c.done[name] = r
		rep.Weights = append(rep.Weights, name)
		pruned := &Tensor{Name: name, SourceName: t.SourceName, DType: t.DType, Shape: t.Shape, Data: r.ws}
		var bias []float32
		if len(n.Input) > 2 && n.Input[2] != "" {
			b, ok := w[n.Input[2]]
			if !ok {
				return fmt.Errorf("calibration: node %q: bias %q not loaded", n.Name, n.Input[2])
			}
			bias = b.Data
		}
		if errs[k], err = newRelErrSum(t.Data, bias, t.Shape[0], t.Shape[1], r); err != nil {
			return fmt.Errorf("weight %s: %w", name, err)
		}
		w[name], steps[k] = pruned, nil
	}
	out, err := c.pass(plan, len(nodes), w, steps, errs, nil)
	if err != nil {
		return err
	}
	if len(errs) > 0 {
		return fmt.Errorf("calibration: layer %d: %d pruned linears never ran", li, len(errs))
	}
	c.hName, c.h = nodes[len(nodes)-1].Output[0], out
	rep.Seconds = time.Since(start).Seconds()
	c.Reports = append(c.Reports, rep)
	if c.report != nil {
		c.report(rep)
	}
	return nil
}

// pass runs the layer's nodes before stop over every chunk of samples:
// from the first node, or from the stash. With st, it adds the chunks'
// values of node stop's first input to st; with stop = len(nodes) it
// returns the layer's output for all samples. The relative errors of
// errs's linears that run are summed and written to their results (and
// removed from errs).
//
// A pass that ran a linear since the stash's node keeps the values live
// at stop as the new stash when together they are no wider than the
// layer's input (OPT: the attention output at out_proj, not fc1's two
// inputs, nor fc2's wide one), so the stash costs at most one more copy
// of the hidden states; nodes before the stash never change again, as
// the linears are pruned in graph order.
func (c *calibrator) pass(plan *layerPlan, stop int, w memWeights, steps []ops.Step, errs map[int]*relErrSum, st *inputStats) (*ops.Value, error) {
	var out *ops.Value
	samples, seq := c.call.Batch, c.call.Seq
	var target string
	if st != nil {
		target = plan.nodes[stop].Input[0]
	}
	from := 0
	if plan.stash != nil {
		from = plan.stash.at
	}
	var next *stash // the stash this pass makes, if any
	keep := false
	for _, ch := range c.chunks() {
		s0, s1 := ch[0], ch[1]
		call := c.chunkCall(s0, s1)
		h := c.h
		var vals map[string]*ops.Value
		first := 0
		if sw := plan.sweep; sw != nil {
			vals, first, sw.next = sw.vals, sw.next, stop
		} else {
			vals = map[string]*ops.Value{c.hName: rowsOf(h, s0*seq, s1*seq)}
			if plan.stash != nil {
				for name, v := range plan.stash.vals {
					vals[name] = rowsOf(v, s0*seq, s1*seq)
				}
				first = from
			}
		}
		for k := first; k < stop; k++ {
			n := plan.nodes[k]
			if c.ctx != nil {
				if err := c.ctx.Err(); err != nil {
					return nil, err
				}
			}
			if steps[k] == nil {
				in, err := inputsOf(n, vals)
				if err != nil {
					return nil, err
				}
				dims := make([]int, len(in))
				for i, v := range in {
					dims[i] = v.Dim
				}
				if steps[k], err = c.bind(n, plan.ids[k], w, dims); err != nil {
					return nil, err
				}
			}
			if err := c.run(steps[k], n, call, s0, vals); err != nil {
				return nil, err
			}
			if e := errs[k]; e != nil {
				if err := e.add(vals[n.Input[0]], vals[n.Output[0]]); err != nil {
					return nil, fmt.Errorf("weight %s: %w", n.Input[1], err)
				}
			}
			for _, in := range n.Input {
				if plan.lastUse[in] == k && in != n.Output[0] && in != target {
					delete(vals, in)
				}
			}
		}
		if plan.sweep == nil && stop < len(plan.nodes) {
			if s0 == 0 {
				next, keep = c.liveAt(plan, stop, from, vals)
			}
			if keep {
				for name, v := range next.vals {
					copy(v.Data[s0*seq*v.Dim:], vals[name].Data)
				}
			}
		}
		switch {
		case st != nil:
			x, ok := vals[target]
			if !ok {
				return nil, fmt.Errorf("calibration: node %q reads %q, not computed", plan.nodes[stop].Name, target)
			}
			if err := st.add(c.method, x); err != nil {
				return nil, fmt.Errorf("weight %s: %w", plan.nodes[stop].Input[1], err)
			}
		case stop == len(plan.nodes):
			y := vals[plan.nodes[stop-1].Output[0]]
			if plan.sweep != nil {
				out = y
				break
			}
			if out == nil {
				out = &ops.Value{Rows: samples * seq, Dim: y.Dim, Data: make([]float32, samples*seq*y.Dim)}
			}
			copy(out.Data[s0*seq*y.Dim:], y.Data)
		}
	}
	if keep {
		plan.stash = next
	}
	for k, e := range errs {
		if k < stop { // ran in this pass (or, sweeping, in an earlier one)
			e.finish()
			delete(errs, k)
		}
	}
	return out, nil
}

// liveAt returns, for a pass that stops at node stop having started at
// node from, the stash of the values of vals (one chunk's) live at stop,
// allocated for all samples, and whether to keep it: when a linear ran
// since from and the values are together no wider than the layer's input.
func (c *calibrator) liveAt(plan *layerPlan, stop, from int, vals map[string]*ops.Value) (*stash, bool) {
	linear := false
	for _, n := range plan.nodes[from:stop] {
		linear = linear || n.OpType == ops.OpLinear
	}
	width := 0
	live := map[string]*ops.Value{}
	for name, v := range vals {
		if name != c.hName && plan.lastUse[name] >= stop {
			live[name] = v
			width += v.Dim
		}
	}
	if !linear || len(live) == 0 || width > c.h.Dim {
		return nil, false
	}
	rows := c.call.Rows()
	st := &stash{at: stop, vals: map[string]*ops.Value{}}
	for name, v := range live {
		st.vals[name] = &ops.Value{Rows: rows, Dim: v.Dim, Data: make([]float32, rows*v.Dim)}
	}
	return st, true
}

// rowsOf is the view of rows [r0, r1) of v.
func rowsOf(v *ops.Value, r0, r1 int) *ops.Value {
	return &ops.Value{Rows: r1 - r0, Dim: v.Dim, Data: v.Data[r0*v.Dim : r1*v.Dim]}
}

// prune prunes weight t [out, in] by the calibrator's method given the
// statistics of its inputs.
func (c *calibrator) prune(name string, t *Tensor, p format.NM, st *inputStats) (*calibResult, error) {
	start := time.Now()
	out, in := t.Shape[0], t.Shape[1]
	r := &calibResult{p: p}
	var err error
	switch c.method {
	case MethodWanda:
		if len(st.sq) != in {
			return nil, fmt.Errorf("weight %s %v: its input has width %d", name, t.Shape, len(st.sq))
		}
		norms := append([]float64(nil), st.sq...)
		sqrtAll(norms)
		if r.keep, err = WandaMask(p, out, in, t.Data, norms); err != nil {
			return nil, fmt.Errorf("weight %s: %w", name, err)
		}
		r.ws = ApplyMask(t.Data, r.keep)
	case MethodSparseGPT:
		if st.h == nil || st.h.D != in {
			return nil, fmt.Errorf("weight %s %v: no Hessian of its width", name, t.Shape)
		}
		o := c.sgpt
		o.Context = c.ctx
		if r.ws, r.keep, err = SparseGPT(p, out, in, t.Data, st.h, o); err != nil {
			return nil, fmt.Errorf("weight %s: %w", name, err)
		}
	default:
		return nil, fmt.Errorf("calibration: method %q", c.method)
	}
	c.round(t.DType, r.ws)
	r.seconds = time.Since(start).Seconds()
	return r, nil
}

// relErrSum sums, over the chunks in sample order, the squares of XWᵀ
// and of XΔᵀ = XWᵀ − XW_sᵀ for a pruned linear (W its source weight, W_s
// the pruned one), with the CPU float32 kernels: XWᵀ + b runs as the node
// runs XW_sᵀ + b, so a weight the pruning left as it was has an error of
// exactly 0, at one GEMM more per linear than the forward. finish writes
// ‖XΔᵀ‖_F/‖XWᵀ‖_F to the result.
type relErrSum struct {
	orig     *cpu.Dense
	bias     []float32 // [out], or nil
	out      int
	num, den float64
	r        *calibResult
}

func newRelErrSum(w, bias []float32, out, in int, r *calibResult) (*relErrSum, error) {
	e := &relErrSum{out: out, bias: bias, r: r}
	if len(w) == 0 {
		return e, nil
	}
	if bias != nil && len(bias) != out {
		return nil, fmt.Errorf("bias of %d values for %d outputs", len(bias), out)
	}
	var err error
	e.orig, err = cpu.PrepareDense(cpu.DenseWeight{DType: slopepb.DType_FLOAT32, Out: out, In: in, Data: floatView(w)})
	return e, err
}

// add adds the rows of a chunk: x the linear's inputs, y its outputs.
func (e *relErrSum) add(x, y *ops.Value) error {
	if e.orig == nil {
		return nil
	}
	if y.Dim != e.out || y.Rows != x.Rows {
		return fmt.Errorf("output [%d %d] for %d rows of %d outputs", y.Rows, y.Dim, x.Rows, e.out)
	}
	yw := make([]float32, x.Rows*e.out)
	if err := e.orig.Linear(yw, x.Data, x.Rows, e.bias, 0); err != nil {
		return err
	}
	for i, v := range yw {
		d := float64(v) - float64(y.Data[i])
		xw := float64(v)
		if e.bias != nil {
			xw -= float64(e.bias[i%e.out])
		}
		e.num += d * d
		e.den += xw * xw
	}
	return nil
}

func (e *relErrSum) finish() {
	if e.den > 0 {
		e.r.relErr = math.Sqrt(e.num) / math.Sqrt(e.den)
	}
}

// floatView views float32s as bytes for the kernels' weight views.
func floatView(m []float32) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(&m[0])), 4*len(m))
}
