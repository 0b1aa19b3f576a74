package rusage

import (
	"testing"
	"time"
)

var sink []byte

// TestPeakRSSAndCPU: touching 64 MiB shows in the peak, and a busy loop in
// the CPU time.
func TestPeakRSSAndCPU(t *testing.T) {
	const n = 64 << 20
	sink = make([]byte, n)
	for i := 0; i < n; i += 4096 {
		sink[i] = 1
	}
	if got := PeakRSS(); got < n {
		t.Errorf("peak RSS %d bytes after touching %d", got, n)
	}
	c0 := CPUSeconds()
	x := 1.0
	for start := time.Now(); CPUSeconds()-c0 < 0.02 && time.Since(start) < 5*time.Second; {
		for i := 0; i < 1e6; i++ {
			x = x*1.0000001 + 1e-9
		}
	}
	if x == 0 {
		t.Log(x)
	}
	if d := CPUSeconds() - c0; !(d >= 0.02 && d < 60) {
		t.Errorf("CPU time moved by %g s over a busy loop", d)
	}
}
