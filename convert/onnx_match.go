package convert

import (
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"

	"github.com/slopeml/slope/format/onnxpb"
)

// Recognition of an OPT causal LM in an ONNX graph, by data flow.
//
// The walk starts at input_ids: the token embedding is the Gather of a
// 2-D initializer indexed by input_ids, the position embedding the other
// Gather whose output is added to it. From that sum, the residual stream
// is followed layer by layer: a LayerNorm on it (pre-LN) or three linear
// layers reading it directly (post-LN), q/k/v told apart by the attention
// MatMuls they reach (q and k meet in the scores MatMul, which flows
// through a Softmax into the MatMul that v reaches), out_proj after the
// context, the residual Adds, fc1, the activation, fc2. A LayerNorm whose
// output feeds a single linear layer (or a single linear layer on the
// stream) ends the decoder: the final LayerNorm and the LM head.
//
// Ops that only move data (Reshape, Cast, Identity, Squeeze, Unsqueeze,
// Flatten) are looked through on the residual stream; Shape and Size
// consumers are ignored.

type onnxUse struct{ node, slot int }

type onnxGraph struct {
	s        *onnxSource
	path     string
	nodes    []*onnxpb.NodeProto
	producer map[string]int
	users    map[string][]onnxUse
	inits    map[string]*onnxInit
	consts   map[string]*onnxInit
	inputs   []*onnxpb.ValueInfoProto
	outputs  map[string]bool
}

// onnxLN is a recognised LayerNorm (primitive or decomposed).
type onnxLN struct {
	node        int // LayerNormalization, or the first ReduceMean
	scale, bias *onnxWeightRef
	eps         float32
	out         string
}

// onnxLinear is a recognised linear layer: MatMul or Gemm with an
// initializer weight, and its bias (Gemm's C or a following Add).
type onnxLinear struct {
	node    int
	weight  *onnxWeightRef
	bias    *onnxWeightRef
	out, in int    // canonical weight dims
	y       string // output, after the bias
}

type onnxLayer struct {
	attnLN, ffnLN          *onnxLN
	q, k, v, out, fc1, fc2 *onnxLinear
}

// onnxRecognised is what recognise finds.
type onnxRecognised struct {
	vocab, hidden, projDim, positions, heads, ffn int
	preLN, bias, tied                             bool
	activation                                    string
	eps                                           float32
	embedTokens, embedPositions                   *onnxWeightRef
	projectIn, projectOut, head                   *onnxWeightRef
	finalLN                                       *onnxLN
	layers                                        []*onnxLayer
	warnings                                      []string
}

// onnxPassOps move data without computing: looked through (via input 0)
// on the residual stream.
var onnxPassOps = map[string]bool{"Reshape": true, "Cast": true, "Identity": true, "Squeeze": true, "Unsqueeze": true, "Flatten": true}

// onnxShuffleOps may sit between a projection and the attention MatMuls.
var onnxShuffleOps = map[string]bool{"Reshape": true, "Cast": true, "Identity": true, "Squeeze": true, "Unsqueeze": true, "Flatten": true, "Transpose": true}

func newONNXGraph(s *onnxSource, gp *onnxpb.GraphProto, inits map[string]*onnxInit) (*onnxGraph, error) {
	g := &onnxGraph{
		s: s, path: s.path, nodes: gp.Node, producer: map[string]int{}, users: map[string][]onnxUse{},
		inits: inits, consts: map[string]*onnxInit{}, inputs: gp.Input, outputs: map[string]bool{},
	}
	for _, o := range gp.Output {
		g.outputs[o.Name] = true
	}
	for i, n := range gp.Node {
		for slot, in := range n.Input {
			if in != "" {
				g.users[in] = append(g.users[in], onnxUse{i, slot})
			}
		}
		for _, out := range n.Output {
			if out == "" {
				continue
			}
			if prev, dup := g.producer[out]; dup {
				return nil, fmt.Errorf("%s: value %q is output by %s and %s: %w", s.path, out, g.label(prev), g.label(i), ErrONNX)
			}
			if _, dup := inits[out]; dup {
				return nil, fmt.Errorf("%s: value %q is an initializer and an output of %s: %w", s.path, out, g.label(i), ErrONNX)
			}
			g.producer[out] = i
		}
		if g.op(i) == "Constant" && len(n.Output) == 1 {
			t := onnxConstantTensor(n)
			if t == nil || t.DataLocation == onnxpb.TensorProto_EXTERNAL {
				continue
			}
			in, err := s.newInit(n.Output[0], t, false)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", g.label(i), err)
			}
			g.consts[n.Output[0]] = in
		}
	}
	return g, nil
}

// onnxConstantTensor is the value of a Constant node as a TensorProto, or
// nil for forms that are not numeric constants.
func onnxConstantTensor(n *onnxpb.NodeProto) *onnxpb.TensorProto {
	for _, a := range n.Attribute {
		switch a.Name {
		case "value":
			return a.T // nil when absent
		case "value_float":
			return &onnxpb.TensorProto{DataType: int32(onnxpb.TensorProto_FLOAT), FloatData: []float32{a.F}}
		case "value_floats":
			return &onnxpb.TensorProto{DataType: int32(onnxpb.TensorProto_FLOAT), Dims: []int64{int64(len(a.Floats))}, FloatData: a.Floats}
		case "value_int":
			return &onnxpb.TensorProto{DataType: int32(onnxpb.TensorProto_INT64), Int64Data: []int64{a.I}}
		case "value_ints":
			return &onnxpb.TensorProto{DataType: int32(onnxpb.TensorProto_INT64), Dims: []int64{int64(len(a.Ints))}, Int64Data: a.Ints}
		}
	}
	return nil
}

func (g *onnxGraph) errf(format string, args ...any) error {
	return fmt.Errorf("%s: %s: %w", g.path, fmt.Sprintf(format, args...), ErrONNXGraph)
}

// op is the op type of node i; ops of other domains than ONNX's carry
// their domain, so that they match nothing.
func (g *onnxGraph) op(i int) string {
	n := g.nodes[i]
	if n.Domain == "" || n.Domain == "ai.onnx" {
		return n.OpType
	}
	return n.Domain + "::" + n.OpType
}

func (g *onnxGraph) label(i int) string {
	n := g.nodes[i]
	if n.Name != "" {
		return fmt.Sprintf("node %q (%s)", n.Name, n.OpType)
	}
	return fmt.Sprintf("node #%d (%s)", i, n.OpType)
}

func (g *onnxGraph) input(i, slot int) string {
	if slot < len(g.nodes[i].Input) {
		return g.nodes[i].Input[slot]
	}
	return ""
}

func (g *onnxGraph) output(i int) string {
	if len(g.nodes[i].Output) > 0 {
		return g.nodes[i].Output[0]
	}
	return ""
}

func (g *onnxGraph) attr(i int, name string) *onnxpb.AttributeProto {
	for _, a := range g.nodes[i].Attribute {
		if a.Name == name {
			return a
		}
	}
	return nil
}

func (g *onnxGraph) attrInt(i int, name string, def int64) int64 {
	if a := g.attr(i, name); a != nil {
		return a.I
	}
	return def
}

func (g *onnxGraph) attrFloat(i int, name string, def float32) float32 {
	if a := g.attr(i, name); a != nil {
		return a.F
	}
	return def
}

// origin looks back through pass ops to the value that carries the data.
func (g *onnxGraph) origin(v string) string {
	for range 256 {
		p, ok := g.producer[v]
		if !ok || !onnxPassOps[g.op(p)] || len(g.nodes[p].Input) == 0 {
			return v
		}
		v = g.nodes[p].Input[0]
	}
	return v
}

// direct lists the consumers of v, less Shape and Size.
func (g *onnxGraph) direct(v string) []onnxUse {
	var out []onnxUse
	for _, u := range g.users[v] {
		if op := g.op(u.node); op != "Shape" && op != "Size" {
			out = append(out, u)
		}
	}
	return out
}

// uses lists the consumers of v looking through pass ops (their input 0),
// less Shape and Size, in depth-first order. The walk keeps its own stack:
// a file's chain of pass ops may be millions long.
func (g *onnxGraph) uses(v string) []onnxUse {
	var out []onnxUse
	seen := map[string]bool{v: true}
	type frame struct {
		us []onnxUse
		i  int
	}
	stack := []frame{{us: g.direct(v)}}
	for len(stack) > 0 {
		f := &stack[len(stack)-1]
		if f.i == len(f.us) {
			stack = stack[:len(stack)-1]
			continue
		}
		u := f.us[f.i]
		f.i++
		if !onnxPassOps[g.op(u.node)] {
			out = append(out, u)
			continue
		}
		if w := g.output(u.node); u.slot == 0 && !seen[w] {
			seen[w] = true
			stack = append(stack, frame{us: g.direct(w)})
		}
	}
	return out
}

// isOutput reports whether v, or a pass op's copy of it, is a graph output.
func (g *onnxGraph) isOutput(v string) bool {
	for range 64 {
		if g.outputs[v] {
			return true
		}
		d := g.direct(v)
		if len(d) != 1 || !onnxPassOps[g.op(d[0].node)] || d[0].slot != 0 {
			return false
		}
		v = g.output(d[0].node)
	}
	return false
}

// constOf is the constant (initializer or Constant node) behind v, looking
// through Cast and Identity.
func (g *onnxGraph) constOf(v string) (*onnxInit, bool) {
	for range 16 {
		if in, ok := g.inits[v]; ok {
			return in, true
		}
		if in, ok := g.consts[v]; ok {
			return in, true
		}
		p, ok := g.producer[v]
		if !ok || (g.op(p) != "Cast" && g.op(p) != "Identity") {
			return nil, false
		}
		v = g.input(p, 0)
	}
	return nil, false
}

func (g *onnxGraph) scalarOf(v string) (float64, bool) {
	in, ok := g.constOf(v)
	if !ok || in.numel != 1 {
		return 0, false
	}
	vals, ok := g.s.constValues(in)
	if !ok {
		return 0, false
	}
	return vals[0], true
}

// weightOf finds the initializer behind a weight operand, looking through
// Cast, Identity and 2-D Transposes (counted).
func (g *onnxGraph) weightOf(v string) (in *onnxInit, transposes int, ok bool) {
	for range 16 {
		if in, ok := g.inits[v]; ok {
			return in, transposes, true
		}
		if in, ok := g.consts[v]; ok {
			return in, transposes, true
		}
		p, ok := g.producer[v]
		if !ok {
			return nil, 0, false
		}
		switch g.op(p) {
		case "Cast", "Identity":
		case "Transpose":
			perm := g.attr(p, "perm")
			if perm != nil && !slices.Equal(perm.Ints, []int64{1, 0}) {
				return nil, 0, false
			}
			transposes++
		default:
			return nil, 0, false
		}
		v = g.input(p, 0)
	}
	return nil, 0, false
}

// vectorOf is a bias or LayerNorm parameter: a constant with numel
// elements whose dims are all 1 but the last.
func (g *onnxGraph) vectorOf(v string) (*onnxWeightRef, bool) {
	in, tr, ok := g.weightOf(v)
	if !ok || tr != 0 || len(in.dims) == 0 {
		return nil, false
	}
	for _, d := range in.dims[:len(in.dims)-1] {
		if d != 1 {
			return nil, false
		}
	}
	return &onnxWeightRef{init: in, shape: []int{in.numel}}, true
}

// linearAt recognises a linear layer at a use: a MatMul (slot 0) or Gemm
// (input A) whose weight is a 2-D initializer. It returns nil, nil for
// other nodes.
func (g *onnxGraph) linearAt(u onnxUse) (*onnxLinear, error) {
	op := g.op(u.node)
	if (op != "MatMul" && op != "Gemm") || u.slot != 0 {
		return nil, nil
	}
	w, tr, ok := g.weightOf(g.input(u.node, 1))
	if !ok || len(w.dims) != 2 {
		return nil, nil
	}
	needT := tr%2 == 0 // MatMul(x, B) reads B as [in, out]
	l := &onnxLinear{node: u.node}
	if op == "Gemm" {
		if g.attrInt(u.node, "transA", 0) != 0 {
			return nil, g.errf("%s: Gemm with transA=1 as a linear layer is not supported", g.label(u.node))
		}
		if a := g.attrFloat(u.node, "alpha", 1); a != 1 {
			return nil, g.errf("%s: Gemm with alpha=%g as a linear layer is not supported", g.label(u.node), a)
		}
		needT = needT != (g.attrInt(u.node, "transB", 0) != 0)
	}
	shape := []int{w.dims[0], w.dims[1]}
	if needT {
		shape = []int{w.dims[1], w.dims[0]}
	}
	l.weight = &onnxWeightRef{init: w, transpose: needT, shape: shape}
	l.out, l.in = shape[0], shape[1]
	l.y = g.output(u.node)
	if op == "Gemm" && g.input(u.node, 2) != "" {
		b, ok := g.vectorOf(g.input(u.node, 2))
		if !ok || b.shape[0] != l.out {
			return nil, g.errf("%s: Gemm bias %q is not a constant vector of %d", g.label(u.node), g.input(u.node, 2), l.out)
		}
		if beta := g.attrFloat(u.node, "beta", 1); beta != 1 {
			return nil, g.errf("%s: Gemm with beta=%g as a linear layer is not supported", g.label(u.node), beta)
		}
		l.bias = b
		return l, nil
	}
	if d := g.direct(l.y); len(d) == 1 && g.op(d[0].node) == "Add" {
		if b, ok := g.vectorOf(g.input(d[0].node, 1-d[0].slot)); ok && b.shape[0] == l.out {
			l.bias = b
			l.y = g.output(d[0].node)
		}
	}
	return l, nil
}

// linearUses lists the linear layers reading v.
func (g *onnxGraph) linearUses(v string) ([]*onnxLinear, error) {
	var out []*onnxLinear
	for _, u := range g.uses(v) {
		l, err := g.linearAt(u)
		if err != nil {
			return nil, err
		}
		if l != nil {
			out = append(out, l)
		}
	}
	return out, nil
}

// lnAt finds the LayerNorm reading v (nil if none).
func (g *onnxGraph) lnAt(v string) (*onnxLN, error) {
	var found []*onnxLN
	for _, u := range g.uses(v) {
		if u.slot != 0 {
			continue
		}
		switch g.op(u.node) {
		case "LayerNormalization":
			ln, err := g.primitiveLN(u.node)
			if err != nil {
				return nil, err
			}
			found = append(found, ln)
		case "ReduceMean":
			if ln := g.decomposedLN(v, u.node); ln != nil {
				found = append(found, ln)
			}
		}
	}
	switch len(found) {
	case 0:
		return nil, nil
	case 1:
		return found[0], nil
	}
	return nil, g.errf("value %q is read by %d LayerNorms (%s and %s); want at most 1", v, len(found), g.label(found[0].node), g.label(found[1].node))
}

func (g *onnxGraph) primitiveLN(i int) (*onnxLN, error) {
	if axis := g.attrInt(i, "axis", -1); axis != -1 {
		return nil, g.errf("%s: LayerNormalization over axis %d; OPT normalises the last axis (-1)", g.label(i), axis)
	}
	scale, ok := g.vectorOf(g.input(i, 1))
	if !ok {
		return nil, g.errf("%s: LayerNormalization scale %q is not a constant vector", g.label(i), g.input(i, 1))
	}
	bias, ok := g.vectorOf(g.input(i, 2))
	if !ok {
		return nil, g.errf("%s: LayerNormalization bias %q is missing or not a constant vector", g.label(i), g.input(i, 2))
	}
	return &onnxLN{node: i, scale: scale, bias: bias, eps: g.attrFloat(i, "epsilon", 1e-5), out: g.output(i)}, nil
}

// decomposedLN matches ReduceMean(x) -> Sub(x, mean) -> Div(d,
// Sqrt(Add(ReduceMean(Pow(d, 2)), eps))) -> Mul(scale) -> Add(bias), as
// exporters emit for opsets without LayerNormalization; nil if it does
// not match.
func (g *onnxGraph) decomposedLN(x string, meanNode int) *onnxLN {
	mean := g.output(meanNode)
	only := func(v, op string) (onnxUse, bool) {
		d := g.direct(v)
		if len(d) != 1 || g.op(d[0].node) != op {
			return onnxUse{}, false
		}
		return d[0], true
	}
	var d string
	for _, u := range g.uses(x) {
		if g.op(u.node) == "Sub" && u.slot == 0 && g.origin(g.input(u.node, 1)) == mean {
			d = g.output(u.node)
		}
	}
	if d == "" {
		return nil
	}
	var div = -1
	for _, u := range g.direct(d) {
		if g.op(u.node) == "Div" && u.slot == 0 {
			div = u.node
		}
	}
	if div < 0 {
		return nil
	}
	// Div's denominator: Sqrt(Add(variance, eps)), variance a ReduceMean
	// of d squared.
	sq, ok := g.producer[g.input(div, 1)]
	if !ok || g.op(sq) != "Sqrt" {
		return nil
	}
	add, ok := g.producer[g.input(sq, 0)]
	if !ok || g.op(add) != "Add" {
		return nil
	}
	var eps float64
	var variance string
	if e, ok := g.scalarOf(g.input(add, 1)); ok {
		eps, variance = e, g.input(add, 0)
	} else if e, ok := g.scalarOf(g.input(add, 0)); ok {
		eps, variance = e, g.input(add, 1)
	} else {
		return nil
	}
	rm, ok := g.producer[variance]
	if !ok || g.op(rm) != "ReduceMean" {
		return nil
	}
	pw, ok := g.producer[g.input(rm, 0)]
	if !ok || (g.op(pw) != "Pow" && g.op(pw) != "Mul") || g.origin(g.input(pw, 0)) != d {
		return nil
	}
	mul, ok := only(g.output(div), "Mul")
	if !ok {
		return nil
	}
	scale, ok := g.vectorOf(g.input(mul.node, 1-mul.slot))
	if !ok {
		return nil
	}
	badd, ok := only(g.output(mul.node), "Add")
	if !ok {
		return nil
	}
	bias, ok := g.vectorOf(g.input(badd.node, 1-badd.slot))
	if !ok {
		return nil
	}
	return &onnxLN{node: meanNode, scale: scale, bias: bias, eps: float32(eps), out: g.output(badd.node)}
}

// inputIDs is the graph input holding the token ids.
func (g *onnxGraph) inputIDs() (string, error) {
	var ints []string
	for _, in := range g.inputs {
		if in.Name == "input_ids" {
			return in.Name, nil
		}
		if _, isInit := g.inits[in.Name]; isInit {
			continue
		}
		if tt := in.GetType().GetTensorType(); tt != nil {
			switch onnxpb.TensorProto_DataType(tt.ElemType) {
			case onnxpb.TensorProto_INT64, onnxpb.TensorProto_INT32:
				ints = append(ints, in.Name)
			}
		}
	}
	if len(ints) == 1 {
		return ints[0], nil
	}
	return "", g.errf("no graph input named input_ids, and %d integer graph inputs to take for it", len(ints))
}

// recognise finds the OPT structure.
func (g *onnxGraph) recognise() (*onnxRecognised, error) {
	r := &onnxRecognised{}
	ids, err := g.inputIDs()
	if err != nil {
		return nil, err
	}
	// Token embedding: the Gather of a 2-D initializer indexed by input_ids.
	var tok []int
	for i := range g.nodes {
		if g.op(i) != "Gather" || g.attrInt(i, "axis", 0) != 0 {
			continue
		}
		w, tr, ok := g.weightOf(g.input(i, 0))
		if ok && tr == 0 && len(w.dims) == 2 && g.origin(g.input(i, 1)) == ids {
			tok = append(tok, i)
		}
	}
	if len(tok) != 1 {
		return nil, g.errf("found %d Gathers of a 2-D initializer indexed by input_ids %q; want 1 (the token embedding)", len(tok), ids)
	}
	tokNode := tok[0]
	emb, _, _ := g.weightOf(g.input(tokNode, 0))
	r.embedTokens = &onnxWeightRef{init: emb, shape: slices.Clone(emb.dims)}
	r.vocab, r.projDim = emb.dims[0], emb.dims[1]
	tokY := g.output(tokNode)

	h, err := g.embeddingSum(r, tokNode, tokY)
	if err != nil {
		return nil, err
	}

	eps := map[float32]bool{}
	notePreLN := func(where string, pre bool) error {
		if len(r.layers) == 0 {
			r.preLN = pre
			return nil
		}
		if r.preLN != pre {
			return g.errf("%s: LayerNorm placement differs from layer 0 (pre-LayerNorm %v)", where, r.preLN)
		}
		return nil
	}
	for li := 0; ; li++ {
		where := "after the embeddings"
		if li > 0 {
			where = fmt.Sprintf("after layer %d", li-1)
		}
		if li > maxLayers {
			return nil, g.errf("more than %d decoder layers", maxLayers)
		}
		ln, err := g.lnAt(h)
		if err != nil {
			return nil, err
		}
		x := h
		if ln != nil {
			x = ln.out
		}
		lins, err := g.linearUses(x)
		if err != nil {
			return nil, err
		}
		switch {
		case len(lins) == 3:
			if err := notePreLN(fmt.Sprintf("layer %d", li), ln != nil); err != nil {
				return nil, err
			}
			layer, next, err := g.layer(r, li, h, ln, lins)
			if err != nil {
				return nil, err
			}
			for _, l := range []*onnxLN{layer.attnLN, layer.ffnLN} {
				eps[l.eps] = true
			}
			r.layers = append(r.layers, layer)
			h = next
			continue
		case len(lins) == 1 && len(r.layers) > 0:
			if ln != nil {
				if !r.preLN {
					return nil, g.errf("%s: a final LayerNorm (%s) in a post-LayerNorm model is not OPT", where, g.label(ln.node))
				}
				r.finalLN = ln
				eps[ln.eps] = true
			}
			if err := g.head(r, lins[0]); err != nil {
				return nil, err
			}
		case ln != nil:
			return nil, g.errf("%s: the output of LayerNorm %s feeds %d linear layers; want 3 (q, k, v of a decoder layer) or 1 (the LM head)",
				where, g.label(ln.node), len(lins))
		default:
			return nil, g.errf("%s: the residual stream (value %q) feeds no LayerNorm and %d linear layers; want 3 (q, k, v of a decoder layer) or 1 (the LM head)",
				where, h, len(lins))
		}
		break
	}
	if len(eps) != 1 {
		var es []string
		for e := range eps {
			es = append(es, fmt.Sprint(e))
		}
		sort.Strings(es)
		return nil, g.errf("the LayerNorms use different epsilons (%s)", strings.Join(es, ", "))
	}
	for e := range eps {
		r.eps = e
	}
	r.bias = r.layers[0].q.bias != nil
	for i, l := range r.layers {
		for _, lin := range []*onnxLinear{l.q, l.k, l.v, l.out, l.fc1, l.fc2} {
			if (lin.bias != nil) != r.bias {
				return nil, g.errf("layer %d: %s has bias %v, but layer 0's q_proj has bias %v; OPT's linear layers all have one or none",
					i, g.label(lin.node), lin.bias != nil, r.bias)
			}
		}
	}
	r.ffn = r.layers[0].fc1.out
	return r, nil
}

// embeddingSum finds the position embedding added to the token embedding
// (after project_in when there is one) and returns the sum.
func (g *onnxGraph) embeddingSum(r *onnxRecognised, tokNode int, tokY string) (string, error) {
	find := func(v string) (sum string, pos int) {
		for _, u := range g.uses(v) {
			if g.op(u.node) != "Add" {
				continue
			}
			p, ok := g.producer[g.origin(g.input(u.node, 1-u.slot))]
			if !ok || p == tokNode || g.op(p) != "Gather" {
				continue
			}
			if w, tr, ok := g.weightOf(g.input(p, 0)); ok && tr == 0 && len(w.dims) == 2 {
				return g.output(u.node), p
			}
		}
		return "", -1
	}
	sum, pos := find(tokY)
	if pos < 0 {
		lins, err := g.linearUses(tokY)
		if err != nil {
			return "", err
		}
		if len(lins) == 1 && lins[0].bias == nil {
			r.projectIn = lins[0].weight
			sum, pos = find(lins[0].y)
		}
	}
	if pos < 0 {
		return "", g.errf("the token embedding (%s) is not added to a position embedding (a Gather of a 2-D initializer)", g.label(tokNode))
	}
	w, _, _ := g.weightOf(g.input(pos, 0))
	r.embedPositions = &onnxWeightRef{init: w, shape: slices.Clone(w.dims)}
	r.positions, r.hidden = w.dims[0], w.dims[1]
	if r.positions <= PositionOffset {
		return "", g.errf("position embedding %q has %d rows; OPT's has max_position_embeddings + %d", w.name, r.positions, PositionOffset)
	}
	if r.projectIn == nil && r.projDim != r.hidden {
		return "", g.errf("token embedding %q is %v, position embedding %q is %v: widths differ and no project_in", r.embedTokens.init.name, r.embedTokens.shape, w.name, w.dims)
	}
	return sum, nil
}

// layer recognises decoder layer li, whose input is the residual stream h
// and whose q/k/v are lins (read after ln when pre-LN).
func (g *onnxGraph) layer(r *onnxRecognised, li int, h string, ln *onnxLN, lins []*onnxLinear) (*onnxLayer, string, error) {
	L := &onnxLayer{}
	if r.preLN {
		L.attnLN = ln
	}
	type reach struct {
		mm, slot, reshape int
		scale             float64
	}
	reached := make([]reach, 3)
	for j, l := range lins {
		mm, slot, reshape, scale, err := g.attnWalk(li, l)
		if err != nil {
			return nil, "", err
		}
		reached[j] = reach{mm, slot, reshape, scale}
	}
	// q and k meet at the scores MatMul (slots 0 and 1); v reaches the
	// context MatMul at slot 1.
	scores := -1
	for _, rc := range reached {
		if rc.slot == 0 {
			if scores >= 0 {
				scores = -2
				break
			}
			scores = rc.mm
		}
	}
	qi, ki, vi := -1, -1, -1
	if scores >= 0 {
		for j, rc := range reached {
			switch {
			case rc.mm == scores && rc.slot == 0:
				qi = j
			case rc.mm == scores && rc.slot == 1:
				ki = j
			case rc.slot == 1:
				vi = j
			}
		}
	}
	if qi < 0 || ki < 0 || vi < 0 {
		var desc []string
		for j, rc := range reached {
			desc = append(desc, fmt.Sprintf("%s reaches %s at input %d", g.label(lins[j].node), g.label(rc.mm), rc.slot))
		}
		return nil, "", g.errf("layer %d: cannot tell q, k and v apart (want q and k to meet in one MatMul, v in another): %s", li, strings.Join(desc, "; "))
	}
	L.q, L.k, L.v = lins[qi], lins[ki], lins[vi]
	ctx := reached[vi].mm
	softScale, err := g.scoresToContext(li, scores, ctx)
	if err != nil {
		return nil, "", err
	}
	heads, err := g.heads(li, r.hidden, reached[qi].reshape, reached[qi].scale*reached[ki].scale*softScale)
	if err != nil {
		return nil, "", err
	}
	if r.heads != 0 && r.heads != heads {
		return nil, "", g.errf("layer %d: %d attention heads, layer 0 has %d", li, heads, r.heads)
	}
	r.heads = heads

	// out_proj reads the context after Transpose/Reshape.
	cur := g.output(ctx)
	for range 32 {
		d := g.direct(cur)
		if len(d) != 1 {
			return nil, "", g.errf("layer %d: the attention context (value %q) has %d consumers; want 1 leading to out_proj", li, cur, len(d))
		}
		l, err := g.linearAt(d[0])
		if err != nil {
			return nil, "", err
		}
		if l != nil {
			L.out = l
			break
		}
		if !onnxShuffleOps[g.op(d[0].node)] || d[0].slot != 0 {
			return nil, "", g.errf("layer %d: %s between the attention context and out_proj is not expected", li, g.label(d[0].node))
		}
		cur = g.output(d[0].node)
	}
	if L.out == nil {
		return nil, "", g.errf("layer %d: no out_proj linear layer after the attention context", li)
	}
	s1, err := g.residualAdd(L.out.y, h)
	if err != nil {
		return nil, "", g.errf("layer %d: out_proj (%s) output is not added back to the residual stream %q", li, g.label(L.out.node), h)
	}
	res := s1
	if r.preLN {
		L.ffnLN, err = g.lnAt(s1)
		if err != nil {
			return nil, "", err
		}
		if L.ffnLN == nil {
			return nil, "", g.errf("layer %d: no LayerNorm (final_layer_norm) reads the attention residual sum %q", li, s1)
		}
	} else {
		L.attnLN, err = g.lnAt(s1)
		if err != nil {
			return nil, "", err
		}
		if L.attnLN == nil {
			return nil, "", g.errf("layer %d: no LayerNorm (self_attn_layer_norm) after the attention residual sum %q", li, s1)
		}
		res = L.attnLN.out
	}
	ffnIn := res
	if r.preLN {
		ffnIn = L.ffnLN.out
	}
	fc1s, err := g.linearUses(ffnIn)
	if err != nil {
		return nil, "", err
	}
	if len(fc1s) != 1 {
		return nil, "", g.errf("layer %d: %d linear layers read the feed-forward input %q; want 1 (fc1)", li, len(fc1s), ffnIn)
	}
	L.fc1 = fc1s[0]
	act, fc2, err := g.ffn(li, L.fc1)
	if err != nil {
		return nil, "", err
	}
	if r.activation != "" && r.activation != act {
		return nil, "", g.errf("layer %d: activation %s, layer 0 has %s", li, act, r.activation)
	}
	r.activation = act
	L.fc2 = fc2
	s2, err := g.residualAdd(fc2.y, res)
	if err != nil {
		return nil, "", g.errf("layer %d: fc2 (%s) output is not added back to the residual stream %q", li, g.label(fc2.node), res)
	}
	if r.preLN {
		return L, s2, nil
	}
	L.ffnLN, err = g.lnAt(s2)
	if err != nil {
		return nil, "", err
	}
	if L.ffnLN == nil {
		return nil, "", g.errf("layer %d: no LayerNorm (final_layer_norm) after the feed-forward residual sum %q", li, s2)
	}
	return L, L.ffnLN.out, nil
}

// attnWalk follows a projection's output through reshapes, transposes and
// scalar scalings to the attention MatMul it feeds.
func (g *onnxGraph) attnWalk(li int, l *onnxLinear) (mm, slot, reshape int, scale float64, err error) {
	scale, reshape = 1, -1
	cur := l.y
	for range 32 {
		d := g.direct(cur)
		if len(d) != 1 {
			return 0, 0, 0, 0, g.errf("layer %d: the output of projection %s (value %q) has %d consumers; want 1 leading to the attention", li, g.label(l.node), cur, len(d))
		}
		u := d[0]
		switch op := g.op(u.node); {
		case onnxShuffleOps[op] && u.slot == 0:
			if op == "Reshape" && reshape < 0 {
				reshape = u.node
			}
		case op == "Mul" || op == "Div":
			c, ok := g.scalarOf(g.input(u.node, 1-u.slot))
			if !ok || (op == "Div" && (u.slot != 0 || c == 0)) {
				return 0, 0, 0, 0, g.errf("layer %d: %s after projection %s is not a scaling by a constant", li, g.label(u.node), g.label(l.node))
			}
			if op == "Div" {
				c = 1 / c
			}
			scale *= c
		case op == "MatMul":
			if _, _, isW := g.weightOf(g.input(u.node, 1-u.slot)); isW {
				return 0, 0, 0, 0, g.errf("layer %d: projection %s feeds another linear layer %s, not the attention", li, g.label(l.node), g.label(u.node))
			}
			return u.node, u.slot, reshape, scale, nil
		default:
			return 0, 0, 0, 0, g.errf("layer %d: %s between projection %s and the attention is not expected", li, g.label(u.node), g.label(l.node))
		}
		cur = g.output(u.node)
	}
	return 0, 0, 0, 0, g.errf("layer %d: projection %s does not reach an attention MatMul", li, g.label(l.node))
}

// scoresToContext checks that the scores flow through a Softmax into the
// context MatMul (input 0), and returns the product of the constant
// scalings applied to the scores before the Softmax.
func (g *onnxGraph) scoresToContext(li, scores, ctx int) (float64, error) {
	scale := 1.0
	cur := g.output(scores)
	soft := -1
	for range 32 {
		d := g.direct(cur)
		if len(d) != 1 {
			return 0, g.errf("layer %d: the attention scores (value %q) have %d consumers; want 1 leading to a Softmax", li, cur, len(d))
		}
		u := d[0]
		op := g.op(u.node)
		if op == "Softmax" {
			soft = u.node
			break
		}
		if op == "Mul" || op == "Div" {
			if c, ok := g.scalarOf(g.input(u.node, 1-u.slot)); ok {
				if op == "Div" {
					c = 1 / c
				}
				scale *= c
			}
		}
		cur = g.output(u.node)
	}
	if soft < 0 {
		return 0, g.errf("layer %d: no Softmax after the attention scores %s", li, g.label(scores))
	}
	if g.attrInt(soft, "axis", -1) != -1 {
		return 0, g.errf("layer %d: %s is not over the last axis", li, g.label(soft))
	}
	// From the Softmax to the context MatMul's input 0, a few nodes
	// (NaN guards, casts).
	frontier := []string{g.output(soft)}
	seen := map[int]bool{}
	for len(frontier) > 0 && len(seen) < 32 {
		v := frontier[0]
		frontier = frontier[1:]
		for _, u := range g.direct(v) {
			if u.node == ctx && u.slot == 0 {
				return scale, nil
			}
			if !seen[u.node] && g.op(u.node) != "MatMul" {
				seen[u.node] = true
				frontier = append(frontier, g.nodes[u.node].Output...)
			}
		}
	}
	return 0, g.errf("layer %d: the Softmax %s does not feed the context MatMul %s", li, g.label(soft), g.label(ctx))
}

// heads infers the number of attention heads from the Reshape that splits
// q into [..., heads, head_dim], falling back to the scaling of q
// (1/sqrt(head_dim)); both must agree when both are there.
func (g *onnxGraph) heads(li, hidden, reshape int, scale float64) (int, error) {
	headDim := 0
	if reshape >= 0 {
		tail := g.shapeTail(g.input(reshape, 1))
		if n := len(tail); n >= 2 {
			a, b := tail[n-2], tail[n-1]
			switch {
			case a > 0 && b > 0 && int(a*b) == hidden:
				headDim = int(b)
			case a == -1 && b > 0 && hidden%int(b) == 0:
				headDim = int(b)
			case a > 0 && b == -1 && hidden%int(a) == 0:
				headDim = hidden / int(a)
			}
		}
	}
	if scale == 1 {
		return 0, g.errf("layer %d: q is not scaled; OPT scales q by 1/sqrt(head_dim)", li)
	}
	if math.IsNaN(scale) || math.IsInf(scale, 0) {
		return 0, g.errf("layer %d: attention scale %g is not 1/sqrt(head_dim)", li, scale)
	}
	if headDim == 0 {
		if !(scale > 0 && scale <= 1) {
			return 0, g.errf("layer %d: cannot infer the attention heads: no [heads, head_dim] Reshape of q, and the attention scale %g is not 1/sqrt(head_dim)", li, scale)
		}
		hd := math.Round(1 / (scale * scale))
		if hd < 1 || hd > float64(hidden) || hidden%int(hd) != 0 {
			return 0, g.errf("layer %d: cannot infer the attention heads: attention scale %g gives head_dim %g, which does not divide hidden %d", li, scale, hd, hidden)
		}
		headDim = int(hd)
	}
	want := 1 / math.Sqrt(float64(headDim))
	if math.Abs(scale-want) > 1e-5*want {
		return 0, g.errf("layer %d: attention scale %g is not 1/sqrt(head_dim %d) = %g", li, scale, headDim, want)
	}
	return hidden / headDim, nil
}

// shapeTail is the trailing constant entries of a shape vector: all of
// them for a constant, the constant inputs at the end of a Concat.
func (g *onnxGraph) shapeTail(v string) []int64 {
	vals := func(v string) ([]int64, bool) {
		in, ok := g.constOf(v)
		if !ok {
			return nil, false
		}
		f, ok := g.s.constValues(in)
		if !ok {
			return nil, false
		}
		out := make([]int64, len(f))
		for i, x := range f {
			out[i] = int64(x)
		}
		return out, true
	}
	if c, ok := vals(v); ok {
		return c
	}
	p, ok := g.producer[v]
	if !ok || g.op(p) != "Concat" {
		return nil
	}
	var tail []int64
	in := g.nodes[p].Input
	for i := len(in) - 1; i >= 0; i-- {
		c, ok := vals(in[i])
		if !ok {
			break
		}
		tail = append(slices.Clone(c), tail...)
	}
	return tail
}

// residualAdd finds the Add of y (looking through pass ops) with the
// residual stream h, and returns its output.
func (g *onnxGraph) residualAdd(y, h string) (string, error) {
	oh := g.origin(h)
	for _, u := range g.uses(y) {
		if g.op(u.node) == "Add" && g.origin(g.input(u.node, 1-u.slot)) == oh {
			return g.output(u.node), nil
		}
	}
	return "", fmt.Errorf("no residual Add")
}

// ffn follows fc1's output through the activation to fc2.
func (g *onnxGraph) ffn(li int, fc1 *onnxLinear) (string, *onnxLinear, error) {
	var fc2 []*onnxLinear
	var ops []int
	seen := map[int]bool{}
	frontier := []string{fc1.y}
	for len(frontier) > 0 {
		v := frontier[0]
		frontier = frontier[1:]
		for _, u := range g.direct(v) {
			if seen[u.node] {
				continue
			}
			seen[u.node] = true
			l, err := g.linearAt(u)
			if err != nil {
				return "", nil, err
			}
			if l != nil {
				fc2 = append(fc2, l)
				continue
			}
			if len(seen) > 32 {
				return "", nil, g.errf("layer %d: more than 32 nodes between fc1 (%s) and a linear layer", li, g.label(fc1.node))
			}
			ops = append(ops, u.node)
			frontier = append(frontier, g.nodes[u.node].Output...)
		}
	}
	if len(fc2) != 1 {
		return "", nil, g.errf("layer %d: fc1 (%s) output reaches %d linear layers through its activation; want 1 (fc2)", li, g.label(fc1.node), len(fc2))
	}
	act, err := g.activation(li, ops)
	if err != nil {
		return "", nil, err
	}
	return act, fc2[0], nil
}

// activation names the activation computed by nodes (between fc1 and fc2).
func (g *onnxGraph) activation(li int, nodes []int) (string, error) {
	has := map[string]int{}
	gelu := -1
	var list []string
	for _, i := range nodes {
		op := g.op(i)
		if onnxPassOps[op] {
			continue
		}
		has[op]++
		list = append(list, op)
		if op == "Gelu" {
			gelu = i
		}
	}
	only := func(ops ...string) bool {
		if len(has) != len(ops) {
			return false
		}
		for _, o := range ops {
			if has[o] == 0 {
				return false
			}
		}
		return true
	}
	switch {
	case only("Relu"):
		return "relu", nil
	case gelu >= 0 && len(has) == 1:
		if a := g.attr(gelu, "approximate"); a != nil && string(a.S) == "tanh" {
			return "gelu_new", nil
		}
		return "gelu", nil
	case has["Erf"] > 0:
		return "gelu", nil
	case has["Tanh"] > 0 && (has["Pow"] > 0 || has["Mul"] > 1):
		return "gelu_new", nil
	case only("Tanh"):
		return "tanh", nil
	case only("Sigmoid"):
		return "sigmoid", nil
	case only("Sigmoid", "Mul"):
		return "silu", nil
	case len(has) == 0:
		return "", g.errf("layer %d: no activation between fc1 and fc2", li)
	}
	return "", g.errf("layer %d: activation between fc1 and fc2 (ops %s) not recognised", li, strings.Join(list, ", "))
}

// head recognises project_out (when the embedding is narrower than the
// hidden size) and the LM head, and decides whether it is tied.
func (g *onnxGraph) head(r *onnxRecognised, l *onnxLinear) error {
	if r.projDim != r.hidden {
		if l.bias != nil {
			return g.errf("project_out %s has a bias; OPT's has none", g.label(l.node))
		}
		r.projectOut = l.weight
		lins, err := g.linearUses(l.y)
		if err != nil {
			return err
		}
		if len(lins) != 1 {
			return g.errf("project_out (%s) output feeds %d linear layers; want 1 (the LM head)", g.label(l.node), len(lins))
		}
		l = lins[0]
	}
	if l.bias != nil {
		return g.errf("the LM head %s has a bias; OPT's has none", g.label(l.node))
	}
	if !g.isOutput(l.y) {
		r.warnings = append(r.warnings, fmt.Sprintf("%s: the LM head output %q is not a graph output", g.path, l.y))
	}
	r.head = l.weight
	emb := r.embedTokens
	switch {
	case l.weight.init == emb.init && !l.weight.transpose:
		r.tied = true
	case slices.Equal(l.weight.shape, emb.shape):
		a, err := g.s.weightData(emb)
		if err != nil {
			return err
		}
		b, err := g.s.weightData(l.weight)
		if err != nil {
			return err
		}
		if slices.Equal(a, b) {
			r.tied = true
			r.warnings = append(r.warnings, fmt.Sprintf("%s: the LM head weight %q is a copy of the token embedding %q; taken as tied", g.path, l.weight.init.name, emb.init.name))
		}
	}
	return nil
}
