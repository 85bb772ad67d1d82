//go:build e2e

package e2e

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"
)

// guestInt runs a shell command in the guest that prints one number.
func guestInt(t *testing.T, name, cmd string) int64 {
	t.Helper()
	out := must(t, "vm", "exec", name, "--", cmd)
	n, err := strconv.ParseInt(strings.TrimSpace(out), 10, 64)
	if err != nil {
		t.Fatalf("%s: %q is not a number", cmd, out)
	}
	return n
}

// dfRoot is the size of the file system mounted at /root, as df sees it.
const dfRoot = "df -B1 --output=size /root | tail -n 1"

// memTotal is the guest's MemTotal in bytes.
const memTotal = "awk '/^MemTotal:/ {print $2 * 1024}' /proc/meminfo"

// TestVMSetWorkDiskVCPUMemory: `vm set --work-disk` grows a stopped VM's work
// disk with the guest's files in it; `--vcpu` and `--memory` reach the guest
// at the next start.
func TestVMSetWorkDiskVCPUMemory(t *testing.T) {
	const name = "grow"
	deleteOnCleanup(t, name)
	must(t, "vm", "create", "--name", name, "--work-disk", "64M", "--vcpu", "2", "--memory", "1024")
	size := guestInt(t, name, dfRoot)
	t.Logf("/root of a 64M work disk: %d bytes", size)
	if size > 64<<20 {
		t.Fatalf("/root of a 64M work disk is %d bytes", size)
	}
	must(t, "vm", "exec", name, "--", "echo written-before-grow > /root/marker")

	if r := E.bangerRes("vm", "set", name, "--work-disk", "256M"); r.code == 0 || !strings.Contains(r.stderr, "stop it first") {
		t.Fatalf("grow of a running vm: exit %d %s", r.code, r.stderr)
	}
	must(t, "vm", "stop", name)
	if r := E.bangerRes("vm", "set", name, "--work-disk", "32M"); r.code == 0 ||
		!strings.Contains(r.stderr, "32M") || !strings.Contains(r.stderr, "64M") || !strings.Contains(r.stderr, "invalid") {
		t.Fatalf("shrink: exit %d %s", r.code, r.stderr)
	}
	out := must(t, "vm", "set", name, "--work-disk", "256M", "--json")
	var v struct {
		WorkDiskBytes int64 `json:"work_disk_bytes"`
		VCPU          int
		MemoryMiB     int `json:"memory_mib"`
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil || v.WorkDiskBytes != 256<<20 {
		t.Fatalf("vm set --json: %v %s", err, out)
	}
	must(t, "vm", "start", name)
	// ext4's own metadata and journal take a few MiB of the 256.
	size = guestInt(t, name, dfRoot)
	t.Logf("/root after vm set --work-disk 256M: %d bytes", size)
	if size < 200<<20 || size > 256<<20 {
		t.Errorf("/root after the grow is %d bytes, want about 256 MiB", size)
	}
	if out := must(t, "vm", "exec", name, "--", "cat /root/marker"); out != "written-before-grow\n" {
		t.Errorf("/root/marker after the grow = %q", out)
	}
	if n := guestInt(t, name, "nproc"); n != 2 {
		t.Errorf("nproc = %d before vm set --vcpu", n)
	}

	must(t, "vm", "stop", name)
	must(t, "vm", "set", name, "--vcpu", "1", "--memory", "512")
	must(t, "vm", "start", name)
	if n := guestInt(t, name, "nproc"); n != 1 {
		t.Errorf("nproc = %d after vm set --vcpu 1", n)
	}
	// The kernel keeps some of it for itself: MemTotal is a little less.
	m := guestInt(t, name, memTotal)
	t.Logf("MemTotal after vm set --memory 512: %d KiB", m>>10)
	if m < 400<<20 || m > 512<<20 {
		t.Errorf("MemTotal = %d MiB after vm set --memory 512", m>>20)
	}
	if err := json.Unmarshal([]byte(must(t, "vm", "show", name, "--json")), &v); err != nil ||
		v.VCPU != 1 || v.MemoryMiB != 512 || v.WorkDiskBytes != 256<<20 {
		t.Errorf("vm show after the sets: %+v %v", v, err)
	}
	must(t, "vm", "delete", "--force", name)
}
