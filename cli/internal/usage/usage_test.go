package usage

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"

	"github.com/spf13/cobra"

	"github.com/slopeml/slope/cli/internal/interrupt"
)

func TestUsage(t *testing.T) {
	root := &cobra.Command{Use: "prog", SilenceErrors: true, SilenceUsage: true}
	sub := &cobra.Command{Use: "sub", Long: "sub's help", RunE: func(*cobra.Command, []string) error { return nil }}
	sub.Flags().Int("n", 0, "a number")
	root.AddCommand(sub)
	Setup(root)
	run := func(args ...string) (string, error) {
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetErr(&out)
		root.SetArgs(args)
		return out.String(), root.Execute()
	}
	for _, c := range []struct {
		args []string
		cmd  string
		want string
	}{
		{[]string{"sub", "--n", "x"}, "prog sub", `sub: invalid argument "x" for "--n"`},
		{[]string{"sub", "--bogus"}, "prog sub", "sub: unknown flag: --bogus"},
		{[]string{"help", "nope", "more"}, "prog", `help: unknown command "nope more"`},
	} {
		_, err := run(c.args...)
		var ue *Error
		if !errors.As(err, &ue) || ue.Cmd != c.cmd || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v (%#v), want a usage error of %q naming %q", c.args, err, ue, c.cmd, c.want)
		}
		var hint bytes.Buffer
		if !Report(&hint, err) || hint.String() != "Run '"+c.cmd+" --help' for usage.\n" {
			t.Errorf("%q: hint %q", c.args, hint.String())
		}
	}
	if _, err := run("help", "sub"); err != nil {
		t.Fatalf("help sub: %v", err)
	}
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetArgs([]string{"help", "sub"})
	if err := root.Execute(); err != nil || !strings.Contains(out.String(), "sub's help") {
		t.Fatalf("help sub: %v, %q", err, out.String())
	}
	if Report(&out, fmt.Errorf("a failure")) || Wrap(sub, nil) != nil {
		t.Fatal("a plain error or nil taken for a usage error")
	}
	if err := Wrap(sub, errors.New("bad")); !errors.As(err, new(*Error)) || err.Error() != "bad" {
		t.Fatalf("Wrap: %v", err)
	}
}

func TestStatus(t *testing.T) {
	cmd := &cobra.Command{Use: "sub"}
	for _, c := range []struct {
		err  error
		code int
		want string
	}{
		{nil, 0, ""},
		{errors.New("disk full"), 1, "prog: disk full\n"},
		{Errorf(cmd, "bad --n"), ExitCode, "prog: bad --n\nRun 'sub --help' for usage.\n"},
		{fmt.Errorf("wrapped: %w", &interrupt.Error{Signal: syscall.SIGTERM, Err: errors.New("stopped")}), 143, "prog: wrapped: "},
	} {
		var stderr bytes.Buffer
		if got := Status(&stderr, "prog", c.err); got != c.code || !strings.HasPrefix(stderr.String(), c.want) || (c.err == nil) != (stderr.Len() == 0) {
			t.Errorf("%v: status %d, stderr %q; want %d and %q", c.err, got, stderr.String(), c.code, c.want)
		}
	}
}
