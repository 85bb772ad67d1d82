package guest

import (
	"strings"
	"testing"

	"golang.org/x/crypto/ssh/knownhosts"
)

// FuzzKnownHostsLine: no line, however hostile, panics the parser or stops a
// valid pin elsewhere in the file from being enforced.
func FuzzKnownHostsLine(f *testing.F) {
	_, pinned, err := NewHostKey()
	if err != nil {
		f.Fatal(err)
	}
	fuzzKey := strings.TrimSpace(string(AuthorizedKey(pinned)))
	for _, s := range []string{
		"10.0.0.2 " + fuzzKey,
		"[10.0.0.2]:2222," + "dev.vm " + fuzzKey + " comment here",
		"@revoked * " + fuzzKey,
		"@cert-authority *.vm " + fuzzKey,
		"|1|c2FsdA==|aGFzaA== " + fuzzKey,
		"!10.0.0.*,10.0.0.2 " + fuzzKey,
		"# comment", "", "   ", "garbage", "10.0.0.2 ssh-ed25519", "10.0.0.2 ssh-ed25519 !!!",
		"@ 10.0.0.2 " + fuzzKey, ", " + fuzzKey, "*?*?*?*?*?*?*?*?*?*?*?*?*?*?*?*?*?*?*?*?*?*?x " + fuzzKey,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		l, err := parseKnownHostsLine(line)
		if err == nil && l.entry {
			if l.key == nil || len(l.hosts) == 0 {
				t.Fatalf("entry without key or hosts: %q", line)
			}
			// A parsed entry re-serialises to something that parses the same.
			again, err := parseKnownHostsLine(l.format())
			if err != nil || !again.entry || strings.Join(again.hosts, ",") != strings.Join(l.hosts, ",") ||
				!keysEqual(again.key, l.key) || again.marker != l.marker {
				t.Fatalf("format of %q = %q does not round-trip: %v", line, l.format(), err)
			}
			matchHostPatterns(l.hosts, "10.0.0.2")
			matchHostPatterns(l.hosts, "[10.0.0.2]:2222")
		}
		// Whatever else the file holds, 10.0.0.9's pin is honoured.
		content := line + "\n" + knownhosts.Line([]string{"10.0.0.9"}, pinned) + "\n"
		lines := parseKnownHosts([]byte(content), "fuzz", nil)
		keys := keysFor(lines, "10.0.0.9")
		found := false
		for _, k := range keys {
			if keysEqual(k, pinned) {
				found = true
			}
		}
		if !found {
			t.Fatalf("pin lost after line %q", line)
		}
		// Removing the pinned host never disturbs the fuzzed line's raw text
		// unless that line named the host too.
		kept := removeHosts(lines, []string{"10.0.0.9"})
		if len(kept) == 0 && !strings.Contains(line, "10.0.0.9") && strings.TrimSpace(line) != "" {
			t.Fatalf("Remove dropped an unrelated line %q", line)
		}
	})
}
