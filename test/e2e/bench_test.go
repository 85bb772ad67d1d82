//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/crypto/ssh"

	"github.com/banger-dev/banger/internal/disk"
	"github.com/banger-dev/banger/internal/guest"
)

// BenchmarkBoot compares, in one run on the same kernel+initramfs+image:
//
//	bare:    qemu-system-x86_64 exec'd by hand → `ssh true` succeeds
//	create:  `banger vm create` → returns (guest answers SSH)
//	run:     `banger vm run --rm -- true` end to end (create, exec, delete)
//	stop:    `banger vm stop` of a booted VM
//
// and reports medians and the ratios create/bare and run/bare.
// Run with scripts/bench.sh (go test -tags e2e -run '^$' -bench Boot -benchtime 1x).
func BenchmarkBoot(b *testing.B) {
	rounds := 3
	if s := os.Getenv("BANGER_BENCH_ROUNDS"); s != "" {
		rounds, _ = strconv.Atoi(s)
	}
	var bare, create, sshTrue, runTrue, stop []float64
	for i := 0; i < b.N; i++ {
		for r := 0; r < rounds; r++ {
			bare = append(bare, bareBoot(b, r))

			name := fmt.Sprintf("bench-%d", r)
			t0 := time.Now()
			mustB(b, "vm", "create", "--name", name)
			create = append(create, time.Since(t0).Seconds())
			t0 = time.Now()
			mustB(b, "vm", "ssh", name, "--", "true")
			sshTrue = append(sshTrue, time.Since(t0).Seconds())
			t0 = time.Now()
			mustB(b, "vm", "stop", name)
			stop = append(stop, time.Since(t0).Seconds())
			mustB(b, "vm", "delete", name)

			t0 = time.Now()
			mustB(b, "vm", "run", "--rm", "--name", "bench-run", "--", "true")
			runTrue = append(runTrue, time.Since(t0).Seconds())
		}
	}
	mb, mc, mr := median(bare), median(create), median(runTrue)
	b.ReportMetric(mb, "bare_boot_s")
	b.ReportMetric(mc, "create_ready_s")
	b.ReportMetric(median(sshTrue), "ssh_true_s")
	b.ReportMetric(mr, "run_true_s")
	b.ReportMetric(median(stop), "stop_s")
	b.ReportMetric(mc/mb, "create/bare")
	b.ReportMetric(mr/mb, "run/bare")
	b.Logf("bare %v\ncreate %v\nssh-true %v\nrun %v\nstop %v", bare, create, sshTrue, runTrue, stop)
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

func mustB(b *testing.B, args ...string) {
	b.Helper()
	if r := E.bangerRes(args...); r.code != 0 {
		b.Fatalf("banger %v: %d\n%s\n%s", args, r.code, r.stdout, r.stderr)
	}
}

type kernelInfo struct{ Path, Initrd string }

// bareBoot boots the same kernel, initramfs and image with a hand-written
// qemu command line on a bridge of its own in the test namespace and times
// exec → first successful `ssh true`.
func bareBoot(b *testing.B, round int) float64 {
	b.Helper()
	dir := b.TempDir()
	var ks []kernelInfo
	if err := json.Unmarshal([]byte(mustOut(b, "kernel", "list", "--json")), &ks); err != nil || len(ks) == 0 {
		b.Fatalf("kernel list: %v", err)
	}
	var imgs []struct{ Path string }
	if err := json.Unmarshal([]byte(mustOut(b, "image", "list", "--json")), &imgs); err != nil || len(imgs) == 0 {
		b.Fatalf("image list: %v", err)
	}
	ctx := context.Background()
	root := filepath.Join(dir, "root.ext4")
	if _, err := disk.Clone(ctx, imgs[0].Path, root); err != nil {
		b.Fatal(err)
	}
	priv, pub, err := guest.NewHostKey()
	if err != nil {
		b.Fatal(err)
	}
	signer, err := guest.EnsureClientKey(filepath.Join(E.stateDir, "ssh", "id_ed25519"))
	if err != nil {
		b.Fatal(err)
	}
	seed := filepath.Join(dir, "seed.img")
	if err := disk.WriteSeed(seed, []disk.SeedFile{
		{Path: "etc/hostname", Mode: 0o644, Data: []byte("bare\n")},
		{Path: "etc/machine-id", Mode: 0o444, Data: []byte(fmt.Sprintf("%032x\n", round+1))},
		{Path: "etc/ssh/ssh_host_ed25519_key", Mode: 0o600, Data: priv},
		{Path: "etc/ssh/authorized_keys.d/root", Mode: 0o644, Data: ssh.MarshalAuthorizedKey(signer.PublicKey())},
	}); err != nil {
		b.Fatal(err)
	}
	// Bridge + TAP by hand, in the test namespace.
	br, tap, gw, ip := "bbare0", "bbare-tap", "172.30.8.1", "172.30.8.2"
	for _, args := range [][]string{
		{"link", "add", br, "type", "bridge"}, {"addr", "add", gw + "/24", "dev", br}, {"link", "set", br, "up"},
		{"tuntap", "add", "dev", tap, "mode", "tap"}, {"link", "set", tap, "master", br}, {"link", "set", tap, "up"},
	} {
		_, _ = run("ip", append([]string{"-n", E.ns}, args...)...)
	}
	defer run("ip", "-n", E.ns, "link", "del", tap)
	khz := cpuKHz()
	args := []string{"netns", "exec", E.ns, "qemu-system-x86_64",
		"-M", "microvm,pit=on,pic=on,rtc=on", "-accel", "tcg", "-cpu", "max", "-m", "1024", "-smp", "2",
		"-nodefaults", "-no-user-config", "-display", "none", "-serial", "file:" + filepath.Join(dir, "console.log"), "-monitor", "none", "-no-reboot",
		"-kernel", ks[0].Path, "-initrd", ks[0].Initrd,
		"-append", fmt.Sprintf("console=ttyS0 rw net.ifnames=0 panic=-1 cryptomgr.notests quiet tsc_early_khz=%d ip=%s::%s:255.255.255.0:bare:eth0:off", khz, ip, gw),
		"-drive", "id=d0,file=" + root + ",format=raw,if=none", "-device", "virtio-blk-device,drive=d0",
		"-drive", "id=d2,file=" + seed + ",format=raw,if=none,readonly=on", "-device", "virtio-blk-device,drive=d2",
		"-netdev", "tap,id=n0,ifname=" + tap + ",script=no,downscript=no", "-device", "virtio-net-device,netdev=n0,mac=02:ba:ac:1e:08:02",
	}
	t0 := time.Now()
	cmd := exec.Command("ip", args...)
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	cfg := &ssh.ClientConfig{User: "root", Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: ssh.FixedHostKey(pub), Timeout: 5 * time.Second}
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) {
		conn, err := dialInNS(E.ns, ip+":22", 2*time.Second)
		if err == nil {
			c, chans, reqs, err := ssh.NewClientConn(conn, ip+":22", cfg)
			if err == nil {
				client := ssh.NewClient(c, chans, reqs)
				sess, err := client.NewSession()
				if err == nil && sess.Run("true") == nil {
					d := time.Since(t0).Seconds()
					client.Close()
					return d
				}
				client.Close()
			} else {
				conn.Close()
			}
		}
		time.Sleep(250 * time.Millisecond)
	}
	con, _ := os.ReadFile(filepath.Join(dir, "console.log"))
	b.Fatalf("bare boot never answered ssh; console:\n%s", tailStr(string(con), 2000))
	return 0
}

// dialInNS opens a TCP connection from inside the named network namespace.
func dialInNS(ns, addr string, timeout time.Duration) (net.Conn, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return nil, err
	}
	defer orig.Close()
	h, err := netns.GetFromName(ns)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	if err := netns.Set(h); err != nil {
		return nil, err
	}
	defer netns.Set(orig)
	return net.DialTimeout("tcp", addr, timeout)
}

func mustOut(b *testing.B, args ...string) string {
	r := E.bangerRes(args...)
	if r.code != 0 {
		b.Fatalf("banger %v: %s", args, r.stderr)
	}
	return r.stdout
}

func cpuKHz() int {
	data, _ := os.ReadFile("/proc/cpuinfo")
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "cpu MHz") {
			if _, v, ok := strings.Cut(line, ":"); ok {
				f, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
				return int(f * 1000)
			}
		}
	}
	return 0
}
