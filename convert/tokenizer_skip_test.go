package convert

import (
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
