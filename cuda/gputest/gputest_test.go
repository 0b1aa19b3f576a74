package gputest

import (
	"errors"
	"fmt"
	"testing"

	"github.com/slopeml/slope/cuda/dl"
)

// recorder stands in for a test: it records how Unavailable ended it.
type recorder struct {
	testing.TB
	how string
}

func (r *recorder) Helper()                   {}
func (r *recorder) Fatalf(f string, a ...any) { r.how = "fail" }
func (r *recorder) Skipf(f string, a ...any)  { r.how = "skip" }

func TestUnavailableRule(t *testing.T) {
	noDevice := errors.New("no CUDA device")
	noGPU := fmt.Errorf("%w: cuInit: CUDA_ERROR_NO_DEVICE (100)", noDevice)
	noLib := fmt.Errorf("sparselt: %w", fmt.Errorf("libcusparseLt.so.0: %w", dl.ErrNotFound))
	broken := errors.New("kernels: cuModuleLoadData: CUDA_ERROR_INVALID_PTX (218)")
	for _, c := range []struct {
		name    string
		err     error
		require string
		want    string
	}{
		{"no GPU", noGPU, "", "skip"},
		{"no library", noLib, "", "skip"},
		{"no GPU, required", noGPU, "1", "fail"},
		{"no library, required", noLib, "1", "fail"},
		{"broken set-up", broken, "", "fail"},
		{"broken set-up, required", broken, "1", "fail"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv("SLOPE_REQUIRE_GPU", c.require)
			r := &recorder{TB: t}
			Unavailable(r, c.err, noDevice)
			if r.how != c.want {
				t.Fatalf("%v with SLOPE_REQUIRE_GPU=%q: %s, want %s", c.err, c.require, r.how, c.want)
			}
		})
	}
}
