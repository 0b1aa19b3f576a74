package dl

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestCandidatesOrder(t *testing.T) {
	env := map[string]string{
		"CUDA_HOME":       "/cuda",
		"LD_LIBRARY_PATH": "/ld1:/ld2",
	}
	c := Candidates(CuSPARSELt, func(k string) string { return env[k] })
	iCuda := slices.Index(c, "/cuda/lib64/libcusparseLt.so.0")
	iLD := slices.Index(c, "/ld1/libcusparseLt.so.0")
	iStd := slices.Index(c, "/usr/local/cuda/lib64/libcusparseLt.so.0")
	iBare := slices.Index(c, "libcusparseLt.so.0")
	if !(0 <= iCuda && iCuda < iLD && iLD < iStd && iStd < iBare) {
		t.Fatalf("order: cuda %d ld %d std %d bare %d in %v", iCuda, iLD, iStd, iBare, c)
	}
	if iBare != len(c)-2 {
		t.Fatalf("bare names must come last: %v", c[len(c)-3:])
	}
}

func TestCandidatesOverrideFolder(t *testing.T) {
	env := map[string]string{"SLOPE_LIBCUDA": "/drv/"}
	c := Candidates(CUDA, func(k string) string { return env[k] })
	if len(c) != 2 || c[0] != "/drv/libcuda.so.1" || c[1] != "/drv/libcuda.so" {
		t.Fatalf("folder override: %v", c[:2])
	}
}

func TestOpenMissingListsPaths(t *testing.T) {
	t.Setenv("SLOPE_TEST_LIB", "/nonexistent/libnothing.so.9")
	_, err := Open(Spec{Name: "nothing", Env: "SLOPE_TEST_LIB", Files: []string{"libslope-nothing.so.9"}})
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("err = %v, want ErrNotFound", err)
	}
	for _, want := range []string{"nothing", "SLOPE_TEST_LIB", "/nonexistent/libnothing.so.9 (absent)"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
}

func TestBindMissingSymbol(t *testing.T) {
	l, err := Open(Spec{Name: "libc", Files: []string{"libc.so.6"}})
	if err != nil {
		t.Fatalf("libc must load on linux: %v", err)
	}
	var f func() int32
	if err := l.Bind(&f, "slope_no_such_symbol"); !errors.Is(err, ErrSymbol) || !strings.Contains(err.Error(), "slope_no_such_symbol") {
		t.Fatalf("err = %v", err)
	}
	var getpid func() int32
	if err := l.Bind(&getpid, "getpid"); err != nil || getpid() <= 0 {
		t.Fatalf("getpid: %v", err)
	}
}

func TestOpenMissingSearchListsPaths(t *testing.T) {
	_, err := Open(Spec{Name: "nothing", Files: []string{"libslope-nothing.so.9"}, WheelDirs: []string{"nvidia/nothing/lib"}})
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("err = %v, want ErrNotFound", err)
	}
	if !strings.Contains(err.Error(), "/usr/local/cuda/lib64/libslope-nothing.so.9 (absent)") {
		t.Errorf("error lacks the standard location:\n%v", err)
	}
}

// API binds once on success and retries after a failure.
func TestAPILoad(t *testing.T) {
	type libc struct{ getpid func() int32 }
	calls := 0
	a := API[libc]{Spec: Spec{Name: "libc", Env: "SLOPE_TEST_LIBC", Files: []string{"libc.so.6"}},
		Table: func(l *libc) map[string]any { calls++; return map[string]any{"getpid": &l.getpid} }}
	t.Setenv("SLOPE_TEST_LIBC", "/nonexistent/libc.so.6")
	if _, err := a.Load(); !errors.Is(err, ErrNotFound) || a.Path() != "" {
		t.Fatalf("Load with a wrong override: %v, path %q", err, a.Path())
	}
	t.Setenv("SLOPE_TEST_LIBC", "")
	l1, err := a.Load()
	if err != nil || l1.getpid() <= 0 || !strings.HasSuffix(a.Path(), "libc.so.6") {
		t.Fatalf("retry: %v, path %q", err, a.Path())
	}
	if l2, err := a.Load(); err != nil || l2 != l1 || calls != 1 {
		t.Fatalf("second Load: %v, same %v, %d bindings", err, l2 == l1, calls)
	}
}
