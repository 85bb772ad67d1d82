package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/rpc"
)

// opDaemon stands in for bangerd's operation methods: a create of "slow"
// started 3 s ago and now in wait_ready, a failed start of "bad". It
// records the params the CLI sent.
type opDaemon struct {
	dir     string
	started time.Time

	mu     sync.Mutex
	params []string
}

func newOpDaemon(t *testing.T) *opDaemon {
	t.Helper()
	d := &opDaemon{dir: t.TempDir(), started: time.Now().Add(-3 * time.Second)}
	srv := rpc.NewServer(nil, os.Getuid())
	record := func(c *rpc.Call) {
		d.mu.Lock()
		defer d.mu.Unlock()
		d.params = append(d.params, c.Method+" "+string(c.Params))
	}
	srv.Handle(api.MethodVMCreate, func(ctx context.Context, c *rpc.Call) (any, error) {
		record(c)
		var p api.CreateVMParams
		if err := c.Decode(&p); err != nil {
			return nil, err
		}
		return api.OpStarted{OpID: "0p1d", Kind: "create", Name: p.Name}, nil
	})
	srv.Handle(api.MethodVMStart, func(ctx context.Context, c *rpc.Call) (any, error) {
		record(c)
		var p api.StartVMParams
		if err := c.Decode(&p); err != nil {
			return nil, err
		}
		return api.OpStarted{OpID: "0p2d", Kind: "start", Name: p.Name}, nil
	})
	srv.Handle(api.MethodVMShow, func(ctx context.Context, c *rpc.Call) (any, error) {
		return api.VM{Name: "slow", State: "creating", Operation: &api.Operation{OpID: "0p1d", Kind: "create",
			Started: d.started, Stage: "wait_ready", StageStarted: d.started.Add(2 * time.Second)}}, nil
	})
	srv.Handle(api.MethodVMWait, func(ctx context.Context, c *rpc.Call) (any, error) {
		var p api.NameParams
		if err := c.Decode(&p); err != nil {
			return nil, err
		}
		if p.Name == "bad" {
			return nil, fmt.Errorf("start (op 0p2d): start vm \"bad\": vmm_launch: open tap: helper refused: %w", api.ErrPermission)
		}
		// Replayed: the times the stages began in the daemon.
		for _, ev := range []api.Event{{Stage: "root_disk", At: d.started}, {Stage: "vmm_launch", At: d.started.Add(time.Second)},
			{Stage: "wait_ready", At: d.started.Add(2 * time.Second)}} {
			if err := c.Event(ev); err != nil {
				return nil, err
			}
		}
		return api.VM{Name: "slow", State: "running"}, nil
	})
	ln, err := rpc.Listen(paths.Layout{Root: d.dir}.Socket())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return d
}

// vm wait prints the replayed stages timed by when they began in the
// daemon, then the VM; a failed operation exits 1 with its code.
func TestVMWait(t *testing.T) {
	d := newOpDaemon(t)
	code, out, errs := run(t, d.dir, "", "vm", "wait", "slow")
	if code != 0 || out != "slow running\n" {
		t.Fatalf("vm wait: exit %d stdout %q stderr %q", code, out, errs)
	}
	want := []string{`==> root_disk`, `    root_disk done \(1\.0s\)`, `==> vmm_launch`, `    vmm_launch done \(1\.0s\)`,
		`==> wait_ready`, `    wait_ready done \(1\.\ds\); total 3\.\ds`}
	lines := strings.Split(strings.TrimRight(errs, "\n"), "\n")
	if len(lines) != len(want) {
		t.Fatalf("stderr %q", errs)
	}
	for i, w := range want {
		if !regexp.MustCompile("^" + w + "$").MatchString(lines[i]) {
			t.Errorf("stderr line %d = %q, want %s", i, lines[i], w)
		}
	}

	code, out, errs = run(t, d.dir, "", "vm", "wait", "bad")
	if code != 1 || out != "" || !strings.Contains(errs, "vmm_launch: open tap: helper refused: permission denied [permission_denied, op ") {
		t.Errorf("vm wait, failed: exit %d stdout %q stderr %q", code, out, errs)
	}
	code, out, _ = run(t, d.dir, "", "vm", "wait", "bad", "--json")
	var res struct{ Error api.Error }
	if err := json.Unmarshal([]byte(out), &res); code != 1 || err != nil || res.Error.Code != api.CodePermission ||
		!strings.HasPrefix(res.Error.Message, "start (op 0p2d): ") || res.Error.OpID == "" {
		t.Errorf("vm wait --json, failed: exit %d stdout %q (%v)", code, out, err)
	}
}

// --detach sends detach and prints the operation; vm show prints the stage
// in progress.
func TestDetachAndShowOperation(t *testing.T) {
	d := newOpDaemon(t)
	code, out, errs := run(t, d.dir, "", "vm", "create", "--name", "slow", "--detach")
	if code != 0 || out != "create of slow under way (op 0p1d); follow it: banger vm wait slow\n" || errs != "" {
		t.Errorf("create --detach: exit %d stdout %q stderr %q", code, out, errs)
	}
	code, out, _ = run(t, d.dir, "", "vm", "start", "slow", "--detach", "--json")
	var op api.OpStarted
	if err := json.Unmarshal([]byte(out), &op); code != 0 || err != nil || op != (api.OpStarted{OpID: "0p2d", Kind: "start", Name: "slow"}) {
		t.Errorf("start --detach --json: exit %d stdout %q", code, out)
	}
	d.mu.Lock()
	sent := strings.Join(d.params, "\n")
	d.mu.Unlock()
	if !strings.Contains(sent, `vm.create {"name":"slow",`) || !strings.Contains(sent, `"detach":true}`) ||
		!strings.Contains(sent, `vm.start {"name":"slow","detach":true}`) {
		t.Errorf("params sent:\n%s", sent)
	}
	code, out, _ = run(t, d.dir, "", "vm", "show", "slow")
	if code != 0 || !regexp.MustCompile(`(?m)^operation:\s+create \(stage wait_ready, 1\.\ds; op 0p1d\)$`).MatchString(out) {
		t.Errorf("vm show: exit %d\n%s", code, out)
	}
}
