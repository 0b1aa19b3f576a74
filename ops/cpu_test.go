package ops_test

import (
	"testing"

	"github.com/slopeml/slope/ops"
	"github.com/slopeml/slope/ops/opstest"
)

func TestCPUConformance(t *testing.T) {
	opstest.Run(t, ops.NewCPU(), opstest.DefaultTolerance)
}

// The attention cases with head sizes of real models (the GPU's fused
// kernel takes only 64 and 128).
func TestCPUAttentionHeadSizes(t *testing.T) {
	for _, hd := range []int{64, 128} {
		opstest.RunAttention(t, ops.NewCPU(), opstest.DefaultTolerance, 2, hd)
	}
}
