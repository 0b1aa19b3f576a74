package tokenizer

import (
	"unicode"
	"unicode/utf8"
)

// GPT-2 splits text into pieces with the regular expression
//
//	's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//
// before BPE is applied to each piece separately. Go's regexp has no
// lookahead, so nextPiece implements the same leftmost-first matching by hand.
//
// Character classes: \s is unicode.IsSpace (the Unicode White_Space property,
// as in Python's regex module and Oniguruma, which HF tokenizers uses), \p{L}
// is unicode.IsLetter and \p{N} is unicode.IsNumber. A byte that is not part
// of valid UTF-8 is classed like punctuation ([^\s\p{L}\p{N}]).

type charClass uint8

const (
	classOther charClass = iota
	classLetter
	classNumber
	classSpace
)

var asciiClass [utf8.RuneSelf]charClass

func init() {
	for c := 0; c < utf8.RuneSelf; c++ {
		asciiClass[c] = classOfRune(rune(c))
	}
}

func classOfRune(r rune) charClass {
	switch {
	case unicode.IsSpace(r):
		return classSpace
	case unicode.IsLetter(r):
		return classLetter
	case unicode.IsNumber(r):
		return classNumber
	}
	return classOther
}

// classAt returns the class of the character starting at s[i] and its size
// in bytes. An invalid UTF-8 byte is one character of classOther.
func classAt(s string, i int) (charClass, int) {
	c := s[i]
	if c < utf8.RuneSelf {
		return asciiClass[c], 1
	}
	r, size := utf8.DecodeRuneInString(s[i:])
	if r == utf8.RuneError && size == 1 {
		return classOther, 1
	}
	return classOfRune(r), size
}

// nextPiece returns the end of the piece of s that starts at i (i < len(s)).
func nextPiece(s string, i int) int {
	n := len(s)
	c := s[i]
	// 's|'t|'re|'ve|'m|'ll|'d
	if c == '\'' && i+1 < n {
		switch s[i+1] {
		case 's', 't', 'm', 'd':
			return i + 2
		case 'r', 'v':
			if i+2 < n && s[i+2] == 'e' {
				return i + 3
			}
		case 'l':
			if i+2 < n && s[i+2] == 'l' {
				return i + 3
			}
		}
	}
	start := i
	// The optional leading space of ` ?\p{L}+`, ` ?\p{N}+` and
	// ` ?[^\s\p{L}\p{N}]+`: taken when a non-space character follows it.
	if c == ' ' && i+1 < n {
		if cls, _ := classAt(s, i+1); cls != classSpace {
			i++
		}
	}
	cls, size := classAt(s, i)
	j := i + size
	if cls != classSpace {
		// A run of letters, of numbers, or of other characters.
		for j < n {
			c2, sz := classAt(s, j)
			if c2 != cls {
				break
			}
			j += sz
		}
		return j
	}
	// Whitespace (here i == start). \s+(?!\S) takes the whole run when it
	// ends the text, and otherwise all of it but its last character, which
	// then begins the next piece; a run of one character followed by a
	// non-space falls through to \s+.
	last := i
	for j < n {
		c2, sz := classAt(s, j)
		if c2 != classSpace {
			break
		}
		last = j
		j += sz
	}
	if j < n && last > start {
		return last
	}
	return j
}
