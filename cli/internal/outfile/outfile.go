// Package outfile checks a command's output path before the command does
// its work, so that a long conversion or training run does not end in an
// error it could have given at the start, and so that a file the command
// did not make is not replaced unasked.
package outfile

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"

	"github.com/slopeml/slope/format"
)

// ErrNotContainer is wrapped by CheckContainer's error for an existing
// file that is not a .slope container (and force is not set); a command
// with a --force flag says so (ForceHint).
var ErrNotContainer = errors.New("exists and is not a .slope container")

// CheckContainer checks that a .slope container can be written at path,
// given by the flag named flag (for the messages):
//   - path is not a directory, and its directory exists and takes new
//     files (a probe file is created there and removed);
//   - path is not the same file as any of inputs, nor an existing file
//     other than a .slope container inside an input that is a directory
//     (a checkpoint directory's weights; empty inputs and inputs that do
//     not exist are skipped), whatever force says;
//   - an existing file at path is empty or a .slope container, unless
//     force is set: anything else (a checkpoint source, an ONNX model) is
//     not replaced unasked.
func CheckContainer(flag, path string, force bool, inputs ...string) error {
	if path == "" {
		return fmt.Errorf("%s: an output path is required", flag)
	}
	st, err := os.Stat(path)
	switch {
	case err == nil && st.IsDir():
		return fmt.Errorf("%s %s is a directory; give a file name for the .slope container", flag, path)
	case err == nil:
		notContainer := isContainer(path, st)
		dst, derr := os.Stat(filepath.Dir(path))
		for _, in := range inputs {
			ist, ierr := os.Stat(in)
			switch {
			case in == "" || ierr != nil:
			case os.SameFile(st, ist):
				return fmt.Errorf("%s %s is the input %s: the output would replace it; write to another file", flag, path, in)
			case notContainer != nil && ist.IsDir() && derr == nil && os.SameFile(dst, ist):
				return fmt.Errorf("%s %s is a file of the input directory %s: the output would replace it; write to another file", flag, path, in)
			}
		}
		if notContainer != nil && !force {
			return fmt.Errorf("%s %s: %w", flag, path, notContainer)
		}
	case !errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("%s: %w", flag, err)
	}
	dir := filepath.Dir(path)
	probe, err := os.CreateTemp(dir, ".slope-probe-*")
	if err != nil {
		return fmt.Errorf("%s %s: cannot create files in %s: %w", flag, path, dir, err)
	}
	name := probe.Name()
	probe.Close()
	if err := os.Remove(name); err != nil {
		return fmt.Errorf("%s %s: %w", flag, path, err)
	}
	return nil
}

// SameFile reports whether the paths a and b name one file: the same path
// once cleaned, or two names (links) of one existing file.
func SameFile(a, b string) bool {
	if filepath.Clean(a) == filepath.Clean(b) {
		return true
	}
	sa, err1 := os.Stat(a)
	sb, err2 := os.Stat(b)
	return err1 == nil && err2 == nil && os.SameFile(sa, sb)
}

// CreateTemp creates a new hidden file beside path, to be renamed over it
// once complete, with mode 0666 less the umask, as os.Create gives the
// file itself (os.CreateTemp's 0600 would make the result private).
func CreateTemp(path string) (*os.File, error) {
	dir, base := filepath.Dir(path), filepath.Base(path)
	for range 100 {
		name := filepath.Join(dir, "."+base+".tmp-"+strconv.FormatUint(rand.Uint64(), 10))
		f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o666)
		if errors.Is(err, os.ErrExist) {
			continue
		}
		return f, err
	}
	return nil, fmt.Errorf("no free temporary name beside %s", path)
}

// RemoveStale removes the partial containers that killed writers of path
// left beside it (format.RemoveStaleTemps) and says so on w, one line
// each; call it after CheckContainer, before writing path.
func RemoveStale(flag, path string, w io.Writer) error {
	removed, err := format.RemoveStaleTemps(path)
	for _, n := range removed {
		fmt.Fprintf(w, "removed %s, a partial file of an interrupted run\n", n)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", flag, err)
	}
	return nil
}

// ForceHint adds "; pass --force to replace it" to CheckContainer's error
// for an existing file that is not a container.
func ForceHint(err error) error {
	if errors.Is(err, ErrNotContainer) {
		return fmt.Errorf("%w; pass --force to replace it", err)
	}
	return err
}

// isContainer returns nil when the file at path (st) is empty or starts
// with the .slope magic, ErrNotContainer (wrapped) otherwise.
func isContainer(path string, st os.FileInfo) error {
	if st.Size() == 0 {
		return nil
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%w (not a regular file)", ErrNotContainer)
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	head := make([]byte, len(format.Magic))
	if _, err := io.ReadFull(f, head); err != nil || !bytes.Equal(head, []byte(format.Magic)) {
		return ErrNotContainer
	}
	return nil
}
