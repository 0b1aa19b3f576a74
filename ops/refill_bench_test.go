package ops

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/slopeml/slope/format"
)

// BenchmarkTransposeRefill: the input gradient's per-step refill of
// W_dpᵀ's values from W's (nmCache.transposeWeight with the layout
// built: the planned gather), for 2:4 weights of OPT-350m's feed-forward
// shapes and its attention shape, one thread, in million W_dpᵀ slots per
// second (the plan's: rows*cols/2 for 2:4, zero fillers included).
func BenchmarkTransposeRefill(b *testing.B) {
	p := format.NM{N: 2, M: 4}
	for _, sh := range [][2]int{{4096, 1024}, {1024, 4096}, {1024, 1024}} {
		rows, cols := sh[0], sh[1]
		rng := rand.New(rand.NewPCG(1, 2))
		kept := cols / 2
		idx := make([]uint8, rows*kept)
		for r := 0; r < rows; r++ {
			for g := 0; g < cols/4; g++ {
				a := rng.IntN(4)
				c := rng.IntN(3)
				if c >= a {
					c++
				}
				if a > c {
					a, c = c, a
				}
				idx[r*kept+2*g], idx[r*kept+2*g+1] = uint8(a), uint8(c)
			}
		}
		rb, _ := p.IndexRowBytes(cols)
		packed := make([]byte, rb*rows)
		if err := format.PackNMIndices(p, rows, cols, idx, packed); err != nil {
			b.Fatal(err)
		}
		vals := make([]float32, rows*kept)
		for i := range vals {
			vals[i] = rng.Float32() - 0.5
		}
		nm := &NMParam{Pattern: p, Rows: rows, Cols: cols, Indices: packed}
		keep, err := nm.MagnitudeTKeep(vals)
		if err != nil {
			b.Fatal(err)
		}
		if err := nm.SetTKeep(keep); err != nil {
			b.Fatal(err)
		}
		var c nmCache
		refill := func() {
			_, release, ok, err := c.transposeWeight(nm, vals, 1)
			if err != nil || !ok {
				b.Fatal(err, ok)
			}
			release()
		}
		refill() // builds the layout and its plan, once per mask
		slots := c.tGather.Slots()
		b.Run(fmt.Sprintf("%dx%d", rows, cols), func(b *testing.B) {
			for b.Loop() {
				refill()
			}
			b.ReportMetric(float64(slots)*float64(b.N)/b.Elapsed().Seconds()/1e6, "Mslots/s")
		})
	}
}
