//go:build e2e

package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"
)

// hostTraces is what a create would leave on the host: VM rows, VM
// directories, links in the test namespace (bridge, TAPs) and pinned keys.
type hostTraces struct {
	VMs, Dirs, Links []string
	KnownHosts       string
}

func traces(t *testing.T) hostTraces {
	t.Helper()
	var tr hostTraces
	var vms []struct{ Name string }
	if err := json.Unmarshal([]byte(must(t, "vm", "list", "--json")), &vms); err != nil {
		t.Fatal(err)
	}
	for _, v := range vms {
		tr.VMs = append(tr.VMs, v.Name)
	}
	ents, _ := os.ReadDir(filepath.Join(E.stateDir, "vms"))
	for _, e := range ents {
		tr.Dirs = append(tr.Dirs, e.Name())
	}
	out, err := run("ip", "-n", E.ns, "-o", "link", "show")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if f := strings.Fields(l); len(f) > 1 {
			tr.Links = append(tr.Links, strings.TrimSuffix(f[1], ":"))
		}
	}
	sort.Strings(tr.Links)
	kh, _ := os.ReadFile(filepath.Join(E.stateDir, "ssh", "known_hosts"))
	tr.KnownHosts = string(kh)
	return tr
}

// TestFirecrackerRefusedWithoutBinary: on a host without Firecracker (this
// one: it cannot be installed, and its /dev/kvm is kvm_pvm), `vm create
// --vmm firecracker` fails at once naming the missing binary and what to
// install, leaving no row, directory, TAP or pin; doctor --json reports
// Firecracker unavailable with the reason, and why the imported Debian
// kernel would not do either.
func TestFirecrackerRefusedWithoutBinary(t *testing.T) {
	if p, err := exec.LookPath("firecracker"); err == nil {
		t.Skipf("firecracker is installed here (%s); this test is for a host without it", p)
	}
	before := traces(t)
	r := E.bangerRes("vm", "create", "--name", "fc", "--vmm", "firecracker")
	if r.code == 0 {
		t.Fatalf("create --vmm firecracker succeeded:\n%s", r.stdout)
	}
	for _, want := range []string{"vmm firecracker cannot run vms on this host", "firecracker binary not found on bangerd's PATH",
		"install a Firecracker release (https://github.com/firecracker-microvm/firecracker/releases", "[not_found, op "} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("refusal lacks %q:\n%s", want, r.stderr)
		}
	}
	// At once: no disk was made, nothing booted. (The daemon may have been
	// auto-started by an earlier command; its KVM probe is cached.)
	if r.dur > 10*time.Second {
		t.Errorf("refusal took %s", r.dur)
	}
	if after := traces(t); !reflect.DeepEqual(before, after) {
		t.Errorf("the refused create left something:\nbefore %+v\nafter  %+v", before, after)
	}
	if r := E.bangerRes("vm", "show", "fc"); r.code == 0 || !strings.Contains(r.stderr, "not_found") {
		t.Errorf("vm show fc: exit %d %s", r.code, r.stderr)
	}

	var doc struct {
		Accel       string `json:"accel"`
		VMM         string `json:"vmm"`
		Firecracker *struct {
			Available bool     `json:"available"`
			Binary    string   `json:"binary"`
			Reason    string   `json:"reason"`
			Problems  []string `json:"problems"`
			Kernels   []struct {
				Name   string `json:"name"`
				OK     bool   `json:"ok"`
				Known  bool   `json:"known"`
				Detail string `json:"detail"`
			} `json:"kernels"`
		} `json:"firecracker"`
		Checks []struct {
			Name     string `json:"name"`
			OK       bool   `json:"ok"`
			Optional bool   `json:"optional"`
		} `json:"checks"`
	}
	out := E.bangerRes("doctor", "--json").stdout
	if err := json.Unmarshal([]byte(out), &doc); err != nil || doc.Firecracker == nil {
		t.Fatalf("doctor --json (%v):\n%s", err, out)
	}
	fc := doc.Firecracker
	if doc.VMM != "qemu" || fc.Available || fc.Binary != "" || !strings.HasPrefix(fc.Reason, "firecracker binary not found on bangerd's PATH") {
		t.Errorf("doctor: vmm %q, firecracker %+v", doc.VMM, fc)
	}
	if doc.Accel == "tcg" && !strings.Contains(fc.Reason, "kvm") {
		t.Errorf("kvm is unusable for qemu here but doctor does not say so for firecracker: %s", fc.Reason)
	}
	// The harness imported Debian's cloud kernel from its .deb: its
	// configuration was kept, and it lacks what Firecracker needs.
	if len(fc.Kernels) != 1 || fc.Kernels[0].OK || !fc.Kernels[0].Known ||
		!strings.Contains(fc.Kernels[0].Detail, "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES") ||
		!strings.Contains(fc.Kernels[0].Detail, "microvm-kernel-ci-x86_64") {
		t.Errorf("doctor kernels: %+v", fc.Kernels)
	}
	for _, c := range doc.Checks {
		if strings.HasPrefix(c.Name, "firecracker") && !c.Optional {
			t.Errorf("firecracker check %q counts against this qemu host", c.Name)
		}
	}
	r = E.bangerRes("doctor")
	if !regexp.MustCompile(`(?m)^no\s+firecracker\s+firecracker binary not found`).MatchString(r.stdout) {
		t.Errorf("doctor text has no firecracker line marked no:\n%s", r.stdout)
	}
	for _, l := range strings.Split(r.stdout, "\n") {
		if strings.Contains(l, "firecracker") {
			t.Log(l)
		}
	}
}
