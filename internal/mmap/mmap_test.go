package mmap

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// TestMapRoundTrip: a mapped file reads as its bytes, before and after
// the paging advice, and unmaps without error.
func TestMapRoundTrip(t *testing.T) {
	want := make([]byte, 3*os.Getpagesize()+123)
	for i := range want {
		want[i] = byte(i*7 + i>>8)
	}
	path := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(path, want, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b, err := Map(f, len(want))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, want) {
		t.Fatal("the mapping differs from the file")
	}
	pg := os.Getpagesize()
	if err := WillNeed(b[pg : 3*pg]); err != nil {
		t.Errorf("WillNeed: %v", err)
	}
	if err := DontNeed(b[:2*pg]); err != nil {
		t.Errorf("DontNeed: %v", err)
	}
	if !bytes.Equal(b, want) {
		t.Error("the mapping differs from the file after DontNeed")
	}
	if err := Unmap(b); err != nil {
		t.Errorf("Unmap: %v", err)
	}
}
