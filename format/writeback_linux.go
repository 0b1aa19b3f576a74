package format

import (
	"os"

	"golang.org/x/sys/unix"
)

// startWriteback asks the kernel to start writing [off, off+n) of f to
// the disk now, without waiting (sync_file_range SYNC_FILE_RANGE_WRITE),
// so that Close's fsync finds little left to write and dirty pages do not
// pile up. It is advisory: errors are ignored (fsync reports real ones).
func startWriteback(f *os.File, off, n int64) {
	_ = unix.SyncFileRange(int(f.Fd()), off, n, unix.SYNC_FILE_RANGE_WRITE)
}
