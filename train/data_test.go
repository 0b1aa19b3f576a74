package train

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/format/slopepb"
	"github.com/slopeml/slope/tokenizer"
)

// writeTokens writes n tokens (i*7 mod vocab) as a .u16 file.
func writeTokens(t *testing.T, dir string, n, vocab int) string {
	t.Helper()
	b := make([]byte, 2*n)
	for i := range n {
		binary.LittleEndian.PutUint16(b[2*i:], uint16(i*7%vocab))
	}
	fn := filepath.Join(dir, "tokens.u16")
	if err := os.WriteFile(fn, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return fn
}

// TestDataResume: windows cover the stream, epochs are permutations that
// depend on the seed, and a Data sought to a recorded position yields the
// same later batches as the original.
func TestDataResume(t *testing.T) {
	dir := t.TempDir()
	fn := writeTokens(t, dir, 101, 1000)
	o := DataOptions{Seq: 10, Seed: 3, Vocab: 1000}
	d, err := LoadData(fn, o)
	if err != nil {
		t.Fatal(err)
	}
	if d.Windows() != 10 || d.Tokens() != 101 {
		t.Fatalf("%d windows of %d tokens", d.Windows(), d.Tokens())
	}
	// One epoch visits every window once.
	seen := map[int]bool{}
	for _, w := range d.Next(10) {
		i := -1
		for j := range d.Windows() {
			if slices.Equal(w, d.Window(j)) {
				i = j
			}
		}
		if i < 0 || seen[i] {
			t.Fatalf("window %v: not a new window of the stream", w)
		}
		seen[i] = true
	}
	if d.Epoch() != 0 || d.Offset() != 10 {
		t.Fatalf("at epoch %d offset %d", d.Epoch(), d.Offset())
	}
	e0 := slices.Clone(d.perm)
	d.Next(3) // into epoch 1
	if d.Epoch() != 1 || slices.Equal(e0, d.perm) {
		t.Fatalf("epoch %d, permutation %v then %v", d.Epoch(), e0, d.perm)
	}
	pos := d.Position()
	var want [][]int32
	for range 4 {
		want = append(want, d.Next(4)...) // crosses into epoch 2
	}
	r, err := LoadData(fn, DataOptions{Seq: 10})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Seek(pos); err != nil {
		t.Fatal(err)
	}
	var got [][]int32
	for range 4 {
		got = append(got, r.Next(4)...)
	}
	if !slices.EqualFunc(want, got, slices.Equal) {
		t.Fatalf("resumed batches differ:\n%v\n%v", want, got)
	}
	// Another window length cannot continue the recorded offset: the
	// data starts the next epoch, with the recorded seed.
	if pos.GetSeq() != 10 || SeqChanged(pos, 10) || !SeqChanged(pos, 7) {
		t.Fatalf("position records seq %d", pos.GetSeq())
	}
	s7, err := LoadData(fn, DataOptions{Seq: 7})
	if err != nil {
		t.Fatal(err)
	}
	if err := s7.Seek(pos); err != nil || s7.Epoch() != pos.GetEpoch()+1 || s7.Offset() != 0 {
		t.Fatalf("seq 7 after a seq 10 position: epoch %d offset %d (%v), want epoch %d offset 0", s7.Epoch(), s7.Offset(), err, pos.GetEpoch()+1)
	}
	other, _ := LoadData(fn, DataOptions{Seq: 10, Seed: 4})
	if slices.Equal(other.perm, e0) {
		t.Fatal("seed does not change the order")
	}
	// Different data is refused; too little data, odd sizes and
	// out-of-vocabulary ids fail.
	fn2 := writeTokens(t, t.TempDir(), 100, 1000)
	d2, _ := LoadData(fn2, o)
	if err := d2.Seek(pos); !errors.Is(err, ErrData) {
		t.Fatalf("Seek into other data: %v", err)
	}
	if _, err := LoadData(fn, DataOptions{Seq: 200}); !errors.Is(err, ErrData) {
		t.Fatalf("too short: %v", err)
	}
	if _, err := LoadData(fn, DataOptions{Seq: 10, Vocab: 40}); !errors.Is(err, ErrData) {
		t.Fatalf("out of vocabulary: %v", err)
	}
	odd := filepath.Join(dir, "odd.u16")
	os.WriteFile(odd, []byte{1, 2, 3}, 0o644)
	if _, err := LoadData(odd, o); !errors.Is(err, ErrData) {
		t.Fatalf("odd size: %v", err)
	}
	if _, err := LoadData(filepath.Join(dir, "x.txt"), o); err == nil {
		t.Fatal("missing file: no error")
	}
}

// byteTokenizer is a GPT-2 byte-level BPE without merges: ids 0-3
// special, 4+b for byte b.
func byteTokenizer(t *testing.T) *tokenizer.BPE {
	t.Helper()
	vocab := map[string]int{"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
	n := 0
	for b := range 256 {
		r := rune(b)
		if !(b >= '!' && b <= '~' || b >= 0xA1 && b <= 0xAC || b >= 0xAE && b <= 0xFF) {
			r = rune(256 + n)
			n++
		}
		vocab[string(r)] = 4 + b
	}
	vj, _ := json.Marshal(vocab)
	tk, err := tokenizer.LoadGPT2(vj, []byte("#version: 0.2\n"))
	if err != nil {
		t.Fatal(err)
	}
	return tk
}

// TestDataText: text lines are encoded with BOS per line (or once).
func TestDataText(t *testing.T) {
	fn := filepath.Join(t.TempDir(), "c.txt")
	if err := os.WriteFile(fn, []byte("ab\n\ncd\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tk := byteTokenizer(t)
	d, err := LoadData(fn, DataOptions{Seq: 2, Tokenizer: tk, BOS: DefaultBOS, Sequential: true})
	if err != nil {
		t.Fatal(err)
	}
	if want := []int32{2, 4 + 'a', 4 + 'b', 2, 4 + 'c', 4 + 'd'}; !slices.Equal(d.tokens, want) {
		t.Fatalf("tokens %v, want %v", d.tokens, want)
	}
	if got := d.Next(2); !slices.Equal(got[0], d.tokens[:3]) || !slices.Equal(got[1], d.tokens[2:5]) {
		t.Fatalf("sequential windows %v", got)
	}
	d, err = LoadData(fn, DataOptions{Seq: 2, Tokenizer: tk, BOS: DefaultBOS, BOSOnce: true})
	if err != nil {
		t.Fatal(err)
	}
	if want := []int32{2, 4 + 'a', 4 + 'b', 4 + '\n', 4 + '\n', 4 + 'c', 4 + 'd', 4 + '\n'}; !slices.Equal(d.tokens, want) {
		t.Fatalf("tokens %v, want %v", d.tokens, want)
	}
	if _, err := LoadData(fn, DataOptions{Seq: 2}); !errors.Is(err, ErrData) {
		t.Fatalf("text without a tokenizer: %v", err)
	}
}

// TestDataTextSpecialsAndBOS: a line's special tokens become their ids, as
// the runtime's Encode makes them, and BOS is the id asked for: 0 too, or
// none.
func TestDataTextSpecialsAndBOS(t *testing.T) {
	fn := filepath.Join(t.TempDir(), "c.txt")
	if err := os.WriteFile(fn, []byte("a</s>b\nc\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tk := byteTokenizer(t)
	if err := tk.SetSpecialTokens("</s>"); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		bos  int
		want []int32
	}{
		{DefaultBOS, []int32{2, 4 + 'a', 2, 4 + 'b', 2, 4 + 'c'}},
		{0, []int32{0, 4 + 'a', 2, 4 + 'b', 0, 4 + 'c'}},
		{NoBOS, []int32{4 + 'a', 2, 4 + 'b', 4 + 'c'}},
	} {
		d, err := LoadData(fn, DataOptions{Seq: 2, Tokenizer: tk, BOS: c.bos, Sequential: true})
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(d.tokens, c.want) {
			t.Errorf("BOS %d: tokens %v, want %v", c.bos, d.tokens, c.want)
		}
	}
}

// TestTrainerBOS: the trainer's BOS is the model config's bos_token_id,
// 0 included, and NoBOS for a config whose bos_token_id is null (-1).
func TestTrainerBOS(t *testing.T) {
	fn := tinySlope(t)
	if got := openTrainer(t, fn, Options{Threads: 1}).BOS(); got != 2 {
		t.Fatalf("BOS %d of the tiny model, want 2", got)
	}
	for _, bos := range []int64{0, -1} {
		out := filepath.Join(t.TempDir(), "b.slope")
		if err := format.Rewrite(fn, out, func(m *slopepb.Manifest) { m.Architecture.GetOpt().BosTokenId = bos }); err != nil {
			t.Fatal(err)
		}
		if got := openTrainer(t, out, Options{Threads: 1}).BOS(); got != int(bos) {
			t.Fatalf("bos_token_id %d: BOS %d", bos, got)
		}
	}
}
