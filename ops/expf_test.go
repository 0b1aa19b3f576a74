package ops

import (
	"fmt"
	"math"
	"testing"
)

func TestExpf(t *testing.T) {
	worst := 0.0
	for i := 0; i <= 2_000_000; i++ {
		x := float32(-87 + 87.5*float64(i)/2_000_000) // [-87, 0.5]
		got, want := float64(expf(x)), math.Exp(float64(x))
		if rel := math.Abs(got-want) / want; rel > worst {
			worst = rel
		}
	}
	t.Logf("worst relative error %.3g", worst)
	if worst > 3e-7 {
		t.Fatalf("expf relative error %g > 3e-7", worst)
	}
	if expf(-100) != 0 || !math.IsInf(float64(expf(100)), 1) {
		t.Error("expf out of range")
	}
}

// TestSoftmaxExp: the numerators and their sum against float64, with
// masked keys (0, whatever their score) and a row with no real key (all
// 0, sum 0), on both exponentials: expf, and cpu.ExpShiftSum (its vector
// kernel where the CPU has one).
func TestSoftmaxExp(t *testing.T) {
	for _, vector := range []bool{false, true} {
		t.Run(fmt.Sprintf("vector=%v", vector), func(t *testing.T) { testSoftmaxExp(t, vector) })
	}
}

func testSoftmaxExp(t *testing.T, vector bool) {
	row := []float32{0.5, 3, float32(math.NaN()), -2, 7, 1e9, -40}
	mask := []int32{1, 1, 0, 1, 1, 0, 1}
	mx := 7.0
	var want []float64
	var sum float64
	for j, x := range row {
		w := 0.0
		if mask[j] != 0 {
			w = math.Exp(float64(x) - mx)
		}
		want, sum = append(want, w), sum+w
	}
	got := append([]float32(nil), row...)
	s := softmaxExpWith(got, mask, vector)
	if math.Abs(s-sum) > 1e-6*sum {
		t.Errorf("sum %v, want %v", s, sum)
	}
	for j := range got {
		if d := math.Abs(float64(got[j]) - want[j]); !(d <= max(1e-6*want[j], 1e-37)) { // NaN fails
			t.Errorf("key %d: %v, want %v", j, got[j], want[j])
		}
	}
	none := []float32{1, 2}
	if s := softmaxExpWith(none, []int32{0, 0}, vector); s != 0 || none[0] != 0 || none[1] != 0 {
		t.Errorf("no real key: sum %v, row %v", s, none)
	}
}
