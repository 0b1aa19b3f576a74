package format

import (
	"fmt"

	"google.golang.org/protobuf/proto"

	"github.com/slopeml/slope/format/slopepb"
)

// CopyTensor writes tensor d of src as it is (its raw bytes, stored
// uncompressed; the writer places and checks it anew).
func (w *Writer) CopyTensor(src *File, d *slopepb.Tensor) error {
	raw, err := src.Raw(d.Name)
	if err != nil {
		return err
	}
	c := proto.Clone(d).(*slopepb.Tensor)
	c.Offset, c.Length, c.RawLength, c.Xxh3 = 0, 0, 0, 0
	c.Compression = slopepb.Compression_COMPRESSION_NONE
	return w.WriteTensor(c, raw)
}

// Rewrite copies the container at src to dst (written as Create and Close
// write, so atomically) with its manifest edited by edit: every tensor's
// raw bytes (stored uncompressed), and the architecture, graph, operator
// sets, tokenizer, training state and metadata as edit leaves them. The
// tensor table and provenance are the writer's. For tools and tests that
// patch a container's manifest (the writer validates the result).
func Rewrite(src, dst string, edit func(*slopepb.Manifest)) error {
	f, err := Open(src, nil)
	if err != nil {
		return err
	}
	defer f.Close()
	w, err := Create(dst, nil)
	if err != nil {
		return err
	}
	for _, d := range f.Tensors() {
		if err := w.CopyTensor(f, d); err != nil {
			w.Abort()
			return fmt.Errorf("rewrite %s: %w", src, err)
		}
	}
	m := proto.Clone(f.Manifest()).(*slopepb.Manifest)
	if edit != nil {
		edit(m)
	}
	wm := w.Manifest()
	wm.Architecture, wm.Graph, wm.OpsetImport, wm.Tokenizer, wm.Training, wm.Metadata = m.Architecture, m.Graph, m.OpsetImport, m.Tokenizer, m.Training, m.Metadata
	return w.Close()
}
