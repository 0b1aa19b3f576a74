//go:build unix

package convert

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/slopeml/slope/testmodels"
)

// TestSourceFIFO: a FIFO where a checkpoint's file should be (its
// weights, config.json, an index, pytorch_model.bin) is refused as not a
// regular file; opening it would block until a writer came.
func TestSourceFIFO(t *testing.T) {
	cfg, err := os.ReadFile(filepath.Join(testmodels.Dir(), "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		fifo   string
		config bool // write a real config.json
	}{
		{"model.safetensors", true},
		{"config.json", false},
		{"pytorch_model.bin", true},
		{"model.safetensors.index.json", true},
	} {
		dir := t.TempDir()
		if c.config {
			if err := os.WriteFile(filepath.Join(dir, "config.json"), cfg, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if err := syscall.Mkfifo(filepath.Join(dir, c.fifo), 0o644); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() {
			src, err := OpenSource(dir)
			if err == nil {
				src.Close()
			}
			done <- err
		}()
		select {
		case err := <-done:
			if err == nil || !errors.Is(err, ErrCheckpoint) && !errors.Is(err, ErrSafetensors) && !errors.Is(err, ErrPickle) {
				t.Errorf("%s as a FIFO: %v, want a not-a-regular-file error", c.fifo, err)
			}
		case <-time.After(10 * time.Second):
			// Unblock the open so the test binary can end.
			if f, err := os.OpenFile(filepath.Join(dir, c.fifo), os.O_WRONLY, 0); err == nil {
				f.Close()
			}
			t.Fatalf("%s as a FIFO: OpenSource blocked", c.fifo)
		}
	}
}
