package main

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// bangerd.log rotates at its segment size whatever is logged, keeps three
// old files, and what the process writes on its stdout/stderr fds outside
// slog (a panic) lands in the live file too, so rotation covers it.
func TestDaemonLogRotates(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "bangerd.log")
	// Stand-ins for fds 1 and 2 (a test must not redirect its own).
	var stdio []int
	for range 2 {
		fd, err := unix.Open(os.DevNull, unix.O_WRONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(fd) })
		stdio = append(stdio, fd)
	}
	w, err := openDaemonLog(path, stdio...)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewJSONHandler(w, nil))
	const total = 60 << 20
	written := 0
	pad := strings.Repeat("x", 150)
	for i := 0; written < total; i++ {
		log.Info("request", "op", i, "pad", pad)
		written += 200
		if i%50000 == 0 {
			if _, err := unix.Write(stdio[1], []byte(fmt.Sprintf("stderr line %d\n", i))); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := unix.Write(stdio[1], []byte("panic: last words\n")); err != nil {
		t.Fatal(err)
	}
	w.Close()
	var sum int64
	seg := daemonLogPolicy().Segment
	for _, name := range []string{"bangerd.log", "bangerd.log.1", "bangerd.log.2", "bangerd.log.3"} {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		// stderr writes bypass the writer's count: a few lines of slack.
		if st.Size() > seg+4096 {
			t.Errorf("%s is %d bytes, segment %d", name, st.Size(), seg)
		}
		sum += st.Size()
	}
	if _, err := os.Stat(path + ".4"); err == nil {
		t.Error("a fourth old log was kept")
	}
	live, _ := os.ReadFile(path)
	if !strings.HasSuffix(string(live), "panic: last words\n") {
		t.Errorf("stderr output did not follow the rotation; live log ends %q", live[max(0, len(live)-100):])
	}
	t.Logf("logged ~%d MiB; on disk %d bytes in 4 files (cap %d)", total>>20, sum, daemonLogPolicy().Max())
	if sum > daemonLogPolicy().Max()+4*4096 {
		t.Fatalf("daemon log takes %d bytes, cap %d", sum, daemonLogPolicy().Max())
	}
}
