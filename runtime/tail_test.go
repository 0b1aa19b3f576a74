package runtime

import (
	"path/filepath"
	"slices"
	"testing"

	"github.com/slopeml/slope/convert"
	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/format/onnxpb"
	"github.com/slopeml/slope/format/slopepb"
	"github.com/slopeml/slope/ops"
)

// A graph with a node after the LM head (it reads the logits; its output
// is unused) generates what the plain graph generates: the last-position
// runs keep each sequence's last row even when they cannot trim the LM
// head's input.
func TestGenerateNodeAfterLMHead(t *testing.T) {
	dir := t.TempDir()
	plain := filepath.Join(dir, "plain.slope")
	if _, err := convert.DenseToSlope(t.Context(), convert.Options{In: convert.TinyLabel, Out: plain, NM: "2:4"}); err != nil {
		t.Fatal(err)
	}
	tail := filepath.Join(dir, "tail.slope")
	err := format.Rewrite(plain, tail, func(m *slopepb.Manifest) {
		m.Graph.Node = append(m.Graph.Node, &onnxpb.NodeProto{Name: "after_head", OpType: ops.OpRelu, Domain: "ai.slope",
			Input: []string{"logits"}, Output: []string{"unused"}})
	})
	if err != nil {
		t.Fatal(err)
	}
	prompts := [][]int32{{2, 100, 200, 300}, {2, 7, 8, 9, 10, 11}}
	var got [2][][]int32
	for i, path := range []string{plain, tail} {
		md, err := Open(path, nil)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if got[i], err = md.Generate(t.Context(), prompts, GenerateOptions{MaxTokens: 5, EOS: -1, Pad: 1}); err != nil {
			t.Fatal(err)
		}
		md.Close()
	}
	for b := range prompts {
		if !slices.Equal(got[0][b], got[1][b]) {
			t.Errorf("prompt %d: %v with the plain graph, %v with a node after the LM head", b, got[0][b], got[1][b])
		}
	}
}
