package opstest

import (
	"errors"
	"maps"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/format/onnxpb"
	"github.com/slopeml/slope/format/slopepb"
	"github.com/slopeml/slope/ops"
)

func testLayerNorm(t *testing.T, be ops.Backend, tol Tolerance) {
	rng := rand.New(rand.NewPCG(1, 1))
	for _, affine := range []bool{true, false} {
		for _, shape := range [][2]int{{1, 1}, {3, 7}, {5, 64}, {2, 257}} {
			rows, dim := shape[0], shape[1]
			wb := newWeights(t)
			g, b := randn(rng, dim, 1), randn(rng, dim, 0.5)
			inputs := []string{"x", "", ""}
			if affine {
				wb.dense("g", slopepb.DType_FLOAT32, []uint64{uint64(dim)}, g)
				wb.dense("b", slopepb.DType_FLOAT32, []uint64{uint64(dim)}, b)
				inputs = []string{"x", "g", "b"}
			}
			f := wb.open()
			x := randn(rng, rows*dim, 3)
			for i := range x {
				x[i] += 2 // a mean far from zero
			}
			const eps = 1e-5
			got := run(t, be, node(ops.OpLayerNorm, inputs, floatAttr("epsilon", eps)), f, call(1, rows), value(rows, dim, x))
			want := make([]float64, rows*dim)
			scale := make([]float64, rows*dim)
			for r := 0; r < rows; r++ {
				var mean, vr float64
				for _, v := range x[r*dim : (r+1)*dim] {
					mean += float64(v)
				}
				mean /= float64(dim)
				for _, v := range x[r*dim : (r+1)*dim] {
					vr += (float64(v) - mean) * (float64(v) - mean)
				}
				sd := math.Sqrt(vr/float64(dim) + eps)
				for i := 0; i < dim; i++ {
					z := (float64(x[r*dim+i]) - mean) / sd
					s := math.Abs(z) + 1
					if affine {
						s = (math.Abs(z)+1)*math.Abs(float64(g[i])) + math.Abs(float64(b[i]))
						z = z*float64(g[i]) + float64(b[i])
					}
					want[r*dim+i], scale[r*dim+i] = z, s*8 // variance and mean in float32 at worst
				}
			}
			compare(t, name("layernorm ", rows, "x", dim, " affine=", affine), got.Data, want, scale, tol)
		}
	}
}

func testActivations(t *testing.T, be ops.Backend, tol Tolerance) {
	rng := rand.New(rand.NewPCG(2, 1))
	refs := map[string]func(float64) float64{
		ops.OpRelu: func(x float64) float64 { return math.Max(x, 0) },
		ops.OpGelu: func(x float64) float64 { return 0.5 * x * (1 + math.Erf(x/math.Sqrt2)) },
		ops.OpGeluTanh: func(x float64) float64 {
			return 0.5 * x * (1 + math.Tanh(math.Sqrt(2/math.Pi)*(x+0.044715*x*x*x)))
		},
		ops.OpSilu:    func(x float64) float64 { return x / (1 + math.Exp(-x)) },
		ops.OpTanh:    math.Tanh,
		ops.OpSigmoid: func(x float64) float64 { return 1 / (1 + math.Exp(-x)) },
	}
	f := newWeights(t).open()
	names := slices.Sorted(maps.Keys(refs)) // one order: the same inputs every run
	for _, op := range names {
		ref := refs[op]
		x := randn(rng, 5*33, 3)
		got := run(t, be, node(op, []string{"x"}), f, call(1, 5), value(5, 33, x))
		want := make([]float64, len(x))
		for i, v := range x {
			want[i] = ref(float64(v))
		}
		compare(t, op, got.Data, want, nil, tol)
	}
}

func testAdd(t *testing.T, be ops.Backend, tol Tolerance) {
	rng := rand.New(rand.NewPCG(3, 1))
	f := newWeights(t).open()
	a, b := randn(rng, 4*9, 1), randn(rng, 4*9, 1)
	got := run(t, be, node(ops.OpAdd, []string{"a", "b"}), f, call(2, 2), value(4, 9, a), value(4, 9, b))
	want := make([]float64, len(a))
	for i := range a {
		want[i] = float64(a[i]) + float64(b[i])
	}
	compare(t, "add", got.Data, want, nil, tol)
}

// linearRef: y = x·Wᵀ + b with W [out, in]; scale is Σ|x w| + |b|.
func linearRef(x []float32, m, in int, w []float32, out int, bias []float32) (y, scale []float64) {
	y, scale = make([]float64, m*out), make([]float64, m*out)
	for r := 0; r < m; r++ {
		for o := 0; o < out; o++ {
			var s, a float64
			for i := 0; i < in; i++ {
				p := float64(x[r*in+i]) * float64(w[o*in+i])
				s += p
				a += math.Abs(p)
			}
			if bias != nil {
				s += float64(bias[o])
				a += math.Abs(float64(bias[o]))
			}
			y[r*out+o], scale[r*out+o] = s, a
		}
	}
	return y, scale
}

func testLinear(t *testing.T, be ops.Backend, tol Tolerance) {
	rng := rand.New(rand.NewPCG(4, 1))
	for _, dt := range floatDTypes {
		for _, sh := range [][3]int{{1, 1, 1}, {1, 33, 7}, {3, 16, 65}, {17, 100, 31}} {
			m, in, out := sh[0], sh[1], sh[2]
			for _, withBias := range []bool{true, false} {
				wb := newWeights(t)
				w := randn(rng, out*in, 0.5)
				roundTo(dt, w)
				wb.dense("w", dt, []uint64{uint64(out), uint64(in)}, w)
				var bias []float32
				inputs := []string{"x", "w", ""}
				if withBias {
					bias = randn(rng, out, 0.5)
					roundTo(dt, bias)
					wb.dense("b", dt, []uint64{uint64(out)}, bias)
					inputs[2] = "b"
				}
				f := wb.open()
				x := randn(rng, m*in, 1)
				got := run(t, be, node(ops.OpLinear, inputs), f, call(1, m), value(m, in, x))
				want, scale := linearRef(x, m, in, w, out, bias)
				compare(t, name("linear ", dt, sh, " bias=", withBias), got.Data, want, scale, tol)
			}
		}
	}
}

func testLMHead(t *testing.T, be ops.Backend, tol Tolerance) {
	rng := rand.New(rand.NewPCG(5, 1))
	wb := newWeights(t)
	w := randn(rng, 50*16, 1)
	wb.dense("emb", slopepb.DType_FLOAT32, []uint64{50, 16}, w)
	f := wb.open()
	x := randn(rng, 3*16, 1)
	got := run(t, be, node(ops.OpLMHead, []string{"x", "emb"}), f, call(1, 3), value(3, 16, x))
	want, scale := linearRef(x, 3, 16, w, 50, nil)
	compare(t, "lmhead", got.Data, want, scale, tol)
}

// pruneNM keeps the N largest |w| of every group of M along rows of w
// (ties: the lower index) and returns kept values and indices.
func pruneNM(p format.NM, rows, cols int, w []float32) (dense []float32, vals []float32, idx []uint8) {
	dense = make([]float32, len(w))
	for g := 0; g < len(w); g += p.M {
		taken := make([]bool, p.M)
		for k := 0; k < p.N; k++ {
			best := -1
			for j := 0; j < p.M; j++ {
				if !taken[j] && (best < 0 || math.Abs(float64(w[g+j])) > math.Abs(float64(w[g+best]))) {
					best = j
				}
			}
			taken[best] = true
		}
		for j := 0; j < p.M; j++ {
			if taken[j] {
				dense[g+j] = w[g+j]
				vals = append(vals, w[g+j])
				idx = append(idx, uint8(j))
			}
		}
	}
	return dense, vals, idx
}

func testSlopeLinear(t *testing.T, be ops.Backend, tol Tolerance) {
	rng := rand.New(rand.NewPCG(6, 1))
	type tc struct {
		p          format.NM
		m, in, out int
		rank       int
		merged     bool
		dt         slopepb.DType
		withBias   bool
	}
	var cases []tc
	for _, p := range []format.NM{{N: 2, M: 4}, {N: 1, M: 2}, {N: 1, M: 4}, {N: 2, M: 8}, {N: 4, M: 8}, {N: 3, M: 7}, {N: 8, M: 16}} {
		for _, dt := range floatDTypes {
			cases = append(cases, tc{p, 3, 4 * p.M, 9, 0, false, dt, true})
		}
		cases = append(cases, tc{p, 1, 6 * p.M, 33, 0, false, slopepb.DType_BFLOAT16, false})
	}
	cases = append(cases,
		tc{format.NM{N: 2, M: 4}, 5, 32, 24, 3, false, slopepb.DType_FLOAT32, true},
		tc{format.NM{N: 2, M: 4}, 5, 32, 24, 4, true, slopepb.DType_FLOAT32, true},
		tc{format.NM{N: 2, M: 4}, 1, 64, 16, 2, true, slopepb.DType_BFLOAT16, false},
		// Sizes where GPU backends take their library paths (2:4 GEMMs
		// of many rows, decode kernels of a few rows).
		tc{format.NM{N: 2, M: 4}, 80, 256, 128, 0, false, slopepb.DType_BFLOAT16, true},
		tc{format.NM{N: 2, M: 4}, 7, 256, 128, 0, false, slopepb.DType_BFLOAT16, true},
		tc{format.NM{N: 2, M: 4}, 40, 128, 64, 16, true, slopepb.DType_BFLOAT16, true},
		tc{format.NM{N: 2, M: 4}, 3, 128, 64, 16, true, slopepb.DType_BFLOAT16, true},
	)
	for _, c := range cases {
		wb := newWeights(t)
		rows := c.out
		if c.merged {
			rows += c.rank
		}
		wFull := randn(rng, rows*c.in, 0.5)
		roundTo(c.dt, wFull)
		pruned, vals, idx := pruneNM(c.p, rows, c.in, wFull)
		if err := wb.w.WriteNM("w", c.dt, c.p, rows, c.in, vals, idx); err != nil {
			t.Fatal(err)
		}
		inputs := []string{"x", "w", "", "", "", ""}
		var bias []float32
		if c.withBias {
			bias = randn(rng, c.out, 0.5)
			roundTo(c.dt, bias)
			wb.dense("b", c.dt, []uint64{uint64(c.out)}, bias)
			inputs[2] = "b"
		}
		var l, r []float32
		const scale = 0.75
		attrs := []*onnxpb.AttributeProto{intAttr("n", int64(c.p.N)), intAttr("m", int64(c.p.M))}
		if c.rank > 0 {
			r = randn(rng, c.rank*c.out, 0.5)
			if c.merged {
				desc := &slopepb.Tensor{Name: "R", Dtype: slopepb.DType_FLOAT32, Shape: []uint64{uint64(c.rank), uint64(c.out)},
					Encoding: slopepb.Encoding_LOW_RANK, Adapter: &slopepb.AdapterParams{Weight: "w", Factor: slopepb.AdapterParams_R, Scale: scale, Merged: true}}
				raw := make([]byte, 4*len(r))
				if err := format.EncodeFloats(slopepb.DType_FLOAT32, r, raw); err != nil {
					t.Fatal(err)
				}
				if err := wb.w.WriteTensor(desc, raw); err != nil {
					t.Fatal(err)
				}
				inputs[5] = "R"
				attrs = append(attrs, intAttr("merged_rank", int64(c.rank)))
			} else {
				l = randn(rng, c.in*c.rank, 0.5)
				if err := wb.w.WriteAdapter("w", "L", "R", slopepb.DType_FLOAT32, c.in, c.out, c.rank, scale, l, r); err != nil {
					t.Fatal(err)
				}
				inputs[4], inputs[5] = "L", "R"
			}
		}
		f := wb.open()
		x := randn(rng, c.m*c.in, 1)
		got := run(t, be, node(ops.OpSlopeLinear, inputs, attrs...), f, call(1, c.m), value(c.m, c.in, x))
		want, sc := linearRef(x, c.m, c.in, pruned[:c.out*c.in], c.out, bias)
		if c.rank > 0 {
			// xl[m, r]: x·L, or the merged rows' outputs x·(pruned Lᵀ)ᵀ.
			var xl, xlScale []float64
			if c.merged {
				xl, xlScale = linearRef(x, c.m, c.in, pruned[c.out*c.in:], c.rank, nil)
			} else {
				lt := make([]float32, c.rank*c.in) // Lᵀ [r, in]
				for i := 0; i < c.in; i++ {
					for k := 0; k < c.rank; k++ {
						lt[k*c.in+i] = l[i*c.rank+k]
					}
				}
				xl, xlScale = linearRef(x, c.m, c.in, lt, c.rank, nil)
			}
			for row := 0; row < c.m; row++ {
				for o := 0; o < c.out; o++ {
					for k := 0; k < c.rank; k++ {
						rv := float64(r[k*c.out+o])
						want[row*c.out+o] += scale * xl[row*c.rank+k] * rv
						sc[row*c.out+o] += scale * xlScale[row*c.rank+k] * math.Abs(rv)
					}
				}
			}
		}
		compare(t, name("slopelinear ", c.p, " ", c.dt, " m=", c.m, " in=", c.in, " out=", c.out, " rank=", c.rank, " merged=", c.merged), got.Data, want, sc, tol)
	}
}

func testEmbedding(t *testing.T, be ops.Backend, tol Tolerance) {
	rng := rand.New(rand.NewPCG(7, 1))
	const vocab, hid, proj, npos, off = 20, 8, 6, 12, 2
	for _, withProj := range []bool{false, true} {
		wb := newWeights(t)
		width := hid
		if withProj {
			width = proj
		}
		tok := randn(rng, vocab*width, 1)
		pos := randn(rng, npos*hid, 1)
		wb.dense("tok", slopepb.DType_FLOAT32, []uint64{vocab, uint64(width)}, tok)
		wb.dense("pos", slopepb.DType_FLOAT32, []uint64{npos, hid}, pos)
		inputs := []string{"input_ids", "attention_mask", "tok", "pos"}
		var pin []float32
		if withProj {
			pin = randn(rng, hid*proj, 1)
			wb.dense("pin", slopepb.DType_FLOAT32, []uint64{hid, proj}, pin)
			inputs = append(inputs, "pin")
		}
		f := wb.open()
		// Two sequences, 3 past tokens and 4 new ones; row 1 left-padded by 2.
		const batch, past, seq = 2, 3, 4
		mask := []int32{1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1}
		c := &ops.Call{Batch: batch, Seq: seq, Past: past, Mask: mask, IDs: make([]int32, batch*seq)}
		for i := range c.IDs {
			c.IDs[i] = int32(rng.IntN(vocab))
		}
		got := run(t, be, node(ops.OpEmbedding, inputs, intAttr("position_offset", off)), f, c)
		want := make([]float64, batch*seq*hid)
		for b := 0; b < batch; b++ {
			row := mask[b*(past+seq) : (b+1)*(past+seq)]
			for s := 0; s < seq; s++ {
				t2 := past + s
				p := -1
				if row[t2] == 1 {
					p = 0
					for _, v := range row[:t2] {
						p += int(v)
					}
				}
				id := int(c.IDs[b*seq+s])
				for o := 0; o < hid; o++ {
					var e float64
					if withProj {
						for i := 0; i < proj; i++ {
							e += float64(pin[o*proj+i]) * float64(tok[id*proj+i])
						}
					} else {
						e = float64(tok[id*hid+o])
					}
					want[(b*seq+s)*hid+o] = e + float64(pos[(p+off)*hid+o])
				}
			}
		}
		compare(t, name("embedding proj=", withProj), got.Data, want, nil, Tolerance{Abs: tol.Abs * 10, Rel: tol.Rel * 10})
	}
}

// testAttention runs the backend's attention through a cache in parts
// (single queries, short and long chunks: backends may switch algorithms
// with the number of new tokens) against one float64 pass over all
// tokens, with 3 heads of 5.
func testAttention(t *testing.T, be ops.Backend, tol Tolerance) { RunAttention(t, be, tol, 3, 5) }

// RunAttention is the suite's attention cases with heads heads of hd
// values each: for kernels that take only some head sizes.
func RunAttention(t *testing.T, be ops.Backend, tol Tolerance, heads, hd int) {
	for _, parts := range [][][2]int{
		{{0, 5}, {5, 9}},
		{{0, 9}},
		{{0, 3}, {3, 12}, {12, 13}, {13, 24}},
		// 16 or more new tokens: the GPU backend's prefill path (two
		// batched GEMMs around a masked softmax), fresh and after a past.
		{{0, 20}},
		{{0, 4}, {4, 22}, {22, 23}},
		// Prefills longer than the CPU backend's chunk of 64 queries:
		// several chunks, fresh and after a past.
		{{0, 150}},
		{{0, 40}, {40, 170}, {170, 171}},
	} {
		attentionCase(t, be, tol, parts, heads, hd)
	}
}

func attentionCase(t *testing.T, be ops.Backend, tol Tolerance, parts [][2]int, heads, hd int) {
	rng := rand.New(rand.NewPCG(8, 1))
	const batch = 2
	dim := heads * hd
	total := parts[len(parts)-1][1]
	f := newWeights(t).open()
	mask := make([]int32, batch*total)
	for i := range mask {
		mask[i] = 1
	}
	mask[total+0], mask[total+1], mask[total+2] = 0, 0, 0 // row 1 left-padded by 3
	q, k, v := randn(rng, batch*total*dim, 1), randn(rng, batch*total*dim, 1), randn(rng, batch*total*dim, 1)
	scale := float32(1 / math.Sqrt(float64(hd)))
	n := node(ops.OpCausalAttention, []string{"q", "k", "v", "attention_mask"}, intAttr("num_heads", int64(heads)), floatAttr("scale", scale))
	// Reference: every token at once, float64.
	want := attentionRef64(to64(q), to64(k), to64(v), mask, batch, total, heads, hd, float64(scale))
	// The backend in two calls through a cache: 5 tokens, then 4.
	bind := func() ops.Step {
		s, err := be.Bind(ops.Binding{Node: n, InDims: []int{dim, dim, dim}, W: f})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	step := bind()
	cache := ops.NewKVCache(batch, total)
	for _, part := range parts {
		lo, hi := part[0], part[1]
		seq := hi - lo
		slice := func(x []float32) *ops.Value {
			out := make([]float32, 0, batch*seq*dim)
			for b := 0; b < batch; b++ {
				out = append(out, x[(b*total+lo)*dim:(b*total+hi)*dim]...)
			}
			return value(batch*seq, dim, out)
		}
		c := &ops.Call{Batch: batch, Seq: seq, Past: lo, Cache: cache}
		for b := 0; b < batch; b++ {
			c.Mask = append(c.Mask, mask[b*total:b*total+hi]...)
		}
		out := value(batch*seq, dim, make([]float32, batch*seq*dim))
		if err := step.Forward(c, []*ops.Value{slice(q), slice(k), slice(v)}, out); err != nil {
			t.Fatal(err)
		}
		wantPart := make([]float64, 0, batch*seq*dim)
		for b := 0; b < batch; b++ {
			wantPart = append(wantPart, want[(b*total+lo)*dim:(b*total+hi)*dim]...)
		}
		compare(t, name("attention tokens ", lo, "..", hi), out.Data, wantPart, nil, Tolerance{Abs: tol.Abs * 10, Rel: tol.Rel * 10})
	}
}

func testMissing(t *testing.T, be ops.Backend) {
	f := newWeights(t).open()
	_, err := be.Bind(ops.Binding{Node: node("NoSuchOp", []string{"x"}), InDims: []int{4}, W: f})
	if !errors.Is(err, ops.ErrUnsupported) {
		t.Fatalf("binding an unknown op: %v, want ErrUnsupported", err)
	}
}
