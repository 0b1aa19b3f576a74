package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/slopeml/slope/convert"
)

func newDenseToSlope(args []string) *cobra.Command {
	var (
		o        convert.Options
		compress string
		asJSON   bool
		quiet    bool
	)
	cmd := &cobra.Command{
		Use:   "dense-to-slope",
		Short: "Prune a dense OPT checkpoint N:M by magnitude and write a .slope file",
		Long: `dense-to-slope reads a dense OPT checkpoint, prunes the linear weights of
every decoder layer (q, k, v, out_proj, fc1, fc2) N:M by magnitude, adds
their double-pruned transposes, and writes everything to a .slope file.

--in is a Hugging Face model directory (config.json plus model.safetensors,
sharded safetensors with model.safetensors.index.json, pytorch_model.bin, or
sharded .bin with pytorch_model.bin.index.json; either key naming), or an ONNX
export of an OPT model (either PyTorch exporter; the structure is recognised
from the graph). --nm dense writes the weights unpruned.
Without --in the tiny OPT model embedded in the binary (` + convert.DefaultLabel + `)
is converted, so the command works offline.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, _, err := convert.ParseNMOption(o.NM); err != nil {
				return fmt.Errorf("--nm %q: %w", o.NM, err)
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
			stderr := cmd.ErrOrStderr()
			if !quiet {
				o.Progress = func(done, total int, name string) {
					fmt.Fprintf(stderr, "[%*d/%d] %s\n", len(fmt.Sprint(total)), done, total, name)
				}
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
			return printSummary(cmd.OutOrStdout(), res, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.In, "in", "", "Hugging Face model directory or .onnx file; empty: the embedded tiny OPT model")
	f.StringVar(&o.Out, "out", "model.slope", "output .slope file")
	f.StringVar(&o.NM, "nm", "2:4", `N:M pattern for the decoder-layer linear weights, or "dense" to prune nothing`)
	f.StringVar(&o.DType, "dtype", "keep", "stored float dtype: keep|fp32|fp16|bf16")
	f.StringVar(&compress, "compress", "", `compress tensors: "zstd" (default: none)`)
	f.BoolVar(&asJSON, "json", false, "print the result as JSON")
	f.BoolVar(&quiet, "quiet", false, "no progress or warnings on stderr")
	return cmd
}

func printSummary(w io.Writer, res *convert.Result, o convert.Options) error {
	pruned := fmt.Sprintf("%d weights pruned %s", res.Pruned, o.NM)
	if res.Pruned == 0 {
		pruned = "no weights pruned"
	}
	ratio := 0.0
	if res.DenseBytes > 0 {
		ratio = float64(res.StoredBytes) / float64(res.DenseBytes)
	}
	_, err := fmt.Fprintf(w, `wrote %s
  tensors:               %d (%s)
  stored bytes:          %d of %d dense (%.3f), file %d bytes
  transpose extra zeros: %.2f%% of the pruned weights' entries
`, res.Out, res.Tensors, pruned, res.StoredBytes, res.DenseBytes, ratio, res.FileBytes, 100*res.TransposeExtraZeros)
	return err
}
