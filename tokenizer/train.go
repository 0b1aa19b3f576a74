package tokenizer

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
)

// TrainBPE learns a byte-level BPE from text: the text is split into
// pieces as Encode splits it (GPT-2's pre-tokenizer), and then, starting
// from the 256 single bytes, the most frequent adjacent pair of tokens
// over all pieces (weighted by how often each piece occurs) is merged into
// a new token, until the vocabulary has vocab tokens or no pair occurs
// twice. Ties go to the pair whose spelling (left, then right) sorts
// first, so the result depends only on the text.
//
// It returns a vocabulary in the files LoadGPT2 reads: vocab.json (the
// specials at ids 0.., the 256 byte tokens in byte order after them, then
// the merged tokens in the order they were learnt) and merges.txt.
func TrainBPE(text string, vocab int, specials []string) (vocabJSON, merges []byte, err error) {
	base := len(specials) + 256
	if vocab < base {
		return nil, nil, fmt.Errorf("tokenizer: train: vocabulary %d is smaller than the %d specials and 256 bytes", vocab, len(specials))
	}
	// The pieces, each once with its count, as token ids (bytes first).
	counts := map[string]int{}
	for i := 0; i < len(text); {
		j := nextPiece(text, i)
		counts[text[i:j]]++
		i = j
	}
	words := make([][]int32, 0, len(counts))
	freq := make([]int, 0, len(counts))
	for piece, n := range counts {
		w := make([]int32, len(piece))
		for k := 0; k < len(piece); k++ {
			w[k] = int32(piece[k])
		}
		words = append(words, w)
		freq = append(freq, n)
	}
	spell := make([]string, 256, vocab-len(specials))
	for b := range 256 {
		spell[b] = byteLevelEncode([]byte{byte(b)})
	}
	idOf := make(map[string]int32, cap(spell))
	for b, sp := range spell {
		idOf[sp] = int32(b)
	}
	type pair struct{ a, b int32 }
	pairs := map[pair]int{}
	where := map[pair][]int{} // words that held the pair when it was counted (may be stale)
	for wi, w := range words {
		for k := 0; k+1 < len(w); k++ {
			p := pair{w[k], w[k+1]}
			pairs[p] += freq[wi]
			where[p] = append(where[p], wi)
		}
	}
	var lines []string
	for len(spell) < vocab-len(specials) {
		best, bestN := pair{-1, -1}, 1
		for p, n := range pairs {
			if n > bestN || n == bestN && best.a >= 0 && lessPair(spell, p.a, p.b, best.a, best.b) {
				best, bestN = p, n
			}
		}
		if best.a < 0 {
			break // no pair occurs twice
		}
		// A merge that spells an existing token reuses its id, so the
		// vocabulary has no holes. Greedy merging seems never to produce
		// one (no run on the KJV text or 220k random corpora did), but
		// nothing here proves it.
		merged := spell[best.a] + spell[best.b]
		id, known := idOf[merged]
		if !known {
			id = int32(len(spell))
			spell = append(spell, merged)
			idOf[merged] = id
		}
		lines = append(lines, spell[best.a]+" "+spell[best.b])
		seen := map[int]bool{}
		for _, wi := range where[best] {
			if seen[wi] {
				continue
			}
			seen[wi] = true
			w, f := words[wi], freq[wi]
			out := w[:0:0]
			for k := 0; k < len(w); k++ {
				if k+1 < len(w) && w[k] == best.a && w[k+1] == best.b {
					out = append(out, id)
					k++
				} else {
					out = append(out, w[k])
				}
			}
			if len(out) == len(w) {
				continue // a stale entry: the pair is no longer in this word
			}
			for k := 0; k+1 < len(w); k++ {
				p := pair{w[k], w[k+1]}
				if pairs[p] -= f; pairs[p] <= 0 {
					delete(pairs, p)
				}
			}
			for k := 0; k+1 < len(out); k++ {
				p := pair{out[k], out[k+1]}
				pairs[p] += f
				if out[k] == id || out[k+1] == id {
					where[p] = append(where[p], wi)
				}
			}
			words[wi] = out
		}
		delete(pairs, best)
		delete(where, best)
	}
	ids := make(map[string]int, len(specials)+len(spell))
	for i, s := range specials {
		ids[s] = i
	}
	for i, s := range spell {
		if _, dup := ids[s]; dup {
			return nil, nil, fmt.Errorf("tokenizer: train: special token %q is also a learnt token", s)
		}
		ids[s] = len(specials) + i
	}
	var vb bytes.Buffer
	enc := json.NewEncoder(&vb)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(ids); err != nil {
		return nil, nil, err
	}
	return vb.Bytes(), []byte("#version: 0.2\n" + strings.Join(lines, "\n") + "\n"), nil
}

// lessPair orders pairs by their spellings: left token, then right.
func lessPair(spell []string, a1, b1, a2, b2 int32) bool {
	if spell[a1] != spell[a2] {
		return spell[a1] < spell[a2]
	}
	return spell[b1] < spell[b2]
}
