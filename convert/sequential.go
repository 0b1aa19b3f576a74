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
// backend (the runtime's kernels) over all calibration samples at once:
// the embedding once, then each decoder layer on the hidden states the
// already-pruned layers before it produced. Within a layer the linears
// are pruned in graph order, each just before its node runs, so every
// linear's inputs come from the layer's own earlier sublayers already
// pruned ("true sequential"): q, k, v share the LayerNorm output (one set
// of statistics), out_proj sees the attention output of the pruned q, k,
// v, fc1 the LayerNorm of the residual with the pruned out_proj, fc2 the
// activation of the pruned fc1. The forward uses W_s rounded to the output
// dtype, without adapters. Memory: the hidden states, one layer's weights
// and activations, and one Hessian (sparsegpt: two D×D float64 matrices
// for the widest input D) at a time.
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
// on the samples and is then ready for layer 0.
func newCalibrator(src Source, method string, samples [][]int32, decide func(string, *Tensor) (bool, string, format.NM),
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
	vals := map[string]*ops.Value{}
	if err := c.forward(embed[0], 0, w, vals); err != nil {
		return nil, err
	}
	c.hName, c.h = embed[0].Output[0], vals[embed[0].Output[0]]
	return c, nil
}

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

// forward binds node n against w and runs it on the values it reads.
func (c *calibrator) forward(n *onnxpb.NodeProto, id int, w memWeights, vals map[string]*ops.Value) error {
	node := ops.NewNode(id, n)
	acts, err := ops.ActivationInputs(n.OpType)
	if err != nil {
		return err
	}
	in := make([]*ops.Value, len(acts))
	dims := make([]int, len(acts))
	for k, a := range acts {
		v, ok := vals[node.Input(a)]
		if !ok {
			return fmt.Errorf("calibration: node %q reads %q, not computed", n.Name, node.Input(a))
		}
		in[k], dims[k] = v, v.Dim
	}
	step, err := c.be.Bind(ops.Binding{Node: node, InDims: dims, W: w})
	if err != nil {
		return fmt.Errorf("calibration: %w", err)
	}
	rows := c.call.Rows()
	out := &ops.Value{Rows: rows, Dim: step.OutDim(), Data: make([]float32, rows*step.OutDim())}
	if err := step.Forward(c.call, in, out); err != nil {
		return fmt.Errorf("calibration: node %q (%s): %w", n.Name, n.OpType, err)
	}
	// Say where activations stop being finite (the pruning's own errors,
	// a NaN score or a non-positive-definite Hessian, would not).
	for i, v := range out.Data {
		if f := float64(v); math.IsNaN(f) || math.IsInf(f, 0) {
			r := i / out.Dim
			return fmt.Errorf("calibration: node %q (%s) outputs %g at sample %d, token %d, column %d: the source's weights or the calibration tokens give non-finite activations",
				n.Name, n.OpType, v, r/c.call.Seq, r%c.call.Seq, i%out.Dim)
		}
	}
	vals[n.Output[0]] = out
	return nil
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
// linears that read it.
type inputStats struct {
	norms []float64
	h     *Hessian
}

func (c *calibrator) layer(li int) error {
	start := time.Now()
	nodes := c.layers[li]
	w := memWeights{}
	vals := map[string]*ops.Value{c.hName: c.h}
	lastUse := map[string]int{}
	for k, n := range nodes {
		if err := c.load(w, n); err != nil {
			return err
		}
		for _, in := range n.Input {
			lastUse[in] = k
		}
	}
	out := ""
	stats := map[string]*inputStats{}
	rep := LayerReport{Layer: li, Layers: len(c.layers)}
	for k, n := range nodes {
		if c.ctx != nil {
			if err := c.ctx.Err(); err != nil {
				return err
			}
		}
		if n.OpType == ops.OpLinear && len(n.Input) > 1 {
			name := n.Input[1]
			t := w[name]
			if prune, reason, p := c.decide(name, t); prune {
				x := vals[n.Input[0]]
				st := stats[n.Input[0]]
				if st == nil {
					st = &inputStats{}
					stats[n.Input[0]] = st
				}
				r, err := c.prune(name, t, p, x, st)
				if err != nil {
					return err
				}
				r.reason = reason
				c.done[name] = r
				rep.Weights = append(rep.Weights, name)
				w[name] = &Tensor{Name: name, SourceName: t.SourceName, DType: t.DType, Shape: t.Shape, Data: r.ws}
			}
		}
		if err := c.forward(n, c.ids[li][k], w, vals); err != nil {
			return err
		}
		out = n.Output[0]
		for _, in := range n.Input {
			if lastUse[in] == k && in != out {
				delete(vals, in)
				delete(stats, in)
			}
		}
	}
	c.hName, c.h = out, vals[out]
	rep.Seconds = time.Since(start).Seconds()
	c.Reports = append(c.Reports, rep)
	if c.report != nil {
		c.report(rep)
	}
	return nil
}

// prune prunes weight t [out, in] by the calibrator's method given its
// inputs x [rows, in].
func (c *calibrator) prune(name string, t *Tensor, p format.NM, x *ops.Value, st *inputStats) (*calibResult, error) {
	start := time.Now()
	out, in := t.Shape[0], t.Shape[1]
	if x.Dim != in {
		return nil, fmt.Errorf("weight %s %v: its input has width %d", name, t.Shape, x.Dim)
	}
	r := &calibResult{p: p}
	var err error
	switch c.method {
	case MethodWanda:
		if st.norms == nil {
			st.norms = ColumnNorms(x.Data, x.Rows, x.Dim)
		}
		if r.keep, err = WandaMask(p, out, in, t.Data, st.norms); err != nil {
			return nil, fmt.Errorf("weight %s: %w", name, err)
		}
		r.ws = ApplyMask(t.Data, r.keep)
	case MethodSparseGPT:
		if st.h == nil {
			st.h = NewHessian(in)
			if err := st.h.Add(x.Data, x.Rows); err != nil {
				return nil, fmt.Errorf("weight %s: %w", name, err)
			}
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
	r.relErr, err = outputRelErr(x, t.Data, r.ws, out, in)
	if err != nil {
		return nil, fmt.Errorf("weight %s: %w", name, err)
	}
	r.seconds = time.Since(start).Seconds()
	return r, nil
}

// outputRelErr is ‖X(W − W_s)ᵀ‖_F/‖XWᵀ‖_F, with the CPU float32 kernels.
func outputRelErr(x *ops.Value, w, ws []float32, out, in int) (float64, error) {
	diff := make([]float32, len(w))
	for i := range w {
		diff[i] = w[i] - ws[i]
	}
	norm := func(m []float32) (float64, error) {
		d, err := cpu.PrepareDense(cpu.DenseWeight{DType: slopepb.DType_FLOAT32, Out: out, In: in,
			Data: unsafe.Slice((*byte)(unsafe.Pointer(&m[0])), 4*len(m))})
		if err != nil {
			return 0, err
		}
		y := make([]float32, x.Rows*out)
		if err := d.Linear(y, x.Data, x.Rows, nil, 0); err != nil {
			return 0, err
		}
		var s float64
		for _, v := range y {
			s += float64(v) * float64(v)
		}
		return math.Sqrt(s), nil
	}
	if len(w) == 0 {
		return 0, nil
	}
	num, err := norm(diff)
	if err != nil {
		return 0, err
	}
	den, err := norm(w)
	if err != nil || den == 0 {
		return 0, err
	}
	return num / den, nil
}
