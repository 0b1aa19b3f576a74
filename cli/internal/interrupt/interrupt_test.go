package interrupt

import (
	"bytes"
	"context"
	"errors"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestWatch: a SIGTERM to the process cancels Watch's context
// instead of ending the process, caught names it, and Wrap turns
// the command's error into one the tools exit 143 for, still wrapping it.
func TestWatch(t *testing.T) {
	var notice syncBuffer
	ctx, caught, stop := Watch(context.Background(), &notice)
	defer stop()
	if caught() != 0 || ctx.Err() != nil {
		t.Fatalf("before any signal: caught %v, context error %v", caught(), ctx.Err())
	}
	if err := Wrap(context.Canceled, caught); err != context.Canceled {
		t.Fatalf("no signal caught: Wrap gave %v, want the error itself", err)
	}
	self, err := os.FindProcess(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if err := self.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ctx.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("SIGTERM did not cancel the context in 10 s")
	}
	// The context ends just after caught is set; both are visible now.
	if got := caught(); got != syscall.SIGTERM {
		t.Fatalf("caught %v, want SIGTERM", got)
	}
	if got := notice.String(); got != "\nterminated: stopping cleanly; a second one ends the process at once\n" {
		t.Fatalf("notice %q", got)
	}
	stopped := errors.New("export: stopped before tensor 3")
	err = Wrap(stopped, caught)
	var ie *Error
	if !errors.As(err, &ie) || ie.ExitCode() != 143 || !errors.Is(err, stopped) {
		t.Fatalf("Wrap gave %#v; want an interruptedError with exit status 143 wrapping %v", err, stopped)
	}
	if err := Wrap(nil, caught); err != nil {
		t.Fatalf("Wrap(nil) = %v", err)
	}
}

// syncBuffer is a bytes.Buffer safe for Watch's goroutine and the test.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
