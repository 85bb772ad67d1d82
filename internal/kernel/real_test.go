package kernel

import (
	"context"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/system"
)

// TestImportRealDeb imports a real Debian kernel package with the real
// tools. Opt in with BANGER_TEST_DEB=<.deb> and BANGER_TEST_AGENT=<static
// banger-agent>; BANGER_TEST_STATE keeps the result in that state root.
func TestImportRealDeb(t *testing.T) {
	deb, agent := os.Getenv("BANGER_TEST_DEB"), os.Getenv("BANGER_TEST_AGENT")
	if deb == "" || agent == "" {
		t.Skip("set BANGER_TEST_DEB and BANGER_TEST_AGENT to import a real kernel package")
	}
	root := os.Getenv("BANGER_TEST_STATE")
	if root == "" {
		root = t.TempDir()
	}
	imp := &Importer{
		Runner:    system.Exec{},
		Layout:    paths.Layout{Root: root},
		Log:       slog.New(slog.NewTextHandler(os.Stderr, nil)),
		AgentPath: agent,
	}
	start := time.Now()
	info, err := imp.ImportDeb(context.Background(), "real-test", deb, func(s string) { t.Logf("%v stage %s", time.Since(start).Round(time.Millisecond), s) })
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("imported in %v: %+v", time.Since(start).Round(time.Millisecond), info)
	for _, want := range []string{"virtio_blk", "virtio_net", "virtio_mmio", "vmw_vsock_virtio_transport"} {
		if !strings.Contains(" "+strings.Join(info.Modules, " ")+" ", " "+want+" ") {
			t.Errorf("module %s not included", want)
		}
	}
	st, _ := os.Stat(info.Initrd)
	t.Logf("initramfs %d bytes", st.Size())
}
