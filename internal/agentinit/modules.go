package agentinit

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// ReadModuleList parses the load-order file: one absolute path per line,
// blank lines and #-comments ignored.
func ReadModuleList(r io.Reader) ([]string, error) {
	var out []string
	s := bufio.NewScanner(r)
	for n := 1; s.Scan(); n++ {
		l := strings.TrimSpace(s.Text())
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		if !filepath.IsAbs(l) || filepath.Clean(l) != l {
			return nil, fmt.Errorf("module list line %d: %q is not a clean absolute path", n, l)
		}
		out = append(out, l)
	}
	return out, s.Err()
}

// LoadModules loads each module in order with finit_module. A module that
// is already loaded (EEXIST) is fine. It keeps going after a failure so one
// optional driver cannot stop the boot; the failures are returned joined.
func LoadModules(paths []string, logf func(string, ...any)) error {
	var errs []error
	for _, p := range paths {
		if err := loadModule(p); err != nil {
			errs = append(errs, fmt.Errorf("load %s: %w", filepath.Base(p), err))
			continue
		}
		logf("loaded %s", filepath.Base(p))
	}
	return errors.Join(errs...)
}

func loadModule(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	err = unix.FinitModule(int(f.Fd()), "", 0)
	if errors.Is(err, unix.EEXIST) {
		return nil
	}
	return err
}
