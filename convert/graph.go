package convert

import (
	"fmt"
	"math"
	"strconv"

	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/format/onnxpb"
	"github.com/slopeml/slope/format/slopepb"
)

// GraphOpsetVersion is the version of the ai.slope operator set the graphs
// built here use.
const GraphOpsetVersion = 1

// PositionOffset is OPT's learned-position offset: position p of a token
// reads row p+2 of embed_positions.
const PositionOffset = 2

// TransposeMaskName is the name of the double-pruned transpose mask of an
// NM weight.
func TransposeMaskName(weight string) string { return weight + ".transpose_mask" }

// OpsetImports is the opset_import of a manifest whose graph BuildOPTGraph
// made.
func OpsetImports() []*onnxpb.OperatorSetIdProto {
	return []*onnxpb.OperatorSetIdProto{{Domain: format.GraphDomain, Version: GraphOpsetVersion}}
}

// BuildOPTGraph builds the graph of an OPT causal LM with config c. sparse
// maps each linear weight stored as NM (with its transpose mask named
// TransposeMaskName(weight)) to its pattern; the other linear weights are
// dense. Tensor inputs name canonical weights; "" is an omitted optional
// input (absent bias, non-affine LayerNorm, absent adapter factors).
//
// Graph inputs: input_ids [batch, seq] int64, attention_mask [batch, seq]
// int64 (1 = token, 0 = padding). Graph output: logits [batch, seq, vocab]
// float. Nodes (all domain ai.slope), in order:
//
//	Embedding(input_ids, attention_mask, embed_tokens, embed_positions[, project_in]) -> embed
//	    attribute position_offset=2; positions are cumsum(mask)*mask-1 per
//	    row, the token embedding (projected by project_in when present)
//	    plus the position embedding.
//	per layer i, with x its input (prefix layers.i.):
//	  pre-LayerNorm (do_layer_norm_before):
//	    LayerNorm(x, self_attn_layer_norm.{weight,bias}) -> attn_norm   (epsilon)
//	    SlopeLinear(attn_norm, q_proj.weight, q_proj.bias, q_proj.weight.transpose_mask, L, R) -> q   (n, m)
//	        L, R are "" without an adapter; in the merged layout L is ""
//	        and the node has merged_rank too (see GraphAdapter)
//	    ... k, v likewise (Linear(x, weight, bias) when the weight is dense)
//	    CausalAttention(q, k, v, attention_mask) -> attn   (num_heads, scale = head_dim^-0.5)
//	    SlopeLinear(attn, out_proj...) -> attn_out
//	    Add(x, attn_out) -> attn_res
//	    LayerNorm(attn_res, final_layer_norm.{weight,bias}) -> ffn_norm
//	    SlopeLinear(ffn_norm, fc1...) -> fc1
//	    Relu(fc1) -> act   (or Gelu, GeluTanh, Silu, Tanh, Sigmoid per activation_function)
//	    SlopeLinear(act, fc2...) -> fc2
//	    Add(attn_res, fc2) -> out
//	  post-LayerNorm: the projections read x, and the LayerNorms follow the
//	  residual Adds instead (Add -> attn_sum, LayerNorm -> attn_res; Add ->
//	  ffn_sum, LayerNorm -> out).
//	LayerNorm(h, decoder.final_layer_norm.{weight,bias}) -> final_norm   unless removed
//	Linear(h, project_out.weight, "") -> project_out   when word_embed_proj_dim != hidden_size
//	LMHead(h, embed_tokens when tied, else lm_head.weight) -> logits
func BuildOPTGraph(c *slopepb.OPTConfig, sparse map[string]format.NM) (*onnxpb.GraphProto, error) {
	return BuildOPTGraphAdapters(c, sparse, nil)
}

// GraphAdapter names the adapter factors of an NM weight in the graph: L
// and R (inputs 4 and 5 of its SlopeLinear node), or, in the merged layout
// (MergedRank > 0: the weight's last MergedRank rows are Lᵀ), R alone with
// the node attribute merged_rank.
type GraphAdapter struct {
	L, R       string
	MergedRank int
}

// BuildOPTGraphAdapters is BuildOPTGraph with low-rank adapters on some
// NM weights (keys of adapters, which must be keys of sparse too).
func BuildOPTGraphAdapters(c *slopepb.OPTConfig, sparse map[string]format.NM, adapters map[string]GraphAdapter) (*onnxpb.GraphProto, error) {
	for w := range adapters {
		if _, ok := sparse[w]; !ok {
			return nil, fmt.Errorf("graph: adapter on %q, which is not an NM weight", w)
		}
	}
	act, ok := Activations[c.ActivationFunction]
	if !ok {
		return nil, fmt.Errorf("graph: activation_function %q is not supported", c.ActivationFunction)
	}
	if c.NumAttentionHeads <= 0 || c.HiddenSize%c.NumAttentionHeads != 0 {
		return nil, fmt.Errorf("graph: num_attention_heads %d does not divide hidden_size %d", c.NumAttentionHeads, c.HiddenSize)
	}
	b := &graphBuilder{c: c, sparse: sparse, adapters: adapters, used: map[string]bool{}}
	g := &onnxpb.GraphProto{
		Name: "opt",
		Input: []*onnxpb.ValueInfoProto{
			tensorValue("input_ids", onnxpb.TensorProto_INT64, "batch", "seq"),
			tensorValue("attention_mask", onnxpb.TensorProto_INT64, "batch", "seq"),
		},
		Output: []*onnxpb.ValueInfoProto{
			tensorValue("logits", onnxpb.TensorProto_FLOAT, "batch", "seq", strconv.FormatInt(c.VocabSize, 10)),
		},
	}
	b.g = g
	for _, in := range g.Input {
		b.used[in.Name] = true
	}
	embIn := []string{"input_ids", "attention_mask", "decoder.embed_tokens.weight", "decoder.embed_positions.weight"}
	if hasProjection(c) {
		embIn = append(embIn, "decoder.project_in.weight")
	}
	h := b.node("Embedding", "embed", embIn, intAttr("position_offset", PositionOffset))
	headDim := c.HiddenSize / c.NumAttentionHeads
	scale := float32(1 / math.Sqrt(float64(headDim)))
	for i := 0; i < int(c.NumHiddenLayers); i++ {
		w := LayerPrefix(i)                    // weight prefix
		v := "layers." + strconv.Itoa(i) + "." // value prefix
		x := h
		attnIn := x
		if c.DoLayerNormBefore {
			attnIn = b.layerNorm(v+"attn_norm", x, w+"self_attn_layer_norm")
		}
		q := b.linear(v+"q", attnIn, w+"self_attn.q_proj")
		k := b.linear(v+"k", attnIn, w+"self_attn.k_proj")
		val := b.linear(v+"v", attnIn, w+"self_attn.v_proj")
		attn := b.node("CausalAttention", v+"attn", []string{q, k, val, "attention_mask"},
			intAttr("num_heads", c.NumAttentionHeads), floatAttr("scale", scale))
		o := b.linear(v+"attn_out", attn, w+"self_attn.out_proj")
		var res string
		if c.DoLayerNormBefore {
			res = b.node("Add", v+"attn_res", []string{x, o})
		} else {
			sum := b.node("Add", v+"attn_sum", []string{x, o})
			res = b.layerNorm(v+"attn_res", sum, w+"self_attn_layer_norm")
		}
		ffnIn := res
		if c.DoLayerNormBefore {
			ffnIn = b.layerNorm(v+"ffn_norm", res, w+"final_layer_norm")
		}
		f1 := b.linear(v+"fc1", ffnIn, w+"fc1")
		a := b.node(act, v+"act", []string{f1})
		f2 := b.linear(v+"fc2", a, w+"fc2")
		if c.DoLayerNormBefore {
			h = b.node("Add", v+"out", []string{res, f2})
		} else {
			sum := b.node("Add", v+"ffn_sum", []string{res, f2})
			h = b.layerNorm(v+"out", sum, w+"final_layer_norm")
		}
	}
	if hasFinalLayerNorm(c) {
		h = b.layerNorm("final_norm", h, "decoder.final_layer_norm")
	}
	if hasProjection(c) {
		h = b.node("Linear", "project_out", []string{h, "decoder.project_out.weight", ""})
	}
	head := "lm_head.weight"
	if c.TieWordEmbeddings {
		head = "decoder.embed_tokens.weight"
	}
	b.node("LMHead", "logits", []string{h, head})
	if b.err != nil {
		return nil, b.err
	}
	return g, nil
}

type graphBuilder struct {
	c      *slopepb.OPTConfig
	sparse map[string]format.NM
	// adapters of NM weights, by weight name.
	adapters map[string]GraphAdapter
	g        *onnxpb.GraphProto
	used     map[string]bool
	err      error
}

// node appends a node whose single output (and node name) is out.
func (b *graphBuilder) node(op, out string, inputs []string, attrs ...*onnxpb.AttributeProto) string {
	if b.used[out] && b.err == nil {
		b.err = fmt.Errorf("graph: value %q defined twice", out)
	}
	b.used[out] = true
	b.g.Node = append(b.g.Node, &onnxpb.NodeProto{
		Name: out, OpType: op, Domain: format.GraphDomain,
		Input: inputs, Output: []string{out}, Attribute: attrs,
	})
	return out
}

func (b *graphBuilder) layerNorm(out, x, prefix string) string {
	wt, bs := "", ""
	if b.c.LayerNormElementwiseAffine {
		wt, bs = prefix+".weight", prefix+".bias"
	}
	eps := b.c.LayerNormEps
	if eps == 0 {
		eps = OPTLayerNormEps
	}
	return b.node("LayerNorm", out, []string{x, wt, bs}, floatAttr("epsilon", eps))
}

// linear is SlopeLinear for an NM weight, Linear for a dense one.
func (b *graphBuilder) linear(out, x, prefix string) string {
	weight, bias := prefix+".weight", ""
	if b.c.EnableBias {
		bias = prefix + ".bias"
	}
	if p, ok := b.sparse[weight]; ok {
		in := []string{x, weight, bias, TransposeMaskName(weight), "", ""}
		attrs := []*onnxpb.AttributeProto{intAttr("n", int64(p.N)), intAttr("m", int64(p.M))}
		if a, ok := b.adapters[weight]; ok {
			in[5] = a.R
			if a.MergedRank > 0 {
				attrs = append(attrs, intAttr("merged_rank", int64(a.MergedRank)))
			} else {
				in[4] = a.L
			}
		}
		return b.node("SlopeLinear", out, in, attrs...)
	}
	return b.node("Linear", out, []string{x, weight, bias})
}

func intAttr(name string, v int64) *onnxpb.AttributeProto {
	return &onnxpb.AttributeProto{Name: name, Type: onnxpb.AttributeProto_INT, I: v}
}

func floatAttr(name string, v float32) *onnxpb.AttributeProto {
	return &onnxpb.AttributeProto{Name: name, Type: onnxpb.AttributeProto_FLOAT, F: v}
}

// tensorValue describes a tensor value; a dim that parses as an integer is
// fixed, any other is symbolic.
func tensorValue(name string, elem onnxpb.TensorProto_DataType, dims ...string) *onnxpb.ValueInfoProto {
	shape := &onnxpb.TensorShapeProto{}
	for _, d := range dims {
		dim := &onnxpb.TensorShapeProto_Dimension{}
		if n, err := strconv.ParseInt(d, 10, 64); err == nil {
			dim.Value = &onnxpb.TensorShapeProto_Dimension_DimValue{DimValue: n}
		} else {
			dim.Value = &onnxpb.TensorShapeProto_Dimension_DimParam{DimParam: d}
		}
		shape.Dim = append(shape.Dim, dim)
	}
	return &onnxpb.ValueInfoProto{
		Name: name,
		Type: &onnxpb.TypeProto{Value: &onnxpb.TypeProto_TensorType{TensorType: &onnxpb.TypeProto_Tensor{ElemType: int32(elem), Shape: shape}}},
	}
}
