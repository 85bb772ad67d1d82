package image

import (
	"context"
	"flag"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/system"
)

// The real default build downloads ~50 MB of Debian packages and takes about a
// minute, so it only runs when asked:
//
//	go test ./internal/image -run TestRealBuildDefault -image.real-state=/var/tmp/st -image.agent=/path/banger-agent -v
var (
	realState = flag.String("image.real-state", "", "state root for a real BuildDefault (needs root and Debian's mirror)")
	realAgent = flag.String("image.agent", "", "banger-agent binary for the real build")
)

func TestRealBuildDefault(t *testing.T) {
	if *realState == "" {
		t.Skip("set -image.real-state to run the real mmdebstrap build")
	}
	needRoot(t)
	needTools(t, "mmdebstrap", "mkfs.ext4", "debugfs")
	layout := paths.Layout{Root: *realState}
	b := &Builder{Runner: system.Exec{}, Layout: layout, AgentPath: *realAgent,
		Log: slog.New(slog.NewTextHandler(os.Stderr, nil))}
	start := time.Now()
	last := start
	info, err := b.BuildDefault(context.Background(), "debian", func(s string) {
		t.Logf("stage %s (+%v)", s, time.Since(last).Round(time.Millisecond))
		last = time.Now()
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("built in %v: %+v packages=%d", time.Since(start).Round(time.Millisecond), info.Size, len(info.Packages))
	img := filepath.Join(layout.Image("debian"), paths.RootfsFile)
	ssh := debugfs(t, img, "ls -l /etc/ssh")
	t.Logf("/etc/ssh:\n%s", ssh)
	if strings.Contains(ssh, "ssh_host_") {
		t.Error("host keys in the image")
	}
	if *realAgent != "" {
		if got := inode(t, img, "/usr/local/bin/banger-agent"); got != "regular 0755 0:0 1" {
			t.Errorf("agent: %s", got)
		}
	}
}
