package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"unicode"

	"github.com/spf13/cobra"

	"github.com/slopeml/slope/format"
)

func newInspectCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "inspect FILE",
		Short: "Describe a .slope container",
		Long: "inspect prints a container's architecture and configuration, graph summary,\n" +
			"tensor table (shape, dtype, encoding, compression, stored bytes and ratio to\n" +
			"dense fp16), totals per encoding, and provenance. It reads only the manifest;\n" +
			"use verify to check tensor bytes.",
		Args: exactArgs("FILE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			path := args[0]
			f, err := format.Open(path, nil)
			if err != nil {
				return err
			}
			defer f.Close()
			s := format.Summarize(f)
			out := cmd.OutOrStdout()
			if asJSON {
				b, err := json.MarshalIndent(s, "", "  ")
				if err != nil {
					return fmt.Errorf("%s: encode summary as JSON: %w", path, err)
				}
				_, err = out.Write(append(b, '\n'))
				return err
			}
			var buf bytes.Buffer
			writeSummary(&buf, s)
			_, err = out.Write(buf.Bytes())
			return err
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the summary as indented JSON")
	return cmd
}

// writeSummary renders s for people. Writes go to a buffer, so their
// errors are not checked here.
func writeSummary(w io.Writer, s *format.Summary) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	flush := func() { _ = tw.Flush() }

	fmt.Fprintf(tw, "file\t%s\n", clean(s.Path))
	fmt.Fprintf(tw, "size\t%s, alignment %d\n", sizeString(uint64(max(s.FileBytes, 0))), s.Alignment)
	arch := s.Architecture
	if arch == "" {
		arch = "(none)"
	}
	fmt.Fprintf(tw, "architecture\t%s\n", clean(arch))
	flush()
	if len(s.Config) > 0 {
		fmt.Fprintf(w, "config (%s)\n", clean(s.ConfigKind))
		for _, k := range slices.Sorted(maps.Keys(s.Config)) {
			fmt.Fprintf(tw, "  %s\t%s\n", clean(k), clean(fmt.Sprint(s.Config[k])))
		}
		flush()
	}

	fmt.Fprintln(w)
	fmt.Fprintf(tw, "graph\t%d nodes", s.GraphNodes)
	for _, d := range slices.Sorted(maps.Keys(s.Opsets)) {
		fmt.Fprintf(tw, ", opset %s v%d", clean(d), s.Opsets[d])
	}
	fmt.Fprintln(tw)
	if s.GraphNodes > 0 || len(s.GraphInputs) > 0 || len(s.GraphOutputs) > 0 {
		fmt.Fprintf(tw, "  inputs\t%s\n", cleanList(s.GraphInputs))
		fmt.Fprintf(tw, "  outputs\t%s\n", cleanList(s.GraphOutputs))
		ops := make([]string, 0, len(s.OpCounts))
		for _, op := range slices.Sorted(maps.Keys(s.OpCounts)) {
			ops = append(ops, fmt.Sprintf("%s %d", clean(op), s.OpCounts[op]))
		}
		fmt.Fprintf(tw, "  ops\t%s\n", orNone(strings.Join(ops, ", ")))
	}
	flush()

	fmt.Fprintf(w, "\ntensors (%d)\n", len(s.Tensors))
	if len(s.Tensors) > 0 {
		fmt.Fprintln(tw, "  NAME\tSHAPE\tDTYPE\tENCODING\tOF\tCOMPRESSION\tSTORED\tDENSE FP16\tRATIO")
		for _, t := range s.Tensors {
			enc := t.Encoding
			if t.Pattern != "" {
				enc += " " + t.Pattern
			}
			if t.AdapterFactor != "" {
				enc += " " + t.AdapterFactor
			}
			if t.AdapterMerged {
				enc += " (merged)"
			}
			if t.MomentOf != "" {
				enc += " (moment)"
			}
			of := t.TransposeOf + t.AdapterOf + t.MomentOf
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n",
				clean(t.Name), shapeString(t.Shape), t.DType, clean(enc), orDash(clean(of)),
				compressionString(t.Compression), t.StoredBytes, bytesOrDash(t.DenseFP16Bytes), ratioString(t.RatioToFP16))
		}
		flush()
	}

	tot := s.Totals
	fmt.Fprintln(w, "\ntotals")
	fmt.Fprintln(tw, "  ENCODING\tTENSORS\tSTORED\tDENSE FP16\tRATIO")
	for _, e := range slices.Sorted(maps.Keys(tot.TensorsByEncoding)) {
		st, de := tot.ByEncoding[e], tot.DenseFP16ByEncoding[e]
		fmt.Fprintf(tw, "  %s\t%d\t%s\t%s\t%s\n", clean(e), tot.TensorsByEncoding[e], sizeString(st), sizeOrDash(de), ratioString(ratio(st, de)))
	}
	fmt.Fprintf(tw, "  all\t%d\t%s\t%s\t%s\n", tot.Tensors, sizeString(tot.StoredBytes), sizeOrDash(tot.DenseFP16Bytes), ratioString(tot.Ratio))
	flush()

	if p := s.Provenance; p != nil {
		fmt.Fprintln(w, "\nprovenance")
		tool := strings.TrimSpace(p.GetTool() + " " + p.GetToolVersion())
		fmt.Fprintf(tw, "  tool\t%s\n", orNone(clean(tool)))
		fmt.Fprintf(tw, "  created\t%s\n", orNone(clean(p.GetCreated())))
		if p.GetCommand() != "" {
			fmt.Fprintf(tw, "  command\t%s\n", clean(p.GetCommand()))
		}
		if c := p.GetCalibration(); c != nil {
			fmt.Fprintf(tw, "  calibration\t%s: %d samples x %d tokens from %s, seed %d\n",
				orNone(clean(c.GetDescription())), c.GetSamples(), c.GetSeqLen(), orNone(clean(c.GetSource())), c.GetSeed())
		}
		flush()
		if len(p.GetSources()) > 0 {
			fmt.Fprintln(w, "  sources")
			for _, src := range p.GetSources() {
				fmt.Fprintf(tw, "    %s\t%s\t%d bytes\t%s\n", clean(src.GetPath()), orDash(clean(src.GetFormat())), src.GetSize(),
					orDash(clean(src.GetSha256())))
			}
			flush()
		}
		if len(p.GetTensors()) > 0 {
			fmt.Fprintln(w, "  pruning")
			fmt.Fprintln(tw, "    TENSOR\tMETHOD\tPATTERN\tSOURCE\tREASON")
			for _, tp := range p.GetTensors() {
				src := tp.GetSourceName()
				if tp.GetSourceDtype() != "" {
					src = strings.TrimSpace(src + " (" + tp.GetSourceDtype() + ")")
				}
				fmt.Fprintf(tw, "    %s\t%s\t%s\t%s\t%s\n", clean(tp.GetName()), orDash(clean(tp.GetMethod())),
					orDash(clean(tp.GetPattern())), orDash(clean(src)), orDash(clean(tp.GetReason())))
			}
			flush()
		}
	}

	if len(s.Metadata) > 0 {
		fmt.Fprintln(w, "\nmetadata")
		for _, k := range slices.Sorted(maps.Keys(s.Metadata)) {
			fmt.Fprintf(tw, "  %s\t%s\n", clean(k), clean(s.Metadata[k]))
		}
		flush()
	}
	if s.HasTraining {
		fmt.Fprintf(w, "\ntraining checkpoint at step %d\n", s.TrainingStep)
	}
}

func ratio(num, den uint64) float64 {
	if den == 0 {
		return 0
	}
	return float64(num) / float64(den)
}

func ratioString(r float64) string {
	if r == 0 {
		return "-"
	}
	return strconv.FormatFloat(r, 'f', 4, 64)
}

func shapeString(shape []uint64) string {
	parts := make([]string, len(shape))
	for i, d := range shape {
		parts[i] = strconv.FormatUint(d, 10)
	}
	return "[" + strings.Join(parts, " ") + "]"
}

func compressionString(c string) string {
	if c == "COMPRESSION_NONE" {
		return "none"
	}
	return strings.ToLower(c)
}

// sizeString is n in bytes and, from 1 KiB up, in binary units.
func sizeString(n uint64) string {
	if n < 1024 {
		return fmt.Sprintf("%d B", n)
	}
	units := []string{"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	v := float64(n) / 1024
	u := 0
	for v >= 1024 && u < len(units)-1 {
		v /= 1024
		u++
	}
	return fmt.Sprintf("%.1f %s (%d B)", v, units[u], n)
}

func sizeOrDash(n uint64) string {
	if n == 0 {
		return "-"
	}
	return sizeString(n)
}

func bytesOrDash(n uint64) string {
	if n == 0 {
		return "-"
	}
	return strconv.FormatUint(n, 10)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

func cleanList(l []string) string {
	out := make([]string, len(l))
	for i, s := range l {
		out[i] = clean(s)
	}
	return orNone(strings.Join(out, ", "))
}

// clean returns s unchanged when it is plain printable text, quoted
// otherwise, so that names read from a file cannot break the table layout
// or send control sequences to the terminal.
func clean(s string) string {
	for _, r := range s {
		if !unicode.IsPrint(r) || r == '\t' {
			return strconv.Quote(s)
		}
	}
	return s
}
