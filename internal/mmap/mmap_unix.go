//go:build unix

package mmap

import (
	"os"

	"golang.org/x/sys/unix"
)

// Map maps the first size bytes (size > 0) of f read-only and shared.
func Map(f *os.File, size int) ([]byte, error) {
	return unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ, unix.MAP_SHARED)
}

// Unmap undoes Map.
func Unmap(b []byte) error { return unix.Munmap(b) }

// DontNeed releases the pages of b (page-aligned) from the process's
// resident memory; a later read faults them in again from the file.
func DontNeed(b []byte) error { return unix.Madvise(b, unix.MADV_DONTNEED) }

// WillNeed asks for the pages of b (page-aligned) to be read ahead.
func WillNeed(b []byte) error { return unix.Madvise(b, unix.MADV_WILLNEED) }
