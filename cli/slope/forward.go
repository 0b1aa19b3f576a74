package main

import (
	"encoding/json"
	"fmt"
	"math"

	"github.com/spf13/cobra"
)

func newForwardCmd() *cobra.Command {
	var idsJSON, maskJSON string
	var threads int
	var device deviceFlags
	cmd := &cobra.Command{
		Use:   "forward MODEL --ids JSON [--mask JSON]",
		Short: "Print the logits of a batch of token ids as JSON",
		Long: "forward runs a .slope model on token ids and prints {\"logits\": [batch][seq][vocab]}.\n" +
			"--ids is a JSON array of rows of ids (or one row); --mask likewise, 1 for a token\n" +
			"and 0 for padding (default: all ones). For scripted checks against other runtimes.",
		Args: exactArgs("MODEL"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if idsJSON == "" {
				return usagef(cmd, "--ids is required")
			}
			ids, err := parseRows("--ids", idsJSON)
			if err != nil {
				return usagef(cmd, "%v", err)
			}
			var mask [][]int32
			if maskJSON != "" {
				if mask, err = parseRows("--mask", maskJSON); err != nil {
					return usagef(cmd, "%v", err)
				}
				// parseRows made both rectangular.
				if len(mask) != len(ids) || len(mask[0]) != len(ids[0]) {
					return usagef(cmd, "--mask: %d rows of %d entries for %d rows of %d ids", len(mask), len(mask[0]), len(ids), len(ids[0]))
				}
			}
			for b, r := range mask {
				for t, v := range r {
					if v != 0 && v != 1 {
						return usagef(cmd, "--mask: sequence %d, token %d is %d, want 0 or 1", b, t, v)
					}
				}
			}
			m, err := openModel(cmd, args[0], device)
			if err != nil {
				return err
			}
			defer m.Close()
			if err := checkIDs(ids, m.Vocab()); err != nil {
				return usagef(cmd, "--ids: %v", err)
			}
			if mp := m.MaxPositions(); len(ids[0]) > mp {
				return usagef(cmd, "--ids: sequences of %d tokens, more than the model's %d positions", len(ids[0]), mp)
			}
			s, err := m.NewSession(len(ids), len(ids[0]))
			if err != nil {
				return err
			}
			defer s.Close()
			s.Threads = threads
			if mask == nil {
				mask = make([][]int32, len(ids))
				for b := range ids {
					mask[b] = make([]int32, len(ids[b]))
					for t := range mask[b] {
						mask[b][t] = 1
					}
				}
			}
			logits, err := s.Step(ids, mask)
			if err != nil {
				return err
			}
			seq := len(ids[0])
			out := make([][][]float32, len(ids))
			for b := range out {
				out[b] = make([][]float32, seq)
				for t := range out[b] {
					out[b][t] = logits.Row(b*seq + t)
				}
			}
			if err := finiteLogits(out); err != nil {
				return err
			}
			enc := json.NewEncoder(cmd.OutOrStdout())
			return enc.Encode(map[string]any{"logits": out})
		},
	}
	cmd.Flags().StringVar(&idsJSON, "ids", "", "token ids: JSON [[...], ...] or [...] (required)")
	cmd.Flags().StringVar(&maskJSON, "mask", "", "attention mask, same shape as --ids (default all ones)")
	cmd.Flags().IntVar(&threads, "threads", 0, "goroutines per step (0: all cores)")
	addDeviceFlag(cmd, &device)
	return cmd
}

// parseRows parses [[1,2],[3,4]] or [1,2] into equal-length rows.
func parseRows(flag, s string) ([][]int32, error) {
	var rows [][]int32
	if err := json.Unmarshal([]byte(s), &rows); err != nil {
		var row []int32
		if err2 := json.Unmarshal([]byte(s), &row); err2 != nil {
			return nil, fmt.Errorf("%s: want a JSON array of integers or of rows of integers: %w", flag, err)
		}
		rows = [][]int32{row}
	}
	if len(rows) == 0 || len(rows[0]) == 0 {
		return nil, fmt.Errorf("%s: empty", flag)
	}
	for i, r := range rows {
		if len(r) != len(rows[0]) {
			return nil, fmt.Errorf("%s: row %d has %d entries, row 0 has %d (left-pad with --mask 0)", flag, i, len(r), len(rows[0]))
		}
	}
	return rows, nil
}

// finiteLogits names the first logit, [sequence][token][vocabulary
// entry], that is NaN or infinite: JSON has neither, and the encoder's
// own error says what, not where.
func finiteLogits(out [][][]float32) error {
	for b, rows := range out {
		for t, row := range rows {
			for v, x := range row {
				if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
					return fmt.Errorf("sequence %d, token %d: logit %d is %v (the model's weights or inputs overflow; JSON cannot carry it)", b, t, v, x)
				}
			}
		}
	}
	return nil
}
