package runtime

import (
	"errors"
	"fmt"

	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/format/onnxpb"
	"github.com/slopeml/slope/format/slopepb"
	"github.com/slopeml/slope/ops"
	"github.com/slopeml/slope/tokenizer"
)

// Graph inputs and output every runnable container has.
const (
	InputIDs      = ops.InputIDs
	AttentionMask = ops.AttentionMask
	OutputLogits  = ops.OutputLogits
)

// ErrModel is wrapped when a container cannot be run: no graph, missing
// inputs or outputs, a value used before it is computed (ops.ErrGraph),
// or no tokenizer when text is asked for.
var ErrModel = ops.ErrGraph

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
	steps  []ops.Planned[ops.Step]
	values int // number of value slots
	out    int // slot of the logits
	// headLast: the last step is an LMHead writing the logits, so a run
	// for the last positions only can give it just those rows.
	headLast bool
	vocab    int
	maxPos   int // learned positions (tokens per sequence)
	// dev is set when the backend keeps activations in its own memory
	// and every step computes there (see ops.DeviceBackend).
	dev ops.DeviceBackend
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
	m := &Model{file: f, config: man.GetArchitecture().GetOpt()}
	if m.config != nil {
		m.maxPos = int(m.config.MaxPositionEmbeddings)
	}
	plan, err := ops.Compile(man.GetGraph(), f, backend.Bind)
	if err != nil {
		return nil, err
	}
	m.steps, m.out, m.values = plan.Steps, plan.Logits, len(plan.Dims)
	if n := len(m.steps); n > 0 {
		last := m.steps[n-1]
		m.headLast = last.Node.OpType == ops.OpLMHead && last.Out == m.out
	}
	m.vocab = plan.Dims[plan.Logits]
	if err := m.checkEmbedding(man.GetGraph(), f); err != nil {
		return nil, err
	}
	if m.maxPos == 0 {
		m.maxPos = noPositionLimit
	}
	if db, ok := backend.(ops.DeviceBackend); ok {
		for _, ps := range m.steps {
			if _, ok := ps.Step.(ops.DeviceStep); !ok {
				return nil, fmt.Errorf("node %q (%s): backend %s bound a step that cannot run in device memory: %w", ps.Node.Name, ps.Node.OpType, backend.Name(), ops.ErrUnsupported)
			}
		}
		m.dev = db
	}
	return m, nil
}

// checkEmbedding holds the config and the LM head to the Embedding
// node's tables, which bound what a session can read: the logits must
// cover exactly the token embedding's rows (generation and scoring index
// them by token id), and the config's max_position_embeddings must not
// exceed the learned positions (the position table's rows less
// position_offset); without a config, those positions are the limit.
func (m *Model) checkEmbedding(g *onnxpb.GraphProto, f *format.File) error {
	for _, n := range g.GetNode() {
		if n.GetOpType() != ops.OpEmbedding || n.GetDomain() != format.GraphDomain {
			continue
		}
		node := ops.NewNode(0, n)
		tok, err := f.Lookup(node.Input(2))
		if err != nil {
			return err
		}
		pos, err := f.Lookup(node.Input(3))
		if err != nil {
			return err
		}
		off, err := node.Int("position_offset", 2)
		if err != nil {
			return err
		}
		// (The binding checked both tables are 2-D and the offset in range.)
		vocab, learned := int(tok.GetShape()[0]), int(pos.GetShape()[0])-int(off)
		if m.vocab != vocab {
			return fmt.Errorf("the graph's logits have %d entries per token, the token embedding %s has %d rows: %w", m.vocab, tok.GetName(), vocab, ErrModel)
		}
		if m.config != nil && int(m.config.GetVocabSize()) != vocab {
			return fmt.Errorf("config vocab_size %d, the token embedding %s has %d rows: %w", m.config.GetVocabSize(), tok.GetName(), vocab, ErrModel)
		}
		switch {
		case m.maxPos == 0:
			m.maxPos = learned
		case m.maxPos > learned:
			return fmt.Errorf("config max_position_embeddings %d, the position embedding %s has %d learned positions (%d rows, position_offset %d): %w",
				m.maxPos, pos.GetName(), learned, learned+int(off), off, ErrModel)
		}
	}
	return nil
}

// noPositionLimit is MaxPositions of a model whose graph has no position
// table and whose container has no config.
const noPositionLimit = 1 << 30

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
	t, err := tokenizer.LoadFiles(files, "")
	if errors.Is(err, tokenizer.ErrFiles) {
		return nil, fmt.Errorf("%s: %w: %w", m.file.Path(), err, ErrModel)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", m.file.Path(), err)
	}
	return t, nil
}
