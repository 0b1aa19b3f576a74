package tokenizer

import (
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"
)

func TestByteLevelAlphabet(t *testing.T) {
	seen := map[rune]bool{}
	for b := 0; b < 256; b++ {
		r := byteToRune[b]
		if seen[r] {
			t.Fatalf("byte %#x: character %q used twice", b, r)
		}
		seen[r] = true
		if got, ok := byteLevelDecode(string(r)); !ok || len(got) != 1 || got[0] != byte(b) {
			t.Fatalf("byte %#x: round trip gives %v, %v", b, got, ok)
		}
	}
	for b, want := range map[byte]rune{' ': 'Ġ', '\n': 'Ċ', '\t': 'ĉ', 'a': 'a', 0: 'Ā', 0xAD: 'Ń', 0x7F: 'ġ', 0xFF: 'ÿ'} {
		if byteToRune[b] != want {
			t.Errorf("byte %#x: %q, want %q", b, byteToRune[b], want)
		}
	}
	if _, ok := byteLevelDecode("中"); ok {
		t.Error("a character outside the alphabet decoded")
	}
	if s := byteLevelEncode([]byte("a b\n")); s != "aĠbĊ" {
		t.Errorf("byteLevelEncode: %q", s)
	}
}

func TestPieces(t *testing.T) {
	for _, c := range []struct {
		text string
		want []string
	}{
		{"", nil},
		{"Hello world", []string{"Hello", " world"}},
		{"  hi", []string{" ", " hi"}},
		{"hi  ", []string{"hi", "  "}},
		{"a\t\tb", []string{"a", "\t", "\t", "b"}},
		{"a \tb", []string{"a", " ", "\t", "b"}},
		{"a\t b", []string{"a", "\t", " b"}},
		{"x \n", []string{"x", " \n"}},
		{"it's", []string{"it", "'s"}},
		{"it'S", []string{"it", "'", "S"}},
		{"we'll've", []string{"we", "'ll", "'ve"}},
		{"'re'", []string{"'re", "'"}},
		{"!'s", []string{"!'", "s"}},
		{" 42x", []string{" 42", "x"}},
		{" ...", []string{" ..."}},
		{"a\u3000b", []string{"a", "\u3000", "b"}},
		{"é\u0301", []string{"é", "\u0301"}},
		{"a\xffb", []string{"a", "\xff", "b"}},
		{" \xff\xfe", []string{" \xff\xfe"}},
	} {
		var got []string
		for _, p := range appendPieces(nil, c.text) {
			got = append(got, c.text[p[0]:p[1]])
		}
		if !slices.Equal(got, c.want) {
			t.Errorf("%q: got %q, want %q", c.text, got, c.want)
		}
	}
}

func TestEncodeWithBOS(t *testing.T) {
	tok := gpt2(t)
	if got := tok.EncodeWithBOS("Hello world", 2); !slices.Equal(got, []int{2, 15496, 995}) {
		t.Errorf("EncodeWithBOS: %v", got)
	}
	if got := tok.EncodeWithBOS("", 2); !slices.Equal(got, []int{2}) {
		t.Errorf("EncodeWithBOS(\"\"): %v", got)
	}
	if got := tok.Encode(""); len(got) != 0 {
		t.Errorf("Encode(\"\"): %v", got)
	}
}

// TestRoundTripRandom: Decode(Encode(s)) == s for random valid UTF-8 from
// the whole Unicode range, and DecodeBytes(Encode(s)) == s for random bytes.
func TestRoundTripRandom(t *testing.T) {
	tok := gpt2(t)
	r := rand.New(rand.NewPCG(5, 6))
	for i := 0; i < 3000; i++ {
		var sb strings.Builder
		for n := r.IntN(30); n > 0; n-- {
			var c rune
			switch r.IntN(4) {
			case 0:
				c = rune(r.IntN(0x80))
			case 1:
				c = rune(r.IntN(0x800))
			case 2:
				c = rune(r.IntN(0x10000))
			default:
				c = rune(r.IntN(utf8.MaxRune + 1))
			}
			if !utf8.ValidRune(c) {
				c = 'x'
			}
			sb.WriteRune(c)
		}
		s := sb.String()
		got, err := tok.Decode(tok.Encode(s))
		if err != nil || got != s {
			t.Fatalf("%q: Decode(Encode) = %q, %v", s, got, err)
		}
	}
	for i := 0; i < 2000; i++ {
		b := make([]byte, r.IntN(30))
		for j := range b {
			b[j] = byte(r.IntN(256))
		}
		got, err := tok.DecodeBytes(tok.Encode(string(b)))
		if err != nil || string(got) != string(b) {
			t.Fatalf("% X: DecodeBytes(Encode) = % X, %v", b, got, err)
		}
	}
}

// naiveMerge is GPT-2's original algorithm, written for clarity: merge every
// occurrence of the lowest-ranked adjacent pair, left to right, until none
// has a rank.
func naiveMerge(tok *BPE, ranks map[[2]string]int, piece string) []int {
	var word []string
	for i := 0; i < len(piece); i++ {
		word = append(word, string(byteToRune[piece[i]]))
	}
	for len(word) > 1 {
		best, bestRank := [2]string{}, -1
		for i := 0; i+1 < len(word); i++ {
			if r, ok := ranks[[2]string{word[i], word[i+1]}]; ok && (bestRank < 0 || r < bestRank) {
				best, bestRank = [2]string{word[i], word[i+1]}, r
			}
		}
		if bestRank < 0 {
			break
		}
		var next []string
		for i := 0; i < len(word); i++ {
			if i+1 < len(word) && word[i] == best[0] && word[i+1] == best[1] {
				next = append(next, best[0]+best[1])
				i++
			} else {
				next = append(next, word[i])
			}
		}
		word = next
	}
	ids := make([]int, len(word))
	for i, w := range word {
		ids[i] = tok.vocab[w]
	}
	return ids
}

// TestMergeMatchesNaive compares the heap-based merge with the textbook
// algorithm on random pieces, including long ones that no cache holds.
func TestMergeMatchesNaive(t *testing.T) {
	tok := gpt2(t)
	_, mergesTxt := gpt2Files(t)
	ms, err := parseMergesTxt(mergesTxt, "merges.txt")
	if err != nil {
		t.Fatal(err)
	}
	ranks := make(map[[2]string]int, len(ms))
	for i, m := range ms {
		ranks[[2]string{m.a, m.b}] = i
	}
	r := rand.New(rand.NewPCG(7, 8))
	alphabets := []string{"aeinrst", "abcdefghijklmnopqrstuvwxyz", "ab", "  \n", "0123456789", "éà中"}
	w := new(word)
	for i := 0; i < 3000; i++ {
		alpha := alphabets[r.IntN(len(alphabets))]
		var sb strings.Builder
		n := 1 + r.IntN(40)
		if i%100 == 0 {
			n = 600
		}
		if r.IntN(2) == 0 {
			sb.WriteByte(' ')
		}
		for sb.Len() < n {
			sb.WriteString(string([]rune(alpha)[r.IntN(utf8.RuneCountInString(alpha))]))
		}
		piece := sb.String()
		got := tok.merge(w, piece)
		want := naiveMerge(tok, ranks, piece)
		if !slices.Equal(toInts(got), want) {
			t.Fatalf("%q: merge %v, naive %v", piece, got, want)
		}
	}
}

func toInts(ids []int32) []int {
	out := make([]int, len(ids))
	for i, id := range ids {
		out[i] = int(id)
	}
	return out
}

func TestEncodeLongText(t *testing.T) {
	tok := gpt2(t)
	for _, s := range []string{
		strings.Repeat("a", 100000),
		strings.Repeat(" ", 100000),
		strings.Repeat("ab1 .", 20000),
		strings.Repeat("中", 30000),
	} {
		ids := tok.Encode(s)
		if got, err := tok.Decode(ids); err != nil || got != s {
			t.Fatalf("round trip of %d bytes failed: %v", len(s), err)
		}
	}
}

func TestCacheBounded(t *testing.T) {
	vocab, merges := gpt2Files(t)
	tok, err := LoadGPT2(vocab, merges)
	if err != nil {
		t.Fatal(err)
	}
	var sb strings.Builder
	for i := 0; i < 3*maxCacheEntries; i++ {
		sb.WriteString(" w")
		for n := i; n > 0; n /= 26 {
			sb.WriteByte(byte('a' + n%26))
		}
	}
	text := sb.String()
	ids := tok.Encode(text)
	if n := len(tok.cache.m); n == 0 || n > maxCacheEntries {
		t.Errorf("cache holds %d entries", n)
	}
	if !slices.Equal(tok.Encode(text), ids) {
		t.Error("encoding changed with a warm cache")
	}
	tok.noCache = true
	if !slices.Equal(tok.Encode(text), ids) {
		t.Error("encoding changed without the cache")
	}
}

func TestConcurrentEncode(t *testing.T) {
	tok := gpt2(t)
	want := make([][]int, len(referenceTexts))
	for i, s := range referenceTexts {
		want[i] = tok.Encode(s)
	}
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i, s := range referenceTexts {
				if got := tok.Encode(s); !slices.Equal(got, want[i]) {
					t.Errorf("%q: concurrent Encode differs", s)
				}
			}
		}()
	}
	wg.Wait()
}

func TestDecodeErrors(t *testing.T) {
	tok := gpt2(t)
	for _, ids := range [][]int{{50257}, {15496, -1}, {1 << 30}} {
		if _, err := tok.Decode(ids); err == nil || !strings.Contains(err.Error(), "unknown token id") {
			t.Errorf("Decode(%v): error %v", ids, err)
		}
	}
	_, err := tok.Decode([]int{15496, 99999})
	if err == nil || !strings.Contains(err.Error(), "99999 at position 1") {
		t.Errorf("error should name the id and position: %v", err)
	}
}

// byteTokens returns the ids of the one-byte tokens spelling s.
func byteTokens(tok *BPE, s string) []int {
	var ids []int
	for i := 0; i < len(s); i++ {
		ids = append(ids, int(tok.byteID[s[i]]))
	}
	return ids
}

func TestDecodeInvalidUTF8(t *testing.T) {
	tok := gpt2(t)
	emoji := byteTokens(tok, "😀") // F0 9F 98 80
	for _, c := range []struct {
		ids  []int
		want string
	}{
		{emoji, "😀"},
		{emoji[:3], "\uFFFD"}, // a truncated character is one U+FFFD
		{append(slices.Clone(emoji[:2]), tok.Encode("ok")...), "\uFFFDok"}, // so is an interrupted one
		{append(slices.Clone(emoji[1:]), emoji[1:]...), "\uFFFD\uFFFD\uFFFD\uFFFD\uFFFD\uFFFD"},
		{byteTokens(tok, "\xed\xa0\x80"), "\uFFFD\uFFFD\uFFFD"}, // a surrogate's encoding
	} {
		got, err := tok.Decode(c.ids)
		if err != nil || got != c.want {
			t.Errorf("Decode(%v) = %q, %v; want %q", c.ids, got, err, c.want)
		}
	}
}

func TestStreamDecoder(t *testing.T) {
	tok := gpt2(t)
	d := tok.NewStreamDecoder()
	var got []string
	for _, id := range append(tok.Encode("Hi "), byteTokens(tok, "😀")...) {
		s, err := d.Add(id)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, s)
	}
	if want := []string{"Hi", " ", "", "", "", "😀"}; !slices.Equal(got, want) {
		t.Errorf("stream: %q, want %q", got, want)
	}
	if d.Pending() || d.Flush() != "" {
		t.Error("nothing should be pending")
	}
	if _, err := d.Add(-5); err == nil {
		t.Error("Add(-5) succeeded")
	}
	d.Add(byteTokens(tok, "é")[0])
	if !d.Pending() {
		t.Error("half a character should be pending")
	}
	if s := d.Flush(); s != "\uFFFD" {
		t.Errorf("Flush: %q", s)
	}

	// Random ids, many of them single bytes of multi-byte characters: the
	// pieces are valid UTF-8, at most 3 bytes are held, and together they
	// equal Decode.
	r := rand.New(rand.NewPCG(9, 10))
	frag := byteTokens(tok, "😀é中\x80\xff")
	for i := 0; i < 2000; i++ {
		var ids []int
		for n := r.IntN(12); n > 0; n-- {
			if r.IntN(2) == 0 {
				ids = append(ids, frag[r.IntN(len(frag))])
			} else {
				ids = append(ids, r.IntN(50257))
			}
		}
		want, err := tok.Decode(ids)
		if err != nil {
			t.Fatal(err)
		}
		d := tok.NewStreamDecoder()
		var sb strings.Builder
		for _, id := range ids {
			s, err := d.Add(id)
			if err != nil {
				t.Fatal(err)
			}
			if !utf8.ValidString(s) {
				t.Fatalf("%v: Add returned invalid UTF-8 %q", ids, s)
			}
			if len(d.pending) > 3 {
				t.Fatalf("%v: %d bytes held", ids, len(d.pending))
			}
			sb.WriteString(s)
		}
		sb.WriteString(d.Flush())
		if sb.String() != want {
			t.Fatalf("%v: stream %q, Decode %q", ids, sb.String(), want)
		}
	}
}

func FuzzEncode(f *testing.F) {
	for _, s := range referenceTexts[:len(referenceTexts)-1] {
		f.Add(s)
	}
	f.Add("\xff\xfe invalid \xc3")
	f.Add("'s'''''t 're")
	tok := gpt2(f)
	f.Fuzz(func(t *testing.T, s string) {
		ids := tok.Encode(s)
		b, err := tok.DecodeBytes(ids)
		if err != nil || string(b) != s {
			t.Fatalf("DecodeBytes(Encode(%q)) = %q, %v", s, b, err)
		}
		if utf8.ValidString(s) {
			if got, err := tok.Decode(ids); err != nil || got != s {
				t.Fatalf("Decode(Encode(%q)) = %q, %v", s, got, err)
			}
		}
	})
}

func BenchmarkEncode(b *testing.B) {
	tok := gpt2(b)
	b.SetBytes(int64(len(englishText)))
	for b.Loop() {
		tok.Encode(englishText)
	}
}

func BenchmarkEncodeNoCache(b *testing.B) {
	vocab, merges := gpt2Files(b)
	tok, err := LoadGPT2(vocab, merges)
	if err != nil {
		b.Fatal(err)
	}
	tok.noCache = true
	b.SetBytes(int64(len(englishText)))
	for b.Loop() {
		tok.Encode(englishText)
	}
}

func BenchmarkDecode(b *testing.B) {
	tok := gpt2(b)
	ids := tok.Encode(englishText)
	b.SetBytes(int64(len(englishText)))
	for b.Loop() {
		tok.Decode(ids)
	}
}

func BenchmarkLoadGPT2(b *testing.B) {
	vocab, merges := gpt2Files(b)
	for b.Loop() {
		if _, err := LoadGPT2(vocab, merges); err != nil {
			b.Fatal(err)
		}
	}
}

// appendPieces appends the [start, end) bounds of the pieces of s.
func appendPieces(dst [][2]int, s string) [][2]int {
	for i := 0; i < len(s); {
		j := nextPiece(s, i)
		dst = append(dst, [2]int{i, j})
		i = j
	}
	return dst
}
