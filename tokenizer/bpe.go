package tokenizer

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"unicode"
	"unicode/utf8"
)

// BPE is a byte-level BPE tokenizer (GPT-2, OPT). It is safe for concurrent
// use once loaded, except for SetSpecialTokens, which must not run
// concurrently with anything else.
type BPE struct {
	vocab  map[string]int // token string (byte-level alphabet) -> id
	tokens []string       // id -> token string; "" where no token has the id
	bytes  [][]byte       // id -> the bytes it decodes to; nil where no token has the id
	has    []bool         // id -> whether a token has the id

	byteID [256]int32         // id of the one-character token for each byte
	merges map[uint64]mergeTo // (left id, right id) -> rank and result

	addPrefixSpace bool             // ByteLevel add_prefix_space
	useRegex       bool             // ByteLevel use_regex
	ignoreMerges   bool             // BPE ignore_merges: whole pieces found in the vocab win
	rawVocab       map[string]int32 // decoded bytes -> id, for ignoreMerges

	added   []addedToken    // split out of text before pre-tokenization
	passes  [2][]addedToken // added, non-normalized first (see encode)
	special []bool          // id -> whether it is a special token

	warnings []string // see Warnings

	cache   wordCache
	noCache bool // tests and benchmarks only
}

type mergeTo struct {
	rank int32
	id   int32
}

func pairKey(a, b int32) uint64 { return uint64(uint32(a))<<32 | uint64(uint32(b)) }

// addedToken is a token matched verbatim in text (HF "added_tokens").
type addedToken struct {
	content    string
	id         int
	special    bool
	normalized bool // HF: matched only in the text the others leave
	singleWord bool
	lstrip     bool
	rstrip     bool
}

// VocabSize returns one more than the largest token id.
func (t *BPE) VocabSize() int { return len(t.tokens) }

// TokenID returns the id of a token given in its vocabulary spelling
// (byte-level alphabet, e.g. "Ġthe", or a special token such as "</s>").
func (t *BPE) TokenID(token string) (int, bool) {
	id, ok := t.vocab[token]
	return id, ok
}

// Token returns the vocabulary spelling of id.
func (t *BPE) Token(id int) (string, bool) {
	if id < 0 || id >= len(t.has) || !t.has[id] {
		return "", false
	}
	return t.tokens[id], true
}

// IsSpecial reports whether id is a special token (see SetSpecialTokens).
func (t *BPE) IsSpecial(id int) bool {
	return id >= 0 && id < len(t.special) && t.special[id]
}

// Warnings returns what loading found wrong but not fatal, each naming its
// file: a token that special_tokens_map.json names but the vocabulary and
// the added tokens lack (it is then ordinary text).
func (t *BPE) Warnings() []string { return slices.Clone(t.warnings) }

// SpecialTokens returns the tokens that Encode recognises verbatim in text
// (all added tokens, special or not: a tokenizer.json's added_tokens, the
// entries of added_tokens.json).
func (t *BPE) SpecialTokens() []string {
	out := make([]string, len(t.added))
	for i, a := range t.added {
		out[i] = a.content
	}
	return out
}

// SetSpecialTokens replaces the set of tokens that Encode recognises
// verbatim in text (and that IsSpecial reports), e.g. "</s>", including
// the added tokens of a tokenizer.json or added_tokens.json. Each must be
// a token of the vocabulary. With no arguments, all text is encoded as
// ordinary text. Not safe to call concurrently with other methods.
func (t *BPE) SetSpecialTokens(tokens ...string) error {
	added := make([]addedToken, 0, len(tokens))
	seen := map[string]bool{}
	for _, tok := range tokens {
		if tok == "" {
			return fmt.Errorf("tokenizer: empty special token")
		}
		id, ok := t.vocab[tok]
		if !ok {
			return fmt.Errorf("tokenizer: special token %q is not in the vocabulary", tok)
		}
		if seen[tok] {
			continue
		}
		seen[tok] = true
		added = append(added, addedToken{content: tok, id: id, special: true})
	}
	t.setAdded(added)
	return nil
}

// setAdded makes added the tokens split out of text.
func (t *BPE) setAdded(added []addedToken) {
	t.added = added
	t.passes = [2][]addedToken{}
	t.special = make([]bool, len(t.tokens))
	for _, a := range added {
		t.special[a.id] = a.special
		pass := 0
		if a.normalized {
			pass = 1
		}
		t.passes[pass] = append(t.passes[pass], a)
	}
}

// Encode returns the token ids of text, without BOS. Occurrences of the
// special tokens (SpecialTokens) in text become those tokens; the rest is
// split into pieces by GPT-2's pre-tokenization pattern and each piece is
// BPE-encoded from its UTF-8 bytes. Invalid UTF-8 is encoded byte by byte,
// so DecodeBytes(Encode(s)) == s for every s, unless the tokenizer changes
// whitespace: a tokenizer.json's add_prefix_space (which makes "hi" and
// " hi" one encoding) or an added token with lstrip or rstrip (which takes
// in the whitespace beside it).
//
// Added tokens are split out as HF's fast tokenizers do: first those not
// normalized (special tokens by default), leftmost and then longest first;
// then the normalized ones, in the text between those.
func (t *BPE) Encode(text string) []int {
	return t.encode(nil, text, true)
}

// EncodeWithBOS is Encode with bos prepended: OPT prompts start with "</s>"
// (id 2).
func (t *BPE) EncodeWithBOS(text string, bos int) []int {
	return t.encode([]int{bos}, text, true)
}

// EncodeOrdinary is Encode treating special-token text as ordinary text
// ("</s>" becomes "<", "/", "s", ">"): for text from untrusted sources.
func (t *BPE) EncodeOrdinary(text string) []int {
	return t.encode(nil, text, false)
}

func (t *BPE) encode(dst []int, text string, specials bool) []int {
	if !specials || len(t.added) == 0 {
		return t.encodeSegment(dst, text)
	}
	if len(t.passes[0]) == 0 || len(t.passes[1]) == 0 {
		return t.splitAdded(dst, text, t.added, nil) // one pass does
	}
	return t.splitAdded(dst, text, t.passes[0], t.passes[1])
}

// splitAdded encodes text, the added tokens of list split out; the text
// between them is split on the tokens of then, if any, and BPE-encoded.
func (t *BPE) splitAdded(dst []int, text string, list, then []addedToken) []int {
	rest := func(dst []int, s string) []int {
		if len(then) > 0 {
			return t.splitAdded(dst, s, then, nil)
		}
		return t.encodeSegment(dst, s)
	}
	next := make([]int, len(list)) // next occurrence of each token at or after from; -1: none
	for i := range next {
		next[i] = -2
	}
	pos := 0  // start of the text not yet encoded
	from := 0 // where to search for the next match
	for {
		best, bestAt := -1, -1
		for i := range list {
			if next[i] != -1 && next[i] < from {
				next[i] = indexFrom(text, list[i].content, from)
			}
			if at := next[i]; at >= 0 && (bestAt < 0 || at < bestAt ||
				at == bestAt && len(list[i].content) > len(list[best].content)) {
				best, bestAt = i, at
			}
		}
		if best < 0 {
			break
		}
		a := &list[best]
		start, end := bestAt, bestAt+len(a.content)
		from = end
		if a.singleWord && !(wordBoundaryBefore(text, start) && wordBoundaryAfter(text, end)) {
			continue
		}
		if a.lstrip {
			for start > pos {
				r, size := utf8.DecodeLastRuneInString(text[pos:start])
				if !unicode.IsSpace(r) {
					break
				}
				start -= size
			}
		}
		if a.rstrip {
			for end < len(text) {
				r, size := utf8.DecodeRuneInString(text[end:])
				if !unicode.IsSpace(r) {
					break
				}
				end += size
			}
			from = end
		}
		dst = rest(dst, text[pos:start])
		dst = append(dst, a.id)
		pos = end
	}
	return rest(dst, text[pos:])
}

func indexFrom(s, sub string, from int) int {
	if i := strings.Index(s[from:], sub); i >= 0 {
		return from + i
	}
	return -1
}

// isWordChar reports whether r is a word character for single_word added
// tokens: HF's \w of Rust's regex crate, Unicode's Alphabetic (letters,
// Nl, Other_Alphabetic), Mark, Decimal_Number, Connector_Punctuation and
// Join_Control.
func isWordChar(r rune) bool {
	return unicode.IsLetter(r) || unicode.In(r, unicode.Nl, unicode.Other_Alphabetic, unicode.M,
		unicode.Nd, unicode.Pc, unicode.Join_Control)
}

func wordBoundaryBefore(s string, i int) bool {
	if i == 0 {
		return true
	}
	r, _ := utf8.DecodeLastRuneInString(s[:i])
	return !isWordChar(r)
}

func wordBoundaryAfter(s string, i int) bool {
	if i == len(s) {
		return true
	}
	r, _ := utf8.DecodeRuneInString(s[i:])
	return !isWordChar(r)
}

// encodeSegment encodes text that contains no special token.
func (t *BPE) encodeSegment(dst []int, text string) []int {
	if text == "" {
		return dst
	}
	if t.addPrefixSpace && text[0] != ' ' {
		text = " " + text
	}
	if !t.useRegex {
		return t.encodePiece(dst, text)
	}
	for i := 0; i < len(text); {
		j := nextPiece(text, i)
		dst = t.encodePiece(dst, text[i:j])
		i = j
	}
	return dst
}

// encodePiece BPE-encodes one pre-token.
func (t *BPE) encodePiece(dst []int, piece string) []int {
	if len(piece) == 1 {
		return append(dst, int(t.byteID[piece[0]]))
	}
	if t.ignoreMerges {
		if id, ok := t.rawVocab[piece]; ok {
			return append(dst, int(id))
		}
	}
	cacheable := !t.noCache && len(piece) <= maxCachedPiece
	if cacheable {
		if ids, ok := t.cache.get(piece); ok {
			for _, id := range ids {
				dst = append(dst, int(id))
			}
			return dst
		}
	}
	w := wordPool.Get().(*word)
	ids := t.merge(w, piece)
	for _, id := range ids {
		dst = append(dst, int(id))
	}
	if cacheable {
		t.cache.put(piece, append([]int32(nil), ids...))
	}
	wordPool.Put(w)
	return dst
}

// word is the scratch space of merge.
type word struct {
	syms []symbol
	heap []candidate
	out  []int32
}

type symbol struct {
	id         int32 // -1 once merged into its left neighbour
	prev, next int32 // indices in syms; -1 for none
}

// candidate is a possible merge of the symbols at pos and syms[pos].next,
// valid while their ids are still left and right.
type candidate struct {
	rank        int32
	pos         int32
	left, right int32
	id          int32
}

func (c candidate) less(d candidate) bool {
	return c.rank < d.rank || c.rank == d.rank && c.pos < d.pos
}

var wordPool = sync.Pool{New: func() any { return new(word) }}

// merge applies the merges to the bytes of piece: repeatedly the
// lowest-ranked adjacent pair is merged, leftmost first among equal ranks,
// until no adjacent pair has a merge. The result aliases w.
func (t *BPE) merge(w *word, piece string) []int32 {
	n := len(piece)
	syms := w.syms[:0]
	for i := 0; i < n; i++ {
		syms = append(syms, symbol{id: t.byteID[piece[i]], prev: int32(i - 1), next: int32(i + 1)})
	}
	syms[n-1].next = -1
	w.syms = syms
	w.heap = w.heap[:0]
	for i := 0; i+1 < n; i++ {
		w.push(t, int32(i), syms[i].id, syms[i+1].id)
	}
	for len(w.heap) > 0 {
		c := w.pop()
		l := &syms[c.pos]
		if l.id != c.left || l.next < 0 {
			continue
		}
		r := &syms[l.next]
		if r.id != c.right {
			continue
		}
		l.id = c.id
		r.id = -1
		l.next = r.next
		if r.next >= 0 {
			syms[r.next].prev = c.pos
		}
		if l.prev >= 0 {
			w.push(t, l.prev, syms[l.prev].id, l.id)
		}
		if l.next >= 0 {
			w.push(t, c.pos, l.id, syms[l.next].id)
		}
	}
	out := w.out[:0]
	for i := int32(0); i >= 0; i = syms[i].next {
		out = append(out, syms[i].id)
	}
	w.out = out
	return out
}

func (w *word) push(t *BPE, pos, left, right int32) {
	m, ok := t.merges[pairKey(left, right)]
	if !ok {
		return
	}
	w.heap = append(w.heap, candidate{rank: m.rank, pos: pos, left: left, right: right, id: m.id})
	h := w.heap
	i := len(h) - 1
	for i > 0 {
		p := (i - 1) / 2
		if !h[i].less(h[p]) {
			break
		}
		h[i], h[p] = h[p], h[i]
		i = p
	}
}

func (w *word) pop() candidate {
	h := w.heap
	top := h[0]
	last := len(h) - 1
	h[0] = h[last]
	h = h[:last]
	i := 0
	for {
		l := 2*i + 1
		if l >= len(h) {
			break
		}
		m := l
		if r := l + 1; r < len(h) && h[r].less(h[l]) {
			m = r
		}
		if !h[m].less(h[i]) {
			break
		}
		h[i], h[m] = h[m], h[i]
		i = m
	}
	w.heap = h
	return top
}

// wordCache is a bounded cache of the ids of recently encoded pieces. When
// it is full it is emptied, which keeps it simple and its memory bounded.
type wordCache struct {
	mu sync.RWMutex
	m  map[string][]int32
}

const (
	maxCachedPiece  = 256   // longer pieces are not cached
	maxCacheEntries = 16384 // entries before the cache is emptied
)

func (c *wordCache) get(piece string) ([]int32, bool) {
	c.mu.RLock()
	ids, ok := c.m[piece]
	c.mu.RUnlock()
	return ids, ok
}

func (c *wordCache) put(piece string, ids []int32) {
	c.mu.Lock()
	if c.m == nil || len(c.m) >= maxCacheEntries {
		c.m = make(map[string][]int32, 1024)
	}
	c.m[strings.Clone(piece)] = ids // the piece may point into a large text
	c.mu.Unlock()
}
