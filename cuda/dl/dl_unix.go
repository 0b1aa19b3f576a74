//go:build !windows

package dl

import "github.com/ebitengine/purego"

// dlopen loads a shared library with its symbols global (cuSPARSELt
// resolves cuBLASLt's through the process).
func dlopen(path string) (uintptr, error) {
	return purego.Dlopen(path, purego.RTLD_NOW|purego.RTLD_GLOBAL)
}

func dlsym(h uintptr, symbol string) (uintptr, error) { return purego.Dlsym(h, symbol) }
