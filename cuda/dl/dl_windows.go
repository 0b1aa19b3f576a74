//go:build windows

package dl

import "syscall"

// dlopen loads a DLL. Open refuses every library before this on Windows
// (its candidates are Linux file names), so this only keeps the package
// building there.
func dlopen(path string) (uintptr, error) {
	h, err := syscall.LoadLibrary(path)
	return uintptr(h), err
}

func dlsym(h uintptr, symbol string) (uintptr, error) {
	return syscall.GetProcAddress(syscall.Handle(h), symbol)
}
