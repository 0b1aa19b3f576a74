package runtime

import (
	"sync"
	"testing"

	"github.com/slopeml/slope/convert"
)

// Sessions of one Model run concurrently and give the logits a lone
// session gives, for every layer kind: plain 2:4, unmerged and merged
// adapters (whose layer once kept its scratch on the shared step).
func TestConcurrentSessions(t *testing.T) {
	for _, o := range []convert.Options{
		{NM: "2:4"},
		{NM: "2:4", Rank: 4, AdapterInit: "svd"},
		{NM: "2:4", Rank: 4, AdapterInit: "svd", MergeAdapters: true},
	} {
		m := tinyWith(t, o)
		inputs := [][][]int32{{{2, 100, 200, 300, 17}}, {{2, 7, 8, 9, 10, 11, 12}, {2, 40, 41, 42, 43, 44, 45}}}
		want := make([][][][]float32, len(inputs))
		for i, ids := range inputs {
			l, err := m.Forward(ids, nil)
			if err != nil {
				t.Fatal(err)
			}
			want[i] = l
		}
		var wg sync.WaitGroup
		var mu sync.Mutex
		bad := 0
		for g := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for it := range 25 {
					i := (g + it) % len(inputs)
					l, err := m.Forward(inputs[i], nil)
					if err != nil || !(maxDiff(l, want[i], nil) == 0) {
						mu.Lock()
						bad++
						mu.Unlock()
					}
				}
			}()
		}
		wg.Wait()
		if bad > 0 {
			t.Errorf("%+v: %d of 200 concurrent Forward calls differ from a lone session's", o, bad)
		}
	}
}
