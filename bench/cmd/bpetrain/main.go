// Command bpetrain learns a byte-level BPE tokenizer from a text file
// (tokenizer.TrainBPE) and writes vocab.json and merges.txt, with OPT's
// four special tokens <s> <pad> </s> <unk> at ids 0-3:
//
//	go run ./bench/cmd/bpetrain -in train.txt -vocab 4096 -out DIR
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/slopeml/slope/tokenizer"
)

func main() {
	in := flag.String("in", "", "training text (UTF-8)")
	vocab := flag.Int("vocab", 4096, "vocabulary size, the specials and the 256 bytes included")
	out := flag.String("out", "", "directory to write vocab.json and merges.txt into")
	flag.Parse()
	if err := run(*in, *vocab, *out); err != nil {
		fmt.Fprintln(os.Stderr, "bpetrain:", err)
		os.Exit(1)
	}
}

func run(in string, vocab int, out string) error {
	if in == "" || out == "" {
		return fmt.Errorf("-in and -out are required")
	}
	text, err := os.ReadFile(in)
	if err != nil {
		return err
	}
	v, m, err := tokenizer.TrainBPE(string(text), vocab, []string{"<s>", "<pad>", "</s>", "<unk>"})
	if err != nil {
		return fmt.Errorf("%s: %w", in, err)
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(out, "vocab.json"), v, 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(out, "merges.txt"), m, 0o644)
}
