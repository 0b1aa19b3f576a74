package cuda

import (
	"reflect"
	"testing"
)

func TestProfileGroup(t *testing.T) {
	for _, c := range []struct{ op, node, want string }{
		{"SlopeLinear", "decoder.layers.11.fc1", "SlopeLinear decoder.layers.*.fc1"},
		{"LayerNorm", "decoder.final_layer_norm", "LayerNorm decoder.final_layer_norm"},
		{"CausalAttention", "decoder.layers.0.self_attn", "CausalAttention decoder.layers.*.self_attn"},
	} {
		if got := profileGroup(c.op, c.node); got != c.want {
			t.Errorf("profileGroup(%q, %q) = %q, want %q", c.op, c.node, got, c.want)
		}
	}
}

// TestProfileRows: the sums come out as a tree, children under their
// parent, siblings by time (most first, then by name).
func TestProfileRows(t *testing.T) {
	totals := map[profKey]*profTotal{
		{label: "b"}:              {calls: 2, ms: 3},
		{label: "a"}:              {calls: 1, ms: 5},
		{parent: "a", label: "x"}: {calls: 4, ms: 1},
		{parent: "a", label: "y"}: {calls: 4, ms: 2},
		{parent: "b", label: "x"}: {calls: 2, ms: 3},
		{label: "c"}:              {calls: 1, ms: 3},
	}
	got := profileRows(totals)
	want := []profRow{
		{label: "a", depth: 0, calls: 1, ms: 5},
		{label: "y", depth: 1, calls: 4, ms: 2},
		{label: "x", depth: 1, calls: 4, ms: 1},
		{label: "b", depth: 0, calls: 2, ms: 3},
		{label: "x", depth: 1, calls: 2, ms: 3},
		{label: "c", depth: 0, calls: 1, ms: 3},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("profileRows:\n got %+v\nwant %+v", got, want)
	}
}
