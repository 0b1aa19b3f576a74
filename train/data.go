package train

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"

	"github.com/slopeml/slope/format/slopepb"
	"github.com/slopeml/slope/tokenizer"
)

// Data loading (issue 6, deliverable 2). A Data holds a token stream, cut
// into windows of Seq+1 tokens (consecutive windows share one token, so
// every token but the first is a target once per epoch); each epoch visits
// the windows in a permutation drawn from (Seed, epoch) alone, so that a
// position (epoch, offset) determines every later batch.

// DefaultBOS is OPT's beginning-of-sequence id ("</s>").
const DefaultBOS = 2

// NoBOS as DataOptions.BOS puts no id before the text's lines (a config
// whose bos_token_id is null).
const NoBOS = -1

// DataOptions tune LoadData.
type DataOptions struct {
	// Seq is the number of tokens per training sequence (required); each
	// window holds Seq+1 tokens.
	Seq int
	// Seed draws the per-epoch permutations.
	Seed uint64
	// Tokenizer encodes text files (required for them). Each non-empty
	// line is one document: encoded alone, its special tokens ("</s>")
	// recognised as the runtime's Encode does, its line break dropped,
	// BOS before it. This is what transformers' causal-LM example does
	// with a text file (one example per line, the OPT tokenizer's BOS
	// before each, the examples concatenated and cut into windows).
	Tokenizer *tokenizer.BPE
	// BOS is the id prepended to every non-empty line of a text file (or
	// once, with BOSOnce): the model config's bos_token_id, DefaultBOS
	// for OPT; NoBOS (or any negative value): none.
	BOS int
	// BOSOnce encodes the whole text as one document, line breaks
	// included, with BOS once before it (as slope score does).
	BOSOnce bool
	// Vocab, when > 0, bounds the token ids (an id >= Vocab is an error).
	Vocab int
	// Sequential visits the windows in file order (no shuffling): for
	// validation data.
	Sequential bool
}

// Data is a resumable, deterministic stream of training windows.
type Data struct {
	source, sum string
	tokens      []int32
	seq         int
	seed        uint64
	sequential  bool
	n           int // windows per epoch
	epoch       uint64
	offset      uint64 // windows consumed in this epoch
	perm        []int
}

// ErrData is wrapped by the errors of unusable data.
var ErrData = errors.New("train: data")

// LoadData reads a token file (.u16 or .bin: uint16 little-endian; .u32:
// uint32 little-endian) or a text file (any other name, encoded with
// o.Tokenizer).
func LoadData(path string, o DataOptions) (*Data, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if o.Seq < 1 {
		return nil, fmt.Errorf("%w: sequence length %d", ErrData, o.Seq)
	}
	sum := sha256.Sum256(raw)
	d := &Data{source: path, sum: hex.EncodeToString(sum[:]), seq: o.Seq, seed: o.Seed, sequential: o.Sequential}
	switch strings.ToLower(filepath.Ext(path)) {
	case ".u16", ".bin":
		if len(raw)%2 != 0 {
			return nil, fmt.Errorf("%w: %s: %d bytes is not a whole number of uint16 tokens", ErrData, path, len(raw))
		}
		d.tokens = make([]int32, len(raw)/2)
		for i := range d.tokens {
			d.tokens[i] = int32(binary.LittleEndian.Uint16(raw[2*i:]))
		}
	case ".u32":
		if len(raw)%4 != 0 {
			return nil, fmt.Errorf("%w: %s: %d bytes is not a whole number of uint32 tokens", ErrData, path, len(raw))
		}
		d.tokens = make([]int32, len(raw)/4)
		for i := range d.tokens {
			v := binary.LittleEndian.Uint32(raw[4*i:])
			if v > 1<<31-1 {
				return nil, fmt.Errorf("%w: %s: token %d is %d, above the largest id a token file may hold (2^31-1)", ErrData, path, i, v)
			}
			d.tokens[i] = int32(v)
		}
	default:
		if o.Tokenizer == nil {
			return nil, fmt.Errorf("%w: %s is text (not .u16, .bin or .u32) and the model has no tokenizer", ErrData, path)
		}
		d.tokens = encodeText(raw, o)
	}
	if o.Vocab > 0 {
		for i, id := range d.tokens {
			if int(id) >= o.Vocab {
				return nil, fmt.Errorf("%w: %s: token %d is %d, outside the vocabulary of %d", ErrData, path, i, id, o.Vocab)
			}
		}
	}
	if len(d.tokens) >= 1 {
		d.n = (len(d.tokens) - 1) / d.seq
	}
	if d.n == 0 {
		return nil, fmt.Errorf("%w: %s: %d tokens, fewer than one window of %d", ErrData, path, len(d.tokens), d.seq+1)
	}
	d.shuffle()
	return d, nil
}

func encodeText(raw []byte, o DataOptions) []int32 {
	bos := o.BOS
	var ids []int
	if o.BOSOnce {
		if bos >= 0 {
			ids = append(ids, bos)
		}
		ids = append(ids, o.Tokenizer.Encode(string(raw))...)
	} else {
		sc := bufio.NewScanner(bytes.NewReader(raw))
		sc.Buffer(nil, len(raw)+1)
		for sc.Scan() {
			line := strings.TrimRight(sc.Text(), "\r")
			if strings.TrimSpace(line) == "" {
				continue
			}
			if bos >= 0 {
				ids = append(ids, bos)
			}
			ids = append(ids, o.Tokenizer.Encode(line)...)
		}
	}
	out := make([]int32, len(ids))
	for i, id := range ids {
		out[i] = int32(id)
	}
	return out
}

// shuffle draws the current epoch's order.
func (d *Data) shuffle() {
	if d.sequential {
		d.perm = nil
		return
	}
	d.perm = rand.New(rand.NewPCG(d.seed, d.epoch)).Perm(d.n)
}

// Tokens is the length of the token stream.
func (d *Data) Tokens() int { return len(d.tokens) }

// Windows is the number of windows per epoch.
func (d *Data) Windows() int { return d.n }

// Seq is the tokens per sequence (a window is Seq+1 tokens).
func (d *Data) Seq() int { return d.seq }

// Epoch and Offset are where the next window comes from.
func (d *Data) Epoch() uint64  { return d.epoch }
func (d *Data) Offset() uint64 { return d.offset }

// Window returns window i of the file (Seq+1 tokens, shared storage).
func (d *Data) Window(i int) []int32 {
	return d.tokens[i*d.seq : i*d.seq+d.seq+1]
}

// Next returns the next batch windows (Seq+1 tokens each, fresh copies),
// moving to the next epoch (and its permutation) when one ends.
func (d *Data) Next(batch int) [][]int32 {
	out := make([][]int32, batch)
	for b := range out {
		if d.offset >= uint64(d.n) {
			d.epoch++
			d.offset = 0
			d.shuffle()
		}
		i := int(d.offset)
		if d.perm != nil {
			i = d.perm[i]
		}
		out[b] = append([]int32(nil), d.Window(i)...)
		d.offset++
	}
	return out
}

// Position records where the next batch comes from, for a checkpoint.
func (d *Data) Position() *slopepb.DataPosition {
	return &slopepb.DataPosition{Source: d.source, Sha256: d.sum, Epoch: d.epoch, Offset: d.offset, ShuffleSeed: d.seed,
		Seq: uint64(d.seq)}
}

// Seek continues from a recorded position. The data must be the same
// (its SHA-256 is compared; the path may differ) and is then shuffled
// with the recorded seed. A position recorded with another window length
// (SeqChanged) counts windows of another split of the tokens, so it
// cannot be continued: the data then starts the next epoch instead.
func (d *Data) Seek(p *slopepb.DataPosition) error {
	if p.GetSha256() != d.sum {
		return fmt.Errorf("%w: %s (sha256 %s) is not the data of the checkpoint (%s, sha256 %s)", ErrData, d.source, d.sum, p.GetSource(), p.GetSha256())
	}
	d.seed, d.epoch, d.offset = p.GetShuffleSeed(), p.GetEpoch(), p.GetOffset()
	if SeqChanged(p, d.seq) {
		d.epoch, d.offset = d.epoch+1, 0
	} else if p.GetOffset() > uint64(d.n) {
		return fmt.Errorf("%w: offset %d past the %d windows of %s", ErrData, p.GetOffset(), d.n, d.source)
	}
	d.shuffle()
	return nil
}

// SeqChanged reports whether p was recorded with a window length other
// than seq (positions from before it was recorded count as the same).
func SeqChanged(p *slopepb.DataPosition, seq int) bool {
	return p.GetSeq() != 0 && p.GetSeq() != uint64(seq)
}

// BOS is the model config's bos_token_id, NoBOS when the config has
// none (null), DefaultBOS without a config: the id inference puts before
// a text, for DataOptions.BOS.
func (t *Trainer) BOS() int {
	opt := t.file.Manifest().GetArchitecture().GetOpt()
	switch {
	case opt == nil:
		return DefaultBOS
	case opt.GetBosTokenId() < 0:
		return NoBOS
	}
	return int(opt.GetBosTokenId())
}

// Tokenizer loads the tokenizer the opened container carries (nil, nil
// when it has none), as the runtime does: its special tokens too, so that
// text trains on the ids inference uses.
func (t *Trainer) Tokenizer() (*tokenizer.BPE, error) {
	files, err := t.file.TokenizerFiles()
	if err != nil || files == nil {
		return nil, err
	}
	tk, err := tokenizer.LoadFiles(files, "")
	if err != nil {
		return nil, fmt.Errorf("train: %w", err)
	}
	return tk, nil
}
