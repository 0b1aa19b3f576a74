package runtime

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
)

// Forward returns the logits [batch][seq][vocab] of a batch of token
// sequences (all of one length; mask nil means all ones), on a fresh cache.
func (m *Model) Forward(ids, mask [][]int32) ([][][]float32, error) {
	if len(ids) == 0 || len(ids[0]) == 0 {
		return nil, fmt.Errorf("forward: empty batch")
	}
	if mask == nil {
		mask = ones(len(ids), len(ids[0]))
	}
	s, err := m.NewSession(len(ids), len(ids[0]))
	if err != nil {
		return nil, err
	}
	defer s.Close()
	v, err := s.Step(ids, mask)
	if err != nil {
		return nil, err
	}
	seq := len(ids[0])
	out := make([][][]float32, len(ids))
	for b := range out {
		out[b] = make([][]float32, seq)
		for t := range out[b] {
			out[b][t] = append([]float32(nil), v.Row(b*seq+t)...)
		}
	}
	return out, nil
}

func ones(b, n int) [][]int32 {
	out := make([][]int32, b)
	for i := range out {
		out[i] = make([]int32, n)
		for j := range out[i] {
			out[i][j] = 1
		}
	}
	return out
}

// GenerateOptions control decoding.
type GenerateOptions struct {
	// MaxTokens is the number of new tokens per sequence (required, >= 1).
	MaxTokens int
	// Temperature 0 decodes greedily; > 0 samples from softmax(logits/T).
	Temperature float64
	// TopK keeps the K most likely tokens before sampling (0: all).
	TopK int
	// TopP keeps the smallest set of most likely tokens whose probability
	// reaches P (0 or 1: all).
	TopP float64
	// RepetitionPenalty, when positive and not 1, discourages the tokens
	// already in a sequence (its prompt and what it generated), as
	// transformers' repetition_penalty does: their logits are divided by
	// it where positive and multiplied by it where negative, before the
	// greedy choice or sampling. 0 or 1: off.
	RepetitionPenalty float64
	// Seed of the sampler.
	Seed uint64
	// EOS stops a sequence when generated (-1: never stop early).
	EOS int
	// Pad is the id fed for padding and after a sequence stopped.
	Pad int
	// Threads bounds goroutines per step (<= 0: GOMAXPROCS).
	Threads int
	// OnToken, when set, is called with each new token of each sequence as
	// it is chosen (step counts from 0); returning an error stops.
	OnToken func(seq, step, token int) error
}

// Generate continues each prompt (lengths may differ; shorter ones are
// left-padded) and returns the new tokens per sequence, without the
// prompt, ending at (and including) EOS when one was generated.
func (m *Model) Generate(ctx context.Context, prompts [][]int32, o GenerateOptions) ([][]int32, error) {
	if len(prompts) == 0 || o.MaxTokens < 1 {
		return nil, fmt.Errorf("generate: need at least one prompt and MaxTokens >= 1")
	}
	if p := o.RepetitionPenalty; !(p >= 0) || math.IsInf(p, 0) {
		return nil, fmt.Errorf("generate: repetition penalty %g: want a finite value >= 0", p)
	}
	penalize := o.RepetitionPenalty > 0 && o.RepetitionPenalty != 1
	longest := 0
	for i, p := range prompts {
		if len(p) == 0 {
			return nil, fmt.Errorf("generate: prompt %d is empty", i)
		}
		longest = max(longest, len(p))
	}
	// The last new token is never fed back: the run holds the prompt and
	// MaxTokens-1 more positions (checked without overflowing).
	if o.MaxTokens-1 > m.maxPos-longest {
		// uint64: the sum cannot overflow (both are at most MaxInt).
		return nil, fmt.Errorf("generate: %d prompt + %d new tokens need %d positions (the last new token takes none), more than the model's %d",
			longest, o.MaxTokens, uint64(longest)+uint64(o.MaxTokens)-1, m.maxPos)
	}
	s, err := m.NewSession(len(prompts), longest+o.MaxTokens-1)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	s.Threads = o.Threads
	ids := make([][]int32, len(prompts))
	mask := make([][]int32, len(prompts))
	for b, p := range prompts {
		pad := longest - len(p)
		ids[b] = make([]int32, longest)
		mask[b] = make([]int32, longest)
		for t := range ids[b] {
			if t < pad {
				ids[b][t] = int32(o.Pad)
			} else {
				ids[b][t], mask[b][t] = p[t-pad], 1
			}
		}
	}
	rng := rand.New(rand.NewPCG(o.Seed, 0x5eed))
	out := make([][]int32, len(prompts))
	done := make([]bool, len(prompts))
	logits, err := s.StepLast(ids, mask)
	if err != nil {
		return nil, err
	}
	next := make([][]int32, len(prompts))
	nextMask := ones(len(prompts), 1)
	var seen []map[int32]bool // per sequence, with RepetitionPenalty
	if penalize {
		seen = make([]map[int32]bool, len(prompts))
		for b, p := range prompts {
			seen[b] = map[int32]bool{}
			for _, id := range p {
				seen[b][id] = true
			}
		}
	}
	for step := 0; step < o.MaxTokens; step++ {
		if err := ctx.Err(); err != nil {
			return out, err
		}
		running := false
		for b := range prompts {
			tok := int32(o.Pad)
			if !done[b] {
				l := logits.Row(b) // this step's, ours until the next StepLast
				if v, x, bad := nonFinite(l); bad {
					return out, fmt.Errorf("generate: sequence %d, new token %d: logit %d is %v (the model's weights or inputs overflow)", b, step, v, x)
				}
				if penalize {
					penalizeRepeats(l, seen[b], o.RepetitionPenalty)
				}
				tok = int32(sample(l, o, rng))
				if penalize {
					seen[b][tok] = true
				}
				out[b] = append(out[b], tok)
				if o.OnToken != nil {
					if err := o.OnToken(b, step, int(tok)); err != nil {
						return out, err
					}
				}
				done[b] = o.EOS >= 0 && int(tok) == o.EOS
			}
			running = running || !done[b]
			next[b] = []int32{tok}
		}
		if !running || step == o.MaxTokens-1 {
			break
		}
		if logits, err = s.StepLast(next, nextMask); err != nil {
			return out, err
		}
	}
	return out, nil
}

// penalizeRepeats applies RepetitionPenalty p to the logits of the ids in
// seen (ids outside the row are ignored).
func penalizeRepeats(logits []float32, seen map[int32]bool, p float64) {
	for id := range seen {
		if id < 0 || int(id) >= len(logits) {
			continue
		}
		if v := float64(logits[id]); v > 0 {
			logits[id] = float32(v / p)
		} else {
			logits[id] = float32(v * p)
		}
	}
}

// ScoreResult is the outcome of Score.
type ScoreResult struct {
	// Tokens scored (every token after the first of each window).
	Tokens int
	// NLL is the mean negative log-likelihood per scored token (nats).
	NLL float64
	// Perplexity is exp(NLL).
	Perplexity float64
}

// ScoreWindow resolves Score's window and stride: window <= 0 is the
// model's positions, stride <= 0 half the window. A window longer than the
// model's positions or shorter than 2 tokens, and a stride not below the
// window, are errors; each error's message starts with the parameter at
// fault and its value as given ("window 9000: ...", "stride 300: ...").
func (m *Model) ScoreWindow(window, stride int) (int, int, error) {
	if window > m.maxPos {
		return 0, 0, fmt.Errorf("window %d: the model has %d positions", window, m.maxPos)
	}
	w, st := window, stride
	if w <= 0 {
		if m.maxPos == noPositionLimit {
			return 0, 0, fmt.Errorf("window %d: the model has no position limit to take as the window; give one", window)
		}
		w = m.maxPos
	}
	if st <= 0 {
		st = max(w/2, 1)
	}
	switch {
	case w < 2:
		return 0, 0, fmt.Errorf("window %d: want at least 2 tokens", window)
	case st >= w:
		return 0, 0, fmt.Errorf("stride %d: want fewer tokens than the window (%d)", st, w)
	}
	return w, st, nil
}

// Score computes the perplexity of a token sequence. Every token after
// the first is scored exactly once. A sequence longer than window tokens
// (window <= 0: the model's positions; ScoreWindow checks both) is scored
// with a sliding window that advances by stride tokens (stride <= 0:
// window/2), each window
// scoring only its last stride tokens, so every scored token sees at least
// window-stride tokens of context (the usual perplexity recipe).
func (m *Model) Score(ctx context.Context, ids []int32, window, stride, threads int) (*ScoreResult, error) {
	window, stride, err := m.ScoreWindow(window, stride)
	if err != nil {
		return nil, fmt.Errorf("score: %w", err)
	}
	if len(ids) < 2 {
		return nil, fmt.Errorf("score: need at least 2 tokens, have %d", len(ids))
	}
	s, err := m.NewSession(1, window)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	s.Threads = threads
	var nll float64
	n := 0
	for next := 1; next < len(ids); {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		// Targets [next, end) with context from begin.
		end := min(len(ids), max(next+stride, window))
		begin := max(0, end-window)
		s.Reset()
		chunk := ids[begin:end]
		logits, err := s.Step([][]int32{chunk}, ones(1, len(chunk)))
		if err != nil {
			return nil, err
		}
		for k := next; k < end; k++ {
			row := logits.Row(k - 1 - begin)
			if id := int(ids[k]); id < 0 || id >= len(row) {
				return nil, fmt.Errorf("score: token %d is %d, outside the %d logits", k, id, len(row))
			}
			if v, x, bad := nonFinite(row); bad {
				return nil, fmt.Errorf("score: logits before token %d: logit %d is %v (the model's weights or inputs overflow)", k, v, x)
			}
			nll -= logSoftmaxAt(row, int(ids[k]))
			n++
		}
		next = end
	}
	r := &ScoreResult{Tokens: n, NLL: nll / float64(n)}
	r.Perplexity = math.Exp(r.NLL)
	return r, nil
}

// nonFinite returns the first NaN or +Inf logit of row and its index (a
// -Inf logit is a probability of 0, which sampling and scoring handle).
func nonFinite(row []float32) (i int, v float32, bad bool) {
	for i, v := range row {
		if v != v || math.IsInf(float64(v), 1) {
			return i, v, true
		}
	}
	return 0, 0, false
}

// logSoftmaxAt is log softmax(row)[i], in float64.
func logSoftmaxAt(row []float32, i int) float64 {
	mx := math.Inf(-1)
	for _, v := range row {
		mx = math.Max(mx, float64(v))
	}
	sum := 0.0
	for _, v := range row {
		sum += math.Exp(float64(v) - mx)
	}
	return float64(row[i]) - mx - math.Log(sum)
}
