package npm_test

import (
	"encoding/base64"
	"testing"

	"github.com/banger-dev/banger/internal/capability"
	"github.com/banger-dev/banger/internal/npm"
)

// The pinned opencode integrity is a canonical sha512 SSRI string.
// (External test package: capability imports npm.)
func TestPinnedOpencodeIntegrity(t *testing.T) {
	d, err := npm.ParseIntegrity(capability.OpencodeIntegrity)
	if err != nil || len(d) != 64 {
		t.Fatalf("capability.OpencodeIntegrity: %d bytes, %v", len(d), err)
	}
	if s := "sha512-" + base64.StdEncoding.EncodeToString(d); s != capability.OpencodeIntegrity {
		t.Errorf("pinned integrity is not canonical: %s", s)
	}
}
