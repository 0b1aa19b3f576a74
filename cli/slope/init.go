package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/slopeml/slope/cli/internal/interrupt"
	"github.com/slopeml/slope/cli/internal/outfile"
	"github.com/slopeml/slope/convert"
)

func newInitCmd() *cobra.Command {
	var (
		o     convert.InitOptions
		force bool
	)
	cmd := &cobra.Command{
		Use:   "init --config CONFIG.json --out FILE.slope",
		Short: "Create an untrained SLoPe model (random weights, random N:M masks) for pretraining",
		Long: "init writes a .slope model for pretraining from scratch: the architecture of an OPT\n" +
			"config.json (transformers' format), weights initialised as transformers initialises\n" +
			"OPT (matrices N(0, 0.02²), biases zero, LayerNorm weights one), the linear weights\n" +
			"of every decoder layer pruned N:M by random masks (seeded, as in the SLoPe paper),\n" +
			"their transposes double-pruned by magnitude. No adapters: SLoPe adds them late in\n" +
			"training. The same config and --seed give the same file (set SOURCE_DATE_EPOCH to\n" +
			"fix the recorded creation time).",
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.Config == "" {
				return usagef(cmd, "--config is required")
			}
			if o.Out == "" {
				return usagef(cmd, "--out is required")
			}
			if err := outfile.CheckContainer("--out", o.Out, force, o.Config); err != nil {
				return outfile.ForceHint(err)
			}
			if err := outfile.RemoveStale("--out", o.Out, cmd.ErrOrStderr()); err != nil {
				return err
			}
			o.Command = "slope " + strings.Join(os.Args[1:], " ")
			// Ctrl-C or SIGTERM stop the writing cleanly (no temporary file
			// left behind), for this command only; slope then exits with 128 + the
			// signal.
			ctx, caught, stop := interrupt.Watch(cmd.Context(), cmd.ErrOrStderr())
			defer stop()
			o.Context = ctx
			res, err := convert.Init(o)
			if err != nil {
				return interrupt.Wrap(err, caught)
			}
			pruned, dense := prunedSummary(res)
			for _, d := range dense {
				fmt.Fprintf(cmd.ErrOrStderr(), "note: %s\n", d)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s: %d tensors, %s, %d bytes (seed %d)\n",
				res.Out, res.Tensors, pruned, res.FileBytes, o.Seed)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Config, "config", "", "OPT config.json (transformers' format)")
	f.StringVar(&o.Out, "out", "", "the .slope file to write (an existing .slope file is replaced; any other file only with --force)")
	f.BoolVar(&force, "force", false, "replace an existing --out that is not a .slope container")
	f.StringVar(&o.NM, "nm", "2:4", "N:M pattern of the decoder-layer linear weights (dense: none)")
	f.StringVar(&o.NMLayers, "nm-layers", "", "per-layer patterns, e.g. '0-11=2:4,12-23=2:8'")
	f.StringVar(&o.DType, "dtype", "fp32", "stored dtype: fp32, fp16 or bf16")
	f.BoolVar(&o.PruneWide, "prune-wide", false, fmt.Sprintf("also prune weights whose aspect ratio exceeds %d", convert.MaxAspectRatio))
	f.Uint64Var(&o.Seed, "seed", 0, "seed of the weights and masks")
	return cmd
}

// prunedSummary describes what happened to the decoder-layer linear
// weights: "N weights pruned P with random masks" (one pattern), or with
// the count of each pattern, or "no weights pruned"; and a line per
// reason for which linear weights were left dense against the pattern
// asked for (it does not fit their shape), with their count.
func prunedSummary(res *convert.Result) (pruned string, dense []string) {
	patterns := map[string]int{}
	reasons := map[string]int{}
	var pOrder, rOrder []string
	for _, w := range res.Weights {
		if !w.Linear {
			continue
		}
		if reason, ok := strings.CutPrefix(w.Choice, "dense"); ok {
			reason = strings.TrimPrefix(reason, ": ")
			if reason == "" || strings.HasPrefix(reason, "pruning disabled") {
				continue // as --nm or --nm-layers asked: nothing to explain
			}
			if reasons[reason]++; reasons[reason] == 1 {
				rOrder = append(rOrder, reason)
			}
			continue
		}
		if patterns[w.Choice]++; patterns[w.Choice] == 1 {
			pOrder = append(pOrder, w.Choice)
		}
	}
	for _, r := range rOrder {
		dense = append(dense, fmt.Sprintf("%d linear weights left dense: %s", reasons[r], r))
	}
	switch len(pOrder) {
	case 0:
		return "no weights pruned", dense
	case 1:
		return fmt.Sprintf("%d weights pruned %s with random masks", patterns[pOrder[0]], pOrder[0]), dense
	}
	parts := make([]string, len(pOrder))
	for i, p := range pOrder {
		parts[i] = fmt.Sprintf("%d %s", patterns[p], p)
	}
	return fmt.Sprintf("%d weights pruned with random masks (%s)", res.Pruned, strings.Join(parts, ", ")), dense
}
