package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"testing"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/disk"
	"github.com/banger-dev/banger/internal/rpc"
)

func (f *fakeDaemon) set(ctx context.Context, c *rpc.Call) (any, error) {
	var p api.SetVMParams
	if err := c.Decode(&p); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.vms[p.Name]
	if !ok {
		return nil, fmt.Errorf("vm %q: %w", p.Name, api.ErrNotFound)
	}
	for _, b := range []struct {
		to  *bool
		set *bool
	}{{&v.NAT, p.NAT}, {&v.NATPrivate, p.NATPrivate}, {&v.HostAccess, p.HostAccess}} {
		if b.set != nil {
			*b.to = *b.set
		}
	}
	if p.WorkDisk != "" {
		n, err := disk.ParseSize(p.WorkDisk)
		if err != nil {
			return nil, err
		}
		v.WorkDiskBytes = n
	}
	f.vms[p.Name] = v
	return v, nil
}

// --work-disk travels as the size the user wrote; an empty one is refused
// before any call.
func TestSetWorkDiskFlag(t *testing.T) {
	f := newFakeDaemon(t)
	if code, _, errs := run(t, f.dir, "", "vm", "create", "--name", "dev"); code != 0 {
		t.Fatalf("create: exit %d stderr %q", code, errs)
	}
	code, out, errs := run(t, f.dir, "", "vm", "set", "dev", "--work-disk", "32G")
	if code != 0 || !regexp.MustCompile(`(?m)^work disk:\s+32\.0 GiB$`).MatchString(out) {
		t.Fatalf("set --work-disk 32G: exit %d stderr %q\n%s", code, errs, out)
	}
	if code, _, errs := run(t, f.dir, "", "vm", "set", "dev", "--work-disk", ""); code == 0 || !regexp.MustCompile(`needs a size`).MatchString(errs) {
		t.Fatalf("set --work-disk '': exit %d stderr %q", code, errs)
	}
}

// The network opt-ins travel from the flags of create, run and set, and
// show in `vm show` and its JSON.
func TestNetOptInFlags(t *testing.T) {
	f := newFakeDaemon(t)
	code, out, errs := run(t, f.dir, "", "vm", "create", "--name", "dev", "--nat", "--nat-private", "--host-access")
	if code != 0 {
		t.Fatalf("exit %d stderr %q", code, errs)
	}
	for _, re := range []string{`(?m)^nat:\s+true$`, `(?m)^nat private:\s+true$`, `(?m)^host access:\s+true$`} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("vm create output lacks %s:\n%s", re, out)
		}
	}
	code, out, errs = run(t, f.dir, "", "vm", "set", "dev", "--host-access=false", "--json")
	if code != 0 {
		t.Fatalf("set: exit %d stderr %q", code, errs)
	}
	var v map[string]any
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if v["nat"] != true || v["nat_private"] != true || v["host_access"] != false {
		t.Errorf("vm set --json: nat %v nat_private %v host_access %v", v["nat"], v["nat_private"], v["host_access"])
	}
	code, out, _ = run(t, f.dir, "", "vm", "show", "dev")
	if code != 0 || !regexp.MustCompile(`(?m)^host access:\s+false$`).MatchString(out) {
		t.Errorf("vm show: exit %d\n%s", code, out)
	}
}
