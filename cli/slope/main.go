// Command slope inspects and checks SLoPe model containers (.slope files:
// N:M-sparse weights plus low-rank adapters, see format/SPEC.md).
//
// Usage:
//
//	slope inspect FILE [--json]             describe a container
//	slope verify FILE [--quiet]             check every byte of a container
//	slope run MODEL --prompt TEXT|--ids JSON   generate, streaming tokens
//	slope score MODEL --text FILE|--ids JSON   perplexity
//	slope forward MODEL --ids JSON [--mask JSON]   print logits as JSON
//	slope bench MODEL [--prompt-len N --gen-len N] time prefill and decode
//	slope export FILE --to hf|onnx --out PATH   write a dense HF directory or ONNX model
//	slope init --config CONFIG.json --out FILE   an untrained model (random N:M masks) for pretraining
//	slope train MODEL --data FILE --steps N --out CKPT   train (AdamW), write checkpoints; --resume CKPT continues
//	slope plot LOG.jsonl [LOG2.jsonl ...] --out loss.png   train and validation loss of train logs
//	slope version                           print the tool version
//
// Errors are printed to stderr as "slope: <error>". The exit status is 0
// on success, 1 when a command fails (an unreadable or corrupt file, for
// instance) and 2 on a usage error (missing FILE, unknown flag or command).
//
// The commands hold no format logic of their own: they call package
// format, which owns the container.
package main

import (
	"io"
	"os"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/slopeml/slope/cli/internal/usage"
)

// version is the tool version, set at link time with
// -ldflags "-X main.version=1.2.3".
var version = "0.1.0-dev"

// Exit statuses (usage.Status gives them; 0 on success).
const (
	exitError       = 1
	exitUsage       = usage.ExitCode
	exitInterrupted = 130 // 128 + SIGINT, as shells report an interrupted command (128 + SIGTERM for that one)
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run executes the command line args (without the program name), writing
// to stdout and stderr, and returns the exit status.
func run(args []string, stdout, stderr io.Writer) int {
	root := newRootCmd(stdout, stderr)
	root.SetArgs(args)
	return usage.Status(stderr, "slope", root.Execute())
}

// usagef returns a usage error (exit status 2) of cmd.
func usagef(cmd *cobra.Command, format string, a ...any) error {
	return usage.Errorf(cmd, format, a...)
}

// exactArgs is cobra.ExactArgs reporting a usage error that names the
// missing operands.
func exactArgs(names ...string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		switch {
		case len(args) < len(names):
			return usagef(cmd, "%s: missing %s", cmd.Name(), names[len(args)])
		case len(args) > len(names):
			return usagef(cmd, "%s: unexpected argument %q", cmd.Name(), args[len(names)])
		}
		return nil
	}
}

func newRootCmd(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:   "slope",
		Short: "Inspect, check and run SLoPe model containers (.slope)",
		Long: "slope works with .slope containers: N:M-sparse LLM weights plus low-rank adapters,\n" +
			"their graph, configuration and provenance.",
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usagef(cmd, "missing command (inspect, verify, run, score, forward, bench, export, init, train, plot or version)")
			}
			return usagef(cmd, "unknown command %q", args[0])
		},
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.CompletionOptions.DisableDefaultCmd = true
	usage.Setup(root)
	// Every command's --threads: 0 means all cores, and a negative count
	// is a mistake, not another way to say so.
	root.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error {
		if f := cmd.Flags().Lookup("threads"); f != nil {
			if n, err := strconv.Atoi(f.Value.String()); err == nil && n < 0 {
				return usagef(cmd, "--threads must not be negative (0: all cores), got %d", n)
			}
		}
		return nil
	}
	root.AddCommand(newInspectCmd(), newVerifyCmd(), newRunCmd(), newScoreCmd(), newForwardCmd(), newBenchCmd(), newExportCmd(), newInitCmd(), newTrainCmd(), newPlotCmd(), newVersionCmd())
	return root
}
