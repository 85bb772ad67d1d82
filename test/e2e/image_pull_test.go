//go:build e2e

package e2e

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// listenInNetns opens a TCP listener on 127.0.0.1 inside the test's network
// namespace (where the daemon runs); addr is e.g. "127.0.0.1:0": the socket keeps the namespace it was
// made in, whichever thread serves it later.
func listenInNetns(t *testing.T, ns, addr string) net.Listener {
	t.Helper()
	ln, err := listenNS(ns, addr)
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// listenNS is listenInNetns for code without a *testing.T (the harness).
func listenNS(ns, addr string) (net.Listener, error) {
	var ln net.Listener
	var lerr error
	if err := inNetns(ns, func() { ln, lerr = net.Listen("tcp", addr) }); err != nil {
		return nil, err
	}
	return ln, lerr
}

// dialNS opens a TCP connection from inside namespace ns (the host process
// cannot reach the namespace's loopback or the guests' bridge otherwise).
func dialNS(ctx context.Context, ns, addr string) (net.Conn, error) {
	var c net.Conn
	var derr error
	if err := inNetns(ns, func() { c, derr = (&net.Dialer{}).DialContext(ctx, "tcp", addr) }); err != nil {
		return nil, err
	}
	return c, derr
}

// inNetns runs f on a fresh OS thread switched into namespace ns. Sockets f
// makes stay in ns. A thread that cannot be switched back stays locked, so
// the runtime drops it when its goroutine ends instead of reusing it.
func inNetns(ns string, f func()) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		target, err := os.Open(filepath.Join("/run/netns", ns))
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("setns %s: %w", ns, err)
			return
		}
		f()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("restore netns: %w", err)
			return
		}
		runtime.UnlockOSThread()
		errc <- nil
	}()
	return <-errc
}

// e2eRegistry serves one in-memory registry twice: on the host's loopback
// (the test pushes there) and on the namespace's loopback (the daemon pulls).
type e2eRegistry struct {
	pushHost, pullHost string
}

func startRegistry(t *testing.T) e2eRegistry {
	t.Helper()
	h := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	push := httptest.NewServer(h)
	t.Cleanup(push.Close)
	ln := listenInNetns(t, E.ns, "127.0.0.1:0")
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return e2eRegistry{pushHost: strings.TrimPrefix(push.URL, "http://"), pullHost: ln.Addr().String()}
}

// rootfsLayer tars the harness's cached rootfs (owners, modes, xattrs kept).
func rootfsLayer(t *testing.T, rootfs string) v1.Layer {
	t.Helper()
	out := filepath.Join(t.TempDir(), "rootfs.tar")
	cmd := exec.Command("tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-C", rootfs, "-cf", out, ".")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("tar rootfs: %v\n%s", err, b)
	}
	l, err := tarball.LayerFromFile(out, tarball.WithCompressionLevel(gzip.BestSpeed), tarball.WithCompressedCaching)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// smallLayer is an upper layer: a whiteout of a file of the base and a marker.
func smallLayer(t *testing.T) v1.Layer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range []*tar.Header{
		{Name: "etc/.wh.motd", Typeflag: tar.TypeReg, Mode: 0o644},
		{Name: "etc/banger-pulled", Typeflag: tar.TypeReg, Mode: 0o640, Uid: 0, Gid: 4, Size: 7},
	} {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			_, _ = tw.Write([]byte("layer2\n"))
		}
	}
	_ = tw.Close()
	b := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

type pullResult struct {
	Image struct {
		Name      string `json:"name"`
		Digest    string `json:"digest"`
		FirstBoot bool   `json:"first_boot"`
		KernelRef string `json:"kernel_ref"`
	} `json:"image"`
	Unchanged bool     `json:"unchanged"`
	Skipped   []string `json:"skipped"`
}

// TestImagePull: push an image made from the Debian rootfs (systemd + sshd)
// plus an upper layer to a registry inside the test namespace, pull it with
// the CLI, boot a VM of it and ssh in.
func TestImagePull(t *testing.T) {
	reg := startRegistry(t)
	t0 := time.Now()
	img, err := mutate.AppendLayers(empty.Image, rootfsLayer(t, E.rootfs), smallLayer(t))
	if err != nil {
		t.Fatal(err)
	}
	img, err = mutate.ConfigFile(img, &v1.ConfigFile{OS: "linux", Architecture: "amd64"})
	if err != nil {
		t.Fatal(err)
	}
	pushRef, err := name.ParseReference(reg.pushHost+"/e2e/debian:bookworm", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(pushRef, img); err != nil {
		t.Fatalf("push: %v", err)
	}
	want, _ := img.Digest()
	t.Logf("push of the rootfs image in %.1fs (%s)", time.Since(t0).Seconds(), want)
	ref := reg.pullHost + "/e2e/debian:bookworm"

	// Plain HTTP is refused unless asked for.
	r := E.bangerRes("image", "pull", ref)
	if r.code == 0 || !strings.Contains(r.stderr, "--insecure") {
		t.Fatalf("pull without --insecure: exit %d\n%s", r.code, r.stderr)
	}

	t0 = time.Now()
	r = E.bangerRes("image", "pull", ref, "--insecure", "--name", "pulled", "--kernel-ref", "debian-cloud")
	if r.code != 0 {
		t.Fatalf("pull: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	t.Logf("pull+flatten+mkfs in %.1fs:\n%s%s", time.Since(t0).Seconds(), r.stderr, r.stdout)
	for _, s := range []string{"resolve", "pull", "layer 2/2", "mkfs", "commit"} {
		if !strings.Contains(r.stderr, s) {
			t.Errorf("pull progress lacks %q", s)
		}
	}
	if !strings.Contains(r.stdout, want.String()) {
		t.Errorf("pull output does not name digest %s: %s", want, r.stdout)
	}
	t.Cleanup(func() { _, _ = E.banger("image", "rm", "pulled") })

	// The same digest again: a no-op.
	var again pullResult
	out := must(t, "image", "pull", ref, "--insecure", "--name", "pulled", "--json")
	if err := json.Unmarshal([]byte(out), &again); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if !again.Unchanged || again.Image.Digest != want.String() || again.Image.FirstBoot || again.Image.KernelRef != "debian-cloud" {
		t.Fatalf("second pull: %+v", again)
	}
	if list := must(t, "image", "list"); !strings.Contains(list, "pulled") {
		t.Fatalf("image list:\n%s", list)
	}

	deleteOnCleanup(t, "pullbox")
	t0 = time.Now()
	if r := E.bangerRes("vm", "create", "--image", "pulled", "--name", "pullbox"); r.code != 0 {
		t.Fatalf("create: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	t.Logf("create→ready %.1fs", time.Since(t0).Seconds())
	out = must(t, "vm", "ssh", "pullbox", "--", "id; systemctl is-active ssh; cat /etc/banger-pulled; stat -c '%a %U:%G' /etc/banger-pulled /usr/bin/passwd; test ! -e /etc/motd && echo motd-gone")
	for _, w := range []string{"uid=0(root)", "active", "layer2", "640 root:adm", "4755 root:root", "motd-gone"} {
		if !strings.Contains(out, w) {
			t.Errorf("guest output lacks %q:\n%s", w, out)
		}
	}
	v := showVM(t, "pullbox")
	must(t, "vm", "delete", "--force", "pullbox")
	assertGone(t, v)
	fmt.Fprintln(os.Stderr)
}
