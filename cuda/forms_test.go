package cuda

import "testing"

func TestSetForms(t *testing.T) {
	for _, c := range []struct {
		f         Forms
		spmv, tc  int
		lowMemory bool
	}{
		{FormsDecode, 0, 0, false},
		{"", 0, 0, false},
		{FormsBatch, -1, 16, false},
		{FormsAll, 1, 16, false},
		{FormsLowMemory, 0, 0, true},
	} {
		o := Options{SpMVMaxRows: 7, TCMaxRows: 3, LowMemory: !c.lowMemory}
		if err := o.SetForms(c.f); err != nil {
			t.Fatalf("%q: %v", c.f, err)
		}
		if o.SpMVMaxRows != c.spmv || o.TCMaxRows != c.tc || o.LowMemory != c.lowMemory {
			t.Errorf("%q: SpMVMaxRows %d, TCMaxRows %d, LowMemory %v; want %d, %d, %v", c.f, o.SpMVMaxRows, o.TCMaxRows, o.LowMemory, c.spmv, c.tc, c.lowMemory)
		}
	}
	var o Options
	if err := o.SetForms("fast"); err == nil {
		t.Error("unknown forms: no error")
	}
}
