package driver

import "syscall"

// threadID is the calling OS thread's id (Do compares it with the
// worker's to refuse a nested call).
func threadID() int { return syscall.Gettid() }
