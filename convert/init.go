package convert

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strings"

	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/format/slopepb"
)

// MethodRandom prunes each weight with a random N:M mask (seeded per
// tensor): SLoPe's initialisation for pretraining from scratch ("masks are
// random at initialisation"), also usable when converting.
const MethodRandom = "random"

// InitStd is the standard deviation of the normal initialisation of
// RandomSource's matrices (OPT's init_std).
const InitStd = 0.02

// RandomSource is a Source of an OPT model with config cfg initialised as
// transformers initialises OPT for training: linear and embedding
// matrices N(0, InitStd²), biases zero, LayerNorm weights one and biases
// zero. Tensors are generated on demand, each from its own seeded stream,
// so the model depends only on cfg and seed.
func RandomSource(cfg *slopepb.OPTConfig, seed uint64) Source {
	s := &randomSource{cfg: cfg, seed: seed, specs: map[string]WeightSpec{}}
	for _, sp := range OPTWeights(cfg) {
		s.specs[sp.Name] = sp
		s.names = append(s.names, sp.Name)
	}
	return s
}

type randomSource struct {
	cfg   *slopepb.OPTConfig
	seed  uint64
	specs map[string]WeightSpec
	names []string
}

func (s *randomSource) Config() *slopepb.OPTConfig { return s.cfg }
func (s *randomSource) Names() []string            { return slices.Clone(s.names) }
func (s *randomSource) Warnings() []string         { return nil }
func (s *randomSource) Close() error               { return nil }

func (s *randomSource) Files() []*slopepb.SourceFile {
	return []*slopepb.SourceFile{{Path: fmt.Sprintf("random initialisation (seed %d, std %g)", s.seed, InitStd), Format: "init"}}
}

func (s *randomSource) Tensor(name string) (*Tensor, error) {
	sp, ok := s.specs[name]
	if !ok {
		return nil, fmt.Errorf("random init: no weight %q", name)
	}
	n := 1
	for _, d := range sp.Shape {
		if d < 0 || d > 0 && int64(n) > maxInitElements/int64(d) {
			return nil, fmt.Errorf("random init: weight %q of shape %v: more than %d elements (check the config's sizes)", name, sp.Shape, maxInitElements)
		}
		n *= d
	}
	data := make([]float32, n)
	switch {
	case strings.HasSuffix(name, ".bias"):
	case strings.Contains(name, "layer_norm"):
		for i := range data {
			data[i] = 1
		}
	default:
		rng := weightRNG(s.seed, "init:"+name)
		for i := range data {
			data[i] = float32(rng.NormFloat64() * InitStd)
		}
	}
	return &Tensor{Name: name, SourceName: name, DType: slopepb.DType_FLOAT32, Shape: slices.Clone(sp.Shape), Data: data}, nil
}

// RandomMask keeps N of every M consecutive entries of each row of a
// [rows, cols] weight, chosen uniformly at random by rng.
func RandomMask(p format.NM, rows, cols int, rng *rand.Rand) ([]bool, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if rows < 0 || cols < 0 || cols%p.M != 0 {
		return nil, fmt.Errorf("random mask %s: shape [%d %d]: cols must be a multiple of %d: %w", p, rows, cols, p.M, format.ErrShape)
	}
	keep := make([]bool, rows*cols)
	perm := make([]int, p.M)
	for base := 0; base < len(keep); base += p.M {
		for i := range perm {
			perm[i] = i
		}
		// The first N of a partial Fisher-Yates shuffle.
		for i := 0; i < p.N; i++ {
			j := i + rng.IntN(p.M-i)
			perm[i], perm[j] = perm[j], perm[i]
			keep[base+perm[i]] = true
		}
	}
	return keep, nil
}

// maxInitElements bounds one tensor of a random initialisation (the
// format's cap on elements per tensor would not fit in memory anyway).
const maxInitElements int64 = 1 << 34

// InitOptions configure Init.
type InitOptions struct {
	// Config is an OPT config.json (transformers' format).
	Config string
	// Out, NM, NMLayers, DType, Seed, Created, Progress and Command are
	// as in Options; DType "" is fp32.
	Out, NM, NMLayers, DType, Created, Command string
	Seed                                       uint64
	Progress                                   func(done, total int, name string)
	// PruneWide is Options.PruneWide: also prune the linear weights whose
	// aspect ratio exceeds MaxAspectRatio.
	PruneWide bool
	// Context stops the writing (nil: never); nothing is left at Out then.
	Context context.Context
}

// Init writes a SLoPe model for pretraining from scratch: the config's
// architecture with RandomSource's weights, its decoder-layer linears
// pruned N:M by random masks (seeded), transposes double-pruned by
// magnitude. No adapters: SLoPe adds them late in training.
func Init(o InitOptions) (*Result, error) {
	if o.Config == "" {
		return nil, fmt.Errorf("--config: an OPT config.json is required")
	}
	if ci, err := os.Stat(o.Config); err == nil {
		if oi, err := os.Stat(o.Out); err == nil && os.SameFile(ci, oi) {
			return nil, fmt.Errorf("--out %s is the --config file", o.Out)
		}
	}
	b, err := os.ReadFile(o.Config)
	if err != nil {
		return nil, fmt.Errorf("--config: %w", err)
	}
	cfg, err := ParseOPTConfig(o.Config, b)
	if err != nil {
		return nil, err
	}
	// The random weights are float32: "keep" (or nothing) stores them so.
	dt := o.DType
	if _, keep, err := ParseDTypeOption(dt); err != nil {
		return nil, fmt.Errorf("--%w", err)
	} else if keep {
		dt = "fp32"
	}
	ctx := o.Context
	if ctx == nil {
		ctx = context.Background()
	}
	return DenseToSlope(ctx, Options{In: "init:" + o.Config, Source: RandomSource(cfg, o.Seed),
		Out: o.Out, NM: o.NM, NMLayers: o.NMLayers, PruneWide: o.PruneWide, DType: dt, Seed: o.Seed, Method: MethodRandom,
		Created: o.Created, Progress: o.Progress, Command: o.Command})
}
