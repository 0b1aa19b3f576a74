package ops

import (
	"fmt"
	"iter"

	"github.com/slopeml/slope/format"
	"github.com/slopeml/slope/format/slopepb"
)

type embeddingStep struct {
	tok       rowTable  // [V, P], rows decoded on use (no float copy of the table)
	pos       []float32 // [Np, H]
	vocab     int
	proj, hid int       // P, H
	projIn    []float32 // [H, P] or nil (then P == H)
	positions int       // Np
	offset    int
}

func bindEmbedding(b Binding) (Step, error) {
	n := b.Node
	tok, ts, err := rows(b, 2)
	if err != nil {
		return nil, err
	}
	pos, ps, err := weight(b, 3, -1, -1)
	if err != nil {
		return nil, err
	}
	s := &embeddingStep{tok: tok, pos: pos, vocab: ts[0], proj: ts[1], hid: ps[1], positions: ps[0]}
	if s.offset, err = embeddingOffset(n, s.proj, s.hid, s.positions); err != nil {
		return nil, err
	}
	if n.Input(4) != "" {
		if s.projIn, _, err = weight(b, 4, s.hid, s.proj); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// embeddingOffset checks an Embedding node's shapes (token width p,
// position width h, a project_in input when they differ) and returns its
// position_offset, which must index one of the positions rows. The
// forward and gradient bindings share it.
func embeddingOffset(n *Node, p, h, positions int) (int, error) {
	off, err := n.Int("position_offset", 2)
	if err != nil {
		return 0, err
	}
	if n.Input(4) == "" && p != h {
		return 0, n.errorf("token embedding width %d differs from position width %d without project_in", p, h)
	}
	if off < 0 || off >= int64(positions) {
		return 0, n.errorf("position_offset %d outside the %d positions", off, positions)
	}
	return int(off), nil
}

func (s *embeddingStep) OutDim() int { return s.hid }

// embeddingPositions yields (t, position) for the seq tokens from past
// on of a sequence with mask: OPT's position, the number of real tokens
// before and at the token minus one, or -1 for padding; the mask is
// counted once (per token it would be quadratic in the sequence length:
// milliseconds at 2048 tokens).
func embeddingPositions(mask []int32, past, seq int) iter.Seq2[int, int] {
	return func(yield func(int, int) bool) {
		c := 0
		for _, m := range mask[:past] {
			c += int(m)
		}
		for t, m := range mask[past : past+seq] {
			c += int(m)
			p := c - 1
			if m == 0 {
				p = -1
			}
			if !yield(t, p) {
				return
			}
		}
	}
}

// EmbeddingRows checks an embedding call's ids and mask and calls f(r,
// id, pos) for each row r in order: its token id (within vocab) and its
// row of the position table (OPT's position plus offset, within
// positions). Errors name the row or sequence at fault; an error from f
// stops the walk and is returned.
func EmbeddingRows(c *Call, vocab, offset, positions int, f func(r, id, pos int) error) error {
	total := c.Past + c.Seq
	if len(c.IDs) != c.Rows() || len(c.Mask) != c.Batch*total {
		return fmt.Errorf("embedding: %d ids and %d mask entries for batch %d, %d new and %d past tokens", len(c.IDs), len(c.Mask), c.Batch, c.Seq, c.Past)
	}
	for bt := 0; bt < c.Batch; bt++ {
		for t, p := range embeddingPositions(c.Mask[bt*total:(bt+1)*total], c.Past, c.Seq) {
			r := bt*c.Seq + t
			id := int(c.IDs[r])
			if id < 0 || id >= vocab {
				return fmt.Errorf("embedding: token id %d (sequence %d, token %d; row %d) outside the vocabulary of %d", id, bt, t, r, vocab)
			}
			if p+offset < 0 {
				// A padding token (position -1) under a position_offset of 0.
				return fmt.Errorf("embedding: position %d of sequence %d (token %d) is before the table: position_offset %d leaves no row for padding", p, bt, t, offset)
			}
			if p+offset >= positions {
				return fmt.Errorf("embedding: position %d of sequence %d beyond the %d learned positions", p, bt, positions-offset)
			}
			if err := f(r, id, p+offset); err != nil {
				return err
			}
		}
	}
	return nil
}

func (s *embeddingStep) Forward(c *Call, _ []*Value, out *Value) error {
	if err := checkValue("embedding output", out, c.Rows(), s.hid); err != nil {
		return err
	}
	var tmp []float32
	if s.projIn != nil {
		tmp = make([]float32, s.proj)
	}
	return EmbeddingRows(c, s.vocab, s.offset, s.positions, func(r, id, p int) error {
		y := out.Row(r)
		if s.projIn != nil {
			if err := s.tok.row(id, tmp); err != nil {
				return err
			}
			for o := range y {
				y[o] = dot(s.projIn[o*s.proj:(o+1)*s.proj], tmp)
			}
		} else if err := s.tok.row(id, y); err != nil {
			return err
		}
		pr := s.pos[p*s.hid : (p+1)*s.hid]
		for i := range y {
			y[i] += pr[i]
		}
		return nil
	})
}

func dot(a, b []float32) float32 {
	var s float32
	for i, v := range a {
		s += v * b[i]
	}
	return s
}

// rowTable is a DENSE float matrix used in place (e.g. from the mmap), one
// row decoded at a time.
type rowTable struct {
	dt    slopepb.DType
	width int
	es    int
	raw   []byte
}

// rows binds weight input i as a row table; it returns its shape.
func rows(b Binding, input int) (rowTable, []int, error) {
	n := b.Node
	name := n.Input(input)
	t, err := b.W.Lookup(name)
	if err != nil {
		return rowTable{}, nil, fmt.Errorf("node %q: %w", n.Name, err)
	}
	if t.Encoding != slopepb.Encoding_DENSE || len(t.Shape) != 2 {
		return rowTable{}, nil, n.errorf("weight %q is %s %v, want a DENSE matrix", name, t.Encoding, t.Shape)
	}
	es, err := format.ElemSize(t.Dtype)
	if err != nil || !format.IsFloat(t.Dtype) {
		return rowTable{}, nil, fmt.Errorf("node %q: weight %q has dtype %s: %w", n.Name, name, t.Dtype, ErrUnsupported)
	}
	raw, err := b.W.Raw(name)
	if err != nil {
		return rowTable{}, nil, fmt.Errorf("node %q: %w", n.Name, err)
	}
	shape := []int{int(t.Shape[0]), int(t.Shape[1])}
	return rowTable{dt: t.Dtype, width: shape[1], es: es, raw: raw}, shape, nil
}

// row decodes row i into dst (len width).
func (t rowTable) row(i int, dst []float32) error {
	w := t.width * t.es
	return format.DecodeFloats(t.dt, t.raw[i*w:(i+1)*w], dst)
}
