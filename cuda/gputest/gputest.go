// Package gputest holds the one rule every GPU test follows when it cannot
// use a GPU: fail when SLOPE_REQUIRE_GPU=1 (bench/gpu.sh sets it on GPU
// machines), else skip saying "NOT RUN (no GPU)", so that a machine
// without a GPU never reports GPU checks as passed.
package gputest

import (
	"os"
	"testing"
)

// Unavailable ends t because of err (the GPU or a library could not be
// opened), by that rule.
func Unavailable(t testing.TB, err error) {
	t.Helper()
	if os.Getenv("SLOPE_REQUIRE_GPU") == "1" {
		t.Fatalf("SLOPE_REQUIRE_GPU=1 but: %v", err)
	}
	t.Skipf("NOT RUN (no GPU): %v", err)
}
