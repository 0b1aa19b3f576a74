// Command slope-convert turns dense checkpoints into SLoPe .slope files.
//
//	slope-convert dense-to-slope --out model.slope            # the embedded default model
//	slope-convert dense-to-slope --in ./opt-125m --out opt.slope --nm 2:4
//	slope-convert dense-to-slope --in ./opt-125m --out opt.slope --nm-layers '0-5=2:4,6-11=2:8' \
//	    --rank-frac 0.0156 --adapter-init svd --seed 1 --json
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/pprof"

	"github.com/spf13/cobra"

	"github.com/slopeml/slope/cli/internal/interrupt"
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

// run executes the command line args and returns the exit status: 0 on
// success, 1 on any error (printed to stderr as "slope-convert: <error>").
func run(args []string, stdout, stderr io.Writer) int {
	// Ctrl-C or SIGTERM stop the conversion cleanly (exit status 130 or
	// 143); a second signal stops it at once.
	ctx, caught, stop := interrupt.Watch(context.Background())
	defer stop()
	root := newRoot(args)
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	if err := interrupt.Wrap(root.ExecuteContext(ctx), caught); err != nil {
		fmt.Fprintf(stderr, "slope-convert: %v\n", err)
		var ie *interrupt.Error
		if errors.As(err, &ie) {
			return ie.ExitCode()
		}
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
