// Package usage is the two commands' (slope, slope-convert) one notion of
// a usage error: a mistake in the command line, as opposed to a failure
// of the command itself. Both print it as "PROG: <error>" followed by a
// pointer to the command's --help, and exit with status 2 (ExitCode);
// failures exit with 1.
package usage

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/slopeml/slope/cli/internal/interrupt"
)

// ExitCode is the exit status of a usage error.
const ExitCode = 2

// Error is a usage error of the command Cmd (its path, e.g. "slope
// inspect", for the --help hint).
type Error struct {
	Cmd string
	Err error
}

func (e *Error) Error() string { return e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// Errorf returns a usage error of cmd with the formatted message.
func Errorf(cmd *cobra.Command, format string, a ...any) error {
	return &Error{Cmd: cmd.CommandPath(), Err: fmt.Errorf(format, a...)}
}

// Wrap marks err (nil stays nil) as a usage error of cmd.
func Wrap(cmd *cobra.Command, err error) error {
	if err == nil {
		return nil
	}
	return &Error{Cmd: cmd.CommandPath(), Err: err}
}

// Setup makes root's flag-parsing errors (an unknown flag, a value that
// does not parse) usage errors named by the command, and replaces cobra's
// help command with one for which an unknown topic is a usage error
// (cobra's prints the root's usage and succeeds).
func Setup(root *cobra.Command) {
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return &Error{Cmd: cmd.CommandPath(), Err: fmt.Errorf("%s: %w", cmd.Name(), err)}
	})
	root.SetHelpCommand(&cobra.Command{
		Use:   "help [command]",
		Short: "Help about any command",
		Args:  cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			target, rest, err := root.Find(args)
			if err != nil || len(rest) > 0 {
				return Errorf(root, "help: unknown command %q", strings.Join(args, " "))
			}
			return target.Help()
		},
	})
}

// Status is a command's exit status for the error err of its run, which
// it prints to stderr as "prog: <error>": 0 for nil, 130 or 143 after a
// signal (interrupt.Error), ExitCode for a usage error (with the --help
// hint), 1 for any other failure.
func Status(stderr io.Writer, prog string, err error) int {
	if err == nil {
		return 0
	}
	fmt.Fprintf(stderr, "%s: %v\n", prog, err)
	var ie *interrupt.Error
	if errors.As(err, &ie) {
		return ie.ExitCode()
	}
	if Report(stderr, err) {
		return ExitCode
	}
	return 1
}

// Report prints a usage error's --help hint to stderr and reports whether
// err is one.
func Report(stderr io.Writer, err error) bool {
	var ue *Error
	if !errors.As(err, &ue) {
		return false
	}
	if ue.Cmd != "" {
		fmt.Fprintf(stderr, "Run '%s --help' for usage.\n", ue.Cmd)
	}
	return true
}
