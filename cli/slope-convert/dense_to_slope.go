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

	"github.com/slopeml/slope/cli/internal/outfile"
	"github.com/slopeml/slope/cli/internal/usage"
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
		force    bool
		scale    float32
	)
	cmd := &cobra.Command{
		Use:   "dense-to-slope",
		Short: "Prune a dense OPT checkpoint N:M (magnitude, Wanda or SparseGPT), add adapters, and write a .slope file",
		Long: `dense-to-slope reads a dense OPT checkpoint, prunes the linear weights of
every decoder layer (q, k, v, out_proj, fc1, fc2) N:M, adds
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

--method chooses how: magnitude (default: the N largest |w| of every M
consecutive inputs of a row, ties to the lower index), wanda (the N largest
|w_ij|·‖X_j‖₂, X the layer's calibration inputs), sparsegpt (OBS pruning
with updates of the kept weights from H = (2/n)·XᵀX, 1% damping, blocks of
128 columns) or random (N of every M chosen at random, seeded by --seed:
SLoPe's recipe for continued pretraining). The calibrated methods need --calib FILE and prune the decoder
layers one after the other: each layer's inputs come from the layers before
it, already pruned, computed by the CPU runtime's kernels; within a layer
q, k, v are pruned first on the LayerNorm output, then out_proj on the
attention output of the pruned q, k, v, then fc1 and fc2 likewise.
--calib is text, encoded by the model's tokenizer (tokenizer.json, or
vocab.json and merges.txt, beside --in; every sample starts with the BOS
token), or token ids: .bin and .u16 files hold little-endian uint16 ids,
.u32 files uint32 ids (--calib-format text|u16|u32 overrides the
extension). --calib-samples windows (default ` + fmt.Sprint(convert.DefaultCalibSamples) + `) of --calib-seqlen tokens
(default ` + fmt.Sprint(convert.DefaultCalibSeqLen) + `, capped at the model's positions) are drawn from the
token stream with --seed. The time per layer is reported, and per weight
the output error ‖X(W − W_s)ᵀ‖/‖XWᵀ‖ on the calibration inputs. The
samples go through each layer in chunks of --calib-chunk samples (default:
about 8192 tokens), once per input of its linears and once to its output;
memory holds up to three copies of the hidden states (samples x seqlen x hidden
float32), one chunk's activations and one Hessian, and the result does not
depend on the chunk.

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

--seed makes the random choices (calibration samples too) deterministic: the same command gives the
same file, bar the creation time in the provenance (set SOURCE_DATE_EPOCH
to fix that too).

Progress goes to stderr: a bar when it is a terminal, else one line per
tensor (and one per decoder layer with a calibrated method); --quiet silences it (and the per-weight table). --json prints the
summary as JSON on stdout.
Without --in the small OPT model embedded in the binary (` + convert.DefaultLabel + `:
4 layers, hidden 128, trained by this project on the King James Bible, with its
tokenizer) is converted, so the command works offline and the result writes text.
--in ` + convert.TinyLabel + ` converts the tiny random model the tests compare with
transformers.`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usage.Errorf(cmd, "unexpected argument %q: give the input with --in (a Hugging Face directory, an .onnx file or %sNAME)", args[0], convert.EmbeddedPrefix)
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			// The command line first (usage errors, exit status 2), then
			// --out, all before any work: a conversion can take long.
			if err := checkFlags(cmd, &o, compress, scale); err != nil {
				return usage.Wrap(cmd, err)
			}
			if err := outfile.CheckContainer("--out", o.Out, force, o.In, o.Calib); err != nil {
				return outfile.ForceHint(err)
			}
			if err := outfile.RemoveStale("--out", o.Out, cmd.ErrOrStderr()); err != nil {
				return err
			}
			stderr := cmd.ErrOrStderr()
			if !quiet {
				pr := newProgress(stderr)
				o.Progress, o.LayerProgress = pr.tensor, pr.layer
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
	f.StringVar(&o.In, "in", "", "Hugging Face model directory, .onnx file, or "+convert.EmbeddedPrefix+"NAME; empty: the embedded default model")
	f.StringVar(&o.Out, "out", "model.slope", "output .slope file (an existing .slope file is replaced; any other file only with --force)")
	f.BoolVar(&force, "force", false, "replace an existing --out that is not a .slope container")
	f.StringVar(&o.NM, "nm", "2:4", `N:M pattern for the decoder-layer linear weights, or "dense" to prune nothing`)
	f.StringVar(&o.NMLayers, "nm-layers", "", `per decoder-layer overrides of --nm, e.g. '0-11=2:4,12-23=2:8' ("dense" allowed)`)
	f.BoolVar(&o.PruneWide, "prune-wide", false, fmt.Sprintf("also prune weights whose aspect ratio exceeds %d", convert.MaxAspectRatio))
	f.StringVar(&o.DType, "dtype", "keep", "stored float dtype: keep|fp32|fp16|bf16")
	f.StringVar(&compress, "compress", "", `compress tensors: "zstd" (default: none)`)
	f.StringVar(&o.Transpose, "transpose", "mask", `how double-pruned transposes are stored: "mask" (one bit per kept value) or "materialize" (the mask and W_dpᵀ as its own N:M tensor, NAME.transpose)`)
	f.IntVar(&o.Rank, "rank", 0, "rank of a low-rank adapter on every pruned weight (0: none)")
	f.Float64Var(&o.RankFrac, "rank-frac", 0, "adapter rank as a fraction of the hidden size, e.g. 0.0156 (exclusive with --rank)")
	f.StringVar(&o.AdapterInit, "adapter-init", "", "adapter initialisation: slope|svd|zero (default slope)")
	f.BoolVar(&o.MergeAdapters, "merge-adapters", false, "store adapters in SLoPe's merged inference layout (Lᵀ as extra rows of W, pruned with it)")
	f.Float32Var(&scale, "adapter-scale", 1, "adapter output scale")
	f.StringVar(&o.Method, "method", "magnitude", "pruning method: magnitude|wanda|sparsegpt|random (wanda and sparsegpt need --calib; random: seeded random masks, SLoPe's initialisation)")
	f.StringVar(&o.Calib, "calib", "", "calibration data: a text file, or token ids (.bin/.u16: uint16, .u32: uint32, little-endian)")
	f.StringVar(&o.CalibFormat, "calib-format", "", "calibration file format: auto|text|u16|u32 (default auto: by extension)")
	f.IntVar(&o.CalibSamples, "calib-samples", convert.DefaultCalibSamples, "number of calibration samples")
	f.IntVar(&o.CalibSeqLen, "calib-seqlen", convert.DefaultCalibSeqLen, "tokens per calibration sample (at most the model's positions)")
	f.IntVar(&o.CalibChunk, "calib-chunk", 0, "calibration samples per forward pass (0: about 8192 tokens; bounds memory, never changes the result)")
	f.Uint64Var(&o.Seed, "seed", 0, "seed of every random choice (calibration samples, adapter init, randomized SVD)")
	f.BoolVar(&asJSON, "json", false, "print the summary as JSON on stdout")
	f.BoolVar(&quiet, "quiet", false, "no progress, warnings or per-weight table")
	return cmd
}

// progress reports on w each converted tensor (a progress bar when w is
// a terminal, else a line "converted 12/98 NAME") and each decoder layer
// pruned by a calibrated method (a line "pruned layer 3/12 in 1.25s
// (6 weights)", printed above the bar on a terminal).
type progress struct {
	w    io.Writer
	term bool
	bar  *progressbar.ProgressBar
}

func newProgress(w io.Writer) *progress { return &progress{w: w, term: isTerminal(w)} }

func (p *progress) tensor(done, total int, name string) {
	if !p.term {
		fmt.Fprintf(p.w, "converted %*d/%d %s\n", len(fmt.Sprint(total)), done, total, name)
		return
	}
	if p.bar == nil {
		p.bar = progressbar.NewOptions(total, progressbar.OptionSetWriter(p.w), progressbar.OptionShowCount(),
			progressbar.OptionSetWidth(30), progressbar.OptionClearOnFinish(), progressbar.OptionSetDescription("converting"))
	}
	p.bar.Describe(name)
	_ = p.bar.Set(done)
	if done == total {
		_ = p.bar.Finish()
	}
}

func (p *progress) layer(r convert.LayerReport) {
	if p.bar != nil {
		_ = p.bar.Clear()
	}
	fmt.Fprintf(p.w, "pruned layer %*d/%d in %.2fs (%d weights)\n", len(fmt.Sprint(r.Layers)), r.Layer+1, r.Layers, r.Seconds, len(r.Weights))
	if p.bar != nil {
		_ = p.bar.RenderBlank()
	}
}

// checkFlags checks dense-to-slope's flags that need no file and sets the
// options they imply (o.Compress, o.AdapterScale; unset calibration sizes
// become 0, the converter's defaults).
func checkFlags(cmd *cobra.Command, o *convert.Options, compress string, scale float32) error {
	if _, _, err := convert.ParseNMOption(o.NM); err != nil {
		return fmt.Errorf("--nm %q: %w", o.NM, err)
	}
	if _, err := convert.ParseNMLayers(o.NMLayers); err != nil {
		return err
	}
	if _, _, err := convert.ParseDTypeOption(o.DType); err != nil {
		return fmt.Errorf("--dtype: %w", err)
	}
	if _, err := convert.ParseTransposeOption(o.Transpose); err != nil {
		return err
	}
	switch compress {
	case "":
	case "zstd":
		o.Compress = true
	default:
		return fmt.Errorf("--compress %q: the only compression is zstd", compress)
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
	if !f.Changed("calib-samples") {
		o.CalibSamples = 0
	} else if o.CalibSamples < 1 {
		return fmt.Errorf("--calib-samples %d: want at least 1", o.CalibSamples)
	}
	if !f.Changed("calib-seqlen") {
		o.CalibSeqLen = 0
	} else if o.CalibSeqLen < 2 {
		return fmt.Errorf("--calib-seqlen %d: want at least 2", o.CalibSeqLen)
	}
	// The method and its calibration options (the file itself is read
	// later).
	return convert.CheckCalibOptions(*o)
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
	method := res.Method
	if res.Calib != "" {
		method += fmt.Sprintf(", calibrated on %s (%d samples of %d tokens, seed %d)", res.Calib, res.CalibSamples, res.CalibSeqLen, res.Seed)
	}
	fmt.Fprintf(&b, "  method:                %s\n", method)
	if res.Transpose != "" {
		fmt.Fprintf(&b, "  transposes:            mask and W_dpᵀ (%s)\n", res.Transpose)
	}
	if len(res.Layers) > 0 {
		var total float64
		for _, l := range res.Layers {
			total += l.Seconds
		}
		fmt.Fprintf(&b, "  calibrated pruning:    %d layers in %.2fs (%.2fs per layer)\n", len(res.Layers), total, total/float64(len(res.Layers)))
	}
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
		calib := len(res.Layers) > 0
		fmt.Fprintf(&b, "  %-44s %-8s %12s %12s", "weight", "choice", "err pruned", "err adapted")
		if calib {
			fmt.Fprintf(&b, " %12s", "err calib")
		}
		b.WriteString("\n")
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
			fmt.Fprintf(&b, "  %-44s %-8s %12s %12s", r.Name, choice, errP, errA)
			if calib && r.CalibRelErr > 0 {
				fmt.Fprintf(&b, " %12.4f", r.CalibRelErr)
			}
			b.WriteString("\n")
		}
		fmt.Fprintf(&b, "  (%d other tensors stored dense: embeddings, positions, norms, biases, head)\n", others)
	}
	_, err := io.WriteString(w, b.String())
	return err
}
