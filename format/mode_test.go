package format

import (
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/slopeml/slope/format/slopepb"
)

// A container gets the mode a file created with 0666 gets (the umask
// applied), not os.CreateTemp's 0600.
func TestWriterFileMode(t *testing.T) {
	dir := t.TempDir()
	ref := filepath.Join(dir, "ref")
	f, err := os.OpenFile(ref, os.O_CREATE|os.O_WRONLY, 0o666)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	out := filepath.Join(dir, "m.slope")
	w, err := Create(out, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	a, err := os.Stat(ref)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.Stat(out)
	if err != nil {
		t.Fatal(err)
	}
	if a.Mode().Perm() != b.Mode().Perm() {
		t.Errorf("container mode %v, a file created with 0666 %v", b.Mode().Perm(), a.Mode().Perm())
	}
}

// Rewrite copies every tensor and the manifest's sections, with the edit
// applied (compressed tensors come out raw); an edit the writer refuses
// leaves no file.
func TestRewrite(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "a.slope")
	writeSample(t, newSample(t, 3), src, &WriterOptions{Compress: true})
	dst := filepath.Join(dir, "b.slope")
	if err := Rewrite(src, dst, func(m *slopepb.Manifest) { m.Metadata = map[string]string{"note": "x"} }); err != nil {
		t.Fatal(err)
	}
	a, err := Open(src, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := Open(dst, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.Verify(nil); err != nil {
		t.Fatal(err)
	}
	if len(a.Tensors()) != len(b.Tensors()) || b.Manifest().Metadata["note"] != "x" || !proto.Equal(a.Manifest().Graph, b.Manifest().Graph) {
		t.Fatalf("rewritten manifest %v", b.Manifest())
	}
	for _, d := range a.Tensors() {
		x, err := a.Raw(d.Name)
		if err != nil {
			t.Fatal(err)
		}
		y, err := b.Raw(d.Name)
		if err != nil || string(x) != string(y) {
			t.Fatalf("tensor %q differs: %v", d.Name, err)
		}
	}
	bad := filepath.Join(dir, "c.slope")
	if err := Rewrite(src, bad, func(m *slopepb.Manifest) { m.Graph.Node[0].Domain = "" }); err == nil {
		t.Error("an invalid graph was written")
	}
	if _, err := os.Stat(bad); err == nil {
		t.Errorf("%s left after a refused rewrite", bad)
	}
}
