package main

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/slopeml/slope/cli/internal/interrupt"
	"github.com/slopeml/slope/export"
)

func newExportCmd() *cobra.Command {
	var o export.Options
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "export FILE --to hf|onnx --out PATH",
		Short: "Write a container as a dense Hugging Face directory or an ONNX model",
		Long: "export writes the OPT model of a .slope container in a format other tools load.\n" +
			"N:M weights are written dense, with zeros at the pruned positions, and low-rank\n" +
			"adapters are merged in: W_s + scale·(L·R)ᵀ (plain or merged layout).\n\n" +
			"  --to hf --out DIR     model.safetensors in the OPTForCausalLM layout (model.decoder.*\n" +
			"                        keys, lm_head.weight only when untied), config.json (with\n" +
			"                        torch_dtype) and the container's tokenizer files, if any.\n" +
			"  --to onnx --out F.onnx  an ONNX graph of standard ops (opset 20) that ONNX Runtime\n" +
			"                        runs: input_ids [batch, seq] -> logits [batch, seq, vocab];\n" +
			"                        --with-past adds attention_mask, past_key_values.{i}.{key,value}\n" +
			"                        inputs and present.{i}.{key,value} outputs. Weights go to\n" +
			"                        F.onnx.data past 2 GB (or always, with --external-data).\n\n" +
			"Weights keep the dtype they are stored in unless --dtype converts them. The output is\n" +
			"written beside its path (PATH.tmp) and renamed into place; an existing non-empty\n" +
			"directory (--to hf) or file (--to onnx) is replaced only with --force, never the\n" +
			"input, and never a file by a directory or a directory by a file. Ctrl-C or SIGTERM\n" +
			"stop it, remove what it wrote and exit with status 130 (143 for SIGTERM).",
		Example: "  slope export model.slope --to hf --out opt-dense\n" +
			"  slope export model.slope --to hf --out opt-dense-bf16 --dtype bf16\n" +
			"  slope export model.slope --to onnx --out model.onnx --with-past",
		Args: exactArgs("FILE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.To = strings.ToLower(o.To)
			switch o.To {
			case export.ToHF, export.ToONNX:
			case "":
				return usagef(cmd, "export: --to is required (hf or onnx)")
			default:
				return usagef(cmd, "export: --to %q: want hf or onnx", o.To)
			}
			if o.Out == "" {
				return usagef(cmd, "export: --out is required (a directory for --to hf, a .onnx file for --to onnx)")
			}
			if o.To == export.ToHF && (o.WithPast || o.ExternalData) {
				return usagef(cmd, "export: --with-past and --external-data apply to --to onnx only")
			}
			switch strings.ToLower(o.DType) {
			case "", "keep", "fp32", "fp16", "bf16", "float32", "float16", "bfloat16":
			default:
				return usagef(cmd, "export: --dtype %q: want keep, fp32, fp16 or bf16", o.DType)
			}
			// Ctrl-C or SIGTERM stop between tensors and remove what was
			// written (the staging OUT.tmp), for this command only; after
			// the first, the default handling is back (a second one stops
			// the process at once).
			ctx, caught, stop := interrupt.Watch(cmd.Context(), cmd.ErrOrStderr())
			defer stop()
			o.Context = ctx
			rep, err := export.Export(args[0], o)
			if err != nil {
				return interrupt.Wrap(err, caught)
			}
			out := cmd.OutOrStdout()
			if asJSON {
				b, err := json.MarshalIndent(rep, "", "  ")
				if err != nil {
					return err
				}
				_, err = out.Write(append(b, '\n'))
				return err
			}
			for _, w := range rep.Warnings {
				fmt.Fprintf(cmd.ErrOrStderr(), "slope: warning: %s\n", w)
			}
			where := ""
			if rep.External {
				where = ", weights in external data"
			}
			_, err = fmt.Fprintf(out, "wrote %s (%s): %d tensors, %d bytes of weights, %d N:M weights densified, %d adapters merged%s; files %s\n",
				rep.Out, rep.To, rep.Tensors, rep.Bytes, rep.Densified, rep.Merged, where, strings.Join(rep.Files, ", "))
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.To, "to", "", "target format: hf (Hugging Face directory) or onnx (required)")
	f.StringVar(&o.Out, "out", "", "output directory (hf) or .onnx file (onnx) (required)")
	f.StringVar(&o.DType, "dtype", "keep", "weight dtype: keep (as stored), fp32, fp16 or bf16")
	f.BoolVar(&o.Force, "force", false, "replace an existing output")
	f.BoolVar(&o.WithPast, "with-past", false, "onnx: decoder with past key/value inputs and present outputs")
	f.BoolVar(&o.ExternalData, "external-data", false, "onnx: store the weights in OUT.data even below 2 GB")
	f.BoolVar(&asJSON, "json", false, "print the report as JSON")
	return cmd
}
