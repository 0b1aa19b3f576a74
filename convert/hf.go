package convert

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"

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
	sourceFormatST      = "safetensors"
	sourceFormatJSON    = "json"
	sourceFormatPyTorch = "pytorch"
)

// Caps on the JSON files of a model directory (real ones are kilobytes:
// an index of a 175B model is well under 1 MiB).
const (
	maxConfigJSON = 16 << 20
	maxIndexJSON  = 64 << 20
)

// ErrNotSupported is wrapped when an input is recognised but its format
// is not supported (yet).
var ErrNotSupported = errors.New("not supported yet")

// hfLayout is one way a Hugging Face directory stores its weights.
type hfLayout struct {
	format string // sourceFormatST or sourceFormatPyTorch
	single string // the weights file, when not sharded
	index  string // the index file, when sharded
	suffix string // what shard names must end with
}

// hfLayouts in order of preference: safetensors before PyTorch pickles
// (as transformers' from_pretrained), a single file before an index.
var hfLayouts = []hfLayout{
	{format: sourceFormatST, single: hfSafetensors},
	{format: sourceFormatST, index: hfSafetensorsIndex, suffix: ".safetensors"},
	{format: sourceFormatPyTorch, single: hfPytorchBin},
	{format: sourceFormatPyTorch, index: hfPytorchBinIndex, suffix: ".bin"},
}

func (l hfLayout) file() string {
	if l.index != "" {
		return l.index
	}
	return l.single
}

// hfShard is one open weights file of a directory.
type hfShard struct {
	file string // base name in the directory
	st   TensorStore
	// prefix is prepended to the store's errors that do not already name
	// the directory.
	prefix string
}

// hfRef locates a canonical weight: a key of a shard.
type hfRef struct {
	shard int
	key   string
}

// hfSource reads a Hugging Face OPT directory: config.json and the
// weights in one of the layouts of hfLayouts, each weights file open as a
// TensorStore (headers only; tensors are read on demand).
type hfSource struct {
	label    string
	cfg      *slopepb.OPTConfig
	shards   []hfShard
	specs    map[string]WeightSpec
	names    []string
	route    map[string]hfRef // canonical name -> where it is stored
	files    []*slopepb.SourceFile
	warnings []string
	// hashed is closed when the background hashing of the weight files
	// (appended to files) is done; Files and Close wait for it.
	hashed chan struct{}
	// prevLarge: the last tensor returned was large (see Tensor).
	prevLarge atomic.Bool
}

// largeTensorBytes: after returning a decoded tensor at least this large,
// Tensor runs a garbage collection before decoding the next one.
const largeTensorBytes = 64 << 20

// OpenHF opens a Hugging Face OPT model directory held in fsys. label
// names the directory in errors and provenance. It needs config.json and
// the weights as model.safetensors, sharded safetensors
// (model.safetensors.index.json), pytorch_model.bin or sharded .bin
// (pytorch_model.bin.index.json), preferred in that order; keys may be
// "model.decoder.*" (transformers) or "decoder.*" (the original
// facebook/opt-* files).
//
// An index must name shards by plain file names inside the directory,
// every one present, and every key it maps must be in its shard; keys a
// shard holds that the index does not map to it are ignored with a
// warning. Every weight the config implies (OPTWeights) must be present
// with its shape and a float dtype: all missing weights are reported in
// one error; tensors that are not expected become Warnings (so does
// lm_head.weight when the embeddings are tied). Files records config.json,
// the index and every shard with their SHA-256.
func OpenHF(fsys fs.FS, label string) (Source, error) {
	return openHF(fsys, label, "")
}

// OpenHFDir opens the Hugging Face OPT model directory dir (see OpenHF).
// Safetensors files are memory-mapped.
func OpenHFDir(dir string) (Source, error) {
	return openHF(os.DirFS(dir), dir, dir)
}

// openHF: osDir, when set, is the OS path of fsys, for mapping files.
func openHF(fsys fs.FS, label, osDir string) (_ Source, err error) {
	at := func(name string) string { return path.Join(label, name) }
	cfgBytes, err := readCapped(fsys, hfConfig, maxConfigJSON)
	if err != nil {
		return nil, fmt.Errorf("%s: a Hugging Face model directory needs %s: %w", label, hfConfig, err)
	}
	cfg, err := ParseOPTConfig(at(hfConfig), cfgBytes)
	if err != nil {
		return nil, err
	}
	s := &hfSource{label: label, cfg: cfg, specs: map[string]WeightSpec{}, route: map[string]hfRef{}}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	var layout hfLayout
	found := false
	for _, l := range hfLayouts {
		if _, err := fs.Stat(fsys, l.file()); err != nil {
			continue
		}
		if !found {
			layout, found = l, true
			continue
		}
		s.warnings = append(s.warnings, fmt.Sprintf("%s: %s ignored: reading %s", label, at(l.file()), at(layout.file())))
	}
	if !found {
		return nil, fmt.Errorf("%s: no weights: want %s, %s, %s or %s next to %s: %w", label,
			hfSafetensors, hfSafetensorsIndex, hfPytorchBin, hfPytorchBinIndex, hfConfig, fs.ErrNotExist)
	}
	sf, err := describeFile(fsys, hfConfig, at(hfConfig), sourceFormatJSON)
	if err != nil {
		return nil, err
	}
	s.files = append(s.files, sf)

	// keys: the stored keys to consider, each with its shard, in a
	// deterministic order.
	var keys []hfRef
	var problems []string
	if layout.single != "" {
		if err := s.openShard(fsys, label, osDir, layout, layout.single); err != nil {
			return nil, err
		}
		for _, k := range s.shards[0].st.Keys() {
			keys = append(keys, hfRef{0, k})
		}
	} else {
		ib, err := readCapped(fsys, layout.index, maxIndexJSON)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", label, err)
		}
		sf, err := describeFile(fsys, layout.index, at(layout.index), sourceFormatJSON)
		if err != nil {
			return nil, err
		}
		s.files = append(s.files, sf)
		weightMap, order, err := parseHFIndex(at(layout.index), ib, layout.suffix)
		if err != nil {
			return nil, err
		}
		shardNames := map[string]bool{}
		for _, f := range weightMap {
			shardNames[f] = true
		}
		files := slices.Sorted(maps.Keys(shardNames))
		var missing []string
		for _, f := range files {
			if _, err := fs.Stat(fsys, f); err != nil {
				missing = append(missing, fmt.Sprintf("%q (%v)", f, err))
			}
		}
		if len(missing) > 0 {
			return nil, fmt.Errorf("%s: %d shard(s) named by %s are missing: %s: %w", label, len(missing),
				layout.index, strings.Join(missing, ", "), fs.ErrNotExist)
		}
		shardOf := map[string]int{}
		for _, f := range files {
			if err := s.openShard(fsys, label, osDir, layout, f); err != nil {
				return nil, err
			}
			shardOf[f] = len(s.shards) - 1
		}
		for _, k := range order {
			sh := s.shards[shardOf[weightMap[k]]]
			if _, ok := sh.st.Stored(k); !ok {
				problems = append(problems, fmt.Sprintf("%s maps %q to %s, which does not hold it", layout.index, k, sh.file))
			}
		}
		for i, sh := range s.shards {
			for _, k := range sh.st.Keys() {
				switch f, ok := weightMap[k]; {
				case !ok:
					s.warnings = append(s.warnings, fmt.Sprintf("%s: tensor %q is not in %s; ignored", at(sh.file), k, layout.index))
				case f != sh.file:
					s.warnings = append(s.warnings, fmt.Sprintf("%s: tensor %q ignored: %s maps it to %s", at(sh.file), k, layout.index, f))
				default:
					keys = append(keys, hfRef{i, k})
				}
			}
		}
	}
	problems = append(problems, s.mapNames(keys)...)
	if len(problems) > 0 {
		return nil, fmt.Errorf("%s: %s: %w", label, strings.Join(problems, "; "), ErrCheckpoint)
	}
	// The weight files are hashed (for the provenance) in the background,
	// overlapping the conversion that reads them; Files waits.
	s.hashed = make(chan struct{})
	go func() {
		defer close(s.hashed)
		for _, sh := range s.shards {
			if st, ok := sh.st.(*Safetensors); ok {
				// Through the mapping the decoder reads too: no second
				// copy of the file through read(2).
				if sum, n, mapped, err := st.HashMapped(); mapped {
					sf := &slopepb.SourceFile{Path: at(sh.file), Format: layout.format}
					if err == nil {
						sf.Size, sf.Sha256 = uint64(n), sum
					}
					s.files = append(s.files, sf)
					continue
				}
			}
			sf, err := describeFile(fsys, sh.file, at(sh.file), layout.format)
			if err != nil {
				// Reading the file failed: the provenance records it without
				// a digest (reading its tensors fails the same way).
				sf = &slopepb.SourceFile{Path: at(sh.file), Format: layout.format}
			}
			s.files = append(s.files, sf)
		}
	}()
	return s, nil
}

// openShard opens one weights file of the directory.
func (s *hfSource) openShard(fsys fs.FS, label, osDir string, layout hfLayout, file string) error {
	name := path.Join(label, file)
	var st TensorStore
	prefix := ""
	switch layout.format {
	case sourceFormatST:
		var sf *Safetensors
		var err error
		if osDir != "" {
			sf, err = OpenSafetensorsFile(filepath.Join(osDir, file))
		} else {
			sf, err = OpenSafetensors(fsys, file)
			if err != nil {
				err = fmt.Errorf("%s: %w", label, err)
			}
		}
		if err != nil {
			return err
		}
		sf.name = name
		st = sf
	default:
		var err error
		st, err = OpenPytorchBin(fsys, file)
		if err != nil {
			return fmt.Errorf("%s: %w", label, err)
		}
		if !strings.HasPrefix(st.Name(), name) {
			prefix = label + ": "
		}
	}
	s.shards = append(s.shards, hfShard{file: file, st: st, prefix: prefix})
	return nil
}

// parseHFIndex decodes a shard index: a JSON object with a "weight_map"
// object of tensor key -> shard file name and an optional "metadata"
// object. Duplicate keys, shard names that are not plain file names
// ending in suffix, and an empty map are errors. order is the keys in
// file order.
func parseHFIndex(name string, data []byte, suffix string) (weightMap map[string]string, order []string, err error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%s: %s: %w", name, fmt.Sprintf(format, args...), ErrCheckpoint)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := expectDelim(dec, '{'); err != nil {
		return nil, nil, bad("not a JSON object: %v", err)
	}
	seen := map[string]bool{}
	for dec.More() {
		key, err := stringToken(dec)
		if err != nil {
			return nil, nil, bad("%v", err)
		}
		if seen[key] {
			return nil, nil, bad("duplicate key %q", key)
		}
		seen[key] = true
		switch key {
		case "weight_map":
			if weightMap, order, err = parseWeightMap(dec, suffix); err != nil {
				return nil, nil, bad("field \"weight_map\": %v", err)
			}
		default:
			var v json.RawMessage
			if err := dec.Decode(&v); err != nil {
				return nil, nil, bad("field %q: %v", key, err)
			}
			if key == "metadata" && (len(v) == 0 || v[0] != '{') {
				return nil, nil, bad("field \"metadata\" is %s; want an object", v)
			}
		}
	}
	if err := expectDelim(dec, '}'); err != nil {
		return nil, nil, bad("%v", err)
	}
	if tok, err := dec.Token(); err != io.EOF {
		return nil, nil, bad("trailing data after the object (%v)", tok)
	}
	if weightMap == nil {
		return nil, nil, bad("no \"weight_map\"")
	}
	if len(weightMap) == 0 {
		return nil, nil, bad("\"weight_map\" is empty")
	}
	return weightMap, order, nil
}

func parseWeightMap(dec *json.Decoder, suffix string) (map[string]string, []string, error) {
	if err := expectDelim(dec, '{'); err != nil {
		return nil, nil, err
	}
	m := map[string]string{}
	var order []string
	for dec.More() {
		k, err := stringToken(dec)
		if err != nil {
			return nil, nil, err
		}
		if _, dup := m[k]; dup {
			return nil, nil, fmt.Errorf("duplicate key %q", k)
		}
		f, err := stringToken(dec)
		if err != nil {
			return nil, nil, fmt.Errorf("%q: %w", k, err)
		}
		if err := checkShardName(f, suffix); err != nil {
			return nil, nil, fmt.Errorf("%q: shard %q: %w", k, f, err)
		}
		m[k] = f
		order = append(order, k)
	}
	return m, order, expectDelim(dec, '}')
}

// checkShardName: a shard is a plain file name inside the directory.
func checkShardName(f, suffix string) error {
	switch {
	case f == "":
		return errors.New("empty file name")
	case strings.ContainsAny(f, `/\`) || filepath.IsAbs(f):
		return errors.New("not a plain file name in the directory (no paths allowed)")
	case f == "." || f == ".." || !fs.ValidPath(f) || strings.ContainsRune(f, 0):
		return errors.New("not a valid file name")
	case f == hfConfig || f == hfSafetensorsIndex || f == hfPytorchBinIndex:
		return errors.New("not a weights file")
	case !strings.HasSuffix(f, suffix) || f == suffix:
		return fmt.Errorf("want a %s file", suffix)
	}
	return nil
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

// mapNames matches the stored keys to the expected canonical weights. It
// returns the problems found (all of them): missing weights, two keys for
// one weight, wrong shapes, non-float dtypes.
func (s *hfSource) mapNames(keys []hfRef) []string {
	for _, w := range OPTWeights(s.cfg) {
		s.specs[w.Name] = w
		s.names = append(s.names, w.Name)
	}
	var problems []string
	for _, ref := range keys {
		sh := s.shards[ref.shard]
		file := path.Join(s.label, sh.file)
		key := ref.key
		canon, ok := CanonicalOPTName(key)
		spec, expected := s.specs[canon]
		switch {
		case ok && canon == "lm_head.weight" && s.cfg.TieWordEmbeddings:
			s.warnings = append(s.warnings, fmt.Sprintf("%s: tensor %q ignored: tie_word_embeddings is true, so lm_head is decoder.embed_tokens.weight", file, key))
			continue
		case !ok || !expected:
			s.warnings = append(s.warnings, fmt.Sprintf("%s: unexpected tensor %q ignored", file, key))
			continue
		}
		if prev, dup := s.route[canon]; dup {
			problems = append(problems, fmt.Sprintf("tensors %q (%s) and %q (%s) both map to %q",
				prev.key, s.shards[prev.shard].file, key, sh.file, canon))
			continue
		}
		s.route[canon] = ref
		st, _ := sh.st.Stored(key)
		if !slices.Equal(st.Shape, spec.Shape) {
			problems = append(problems, fmt.Sprintf("%s: tensor %q has shape %v, want %v (from %s)", file, key, st.Shape, spec.Shape, hfConfig))
		}
		if st.DType == slopepb.DType_DTYPE_UNSPECIFIED {
			problems = append(problems, fmt.Sprintf("%s: tensor %q has dtype %s; weights must be F32, F16 or BF16", file, key, st.SourceDType))
		}
	}
	var missing []string
	for _, n := range s.names {
		if _, ok := s.route[n]; !ok {
			missing = append(missing, n)
		}
	}
	if len(missing) > 0 {
		problems = append([]string{fmt.Sprintf("%d weights missing (for the config in %s): %s", len(missing),
			path.Join(s.label, hfConfig), strings.Join(missing, ", "))}, problems...)
	}
	return problems
}

// openRegular opens name in fsys after checking that it is a regular file
// (through links): opening a FIFO would block until a writer comes, and
// no signal would stop the wait.
func openRegular(fsys fs.FS, name string) (fs.File, error) {
	st, err := fs.Stat(fsys, name)
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file: %w", name, ErrCheckpoint)
	}
	return fsys.Open(name)
}

// openRegularFile opens the regular file at path, checked before the open
// (a FIFO would block it) and again on the open file (the path may have
// changed in between); anything else is an error wrapping sentinel.
func openRegularFile(path string, sentinel error) (*os.File, os.FileInfo, error) {
	if st, err := os.Stat(path); err != nil {
		return nil, nil, err
	} else if !st.Mode().IsRegular() {
		return nil, nil, fmt.Errorf("%s: not a regular file: %w", path, sentinel)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, nil, fmt.Errorf("%s: not a regular file: %w", path, sentinel)
	}
	return f, st, nil
}

// readCapped reads a small file whole, refusing one larger than limit.
func readCapped(fsys fs.FS, name string, limit int64) ([]byte, error) {
	f, err := openRegular(fsys, name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s is larger than %d bytes: %w", name, limit, ErrCheckpoint)
	}
	return b, nil
}

// describeFile hashes one source file (streaming).
func describeFile(fsys fs.FS, name, label, format string) (*slopepb.SourceFile, error) {
	f, err := openRegular(fsys, name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.CopyBuffer(h, f, make([]byte, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("hash %s: %w", label, err)
	}
	return &slopepb.SourceFile{Path: label, Size: uint64(n), Sha256: hex.EncodeToString(h.Sum(nil)), Format: format}, nil
}

func (s *hfSource) Config() *slopepb.OPTConfig { return s.cfg }
func (s *hfSource) Names() []string            { return slices.Clone(s.names) }
func (s *hfSource) Files() []*slopepb.SourceFile {
	if s.hashed != nil {
		<-s.hashed
	}
	return s.files
}
func (s *hfSource) Warnings() []string { return slices.Clone(s.warnings) }

func (s *hfSource) Close() error {
	if s.hashed != nil {
		<-s.hashed
	}
	var errs []error
	for _, sh := range s.shards {
		errs = append(errs, sh.st.Close())
	}
	s.shards = nil
	return errors.Join(errs...)
}

// StoredTensor implements rawSource: weights stored in safetensors
// files can be read raw.
func (s *hfSource) StoredTensor(name string) (*Tensor, bool) {
	ref, sh, err := s.shardOf(name)
	if err != nil {
		return nil, false
	}
	if _, ok := sh.st.(*Safetensors); !ok {
		return nil, false
	}
	st, ok := sh.st.Stored(ref.key)
	if !ok {
		return nil, false
	}
	return &Tensor{Name: name, SourceName: ref.key, DType: st.DType, Shape: slices.Clone(st.Shape)}, true
}

// TensorRaw implements rawSource.
func (s *hfSource) TensorRaw(name string, buf []byte) ([]byte, error) {
	ref, sh, err := s.shardOf(name)
	if err != nil {
		return nil, err
	}
	st, ok := sh.st.(*Safetensors)
	if !ok {
		return nil, fmt.Errorf("%s: weight %q: not stored in a safetensors file", s.label, name)
	}
	raw, err := st.ReadRawInto(ref.key, buf)
	if err != nil {
		return nil, fmt.Errorf("%sweight %q: %w", sh.prefix, name, err)
	}
	return raw, nil
}

var _ rawSource = (*hfSource)(nil)

// shardOf returns where a weight is stored, or an error naming it when it
// is unknown or the source is closed.
func (s *hfSource) shardOf(name string) (hfRef, *hfShard, error) {
	ref, ok := s.route[name]
	if !ok {
		return ref, nil, fmt.Errorf("%s: no weight %q", s.label, name)
	}
	if ref.shard >= len(s.shards) {
		return ref, nil, fmt.Errorf("%s: weight %q: source is closed", s.label, name)
	}
	return ref, &s.shards[ref.shard], nil
}

func (s *hfSource) Tensor(name string) (*Tensor, error) {
	ref, sh, err := s.shardOf(name)
	if err != nil {
		return nil, err
	}
	st, _ := sh.st.Stored(ref.key)
	// A converter holds one tensor at a time, but the collector paces
	// itself on the heap it last saw live: after a large tensor (OPT-1.3B's
	// embedding is 400 MB as float32) it would let the heap grow to twice
	// that before reclaiming it. Collecting here, when the caller is done
	// with the previous tensor, keeps the peak near one tensor's worth.
	if s.prevLarge.Swap(false) {
		runtime.GC()
	}
	data, err := sh.st.ReadFloat32(ref.key)
	if err != nil {
		return nil, fmt.Errorf("%sweight %q: %w", sh.prefix, name, err)
	}
	if int64(len(data))*4 >= largeTensorBytes {
		s.prevLarge.Store(true)
	}
	t := &Tensor{Name: name, SourceName: ref.key, DType: st.DType, Shape: slices.Clone(st.Shape), Data: data}
	if n := t.Numel(); n != len(data) {
		return nil, fmt.Errorf("%s: tensor %q: %d values for shape %v", path.Join(s.label, sh.file), ref.key, len(data), st.Shape)
	}
	return t, nil
}
