// Package dl finds and loads the NVIDIA shared libraries at run time with
// purego (no cgo): an override variable first, then the standard CUDA
// locations, then the lib folders of NVIDIA's Python wheels. Errors list
// every path that was tried, so a user can see why a library was not
// found and which variable to set.
package dl

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"

	"github.com/ebitengine/purego"
)

// ErrNotFound is wrapped when no candidate path of a library loads.
var ErrNotFound = errors.New("library not found")

// ErrSymbol is wrapped when a loaded library lacks a symbol.
var ErrSymbol = errors.New("missing symbol")

// Spec describes one library and where to look for it.
type Spec struct {
	// Name is what messages call it, e.g. "cuSPARSELt".
	Name string
	// Env names a variable holding a file path (or a folder holding one of
	// Files) that overrides the search, e.g. SLOPE_CUSPARSELT.
	Env string
	// Files are the file names to try in each folder, best first
	// (e.g. libcusparseLt.so.0).
	Files []string
	// WheelDirs are folders relative to a Python site-packages folder
	// (e.g. nvidia/cusparselt/lib).
	WheelDirs []string
}

// Library is a loaded shared library.
type Library struct {
	Name, Path string
	handle     uintptr
}

// Candidates lists the paths Open tries for s, in order, given the
// environment (exported for tests and for error messages).
func Candidates(s Spec, getenv func(string) string) []string {
	var out []string
	seen := map[string]bool{}
	add := func(p string) {
		if p != "" && !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	addDir := func(dir string) {
		for _, f := range s.Files {
			add(filepath.Join(dir, f))
		}
	}
	if s.Env != "" {
		// An override is exclusive: a wrong path is reported, not
		// silently replaced by another library.
		if v := getenv(s.Env); v != "" {
			if strings.HasSuffix(v, "/") || !strings.Contains(filepath.Base(v), ".so") {
				addDir(v)
			} else {
				add(v)
			}
			return out
		}
	}
	for _, v := range []string{"CUDA_HOME", "CUDA_PATH"} {
		if d := getenv(v); d != "" {
			addDir(filepath.Join(d, "lib64"))
			addDir(filepath.Join(d, "lib"))
		}
	}
	for _, d := range filepath.SplitList(getenv("LD_LIBRARY_PATH")) {
		addDir(d)
	}
	for _, d := range []string{
		"/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib",
		"/usr/local/nvidia/lib64", "/usr/lib/x86_64-linux-gnu", "/usr/lib64",
		"/usr/lib/wsl/lib", "/usr/lib/aarch64-linux-gnu",
	} {
		addDir(d)
	}
	for _, sp := range sitePackages(getenv) {
		for _, wd := range s.WheelDirs {
			addDir(filepath.Join(sp, wd))
		}
	}
	// Bare names last: the dynamic loader's own search (ld.so.cache).
	for _, f := range s.Files {
		add(f)
	}
	return out
}

// sitePackages lists Python site-packages folders: from VIRTUAL_ENV,
// PYTHONPATH and the usual install prefixes, newest Python first.
func sitePackages(getenv func(string) string) []string {
	var roots []string
	if v := getenv("VIRTUAL_ENV"); v != "" {
		roots = append(roots, v)
	}
	roots = append(roots, "/opt/torch/.venv", "/opt/conda", "/usr/local", "/usr")
	if h := getenv("HOME"); h != "" {
		roots = append(roots, filepath.Join(h, ".local"))
	}
	out := filepath.SplitList(getenv("PYTHONPATH"))
	for _, r := range roots {
		var found []string
		for _, pat := range []string{"lib/python3*/site-packages", "lib/python3*/dist-packages", "lib/python3/dist-packages"} {
			m, _ := filepath.Glob(filepath.Join(r, pat))
			found = append(found, m...)
		}
		sort.Sort(sort.Reverse(sort.StringSlice(found)))
		out = append(out, found...)
	}
	return out
}

// Open loads the first candidate of s that the dynamic loader accepts.
// When s.Env is set, only the path it names is tried.
func Open(s Spec) (*Library, error) {
	if runtime.GOOS != "linux" {
		return nil, fmt.Errorf("%s: loading NVIDIA libraries is supported on linux only, not %s: %w", s.Name, runtime.GOOS, ErrNotFound)
	}
	cands := Candidates(s, os.Getenv)
	var tried []string
	for _, p := range cands {
		if filepath.IsAbs(p) {
			if _, err := os.Stat(p); err != nil {
				tried = append(tried, p+" (absent)")
				continue
			}
		}
		h, err := dlopen(p)
		if err != nil {
			tried = append(tried, fmt.Sprintf("%s (%v)", p, err))
			continue
		}
		return &Library{Name: s.Name, Path: p, handle: h}, nil
	}
	hint := ""
	if s.Env != "" {
		hint = fmt.Sprintf("; set %s to its path", s.Env)
	}
	return nil, fmt.Errorf("%s: %w%s; tried:\n  %s", s.Name, ErrNotFound, hint, strings.Join(tried, "\n  "))
}

// Bind sets *fptr (a pointer to a func variable) to call symbol.
func (l *Library) Bind(fptr any, symbol string) error {
	addr, err := dlsym(l.handle, symbol)
	if err != nil || addr == 0 {
		return fmt.Errorf("%s (%s): %s: %w", l.Name, l.Path, symbol, ErrSymbol)
	}
	purego.RegisterFunc(fptr, addr)
	return nil
}

// Has reports whether the library exports symbol.
func (l *Library) Has(symbol string) bool {
	addr, err := dlsym(l.handle, symbol)
	return err == nil && addr != 0
}

// BindAll binds every symbol of table (symbol -> func pointer) and joins
// the errors of all that are missing.
func (l *Library) BindAll(table map[string]any) error {
	var errs []error
	names := make([]string, 0, len(table))
	for n := range table {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if err := l.Bind(table[n], n); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Common specs.
var (
	CUDA = Spec{Name: "CUDA driver", Env: "SLOPE_LIBCUDA",
		Files: []string{"libcuda.so.1", "libcuda.so"}}
	CuBLASLt = Spec{Name: "cuBLASLt", Env: "SLOPE_LIBCUBLASLT",
		Files:     []string{"libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so.11", "libcublasLt.so"},
		WheelDirs: []string{"nvidia/cu13/lib", "nvidia/cublas/lib"}}
	CuSPARSELt = Spec{Name: "cuSPARSELt", Env: "SLOPE_LIBCUSPARSELT",
		Files:     []string{"libcusparseLt.so.0", "libcusparseLt.so"},
		WheelDirs: []string{"nvidia/cusparselt/lib", "nvidia/cu13/lib", "cusparselt/lib"}}
)

// API loads a library and binds a table of its functions the first time
// Load succeeds, once per process. A failure is not remembered: a later
// Load (after the environment changed) tries again.
type API[T any] struct {
	Spec Spec
	// Table lists, for a fresh *T, each symbol and the func field to bind
	// it to.
	Table func(*T) map[string]any

	mu   sync.Mutex
	api  *T
	path string
}

// Load returns the bound functions, loading and binding them if needed.
func (a *API[T]) Load() (*T, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.api != nil {
		return a.api, nil
	}
	lib, err := Open(a.Spec)
	if err != nil {
		return nil, err
	}
	t := new(T)
	if err := lib.BindAll(a.Table(t)); err != nil {
		return nil, err
	}
	a.api, a.path = t, lib.Path
	return t, nil
}

// Path is the file the library was loaded from ("" before a successful
// Load).
func (a *API[T]) Path() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.path
}
