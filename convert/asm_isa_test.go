package convert

import (
	"strings"
	"testing"

	"github.com/slopeml/slope/internal/asmcheck"
)

// TestAVX2PruneNeedsNoAVX512: the hand-written AVX2 pruning kernels
// (select24RowAVX2, tmask24AVX2) must run on a CPU without AVX-512 (see
// package asmcheck).
func TestAVX2PruneNeedsNoAVX512(t *testing.T) {
	const path = "prune24avx2_amd64.s"
	bad, checked, err := asmcheck.AVX2Violations(path)
	if err != nil {
		t.Fatal(err)
	}
	if checked != 2 {
		t.Errorf("%s: %d AVX2 functions checked, want 2", path, checked)
	}
	if len(bad) > 0 {
		t.Errorf("%s: %d AVX2 kernel lines need AVX-512:\n%s", path, len(bad), strings.Join(bad, "\n"))
	}
}
