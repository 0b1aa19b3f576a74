package convert

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"

	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/format/slopepb"
	"github.com/slopeml/slope/tokenizer"
)

// Calibration file formats (Options.CalibFormat).
const (
	// CalibText is UTF-8 text, encoded by the model's tokenizer.
	CalibText = "text"
	// CalibU16 and CalibU32 are token ids, little-endian uint16 or uint32.
	CalibU16 = "u16"
	CalibU32 = "u32"
)

// Calibration defaults.
const (
	DefaultCalibSamples = 32
	DefaultCalibSeqLen  = 128
)

// CalibFormatOf resolves a calibration format: "" or "auto" decides by
// the file's extension (.bin and .u16: uint16 ids, .u32: uint32 ids,
// anything else: text); text, u16 and u32 are taken as given.
func CalibFormatOf(path, format string) (string, error) {
	switch strings.ToLower(format) {
	case "", "auto":
		switch strings.ToLower(filepath.Ext(path)) {
		case ".bin", ".u16":
			return CalibU16, nil
		case ".u32":
			return CalibU32, nil
		}
		return CalibText, nil
	case CalibText, CalibU16, CalibU32:
		return strings.ToLower(format), nil
	}
	return "", fmt.Errorf("--calib-format %q: want auto, text, u16 or u32", format)
}

// CalibSpec says how to draw calibration samples.
type CalibSpec struct {
	// Path of the file and its format (CalibFormatOf).
	Path, Format string
	// Samples of SeqLen tokens each.
	Samples, SeqLen int
	// Seed of the draw.
	Seed uint64
	// Vocab is the model's vocabulary size: every id must be below it.
	Vocab int
	// BOS is prepended to every text sample (OPT: 2).
	BOS int
	// Tokenizer gives the model's tokenizer, for text.
	Tokenizer func() (*tokenizer.BPE, error)
}

// LoadCalibration reads a calibration file and draws Samples windows of
// its token stream. A text file is encoded whole by the tokenizer and each
// sample is BOS followed by SeqLen−1 consecutive tokens; a token file's
// samples are SeqLen consecutive ids as stored (no BOS added). Windows
// start at offsets drawn uniformly (with repetition) by a generator
// seeded with Seed, so the same file and seed give the same samples.
// Errors name the file.
func LoadCalibration(c CalibSpec) ([][]int32, error) {
	samples, _, err := loadCalibration(c)
	return samples, err
}

// loadCalibration is LoadCalibration, also returning the SHA-256 of the
// bytes it read (the file is read once; a token file is not copied into
// a stream of ids).
func loadCalibration(c CalibSpec) ([][]int32, [32]byte, error) {
	var sum [32]byte
	fail := func(err error) ([][]int32, [32]byte, error) { return nil, sum, err }
	if c.Samples < 1 {
		return fail(fmt.Errorf("--calib-samples %d: want at least 1", c.Samples))
	}
	if c.SeqLen < 2 {
		return fail(fmt.Errorf("--calib-seqlen %d: want at least 2", c.SeqLen))
	}
	raw, err := os.ReadFile(c.Path)
	if err != nil {
		return fail(fmt.Errorf("--calib: %w", err))
	}
	sum = sha256.Sum256(raw)
	// The stream of ids: n of them, the i-th by at (as read: range-checked
	// below).
	var n int
	var at func(i int) int64
	var prefix []int32
	switch c.Format {
	case CalibText:
		if c.Tokenizer == nil {
			return fail(fmt.Errorf("--calib %s: a text file needs the model's tokenizer, and the model has none (give token ids: a .bin/.u16 or .u32 file)", c.Path))
		}
		tok, err := c.Tokenizer()
		if err != nil {
			return fail(fmt.Errorf("--calib %s: a text file needs the model's tokenizer: %w", c.Path, err))
		}
		enc := tok.Encode(string(raw))
		n, at = len(enc), func(i int) int64 { return int64(enc[i]) }
		if c.BOS >= 0 { // bos_token_id null in the config: none
			prefix = []int32{int32(c.BOS)}
		}
	case CalibU16:
		if len(raw)%2 != 0 {
			return fail(fmt.Errorf("--calib %s: %d bytes is not a whole number of uint16 token ids", c.Path, len(raw)))
		}
		n, at = len(raw)/2, func(i int) int64 { return int64(binary.LittleEndian.Uint16(raw[2*i:])) }
	case CalibU32:
		if len(raw)%4 != 0 {
			return fail(fmt.Errorf("--calib %s: %d bytes is not a whole number of uint32 token ids", c.Path, len(raw)))
		}
		n = len(raw) / 4
		at = func(i int) int64 { return int64(binary.LittleEndian.Uint32(raw[4*i:])) }
	default:
		return fail(fmt.Errorf("--calib-format %q: want text, u16 or u32", c.Format))
	}
	for i := range n {
		if id := at(i); id < 0 || id >= int64(c.Vocab) {
			return fail(fmt.Errorf("--calib %s: token %d is id %d, not below the model's vocabulary size %d", c.Path, i, id, c.Vocab))
		}
	}
	need := c.SeqLen - len(prefix)
	if n < need {
		return fail(fmt.Errorf("--calib %s: %d tokens, a sample of --calib-seqlen %d needs %d", c.Path, n, c.SeqLen, need))
	}
	h := fnv.New64a()
	h.Write([]byte("calibration"))
	rng := rand.New(rand.NewPCG(c.Seed, h.Sum64()))
	out := make([][]int32, c.Samples)
	for s := range out {
		off := rng.IntN(n - need + 1)
		w := append(make([]int32, 0, c.SeqLen), prefix...)
		for i := off; i < off+need; i++ {
			w = append(w, int32(at(i))) // below the vocabulary: checked above
		}
		out[s] = w
	}
	return out, sum, nil
}

// CheckCalibOptions reports the mistakes in o's method and calibration
// options that need no file (a calibration option without a calibrated
// method, a calibrated method without --calib, an unknown --calib-format,
// sizes out of range), so a command line can be refused before any work.
func CheckCalibOptions(o Options) error {
	method, err := ParseMethod(o.Method)
	if err != nil {
		return err
	}
	_, err = calibSpec(o, method)
	return err
}

// planCalib checks the calibration options against the method and that
// the file is there: nil for magnitude (which takes none of them).
func planCalib(o Options, method string) (*CalibSpec, error) {
	c, err := calibSpec(o, method)
	if c == nil || err != nil {
		return c, err
	}
	if st, err := os.Stat(o.Calib); err != nil {
		return nil, fmt.Errorf("--calib: %w", err)
	} else if st.IsDir() {
		return nil, fmt.Errorf("--calib %s: a directory, want a file", o.Calib)
	}
	return c, nil
}

// calibSpec is planCalib without the file's check.
func calibSpec(o Options, method string) (*CalibSpec, error) {
	if method == MethodMagnitude || method == MethodRandom {
		switch {
		case o.Calib != "":
			return nil, fmt.Errorf("--calib %s: only --method wanda or sparsegpt use calibration data", o.Calib)
		case o.CalibFormat != "", o.CalibSamples != 0, o.CalibSeqLen != 0, o.CalibChunk != 0:
			return nil, errors.New("--calib-format, --calib-samples, --calib-seqlen and --calib-chunk need --method wanda or sparsegpt with --calib")
		}
		return nil, nil
	}
	if o.Calib == "" {
		return nil, fmt.Errorf("--method %s needs calibration data: give --calib FILE (text, or token ids in a .bin/.u16/.u32 file)", method)
	}
	c := &CalibSpec{Path: o.Calib, Samples: o.CalibSamples, SeqLen: o.CalibSeqLen, Seed: o.Seed}
	var err error
	if c.Format, err = CalibFormatOf(o.Calib, o.CalibFormat); err != nil {
		return nil, err
	}
	switch {
	case c.Samples == 0:
		c.Samples = DefaultCalibSamples
	case c.Samples < 0:
		return nil, fmt.Errorf("--calib-samples %d: want at least 1", c.Samples)
	}
	if o.CalibChunk < 0 {
		return nil, fmt.Errorf("--calib-chunk %d: want at least 1 (0: automatic)", o.CalibChunk)
	}
	switch {
	case c.SeqLen == 0:
		c.SeqLen = DefaultCalibSeqLen
	case c.SeqLen < 2:
		return nil, fmt.Errorf("--calib-seqlen %d: want at least 2", c.SeqLen)
	}
	return c, nil
}

// startCalibration loads the calibration samples for the model of src
// and runs its embedding (newCalibrator). The sequence length is capped
// by the model's positions only when --calib-seqlen was not given.
func startCalibration(src Source, o Options, c *CalibSpec, tok *sourceTokenizer, method string, ruleFor func(string) (pruneRule, WeightSpec, bool),
	outDT slopepb.DType, keepDT bool) (*calibrator, *slopepb.Calibration, error) {
	cfg := src.Config()
	if maxPos := int(cfg.MaxPositionEmbeddings); maxPos > 0 && c.SeqLen > maxPos {
		if o.CalibSeqLen != 0 {
			return nil, nil, fmt.Errorf("--calib-seqlen %d: the model has %d positions", c.SeqLen, maxPos)
		}
		c.SeqLen = maxPos
	}
	c.Vocab, c.BOS = int(cfg.VocabSize), int(cfg.BosTokenId)
	c.Tokenizer = tok.load // nil without tokenizer files
	samples, sum, err := loadCalibration(*c)
	if err != nil {
		return nil, nil, err
	}
	prov := &slopepb.Calibration{
		Description: fmt.Sprintf("%s pruning calibrated on %s (%s): %d samples of %d tokens drawn with seed %d", method, filepath.Base(c.Path), c.Format, c.Samples, c.SeqLen, c.Seed),
		Source:      c.Path, Samples: uint64(c.Samples), SeqLen: uint64(c.SeqLen), Seed: c.Seed, Sha256: hex.EncodeToString(sum[:]),
	}
	decide := func(name string, t *Tensor) (bool, string, format.NM) {
		rule, spec, known := ruleFor(name)
		prune, reason := pruneDecision(spec, known, t, rule)
		return prune, reason, rule.p
	}
	round := func(src slopepb.DType, x []float32) {
		dt := outDT
		if keepDT {
			dt = src
		}
		roundToDType(dt, x)
	}
	cal, err := newCalibrator(src, method, samples, o.CalibChunk, decide, round, o.LayerProgress)
	if err != nil {
		return nil, nil, err
	}
	return cal, prov, nil
}
