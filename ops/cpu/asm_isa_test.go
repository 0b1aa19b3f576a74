package cpu

import (
	"os"
	"strings"
	"testing"

	"github.com/slopeml/slope/internal/asmcheck"
)

// TestAVX2KernelsNeedNoAVX512 reads the generated kernels: every *AVX2
// function must run on a CPU without AVX-512. A machine with AVX-512
// executes EVEX-only registers anyway (even with GODEBUG=cpu.avx512f=off),
// so only this check catches them off such a machine.
func TestAVX2KernelsNeedNoAVX512(t *testing.T) {
	const path = "kernels_amd64.s"
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	bad, err := asmcheck.AVX2Violations(f, path)
	if err != nil {
		t.Fatal(err)
	}
	if len(bad) > 0 {
		t.Fatalf("%s: %d AVX2 kernel lines need AVX-512:\n%s", path, len(bad), strings.Join(bad, "\n"))
	}
}
