// Package tokenizer implements the byte-level BPE tokenizer of GPT-2, which
// OPT uses: the HF files vocab.json + merges.txt (LoadGPT2), a tokenizer.json
// (LoadTokenizerJSON), or either from a model directory (LoadDir).
//
// Encoding: text is UTF-8; special tokens are split out first, the rest is
// cut into pieces by GPT-2's pre-tokenization pattern, the bytes of each
// piece are spelled in GPT-2's byte-level alphabet, and BPE merges are
// applied, lowest rank first. Encode adds no BOS; OPT prompts start with
// "</s>" (id 2), which EncodeWithBOS prepends.
//
// Decoding: Decode maps ids to bytes and the bytes to text, replacing
// ill-formed UTF-8 the way HF does. A StreamDecoder does the same
// incrementally for generation, holding back the bytes of a character that a
// later token completes.
//
// Special tokens in text. HF's OPT tokenizer treats the text "</s>" (and
// "<pad>") in a prompt as the special token, not as the characters
// "<", "/", "s", ">". So does Encode. With LoadGPT2 the tokens of
// DefaultSpecialTokens present in vocab.json are special (SetSpecialTokens
// changes the set). LoadDir with vocab.json makes special instead those
// that special_tokens_map.json names, when it exists, and matches the
// tokens of added_tokens.json too (transformers' added tokens, special
// when the map names them). With LoadTokenizerJSON every entry of
// added_tokens is matched. EncodeOrdinary encodes such text as plain
// characters.
//
// Known differences from HF tokenizers:
//   - Character classes come from Go's unicode package (Unicode 15.0); the
//     Rust/Oniguruma classes of HF may be of another Unicode version, so
//     characters assigned after 15.0 may be split differently. \s is the
//     White_Space property, as for HF and GPT-2's Python; the JavaScript
//     gpt-3-encoder differs on U+0085 (not space there) and U+FEFF (space).
//   - Invalid UTF-8 in a Go string, which HF cannot receive, is encoded byte
//     by byte, each invalid byte classed like punctuation.
//   - A stale merge candidate is discarded when either symbol changed; HF
//     compares only the id the merge would produce. The two agree for every
//     merges file produced by BPE training (GPT-2's included).
//   - Decode never applies transformers' clean_up_tokenization_spaces
//     (" ." -> ".", " 's" -> "'s", ...), so Decode(Encode(s)) == s for
//     valid UTF-8 s, unless the tokenizer changes whitespace (a
//     tokenizer.json's add_prefix_space, an added token's lstrip or
//     rstrip); nor does it skip special tokens (skip_special_tokens=False,
//     HF's default).
//   - Added tokens are split out as by HF's fast tokenizers (those
//     AutoTokenizer gives): the non-normalized ones first, then the
//     normalized ones in the text left between them. transformers' slow
//     tokenizers split on all in one pass, leftmost and longest first;
//     the two differ where a normalized and a non-normalized token overlap.
//   - A token that special_tokens_map.json names but neither vocab.json nor
//     added_tokens.json has is ordinary text, with a warning (BPE.Warnings);
//     HF adds it with a new id, past those the model has.
//   - Loading is stricter than HF in places: duplicate merges, added tokens
//     whose id disagrees with the vocabulary, vocabularies lacking one of
//     the 256 byte tokens, and ids beyond twice the number of tokens plus
//     1024 (ids index dense tables; HF's are dense) are errors. The
//     tokenizer.json post_processor and model.unk_token are ignored
//     (byte-level BPE never needs unk), and so are a special_tokens_map's
//     lstrip, rstrip and single_word.
package tokenizer
