package cpu

import (
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/slopeml/slope/internal/asmcheck"
)

// kernelsPath is the generated assembly the tests below read.
const kernelsPath = "kernels_amd64.s"

// TestAVX2KernelsNeedNoAVX512 reads the generated kernels: every *AVX2
// function must run on a CPU without AVX-512. A machine with AVX-512
// executes EVEX-only registers anyway (even with GODEBUG=cpu.avx512f=off),
// so only this check catches them off such a machine.
func TestAVX2KernelsNeedNoAVX512(t *testing.T) {
	bad, checked, err := asmcheck.AVX2Violations(kernelsPath)
	if err != nil {
		t.Fatal(err)
	}
	if checked < 50 { // a floor against an empty or unparsed file, not a count to keep in step
		t.Fatalf("%s: only %d AVX2 kernels found", kernelsPath, checked)
	}
	if len(bad) > 0 {
		t.Fatalf("%s: %d AVX2 kernel lines need AVX-512:\n%s", kernelsPath, len(bad), strings.Join(bad, "\n"))
	}
}

// fp16Kernel matches the names of the fp16 kernels (F16, not BF16).
var fp16Kernel = regexp.MustCompile(`(^|[^B])F16`)

// TestKernelFeaturesAreDispatched: every extension a kernel's Requires
// line names is one that the dispatch of its kind checks. The dispatch is
// by name suffix, which this test enforces; the allowed lists below are
// copies of what kern_amd64.go's variables test, to keep in step with
// them: *AVX2 kernels run under haveAVX2FMA (AVX, AVX2, FMA), plus
// haveF16C for the fp16 ones (F16 but not BF16 in the name); *AVX512
// kernels under haveAVX512 (AVX-512F and VL, BMI2). SSE, SSE2 and MMX+
// are in every amd64 CPU.
func TestKernelFeaturesAreDispatched(t *testing.T) {
	req, err := asmcheck.Requires(kernelsPath)
	if err != nil {
		t.Fatal(err)
	}
	if len(req) < 50 { // a floor against an empty or unparsed file
		t.Fatalf("%s: only %d kernels with a Requires line", kernelsPath, len(req))
	}
	base := []string{"SSE", "SSE2", "MMX+", "AVX", "AVX2", "FMA3"}
	for name, feats := range req {
		allowed := slices.Clone(base)
		switch {
		case strings.HasSuffix(name, "AVX512"):
			allowed = append(allowed, "AVX512F", "AVX512VL", "BMI2")
		case strings.HasSuffix(name, "AVX2"):
			if fp16Kernel.MatchString(name) {
				allowed = append(allowed, "F16C")
			}
		default:
			t.Errorf("%s: kernel name ends in neither AVX2 nor AVX512 (the dispatch is by suffix)", name)
			continue
		}
		for _, ft := range feats {
			if !slices.Contains(allowed, ft) {
				t.Errorf("%s requires %s, which its dispatch does not check", name, ft)
			}
		}
	}
}
