//go:build unix

package outfile

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestCreateTempMode: the temporary file gets 0666 less the umask, as
// os.Create would give the output (not os.CreateTemp's 0600), and a
// hidden name beside the output.
func TestCreateTempMode(t *testing.T) {
	old := syscall.Umask(0o027)
	defer syscall.Umask(old)
	out := filepath.Join(t.TempDir(), "loss.png")
	f, err := CreateTemp(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o640 {
		t.Fatalf("mode %v under umask 027, want -rw-r-----", st.Mode().Perm())
	}
	if filepath.Dir(f.Name()) != filepath.Dir(out) || !strings.HasPrefix(filepath.Base(f.Name()), ".loss.png.tmp-") {
		t.Fatalf("temporary name %s for %s", f.Name(), out)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Fatalf("the output itself exists: %v", err)
	}
}
