package main

import (
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/format/slopepb"
)

func newVerifyCmd() *cobra.Command {
	var quiet bool
	cmd := &cobra.Command{
		Use:   "verify FILE",
		Short: "Check every byte of a .slope container",
		Long: "verify opens a container (header, manifest and layout checks) and then checks\n" +
			"every tensor: checksums, compressed frames, N:M indices, transpose masks and\n" +
			"padding. It prints \"OK: ...\" and exits 0 when all pass; otherwise it prints the\n" +
			"first failure, naming the tensor and its file offset, and exits 1.",
		Args: exactArgs("FILE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			path := args[0]
			f, err := format.Open(path, nil)
			if err != nil {
				return err
			}
			defer f.Close()
			stderr := cmd.ErrOrStderr()
			var progress format.VerifyProgress
			if !quiet && isTerminal(stderr) {
				progress = func(done, total int, t *slopepb.Tensor) {
					// \r and erase-line: one line, rewritten per tensor.
					fmt.Fprintf(stderr, "\r\x1b[Kverify: %d/%d %s", done, total, clean(t.GetName()))
				}
			}
			err = f.Verify(progress)
			if progress != nil {
				fmt.Fprint(stderr, "\r\x1b[K")
			}
			if err != nil {
				return err
			}
			if !quiet {
				_, err = fmt.Fprintf(cmd.OutOrStdout(), "OK: %d tensors, %d bytes verified\n", len(f.Tensors()), f.Size())
			}
			return err
		},
	}
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print nothing on success (the exit status tells)")
	return cmd
}

// isTerminal reports whether w is a terminal (a character device).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
