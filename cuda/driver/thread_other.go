//go:build !linux

package driver

// threadID is 0 where the thread id is not read (CUDA is loaded on Linux
// only, so no worker exists there).
func threadID() int { return 0 }
