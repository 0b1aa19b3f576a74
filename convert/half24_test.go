package convert

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/format/slopepb"
	"github.com/slopeml/slope/testmodels"
)

var halfDTypes = []slopepb.DType{slopepb.DType_FLOAT16, slopepb.DType_BFLOAT16}

// Decoding a 16-bit float to float32 and encoding it back gives back its
// bits, NaNs quieted (what lets the fused kernel and the raw dense path
// skip both conversions).
func TestHalfRoundTripIsQuieting(t *testing.T) {
	for _, dt := range halfDTypes {
		h, _ := halfFloatOf(dt)
		raw := make([]byte, 2<<16)
		for i := range 1 << 16 {
			binary.LittleEndian.PutUint16(raw[2*i:], uint16(i))
		}
		f := make([]float32, 1<<16)
		if err := format.DecodeFloats(dt, raw, f); err != nil {
			t.Fatal(err)
		}
		want := make([]byte, len(raw))
		if err := format.EncodeFloats(dt, f, want); err != nil {
			t.Fatal(err)
		}
		if !h.quietNaNs(raw) {
			t.Errorf("%s: no NaN quieted", dt)
		}
		for i := range 1 << 16 {
			if g, w := binary.LittleEndian.Uint16(raw[2*i:]), binary.LittleEndian.Uint16(want[2*i:]); g != w {
				t.Fatalf("%s: %#04x: quieted %#04x, round trip %#04x", dt, i, g, w)
			}
		}
		if h.quietNaNs(raw) {
			t.Errorf("%s: quieted NaNs changed again", dt)
		}
	}
}

// ref24 is the general path on the decoded values: MagnitudeMask,
// SplitNM, DoublePruneMagnitude and the writer's encodings, and the
// error as writeMagnitude computes it.
func ref24(dt slopepb.DType, rows, cols int, raw []byte) (nm, mask []byte, dropped int64, errPruned float64, err error) {
	p := format.NM{N: 2, M: 4}
	w := make([]float32, rows*cols)
	if err := format.DecodeFloats(dt, raw, w); err != nil {
		return nil, nil, 0, 0, err
	}
	keep, err := MagnitudeMask(p, rows, cols, w)
	if err != nil {
		return nil, nil, 0, 0, err
	}
	values, idx, err := format.SplitNM(p, rows, cols, w, keep)
	if err != nil {
		return nil, nil, 0, 0, err
	}
	vb, ib, _ := format.NMSizes(p, rows, cols, 2)
	nm = make([]byte, vb+ib)
	if err := format.EncodeFloats(dt, values, nm[:vb]); err != nil {
		return nil, nil, 0, 0, err
	}
	if err := format.PackNMIndices(p, rows, cols, idx, nm[vb:]); err != nil {
		return nil, nil, 0, 0, err
	}
	tkeep, err := format.DoublePruneMagnitude(p, rows, cols, values, idx)
	if err != nil {
		return nil, nil, 0, 0, err
	}
	ms, _ := format.TransposeMaskSize(p, rows, cols)
	mask = make([]byte, ms)
	if err := format.PackTransposeMask(p, rows, cols, tkeep, mask); err != nil {
		return nil, nil, 0, 0, err
	}
	for _, k := range tkeep {
		if !k {
			dropped++
		}
	}
	// The general path's error: W − W_s from the materialised W_s (a kept
	// infinity gives Inf − Inf = NaN).
	ws := ApplyMask(w, keep)
	var nw, np float64
	for o := range rows {
		a, b := rowSquares(w[o*cols:(o+1)*cols], ws[o*cols:(o+1)*cols])
		nw += a
		np += b
	}
	if nw > 0 {
		errPruned = math.Sqrt(np / nw)
	}
	return nm, mask, dropped, errPruned, nil
}

// randHalves draws 16-bit floats of h's dtype, no NaN: by kind, small
// magnitudes with many ties, ±0, subnormals, any finite value, ±Inf.
func randHalves(r *rand.Rand, h halfFloat, n int, kind int) []byte {
	raw := make([]byte, 2*n)
	for i := range n {
		var v uint16
		switch kind {
		case 0: // ties galore
			v = uint16(r.IntN(3)) << 10
		case 1: // the special values
			v = []uint16{0, 1, 2, 0x3ff, 0x400, h.inf, h.inf - 1, 0x3c00}[r.IntN(8)]
		default:
			v = uint16(r.IntN(int(h.inf) + 1))
		}
		if r.IntN(2) == 0 {
			v |= 0x8000
		}
		binary.LittleEndian.PutUint16(raw[2*i:], v)
	}
	return raw
}

func TestPrune24HalfMatchesGeneral(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for _, dt := range halfDTypes {
		h, _ := halfFloatOf(dt)
		for trial := range 60 {
			rows, cols := 4*(1+r.IntN(6)), 4*(1+r.IntN(9))
			if trial%10 == 9 {
				rows, cols = 64, 4096 // several workers
			}
			raw := randHalves(r, h, rows*cols, trial%3)
			name := fmt.Sprintf("%s [%d %d] kind %d", dt, rows, cols, trial%3)
			wantNM, wantMask, wantDropped, wantErr, err := ref24(dt, rows, cols, raw)
			if err != nil {
				t.Fatal(err)
			}
			sz := half24SizesOf(cols)
			nm, mask := make([]byte, rows*(sz.values+sz.index)), make([]byte, rows*sz.mask)
			res, err := h.prune24(rows, cols, raw, nm, mask)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(nm, wantNM) {
				t.Fatalf("%s: NM encoding differs", name)
			}
			if !bytes.Equal(mask, wantMask) {
				t.Fatalf("%s: transpose mask differs", name)
			}
			if res.dropped != wantDropped || math.Float64bits(res.errPruned) != math.Float64bits(wantErr) {
				t.Fatalf("%s: dropped %d, error %v; want %d, %v", name, res.dropped, res.errPruned, wantDropped, wantErr)
			}
		}
	}
}

// A NaN is the general path's error, naming the first one in row-major
// order, whichever worker meets it.
func TestPrune24HalfNaN(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for _, dt := range halfDTypes {
		h, _ := halfFloatOf(dt)
		rows, cols := 64, 4096
		for _, at := range [][2]int{{0, 0}, {1, 3}, {5, 100}, {63, 4095}} {
			raw := randHalves(r, h, rows*cols, 2)
			for _, pos := range [][2]int{at, {at[0] + 2, 1}, {rows - 1, cols - 1}} {
				if pos[0] < rows {
					binary.LittleEndian.PutUint16(raw[2*(pos[0]*cols+pos[1]):], h.inf+1)
				}
			}
			_, _, _, _, want := ref24(dt, rows, cols, raw)
			sz := half24SizesOf(cols)
			_, err := h.prune24(rows, cols, raw, make([]byte, rows*(sz.values+sz.index)), make([]byte, rows*sz.mask))
			if want == nil || err == nil || err.Error() != want.Error() {
				t.Fatalf("%s NaN at %v: error %v, want %v", dt, at, err, want)
			}
			if !strings.Contains(err.Error(), fmt.Sprintf("row %d, col %d", at[0], at[1])) {
				t.Fatalf("%s: %v does not name row %d, col %d", dt, err, at[0], at[1])
			}
		}
	}
}

func TestPrune24HalfBadShape(t *testing.T) {
	h, _ := halfFloatOf(slopepb.DType_FLOAT16)
	// Buffers sized for the shape, so that only the shape check can fail.
	for _, c := range [][2]int{{3, 4}, {4, 6}, {4, 0}} {
		rows, cols := c[0], c[1]
		sz := half24SizesOf(cols)
		nm, mask := make([]byte, rows*(sz.values+sz.index)), make([]byte, rows*sz.mask)
		if _, err := h.prune24(rows, cols, make([]byte, 2*rows*cols), nm, mask); !errors.Is(err, format.ErrShape) {
			t.Errorf("shape %v: error %v, want format.ErrShape", c, err)
		}
	}
}

// BenchmarkPrune24Half: the fused kernel against the general path on an
// OPT-1.3B fc1-shaped fp16 weight.
func BenchmarkPrune24Half(b *testing.B) {
	const rows, cols = 8192, 2048
	h, _ := halfFloatOf(slopepb.DType_FLOAT16)
	raw := randHalves(rand.New(rand.NewPCG(1, 1)), h, rows*cols, 2)
	b.Run("fused", func(b *testing.B) {
		sz := half24SizesOf(cols)
		nm, mask := make([]byte, rows*(sz.values+sz.index)), make([]byte, rows*sz.mask)
		b.SetBytes(int64(len(raw)))
		for b.Loop() {
			if _, err := h.prune24(rows, cols, raw, nm, mask); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("general", func(b *testing.B) {
		b.SetBytes(int64(len(raw)))
		for b.Loop() {
			if _, _, _, _, err := ref24(slopepb.DType_FLOAT16, rows, cols, raw); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// pokeHalves overwrites 16-bit values of tensor key, from element at, in
// whichever safetensors file of dir holds it.
func pokeHalves(t *testing.T, dir, key string, at int, vals ...uint16) {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dir, "*.safetensors"))
	for _, path := range files {
		st, err := OpenSafetensorsFile(path)
		if err != nil {
			t.Fatal(err)
		}
		e, ok := st.Entry(key)
		off := st.dataStart
		st.Close()
		if !ok {
			continue
		}
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 2*len(vals))
		for i, v := range vals {
			binary.LittleEndian.PutUint16(b[2*i:], v)
		}
		if _, err := f.WriteAt(b, off+e.Begin+int64(2*at)); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Fatalf("no tensor %q in %s", key, dir)
}

// convertBoth converts with the fused path on and off; it returns the
// files (nil on error), the results and the errors.
func convertBoth(t *testing.T, o Options) (files [2][]byte, res [2]*Result, errs [2]error) {
	t.Helper()
	if o.In == "" {
		o.In = TinyLabel
	}
	for k, fused := range []bool{true, false} {
		rawHalf = fused
		o.Out = filepath.Join(t.TempDir(), "m.slope")
		res[k], errs[k] = DenseToSlope(t.Context(), o)
		rawHalf = true
		if errs[k] == nil {
			var err error
			if files[k], err = os.ReadFile(o.Out); err != nil {
				t.Fatal(err)
			}
		}
	}
	return files, res, errs
}

// The fused path (raw reads and the fused 2:4 kernel, through the
// prefetching loop, with budgets tiny enough to wait and to evict in some
// cases) writes the same file, and reports the same errors, as the
// general path (which prefetches too, except with adapters):
// for fp16 and bf16 checkpoints with special values (a signalling NaN, ±0,
// ±Inf, subnormals, ties) in dense and pruned weights, with per-layer
// patterns that leave some weights to the general path, compressed or
// not, kept or converted.
func TestFusedHalfMatchesGeneral(t *testing.T) {
	const created = "2026-01-02T03:04:05Z"
	budget, pool := prefetchBytes, maxPooledBytes
	defer func() { prefetchBytes, maxPooledBytes = budget, pool }()
	for _, dtype := range []string{"F16", "BF16"} {
		h, _ := halfFloatOf(map[string]slopepb.DType{"F16": slopepb.DType_FLOAT16, "BF16": slopepb.DType_BFLOAT16}[dtype])
		dir, _, _ := genDir(t, "pre-ln-tied", dtype, testmodels.Layout{Format: "safetensors-sharded", KeyPrefix: "model.", ShardBytes: 20000})
		pokeHalves(t, dir, "model.decoder.layers.0.self_attn_layer_norm.weight", 0, h.inf+1, 0x8000, h.inf, 0x8001, h.inf|0x8000)
		pokeHalves(t, dir, "model.decoder.layers.0.fc1.weight", 0, 0, 0x8000, 0, 0, 1, 1, 0x8001, 1, h.inf, 0x8000|h.inf, 0x3c00, 0xbc00)
		pokeHalves(t, dir, "model.decoder.layers.1.self_attn.q_proj.weight", 32, 0x3c00, 0xbc00, 0x3c00, 0xbc00)
		for _, c := range []struct {
			o     Options
			small bool // tiny prefetch budget and buffer pool: back-pressure and eviction run
		}{
			{Options{NM: "2:4"}, false},
			{Options{NM: "2:4"}, true},
			{Options{NM: "2:4", NMLayers: "1=2:8", Compress: true}, false},
			{Options{NM: "2:4", NMLayers: "0=dense"}, true},
			{Options{NM: "2:4", DType: "fp32"}, false},
			{Options{NM: "2:4", Method: MethodRandom, Seed: 3}, false},
			{Options{NM: "2:4", Rank: 2}, false},
			{Options{NM: "2:4", Transpose: TransposeMaterialize}, true},
			{Options{NM: "2:4", NMLayers: "1=2:8", Transpose: TransposeMaterialize, Compress: true}, false},
		} {
			o := c.o
			o.In, o.Created = dir, created
			name := fmt.Sprintf("%s %+v small %v", dtype, o, c.small)
			prefetchBytes, maxPooledBytes = budget, pool
			if c.small {
				prefetchBytes, maxPooledBytes = 1000, 3000
			}
			files, res, errs := convertBoth(t, o)
			if errs[0] != nil || errs[1] != nil {
				t.Fatalf("%s: %v / %v", name, errs[0], errs[1])
			}
			if !bytes.Equal(files[0], files[1]) {
				t.Fatalf("%s: the fused path wrote a different file", name)
			}
			for i, w := range res[0].Weights {
				g := res[1].Weights[i]
				if math.Float64bits(w.RelErrPruned) != math.Float64bits(g.RelErrPruned) || w.Choice != g.Choice {
					t.Fatalf("%s: %s: %q error %v (fused) vs %q %v (general)", name, w.Name, w.Choice, w.RelErrPruned, g.Choice, g.RelErrPruned)
				}
			}
			if res[0].TransposeExtraZeros != res[1].TransposeExtraZeros || res[0].StoredBytes != res[1].StoredBytes {
				t.Fatalf("%s: results differ: %+v vs %+v", name, res[0], res[1])
			}
		}
		// A NaN in a pruned weight: the same error, naming the first one.
		pokeHalves(t, dir, "model.decoder.layers.1.fc2.weight", 70, h.inf+5)
		pokeHalves(t, dir, "model.decoder.layers.1.fc2.weight", 200, h.inf+1)
		_, _, errs := convertBoth(t, Options{In: dir, NM: "2:4", Created: created})
		if errs[0] == nil || errs[1] == nil || errs[0].Error() != errs[1].Error() || !strings.Contains(errs[0].Error(), "NaN at row 1, col 6") {
			t.Fatalf("%s NaN: %v (fused) vs %v (general)", dtype, errs[0], errs[1])
		}
	}
}

// TestRowSquaresKeptInf: the kept-mask form of the error sums gives the
// general form's bits on rows with infinities (a kept ±Inf makes the
// pruning error NaN, as Inf − Inf does), and so does the fp16 kernel.
func TestRowSquaresKeptInf(t *testing.T) {
	inf := float32(math.Inf(1))
	w := []float32{inf, 1, 0.5, -inf, 2, 3, 0, 1}
	keep := []bool{true, false, true, false, false, true, true, false}
	a, b := rowSquaresKept(w, keep)
	ra, rb := rowSquares(w, ApplyMask(w, keep))
	if math.Float64bits(a) != math.Float64bits(ra) || math.Float64bits(b) != math.Float64bits(rb) {
		t.Fatalf("rowSquaresKept %v %v, rowSquares %v %v", a, b, ra, rb)
	}
	if !math.IsNaN(b) {
		t.Fatalf("a kept infinity gives a pruning error sum %v, want NaN", b)
	}
	// The fp16 kernel, in each of its forms, on 4 rows of w repeated to
	// 32 columns (the magnitude mask keeps both infinities).
	h, _ := halfFloatOf(slopepb.DType_FLOAT16)
	const rows, cols = 4, 32
	wide := make([]float32, rows*cols)
	for i := range wide {
		wide[i] = w[i%len(w)]
	}
	raw := make([]byte, 2*len(wide))
	if err := format.EncodeFloats(slopepb.DType_FLOAT16, wide, raw); err != nil {
		t.Fatal(err)
	}
	sz := half24SizesOf(cols)
	names, flags := prune24Forms()
	for _, form := range names {
		withPrune24Form(flags[form], func() {
			res, err := h.prune24(rows, cols, raw, make([]byte, rows*(sz.values+sz.index)), make([]byte, rows*sz.mask))
			if err != nil || !math.IsNaN(res.errPruned) {
				t.Fatalf("%s form: a kept infinity gives error %v (%v), want NaN", form, res.errPruned, err)
			}
		})
	}
}
