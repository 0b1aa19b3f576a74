package format

import (
	"fmt"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/slopeml/slope/format/onnxpb"
	"github.com/slopeml/slope/format/slopepb"
)

// maxManifestDepth caps the nesting of messages in a manifest. The schema
// is shallow (a node attribute is three messages below the manifest);
// protobuf's own limit (10,000) would let a crafted manifest recurse far
// deeper.
const maxManifestDepth = 100

var (
	manifestDesc = (*slopepb.Manifest)(nil).ProtoReflect().Descriptor()
	tensorsField = manifestDesc.Fields().ByName("tensors")
	nodeField    = (*onnxpb.GraphProto)(nil).ProtoReflect().Descriptor().Fields().ByName("node")
)

// checkManifestSize walks the encoded manifest b, driven by the message
// descriptors, and counts what decoding it would allocate: messages at any
// depth, elements of repeated fields (packed ones included) and map
// entries; tensor entries and graph nodes on their own (the nodes of any
// graph: one nested in an attribute is refused later anyway). It fails with
// ErrLimit as soon as a count exceeds its cap, so that a manifest of many
// tiny entries (two bytes each on disk, a hundred or more decoded) is
// refused before proto.Unmarshal allocates for them. It is linear in
// len(b) and allocates nothing. Fields it does not know, or that come with
// another wire type than their declared one, are skipped as unknown fields
// are by the decoder (which keeps them as raw bytes). Bytes that do not
// parse fail with ErrManifest.
func checkManifestSize(b []byte, lim Limits) error {
	c := manifestCounter{lim: lim}
	return c.walk(b, manifestDesc, 0)
}

type manifestCounter struct {
	lim                   Limits
	items, tensors, nodes int
}

// add counts n items of field fd.
func (c *manifestCounter) add(fd protoreflect.FieldDescriptor, n int) error {
	c.items += n
	if c.items > c.lim.MaxManifestItems {
		return fmt.Errorf("manifest decodes to more than %d messages, repeated elements and map entries (cap): %w",
			c.lim.MaxManifestItems, ErrLimit)
	}
	switch fd {
	case tensorsField:
		if c.tensors += n; c.tensors > c.lim.MaxTensors {
			return fmt.Errorf("manifest has more than %d tensors (cap): %w", c.lim.MaxTensors, ErrLimit)
		}
	case nodeField:
		if c.nodes += n; c.nodes > c.lim.MaxNodes {
			return fmt.Errorf("manifest graph has more than %d nodes (cap): %w", c.lim.MaxNodes, ErrLimit)
		}
	}
	return nil
}

func (c *manifestCounter) walk(b []byte, md protoreflect.MessageDescriptor, depth int) error {
	if depth > maxManifestDepth {
		return fmt.Errorf("manifest: messages nested deeper than %d (at %s): %w", maxManifestDepth, md.FullName(), ErrLimit)
	}
	fields := md.Fields()
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return fmt.Errorf("manifest: %s: %v: %w", md.FullName(), protowire.ParseError(n), ErrManifest)
		}
		b = b[n:]
		fd := fields.ByNumber(num)
		want, packable := wireTypeOf(fd)
		switch {
		case fd == nil || (typ != want && !(packable && typ == protowire.BytesType)):
			// Unknown: kept as raw bytes by the decoder.
		case fd.Kind() == protoreflect.MessageKind: // map entries too
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return fmt.Errorf("manifest: %s: %v: %w", fd.FullName(), protowire.ParseError(n), ErrManifest)
			}
			if err := c.add(fd, 1); err != nil {
				return err
			}
			if err := c.walk(v, fd.Message(), depth+1); err != nil {
				return err
			}
			b = b[n:]
			continue
		case typ == protowire.BytesType && packable: // a packed run of scalars
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return fmt.Errorf("manifest: %s: %v: %w", fd.FullName(), protowire.ParseError(n), ErrManifest)
			}
			if err := c.add(fd, packedCount(want, v)); err != nil {
				return err
			}
			b = b[n:]
			continue
		case fd.IsList() || fd.Kind() == protoreflect.GroupKind:
			if err := c.add(fd, 1); err != nil {
				return err
			}
		}
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return fmt.Errorf("manifest: %s field %d: %v: %w", md.FullName(), num, protowire.ParseError(n), ErrManifest)
		}
		b = b[n:]
	}
	return nil
}

// wireTypeOf is the wire type of field fd's values, and whether it is a
// repeated scalar that may also come packed (as one BytesType run).
func wireTypeOf(fd protoreflect.FieldDescriptor) (protowire.Type, bool) {
	if fd == nil {
		return -1, false
	}
	var t protowire.Type
	switch fd.Kind() {
	case protoreflect.BoolKind, protoreflect.EnumKind, protoreflect.Int32Kind, protoreflect.Sint32Kind,
		protoreflect.Uint32Kind, protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Uint64Kind:
		t = protowire.VarintType
	case protoreflect.Fixed32Kind, protoreflect.Sfixed32Kind, protoreflect.FloatKind:
		t = protowire.Fixed32Type
	case protoreflect.Fixed64Kind, protoreflect.Sfixed64Kind, protoreflect.DoubleKind:
		t = protowire.Fixed64Type
	case protoreflect.GroupKind:
		return protowire.StartGroupType, false
	default: // strings, bytes, messages
		return protowire.BytesType, false
	}
	return t, fd.IsList()
}

// packedCount is the number of values in a packed run v of wire type t
// (for varints: the bytes that end one, an upper bound when v is corrupt,
// which the decoder then rejects).
func packedCount(t protowire.Type, v []byte) int {
	switch t {
	case protowire.Fixed32Type:
		return len(v) / 4
	case protowire.Fixed64Type:
		return len(v) / 8
	}
	n := 0
	for _, x := range v {
		if x < 0x80 {
			n++
		}
	}
	return n
}
