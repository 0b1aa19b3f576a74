// Command slope-convert turns dense checkpoints into SLoPe .slope files.
//
//	slope-convert dense-to-slope --out model.slope            # embedded tiny OPT
//	slope-convert dense-to-slope --in ./opt-125m --out opt.slope --nm 2:4
//	slope-convert dense-to-slope --in ./opt-125m --out opt.slope --nm-layers '0-5=2:4,6-11=2:8' \
//	    --rank-frac 0.0156 --adapter-init svd --seed 1 --json
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"

	"github.com/spf13/cobra"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run executes the command line args and returns the exit status: 0 on
// success, 1 on any error (printed to stderr as "slope-convert: <error>").
func run(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	root := newRoot(args)
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintf(stderr, "slope-convert: %v\n", err)
		return 1
	}
	return 0
}

func newRoot(args []string) *cobra.Command {
	root := &cobra.Command{
		Use:   "slope-convert",
		Short: "Convert dense checkpoints into SLoPe .slope containers",
		Long: `slope-convert turns dense checkpoints into SLoPe models: N:M-sparse
weights with their double-pruned transposes, stored in .slope containers.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.CompletionOptions.DisableDefaultCmd = true
	root.AddCommand(newDenseToSlope(args))
	return root
}
