package image

import (
	"fmt"
	"path"
	"strings"

	"github.com/banger-dev/banger/internal/api"
)

// maxNameComponent is the longest file name ext4 stores.
const maxNameComponent = 255

// cleanEntryName turns a tar entry name from an untrusted layer into a clean
// path relative to the root of the tree, the way Docker reads them: leading
// slashes and "./" are dropped (absolute names are taken relative to the
// root), "a/../b" becomes "b". It fails, naming the entry, when the name is
// empty, climbs above the root, or holds bytes that mkfs.ext4 -d and debugfs
// cannot carry safely (NUL, newlines and other control characters). The root
// itself is ".".
func cleanEntryName(name string) (string, error) {
	if name == "" {
		return "", fmt.Errorf("entry with an empty name: %w", api.ErrInvalid)
	}
	if err := checkNameBytes(name); err != nil {
		return "", fmt.Errorf("entry %q: %w", name, err)
	}
	rel := strings.TrimLeft(name, "/")
	if rel == "" {
		return ".", nil
	}
	clean := path.Clean(rel)
	if clean == ".." || strings.HasPrefix(clean, "../") {
		return "", fmt.Errorf("entry %q: path escapes the image root: %w", name, api.ErrInvalid)
	}
	for _, c := range strings.Split(clean, "/") {
		if len(c) > maxNameComponent {
			return "", fmt.Errorf("entry %q: a name component is longer than %d bytes: %w", name, maxNameComponent, api.ErrInvalid)
		}
	}
	return clean, nil
}

// checkNameBytes rejects control characters (C0, DEL) in a name or link target.
func checkNameBytes(s string) error {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == 0x7f {
			return fmt.Errorf("name contains control character 0x%02x at byte %d, which the ext4 tools cannot encode safely: %w", c, i, api.ErrInvalid)
		}
	}
	return nil
}

// checkLinkTarget validates a symlink target: stored verbatim, never
// followed while extracting, but it must not carry control characters.
func checkLinkTarget(entry, target string) error {
	if target == "" {
		return fmt.Errorf("entry %q: symlink with an empty target: %w", entry, api.ErrInvalid)
	}
	if len(target) > 4095 {
		return fmt.Errorf("entry %q: symlink target longer than 4095 bytes: %w", entry, api.ErrInvalid)
	}
	if err := checkNameBytes(target); err != nil {
		return fmt.Errorf("entry %q: symlink target %q: %w", entry, target, err)
	}
	return nil
}
