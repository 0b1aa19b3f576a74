package outfile

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/slopeml/slope/format"
)

func TestCheckContainer(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	src := write("model.onnx", "not a container")
	hf := filepath.Join(dir, "hf")
	if err := os.Mkdir(hf, 0o755); err != nil {
		t.Fatal(err)
	}
	weights := write("hf/model.safetensors", "weights")
	prev := write("hf/model.slope", format.Magic+"rest")
	old := write("old.slope", format.Magic+"rest")
	empty := write("empty.slope", "")
	for _, c := range []struct {
		name   string
		path   string
		force  bool
		inputs []string
		want   string // "" for no error
	}{
		{"new file", filepath.Join(dir, "new.slope"), false, []string{src}, ""},
		{"old container", old, false, nil, ""},
		{"empty file", empty, false, nil, ""},
		{"foreign file", src, false, nil, "not a .slope container"},
		{"foreign file, forced", src, true, nil, ""},
		{"the input", src, true, []string{src}, "is the input"},
		{"the input container", old, false, []string{"", filepath.Join(dir, "missing"), old}, "is the input"},
		{"a file of the input directory", weights, true, []string{hf}, "file of the input directory"},
		{"a container in the input directory", prev, false, []string{hf}, ""},
		{"a new file in the input directory", filepath.Join(hf, "new.slope"), false, []string{hf}, ""},
		{"a directory", dir, true, nil, "is a directory"},
		{"no directory", filepath.Join(dir, "missing", "x.slope"), false, nil, "cannot create files"},
		{"empty path", "", false, nil, "required"},
	} {
		err := CheckContainer("--out", c.path, c.force, c.inputs...)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: %v", c.name, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "--out")):
			t.Errorf("%s: error %v, want one with %q and the flag", c.name, err, c.want)
		}
	}
	if err := CheckContainer("--out", src, false); !errors.Is(err, ErrNotContainer) {
		t.Errorf("foreign file: %v does not wrap ErrNotContainer", err)
	}
	// No probe file is left behind.
	left, err := filepath.Glob(filepath.Join(dir, ".slope-probe-*"))
	if err != nil || len(left) != 0 {
		t.Errorf("probe files left: %v %v", left, err)
	}
}

func TestSameFile(t *testing.T) {
	dir := t.TempDir()
	a := filepath.Join(dir, "a")
	if err := os.WriteFile(a, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "l")
	if err := os.Link(a, link); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(dir, "b")
	if err := os.WriteFile(other, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		a, b string
		same bool
	}{
		{a, a, true},
		{a, filepath.Join(dir, ".", "a"), true},
		{a, link, true},
		{a, other, false},
		{filepath.Join(dir, "missing"), filepath.Join(dir, "missing"), true}, // the same name, even before it exists
		{filepath.Join(dir, "missing"), a, false},
	} {
		if got := SameFile(c.a, c.b); got != c.same {
			t.Errorf("SameFile(%s, %s) = %v", c.a, c.b, got)
		}
	}
}
