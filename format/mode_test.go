package format

import (
	"os"
	"path/filepath"
	"testing"
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
