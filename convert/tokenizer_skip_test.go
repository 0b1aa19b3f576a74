package convert

import (
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/testmodels"
)

// TestUnsupportedTokenizerSkipped: a tokenizer the runtime cannot load
// beside a checkpoint (here WordPiece) does not stop the conversion: the
// weights are written without it, and a warning says so.
func TestUnsupportedTokenizerSkipped(t *testing.T) {
	dir := t.TempDir()
	if err := os.CopyFS(dir, testmodels.TinyFS()); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tokenizer.json"), []byte(`{"model":{"type":"WordPiece","vocab":{}}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "m.slope")
	res, err := DenseToSlope(t.Context(), Options{In: dir, Out: out, NM: "2:4"})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(res.Warnings, func(w string) bool { return strings.Contains(w, "tokenizer in") && strings.Contains(w, "not stored") }) {
		t.Errorf("warnings %q: want one about the tokenizer", res.Warnings)
	}
	f, err := format.Open(out, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Manifest().Tokenizer != nil {
		t.Error("an unloadable tokenizer was stored")
	}
}

// TestIncompleteTokenizer: vocab.json without merges.txt is not taken for
// a source without a tokenizer: the conversion warns and names the
// missing file, and a text --calib fails naming it too.
func TestIncompleteTokenizer(t *testing.T) {
	dir := t.TempDir()
	fsys, _ := testmodels.Embedded(testmodels.DefaultName)
	if err := os.CopyFS(dir, fsys); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, "merges.txt")); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "m.slope")
	res, err := DenseToSlope(t.Context(), Options{In: dir, Out: out, NM: "2:4"})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(res.Warnings, func(w string) bool {
		return strings.Contains(w, "not stored") && strings.Contains(w, "merges.txt")
	}) {
		t.Errorf("warnings %q: want one naming merges.txt", res.Warnings)
	}
	calib := filepath.Join(t.TempDir(), "calib.txt")
	if err := os.WriteFile(calib, []byte("In the beginning God created the heaven and the earth."), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = DenseToSlope(t.Context(), Options{In: dir, Out: out, NM: "2:4", Method: "wanda", Calib: calib, CalibSamples: 1, CalibSeqLen: 8})
	if err == nil || !strings.Contains(err.Error(), "merges.txt") {
		t.Fatalf("text calibration without merges.txt: %v", err)
	}
}

// TestTokenizerAddedTokensAndWarnings: added_tokens.json travels into the
// container with the other files, and a special token that the files lack
// is a warning of the conversion, the tokenizer stored all the same.
func TestTokenizerAddedTokensAndWarnings(t *testing.T) {
	dir := t.TempDir()
	fsys, _ := testmodels.Embedded(testmodels.DefaultName)
	if err := os.CopyFS(dir, fsys); err != nil {
		t.Fatal(err)
	}
	for name, body := range map[string]string{
		"added_tokens.json":       `{"<extra>": 4096}`,
		"special_tokens_map.json": `{"eos_token": "</s>", "pad_token": "<nope>"}`,
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(t.TempDir(), "m.slope")
	res, err := DenseToSlope(t.Context(), Options{In: dir, Out: out, NM: "2:4"})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(res.Warnings, func(w string) bool { return strings.Contains(w, `"<nope>"`) }) {
		t.Errorf("warnings %q: want one naming <nope>", res.Warnings)
	}
	f, err := format.Open(out, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	files, err := f.TokenizerFiles()
	if err != nil {
		t.Fatal(err)
	}
	if string(files["added_tokens.json"]) != `{"<extra>": 4096}` {
		t.Fatalf("stored tokenizer files %v: want added_tokens.json", slices.Sorted(maps.Keys(files)))
	}
}
