package runtime

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/slopeml/slope/convert"
	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/format/onnxpb"
	"github.com/slopeml/slope/format/slopepb"
	"github.com/slopeml/slope/ops"
)

// tinyRewritten converts the reference model 2:4 and returns the path
// of a copy whose manifest edit changed.
func tinyRewritten(t *testing.T, edit func(*slopepb.Manifest)) string {
	t.Helper()
	dir := t.TempDir()
	plain, out := filepath.Join(dir, "plain.slope"), filepath.Join(dir, "edited.slope")
	if _, err := convert.DenseToSlope(t.Context(), convert.Options{In: convert.TinyLabel, Out: plain, NM: "2:4"}); err != nil {
		t.Fatal(err)
	}
	if err := format.Rewrite(plain, out, edit); err != nil {
		t.Fatal(err)
	}
	return out
}

func nodeNamed(m *slopepb.Manifest, name string) *onnxpb.NodeProto {
	for _, n := range m.Graph.Node {
		if n.Name == name {
			return n
		}
	}
	panic("no node " + name)
}

// TestOpenChecksEmbeddingTables: Open holds the LM head and the config to
// the Embedding node's tables, which bound the ids and positions a
// session can read; without a config, the position table is the limit.
func TestOpenChecksEmbeddingTables(t *testing.T) {
	for _, c := range []struct {
		name, want string
		edit       func(*slopepb.Manifest)
	}{
		{"LM head narrower than the vocabulary", "logits have 66 entries per token, the token embedding decoder.embed_tokens.weight has",
			func(m *slopepb.Manifest) { nodeNamed(m, "logits").Input[1] = "decoder.embed_positions.weight" }},
		{"config vocab_size", "config vocab_size 5000", func(m *slopepb.Manifest) { m.Architecture.GetOpt().VocabSize = 5000 }},
		{"config positions past the table", "config max_position_embeddings 1000, the position embedding decoder.embed_positions.weight has 64 learned positions",
			func(m *slopepb.Manifest) { m.Architecture.GetOpt().MaxPositionEmbeddings = 1000 }},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := tinyRewritten(t, c.edit)
			m, err := Open(path, nil)
			if err == nil {
				m.Close()
				t.Fatalf("opened; want an error with %q", c.want)
			}
			if !errors.Is(err, ErrModel) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v; want ErrModel with %q", err, c.want)
			}
		})
	}
	m, err := Open(tinyRewritten(t, func(m *slopepb.Manifest) { m.Architecture = nil }), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if m.MaxPositions() != 64 {
		t.Fatalf("without a config: %d positions, want the table's 64", m.MaxPositions())
	}
	if _, err := m.Score(t.Context(), make([]int32, 70), 0, 0, 1); err != nil {
		t.Fatalf("score with the default window: %v", err)
	}
}

// TestNonFiniteLogits: logits that overflow (here: the final hidden state
// doubled 130 times, past float32's range) make Generate and Score fail
// naming the logit, instead of sampling token 0 or averaging NaN.
func TestNonFiniteLogits(t *testing.T) {
	path := tinyRewritten(t, func(m *slopepb.Manifest) {
		prev := "final_norm"
		var nodes []*onnxpb.NodeProto
		for i := range 130 {
			out := fmt.Sprintf("doubled.%d", i)
			nodes = append(nodes, &onnxpb.NodeProto{Name: out, OpType: ops.OpAdd, Domain: format.GraphDomain, Input: []string{prev, prev}, Output: []string{out}})
			prev = out
		}
		head := len(m.Graph.Node) - 1
		m.Graph.Node[head].Input[0] = prev
		m.Graph.Node = append(m.Graph.Node[:head], append(nodes, m.Graph.Node[head])...)
	})
	m, err := Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	_, err = m.Generate(t.Context(), [][]int32{{2, 100, 200}}, GenerateOptions{MaxTokens: 3, EOS: -1, Pad: 1})
	if err == nil || !strings.Contains(err.Error(), "generate: sequence 0, new token 0: logit") {
		t.Fatalf("generate: %v", err)
	}
	_, err = m.Score(t.Context(), []int32{2, 100, 200}, 0, 0, 1)
	if err == nil || !strings.Contains(err.Error(), "score: logits before token 1: logit") {
		t.Fatalf("score: %v", err)
	}
}

// TestScoreWindowWithoutLimit: the default window of a model without a
// position limit is an error that asks for one.
func TestScoreWindowWithoutLimit(t *testing.T) {
	m := &Model{maxPos: noPositionLimit}
	if _, _, err := m.ScoreWindow(0, 0); err == nil || !strings.Contains(err.Error(), "no position limit") {
		t.Fatalf("ScoreWindow(0, 0): %v", err)
	}
	if w, s, err := m.ScoreWindow(128, 0); err != nil || w != 128 || s != 64 {
		t.Fatalf("ScoreWindow(128, 0) = %d, %d, %v", w, s, err)
	}
}
