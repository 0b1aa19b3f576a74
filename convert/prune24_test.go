package convert

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/slopeml/slope/format/slopepb"
)

// TestPrune24AVX512MatchesGo: the AVX-512 form of the fused 2:4 kernel
// writes the Go form's bytes and sums (bit for bit), on random rows of
// every kind (ties, special values, any finite value), for fp16 and
// bf16, and stops at the same NaN.
func TestPrune24AVX512MatchesGo(t *testing.T) {
	if !prune24AVX512 {
		t.Skip("NOT RUN: this CPU lacks AVX-512 BW/VBMI2 or BMI2 (the Go form is tested by the other tests)")
	}
	run := func(asm bool, h halfFloat, rows, cols int, raw []byte) ([]byte, []byte, prunedWeight, error) {
		prune24AVX512 = asm
		defer func() { prune24AVX512 = true }()
		sz := half24SizesOf(cols)
		nm, mask := make([]byte, rows*(sz.values+sz.index)), make([]byte, rows*sz.mask)
		res, err := h.prune24(rows, cols, raw, nm, mask)
		return nm, mask, res, err
	}
	r := rand.New(rand.NewPCG(7, 8))
	for _, dt := range halfDTypes {
		h, _ := halfFloatOf(dt)
		for trial := range 90 {
			rows, cols := 4*(1+r.IntN(4)), 32*(1+r.IntN(6))
			if trial%15 == 14 {
				rows, cols = 256, 2048 // several workers
			}
			raw := randHalves(r, h, rows*cols, trial%3)
			nan := trial%5 == 4
			if nan {
				at := r.IntN(rows * cols)
				binary.LittleEndian.PutUint16(raw[2*at:], h.inf+1+uint16(r.IntN(3)))
			}
			name := fmt.Sprintf("%s [%d %d] kind %d nan %v", dt, rows, cols, trial%3, nan)
			gnm, gmask, gres, gerr := run(false, h, rows, cols, raw)
			anm, amask, ares, aerr := run(true, h, rows, cols, raw)
			if nan {
				if gerr == nil || aerr == nil || gerr.Error() != aerr.Error() {
					t.Fatalf("%s: Go form %v, AVX-512 form %v", name, gerr, aerr)
				}
				continue
			}
			if gerr != nil || aerr != nil {
				t.Fatalf("%s: %v, %v", name, gerr, aerr)
			}
			if !bytes.Equal(anm, gnm) || !bytes.Equal(amask, gmask) {
				t.Fatalf("%s: encodings differ (NM %v, mask %v)", name, bytes.Equal(anm, gnm), bytes.Equal(amask, gmask))
			}
			if ares.dropped != gres.dropped || math.Float64bits(ares.errPruned) != math.Float64bits(gres.errPruned) {
				t.Fatalf("%s: dropped %d, error %v; Go form %d, %v", name, ares.dropped, ares.errPruned, gres.dropped, gres.errPruned)
			}
		}
	}
}

// BenchmarkPrune24Forms: the fused kernel's AVX-512 and Go forms on an
// OPT-1.3B fc1-shaped fp16 weight.
func BenchmarkPrune24Forms(b *testing.B) {
	const rows, cols = 8192, 2048
	h, _ := halfFloatOf(slopepb.DType_FLOAT16)
	raw := randHalves(rand.New(rand.NewPCG(1, 1)), h, rows*cols, 2)
	sz := half24SizesOf(cols)
	nm, mask := make([]byte, rows*(sz.values+sz.index)), make([]byte, rows*sz.mask)
	for _, asm := range []bool{false, true} {
		if asm && !prune24AVX512 {
			continue
		}
		b.Run(map[bool]string{false: "go", true: "avx512"}[asm], func(b *testing.B) {
			was := prune24AVX512
			prune24AVX512 = asm
			defer func() { prune24AVX512 = was }()
			b.SetBytes(int64(len(raw)))
			for b.Loop() {
				if _, err := h.prune24(rows, cols, raw, nm, mask); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
