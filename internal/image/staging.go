package image

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/banger-dev/banger/internal/paths"
)

// RemoveStaleStaging deletes the staging trees that builds and pulls
// interrupted by a daemon crash left in Layout.Tmp() (unmounting anything a
// killed mmdebstrap left mounted there). Call it at daemon start, before any
// build can run: one daemon owns a state dir. It returns what it removed.
func RemoveStaleStaging(layout paths.Layout) ([]string, error) {
	ents, err := os.ReadDir(layout.Tmp())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var removed []string
	var errs []error
	for _, e := range ents {
		// image-*: build/pull staging; remove-image-*: an interrupted Remove.
		if !e.IsDir() || (!strings.HasPrefix(e.Name(), "image-") && !strings.HasPrefix(e.Name(), "remove-image-")) {
			continue
		}
		p := filepath.Join(layout.Tmp(), e.Name())
		if err := removeStaging(p); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, p)
	}
	return removed, errors.Join(errs...)
}
