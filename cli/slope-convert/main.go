// Command slope-convert turns dense checkpoints into SLoPe .slope files.
//
//	slope-convert dense-to-slope --out model.slope            # the embedded default model
//	slope-convert dense-to-slope --in ./opt-125m --out opt.slope --nm 2:4
//	slope-convert dense-to-slope --in ./opt-125m --out opt.slope --nm-layers '0-5=2:4,6-11=2:8' \
//	    --rank-frac 0.0156 --adapter-init svd --seed 1 --json
//
// Errors are printed to stderr as "slope-convert: <error>". The exit
// status is, as slope's, 0 on success, 1 when the conversion fails (an
// unreadable source, a model without the asked-for layers, a full disk),
// 2 on a usage error (an unknown flag or command, a flag value or
// combination refused before any file is read), and 130 or 143 after
// Ctrl-C or SIGTERM.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"runtime/pprof"

	"github.com/spf13/cobra"

	"github.com/slopeml/slope/cli/internal/interrupt"
	"github.com/slopeml/slope/cli/internal/usage"
)

func main() {
	stop, err := startCPUProfile(os.Getenv("SLOPE_CPUPROFILE"))
	if err != nil {
		fmt.Fprintf(os.Stderr, "slope-convert: %v\n", err)
		os.Exit(1)
	}
	code := run(os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// startCPUProfile writes a CPU profile to path until stop is called; ""
// profiles nothing. It is set by the environment (SLOPE_CPUPROFILE), not a
// flag, so that profiling a conversion leaves the command line recorded in
// the file's provenance, and so the file, unchanged.
func startCPUProfile(path string) (stop func(), err error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("SLOPE_CPUPROFILE: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("SLOPE_CPUPROFILE: %w", err)
	}
	return func() {
		pprof.StopCPUProfile()
		if err := f.Close(); err != nil {
			fmt.Fprintf(os.Stderr, "slope-convert: SLOPE_CPUPROFILE: %v\n", err)
		}
	}, nil
}

// run executes the command line args and returns the exit status (see the
// package doc, and usage.Status); errors are printed to stderr as
// "slope-convert: <error>", usage errors followed by a pointer to --help.
func run(args []string, stdout, stderr io.Writer) int {
	// Ctrl-C or SIGTERM stop the conversion cleanly (exit status 130 or
	// 143); a second signal stops it at once.
	ctx, caught, stop := interrupt.Watch(context.Background(), os.Stderr)
	defer stop()
	root := newRoot(args)
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	return usage.Status(stderr, "slope-convert", interrupt.Wrap(root.ExecuteContext(ctx), caught))
}

func newRoot(args []string) *cobra.Command {
	root := &cobra.Command{
		Use:   "slope-convert",
		Short: "Convert dense checkpoints into SLoPe .slope containers",
		Long: `slope-convert turns dense checkpoints into SLoPe models: N:M-sparse
weights with their double-pruned transposes, stored in .slope containers.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usage.Errorf(cmd, "missing command (dense-to-slope)")
			}
			return usage.Errorf(cmd, "unknown command %q (the command is dense-to-slope)", args[0])
		},
	}
	root.CompletionOptions.DisableDefaultCmd = true
	usage.Setup(root)
	root.AddCommand(newDenseToSlope(args))
	return root
}
