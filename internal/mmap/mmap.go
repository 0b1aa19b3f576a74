// Package mmap maps files read-only into memory for the container reader
// and the checkpoint sources, and passes them paging advice: the same four
// calls on unix (mmap, munmap, madvise) and on Windows (CreateFileMapping
// and MapViewOfFile; the advice is a no-op there, the system trims a
// read-only view's pages itself when memory is short).
package mmap
