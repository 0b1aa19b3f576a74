package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"strings"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/slopeml/slope/convert"
)

// isTerminal reports whether w is a terminal (a variable for tests).
var isTerminal = func(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

func newDenseToSlope(args []string) *cobra.Command {
	var (
		o        convert.Options
		compress string
		asJSON   bool
		quiet    bool
		scale    float32
	)
	cmd := &cobra.Command{
		Use:   "dense-to-slope",
		Short: "Prune a dense OPT checkpoint N:M by magnitude, add adapters, and write a .slope file",
		Long: `dense-to-slope reads a dense OPT checkpoint, prunes the linear weights of
every decoder layer (q, k, v, out_proj, fc1, fc2) N:M by magnitude, adds
their double-pruned transposes, and writes everything to a .slope file.
Embeddings, positions, the LM head, project_in/out, norms and biases are
never pruned, nor is a weight whose aspect ratio max(out,in)/min(out,in)
exceeds ` + fmt.Sprint(convert.MaxAspectRatio) + ` unless --prune-wide is given. The choice per tensor is
recorded in the file's provenance and in the summary.

--in is a Hugging Face model directory (config.json plus model.safetensors,
sharded safetensors with model.safetensors.index.json, pytorch_model.bin, or
sharded .bin with pytorch_model.bin.index.json; either key naming), or an ONNX
export of an OPT model (either PyTorch exporter; the structure is recognised
from the graph). --nm dense writes the weights unpruned; --nm-layers
overrides --nm for ranges of decoder layers, e.g. '0-11=2:4,12-23=2:8' or
'0=dense'.

--rank R (or --rank-frac F, rank round(F * hidden size)) gives every pruned
weight a low-rank adapter, y = x·W_sᵀ + scale·(x·L)·R with L [in, R] and
R [R, out]. --adapter-init: slope (default; L ~ N(0, 1/in)·0.01, R = 0: the
output is unchanged until trained), zero (L = R = 0), or svd (scale·L·R is
the best rank-R approximation of the pruning residual (W − W_s)ᵀ, by a
seeded randomized SVD). --merge-adapters stores SLoPe's inference layout:
Lᵀ appended to W as R extra rows and pruned N:M with it (so L is pruned
too; with svd, R is then refit to the pruned L), R stored alone; out + R
must be a multiple of M. The summary reports per weight the relative
Frobenius errors ‖W − W_s‖/‖W‖ and ‖W − (W_s + scale·(L·R)ᵀ)‖/‖W‖.

--seed makes the random choices deterministic: the same command gives the
same file, bar the creation time in the provenance (set SOURCE_DATE_EPOCH
to fix that too).

Progress goes to stderr: a bar when it is a terminal, else one line per
tensor; --quiet silences it (and the per-weight table). --json prints the
summary as JSON on stdout.
Without --in the tiny OPT model embedded in the binary (` + convert.DefaultLabel + `)
is converted, so the command works offline.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, _, err := convert.ParseNMOption(o.NM); err != nil {
				return fmt.Errorf("--nm %q: %w", o.NM, err)
			}
			if _, err := convert.ParseNMLayers(o.NMLayers); err != nil {
				return err
			}
			if _, _, err := convert.ParseDTypeOption(o.DType); err != nil {
				return fmt.Errorf("--dtype: %w", err)
			}
			switch compress {
			case "":
			case "zstd":
				o.Compress = true
			default:
				return fmt.Errorf("--compress %q: the only compression is zstd", compress)
			}
			if o.Out == "" {
				return fmt.Errorf("--out: an output path is required")
			}
			f := cmd.Flags()
			if f.Changed("rank") && f.Changed("rank-frac") {
				return fmt.Errorf("--rank and --rank-frac are mutually exclusive")
			}
			if f.Changed("rank") && o.Rank < 1 {
				return fmt.Errorf("--rank %d: the rank must be at least 1", o.Rank)
			}
			if f.Changed("rank-frac") && !(o.RankFrac > 0 && o.RankFrac <= 1) {
				return fmt.Errorf("--rank-frac %g: want a fraction of the hidden size in (0, 1]", o.RankFrac)
			}
			if o.Rank == 0 && o.RankFrac == 0 {
				for _, name := range []string{"adapter-init", "merge-adapters", "adapter-scale"} {
					if f.Changed(name) {
						return fmt.Errorf("--%s needs --rank or --rank-frac", name)
					}
				}
			}
			if f.Changed("adapter-init") {
				if _, err := convert.ParseAdapterInit(o.AdapterInit); err != nil {
					return err
				}
			}
			if scale == 0 || math.IsNaN(float64(scale)) || math.IsInf(float64(scale), 0) {
				return fmt.Errorf("--adapter-scale %g: want a finite non-zero number", scale)
			}
			o.AdapterScale = scale
			stderr := cmd.ErrOrStderr()
			if !quiet {
				o.Progress = newProgress(stderr)
			}
			o.Command = "slope-convert " + strings.Join(args, " ")
			res, err := convert.DenseToSlope(cmd.Context(), o)
			if err != nil {
				return err
			}
			if !quiet {
				for _, w := range res.Warnings {
					fmt.Fprintf(stderr, "warning: %s\n", w)
				}
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(res)
			}
			return printSummary(cmd.OutOrStdout(), res, o, !quiet)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.In, "in", "", "Hugging Face model directory or .onnx file; empty: the embedded tiny OPT model")
	f.StringVar(&o.Out, "out", "model.slope", "output .slope file")
	f.StringVar(&o.NM, "nm", "2:4", `N:M pattern for the decoder-layer linear weights, or "dense" to prune nothing`)
	f.StringVar(&o.NMLayers, "nm-layers", "", `per decoder-layer overrides of --nm, e.g. '0-11=2:4,12-23=2:8' ("dense" allowed)`)
	f.BoolVar(&o.PruneWide, "prune-wide", false, fmt.Sprintf("also prune weights whose aspect ratio exceeds %d", convert.MaxAspectRatio))
	f.StringVar(&o.DType, "dtype", "keep", "stored float dtype: keep|fp32|fp16|bf16")
	f.StringVar(&compress, "compress", "", `compress tensors: "zstd" (default: none)`)
	f.IntVar(&o.Rank, "rank", 0, "rank of a low-rank adapter on every pruned weight (0: none)")
	f.Float64Var(&o.RankFrac, "rank-frac", 0, "adapter rank as a fraction of the hidden size, e.g. 0.0156 (exclusive with --rank)")
	f.StringVar(&o.AdapterInit, "adapter-init", "", "adapter initialisation: slope|svd|zero (default slope)")
	f.BoolVar(&o.MergeAdapters, "merge-adapters", false, "store adapters in SLoPe's merged inference layout (Lᵀ as extra rows of W, pruned with it)")
	f.Float32Var(&scale, "adapter-scale", 1, "adapter output scale")
	f.Uint64Var(&o.Seed, "seed", 0, "seed of every random choice (adapter init, randomized SVD)")
	f.BoolVar(&asJSON, "json", false, "print the summary as JSON on stdout")
	f.BoolVar(&quiet, "quiet", false, "no progress, warnings or per-weight table")
	return cmd
}

// newProgress reports each converted tensor on w: a progress bar when w is
// a terminal, else a line "converted 12/98 NAME".
func newProgress(w io.Writer) func(done, total int, name string) {
	if !isTerminal(w) {
		return func(done, total int, name string) {
			fmt.Fprintf(w, "converted %*d/%d %s\n", len(fmt.Sprint(total)), done, total, name)
		}
	}
	var bar *progressbar.ProgressBar
	return func(done, total int, name string) {
		if bar == nil {
			bar = progressbar.NewOptions(total, progressbar.OptionSetWriter(w), progressbar.OptionShowCount(),
				progressbar.OptionSetWidth(30), progressbar.OptionClearOnFinish(), progressbar.OptionSetDescription("converting"))
		}
		bar.Describe(name)
		_ = bar.Set(done)
		if done == total {
			_ = bar.Finish()
		}
	}
}

func printSummary(w io.Writer, res *convert.Result, o convert.Options, perWeight bool) error {
	pruned := fmt.Sprintf("%d weights pruned", res.Pruned)
	if res.Pruned == 0 {
		pruned = "no weights pruned"
	}
	ratio := 0.0
	if res.DenseBytes > 0 {
		ratio = float64(res.StoredBytes) / float64(res.DenseBytes)
	}
	var b strings.Builder
	fmt.Fprintf(&b, `wrote %s in %.2fs
  tensors:               %d (%s)
  bytes in/out:          %d source, %d file (%.3f)
  stored bytes:          %d of %d dense (%.3f)
  transpose extra zeros: %.2f%% of the pruned weights' entries
`, res.Out, res.Seconds, res.Tensors, pruned, res.SourceBytes, res.FileBytes, res.Ratio, res.StoredBytes, res.DenseBytes, ratio, 100*res.TransposeExtraZeros)
	if res.Adapted > 0 {
		layout := "plain"
		if res.Merged {
			layout = "merged"
		}
		fmt.Fprintf(&b, "  adapters:              %d of rank %d, %s init, %s layout, scale %g, seed %d\n",
			res.Adapted, res.Rank, res.AdapterInit, layout, res.Scale, res.Seed)
	}
	if perWeight {
		others := 0
		fmt.Fprintf(&b, "  %-44s %-8s %12s %12s\n", "weight", "choice", "err pruned", "err adapted")
		for _, r := range res.Weights {
			if !r.Linear {
				others++
				continue
			}
			choice, errP, errA := r.Choice, "", ""
			if !strings.HasPrefix(choice, "dense") {
				errP = fmt.Sprintf("%.4f", r.RelErrPruned)
				if r.Rank > 0 {
					errA = fmt.Sprintf("%.4f", r.RelErrAdapted)
				}
			}
			fmt.Fprintf(&b, "  %-44s %-8s %12s %12s\n", r.Name, choice, errP, errA)
		}
		fmt.Fprintf(&b, "  (%d other tensors stored dense: embeddings, positions, norms, biases, head)\n", others)
	}
	_, err := io.WriteString(w, b.String())
	return err
}
