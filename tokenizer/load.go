package tokenizer

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// DefaultSpecialTokens are the tokens that LoadGPT2 makes special when the
// vocabulary has them: those HF's OPT tokenizer matches verbatim in text
// (its bos/eos/unk "</s>" and pad "<pad>"). OPT's "<s>" and "<unk>" are
// ordinary text for HF and here. Change the set with SetSpecialTokens.
var DefaultSpecialTokens = []string{"</s>", "<pad>"}

// maxTokenID bounds ids, which index dense tables (real vocabularies stay
// below 300k). A file's ids are also bounded by its number of tokens: see
// idLimit.
const maxTokenID = 1<<22 - 1

// idLimit is the largest id a vocabulary of n tokens (vocabulary and added
// tokens together) may use. Ids index dense tables, and Hugging Face's
// vocabularies are dense (ids 0..n-1, added tokens after them), so this
// refuses no real file, only one that would make a few bytes of JSON cost
// hundreds of megabytes.
func idLimit(n int) int { return min(maxTokenID, 2*n+1024) }

// pastLimit says that id is past limit, for nVocab tokens and nAdded added.
func pastLimit(id int64, limit, nVocab, nAdded int) string {
	tokens := fmt.Sprintf("%d tokens", nVocab)
	if nAdded > 0 {
		tokens += fmt.Sprintf(" and %d added", nAdded)
	}
	return fmt.Sprintf("id %d is past %d, the largest a vocabulary of %s may use (ids are dense)", id, limit, tokens)
}

// LoadGPT2 loads a tokenizer from GPT-2 style files: vocab.json (a JSON
// object of token -> id) and merges.txt (an optional "#version" line, then
// one "left right" pair a line, in rank order; blank lines are ignored).
//
// A merge whose tokens, or whose merged token, are not in the vocabulary is
// an error, as in HF tokenizers (MergeTokenOutOfVocabulary). So are a
// duplicated merge (HF silently keeps the later rank), two tokens with one
// id, a token listed twice, a vocabulary lacking a token for one of the
// 256 byte tokens (byte-level BPE needs them all), and an id far beyond
// the number of tokens (see idLimit).
//
// The tokens of DefaultSpecialTokens found in the vocabulary are special.
func LoadGPT2(vocabJSON, merges []byte) (*BPE, error) {
	return loadSlow(slowFiles{vocab: vocabJSON, merges: merges},
		func(name string) string { return name })
}

// slowFiles are the files of transformers' "slow" GPT-2 tokenizer; added
// and specialMap may be nil.
type slowFiles struct {
	vocab, merges, added, specialMap []byte
}

// loadSlow loads vocab.json and merges.txt with the tokens of
// added_tokens.json and the special tokens of special_tokens_map.json
// (without it, DefaultSpecialTokens). at gives a file's name in errors.
func loadSlow(f slowFiles, at func(string) string) (*BPE, error) {
	vocabName, mergesName := at("vocab.json"), at("merges.txt")
	addedName, mapName := at(AddedTokensFile), at(SpecialTokensMapFile)
	vocab, err := parseVocab(f.vocab, vocabName)
	if err != nil {
		return nil, err
	}
	ms, err := parseMergesTxt(f.merges, mergesName)
	if err != nil {
		return nil, err
	}
	var addedIDs map[string]int
	if f.added != nil {
		if addedIDs, err = parseVocab(f.added, addedName); err != nil {
			return nil, err
		}
	}
	var specials []mapToken
	if f.specialMap != nil {
		if specials, err = parseSpecialTokensMap(f.specialMap, mapName); err != nil {
			return nil, err
		}
	} else {
		for _, s := range DefaultSpecialTokens {
			_, inVocab := vocab[s]
			_, inAdded := addedIDs[s]
			if inVocab || inAdded {
				specials = append(specials, mapToken{content: s})
			}
		}
	}
	// As transformers reads added_tokens.json: each entry an added token,
	// special (and then not normalized) when the special tokens name it,
	// with no lstrip, rstrip or single_word.
	list := make([]tjAdded, 0, len(addedIDs))
	for content, id := range addedIDs {
		special := slices.ContainsFunc(specials, func(m mapToken) bool { return m.content == content })
		normalized := !special
		list = append(list, tjAdded{ID: ptr(int64(id)), Content: ptr(content), Special: special, Normalized: &normalized})
	}
	slices.SortFunc(list, func(a, b tjAdded) int { return cmp.Compare(*a.ID, *b.ID) })
	t, err := build(vocab, vocabName, ms, len(list), func(m mergeSpec) string {
		return fmt.Sprintf("%s line %d", mergesName, m.pos)
	})
	if err != nil {
		return nil, err
	}
	if err := t.addTokens(list, addedName, func(_ int, content string) string {
		return fmt.Sprintf("token %q", content)
	}); err != nil {
		return nil, err
	}
	t.warnings = t.applySpecial(specials, mapName)
	return t, nil
}

func ptr[T any](v T) *T { return &v }

// LoadDir loads the tokenizer of a model directory: tokenizer.json when it
// exists, otherwise vocab.json and merges.txt. Errors name the file.
func LoadDir(dir string) (*BPE, error) { return LoadFS(os.DirFS(dir), dir) }

// LoadFS is LoadDir on the root of fsys (an embedded model, say); where
// names it in errors.
func LoadFS(fsys fs.FS, where string) (*BPE, error) {
	files, err := ReadFS(fsys, where)
	if err != nil {
		return nil, err
	}
	return LoadFiles(files, where)
}

// ReadFS reads the tokenizer files at the root of fsys that LoadFiles
// takes: tokenizer.json when it exists, otherwise vocab.json and
// merges.txt, with added_tokens.json and special_tokens_map.json when
// present. A missing file of the set is an error wrapping fs.ErrNotExist;
// where names the folder in errors.
func ReadFS(fsys fs.FS, where string) (map[string][]byte, error) {
	read := func(name string) ([]byte, error) {
		b, err := fs.ReadFile(fsys, name)
		if err != nil {
			return nil, fmt.Errorf("tokenizer: %s: %w", filepath.Join(where, name), err)
		}
		return b, nil
	}
	if b, err := read("tokenizer.json"); err == nil {
		return map[string][]byte{"tokenizer.json": b}, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	files := map[string][]byte{}
	for _, name := range []string{"vocab.json", "merges.txt", AddedTokensFile, SpecialTokensMapFile} {
		b, err := read(name)
		switch {
		case err == nil:
			files[name] = b
		case (name == SpecialTokensMapFile || name == AddedTokensFile) && errors.Is(err, fs.ErrNotExist):
			// optional: DefaultSpecialTokens, no added tokens
		case name == "vocab.json" && errors.Is(err, fs.ErrNotExist):
			return nil, fmt.Errorf("%w (and no tokenizer.json)", err)
		default:
			return nil, err
		}
	}
	return files, nil
}

// ErrFiles is wrapped when a set of tokenizer files is incomplete.
var ErrFiles = errors.New("tokenizer needs tokenizer.json, or vocab.json and merges.txt")

// LoadFiles loads a tokenizer from its files by name, as LoadDir reads
// them from a directory (a container carries them so): tokenizer.json
// when present, otherwise vocab.json and merges.txt with the tokens of
// added_tokens.json and the special tokens of special_tokens_map.json
// when present (see ApplySpecialTokensMap; a token the map names that the
// files lack is a warning, see Warnings). Errors name each file in the
// folder where ("" for none: a container's own errors say which).
func LoadFiles(files map[string][]byte, where string) (*BPE, error) {
	at := func(name string) string { return filepath.Join(where, name) }
	if tj, ok := files["tokenizer.json"]; ok {
		return loadTokenizerJSON(tj, at("tokenizer.json"))
	}
	vocab, merges := files["vocab.json"], files["merges.txt"]
	if vocab == nil || merges == nil {
		if where != "" {
			return nil, fmt.Errorf("%s: %w", where, ErrFiles)
		}
		return nil, ErrFiles
	}
	// The special tokens the model's files name (GPT-2's "<|endoftext|>",
	// OPT's "</s>" and "<pad>"), as Hugging Face reads them; without the
	// map, DefaultSpecialTokens.
	return loadSlow(slowFiles{vocab: vocab, merges: merges,
		added: files[AddedTokensFile], specialMap: files[SpecialTokensMapFile]}, at)
}

// SpecialTokensMapFile is Hugging Face's file naming a GPT-2 style
// tokenizer's special tokens.
const SpecialTokensMapFile = "special_tokens_map.json"

// AddedTokensFile is the file in which transformers' slow tokenizers keep
// the tokens added to vocab.json: a JSON object of token -> id.
const AddedTokensFile = "added_tokens.json"

// ApplySpecialTokensMap makes special (instead of DefaultSpecialTokens or
// the special tokens t had) the tokens of t that a special_tokens_map.json
// (b, read from name) names; t's non-special added tokens stay. A token
// the file names that is neither in t's vocabulary nor one of its added
// tokens is left out with a warning (see Warnings): Hugging Face would
// append it with a new id, one the model does not have. Errors name the
// file.
func ApplySpecialTokensMap(t *BPE, b []byte, name string) error {
	names, err := parseSpecialTokensMap(b, name)
	if err != nil {
		return err
	}
	t.warnings = append(t.warnings, t.applySpecial(names, name)...)
	return nil
}

// applySpecial makes special the tokens names gives (from the file mapName)
// and no others, keeping the non-special added tokens. It returns a
// warning for each name that is not a token of t.
func (t *BPE) applySpecial(names []mapToken, mapName string) (warnings []string) {
	named := make(map[string]bool, len(names))
	for _, n := range names {
		if _, ok := t.vocab[n.content]; ok {
			named[n.content] = true
			continue
		}
		warnings = append(warnings, fmt.Sprintf("tokenizer: %s: %s %q is neither in the vocabulary nor an added token: it is encoded as ordinary text (Hugging Face would give it a new id, past the vocabulary's)",
			mapName, n.key, n.content))
	}
	added := make([]addedToken, 0, len(t.added)+len(named))
	have := map[string]bool{}
	for _, a := range t.added {
		if named[a.content] {
			a.special = true
		} else if a.special {
			continue
		}
		added = append(added, a)
		have[a.content] = true
	}
	for _, n := range names {
		if named[n.content] && !have[n.content] {
			added = append(added, addedToken{content: n.content, id: t.vocab[n.content], special: true})
			have[n.content] = true
		}
	}
	t.setAdded(added)
	return warnings
}

// mapToken is a token of a special_tokens_map.json and its key there.
type mapToken struct{ key, content string }

// parseSpecialTokensMap reads the tokens of a Hugging Face
// special_tokens_map.json, each once: each value a string, an object with
// a "content" string, or a list of those (additional_special_tokens).
func parseSpecialTokensMap(b []byte, name string) ([]mapToken, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("tokenizer: %s: %w", name, err)
	}
	var out []mapToken
	token := func(key, s string) {
		if s != "" && !slices.ContainsFunc(out, func(m mapToken) bool { return m.content == s }) {
			out = append(out, mapToken{key: key, content: s})
		}
	}
	var add func(key string, v json.RawMessage) error
	add = func(key string, v json.RawMessage) error {
		var s string
		if json.Unmarshal(v, &s) == nil {
			token(key, s)
			return nil
		}
		var o struct {
			Content *string `json:"content"`
		}
		if json.Unmarshal(v, &o) == nil && o.Content != nil {
			token(key, *o.Content)
			return nil
		}
		var l []json.RawMessage
		if json.Unmarshal(v, &l) == nil {
			for _, x := range l {
				if err := add(key, x); err != nil {
					return err
				}
			}
			return nil
		}
		return fmt.Errorf("tokenizer: %s: %q is not a token, an object with its content, or a list of those", name, key)
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys) // one order, whatever the file's
	for _, k := range keys {
		if err := add(k, m[k]); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// mergeSpec is one merge rule and where it came from (a line number or an
// array index).
type mergeSpec struct {
	a, b string
	pos  int
}

// parseVocab parses a JSON object of token -> id, rejecting anything but
// non-negative integer ids, repeated tokens and repeated ids.
func parseVocab(raw []byte, name string) (map[string]int, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	fail := func(err error) error {
		return fmt.Errorf("tokenizer: %s: %s", name, jsonErr(raw, err, dec.InputOffset()))
	}
	tok, err := dec.Token()
	if err != nil {
		return nil, fail(err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, fmt.Errorf("tokenizer: %s: want a JSON object of token -> id, found %s", name, describeJSON(tok))
	}
	vocab := map[string]int{}
	byID := map[int]string{}
	for dec.More() {
		kt, err := dec.Token()
		if err != nil {
			return nil, fail(err)
		}
		key := kt.(string) // object keys are always strings
		vt, err := dec.Token()
		if err != nil {
			return nil, fail(err)
		}
		num, ok := vt.(json.Number)
		if !ok {
			if d, isDelim := vt.(json.Delim); isDelim && (d == '{' || d == '[') {
				return nil, fmt.Errorf("tokenizer: %s: entry %q: id is a JSON %s, want an integer", name, key, map[json.Delim]string{'{': "object", '[': "array"}[d])
			}
			return nil, fmt.Errorf("tokenizer: %s: entry %q: id is %s, want an integer", name, key, describeJSON(vt))
		}
		id, err := strconv.ParseInt(num.String(), 10, 64)
		if err != nil || id < 0 || id > maxTokenID {
			return nil, fmt.Errorf("tokenizer: %s: entry %q: id %s is not an integer in [0, %d]", name, key, num, maxTokenID)
		}
		if _, dup := vocab[key]; dup {
			return nil, fmt.Errorf("tokenizer: %s: token %q is listed twice", name, key)
		}
		if other, dup := byID[int(id)]; dup {
			return nil, fmt.Errorf("tokenizer: %s: tokens %q and %q both have id %d", name, other, key, id)
		}
		vocab[key] = int(id)
		byID[int(id)] = key
	}
	if _, err := dec.Token(); err != nil { // the closing '}'
		return nil, fail(err)
	}
	if _, err := dec.Token(); err != io.EOF {
		if err == nil {
			err = errors.New("data after the object")
		}
		return nil, fail(err)
	}
	return vocab, nil
}

func describeJSON(tok json.Token) string {
	switch v := tok.(type) {
	case nil:
		return "null"
	case bool:
		return strconv.FormatBool(v)
	case string:
		return "the string " + strconv.Quote(v)
	case json.Number:
		return "the number " + v.String()
	case json.Delim:
		return "'" + v.String() + "'"
	}
	return fmt.Sprint(tok)
}

// jsonErr describes a JSON decoding error with its line and column.
func jsonErr(data []byte, err error, fallbackOffset int64) string {
	off := fallbackOffset
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		off = se.Offset
	case errors.As(err, &te):
		off = te.Offset
		field := te.Field
		if field == "" {
			field = "top level"
		}
		err = fmt.Errorf("%s: unexpected JSON %s", field, te.Value)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		off = int64(len(data))
		err = errors.New("unexpected end of JSON input")
	}
	line, col := lineCol(data, off)
	return fmt.Sprintf("line %d, column %d: %v", line, col, err)
}

// lineCol converts a byte offset into a 1-based line and column.
func lineCol(data []byte, off int64) (line, col int) {
	if off > int64(len(data)) {
		off = int64(len(data))
	}
	if off < 0 {
		off = 0
	}
	before := data[:off]
	line = bytes.Count(before, []byte("\n")) + 1
	col = int(off) - (bytes.LastIndexByte(before, '\n') + 1) + 1
	return line, col
}

func parseMergesTxt(b []byte, name string) ([]mergeSpec, error) {
	var ms []mergeSpec
	lines := strings.Split(string(b), "\n")
	for i, line := range lines {
		line = strings.TrimSuffix(line, "\r")
		if strings.HasPrefix(line, "#version") || strings.TrimSpace(line) == "" {
			continue
		}
		parts := strings.Split(line, " ")
		if len(parts) != 2 || parts[0] == "" || parts[1] == "" {
			return nil, fmt.Errorf("tokenizer: %s line %d: want two tokens separated by one space, found %q", name, i+1, line)
		}
		ms = append(ms, mergeSpec{a: parts[0], b: parts[1], pos: i + 1})
	}
	return ms, nil
}

// build makes a BPE from a vocabulary and merges in rank order, for a
// tokenizer that will have nAdded added tokens too (which bound the ids,
// see idLimit). where names a merge in errors.
func build(vocab map[string]int, vocabName string, merges []mergeSpec, nAdded int, where func(mergeSpec) string) (*BPE, error) {
	top, topToken := -1, ""
	for tok, id := range vocab {
		if id > top {
			top, topToken = id, tok
		}
	}
	if limit := idLimit(len(vocab) + nAdded); top > limit {
		return nil, fmt.Errorf("tokenizer: %s: token %q: %s", vocabName, topToken, pastLimit(int64(top), limit, len(vocab), nAdded))
	}
	size := top + 1
	t := &BPE{
		vocab:    vocab,
		tokens:   make([]string, size),
		bytes:    make([][]byte, size),
		has:      make([]bool, size),
		useRegex: true,
	}
	for tok, id := range vocab {
		t.tokens[id] = tok
		t.has[id] = true
		b, ok := byteLevelDecode(tok)
		if !ok {
			// Not in the byte-level alphabet: HF's ByteLevel decoder
			// emits such a token's own UTF-8.
			b = []byte(tok)
		}
		t.bytes[id] = b
	}
	for b := 0; b < 256; b++ {
		s := string(byteToRune[b])
		id, ok := vocab[s]
		if !ok {
			return nil, fmt.Errorf("tokenizer: %s: no token %q for byte 0x%02X; byte-level BPE needs all 256", vocabName, s, b)
		}
		t.byteID[b] = int32(id)
	}
	if len(merges) > math.MaxInt32 {
		return nil, fmt.Errorf("tokenizer: too many merges (%d)", len(merges))
	}
	t.merges = make(map[uint64]mergeTo, len(merges))
	for rank, m := range merges {
		a, ok := vocab[m.a]
		if !ok {
			return nil, fmt.Errorf("tokenizer: %s: merge token %q is not in the vocabulary", where(m), m.a)
		}
		b, ok := vocab[m.b]
		if !ok {
			return nil, fmt.Errorf("tokenizer: %s: merge token %q is not in the vocabulary", where(m), m.b)
		}
		ab, ok := vocab[m.a+m.b]
		if !ok {
			return nil, fmt.Errorf("tokenizer: %s: merged token %q is not in the vocabulary", where(m), m.a+m.b)
		}
		k := pairKey(int32(a), int32(b))
		if prev, dup := t.merges[k]; dup {
			return nil, fmt.Errorf("tokenizer: %s: merge %q %q repeats %s", where(m), m.a, m.b, where(merges[prev.rank]))
		}
		t.merges[k] = mergeTo{rank: int32(rank), id: int32(ab)}
	}
	return t, nil
}

// LoadTokenizerJSON loads an HF tokenizer.json whose model is byte-level BPE
// (model.type "BPE" with a ByteLevel pre-tokenizer, as GPT-2, OPT, RoBERTa
// have). The vocabulary and merges are checked as by LoadGPT2; merges may be
// "left right" strings or [left, right] pairs. All added_tokens are matched
// verbatim in text, honouring lstrip, rstrip and single_word; those marked
// special are IsSpecial. Tokenizers of other kinds (WordPiece, Unigram,
// WordLevel, a normalizer, a pre-tokenizer other than ByteLevel,
// continuing_subword_prefix, end_of_word_suffix, dropout) are rejected with
// an error saying which. The post_processor is ignored: use EncodeWithBOS.
func LoadTokenizerJSON(b []byte) (*BPE, error) {
	return loadTokenizerJSON(b, "tokenizer.json")
}

type tjFile struct {
	AddedTokens  []tjAdded       `json:"added_tokens"`
	Normalizer   json.RawMessage `json:"normalizer"`
	PreTokenizer json.RawMessage `json:"pre_tokenizer"`
	Decoder      json.RawMessage `json:"decoder"`
	Model        *tjModel        `json:"model"`
}

type tjModel struct {
	Type                    *string         `json:"type"`
	Dropout                 *float64        `json:"dropout"`
	ContinuingSubwordPrefix *string         `json:"continuing_subword_prefix"`
	EndOfWordSuffix         *string         `json:"end_of_word_suffix"`
	IgnoreMerges            bool            `json:"ignore_merges"`
	Vocab                   json.RawMessage `json:"vocab"`
	Merges                  json.RawMessage `json:"merges"`
}

type tjAdded struct {
	ID         *int64  `json:"id"`
	Content    *string `json:"content"`
	SingleWord bool    `json:"single_word"`
	LStrip     bool    `json:"lstrip"`
	RStrip     bool    `json:"rstrip"`
	Special    bool    `json:"special"`
	Normalized *bool   `json:"normalized"` // default !Special
}

type tjComponent struct {
	Type           string            `json:"type"`
	AddPrefixSpace bool              `json:"add_prefix_space"`
	UseRegex       *bool             `json:"use_regex"`
	Pretokenizers  []json.RawMessage `json:"pretokenizers"`
	Normalizers    []json.RawMessage `json:"normalizers"`
}

func isNull(raw json.RawMessage) bool {
	s := bytes.TrimSpace(raw)
	return len(s) == 0 || string(s) == "null"
}

func loadTokenizerJSON(data []byte, name string) (*BPE, error) {
	var f tjFile
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("tokenizer: %s: %s", name, jsonErr(data, err, 0))
	}
	bad := func(format string, args ...any) error {
		return fmt.Errorf("tokenizer: %s: "+format, append([]any{name}, args...)...)
	}
	m := f.Model
	if m == nil {
		return nil, bad("no model")
	}
	if m.Type != nil && *m.Type != "BPE" {
		return nil, bad("model.type is %q; only byte-level \"BPE\" tokenizers (GPT-2, OPT) are supported", *m.Type)
	}
	if m.Type == nil && isNull(m.Merges) {
		return nil, bad("model has no type and no merges; only byte-level \"BPE\" tokenizers are supported")
	}
	if m.Dropout != nil && *m.Dropout != 0 {
		return nil, bad("model.dropout %v is not supported", *m.Dropout)
	}
	if m.ContinuingSubwordPrefix != nil && *m.ContinuingSubwordPrefix != "" {
		return nil, bad("model.continuing_subword_prefix %q is not supported", *m.ContinuingSubwordPrefix)
	}
	if m.EndOfWordSuffix != nil && *m.EndOfWordSuffix != "" {
		return nil, bad("model.end_of_word_suffix %q is not supported", *m.EndOfWordSuffix)
	}
	if err := checkNormalizer(f.Normalizer); err != nil {
		return nil, bad("%v", err)
	}
	addPrefix, useRegex, err := byteLevelPreTokenizer(f.PreTokenizer)
	if err != nil {
		return nil, bad("%v", err)
	}
	if !isNull(f.Decoder) {
		var d tjComponent
		if err := json.Unmarshal(f.Decoder, &d); err != nil || d.Type != "ByteLevel" {
			return nil, bad("decoder %s is not supported; want ByteLevel", componentName(f.Decoder))
		}
	}
	if isNull(m.Vocab) {
		return nil, bad("model.vocab is missing")
	}
	vocab, err := parseVocab(m.Vocab, name+": model.vocab")
	if err != nil {
		return nil, err
	}
	merges, err := parseJSONMerges(m.Merges)
	if err != nil {
		return nil, bad("%v", err)
	}
	t, err := build(vocab, name+": model.vocab", merges, len(f.AddedTokens), func(m mergeSpec) string {
		return fmt.Sprintf("%s: model.merges[%d]", name, m.pos)
	})
	if err != nil {
		return nil, err
	}
	t.addPrefixSpace, t.useRegex, t.ignoreMerges = addPrefix, useRegex, m.IgnoreMerges
	if t.ignoreMerges {
		t.rawVocab = make(map[string]int32, len(vocab))
		for tok, id := range vocab {
			if b, ok := byteLevelDecode(tok); ok {
				t.rawVocab[string(b)] = int32(id)
			}
		}
	}
	if err := t.addTokens(f.AddedTokens, name, func(i int, content string) string {
		if content == "" {
			return fmt.Sprintf("added_tokens[%d]", i)
		}
		return fmt.Sprintf("added_tokens[%d] (%q)", i, content)
	}); err != nil {
		return nil, err
	}
	return t, nil
}

func componentName(raw json.RawMessage) string {
	var c struct {
		Type string `json:"type"`
	}
	if json.Unmarshal(raw, &c) == nil && c.Type != "" {
		return strconv.Quote(c.Type)
	}
	s := string(bytes.TrimSpace(raw))
	if len(s) > 40 {
		s = s[:40] + "..."
	}
	return s
}

func checkNormalizer(raw json.RawMessage) error {
	if isNull(raw) {
		return nil
	}
	var c tjComponent
	if err := json.Unmarshal(raw, &c); err == nil && c.Type == "Sequence" {
		for i, n := range c.Normalizers {
			if err := checkNormalizer(n); err != nil {
				return fmt.Errorf("normalizers[%d]: %v", i, err)
			}
		}
		return nil
	}
	return fmt.Errorf("normalizer %s is not supported (byte-level BPE without a normalizer only)", componentName(raw))
}

// byteLevelPreTokenizer accepts a ByteLevel pre-tokenizer, alone or as the
// only member of a Sequence.
func byteLevelPreTokenizer(raw json.RawMessage) (addPrefix, useRegex bool, err error) {
	if isNull(raw) {
		return false, false, errors.New("no pre_tokenizer; want ByteLevel")
	}
	var c tjComponent
	if err := json.Unmarshal(raw, &c); err != nil {
		return false, false, fmt.Errorf("pre_tokenizer: %v", err)
	}
	switch {
	case c.Type == "ByteLevel":
		return c.AddPrefixSpace, c.UseRegex == nil || *c.UseRegex, nil
	case c.Type == "Sequence" && len(c.Pretokenizers) == 1:
		return byteLevelPreTokenizer(c.Pretokenizers[0])
	}
	return false, false, fmt.Errorf("pre_tokenizer %s is not supported; want ByteLevel", componentName(raw))
}

func parseJSONMerges(raw json.RawMessage) ([]mergeSpec, error) {
	if isNull(raw) {
		return nil, nil
	}
	var items []json.RawMessage
	if err := json.Unmarshal(raw, &items); err != nil {
		return nil, errors.New("model.merges is not an array")
	}
	ms := make([]mergeSpec, len(items))
	for i, it := range items {
		var s string
		var pair []string
		switch {
		case json.Unmarshal(it, &s) == nil:
			parts := strings.Split(s, " ")
			if len(parts) != 2 || parts[0] == "" || parts[1] == "" {
				return nil, fmt.Errorf("model.merges[%d]: want two tokens separated by one space, found %q", i, s)
			}
			ms[i] = mergeSpec{a: parts[0], b: parts[1], pos: i}
		case json.Unmarshal(it, &pair) == nil:
			if len(pair) != 2 || pair[0] == "" || pair[1] == "" {
				return nil, fmt.Errorf("model.merges[%d]: want a pair of two non-empty tokens, found %q", i, pair)
			}
			ms[i] = mergeSpec{a: pair[0], b: pair[1], pos: i}
		default:
			return nil, fmt.Errorf("model.merges[%d]: want \"left right\" or [left, right], found %s", i, componentName(it))
		}
	}
	return ms, nil
}

// addTokens adds HF added_tokens: each is matched verbatim in text. One
// that is in the vocabulary must have its vocabulary id; one that is not
// gets a new id, which no vocabulary token may have. Ids are bounded by
// idLimit. Errors name the file and the token: item(i, content) names the
// i-th in file (content "" when it has none).
func (t *BPE) addTokens(list []tjAdded, file string, item func(i int, content string) string) error {
	where := func(i int, content string) string {
		return fmt.Sprintf("tokenizer: %s: %s", file, item(i, content))
	}
	limit := idLimit(len(t.vocab) + len(list))
	added := make([]addedToken, 0, len(list))
	seenID := map[int]int{}
	seenContent := map[string]int{}
	top := len(t.tokens) - 1
	for i, a := range list {
		if a.Content == nil || *a.Content == "" {
			return fmt.Errorf("%s: no content", where(i, ""))
		}
		content := *a.Content
		at := where(i, content)
		if a.ID == nil {
			return fmt.Errorf("%s: no id", at)
		}
		id64 := *a.ID
		if id64 < 0 {
			return fmt.Errorf("%s: id %d is negative", at, id64)
		}
		if id64 > int64(limit) {
			return fmt.Errorf("%s: %s", at, pastLimit(id64, limit, len(t.vocab), len(list)))
		}
		id := int(id64)
		if j, dup := seenID[id]; dup {
			return fmt.Errorf("%s: id %d is also %s", at, id, item(j, *list[j].Content))
		}
		if j, dup := seenContent[content]; dup {
			return fmt.Errorf("%s: content is also %s", at, item(j, content))
		}
		seenID[id], seenContent[content] = i, i
		if vid, ok := t.vocab[content]; ok {
			if vid != id {
				return fmt.Errorf("%s: id %d, but the vocabulary gives it id %d", at, id, vid)
			}
		} else if id < len(t.has) && t.has[id] {
			return fmt.Errorf("%s: id %d is already the vocabulary's token %q", at, id, t.tokens[id])
		}
		normalized := !a.Special
		if a.Normalized != nil {
			normalized = *a.Normalized
		}
		added = append(added, addedToken{content: content, id: id, special: a.Special, normalized: normalized,
			singleWord: a.SingleWord, lstrip: a.LStrip, rstrip: a.RStrip})
		top = max(top, id)
	}
	if grow := top + 1 - len(t.tokens); grow > 0 { // once, not a token at a time
		t.tokens = append(t.tokens, make([]string, grow)...)
		t.bytes = append(t.bytes, make([][]byte, grow)...)
		t.has = append(t.has, make([]bool, grow)...)
	}
	for _, a := range added {
		if !t.has[a.id] {
			t.vocab[a.content] = a.id
			t.tokens[a.id] = a.content
			t.has[a.id] = true
		}
		t.bytes[a.id] = []byte(a.content) // added tokens decode to their content
	}
	t.setAdded(added)
	return nil
}
