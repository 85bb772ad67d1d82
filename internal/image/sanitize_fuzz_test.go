package image

import (
	"path"
	"strings"
	"testing"
)

// FuzzCleanEntryName: whatever a layer calls an entry, an accepted name is a
// clean relative path inside the root without control characters.
func FuzzCleanEntryName(f *testing.F) {
	for _, s := range []string{"etc/passwd", "/etc/passwd", "./a/../b", "../x", "a/../../x", "/", ".", "..", "a\nb",
		"a//b/", ".wh..wh..opq", "x/" + strings.Repeat("n", 300), "\x00", "a/./b/../../.."} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		got, err := cleanEntryName(name)
		if err != nil {
			return
		}
		if got == "" || strings.HasPrefix(got, "/") || got == ".." || strings.HasPrefix(got, "../") || path.Clean(got) != got {
			t.Fatalf("cleanEntryName(%q) = %q: not a clean relative path", name, got)
		}
		if got != "." && strings.Contains("/"+got+"/", "/../") {
			t.Fatalf("cleanEntryName(%q) = %q climbs", name, got)
		}
		for i := 0; i < len(got); i++ {
			if got[i] < 0x20 || got[i] == 0x7f {
				t.Fatalf("cleanEntryName(%q) = %q keeps a control character", name, got)
			}
		}
		for _, c := range strings.Split(got, "/") {
			if len(c) > maxNameComponent {
				t.Fatalf("cleanEntryName(%q): component of %d bytes", name, len(c))
			}
		}
	})
}
