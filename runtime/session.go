package runtime

import (
	"fmt"

	"github.com/slopeml/slope/ops"
)

// Session runs a Model on up to Batch sequences of up to MaxLen tokens,
// keeping their attention keys and values between calls to Step.
type Session struct {
	m             *Model
	batch, maxLen int
	// Threads bounds the goroutines of each step (<= 0: GOMAXPROCS).
	Threads int
	cache   *ops.KVCache
	mask    []int32 // [batch, maxLen]: the mask of every token so far
	past    int
	pool    map[int][]*ops.Value // free buffers by width
	vals    []*ops.Value         // value slot -> buffer during a step
	// Device backends: the session's cache and value slots there.
	devCache ops.DeviceCache
	devVals  []ops.Tensor
	logits   ops.Value
}

// maxSessionTokens bounds batch x maxLen of a session (its mask and
// caches are sized by it).
const maxSessionTokens = 1 << 28

// NewSession makes a session for batch sequences of at most maxLen tokens
// (0: the model's learned positions).
func (m *Model) NewSession(batch, maxLen int) (*Session, error) {
	if maxLen == 0 {
		maxLen = m.maxPos
	}
	if batch <= 0 || maxLen < 0 || maxLen > m.maxPos {
		return nil, fmt.Errorf("session of %d sequences of %d tokens: need batch >= 1 and 1 to %d tokens (the model's positions)", batch, maxLen, m.maxPos)
	}
	if batch > maxSessionTokens/maxLen {
		return nil, fmt.Errorf("session of %d sequences of %d tokens: more than %d tokens in all", batch, maxLen, maxSessionTokens)
	}
	s := &Session{
		m: m, batch: batch, maxLen: maxLen,
		mask: make([]int32, batch*maxLen),
		pool: map[int][]*ops.Value{},
		vals: make([]*ops.Value, m.values),
	}
	if m.dev != nil {
		c, err := m.dev.NewCache(batch, maxLen)
		if err != nil {
			return nil, fmt.Errorf("session: %w", err)
		}
		s.devCache, s.devVals = c, make([]ops.Tensor, m.values)
	} else {
		s.cache = ops.NewKVCache(batch, maxLen)
	}
	return s, nil
}

// Close releases the session's device memory (a no-op on the CPU).
func (s *Session) Close() error {
	if s.devCache != nil {
		err := s.devCache.Release()
		s.devCache = nil
		return err
	}
	return nil
}

// Past is the number of tokens per sequence already in the cache.
func (s *Session) Past() int { return s.past }

// Reset forgets all tokens (the cache buffers are kept).
func (s *Session) Reset() { s.past = 0 }

// Step appends seq tokens to each sequence: ids and mask are [batch][seq]
// (mask 1 for a token, 0 for padding). It returns their logits,
// [batch*seq, vocab] batch-major, valid until the next Step.
func (s *Session) Step(ids, mask [][]int32) (*ops.Value, error) {
	return s.step(ids, mask, false)
}

// StepLast is Step returning only the logits of each sequence's last new
// token, [batch, vocab]: what generation needs. The LM head then runs on
// batch rows instead of batch*seq.
func (s *Session) StepLast(ids, mask [][]int32) (*ops.Value, error) {
	return s.step(ids, mask, true)
}

func (s *Session) step(ids, mask [][]int32, lastOnly bool) (*ops.Value, error) {
	if len(ids) != s.batch || len(mask) != s.batch {
		return nil, fmt.Errorf("step: %d id rows and %d mask rows for a session of %d sequences", len(ids), len(mask), s.batch)
	}
	seq := len(ids[0])
	if seq == 0 {
		return nil, fmt.Errorf("step: no tokens")
	}
	if s.past+seq > s.maxLen {
		return nil, fmt.Errorf("step: %d tokens after %d exceed the session's %d", seq, s.past, s.maxLen)
	}
	total := s.past + seq
	c := &ops.Call{Batch: s.batch, Seq: seq, Past: s.past, Cache: s.cache, DeviceCache: s.devCache, Threads: s.Threads,
		IDs: make([]int32, 0, s.batch*seq), Mask: make([]int32, 0, s.batch*total)}
	for b := range ids {
		if len(ids[b]) != seq || len(mask[b]) != seq {
			return nil, fmt.Errorf("step: row %d has %d ids and %d mask entries; every row needs %d of each (row 0's ids)", b, len(ids[b]), len(mask[b]), seq)
		}
		c.IDs = append(c.IDs, ids[b]...)
		row := s.mask[b*s.maxLen : (b+1)*s.maxLen]
		for t, v := range mask[b] {
			if v != 0 && v != 1 {
				return nil, fmt.Errorf("step: mask[%d][%d] = %d, want 0 or 1", b, t, v)
			}
			row[s.past+t] = v
		}
		c.Mask = append(c.Mask, row[:total]...)
	}
	out, err := s.run(c, lastOnly)
	if err != nil {
		return nil, err
	}
	s.past = total
	return out, nil
}

// run executes the plan once. With lastOnly, a final LMHead (a row-wise
// op) runs on each sequence's last row only.
func (s *Session) run(c *ops.Call, lastOnly bool) (*ops.Value, error) {
	if s.m.dev != nil {
		return s.runDevice(c, lastOnly)
	}
	for i, ps := range s.m.steps {
		in := make([]*ops.Value, len(ps.In))
		for k, slot := range ps.In {
			in[k] = s.vals[slot]
		}
		sc := c
		if lastOnly && i == len(s.m.steps)-1 && s.m.headLast && c.Seq > 1 {
			in[0] = s.lastRows(in[0], c)
			last := *c
			last.Seq = 1
			sc = &last
		}
		out := s.get(ps.Dim, sc.Rows())
		if err := ps.Step.Forward(sc, in, out); err != nil {
			return nil, fmt.Errorf("node %q (%s): %w", ps.Node.Name, ps.Node.OpType, err)
		}
		s.vals[ps.Out] = out
		for _, slot := range ps.Free {
			s.put(s.vals[slot])
			s.vals[slot] = nil
		}
	}
	logits := s.vals[s.m.out]
	s.put(logits) // handed to the caller until the next run
	s.vals[s.m.out] = nil
	if lastOnly && !s.m.headLast && c.Seq > 1 {
		// Other nodes follow the LM head (or there is none): every row
		// was computed; keep each sequence's last.
		return s.lastRows(logits, c), nil
	}
	return logits, nil
}

// lastRows copies the last row of each sequence of v.
func (s *Session) lastRows(v *ops.Value, c *ops.Call) *ops.Value {
	out := &ops.Value{Rows: c.Batch, Dim: v.Dim, Data: make([]float32, c.Batch*v.Dim)}
	for b := 0; b < c.Batch; b++ {
		copy(out.Row(b), v.Row(b*c.Seq+c.Seq-1))
	}
	return out
}

// get takes a buffer of width dim for rows rows from the pool.
func (s *Session) get(dim, rows int) *ops.Value {
	free := s.pool[dim]
	var v *ops.Value
	if n := len(free); n > 0 {
		v, s.pool[dim] = free[n-1], free[:n-1]
	} else {
		v = &ops.Value{Dim: dim}
	}
	if cap(v.Data) < rows*dim {
		v.Data = make([]float32, rows*dim, max(rows, s.batch)*dim)
	}
	v.Rows, v.Data = rows, v.Data[:rows*dim]
	return v
}

func (s *Session) put(v *ops.Value) {
	if v != nil {
		s.pool[v.Dim] = append(s.pool[v.Dim], v)
	}
}

// runDevice is run with every activation in the backend's memory: only
// ids and mask go in and the logits come out.
func (s *Session) runDevice(c *ops.Call, lastOnly bool) (*ops.Value, error) {
	be := s.m.dev
	err := be.Do(func() error {
		defer func() {
			for i, t := range s.devVals {
				if t != nil {
					be.Release(t)
					s.devVals[i] = nil
				}
			}
		}()
		if err := be.Begin(c); err != nil {
			return err
		}
		for i, ps := range s.m.steps {
			in := make([]ops.Tensor, len(ps.In))
			for k, slot := range ps.In {
				in[k] = s.devVals[slot]
			}
			sc := c
			if lastOnly && i == len(s.m.steps)-1 && s.m.headLast && c.Seq > 1 {
				last, err := be.Acquire(c.Batch, in[0].Dim())
				if err != nil {
					return err
				}
				rows := make([]int, c.Batch)
				for b := range rows {
					rows[b] = b*c.Seq + c.Seq - 1
				}
				if err := be.GatherRows(last, in[0], rows); err != nil {
					be.Release(last)
					return err
				}
				defer be.Release(last)
				in[0] = last
				lc := *c
				lc.Seq = 1
				sc = &lc
			}
			out, err := be.Acquire(sc.Rows(), ps.Dim)
			if err != nil {
				return err
			}
			s.devVals[ps.Out] = out
			if err := ps.Step.(ops.DeviceStep).ForwardDevice(sc, in, out); err != nil {
				return fmt.Errorf("node %q (%s): %w", ps.Node.Name, ps.Node.OpType, err)
			}
			for _, slot := range ps.Free {
				be.Release(s.devVals[slot])
				s.devVals[slot] = nil
			}
		}
		return be.Download(s.devVals[s.m.out], &s.logits)
	})
	if err != nil {
		return nil, err
	}
	if lastOnly && !s.m.headLast && c.Seq > 1 {
		return s.lastRows(&s.logits, c), nil // as run does
	}
	return &s.logits, nil
}
