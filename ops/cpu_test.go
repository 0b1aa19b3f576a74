package ops_test

import (
	"testing"

	"github.com/slopeml/slope/ops"
	"github.com/slopeml/slope/ops/opstest"
)

func TestCPUConformance(t *testing.T) {
	opstest.Run(t, ops.NewCPU(), opstest.DefaultTolerance)
}
