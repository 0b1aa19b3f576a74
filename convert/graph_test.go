package convert

import (
	"strings"
	"testing"

	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/format/slopepb"
)

// checkGraphRefs verifies that every node input is a graph input, an
// earlier output or a tensor in tensors, and outputs are unique.
func checkGraphRefs(t *testing.T, c *slopepb.OPTConfig, sparse map[string]format.NM) map[string]int {
	t.Helper()
	g, err := BuildOPTGraph(c, sparse)
	if err != nil {
		t.Fatal(err)
	}
	tensors := map[string]bool{}
	for _, n := range OPTWeightNames(c) {
		tensors[n] = true
	}
	for w := range sparse {
		tensors[TransposeMaskName(w)] = true
	}
	defined := map[string]bool{}
	for _, in := range g.Input {
		defined[in.Name] = true
	}
	ops := map[string]int{}
	for _, n := range g.Node {
		ops[n.OpType]++
		if n.Domain != format.GraphDomain {
			t.Errorf("node %s domain %q", n.Name, n.Domain)
		}
		for _, in := range n.Input {
			if in != "" && !defined[in] && !tensors[in] {
				t.Errorf("node %s (%s): input %q undefined", n.Name, n.OpType, in)
			}
		}
		for _, out := range n.Output {
			if defined[out] || tensors[out] {
				t.Errorf("node %s: output %q redefined", n.Name, out)
			}
			defined[out] = true
		}
	}
	if len(g.Output) != 1 || g.Output[0].Name != "logits" || !defined["logits"] {
		t.Errorf("graph output %v", g.Output)
	}
	used := map[string]bool{}
	for _, n := range g.Node {
		for _, in := range n.Input {
			used[in] = true
		}
	}
	for name := range tensors {
		if !used[name] {
			t.Errorf("tensor %s not used by the graph", name)
		}
	}
	return ops
}

func TestBuildOPTGraphDefault(t *testing.T) {
	src, err := OpenSource(TinyLabel)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	c := src.Config()
	sparse := map[string]format.NM{}
	for _, w := range OPTWeights(c) {
		if w.Linear && !strings.Contains(w.Name, "fc2") {
			sparse[w.Name] = format.NM{N: 2, M: 4}
		}
	}
	ops := checkGraphRefs(t, c, sparse)
	want := map[string]int{"Embedding": 1, "LayerNorm": 5, "SlopeLinear": 10, "Linear": 2, "CausalAttention": 2,
		"Relu": 2, "Add": 4, "LMHead": 1}
	for op, n := range want {
		if ops[op] != n {
			t.Errorf("%d %s nodes, want %d (all: %v)", ops[op], op, n, ops)
		}
	}
	g, _ := BuildOPTGraph(c, sparse)
	for _, n := range g.Node {
		switch n.OpType {
		case "SlopeLinear":
			if len(n.Input) != 6 || n.Input[4] != "" || n.Input[5] != "" || n.Input[3] != TransposeMaskName(n.Input[1]) {
				t.Errorf("SlopeLinear inputs %v", n.Input)
			}
		case "CausalAttention":
			if n.Attribute[0].I != 4 || n.Attribute[1].F != 0.25 {
				t.Errorf("attention attributes %v", n.Attribute)
			}
		case "LMHead":
			if n.Input[1] != "decoder.embed_tokens.weight" {
				t.Errorf("tied LM head reads %s", n.Input[1])
			}
		case "Embedding":
			if n.Attribute[0].Name != "position_offset" || n.Attribute[0].I != 2 || len(n.Input) != 4 {
				t.Errorf("embedding %v", n)
			}
		}
	}
}

func TestBuildOPTGraphVariants(t *testing.T) {
	c, err := ParseOPTConfig("c", []byte(`{"model_type":"opt","num_hidden_layers":2,"hidden_size":32,"num_attention_heads":2,
		"ffn_dim":64,"vocab_size":50,"word_embed_proj_dim":16,"do_layer_norm_before":false,"enable_bias":false,
		"tie_word_embeddings":false,"activation_function":"gelu"}`))
	if err != nil {
		t.Fatal(err)
	}
	ops := checkGraphRefs(t, c, nil)
	// post-LN: two LayerNorms per layer, no final one (it only exists with pre-LN).
	want := map[string]int{"LayerNorm": 4, "Linear": 13, "Gelu": 2, "SlopeLinear": 0, "Relu": 0}
	for op, n := range want {
		if ops[op] != n {
			t.Errorf("%d %s nodes, want %d (all: %v)", ops[op], op, n, ops)
		}
	}
	c.ActivationFunction = "mish"
	if _, err := BuildOPTGraph(c, nil); err == nil {
		t.Error("unknown activation accepted")
	}
}
