package main

import (
	"errors"
	"fmt"
	"math"
	"os"
	"strings"

	"github.com/spf13/cobra"

	slopert "github.com/slopeml/slope/runtime"
	"github.com/slopeml/slope/tokenizer"
)

// promptIDs resolves --prompt (through the model's tokenizer, with OPT's
// BOS) or --ids into token ids, with the tokenizer for text (nil for
// --ids: see outputTokenizer); its errors are usage errors (usagef),
// except a damaged tokenizer's and a tokenizer's id the model lacks.
func promptIDs(cmd *cobra.Command, m *slopert.Model, textFlag, text, ids string) ([]int32, *tokenizer.BPE, error) {
	if (text == "") == (ids == "") {
		return nil, nil, usagef(cmd, "give exactly one of %s and --ids", textFlag)
	}
	if ids != "" {
		rows, perr := parseRows("--ids", ids)
		if perr != nil {
			return nil, nil, usagef(cmd, "%v", perr)
		}
		if len(rows) != 1 {
			return nil, nil, usagef(cmd, "--ids: one sequence, got %d", len(rows))
		}
		if err := checkIDs(rows, m.Vocab()); err != nil {
			return nil, nil, usagef(cmd, "--ids: %v", err)
		}
		return rows[0], nil, nil
	}
	tok, err := m.Tokenizer()
	if errors.Is(err, slopert.ErrNoTokenizer) {
		return nil, nil, usagef(cmd, "%s needs a tokenizer: %v", textFlag, err)
	}
	if err != nil {
		return nil, nil, err // a damaged tokenizer, not a usage error
	}
	bos := 2
	if c := m.Config(); c != nil {
		bos = int(c.BosTokenId)
	}
	var enc []int
	if bos >= 0 {
		enc = tok.EncodeWithBOS(text, bos)
	} else {
		enc = tok.Encode(text) // a config without a BOS (bos_token_id null: -1)
	}
	out := make([]int32, len(enc))
	for i, v := range enc {
		out[i] = int32(v)
	}
	if err := checkIDs([][]int32{out}, m.Vocab()); err != nil {
		return nil, nil, fmt.Errorf("%s: the container's tokenizer does not fit the model: %w", textFlag, err)
	}
	return out, tok, nil
}

// outputTokenizer is the tokenizer that prints generated tokens of an
// --ids prompt: the container's, or nil (ids are printed) when it has none
// or when it does not load, which is then said on stderr.
func outputTokenizer(cmd *cobra.Command, m *slopert.Model) *tokenizer.BPE {
	tok, err := m.Tokenizer()
	if err != nil {
		if !errors.Is(err, slopert.ErrNoTokenizer) {
			fmt.Fprintf(cmd.ErrOrStderr(), "slope: warning: %v; tokens are printed as ids\n", err)
		}
		return nil
	}
	return tok
}

// checkIDs checks token ids against a vocabulary of vocab tokens.
func checkIDs(rows [][]int32, vocab int) error {
	for b, r := range rows {
		for t, id := range r {
			if id < 0 || int(id) >= vocab {
				return fmt.Errorf("sequence %d, token %d: id %d outside the model's vocabulary of %d", b, t, id, vocab)
			}
		}
	}
	return nil
}

func newRunCmd() *cobra.Command {
	var text, ids string
	var device deviceFlags
	var o slopert.GenerateOptions
	cmd := &cobra.Command{
		Use:   "run MODEL (--prompt TEXT | --ids JSON)",
		Short: "Generate text from a prompt, streaming tokens",
		Long: "run continues a prompt with the model: greedy by default, sampled with\n" +
			"--temperature > 0 (and --top-k, --top-p, --seed); --repetition-penalty P\n" +
			"discourages tokens already in the sequence, as transformers' repetition_penalty\n" +
			"does (their logits divided by P where positive, multiplied where negative). Text\n" +
			"prompts need a container with a tokenizer; --ids takes token ids (printed back\n" +
			"as ids when there is none).",
		Args: exactArgs("MODEL"),
		RunE: func(cmd *cobra.Command, args []string) error {
			switch {
			case cmd.Flags().Changed("prompt") && text == "":
				return usagef(cmd, "--prompt is empty")
			case o.MaxTokens < 1:
				return usagef(cmd, "--max-tokens must be >= 1")
			case !(o.Temperature >= 0) || math.IsInf(o.Temperature, 0):
				return usagef(cmd, "--temperature must be a finite number >= 0, got %g", o.Temperature)
			case o.TopK < 0:
				return usagef(cmd, "--top-k must be >= 0, got %d", o.TopK)
			case !(o.TopP >= 0 && o.TopP <= 1):
				return usagef(cmd, "--top-p must be in [0, 1], got %g", o.TopP)
			case o.Temperature == 0 && (o.TopK > 0 || o.TopP > 0):
				return usagef(cmd, "--top-k and --top-p narrow sampling, which needs --temperature > 0 (0 decodes greedily)")
			case !(o.RepetitionPenalty > 0) || math.IsInf(o.RepetitionPenalty, 0):
				return usagef(cmd, "--repetition-penalty must be a finite number > 0 (1: off), got %g", o.RepetitionPenalty)
			}
			m, err := openModel(cmd, args[0], device)
			if err != nil {
				return err
			}
			defer m.Close()
			prompt, tok, err := promptIDs(cmd, m.Model, "--prompt", text, ids)
			if err != nil {
				return err
			}
			// Checked here to name the flag (Generate checks it too).
			if mp := m.MaxPositions(); o.MaxTokens-1 > mp-len(prompt) {
				// uint64: the sum cannot overflow (both are at most MaxInt).
				return usagef(cmd, "--max-tokens %d: the prompt's %d tokens and %d new ones need %d positions (the last new token takes none), more than the model's %d",
					o.MaxTokens, len(prompt), o.MaxTokens, uint64(len(prompt))+uint64(o.MaxTokens)-1, mp)
			}
			if tok == nil {
				tok = outputTokenizer(cmd, m.Model)
			}
			o.EOS, o.Pad = 2, 1
			if c := m.Config(); c != nil {
				o.EOS, o.Pad = int(c.EosTokenId), int(c.PadTokenId)
			}
			out := cmd.OutOrStdout()
			var stream *tokenizer.StreamDecoder
			if tok != nil {
				stream = tok.NewStreamDecoder()
			}
			printed := false // a token: the output then ends with a newline
			o.OnToken = func(_, _, token int) error {
				printed = true
				if stream == nil {
					_, err := fmt.Fprintf(out, "%d ", token)
					return err
				}
				s, err := stream.Add(token)
				if err != nil {
					// An id the tokenizer lacks (OPT's output layer has
					// more rows than its vocabulary): shown as <id>, as the
					// text around it is.
					s = stream.Flush() + fmt.Sprintf("<%d>", token)
				}
				_, err = fmt.Fprint(out, s)
				return err
			}
			_, err = m.Generate(cmd.Context(), [][]int32{prompt}, o)
			if stream != nil {
				fmt.Fprint(out, stream.Flush())
			}
			if printed {
				fmt.Fprintln(out) // also before an error, which goes to stderr
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&text, "prompt", "", "prompt text (needs a tokenizer in the container)")
	f.StringVar(&ids, "ids", "", "prompt token ids, JSON [..]")
	f.IntVar(&o.MaxTokens, "max-tokens", 32, "new tokens to generate")
	f.Float64Var(&o.Temperature, "temperature", 0, "sampling temperature (0: greedy)")
	f.IntVar(&o.TopK, "top-k", 0, "sample among the k most likely tokens (0: all)")
	f.Float64Var(&o.TopP, "top-p", 0, "sample among the most likely tokens of total probability p (0: all)")
	f.Float64Var(&o.RepetitionPenalty, "repetition-penalty", 1, "divide (multiply when negative) the logits of tokens already in the sequence by this (1: off)")
	f.Uint64Var(&o.Seed, "seed", 0, "sampling seed")
	f.IntVar(&o.Threads, "threads", 0, "goroutines per step (0: all cores)")
	addDeviceFlag(cmd, &device)
	return cmd
}

func newScoreCmd() *cobra.Command {
	var textFile, ids string
	var window, stride, threads int
	var device deviceFlags
	cmd := &cobra.Command{
		Use:   "score MODEL (--text FILE | --ids JSON)",
		Short: "Perplexity of a text under the model",
		Long: "score prints the mean negative log-likelihood and perplexity of a text (through\n" +
			"the container's tokenizer, with OPT's BOS) or of token ids. Texts longer than the\n" +
			"model's positions (or --window) are scored with a sliding window advancing by\n" +
			"--stride tokens (default half the window); every token is scored once.",
		Args: exactArgs("MODEL"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if cmd.Flags().Changed("text") && textFile == "" {
				return usagef(cmd, "--text: give the name of a text file")
			}
			if window < 0 || stride < 0 {
				return usagef(cmd, "--window %d, --stride %d: want counts of tokens >= 0 (0: the default)", window, stride)
			}
			m, err := openModel(cmd, args[0], device)
			if err != nil {
				return err
			}
			defer m.Close()
			// The window and stride against the model, before any text is
			// read (its errors start with the parameter's name: its flag's).
			if _, _, err := m.ScoreWindow(window, stride); err != nil {
				return usagef(cmd, "--%v", err)
			}
			text := ""
			if textFile != "" {
				b, err := os.ReadFile(textFile)
				if err != nil {
					return fmt.Errorf("--text: %w", err)
				}
				if text = string(b); strings.TrimSpace(text) == "" {
					return fmt.Errorf("--text %s: empty", textFile)
				}
			}
			seq, _, err := promptIDs(cmd, m.Model, "--text", text, ids)
			if err != nil {
				return err
			}
			r, err := m.Score(cmd.Context(), seq, window, stride, threads)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "tokens %d  nll %.4f  perplexity %.3f\n", r.Tokens, r.NLL, r.Perplexity)
			return err
		},
	}
	cmd.Flags().StringVar(&textFile, "text", "", "text file to score")
	cmd.Flags().StringVar(&ids, "ids", "", "token ids to score, JSON [..]")
	cmd.Flags().IntVar(&window, "window", 0, "tokens per window (0: the model's positions)")
	cmd.Flags().IntVar(&stride, "stride", 0, "tokens the window advances by (0: half the window)")
	cmd.Flags().IntVar(&threads, "threads", 0, "goroutines per step (0: all cores)")
	addDeviceFlag(cmd, &device)
	return cmd
}
