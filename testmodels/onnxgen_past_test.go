package testmodels

import (
	"math"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/slopeml/slope/format/onnxpb"
)

// oxInts is an int64 tensor of the test interpreter.
func oxInts(shape []int, v []int64) *oxTensor {
	return &oxTensor{shape: shape, i: v, isInt: true}
}

// oxRunGraph interprets a graph WriteOPTONNX writes, WithPast or not, on
// the given inputs and returns every graph output by name. It knows the
// ops of the with-past graph on top of those oxRun knows: CumSum,
// Unsqueeze, LessOrEqual, And, Where, Cast to bool, Slice with axes and
// Concat of any rank.
func oxRunGraph(t *testing.T, path string, inputs map[string]*oxTensor) map[string]*oxTensor {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m onnxpb.ModelProto
	if err := proto.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	vals := map[string]*oxTensor{}
	for _, tp := range m.Graph.Initializer {
		vals[tp.Name] = oxDecode(t, filepath.Dir(path), tp)
	}
	for _, in := range m.Graph.Input {
		v, ok := inputs[in.Name]
		if !ok {
			t.Fatalf("graph input %q not given", in.Name)
		}
		vals[in.Name] = v
	}
	for _, n := range m.Graph.Node {
		if n.Domain != "" {
			t.Fatalf("node %s: domain %q", n.Name, n.Domain)
		}
		x := make([]*oxTensor, len(n.Input))
		for k, name := range n.Input {
			v, ok := vals[name]
			if !ok {
				t.Fatalf("node %s: input %q undefined", n.Name, name)
			}
			x[k] = v
		}
		attr := map[string]*onnxpb.AttributeProto{}
		for _, a := range n.Attribute {
			attr[a.Name] = a
		}
		var y *oxTensor
		add := func(a, b float64) float64 { return a + b }
		switch n.OpType {
		case "Shape":
			s := x[0].shape
			start, end := 0, len(s)
			if a := attr["start"]; a != nil {
				start = int(a.I)
			}
			if a := attr["end"]; a != nil {
				end = int(a.I)
			}
			y = oxInts([]int{end - start}, nil)
			for _, d := range s[start:end] {
				y.i = append(y.i, int64(d))
			}
		case "Squeeze", "Unsqueeze":
			y = oxSqueeze(n.OpType, x)
		case "Range":
			y = oxInts(nil, nil)
			for v := x[0].i[0]; v < x[1].i[0]; v += x[2].i[0] {
				y.i = append(y.i, v)
			}
			y.shape = []int{len(y.i)}
		case "Add":
			y = oxBinary(x[0], x[1], add)
		case "Sub":
			y = oxBinary(x[0], x[1], func(a, b float64) float64 { return a - b })
		case "Mul":
			y = oxBinary(x[0], x[1], func(a, b float64) float64 { return a * b })
		case "Div":
			y = oxBinary(x[0], x[1], func(a, b float64) float64 { return a / b })
		case "Pow":
			y = oxBinary(x[0], x[1], math.Pow)
		case "Sqrt":
			y = oxUnary(x[0], math.Sqrt)
		case "Relu":
			y = oxUnary(x[0], func(v float64) float64 { return max(v, 0) })
		case "Tanh":
			y = oxUnary(x[0], math.Tanh)
		case "Sigmoid":
			y = oxUnary(x[0], func(v float64) float64 { return 1 / (1 + math.Exp(-v)) })
		case "Gelu":
			if a := attr["approximate"]; a != nil && string(a.S) == "tanh" {
				y = oxUnary(x[0], func(v float64) float64 {
					return 0.5 * v * (1 + math.Tanh(math.Sqrt(2/math.Pi)*(v+0.044715*v*v*v)))
				})
			} else {
				y = oxUnary(x[0], func(v float64) float64 { return 0.5 * v * (1 + math.Erf(v/math.Sqrt2)) })
			}
		case "CumSum":
			if ax := x[1].ints(); len(ax) != 1 || ax[0] != 1 || len(x[0].shape) != 2 || !x[0].isInt {
				t.Fatalf("node %s: CumSum of %v along %v", n.Name, x[0].shape, ax)
			}
			cols := x[0].shape[1]
			y = oxInts(x[0].shape, make([]int64, len(x[0].i)))
			for k, v := range x[0].i {
				if k%cols == 0 {
					y.i[k] = v
				} else {
					y.i[k] = y.i[k-1] + v
				}
			}
		case "LessOrEqual":
			y = oxLessOrEqual(x)
		case "And":
			y = oxBinary(x[0], x[1], func(a, b float64) float64 { return map[bool]float64{true: 1}[a != 0 && b != 0] })
		case "Where":
			y = oxWhere(t, n.Name, x)
		case "Cast":
			switch onnxpb.TensorProto_DataType(attr["to"].I) {
			case onnxpb.TensorProto_FLOAT:
				y = x[0]
			case onnxpb.TensorProto_BOOL:
				y = oxInts(x[0].shape, nil)
				for _, v := range x[0].ints() {
					y.i = append(y.i, map[bool]int64{true: 1}[v != 0])
				}
			default:
				t.Fatalf("node %s: cast to %d", n.Name, attr["to"].I)
			}
		case "Gather":
			d := x[0]
			row := d.size() / d.shape[0]
			y = &oxTensor{shape: append(slices.Clone(x[1].shape), d.shape[1:]...)}
			for _, id := range x[1].i {
				if id < 0 || int(id) >= d.shape[0] {
					t.Fatalf("node %s: index %d out of [0, %d)", n.Name, id, d.shape[0])
				}
				y.f = append(y.f, d.f[int(id)*row:int(id+1)*row]...)
			}
		case "MatMul":
			y = oxMatMul(x[0], x[1])
		case "Gemm":
			y = oxMatMul(x[0], oxTranspose(x[1], nil))
			if len(x) > 2 {
				y = oxBinary(y, x[2], add)
			}
		case "Transpose":
			y = oxTranspose(x[0], attr["perm"].Ints)
		case "Reshape":
			spec := x[1].ints()
			shape := make([]int, len(spec))
			infer, known := -1, 1
			for k, s := range spec {
				switch s {
				case 0:
					shape[k] = x[0].shape[k]
				case -1:
					infer = k
					continue
				default:
					shape[k] = int(s)
				}
				known *= shape[k]
			}
			if infer >= 0 {
				shape[infer] = x[0].size() / known
			}
			y = &oxTensor{shape: shape, f: x[0].f, i: x[0].i, isInt: x[0].isInt}
		case "Slice":
			a := x[0]
			starts, ends := x[1].ints(), x[2].ints()
			axes := make([]int64, len(starts))
			for k := range axes {
				axes[k] = int64(k)
			}
			if len(x) > 3 {
				axes = x[3].ints()
			}
			lo, hi := make([]int, len(a.shape)), slices.Clone(a.shape)
			for k, ax := range axes {
				lo[ax], hi[ax] = int(starts[k]), min(int(ends[k]), a.shape[ax])
			}
			shape := make([]int, len(a.shape))
			for k := range shape {
				shape[k] = hi[k] - lo[k]
			}
			ist, ost := oxStrides(a.shape), oxStrides(shape)
			y = &oxTensor{shape: shape, isInt: a.isInt}
			for o := 0; o < numel(shape); o++ {
				src, rem := 0, o
				for k := range shape {
					c := rem / ost[k]
					rem %= ost[k]
					src += (c + lo[k]) * ist[k]
				}
				if a.isInt {
					y.i = append(y.i, a.i[src])
				} else {
					y.f = append(y.f, a.f[src])
				}
			}
		case "Concat":
			ax := int(attr["axis"].I)
			if x[0].isInt {
				if ax != 0 {
					t.Fatalf("node %s: int Concat on axis %d", n.Name, ax)
				}
				y = oxInts(nil, nil)
				for _, v := range x {
					y.i = append(y.i, v.ints()...)
				}
				y.shape = []int{len(y.i)}
				break
			}
			outer := numel(x[0].shape[:ax])
			y = &oxTensor{shape: slices.Clone(x[0].shape)}
			y.shape[ax] = 0
			for _, v := range x {
				y.shape[ax] += v.shape[ax]
			}
			for o := 0; o < outer; o++ {
				for _, v := range x {
					inner := numel(v.shape[ax:])
					y.f = append(y.f, v.f[o*inner:(o+1)*inner]...)
				}
			}
		case "Softmax":
			y = oxLastAxis(x[0], func(row, out []float64) {
				mx := math.Inf(-1)
				for _, v := range row {
					mx = max(mx, v)
				}
				s := 0.0
				for k, v := range row {
					out[k] = math.Exp(v - mx)
					s += out[k]
				}
				for k := range out {
					out[k] /= s
				}
			})
		case "ReduceMean":
			d := x[0].shape[len(x[0].shape)-1]
			y = &oxTensor{shape: append(slices.Clone(x[0].shape[:len(x[0].shape)-1]), 1)}
			for r := 0; r < len(x[0].f); r += d {
				s := 0.0
				for _, v := range x[0].f[r : r+d] {
					s += v
				}
				y.f = append(y.f, s/float64(d))
			}
		case "LayerNormalization":
			eps := float64(attr["epsilon"].F)
			y = oxLastAxis(x[0], func(row, out []float64) {
				mean, vr := 0.0, 0.0
				for _, v := range row {
					mean += v
				}
				mean /= float64(len(row))
				for _, v := range row {
					vr += (v - mean) * (v - mean)
				}
				vr /= float64(len(row))
				for k, v := range row {
					out[k] = (v-mean)/math.Sqrt(vr+eps)*x[1].f[k] + x[2].f[k]
				}
			})
		default:
			t.Fatalf("node %s: op %s not interpreted", n.Name, n.OpType)
		}
		if len(n.Output) != 1 {
			t.Fatalf("node %s: %d outputs", n.Name, len(n.Output))
		}
		vals[n.Output[0]] = y
	}
	out := map[string]*oxTensor{}
	for _, o := range m.Graph.Output {
		v, ok := vals[o.Name]
		if !ok {
			t.Fatalf("graph output %q not computed", o.Name)
		}
		out[o.Name] = v
	}
	return out
}

// oxPastInputs are the inputs of a with-past graph: ids and mask rows,
// and the pasts (empty ones of length 0 when pasts is nil).
func oxPastInputs(cfg ONNXConfig, ids, mask [][]int64, pasts map[string]*oxTensor) map[string]*oxTensor {
	in := map[string]*oxTensor{
		"input_ids":      oxInts([]int{len(ids), len(ids[0])}, slices.Concat(ids...)),
		"attention_mask": oxInts([]int{len(mask), len(mask[0])}, slices.Concat(mask...)),
	}
	for i := 0; i < cfg.Layers; i++ {
		for _, kv := range []string{"key", "value"} {
			if pasts != nil {
				in[onnxPastName(i, kv)] = pasts[onnxPresentName(i, kv)]
			} else {
				in[onnxPastName(i, kv)] = &oxTensor{shape: []int{len(ids), cfg.Heads, 0, cfg.Hidden / cfg.Heads}}
			}
		}
	}
	return in
}

// oxRow is row b, position s of logits [batch, seq, vocab].
func oxRow(l *oxTensor, b, s int) []float64 {
	v := l.shape[2]
	off := (b*l.shape[1] + s) * v
	return l.f[off : off+v]
}

func oxDiff(a, b []float64) float64 {
	d := 0.0
	for k := range a {
		d = max(d, math.Abs(a[k]-b[k]))
	}
	return d
}

var oxPastConfigs = []struct {
	cfg   ONNXConfig
	dtype string
	opts  ONNXOptions
}{
	{ONNXConfig{Vocab: 30, Hidden: 16, Heads: 2, Layers: 2, FFN: 24, MaxPos: 16, PreLN: true, Tied: true}, "F32", ONNXOptions{}},
	{ONNXConfig{Vocab: 25, Hidden: 12, ProjDim: 6, Heads: 3, Layers: 2, FFN: 12, MaxPos: 12, Activation: "gelu"}, "BF16",
		ONNXOptions{CanonicalWeights: true, DecomposeLayerNorm: true, ExternalData: true}},
}

// TestWriteOPTONNXWithPast checks the with-past graph against the
// no-past one on the same weights: the full sequence with an empty past,
// a prefix then one token at a time feeding the presents back as pasts,
// and left padding.
func TestWriteOPTONNXWithPast(t *testing.T) {
	for ci, c := range oxPastConfigs {
		ws := oxRandomWeights(c.cfg, c.dtype)
		dir := t.TempDir()
		noPast, withPast := filepath.Join(dir, "nopast.onnx"), filepath.Join(dir, "past.onnx")
		if err := WriteOPTONNX(noPast, c.cfg, ws, c.opts); err != nil {
			t.Fatal(err)
		}
		po := c.opts
		po.WithPast = true
		if err := WriteOPTONNX(withPast, c.cfg, ws, po); err != nil {
			t.Fatal(err)
		}
		ids := [][]int64{{2, 5, 7, 1, 9, 4, 3}, {3, 3, 9, 11, 0, 8, 6}}
		seq := len(ids[0])
		ones := [][]int64{slices.Repeat([]int64{1}, seq), slices.Repeat([]int64{1}, seq)}
		want := oxRun(t, noPast, ids)

		full := oxRunGraph(t, withPast, oxPastInputs(c.cfg, ids, ones, nil))
		got := full["logits"]
		if !slices.Equal(got.shape, want.shape) {
			t.Fatalf("config %d: logits shape %v, want %v", ci, got.shape, want.shape)
		}
		for b := range ids {
			for s := 0; s < seq; s++ {
				if d := oxDiff(oxRow(got, b, s), oxRow(want, b, s)); d > 1e-9 {
					t.Errorf("config %d: past 0: row %d pos %d differs from the no-past graph by %g", ci, b, s, d)
				}
			}
		}
		for i := 0; i < c.cfg.Layers; i++ {
			p := full[onnxPresentName(i, "key")]
			if want := []int{2, c.cfg.Heads, seq, c.cfg.Hidden / c.cfg.Heads}; !slices.Equal(p.shape, want) {
				t.Errorf("config %d: present %d key shape %v, want %v", ci, i, p.shape, want)
			}
		}

		// prefix of 3, then one token at a time
		const prefix = 3
		cut := func(rows [][]int64, lo, hi int) [][]int64 {
			out := make([][]int64, len(rows))
			for b := range rows {
				out[b] = rows[b][lo:hi]
			}
			return out
		}
		outs := oxRunGraph(t, withPast, oxPastInputs(c.cfg, cut(ids, 0, prefix), cut(ones, 0, prefix), nil))
		for s := 0; s < seq; s++ {
			pos := s
			if s >= prefix {
				outs = oxRunGraph(t, withPast, oxPastInputs(c.cfg, cut(ids, s, s+1), cut(ones, 0, s+1), outs))
				pos = 0
			}
			for b := range ids {
				if d := oxDiff(oxRow(outs["logits"], b, pos), oxRow(want, b, s)); d > 1e-5 {
					t.Errorf("config %d: incremental: row %d pos %d differs from the full sequence by %g", ci, b, s, d)
				}
			}
		}

		// left padding: row 0 is ids[0][2:] after two pads, checked
		// against the unpadded row; row 1 unpadded.
		padIDs := [][]int64{append([]int64{1, 1}, ids[0][2:]...), ids[1]}
		padMask := [][]int64{append([]int64{0, 0}, ones[0][2:]...), ones[1]}
		short := oxRun(t, noPast, [][]int64{ids[0][2:]})
		pad := oxRunGraph(t, withPast, oxPastInputs(c.cfg, padIDs, padMask, nil))["logits"]
		for s := 2; s < seq; s++ {
			if d := oxDiff(oxRow(pad, 0, s), oxRow(short, 0, s-2)); d > 1e-9 {
				t.Errorf("config %d: left padding: pos %d differs by %g", ci, s, d)
			}
			if d := oxDiff(oxRow(pad, 1, s), oxRow(want, 1, s)); d > 1e-9 {
				t.Errorf("config %d: left padding: unpadded row pos %d differs by %g", ci, s, d)
			}
		}
		for s := 0; s < 2; s++ {
			for _, v := range oxRow(pad, 0, s) {
				if math.IsNaN(v) || math.IsInf(v, 0) {
					t.Fatalf("config %d: left padding: pad position %d has logit %g", ci, s, v)
				}
			}
		}
	}
}

// TestWriteOPTONNXWithPastStructure checks the with-past graph's inputs,
// outputs and ops.
func TestWriteOPTONNXWithPastStructure(t *testing.T) {
	c := oxPastConfigs[0]
	path := filepath.Join(t.TempDir(), "m.onnx")
	if err := WriteOPTONNX(path, c.cfg, oxRandomWeights(c.cfg, c.dtype), ONNXOptions{WithPast: true}); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m onnxpb.ModelProto
	if err := proto.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	var ins, outs []string
	for _, v := range m.Graph.Input {
		ins = append(ins, v.Name)
	}
	for _, v := range m.Graph.Output {
		outs = append(outs, v.Name)
	}
	wantIns := []string{"input_ids", "attention_mask", "past_key_values.0.key", "past_key_values.0.value", "past_key_values.1.key", "past_key_values.1.value"}
	wantOuts := []string{"logits", "present.0.key", "present.0.value", "present.1.key", "present.1.value"}
	if !slices.Equal(ins, wantIns) || !slices.Equal(outs, wantOuts) {
		t.Errorf("inputs %v outputs %v, want %v %v", ins, outs, wantIns, wantOuts)
	}
	if len(m.OpsetImport) != 1 || m.OpsetImport[0].Domain != "" || m.OpsetImport[0].Version != ONNXOpset {
		t.Errorf("opsets %v", m.OpsetImport)
	}
	seen := map[string]bool{}
	for _, n := range m.Graph.Node {
		if seen[n.Output[0]] {
			t.Errorf("value %q defined twice", n.Output[0])
		}
		seen[n.Output[0]] = true
	}
}
