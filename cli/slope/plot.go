package main

import (
	"bufio"
	"cmp"
	"encoding/json"
	"fmt"
	"image/color"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"

	"github.com/slopeml/slope/cli/internal/outfile"
)

func newPlotCmd() *cobra.Command {
	var (
		out           string
		width, height float64
	)
	cmd := &cobra.Command{
		Use:   "plot LOG.jsonl [LOG2.jsonl ...] --out loss.png",
		Short: "Plot training and validation loss of slope train logs",
		Long: "plot draws the train loss (step records) and validation loss (eval records) of\n" +
			"one or more JSONL logs written by 'slope train --log' on one chart, one colour per\n" +
			"run (named after its file): train loss solid, validation loss dashed with points.\n" +
			"The format follows --out's extension (.png, .svg, .pdf, .jpg, ...).",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usagef(cmd, "%s: missing LOG.jsonl", cmd.Name())
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if out == "" {
				return usagef(cmd, "--out is required")
			}
			if !(width > 0 && width <= 200) || !(height > 0 && height <= 200) {
				return usagef(cmd, "--width and --height must be in (0, 200] inches")
			}
			if _, err := plot.New().WriterTo(1, 1, imageFormat(out)); err != nil {
				return usagef(cmd, "--out %s: %v (the format follows the extension: .png, .svg, .pdf, .jpg, .eps, .tif)", out, err)
			}
			for _, in := range args {
				if outfile.SameFile(in, out) {
					return usagef(cmd, "--out %s is the log %s", out, in)
				}
			}
			if err := plotLogs(args, out, vg.Length(width)*vg.Inch, vg.Length(height)*vg.Inch); err != nil {
				return err
			}
			runs := "runs"
			if len(args) == 1 {
				runs = "run"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s (%d %s)\n", out, len(args), runs)
			return nil
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "image to write (.png, .svg, .pdf, ...)")
	cmd.Flags().Float64Var(&width, "width", 8, "width in inches")
	cmd.Flags().Float64Var(&height, "height", 5, "height in inches")
	return cmd
}

// runLoss is one log's losses by step.
type runLoss struct {
	name        string
	train, eval plotter.XYs
}

// readRunLoss reads a JSONL log of slope train; errors name the file
// (and line).
func readRunLoss(path string) (*runLoss, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r := &runLoss{name: strings.TrimSuffix(filepath.Base(path), filepath.Ext(path))}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	line := 0
	for sc.Scan() {
		line++
		b := sc.Bytes()
		if len(strings.TrimSpace(string(b))) == 0 {
			continue
		}
		var rec struct {
			Type string   `json:"type"`
			Step int      `json:"step"`
			Loss *float64 `json:"loss"`
		}
		if err := json.Unmarshal(b, &rec); err != nil {
			return nil, fmt.Errorf("%s:%d: not a slope train log record: %w", path, line, err)
		}
		if rec.Type == "memory" {
			continue // the run's memory summary, no loss
		}
		if rec.Loss == nil {
			return nil, fmt.Errorf("%s:%d: a %s record without a loss", path, line, rec.Type)
		}
		if math.Abs(*rec.Loss) > 1e30 {
			continue // a diverged step cannot be drawn (nor an axis spanning it)
		}
		pt := plotter.XY{X: float64(rec.Step), Y: *rec.Loss}
		switch rec.Type {
		case "step":
			r.train = append(r.train, pt)
		case "eval":
			r.eval = append(r.eval, pt)
		default:
			return nil, fmt.Errorf("%s:%d: record type %q, want step or eval", path, line, rec.Type)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(r.train)+len(r.eval) == 0 {
		return nil, fmt.Errorf("%s: no step or eval records", path)
	}
	// A resumed run appends to its log and repeats the steps after its
	// checkpoint: keep the last record of each step, in step order.
	r.train, r.eval = lastByStep(r.train), lastByStep(r.eval)
	return r, nil
}

// lastByStep keeps the last point of each step (X), sorted by step.
func lastByStep(pts plotter.XYs) plotter.XYs {
	last := map[float64]int{}
	for i, p := range pts {
		last[p.X] = i
	}
	out := make(plotter.XYs, 0, len(last))
	for i, p := range pts {
		if last[p.X] == i {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b plotter.XY) int { return cmp.Compare(a.X, b.X) })
	return out
}

// plotLogs draws the logs' losses into out.
func plotLogs(paths []string, out string, w, h vg.Length) error {
	p := plot.New()
	p.Title.Text = "Loss"
	p.X.Label.Text = "step"
	p.Y.Label.Text = "cross-entropy (nats/token)"
	p.Y.Tick.Marker = exactTicks{}
	p.Legend.Top = true
	p.Add(plotter.NewGrid())
	base := map[string]int{}
	for _, path := range paths {
		base[strings.TrimSuffix(filepath.Base(path), filepath.Ext(path))]++
	}
	for i, path := range paths {
		r, err := readRunLoss(path)
		if err != nil {
			return err
		}
		if base[r.name] > 1 {
			r.name = strings.TrimSuffix(path, filepath.Ext(path)) // two runs' logs share a name
		}
		c := plotutil.Color(i)
		if len(r.train) > 0 {
			l, err := plotter.NewLine(r.train)
			if err != nil {
				return fmt.Errorf("%s: %w", path, err)
			}
			l.Color, l.Width = c, vg.Points(1)
			p.Add(l)
			p.Legend.Add(r.name+" train", l)
		}
		if len(r.eval) > 0 {
			l, pts, err := plotter.NewLinePoints(r.eval)
			if err != nil {
				return fmt.Errorf("%s: %w", path, err)
			}
			l.Color, l.Width, l.Dashes = c, vg.Points(1.5), []vg.Length{vg.Points(5), vg.Points(3)}
			pts.Color, pts.Shape = darker(c), plotutil.Shape(i)
			p.Add(l, pts)
			p.Legend.Add(r.name+" val", l, pts)
		}
	}
	wt, err := p.WriterTo(w, h, imageFormat(out))
	if err != nil {
		return fmt.Errorf("%s: %w", out, err)
	}
	// A temporary file renamed into place: a failed or interrupted run
	// leaves an earlier image as it was.
	f, err := outfile.CreateTemp(out)
	if err != nil {
		return fmt.Errorf("--out %s: %w", out, err)
	}
	defer os.Remove(f.Name()) // (gone after the rename)
	if _, err := wt.WriteTo(f); err != nil {
		f.Close()
		return fmt.Errorf("%s: %w", out, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("%s: %w", out, err)
	}
	if err := os.Rename(f.Name(), out); err != nil {
		return fmt.Errorf("--out %s: %w", out, err)
	}
	return nil
}

// imageFormat is the image format gonum/plot writes for the file name:
// its extension, lower case, without the dot.
func imageFormat(name string) string {
	return strings.ToLower(strings.TrimPrefix(filepath.Ext(name), "."))
}

// exactTicks are gonum's default ticks with each major tick labelled by
// its value in as few decimals as write it exactly: gonum's own labels
// round, and on the narrow range of a late-training loss curve two ticks
// could read the same (6.2, 6.2, 6.3, 6.3 for ticks 6.225 apart by 0.025).
type exactTicks struct{}

func (exactTicks) Ticks(min, max float64) []plot.Tick {
	ts := plot.DefaultTicks{}.Ticks(min, max)
	// A label may differ from its value by a millionth of the range: far
	// below the ticks' spacing, so labels of different ticks differ.
	tol := 1e-6 * (max - min)
	if !(tol > 0) {
		return ts // a single value: gonum's labels
	}
	for i, t := range ts {
		if t.Label == "" {
			continue // a minor tick
		}
		l := strconv.FormatFloat(t.Value, 'g', -1, 64) // exact, if nothing shorter is
		for prec := 0; prec <= 17; prec++ {
			s := strconv.FormatFloat(t.Value, 'f', prec, 64)
			if v, err := strconv.ParseFloat(s, 64); err == nil && math.Abs(v-t.Value) <= tol {
				l = s
				break
			}
		}
		ts[i].Label = l
	}
	return ts
}

func darker(c color.Color) color.Color {
	r, g, b, a := c.RGBA()
	return color.RGBA64{uint16(r * 3 / 4), uint16(g * 3 / 4), uint16(b * 3 / 4), uint16(a)}
}
