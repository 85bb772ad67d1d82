//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// BenchmarkWorkspace compares, in one run against one VM:
//
//	tar_ssh:   tar -c of the whole repo (.git included) | ssh root@vm tar -x   (OpenSSH, no banger)
//	archive:   git archive HEAD | ssh root@vm tar -x                         (working tree only, no history)
//	prepare:   banger vm workspace prepare --force (full: history bundle + working tree),
//	           over the guest agent's channel
//	prepare_via_ssh: the same with bangerd --guest-via ssh (once)
//	resync10:  prepare after touching 10 files (incremental)
//	noop:      prepare with nothing changed
//
// on a generated repository of ~10k files / ~100 MiB (incompressible), and
// reports seconds and the ratios prepare/tar_ssh, prepare/archive,
// resync10/prepare. Run with
// go test -tags e2e -run '^$' -bench Workspace -benchtime 1x ./test/e2e/
func BenchmarkWorkspace(b *testing.B) {
	files, total := 10000, 100<<20
	if s := os.Getenv("BANGER_BENCH_WS_FILES"); s != "" {
		fmt.Sscan(s, &files)
		total = files * (100 << 20) / 10000
	}
	repo := b.TempDir()
	t0 := time.Now()
	genRepo(b, repo, files, total)
	b.Logf("generated %d files / %d MiB in %.1fs", files, total>>20, time.Since(t0).Seconds())

	const name = "wsbench"
	b.Cleanup(func() { _, _ = E.banger("vm", "delete", "--force", name) })
	mustB(b, "vm", "create", "--name", name)
	// create returns when the agent answers; the OpenSSH baseline needs sshd
	// (`vm ssh` waits for it).
	mustB(b, "vm", "ssh", name, "--", "true")
	v := vmViewB(b, name)
	sshCmd := func(remote string) string {
		return fmt.Sprintf("ip netns exec %s ssh -i %s -o UserKnownHostsFile=%s -o StrictHostKeyChecking=yes -o BatchMode=yes -o LogLevel=ERROR root@%s %q",
			E.ns, filepath.Join(E.stateDir, "ssh", "id_ed25519"), filepath.Join(E.stateDir, "ssh", "known_hosts"), v.GuestIP, remote)
	}
	timeSh := func(script string) float64 {
		t0 := time.Now()
		if out, err := exec.Command("sh", "-c", script).CombinedOutput(); err != nil {
			b.Fatalf("%s: %v\n%s", script, err, out)
		}
		return time.Since(t0).Seconds()
	}
	timeCLI := func(args ...string) float64 {
		t0 := time.Now()
		mustB(b, args...)
		return time.Since(t0).Seconds()
	}
	var tarSSH, archive, prepare, resync, noop []float64
	for i := 0; i < b.N; i++ {
		tarSSH = append(tarSSH, timeSh(fmt.Sprintf("tar -C %s -cf - . | %s", repo,
			sshCmd("rm -rf /root/base && mkdir -p /root/base && tar -x -C /root/base"))))
		archive = append(archive, timeSh(fmt.Sprintf("git -C %s archive HEAD | %s", repo,
			sshCmd("rm -rf /root/arch && mkdir -p /root/arch && tar -x -C /root/arch"))))
		mustB(b, "vm", "exec", name, "--", "rm -rf /root/ws")
		prepare = append(prepare, timeCLI("vm", "workspace", "prepare", name, "--repo", repo, "--into", "/root/ws", "--force"))
		for j := range 10 {
			p := filepath.Join(repo, fmt.Sprintf("d%03d", j*7), fmt.Sprintf("f%05d.dat", j*7*100+i))
			if err := os.WriteFile(p, []byte(fmt.Sprintf("touched %d %d\n", i, j)), 0o644); err != nil {
				b.Fatal(err)
			}
		}
		resync = append(resync, timeCLI("vm", "workspace", "prepare", name, "--repo", repo))
		noop = append(noop, timeCLI("vm", "workspace", "prepare", name, "--repo", repo))
	}
	// The data arrived: same tree in the guest as on the host.
	want := mustOutB(b, "sh", "-c", "cd "+repo+" && git ls-files -z -c -o --exclude-standard | xargs -0 sha256sum | sha256sum")
	got := mustOutB(b, "ip", "netns", "exec", E.ns, filepath.Join(E.bin, "banger"), "--state-dir", E.stateDir,
		"vm", "exec", name, "--", "git ls-files -z -c -o --exclude-standard | xargs -0 sha256sum | sha256sum")
	if got != want {
		b.Fatalf("guest tree differs from host: %s vs %s", got, want)
	}
	// The same full prepare with a daemon that reaches guests over SSH only:
	// the transport's share of prepare, in this run.
	mustB(b, "daemon", "stop")
	os.Setenv("BANGER_GUEST_VIA", "ssh")
	mustB(b, "vm", "exec", name, "--", "rm -rf /root/ws")
	prepareSSH := timeCLI("vm", "workspace", "prepare", name, "--repo", repo, "--into", "/root/ws", "--force")
	if out := mustOutB(b, "ip", "netns", "exec", E.ns, filepath.Join(E.bin, "banger"), "--state-dir", E.stateDir,
		"vm", "exec", name, "--", "cat /proc/$PPID/comm"); !strings.HasPrefix(out, "sshd") {
		b.Fatalf("the ssh-only daemon ran exec under %q", out)
	}
	mustB(b, "daemon", "stop")
	os.Unsetenv("BANGER_GUEST_VIA")
	b.ReportMetric(prepareSSH, "prepare_via_ssh_s")
	b.ReportMetric(prepareSSH/median(prepare), "prepare_ssh/agent")
	m := func(xs []float64) float64 { return median(xs) }
	b.ReportMetric(m(tarSSH), "tar_ssh_s")
	b.ReportMetric(m(archive), "archive_ssh_s")
	b.ReportMetric(m(prepare), "prepare_s")
	b.ReportMetric(m(resync), "resync10_s")
	b.ReportMetric(m(noop), "noop_resync_s")
	b.ReportMetric(m(prepare)/m(tarSSH), "prepare/tar_ssh")
	b.ReportMetric(m(prepare)/m(archive), "prepare/archive")
	b.ReportMetric(m(resync)/m(prepare), "resync10/prepare")
	b.Logf("tar_ssh %v\narchive %v\nprepare %v\nresync10 %v\nnoop %v", tarSSH, archive, prepare, resync, noop)
}

// genRepo writes files files of incompressible data totalling ~total bytes in
// 100 directories, plus an ignored build dir, and commits them.
func genRepo(b *testing.B, dir string, files, total int) {
	r := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, 2*total/files)
	for i := range buf {
		buf[i] = byte(r.Uint32())
	}
	for i := 0; i < files; i++ {
		d := filepath.Join(dir, fmt.Sprintf("d%03d", i%100))
		if i < 100 {
			if err := os.MkdirAll(d, 0o755); err != nil {
				b.Fatal(err)
			}
		}
		n := r.IntN(len(buf))
		off := r.IntN(len(buf) - n + 1)
		// A unique header keeps every file distinct for git.
		data := append([]byte(fmt.Sprintf("file %d\n", i)), buf[off:off+n]...)
		if err := os.WriteFile(filepath.Join(d, fmt.Sprintf("f%05d.dat", i)), data, 0o644); err != nil {
			b.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, ".gitignore"), []byte("build/\n"), 0o644); err != nil {
		b.Fatal(err)
	}
	git(b, dir, "init", "-q", "-b", "main")
	git(b, dir, "add", "-A")
	git(b, dir, "commit", "-qm", "generated")
}

func vmViewB(b *testing.B, name string) vmView {
	out := mustOutB(b, "ip", "netns", "exec", E.ns, filepath.Join(E.bin, "banger"), "--state-dir", E.stateDir, "vm", "show", name, "--json")
	var v vmView
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		b.Fatal(err)
	}
	return v
}

func mustOutB(b *testing.B, name string, args ...string) string {
	out, err := exec.Command(name, args...).Output()
	if err != nil {
		b.Fatalf("%s %s: %v", name, strings.Join(args, " "), err)
	}
	return string(out)
}
