//go:build unix

package format

import (
	"errors"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// Opening a FIFO fails at once (it used to block until a writer came).
func TestOpenFIFO(t *testing.T) {
	p := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(p, 0o600); err != nil {
		t.Skipf("no FIFOs here: %v", err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := Open(p, nil)
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, ErrNotSlope) {
			t.Errorf("open a FIFO: %v, want ErrNotSlope", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Open blocked on a FIFO")
	}
}
