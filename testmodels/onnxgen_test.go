package testmodels

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/format/onnxpb"
)

// oxTensor is a value of the test interpreter: float64 or int64 data.
type oxTensor struct {
	shape []int
	f     []float64
	i     []int64
	isInt bool
}

func (t *oxTensor) size() int { return numel(t.shape) }

func (t *oxTensor) ints() []int64 {
	if t.isInt {
		return t.i
	}
	out := make([]int64, len(t.f))
	for k, v := range t.f {
		out[k] = int64(v)
	}
	return out
}

// oxDecode reads an initializer (raw, typed or external data).
func oxDecode(t *testing.T, dir string, tp *onnxpb.TensorProto) *oxTensor {
	t.Helper()
	out := &oxTensor{}
	for _, d := range tp.Dims {
		out.shape = append(out.shape, int(d))
	}
	n := numel(out.shape)
	raw := tp.RawData
	if tp.DataLocation == onnxpb.TensorProto_EXTERNAL {
		kv := map[string]string{}
		for _, e := range tp.ExternalData {
			kv[e.Key] = e.Value
		}
		b, err := os.ReadFile(filepath.Join(dir, kv["location"]))
		if err != nil {
			t.Fatal(err)
		}
		off, _ := strconv.Atoi(kv["offset"])
		ln, _ := strconv.Atoi(kv["length"])
		raw = b[off : off+ln]
	}
	switch onnxpb.TensorProto_DataType(tp.DataType) {
	case onnxpb.TensorProto_INT64:
		out.isInt = true
		out.i = make([]int64, n)
		for k := range out.i {
			if raw != nil {
				out.i[k] = int64(binary.LittleEndian.Uint64(raw[8*k:]))
			} else {
				out.i[k] = tp.Int64Data[k]
			}
		}
	case onnxpb.TensorProto_FLOAT:
		out.f = make([]float64, n)
		for k := range out.f {
			if raw != nil {
				out.f[k] = float64(math.Float32frombits(binary.LittleEndian.Uint32(raw[4*k:])))
			} else {
				out.f[k] = float64(tp.FloatData[k])
			}
		}
	case onnxpb.TensorProto_FLOAT16, onnxpb.TensorProto_BFLOAT16:
		out.f = make([]float64, n)
		for k := range out.f {
			var bits uint16
			if raw != nil {
				bits = binary.LittleEndian.Uint16(raw[2*k:])
			} else {
				bits = uint16(tp.Int32Data[k])
			}
			if tp.DataType == int32(onnxpb.TensorProto_FLOAT16) {
				out.f[k] = float64(format.Float16ToFloat32(bits))
			} else {
				out.f[k] = float64(format.BFloat16ToFloat32(bits))
			}
		}
	default:
		t.Fatalf("initializer %s: dtype %d", tp.Name, tp.DataType)
	}
	return out
}

// oxStrides are the row-major strides of shape.
func oxStrides(shape []int) []int {
	s := make([]int, len(shape))
	acc := 1
	for k := len(shape) - 1; k >= 0; k-- {
		s[k] = acc
		acc *= shape[k]
	}
	return s
}

// oxBinary applies f elementwise with numpy broadcasting.
func oxBinary(a, b *oxTensor, f func(x, y float64) float64) *oxTensor {
	r := max(len(a.shape), len(b.shape))
	pad := func(s []int) []int { return append(slices.Repeat([]int{1}, r-len(s)), s...) }
	as, bs := pad(a.shape), pad(b.shape)
	shape := make([]int, r)
	for k := range shape {
		shape[k] = max(as[k], bs[k])
	}
	ast, bst, ost := oxStrides(as), oxStrides(bs), oxStrides(shape)
	out := &oxTensor{shape: shape, isInt: a.isInt && b.isInt}
	n := numel(shape)
	get := func(t *oxTensor, k int) float64 {
		if t.isInt {
			return float64(t.i[k])
		}
		return t.f[k]
	}
	vals := make([]float64, n)
	for o := 0; o < n; o++ {
		ai, bi, rem := 0, 0, o
		for k := 0; k < r; k++ {
			c := rem / ost[k]
			rem %= ost[k]
			if as[k] != 1 {
				ai += c * ast[k]
			}
			if bs[k] != 1 {
				bi += c * bst[k]
			}
		}
		vals[o] = f(get(a, ai), get(b, bi))
	}
	if out.isInt {
		out.i = make([]int64, n)
		for k, v := range vals {
			out.i[k] = int64(v)
		}
	} else {
		out.f = vals
	}
	return out
}

func oxUnary(a *oxTensor, f func(float64) float64) *oxTensor {
	out := &oxTensor{shape: a.shape, f: make([]float64, len(a.f))}
	for k, v := range a.f {
		out.f[k] = f(v)
	}
	return out
}

// oxLastAxis applies f to each row along the last axis.
func oxLastAxis(a *oxTensor, f func(row, out []float64)) *oxTensor {
	d := a.shape[len(a.shape)-1]
	out := &oxTensor{shape: a.shape, f: make([]float64, len(a.f))}
	for r := 0; r < len(a.f); r += d {
		f(a.f[r:r+d], out.f[r:r+d])
	}
	return out
}

func oxTranspose(a *oxTensor, perm []int64) *oxTensor {
	r := len(a.shape)
	if len(perm) == 0 {
		for k := r - 1; k >= 0; k-- {
			perm = append(perm, int64(k))
		}
	}
	shape := make([]int, r)
	for k, p := range perm {
		shape[k] = a.shape[p]
	}
	ist, ost := oxStrides(a.shape), oxStrides(shape)
	out := &oxTensor{shape: shape, f: make([]float64, len(a.f))}
	for o := range out.f {
		src, rem := 0, o
		for k := 0; k < r; k++ {
			c := rem / ost[k]
			rem %= ost[k]
			src += c * ist[perm[k]]
		}
		out.f[o] = a.f[src]
	}
	return out
}

// oxMatMul multiplies [..., n, k] by [k, m] or by [..., k, m] with the
// same batch dims.
func oxMatMul(a, b *oxTensor) *oxTensor {
	k := a.shape[len(a.shape)-1]
	n := a.shape[len(a.shape)-2]
	m := b.shape[len(b.shape)-1]
	batch := len(a.f) / (n * k)
	shape := append(slices.Clone(a.shape[:len(a.shape)-1]), m)
	out := &oxTensor{shape: shape, f: make([]float64, batch*n*m)}
	for bi := 0; bi < batch; bi++ {
		boff := 0
		if len(b.shape) > 2 {
			boff = bi * k * m
		}
		for i := 0; i < n; i++ {
			for j := 0; j < m; j++ {
				s := 0.0
				for x := 0; x < k; x++ {
					s += a.f[(bi*n+i)*k+x] * b.f[boff+x*m+j]
				}
				out.f[(bi*n+i)*m+j] = s
			}
		}
	}
	return out
}

// oxRun interprets the ops WriteOPTONNX emits on ids [batch, seq] and
// returns the logits.
func oxRun(t *testing.T, path string, ids [][]int64) *oxTensor {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m onnxpb.ModelProto
	if err := proto.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	vals := map[string]*oxTensor{}
	for _, tp := range m.Graph.Initializer {
		vals[tp.Name] = oxDecode(t, filepath.Dir(path), tp)
	}
	in := &oxTensor{shape: []int{len(ids), len(ids[0])}, isInt: true}
	for _, row := range ids {
		in.i = append(in.i, row...)
	}
	vals["input_ids"] = in
	for _, n := range m.Graph.Node {
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
			y = &oxTensor{shape: []int{end - start}, isInt: true}
			for _, d := range s[start:end] {
				y.i = append(y.i, int64(d))
			}
		case "Squeeze", "Unsqueeze":
			y = oxSqueeze(n.OpType, x)
		case "LessOrEqual":
			y = oxLessOrEqual(x)
		case "Where":
			y = oxWhere(t, n.Name, x)
		case "Range":
			y = &oxTensor{isInt: true}
			for v := x[0].i[0]; v < x[1].i[0]; v += x[2].i[0] {
				y.i = append(y.i, v)
			}
			y.shape = []int{len(y.i)}
		case "Add":
			y = oxBinary(x[0], x[1], func(a, b float64) float64 { return a + b })
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
		case "Cast":
			if attr["to"].I != int64(onnxpb.TensorProto_FLOAT) {
				t.Fatalf("node %s: cast to %d", n.Name, attr["to"].I)
			}
			y = x[0]
		case "Gather":
			d := x[0]
			row := d.size() / d.shape[0]
			y = &oxTensor{shape: append(slices.Clone(x[1].shape), d.shape[1:]...)}
			for _, id := range x[1].i {
				y.f = append(y.f, d.f[int(id)*row:int(id+1)*row]...)
			}
		case "MatMul":
			y = oxMatMul(x[0], x[1])
		case "Gemm":
			if attr["transB"].I != 1 {
				t.Fatalf("node %s: transB 0", n.Name)
			}
			y = oxMatMul(x[0], oxTranspose(x[1], nil))
			if len(x) > 2 {
				y = oxBinary(y, x[2], func(a, b float64) float64 { return a + b })
			}
		case "Transpose":
			var perm []int64
			if a := attr["perm"]; a != nil {
				perm = a.Ints
			}
			y = oxTranspose(x[0], perm)
		case "Reshape":
			spec := x[1].ints()
			shape := make([]int, len(spec))
			infer := -1
			known := 1
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
			y = &oxTensor{shape: shape, f: x[0].f}
		case "Slice":
			a := x[0]
			starts, ends := x[1].ints(), x[2].ints()
			lo, hi := slices.Clone(make([]int, len(a.shape))), slices.Clone(a.shape)
			for k := range starts {
				lo[k], hi[k] = int(starts[k]), min(int(ends[k]), a.shape[k])
			}
			shape := make([]int, len(a.shape))
			for k := range shape {
				shape[k] = hi[k] - lo[k]
			}
			ist, ost := oxStrides(a.shape), oxStrides(shape)
			y = &oxTensor{shape: shape, f: make([]float64, numel(shape))}
			for o := range y.f {
				src, rem := 0, o
				for k := range shape {
					c := rem / ost[k]
					rem %= ost[k]
					src += (c + lo[k]) * ist[k]
				}
				y.f[o] = a.f[src]
			}
		case "Concat":
			y = &oxTensor{isInt: true}
			for _, v := range x {
				y.i = append(y.i, v.ints()...)
			}
			y.shape = []int{len(y.i)}
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
			if ax := x[1].ints(); len(ax) != 1 || ax[0] != -1 {
				t.Fatalf("node %s: axes %v", n.Name, ax)
			}
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
		vals[n.Output[0]] = y
	}
	out, ok := vals["logits"]
	if !ok {
		t.Fatal("no logits")
	}
	return out
}

// oxForward is OPT's forward pass written directly from the weights, in
// float64: the reference the interpreted graph is checked against.
func oxForward(cfg ONNXConfig, ws []NamedTensor, ids []int64) [][]float64 {
	w := map[string][]float64{}
	for _, t := range ws {
		f := make([]float64, len(t.Data))
		for k, v := range t.Data {
			f[k] = float64(v)
		}
		w[t.Name] = f
	}
	p := cfg.ProjDim
	if p == 0 {
		p = cfg.Hidden
	}
	h, s := cfg.Hidden, len(ids)
	eps := float64(cfg.Eps)
	if eps == 0 {
		eps = 1e-5
	}
	linear := func(x [][]float64, name string, out int, bias bool) [][]float64 {
		W := w[name+".weight"]
		y := make([][]float64, len(x))
		for r, row := range x {
			y[r] = make([]float64, out)
			for o := range y[r] {
				acc := 0.0
				for k, v := range row {
					acc += W[o*len(row)+k] * v
				}
				if bias && !cfg.NoBias {
					acc += w[name+".bias"][o]
				}
				y[r][o] = acc
			}
		}
		return y
	}
	ln := func(x [][]float64, name string) [][]float64 {
		y := make([][]float64, len(x))
		for r, row := range x {
			mean, vr := 0.0, 0.0
			for _, v := range row {
				mean += v
			}
			mean /= float64(len(row))
			for _, v := range row {
				vr += (v - mean) * (v - mean)
			}
			vr /= float64(len(row))
			y[r] = make([]float64, len(row))
			for k, v := range row {
				y[r][k] = (v-mean)/math.Sqrt(vr+eps)*w[name+".weight"][k] + w[name+".bias"][k]
			}
		}
		return y
	}
	add := func(a, b [][]float64) [][]float64 {
		y := make([][]float64, len(a))
		for r := range a {
			y[r] = make([]float64, len(a[r]))
			for k := range a[r] {
				y[r][k] = a[r][k] + b[r][k]
			}
		}
		return y
	}
	act := func(v float64) float64 {
		switch cfg.Activation {
		case "gelu":
			return 0.5 * v * (1 + math.Erf(v/math.Sqrt2))
		case "gelu_new":
			return 0.5 * v * (1 + math.Tanh(math.Sqrt(2/math.Pi)*(v+0.044715*v*v*v)))
		case "tanh":
			return math.Tanh(v)
		case "sigmoid":
			return 1 / (1 + math.Exp(-v))
		case "silu":
			return v / (1 + math.Exp(-v))
		}
		return max(v, 0)
	}
	x := make([][]float64, s)
	for i, id := range ids {
		x[i] = slices.Clone(w["decoder.embed_tokens.weight"][int(id)*p : int(id+1)*p])
	}
	if p != h {
		x = linear(x, "decoder.project_in", h, false)
	}
	for i := range x {
		for k := range x[i] {
			x[i][k] += w["decoder.embed_positions.weight"][(i+2)*h+k]
		}
	}
	hd := h / cfg.Heads
	for l := 0; l < cfg.Layers; l++ {
		pre := "decoder.layers." + strconv.Itoa(l) + "."
		a := x
		if cfg.PreLN {
			a = ln(x, pre+"self_attn_layer_norm")
		}
		q := linear(a, pre+"self_attn.q_proj", h, true)
		k := linear(a, pre+"self_attn.k_proj", h, true)
		v := linear(a, pre+"self_attn.v_proj", h, true)
		ctx := make([][]float64, s)
		for i := range ctx {
			ctx[i] = make([]float64, h)
		}
		for hh := 0; hh < cfg.Heads; hh++ {
			for i := 0; i < s; i++ {
				sc := make([]float64, i+1)
				mx := math.Inf(-1)
				for j := 0; j <= i; j++ {
					for d := 0; d < hd; d++ {
						sc[j] += q[i][hh*hd+d] * k[j][hh*hd+d]
					}
					sc[j] /= math.Sqrt(float64(hd))
					mx = max(mx, sc[j])
				}
				sum := 0.0
				for j := range sc {
					sc[j] = math.Exp(sc[j] - mx)
					sum += sc[j]
				}
				for j := range sc {
					for d := 0; d < hd; d++ {
						ctx[i][hh*hd+d] += sc[j] / sum * v[j][hh*hd+d]
					}
				}
			}
		}
		x = add(x, linear(ctx, pre+"self_attn.out_proj", h, true))
		if !cfg.PreLN {
			x = ln(x, pre+"self_attn_layer_norm")
		}
		f := x
		if cfg.PreLN {
			f = ln(x, pre+"final_layer_norm")
		}
		f = linear(f, pre+"fc1", cfg.FFN, true)
		for i := range f {
			for k := range f[i] {
				f[i][k] = act(f[i][k])
			}
		}
		x = add(x, linear(f, pre+"fc2", h, true))
		if !cfg.PreLN {
			x = ln(x, pre+"final_layer_norm")
		}
	}
	if cfg.PreLN && !cfg.RemoveFinalLayerNorm {
		x = ln(x, "decoder.final_layer_norm")
	}
	if p != h {
		x = linear(x, "decoder.project_out", p, false)
	}
	head := "lm_head"
	if cfg.Tied {
		head = "decoder.embed_tokens"
	}
	return linear(x, head, cfg.Vocab, false)
}

// oxFixtureWeights reads the default model's model.safetensors (F32)
// with canonical names.
func oxFixtureWeights(t *testing.T) []NamedTensor {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(Dir(), "model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	n := binary.LittleEndian.Uint64(b)
	var hdr map[string]json.RawMessage
	if err := json.Unmarshal(b[8:8+n], &hdr); err != nil {
		t.Fatal(err)
	}
	data := b[8+n:]
	var ts []NamedTensor
	for key, raw := range hdr {
		if key == "__metadata__" {
			continue
		}
		var e struct {
			DType   string `json:"dtype"`
			Shape   []int  `json:"shape"`
			Offsets [2]int `json:"data_offsets"`
		}
		if err := json.Unmarshal(raw, &e); err != nil || e.DType != "F32" {
			t.Fatalf("%s: %v %s", key, err, e.DType)
		}
		f := make([]float32, numel(e.Shape))
		for k := range f {
			f[k] = math.Float32frombits(binary.LittleEndian.Uint32(data[e.Offsets[0]+4*k:]))
		}
		ts = append(ts, NamedTensor{Name: strings.TrimPrefix(key, "model."), Shape: e.Shape, DType: "F32", Data: f})
	}
	return ts
}

// oxFixtureConfig is the default model's config.
var oxFixtureConfig = ONNXConfig{Vocab: 512, Hidden: 64, Heads: 4, Layers: 2, FFN: 256, MaxPos: 64, PreLN: true, Tied: true}

// oxLayouts are the layout options the tests cover.
var oxLayouts = []ONNXOptions{
	{},
	{CanonicalWeights: true},
	{DecomposeLayerNorm: true, OpaqueNames: true},
	{ExternalData: true, TypedData: true, CopyTiedHead: true},
	{ExternalData: true, ExternalName: "weights.bin", CanonicalWeights: true, CopyTiedHead: true, DecomposeLayerNorm: true},
	{TypedData: true},
}

func oxMaxDiff(got *oxTensor, want [][]float64, b int) float64 {
	d := 0.0
	s, v := got.shape[1], got.shape[2]
	for i := 0; i < s; i++ {
		for k := 0; k < v; k++ {
			d = max(d, math.Abs(got.f[(b*s+i)*v+k]-want[i][k]))
		}
	}
	return d
}

// TestWriteOPTONNXMatchesTransformers writes the default model's weights
// in every layout, interprets the graph and compares the logits with
// those transformers computed (reference.json), as well as the direct
// forward pass the other tests use as reference.
func TestWriteOPTONNXMatchesTransformers(t *testing.T) {
	ref, err := LoadReference()
	if err != nil {
		t.Fatal(err)
	}
	ws := oxFixtureWeights(t)
	for b, ids := range ref.InputIDs {
		want := oxForward(oxFixtureConfig, ws, ids)
		d := 0.0
		for i := range want {
			for k := range want[i] {
				d = max(d, math.Abs(want[i][k]-float64(ref.Logits[b][i][k])))
			}
		}
		if d > 1e-4 {
			t.Fatalf("direct forward differs from transformers by %g", d)
		}
	}
	for li, opts := range oxLayouts {
		t.Run(fmt.Sprintf("layout%d", li), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "model.onnx")
			if err := WriteOPTONNX(path, oxFixtureConfig, ws, opts); err != nil {
				t.Fatal(err)
			}
			got := oxRun(t, path, ref.InputIDs)
			if want := []int{2, 12, 512}; !slices.Equal(got.shape, want) {
				t.Fatalf("logits shape %v, want %v", got.shape, want)
			}
			d := 0.0
			for k, v := range got.f {
				d = max(d, math.Abs(v-float64(ref.Logits[k/(12*512)][k/512%12][k%512])))
			}
			if d > 1e-4 {
				t.Errorf("layout %d: logits differ from transformers by %g", li, d)
			}
		})
	}
}

// oxConfigs are architectures beyond the fixture's.
var oxConfigs = []struct {
	cfg   ONNXConfig
	dtype string
}{
	{ONNXConfig{Vocab: 37, Hidden: 24, Heads: 3, Layers: 2, FFN: 40, MaxPos: 10, Activation: "gelu"}, "F32"},
	{ONNXConfig{Vocab: 30, Hidden: 16, ProjDim: 8, Heads: 2, Layers: 1, FFN: 24, MaxPos: 8, PreLN: true, Tied: true, Activation: "gelu_new"}, "F16"},
	{ONNXConfig{Vocab: 20, Hidden: 8, Heads: 1, Layers: 2, FFN: 16, MaxPos: 6, PreLN: true, RemoveFinalLayerNorm: true, NoBias: true, Activation: "silu", Eps: 1e-6}, "BF16"},
	{ONNXConfig{Vocab: 25, Hidden: 12, ProjDim: 6, Heads: 2, Layers: 1, FFN: 12, MaxPos: 5, Activation: "tanh"}, "F32"},
	{ONNXConfig{Vocab: 20, Hidden: 8, Heads: 2, Layers: 1, FFN: 8, MaxPos: 4, PreLN: true, Tied: true, Activation: "sigmoid"}, "F32"},
}

func oxRandomWeights(cfg ONNXConfig, dtype string) []NamedTensor {
	rng := rand.New(rand.NewPCG(3, 4))
	names, shapes := ONNXWeightShapes(cfg)
	var ts []NamedTensor
	for i, n := range names {
		f := make([]float32, numel(shapes[i]))
		for k := range f {
			v := float32(rng.NormFloat64() * 0.4)
			switch dtype {
			case "F16":
				v = format.Float16ToFloat32(format.Float32ToFloat16(v))
			case "BF16":
				v = format.BFloat16ToFloat32(format.Float32ToBFloat16(v))
			}
			f[k] = v
		}
		ts = append(ts, NamedTensor{Name: n, Shape: shapes[i], DType: dtype, Data: f})
	}
	return ts
}

// TestWriteOPTONNXForward interprets other architectures in every layout
// and compares with the direct forward pass.
func TestWriteOPTONNXForward(t *testing.T) {
	for ci, c := range oxConfigs {
		ws := oxRandomWeights(c.cfg, c.dtype)
		ids := [][]int64{{2, 5, 7, 1}, {3, 3, 9, 11}}
		ids[0] = ids[0][:min(len(ids[0]), c.cfg.MaxPos)]
		ids[1] = ids[1][:min(len(ids[1]), c.cfg.MaxPos)]
		for li, opts := range oxLayouts {
			if c.cfg.Tied == false && opts.CopyTiedHead {
				continue
			}
			path := filepath.Join(t.TempDir(), "m.onnx")
			if err := WriteOPTONNX(path, c.cfg, ws, opts); err != nil {
				t.Fatal(err)
			}
			got := oxRun(t, path, ids)
			for b := range ids {
				if d := oxMaxDiff(got, oxForward(c.cfg, ws, ids[b]), b); d > 1e-8 {
					t.Errorf("config %d layout %d row %d: logits differ from the direct forward by %g", ci, li, b, d)
				}
			}
		}
	}
}

// TestWriteOPTONNXStructure checks the graph's well-formedness and the
// external data layout.
func TestWriteOPTONNXStructure(t *testing.T) {
	cfg := oxConfigs[0].cfg
	ws := oxRandomWeights(cfg, "F32")
	for _, opts := range oxLayouts {
		dir := t.TempDir()
		path := filepath.Join(dir, "model.onnx")
		if err := WriteOPTONNX(path, cfg, ws, opts); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var m onnxpb.ModelProto
		if err := proto.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		if len(m.OpsetImport) != 1 || m.OpsetImport[0].Version != ONNXOpset || m.IrVersion < 9 {
			t.Errorf("opset %v ir %d", m.OpsetImport, m.IrVersion)
		}
		defined := map[string]bool{"input_ids": true}
		for _, in := range m.Graph.Initializer {
			if defined[in.Name] {
				t.Errorf("initializer %q defined twice", in.Name)
			}
			defined[in.Name] = true
		}
		for _, n := range m.Graph.Node {
			for _, in := range n.Input {
				if !defined[in] {
					t.Errorf("node %s reads %q before it is defined", n.Name, in)
				}
			}
			for _, out := range n.Output {
				if defined[out] {
					t.Errorf("node %s redefines %q", n.Name, out)
				}
				defined[out] = true
			}
		}
		if !defined["logits"] || len(m.Graph.Output) != 1 || m.Graph.Output[0].Name != "logits" {
			t.Error("no logits output")
		}
		extName := opts.ExternalName
		if extName == "" {
			extName = "model.onnx.data"
		}
		ext, extErr := os.ReadFile(filepath.Join(dir, extName))
		if opts.ExternalData != (extErr == nil) {
			t.Errorf("external data %v, side file error %v", opts.ExternalData, extErr)
		}
		nExt := 0
		for _, in := range m.Graph.Initializer {
			if in.DataLocation != onnxpb.TensorProto_EXTERNAL {
				continue
			}
			nExt++
			kv := map[string]string{}
			for _, e := range in.ExternalData {
				kv[e.Key] = e.Value
			}
			off, _ := strconv.Atoi(kv["offset"])
			ln, _ := strconv.Atoi(kv["length"])
			if kv["location"] != extName || off%64 != 0 || off+ln > len(ext) || ln != 4*numel(oxDecodeShape(in)) {
				t.Errorf("initializer %s: external data %v (file %d bytes)", in.Name, kv, len(ext))
			}
		}
		names, _ := ONNXWeightShapes(cfg)
		if opts.ExternalData && nExt != len(names) {
			t.Errorf("%d external initializers, want %d", nExt, len(names))
		}
	}
}

func oxDecodeShape(tp *onnxpb.TensorProto) []int {
	var s []int
	for _, d := range tp.Dims {
		s = append(s, int(d))
	}
	return s
}

func TestWriteOPTONNXErrors(t *testing.T) {
	cfg := oxConfigs[0].cfg
	good := oxRandomWeights(cfg, "F32")
	edit := func(f func([]NamedTensor) []NamedTensor) []NamedTensor {
		ws := slices.Clone(good)
		return f(ws)
	}
	for _, c := range []struct {
		name string
		cfg  ONNXConfig
		ws   []NamedTensor
		opts ONNXOptions
		want string
	}{
		{"missing", cfg, edit(func(ws []NamedTensor) []NamedTensor { return ws[1:] }), ONNXOptions{}, `no tensor "decoder.embed_tokens.weight"`},
		{"shape", cfg, edit(func(ws []NamedTensor) []NamedTensor { ws[0].Shape = []int{1, 2}; return ws }), ONNXOptions{}, "has shape [1 2]"},
		{"length", cfg, edit(func(ws []NamedTensor) []NamedTensor { ws[1].Data = ws[1].Data[1:]; return ws }), ONNXOptions{}, "values for shape"},
		{"unknown", cfg, edit(func(ws []NamedTensor) []NamedTensor {
			return append(ws, NamedTensor{Name: "decoder.extra", Shape: []int{1}, Data: []float32{0}})
		}), ONNXOptions{}, `"decoder.extra" is not a weight`},
		{"duplicate", cfg, edit(func(ws []NamedTensor) []NamedTensor { return append(ws, ws[0]) }), ONNXOptions{}, "given twice"},
		{"dtype", cfg, edit(func(ws []NamedTensor) []NamedTensor { ws[2].DType = "F64"; return ws }), ONNXOptions{}, `dtype "F64"`},
		{"heads", ONNXConfig{Vocab: 37, Hidden: 24, Heads: 5, Layers: 2, FFN: 40, MaxPos: 10}, good, ONNXOptions{}, "does not divide"},
		{"activation", ONNXConfig{Vocab: 37, Hidden: 24, Heads: 3, Layers: 2, FFN: 40, MaxPos: 10, Activation: "swoosh"}, good, ONNXOptions{}, "swoosh"},
		{"external name", cfg, good, ONNXOptions{ExternalData: true, ExternalName: "../x.data"}, "plain file name"},
	} {
		err := WriteOPTONNX(filepath.Join(t.TempDir(), "m.onnx"), c.cfg, c.ws, c.opts)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want %q", c.name, err, c.want)
		}
	}
	// A tied model ignores an lm_head.weight.
	tied := cfg
	tied.Tied = true
	names, _ := ONNXWeightShapes(tied)
	var keep []NamedTensor
	for _, w := range good {
		if slices.Contains(names, w.Name) || w.Name == "lm_head.weight" {
			keep = append(keep, w)
		}
	}
	if err := WriteOPTONNX(filepath.Join(t.TempDir(), "m.onnx"), tied, keep, ONNXOptions{}); err != nil {
		t.Errorf("tied with lm_head.weight: %v", err)
	}
}

// oxSqueeze is Squeeze or Unsqueeze (op) of x[0] at the axes x[1].
func oxSqueeze(op string, x []*oxTensor) *oxTensor {
	axes := x[1].ints()
	y := &oxTensor{isInt: x[0].isInt, i: x[0].i, f: x[0].f}
	if op == "Squeeze" {
		for k, d := range x[0].shape {
			if !slices.Contains(axes, int64(k)) {
				y.shape = append(y.shape, d)
			}
		}
		return y
	}
	r := len(x[0].shape) + len(axes)
	src := 0
	for k := 0; k < r; k++ {
		if slices.Contains(axes, int64(k)) {
			y.shape = append(y.shape, 1)
		} else {
			y.shape = append(y.shape, x[0].shape[src])
			src++
		}
	}
	return y
}

// oxLessOrEqual is x[0] <= x[1], broadcast, as 1 or 0.
func oxLessOrEqual(x []*oxTensor) *oxTensor {
	return oxBinary(x[0], x[1], func(a, b float64) float64 { return map[bool]float64{true: 1}[a <= b] })
}

// oxWhere picks the scalar x[1] where the condition x[0] is set, x[2]
// elsewhere.
func oxWhere(t *testing.T, node string, x []*oxTensor) *oxTensor {
	t.Helper()
	if x[1].size() != 1 || x[2].size() != 1 || !x[0].isInt {
		t.Fatalf("node %s: Where on %v %v %v", node, x[0].shape, x[1].shape, x[2].shape)
	}
	y := &oxTensor{shape: x[0].shape, f: make([]float64, len(x[0].i))}
	for k, c := range x[0].i {
		if c != 0 {
			y.f[k] = x[1].f[0]
		} else {
			y.f[k] = x[2].f[0]
		}
	}
	return y
}
