package convert

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"slices"
	"strings"

	"github.com/slopeml/slope/format/slopepb"
)

// Files of a Hugging Face model directory.
const (
	hfConfig           = "config.json"
	hfSafetensors      = "model.safetensors"
	hfSafetensorsIndex = "model.safetensors.index.json"
	hfPytorchBin       = "pytorch_model.bin"
	hfPytorchBinIndex  = "pytorch_model.bin.index.json"
)

// SourceFile formats recorded in provenance.
const (
	sourceFormatST   = "safetensors"
	sourceFormatJSON = "json"
)

// ErrNotSupported is wrapped when an input is recognised but its format
// is not supported (yet).
var ErrNotSupported = errors.New("not supported yet")

// hfSource reads a Hugging Face OPT directory: config.json and a single
// model.safetensors.
type hfSource struct {
	label    string
	cfg      *slopepb.OPTConfig
	st       *Safetensors
	specs    map[string]WeightSpec
	names    []string
	srcName  map[string]string // canonical -> key in the file
	files    []*slopepb.SourceFile
	warnings []string
}

// OpenHF opens a Hugging Face OPT model directory held in fsys: it needs
// config.json and model.safetensors. label names the directory in errors
// and provenance. Every expected weight (from the config) must be present
// with its expected shape; a missing weight is an error listing every
// missing name, unexpected tensors become Warnings. Sharded safetensors
// and PyTorch .bin checkpoints are reported as not supported yet.
func OpenHF(fsys fs.FS, label string) (Source, error) {
	at := func(name string) string { return path.Join(label, name) }
	cfgBytes, err := fs.ReadFile(fsys, hfConfig)
	if err != nil {
		return nil, fmt.Errorf("%s: a Hugging Face model directory needs %s: %w", label, hfConfig, err)
	}
	cfg, err := ParseOPTConfig(at(hfConfig), cfgBytes)
	if err != nil {
		return nil, err
	}
	if _, err := fs.Stat(fsys, hfSafetensors); err != nil {
		for _, other := range []string{hfSafetensorsIndex, hfPytorchBinIndex, hfPytorchBin} {
			if _, e := fs.Stat(fsys, other); e == nil {
				return nil, fmt.Errorf("%s: %s has no %s; reading %s is %w", label, label, hfSafetensors, at(other), ErrNotSupported)
			}
		}
		return nil, fmt.Errorf("%s: no %s: %w", label, hfSafetensors, err)
	}
	st, err := OpenSafetensors(fsys, hfSafetensors)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", label, err)
	}
	st.name = at(hfSafetensors)
	s := &hfSource{label: label, cfg: cfg, st: st, specs: map[string]WeightSpec{}, srcName: map[string]string{}}
	if err := s.mapNames(); err != nil {
		st.Close()
		return nil, err
	}
	for _, f := range []struct{ name, format string }{{hfConfig, sourceFormatJSON}, {hfSafetensors, sourceFormatST}} {
		sf, err := describeFile(fsys, f.name, at(f.name), f.format)
		if err != nil {
			st.Close()
			return nil, err
		}
		s.files = append(s.files, sf)
	}
	return s, nil
}

// CanonicalOPTName maps a checkpoint key to its canonical name: the
// "model.decoder." prefix of transformers' OPTForCausalLM becomes
// "decoder.", as in the facebook/opt-* checkpoints; "decoder.*" and
// "lm_head.*" are kept. ok is false for keys of no known form.
func CanonicalOPTName(key string) (string, bool) {
	switch {
	case strings.HasPrefix(key, "model.decoder."):
		return strings.TrimPrefix(key, "model."), true
	case strings.HasPrefix(key, "decoder."), strings.HasPrefix(key, "lm_head."):
		return key, true
	}
	return key, false
}

// mapNames matches the file's keys to the expected canonical weights.
func (s *hfSource) mapNames() error {
	ws := OPTWeights(s.cfg)
	for _, w := range ws {
		s.specs[w.Name] = w
		s.names = append(s.names, w.Name)
	}
	var shapeErrs []string
	for _, key := range s.st.Names() {
		canon, ok := CanonicalOPTName(key)
		spec, expected := s.specs[canon]
		switch {
		case !ok || !expected:
			if canon == "lm_head.weight" && s.cfg.TieWordEmbeddings {
				s.warnings = append(s.warnings, fmt.Sprintf("%s: tensor %q ignored: lm_head is tied to decoder.embed_tokens.weight", s.st.name, key))
			} else {
				s.warnings = append(s.warnings, fmt.Sprintf("%s: unexpected tensor %q ignored", s.st.name, key))
			}
			continue
		}
		if prev, dup := s.srcName[canon]; dup {
			return fmt.Errorf("%s: tensors %q and %q both map to %q", s.st.name, prev, key, canon)
		}
		s.srcName[canon] = key
		e, _ := s.st.Entry(key)
		if !slices.Equal(e.Shape, spec.Shape) {
			shapeErrs = append(shapeErrs, fmt.Sprintf("%q has shape %v, want %v", key, e.Shape, spec.Shape))
		}
		if _, ok := SafetensorsDType(e.DType); !ok {
			shapeErrs = append(shapeErrs, fmt.Sprintf("%q has dtype %s, want F32, F16 or BF16", key, e.DType))
		}
	}
	var missing []string
	for _, n := range s.names {
		if _, ok := s.srcName[n]; !ok {
			missing = append(missing, n)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%s: %d weights missing (for the config in %s): %s", s.st.name, len(missing),
			path.Join(s.label, hfConfig), strings.Join(missing, ", "))
	}
	if len(shapeErrs) > 0 {
		return fmt.Errorf("%s: %s", s.st.name, strings.Join(shapeErrs, "; "))
	}
	return nil
}

// describeFile hashes one source file (streaming).
func describeFile(fsys fs.FS, name, label, format string) (*slopepb.SourceFile, error) {
	f, err := fsys.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return nil, fmt.Errorf("hash %s: %w", label, err)
	}
	return &slopepb.SourceFile{Path: label, Size: uint64(n), Sha256: hex.EncodeToString(h.Sum(nil)), Format: format}, nil
}

func (s *hfSource) Config() *slopepb.OPTConfig   { return s.cfg }
func (s *hfSource) Names() []string              { return slices.Clone(s.names) }
func (s *hfSource) Files() []*slopepb.SourceFile { return s.files }
func (s *hfSource) Warnings() []string           { return slices.Clone(s.warnings) }
func (s *hfSource) Close() error                 { return s.st.Close() }

func (s *hfSource) Tensor(name string) (*Tensor, error) {
	key, ok := s.srcName[name]
	if !ok {
		return nil, fmt.Errorf("%s: no weight %q", s.label, name)
	}
	e, _ := s.st.Entry(key)
	dt, _ := SafetensorsDType(e.DType)
	data, err := s.st.ReadFloat32(key)
	if err != nil {
		return nil, err
	}
	return &Tensor{Name: name, SourceName: key, DType: dt, Shape: e.Shape, Data: data}, nil
}
