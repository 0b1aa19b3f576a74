package runtime

import (
	"errors"
	"fmt"

	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/format/slopepb"
	"github.com/slopeml/slope/ops"
	"github.com/slopeml/slope/tokenizer"
)

// Graph inputs and output every runnable container has.
const (
	InputIDs      = "input_ids"
	AttentionMask = "attention_mask"
	OutputLogits  = "logits"
)

// ErrModel is wrapped when a container cannot be run: no graph, missing
// inputs or outputs, a value used before it is computed.
var ErrModel = errors.New("container cannot be run")

// Options tune Open.
type Options struct {
	// Backend runs the ops; nil means ops.NewCPU().
	Backend ops.Backend
	// Reader options for the container.
	Reader *format.ReaderOptions
}

// Model is an opened container with its plan compiled.
type Model struct {
	file   *format.File
	config *slopepb.OPTConfig
	steps  []planStep
	values int // number of value slots
	out    int // slot of the logits
	vocab  int
	maxPos int // learned positions (tokens per sequence)
	// dev is set when the backend keeps activations in its own memory
	// and every step computes there (see ops.DeviceBackend).
	dev ops.DeviceBackend
}

// planStep is one bound node: which slots it reads and writes.
type planStep struct {
	node *ops.Node
	step ops.Step
	in   []int // value slots of its activation inputs
	out  int
	// free lists the slots whose last reader is this step.
	free []int
	dim  int
}

// Open maps a container and compiles its graph.
func Open(path string, opts *Options) (*Model, error) {
	var o Options
	if opts != nil {
		o = *opts
	}
	f, err := format.Open(path, o.Reader)
	if err != nil {
		return nil, err
	}
	m, err := compile(f, o.Backend)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return m, nil
}

// Close releases the container. Sessions must not be used afterwards.
func (m *Model) Close() error { return m.file.Close() }

// File is the opened container.
func (m *Model) File() *format.File { return m.file }

// Config is the model's OPT config (nil for other architectures).
func (m *Model) Config() *slopepb.OPTConfig { return m.config }

// Vocab is the number of logits per token.
func (m *Model) Vocab() int { return m.vocab }

// MaxPositions is the longest sequence the model's learned positions cover.
func (m *Model) MaxPositions() int { return m.maxPos }

func compile(f *format.File, backend ops.Backend) (*Model, error) {
	if backend == nil {
		backend = ops.NewCPU()
	}
	man := f.Manifest()
	g := man.GetGraph()
	if g == nil || len(g.Node) == 0 {
		return nil, fmt.Errorf("no graph: %w", ErrModel)
	}
	m := &Model{file: f, config: man.GetArchitecture().GetOpt()}
	if m.config != nil {
		m.maxPos = int(m.config.MaxPositionEmbeddings)
	}
	inputs := map[string]bool{}
	for _, in := range g.Input {
		inputs[in.GetName()] = true
	}
	if !inputs[InputIDs] || !inputs[AttentionMask] {
		return nil, fmt.Errorf("graph inputs must include %s and %s: %w", InputIDs, AttentionMask, ErrModel)
	}
	if len(g.Output) != 1 || g.Output[0].GetName() != OutputLogits {
		return nil, fmt.Errorf("graph must have the single output %s: %w", OutputLogits, ErrModel)
	}
	slot := map[string]int{}
	dims := []int{}
	lastUse := map[int]int{}
	for i, n := range g.Node {
		node := ops.NewNode(i, n)
		acts, err := ops.ActivationInputs(n.OpType)
		if err != nil {
			return nil, fmt.Errorf("node %q: %w", n.Name, err)
		}
		ps := planStep{node: node}
		var inDims []int
		for _, a := range acts {
			name := node.Input(a)
			s, ok := slot[name]
			if !ok {
				return nil, fmt.Errorf("node %q: input %d %q is not a computed value: %w", n.Name, a, name, ErrModel)
			}
			ps.in = append(ps.in, s)
			inDims = append(inDims, dims[s])
			lastUse[s] = i
		}
		if len(n.Output) != 1 {
			return nil, fmt.Errorf("node %q: %d outputs, want 1: %w", n.Name, len(n.Output), ErrModel)
		}
		ps.step, err = backend.Bind(ops.Binding{Node: node, InDims: inDims, W: f})
		if err != nil {
			return nil, err
		}
		ps.out, ps.dim = len(dims), ps.step.OutDim()
		slot[n.Output[0]] = ps.out
		dims = append(dims, ps.dim)
		m.steps = append(m.steps, ps)
	}
	out, ok := slot[OutputLogits]
	if !ok {
		return nil, fmt.Errorf("no node computes %s: %w", OutputLogits, ErrModel)
	}
	m.out, m.vocab, m.values = out, dims[out], len(dims)
	lastUse[out] = len(m.steps) // the output outlives the plan
	for s, i := range lastUse {
		if i < len(m.steps) {
			m.steps[i].free = append(m.steps[i].free, s)
		}
	}
	if m.maxPos == 0 {
		m.maxPos = 1 << 30
	}
	if db, ok := backend.(ops.DeviceBackend); ok {
		for _, ps := range m.steps {
			if _, ok := ps.step.(ops.DeviceStep); !ok {
				return nil, fmt.Errorf("node %q (%s): backend %s bound a step that cannot run in device memory: %w", ps.node.Name, ps.node.OpType, backend.Name(), ops.ErrUnsupported)
			}
		}
		m.dev = db
	}
	return m, nil
}

// ErrNoTokenizer is returned by Tokenizer for a container without one.
var ErrNoTokenizer = errors.New("container has no tokenizer (use token ids)")

// Tokenizer loads the tokenizer the container carries.
func (m *Model) Tokenizer() (*tokenizer.BPE, error) {
	files, err := m.file.TokenizerFiles()
	if err != nil {
		return nil, err
	}
	if files == nil {
		return nil, fmt.Errorf("%s: %w", m.file.Path(), ErrNoTokenizer)
	}
	if tj, ok := files["tokenizer.json"]; ok {
		return tokenizer.LoadTokenizerJSON(tj)
	}
	vocab, merges := files["vocab.json"], files["merges.txt"]
	if vocab == nil || merges == nil {
		return nil, fmt.Errorf("%s: tokenizer needs tokenizer.json, or vocab.json and merges.txt: %w", m.file.Path(), ErrModel)
	}
	return tokenizer.LoadGPT2(vocab, merges)
}
