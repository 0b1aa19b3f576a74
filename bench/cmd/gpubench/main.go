// Command gpubench times SlopeLinear, OPT decoder layers and training
// steps on one NVIDIA GPU against cuBLASLt dense bf16, in the same
// process on the same card, and prints the ratios (bench/gpu.sh runs it).
//
//	gpubench [-tables linear,layer,tc,train] [-quick] [-adapters=false]
//
// linear: SlopeLinear against dense at M = 1, 16, 2048, 8192; layer: one
// decoder layer (prefill, decode at batch 1 and 16) per weight-form
// choice; tc: the tensor-core kernel at M = 1..16 over launch sizes;
// train: one training step of a layer's six linears, dense against
// SLoPe, with the time of each stage of one of them.
//
// Timings are device time between CUDA events, averaged over repeated
// runs after warm-up. Decode-sized products (M <= 16) rotate over weight
// copies of at least 200 MB so that the 50-60 MB L2 cache cannot serve
// the weights.
package main

import (
	"flag"
	"fmt"
	"math"
	"os"
	"strings"
	"time"

	"github.com/slopeml/slope/cuda"
	"github.com/slopeml/slope/cuda/blaslt"
	"github.com/slopeml/slope/cuda/sparselt"
	"github.com/slopeml/slope/ops"
)

// withAdapters includes the adapter variants in both tables.
var withAdapters = true

type shape struct {
	name            string
	in, out, hidden int
}

var shapes = []shape{
	{"6.7B attn", 4096, 4096, 4096},
	{"6.7B fc1", 4096, 16384, 4096},
	{"13B fc2", 20480, 5120, 5120},
	{"66B attn", 9216, 9216, 9216},
	{"66B fc1", 9216, 36864, 9216},
	{"66B fc2", 36864, 9216, 9216},
}

type layerShape struct {
	name          string
	d, ffn, heads int
}

var layers = []layerShape{
	{"OPT-6.7B", 4096, 16384, 32},
	{"OPT-13B", 5120, 20480, 40},
	{"OPT-66B", 9216, 36864, 72},
}

func main() {
	tables := flag.String("tables", "linear,layer,tc,train", "tables to run: linear, layer, tc, train")
	quick := flag.Bool("quick", false, "fewer shapes (a smoke run)")
	search := flag.Bool("search", true, "cuSPARSELt algorithm search once per shape")
	flag.BoolVar(&withAdapters, "adapters", true, "include the adapter variants (r = 1.56%, 6.25%)")
	flag.Parse()
	if err := run(*tables, *quick, *search); err != nil {
		fmt.Fprintln(os.Stderr, "gpubench:", err)
		os.Exit(1)
	}
}

func run(tables string, quick, search bool) error {
	be, err := cuda.New(cuda.Options{Activations: cuda.BF16, Search: search})
	if err != nil {
		return err
	}
	defer be.Close()
	dev := be.Device()
	fmt.Printf("# gpubench %s\n# device: %v\n", time.Now().UTC().Format(time.RFC3339), dev.Info)
	lv, lerr := blaslt.Version()
	sv, serr := sparselt.Version()
	fmt.Printf("# cuBLASLt %d (%v) %s, cuSPARSELt %d (%v) %s\n", lv, lerr, blaslt.Library(), sv, serr, sparselt.Library())
	fmt.Printf("# cuSPARSELt bias epilogue in use: %v\n", be.LtBiasFused())
	fmt.Printf("# cuSPARSELt compressed values written in place by 2:4 training (values layout check): %v\n", errText(be.CheckSparseValues()))
	if quick {
		shapes, layers = shapes[:1], layers[:1]
	}
	return be.Do(func() error {
		timer, err := be.NewTimer()
		if err != nil {
			return err
		}
		for _, tb := range []struct {
			name string
			run  func(*cuda.Backend, *cuda.Timer) error
		}{{"train", trainTable}, {"tc", tcTable}, {"linear", linearTable}, {"layer", layerTable}} {
			if strings.Contains(tables, tb.name) {
				if err := tb.run(be, timer); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

// copies of a layer so that their weights span at least 200 MB.
func copiesFor(bytes int64) int {
	return int(max(1, (200<<20+bytes-1)/bytes))
}

type variant struct {
	name string
	kind cuda.LinearKind
	frac float64 // adapter rank as a fraction of the hidden size
}

func linearTable(be *cuda.Backend, timer *cuda.Timer) error {
	ms := []int{1, 16, 2048, 8192}
	variants := []variant{
		{"2:4 r=0", cuda.Sparse24, 0},
		{"2:4 r=1.56%", cuda.Sparse24, 0.0156},
		{"2:4 r=6.25%", cuda.Sparse24, 0.0625},
		{"cuSPARSELt r=0", cuda.Sparse24Lt, 0},
		{"decode kernel r=0", cuda.Sparse24SpMV, 0},
		{"tensor-core kernel r=0", cuda.Sparse24TC, 0},
	}
	fmt.Printf("\n## SlopeLinear vs cuBLASLt dense bf16: y[M,out] = x[M,in]·Wᵀ + b (speedup = dense time / variant time)\n\n")
	fmt.Printf("| shape | in→out | variant | mem vs dense |")
	for _, m := range ms {
		fmt.Printf(" M=%d ms | M=%d speedup |", m, m)
	}
	fmt.Printf("\n|---|---|---|---|")
	for range ms {
		fmt.Printf("---|---|")
	}
	fmt.Println()
	for si, sh := range shapes {
		seed := uint64(1000 * (si + 1))
		dense, err := buildCopies(be, cuda.Dense, sh, 0, seed)
		if err != nil {
			return fmt.Errorf("%s dense: %w", sh.name, err)
		}
		denseMs := map[int]float64{}
		fmt.Printf("| %s | %d→%d | dense (cuBLASLt) | 1 |", sh.name, sh.in, sh.out)
		for _, m := range ms {
			t, err := timeLinear(be, timer, dense, m, "")
			if err != nil {
				return fmt.Errorf("%s dense M=%d: %w", sh.name, m, err)
			}
			denseMs[m] = t
			fmt.Printf(" %.4f | 1.00 |", t)
		}
		fmt.Println()
		for _, v := range variants {
			if v.frac > 0 && !withAdapters {
				continue
			}
			// cuSPARSELt needs the merged weight's rows (out + rank) to be
			// a multiple of 32.
			rank := int(math.Round(v.frac*float64(sh.hidden)/32)) * 32
			ls, err := buildCopies(be, v.kind, sh, rank, seed+1)
			if err != nil {
				fmt.Printf("| %s | %d→%d | %s | error: %v |\n", sh.name, sh.in, sh.out, v.name, err)
				continue
			}
			fmt.Printf("| %s | %d→%d | %s (rank %d) | %.3f |", sh.name, sh.in, sh.out, v.name, rank, float64(ls[0].Bytes)/float64(dense[0].Bytes))
			for _, m := range ms {
				if (v.kind == cuda.Sparse24SpMV || v.kind == cuda.Sparse24TC) && m > 16 {
					fmt.Printf(" - | - |")
					continue
				}
				t, err := timeLinear(be, timer, ls, m, "")
				if err != nil {
					fmt.Printf(" error: %v | |", err)
					continue
				}
				fmt.Printf(" %.4f | %.2f |", t, denseMs[m]/t)
			}
			fmt.Println()
			if v.kind == cuda.Sparse24 && rank == 0 {
				fmt.Printf("|  |  | (memory: portable 2:4 %.3f, cuSPARSELt %.3f of dense; both kept; values shared: %v) | | \n",
					float64(ls[0].PortableBytes)/float64(dense[0].Bytes), float64(ls[0].LtBytes)/float64(dense[0].Bytes), ls[0].ValuesShared())
				if err := crossCheck(be, ls[0], sh); err != nil {
					return err
				}
			}
			if err := freeLayers(be, ls); err != nil {
				return err
			}
		}
		if err := freeLayers(be, dense); err != nil {
			return err
		}
	}
	return nil
}

// tcTable: decode-sized 2:4 products (M = 1..16) on the decode kernel,
// cuSPARSELt and the tensor-core kernel at several launch sizes
// (Options.TCBlocks), against cuBLASLt dense, on one set of weights.
func tcTable(be *cuda.Backend, timer *cuda.Timer) error {
	ms := []int{1, 4, 8, 16}
	targets := []int{132, 264, 396, 528}
	fmt.Printf("\n## Decode-sized 2:4 products: speedup over cuBLASLt dense bf16 (weights rotated over >= 200 MB)\n\n")
	fmt.Printf("| shape | path |")
	for _, m := range ms {
		fmt.Printf(" M=%d |", m)
	}
	fmt.Printf("\n|---|---|")
	for range ms {
		fmt.Printf("---|")
	}
	fmt.Println()
	defer be.SetTCBlocks(0)
	for si, sh := range shapes {
		seed := uint64(1000 * (si + 1))
		dense, err := buildCopies(be, cuda.Dense, sh, 0, seed)
		if err != nil {
			return fmt.Errorf("%s dense: %w", sh.name, err)
		}
		base := map[int]float64{}
		fmt.Printf("| %s | dense ms |", sh.name)
		for _, m := range ms {
			if base[m], err = timeLinear(be, timer, dense, m, ""); err != nil {
				return err
			}
			fmt.Printf(" %.4f |", base[m])
		}
		fmt.Println()
		if err := freeLayers(be, dense); err != nil {
			return err
		}
		ls, err := buildCopies(be, cuda.Sparse24All, sh, 0, seed+1)
		if err != nil {
			return fmt.Errorf("%s 2:4: %w", sh.name, err)
		}
		row := func(name, path string) {
			fmt.Printf("| %s | %s |", sh.name, name)
			for _, m := range ms {
				t, err := timeLinear(be, timer, ls, m, path)
				if err != nil {
					fmt.Printf(" error: %v |", err)
					continue
				}
				fmt.Printf(" %.2f |", base[m]/t)
			}
			fmt.Println()
		}
		row("decode kernel", "spmv")
		row("cuSPARSELt", "cusparselt")
		for _, tb := range targets {
			be.SetTCBlocks(tb)
			row(fmt.Sprintf("tensor-core kernel, grid %d", tb), "tc")
		}
		if err := freeLayers(be, ls); err != nil {
			return err
		}
	}
	return nil
}

// trainTable times one training step of a decoder layer's six linears
// (q, k, v, out: d x d; fc1: ffn x d; fc2: d x ffn), dense against SLoPe
// 2:4, per linear shape, and sums them per layer; memory is what
// training keeps (weights in every form, fp32 master values, gradients,
// AdamW moments). Attention, LayerNorm and the rest of the layer are not
// in it (their GPU backward passes are not built yet).
func trainTable(be *cuda.Backend, timer *cuda.Timer) error {
	fmt.Printf("\n## Training step of a decoder layer's six linears (forward, input and weight gradients, AdamW, 2:4 refresh): SLoPe 2:4 vs dense bf16\n\n")
	fmt.Printf("| layer | tokens | dense ms | SLoPe ms | speedup | dense state MiB | SLoPe state MiB | memory ratio | SLoPe workspace MiB |\n|---|---|---|---|---|---|---|---|---|\n")
	for li, ls := range layers {
		type part struct {
			out, in, count int
		}
		parts := []part{{ls.d, ls.d, 4}, {ls.ffn, ls.d, 1}, {ls.d, ls.ffn, 1}}
		tokensList := []int{2048, 8192}
		ms := make([][2]float64, len(tokensList))
		var state [2]float64
		var work float64
		recompressing := false // a 2:4 layer fell back to recompressing every step
		for pi, p := range parts {
			for k, sparse := range []bool{false, true} {
				l, err := be.NewBenchTrain(sparse, p.out, p.in, uint64(100*li+pi))
				if err != nil {
					return fmt.Errorf("%s %dx%d: %w", ls.name, p.out, p.in, err)
				}
				for ti, tokens := range tokensList {
					t, err := timeTrain(be, timer, l, p.out, p.in, tokens)
					if err != nil {
						be.FreeBenchTrain(l)
						return fmt.Errorf("%s %dx%d tokens %d: %w", ls.name, p.out, p.in, tokens, err)
					}
					ms[ti][k] += float64(p.count) * t
				}
				state[k] += float64(p.count) * float64(l.StateBytes)
				if sparse {
					work = max(work, float64(l.TempBytes))
					recompressing = recompressing || !l.InPlace()
				}
				if err := be.FreeBenchTrain(l); err != nil {
					return err
				}
			}
		}
		name := ls.name
		if recompressing {
			name += " (2:4 recompressing every step: values layout check failed)"
		}
		for ti, tokens := range tokensList {
			fmt.Printf("| %s | %d | %.3f | %.3f | %.2f | %.0f | %.0f | %.3f | %.0f |\n", name, tokens, ms[ti][0], ms[ti][1], ms[ti][0]/ms[ti][1],
				state[0]/(1<<20), state[1]/(1<<20), state[1]/state[0], work/(1<<20))
		}
	}
	return trainStages(be, timer)
}

// trainStages times each stage of the training step of one linear (OPT-13B
// fc1, 20480 x 5120, 2048 tokens): dense, 2:4 writing its values into the
// compressed forms in place, and 2:4 recompressing every step. A stage
// that runs every K steps (the transpose mask's refresh) counts K-th of
// its time in the total.
func trainStages(be *cuda.Backend, timer *cuda.Timer) error {
	const out, in, tokens = 20480, 5120, 2048
	fmt.Printf("\n### Where a training step's time goes: OPT-13B fc1 (%d x %d), %d tokens\n\n| weights | stage | ms | ms per step |\n|---|---|---|---|\n", out, in, tokens)
	type variant struct {
		name string
		make func() (*cuda.BenchTrain, error)
	}
	variants := []variant{
		{"dense", func() (*cuda.BenchTrain, error) { return be.NewBenchTrain(false, out, in, 5) }},
		{"SLoPe 2:4", func() (*cuda.BenchTrain, error) { return be.NewBenchTrain(true, out, in, 5) }},
		{"SLoPe 2:4, recompressing every step", func() (*cuda.BenchTrain, error) { return be.NewBenchTrainRecompress(out, in, 5) }},
	}
	for vi, v := range variants {
		l, err := v.make()
		if err != nil {
			return err
		}
		if vi == 1 && !l.InPlace() {
			fmt.Printf("| %s | (values layout check failed: recompresses every step) | | |\n", v.name)
		}
		err = func() error {
			x, dy, y, dx, release, err := trainOperands(be, out, in, tokens)
			if err != nil {
				return err
			}
			defer release()
			step := 1
			var total float64
			for _, st := range l.Stages(cuda.DevicePtr(x), cuda.DevicePtr(dy), cuda.DevicePtr(y), cuda.DevicePtr(dx), tokens, &step) {
				t, err := timer.Time(2, 10, func() error { step++; return st.Run() })
				if err != nil {
					return fmt.Errorf("%s: %w", st.Name, err)
				}
				every := max(st.Every, 1)
				total += t / float64(every)
				name := st.Name
				if every > 1 {
					name += fmt.Sprintf(" (every %d steps)", every)
				}
				fmt.Printf("| %s | %s | %.3f | %.3f |\n", v.name, name, t, t/float64(every))
			}
			fmt.Printf("| %s | total | | %.3f |\n", v.name, total)
			return nil
		}()
		if ferr := be.FreeBenchTrain(l); err == nil {
			err = ferr
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// trainOperands acquires a training step's x and dy (random) and y, dx
// (tokens rows) and returns them with the function that releases them.
func trainOperands(be *cuda.Backend, out, in, tokens int) (x, dy, y, dx ops.Tensor, release func(), err error) {
	var held []ops.Tensor
	release = func() {
		for _, t := range held {
			be.Release(t)
		}
	}
	for _, mk := range []func() (ops.Tensor, error){
		func() (ops.Tensor, error) { return be.RandomTensor(tokens, in, 3) },
		func() (ops.Tensor, error) { return be.RandomTensor(tokens, out, 4) },
		func() (ops.Tensor, error) { return be.Acquire(tokens, out) },
		func() (ops.Tensor, error) { return be.Acquire(tokens, in) },
	} {
		t, err := mk()
		if err != nil {
			release()
			return nil, nil, nil, nil, nil, err
		}
		held = append(held, t)
	}
	return held[0], held[1], held[2], held[3], release, nil
}

// timeTrain is the ms of one training step of l (about 150 ms of work
// per measurement).
func timeTrain(be *cuda.Backend, timer *cuda.Timer, l *cuda.BenchTrain, out, in, tokens int) (float64, error) {
	x, dy, y, dx, release, err := trainOperands(be, out, in, tokens)
	if err != nil {
		return 0, err
	}
	defer release()
	step := 0
	fn := func() error {
		step++
		return l.Step(cuda.DevicePtr(x), cuda.DevicePtr(dy), cuda.DevicePtr(y), cuda.DevicePtr(dx), tokens, step)
	}
	t, err := calibrated(timer, 1, 2, 3, 50, 150, fn)
	if err != nil {
		return 0, err
	}
	// Stages that run every K steps (Step leaves them out) add K-th of
	// their time.
	for _, st := range l.Stages(cuda.DevicePtr(x), cuda.DevicePtr(dy), cuda.DevicePtr(y), cuda.DevicePtr(dx), tokens, &step) {
		if st.Every > 1 {
			p, err := timer.Time(1, 3, st.Run)
			if err != nil {
				return 0, fmt.Errorf("%s: %w", st.Name, err)
			}
			t += p / float64(st.Every)
		}
	}
	return t, nil
}

func buildCopies(be *cuda.Backend, kind cuda.LinearKind, sh shape, rank int, seed uint64) ([]*cuda.BenchLinear, error) {
	first, err := be.NewBenchLinear(kind, sh.out, sh.in, rank, true, seed)
	if err != nil {
		return nil, err
	}
	ls := []*cuda.BenchLinear{first}
	for i := 1; i < copiesFor(first.Bytes); i++ {
		l, err := be.NewBenchLinear(kind, sh.out, sh.in, rank, true, seed+uint64(i))
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
	}
	return ls, nil
}

func freeLayers(be *cuda.Backend, ls []*cuda.BenchLinear) error {
	for _, l := range ls {
		if err := be.FreeBenchLinear(l); err != nil {
			return err
		}
	}
	return nil
}

// timeLinear returns the mean ms of one product of m rows, rotating over
// the copies (only decode sizes need the rotation; larger M use copy 0).
// path forces a kernel ("" for the layer's own choice).
func timeLinear(be *cuda.Backend, timer *cuda.Timer, ls []*cuda.BenchLinear, m int, path string) (float64, error) {
	x, err := be.RandomTensor(m, ls[0].In(), 7)
	if err != nil {
		return 0, err
	}
	defer be.Release(x)
	y, err := be.Acquire(m, ls[0].Out())
	if err != nil {
		return 0, err
	}
	defer be.Release(y)
	n := len(ls)
	if m > 16 {
		n = 1
	}
	i := 0
	fn := func() error {
		i++
		if path != "" {
			return ls[i%n].ForwardPath(path, x, y, m)
		}
		return ls[i%n].Forward(x, y, m)
	}
	return calibrated(timer, 2, 3, 5, 2000, 100, fn)
}

// crossCheck compares the decode kernel, cuSPARSELt and the generic
// kernel on the same weight (M = 16): they must agree within bf16.
func crossCheck(be *cuda.Backend, l *cuda.BenchLinear, sh shape) error {
	const m = 16
	x, err := be.RandomTensor(m, l.In(), 11)
	if err != nil {
		return err
	}
	defer be.Release(x)
	outs := map[string][]float32{}
	for _, path := range []string{"spmv", "tc", "cusparselt", "generic"} {
		y, err := be.Acquire(m, l.Out())
		if err != nil {
			return err
		}
		if err := l.ForwardPath(path, x, y, m); err != nil {
			be.Release(y)
			fmt.Printf("|  |  | check M=16: %s: not run (%v) | |\n", path, err)
			continue
		}
		v, err := be.Fetch(y)
		be.Release(y)
		if err != nil {
			return err
		}
		outs[path] = v
	}
	ref, refName := outs["generic"], "generic kernel"
	if ref == nil {
		ref, refName = outs["cusparselt"], "cuSPARSELt"
	}
	if ref == nil {
		return fmt.Errorf("check M=16 on %s: neither the generic kernel nor cuSPARSELt ran: nothing to compare with", sh.name)
	}
	failed := 0
	for _, path := range []string{"spmv", "tc", "cusparselt"} {
		if outs[path] == nil || refName == "cuSPARSELt" && path == "cusparselt" {
			continue
		}
		var num, den float64
		for i, w := range ref {
			d := float64(outs[path][i] - w)
			num += d * d
			den += float64(w) * float64(w)
		}
		rel := math.Sqrt(num / den)
		status := "ok"
		if !(rel <= 1e-2) {
			status = "FAIL"
			failed++
		}
		fmt.Printf("|  |  | check M=16: %s vs %s relative L2 %.2e %s | |\n", path, refName, rel, status)
	}
	if failed > 0 {
		return fmt.Errorf("check M=16 on %s: %d paths disagree with the %s", sh.name, failed, refName)
	}
	return nil
}

func layerTable(be *cuda.Backend, timer *cuda.Timer) error {
	fmt.Printf("\n## OPT decoder layer (LayerNorm, q/k/v/out, attention, MLP; bf16): SLoPe 2:4 vs dense\n\n")
	fmt.Printf("| layer | linears | weight MiB | mem vs dense | prefill 1x2048 ms | speedup | decode b=1 (past 512) ms | speedup | decode b=16 (past 512) ms | speedup |\n")
	fmt.Printf("|---|---|---|---|---|---|---|---|---|---|\n")
	for li, ls := range layers {
		var base [3]float64
		var baseBytes int64
		rank := int(math.Round(0.0156*float64(ls.d)/32)) * 32
		for _, v := range []struct {
			name           string
			kind           cuda.LinearKind
			rank           int
			spmvMax, tcMax int // Options.SpMVMaxRows, TCMaxRows (0, 0: the defaults)
		}{
			{"dense (cuBLASLt)", cuda.Dense, 0, 0, 0},
			{"SLoPe 2:4 (backend defaults)", cuda.Sparse24, 0, 0, 0},
			{"SLoPe 2:4, decode kernel 1-4 rows, cuSPARSELt above", cuda.Sparse24, 0, 4, -1},
			{"SLoPe 2:4, tensor-core kernel 1-16 rows, cuSPARSELt above", cuda.Sparse24, 0, -1, 16},
			{"SLoPe 2:4, decode kernel 1-4, tensor-core kernel 5-16 rows", cuda.Sparse24, 0, 4, 16},
			{"SLoPe 2:4, cuSPARSELt form only", cuda.Sparse24Lt, 0, 0, 0},
			{fmt.Sprintf("SLoPe 2:4 + adapters r=%d (1.56%%)", rank), cuda.Sparse24, rank, 0, 0},
		} {
			if v.rank > 0 && !withAdapters {
				continue
			}
			be.SetDecodeRows(v.spmvMax, v.tcMax)
			l, err := be.NewBenchLayer(v.kind, ls.d, ls.ffn, ls.heads, v.rank, uint64(77+li))
			if err != nil {
				fmt.Printf("| %s | %s | error: %v |\n", ls.name, v.name, err)
				continue
			}
			if v.kind == cuda.Dense {
				baseBytes = l.WeightBytes
			}
			var t [3]float64
			for i, c := range []struct{ batch, seq, past int }{{1, 2048, 0}, {1, 1, 512}, {16, 1, 512}} {
				if t[i], err = timeLayer(be, timer, l, ls.d, c.batch, c.seq, c.past); err != nil {
					return fmt.Errorf("%s %s: %w", ls.name, v.name, err)
				}
			}
			if v.kind == cuda.Dense {
				base = t
			}
			fmt.Printf("| %s | %s | %.0f | %.3f | %.3f | %.2f | %.4f | %.2f | %.4f | %.2f |\n", ls.name, v.name,
				float64(l.WeightBytes)/(1<<20), float64(l.WeightBytes)/float64(baseBytes),
				t[0], base[0]/t[0], t[1], base[1]/t[1], t[2], base[2]/t[2])
			if err := be.FreeBenchLayer(l); err != nil {
				return err
			}
		}
		be.SetDecodeRows(0, 0)
	}
	return nil
}

func timeLayer(be *cuda.Backend, timer *cuda.Timer, l *cuda.BenchLayer, d, batch, seq, past int) (float64, error) {
	cache, err := be.NewCache(batch, past+seq)
	if err != nil {
		return 0, err
	}
	defer cache.(interface{ ReleaseInside() error }).ReleaseInside()
	if err := be.ZeroCache(cache, d); err != nil {
		return 0, err
	}
	x, err := be.RandomTensor(batch*seq, d, 5)
	if err != nil {
		return 0, err
	}
	defer be.Release(x)
	y, err := be.Acquire(batch*seq, d)
	if err != nil {
		return 0, err
	}
	defer be.Release(y)
	if err := l.Prepare(batch, seq, past, cache); err != nil {
		return 0, err
	}
	return calibrated(timer, 1, 2, 3, 500, 150, func() error { return l.Forward(x, y) })
}

// calibrated times fn (ms per call, after warm calls): a first measure
// of probe calls sets the repetitions to about budgetMs of work, between
// lo and hi.
func calibrated(timer *cuda.Timer, warm, probe, lo, hi int, budgetMs float64, fn func() error) (float64, error) {
	t, err := timer.Time(warm, probe, fn)
	if err != nil {
		return 0, err
	}
	reps := int(math.Max(float64(lo), math.Min(float64(hi), budgetMs/math.Max(t, 1e-3))))
	return timer.Time(warm, reps, fn)
}

var _ ops.Tensor

// errText is "ok" for nil, else the error's text.
func errText(err error) string {
	if err == nil {
		return "ok"
	}
	return err.Error()
}
