package ops_test

import (
	"testing"

	"github.com/slopeml/slope/ops"
	"github.com/slopeml/slope/ops/opstest"
)

func TestCPUGrad(t *testing.T) {
	opstest.RunGrad(t, ops.NewCPUGrad())
}
