// Package gputest holds the one rule every GPU test follows when it cannot
// use a GPU, so that a machine without one never reports GPU checks as
// passed and a machine with one never hides a broken check as "no GPU":
//
//   - the error says there is no usable GPU (it wraps the caller's
//     no-device sentinel) or a library is missing (it wraps
//     dl.ErrNotFound): the test fails when SLOPE_REQUIRE_GPU=1
//     (bench/gpu.sh sets it on GPU machines), else it is skipped saying
//     "NOT RUN (no GPU)";
//   - any other error (a GPU is there but a kernel, stream or handle
//     fails) fails the test.
package gputest

import (
	"errors"
	"os"
	"testing"

	"github.com/slopeml/slope/cuda/dl"
)

// Unavailable ends t because of err, by that rule. noDevice is
// driver.ErrNoDevice; it is passed in because the driver's own tests use
// this package too.
func Unavailable(t testing.TB, err, noDevice error) {
	t.Helper()
	if !errors.Is(err, noDevice) && !errors.Is(err, dl.ErrNotFound) {
		t.Fatalf("GPU setup failed: %v", err)
		return
	}
	if os.Getenv("SLOPE_REQUIRE_GPU") == "1" {
		t.Fatalf("SLOPE_REQUIRE_GPU=1 but: %v", err)
		return
	}
	t.Skipf("NOT RUN (no GPU): %v", err)
}
