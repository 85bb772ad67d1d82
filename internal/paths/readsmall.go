package paths

import (
	"fmt"
	"io"
	"os"
	"syscall"

	"github.com/banger-dev/banger/internal/api"
)

// ReadSmall reads a regular file of at most max bytes without following a
// symlink in its last component or blocking on a FIFO: the small files
// banger keeps in the state dir (a capability's secret, a snapshot's list),
// where a planted link must not redirect the read.
func ReadSmall(path string, max int64) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil {
		return nil, err
	} else if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file: %w", path, api.ErrInvalid)
	}
	// One byte past the limit, so a longer file is refused, not cut.
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%s is over %d bytes: %w", path, max, api.ErrInvalid)
	}
	return b, nil
}
