package vm

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/store"
)

func TestFirstBootArg(t *testing.T) {
	layout := paths.Layout{Root: t.TempDir()}
	for name, meta := range map[string]string{
		"plain": `{"name":"plain","source":"dir:/x","size":1}`,
		"bare":  `{"name":"bare","source":"r@sha256:x","size":1,"first_boot":true}`,
	} {
		dir := layout.Image(name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		_ = os.WriteFile(filepath.Join(dir, paths.ImageMeta), []byte(meta), 0o644)
		_ = os.WriteFile(filepath.Join(dir, paths.RootfsFile), nil, 0o644)
	}
	s := New(Deps{Layout: layout})
	if got := s.firstBootArg(store.VM{Image: "bare"}); got != " init=/usr/local/bin/banger-firstboot" {
		t.Errorf("first-boot image: %q", got)
	}
	if s.defaultBootTimeout(store.VM{Image: "bare"}) != FirstBootTimeout {
		t.Error("first-boot image keeps the short boot timeout")
	}
	for _, img := range []string{"plain", "missing"} {
		if got := s.firstBootArg(store.VM{Image: img}); got != "" {
			t.Errorf("%s: %q", img, got)
		}
		if s.defaultBootTimeout(store.VM{Image: img}) != DefaultBootTimeout {
			t.Errorf("%s: boot timeout changed", img)
		}
	}
}
