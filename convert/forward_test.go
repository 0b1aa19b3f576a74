package convert

import (
	"fmt"
	"math"
	"path/filepath"
	"testing"

	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/format/onnxpb"
	"github.com/slopeml/slope/testmodels"
)

// act is a [batch*seq, dim] activation.
type act struct {
	rows, dim int
	x         []float32
}

// runGraph interprets the ai.slope graph of f on one batch, in float64
// accumulation, the way BuildOPTGraph documents each node. It exists to
// check the converter's graph and pruning against the transformers
// reference, independently of the runtime.
func runGraph(t *testing.T, f *format.File, ids, mask [][]int64) [][][]float32 {
	t.Helper()
	batch, seq := len(ids), len(ids[0])
	vals := map[string]*act{}
	weight := func(name string) []float32 {
		w, err := f.Dense(name)
		if err != nil {
			t.Fatal(err)
		}
		return w
	}
	get := func(name string) *act {
		a, ok := vals[name]
		if !ok {
			t.Fatalf("value %q undefined", name)
		}
		return a
	}
	attrs := func(n *onnxpb.NodeProto) map[string]*onnxpb.AttributeProto {
		m := map[string]*onnxpb.AttributeProto{}
		for _, a := range n.Attribute {
			m[a.Name] = a
		}
		return m
	}
	linear := func(x *act, wName, bName string) *act {
		w := weight(wName)
		out := len(w) / x.dim
		y := &act{rows: x.rows, dim: out, x: make([]float32, x.rows*out)}
		var b []float32
		if bName != "" {
			b = weight(bName)
		}
		for r := 0; r < x.rows; r++ {
			xr := x.x[r*x.dim : (r+1)*x.dim]
			for o := 0; o < out; o++ {
				s := 0.0
				for i, v := range w[o*x.dim : (o+1)*x.dim] {
					s += float64(v) * float64(xr[i])
				}
				if b != nil {
					s += float64(b[o])
				}
				y.x[r*out+o] = float32(s)
			}
		}
		return y
	}
	var logits *act
	for _, n := range f.Manifest().Graph.Node {
		in, at := n.Input, attrs(n)
		var y *act
		switch n.OpType {
		case "Embedding":
			tok, pos := weight(in[2]), weight(in[3])
			d := int(f.Manifest().Architecture.GetOpt().HiddenSize) // no project_in in the fixture
			off := int(at["position_offset"].I)
			y = &act{rows: batch * seq, dim: d, x: make([]float32, batch*seq*d)}
			for b := range batch {
				cum := int64(0)
				for s := range seq {
					cum += mask[b][s]
					p := int(cum*mask[b][s]-1) + off
					id := int(ids[b][s])
					for j := range d {
						y.x[(b*seq+s)*d+j] = tok[id*d+j] + pos[p*d+j]
					}
				}
			}
		case "LayerNorm":
			x := get(in[0])
			w, bias := weight(in[1]), weight(in[2])
			eps := float64(at["epsilon"].F)
			y = &act{rows: x.rows, dim: x.dim, x: make([]float32, len(x.x))}
			for r := 0; r < x.rows; r++ {
				row := x.x[r*x.dim : (r+1)*x.dim]
				mean, vr := 0.0, 0.0
				for _, v := range row {
					mean += float64(v)
				}
				mean /= float64(x.dim)
				for _, v := range row {
					vr += (float64(v) - mean) * (float64(v) - mean)
				}
				vr /= float64(x.dim)
				for j, v := range row {
					y.x[r*x.dim+j] = float32((float64(v)-mean)/math.Sqrt(vr+eps)*float64(w[j]) + float64(bias[j]))
				}
			}
		case "Linear", "SlopeLinear":
			y = linear(get(in[0]), in[1], in[2])
		case "CausalAttention":
			q, k, v := get(in[0]), get(in[1]), get(in[2])
			heads := int(at["num_heads"].I)
			scale := float64(at["scale"].F)
			hd := q.dim / heads
			y = &act{rows: q.rows, dim: q.dim, x: make([]float32, len(q.x))}
			for b := range batch {
				for h := range heads {
					for i := range seq {
						qi := q.x[(b*seq+i)*q.dim+h*hd:][:hd]
						sc := make([]float64, seq)
						mx := math.Inf(-1)
						for j := range seq {
							sc[j] = math.Inf(-1)
							if j <= i && mask[b][j] == 1 {
								kj := k.x[(b*seq+j)*q.dim+h*hd:][:hd]
								s := 0.0
								for e := range hd {
									s += float64(qi[e]) * scale * float64(kj[e])
								}
								sc[j] = s
								mx = math.Max(mx, s)
							}
						}
						if math.IsInf(mx, -1) {
							continue // a padded query with no visible key
						}
						sum := 0.0
						for j := range sc {
							sc[j] = math.Exp(sc[j] - mx)
							sum += sc[j]
						}
						for e := range hd {
							s := 0.0
							for j := range seq {
								s += sc[j] / sum * float64(v.x[(b*seq+j)*q.dim+h*hd+e])
							}
							y.x[(b*seq+i)*q.dim+h*hd+e] = float32(s)
						}
					}
				}
			}
		case "Relu":
			x := get(in[0])
			y = &act{rows: x.rows, dim: x.dim, x: make([]float32, len(x.x))}
			for i, v := range x.x {
				y.x[i] = max(v, 0)
			}
		case "Add":
			a, b := get(in[0]), get(in[1])
			y = &act{rows: a.rows, dim: a.dim, x: make([]float32, len(a.x))}
			for i := range a.x {
				y.x[i] = a.x[i] + b.x[i]
			}
		case "LMHead":
			y = linear(get(in[0]), in[1], "")
			logits = y
		default:
			t.Fatalf("op %s not interpreted", n.OpType)
		}
		vals[n.Output[0]] = y
	}
	out := make([][][]float32, batch)
	for b := range batch {
		out[b] = make([][]float32, seq)
		for s := range seq {
			out[b][s] = logits.x[(b*seq+s)*logits.dim : (b*seq+s+1)*logits.dim]
		}
	}
	return out
}

func maxDiff(got, want [][][]float32, mask [][]int64) float64 {
	d := 0.0
	for b := range want {
		for s := range want[b] {
			if mask != nil && mask[b][s] == 0 {
				continue
			}
			for v := range want[b][s] {
				d = math.Max(d, math.Abs(float64(got[b][s][v]-want[b][s][v])))
			}
		}
	}
	return d
}

// TestGraphMatchesTransformers converts the default model dense and 2:4,
// runs the graph, and compares the logits with the transformers reference
// (plain, left-padded, and pruned 2:4 by magnitude).
func TestGraphMatchesTransformers(t *testing.T) {
	ref, err := testmodels.LoadReference()
	if err != nil {
		t.Fatal(err)
	}
	ones := make([][]int64, len(ref.InputIDs))
	for b := range ones {
		ones[b] = make([]int64, len(ref.InputIDs[b]))
		for s := range ones[b] {
			ones[b][s] = 1
		}
	}
	const tol = 1e-5
	for _, c := range []struct {
		nm         string
		ids, mask  [][]int64
		want       [][][]float32
		maskedOnly bool
	}{
		{"dense", ref.InputIDs, ones, ref.Logits, false},
		{"dense", ref.InputIDsPadded, ref.AttentionMask, ref.LogitsPadded, true},
		{"2:4", ref.InputIDs, ones, ref.LogitsPruned24Magnitude, false},
	} {
		out := filepath.Join(t.TempDir(), "m.slope")
		if _, err := DenseToSlope(t.Context(), Options{Out: out, NM: c.nm}); err != nil {
			t.Fatal(err)
		}
		f, err := format.Open(out, nil)
		if err != nil {
			t.Fatal(err)
		}
		got := runGraph(t, f, c.ids, c.mask)
		f.Close()
		var m [][]int64
		if c.maskedOnly {
			m = c.mask
		}
		name := fmt.Sprintf("%s padded=%v", c.nm, c.maskedOnly)
		if d := maxDiff(got, c.want, m); d > tol {
			t.Errorf("%s: logits differ from transformers by %g (tolerance %g)", name, d, tol)
		} else {
			t.Logf("%s: max |Δlogit| = %.2g", name, d)
		}
	}
	// The pruned reference must differ from the dense one, or the check
	// above proves nothing.
	if d := maxDiff(ref.Logits, ref.LogitsPruned24Magnitude, nil); d < 1e-2 {
		t.Fatalf("pruned and dense reference logits differ by only %g", d)
	}
}
