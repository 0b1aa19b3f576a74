// Package interrupt gives the command-line tools one handling of Ctrl-C
// and SIGTERM: the first signal cancels a context (the command stops
// cleanly, removing or finishing what it writes) and gives the default
// handling back, so a second signal ends the process at once; the
// command then exits with 128 + the signal's number (130 for Ctrl-C, 143
// for SIGTERM), as shells report a command a signal ended.
package interrupt

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
)

// Watch returns a context that the first SIGINT or SIGTERM cancels, and
// caught, which reports that signal (0 before one). stop releases the
// handler (signals end the process again) and cancels ctx; call it when
// the interruptible work is over. The first signal also writes a line to
// notice (nil: none) saying that the command is stopping and that a
// second signal ends it at once: stopping cleanly may take a while (a
// training step, a tensor), and the second signal's default handling
// prints nothing.
func Watch(parent context.Context, notice io.Writer) (ctx context.Context, caught func() syscall.Signal, stop func()) {
	ctx, cancel := context.WithCancel(parent)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	var got atomic.Int32
	go func() {
		select {
		case sg := <-sigs:
			signal.Stop(sigs)
			n := syscall.SIGINT // os.Interrupt where it is no syscall.Signal
			if s, ok := sg.(syscall.Signal); ok {
				n = s
			}
			got.Store(int32(n))
			if notice != nil {
				fmt.Fprintf(notice, "\n%v: stopping cleanly; a second one ends the process at once\n", n)
			}
			cancel()
		case <-ctx.Done():
		}
	}()
	caught = func() syscall.Signal { return syscall.Signal(got.Load()) }
	stop = func() {
		signal.Stop(sigs)
		cancel()
	}
	return ctx, caught, stop
}

// Error ends a command stopped by a signal; the tools exit with ExitCode
// for it.
type Error struct {
	Signal syscall.Signal
	Err    error // what the command says of the state it left
}

// Wrap is err as an *Error when caught reports a signal (the command
// stopped for it), else err itself.
func Wrap(err error, caught func() syscall.Signal) error {
	if sg := caught(); err != nil && sg != 0 {
		return &Error{Signal: sg, Err: err}
	}
	return err
}

// ExitCode is 128 plus the signal's number.
func (e *Error) ExitCode() int { return 128 + int(e.Signal) }

func (e *Error) Error() string { return fmt.Sprintf("%v (%v)", e.Err, e.Signal) }

func (e *Error) Unwrap() error { return e.Err }
