package ops

import (
	"errors"
	"math"
	"testing"

	"github.com/slopeml/slope/format/onnxpb"
)

// TestLayerNormEpsilon: a LayerNorm's epsilon defaults to 1e-5; one that
// is NaN, infinite or negative is a bad node (it would make the outputs
// NaN), 0 is allowed.
func TestLayerNormEpsilon(t *testing.T) {
	ln := func(attrs ...*onnxpb.AttributeProto) *Node {
		return NewNode(0, &onnxpb.NodeProto{Name: "ln", OpType: OpLayerNorm, Attribute: attrs})
	}
	eps := func(v float32) *onnxpb.AttributeProto {
		return &onnxpb.AttributeProto{Name: "epsilon", Type: onnxpb.AttributeProto_FLOAT, F: v}
	}
	if e, err := ln().LayerNormEpsilon(); err != nil || e != 1e-5 {
		t.Fatalf("default: %v, %v", e, err)
	}
	for _, v := range []float32{0, 1e-12, 1e-5} {
		if e, err := ln(eps(v)).LayerNormEpsilon(); err != nil || e != v {
			t.Errorf("epsilon %v: %v, %v", v, e, err)
		}
	}
	for _, v := range []float32{float32(math.NaN()), float32(math.Inf(1)), float32(math.Inf(-1)), -1e-5} {
		if _, err := ln(eps(v)).LayerNormEpsilon(); !errors.Is(err, ErrBadNode) {
			t.Errorf("epsilon %v: %v, want ErrBadNode", v, err)
		}
	}
}
