package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/rpc"
)

// fakeDaemon is an in-process rpc server standing in for bangerd: it keeps
// VMs in a map and records what the CLI sent.
type fakeDaemon struct {
	dir string

	mu      sync.Mutex
	vms     map[string]api.VM
	deletes []string
	execs   []api.ExecParams
	inputs  []api.Input // input frames of the last exec that read its stdin
	doctor  api.DoctorResult
}

func newFakeDaemon(t *testing.T) *fakeDaemon {
	t.Helper()
	dir := t.TempDir()
	f := &fakeDaemon{dir: dir, vms: map[string]api.VM{}}
	srv := rpc.NewServer(nil, os.Getuid())
	srv.Handle(api.MethodVMList, f.list)
	srv.Handle(api.MethodVMShow, f.show)
	srv.Handle(api.MethodVMCreate, f.create)
	srv.Handle(api.MethodVMDelete, f.delete)
	srv.Handle(api.MethodVMExec, f.exec)
	srv.Handle(api.MethodVMSet, f.set)
	srv.Handle(api.MethodDoctor, func(ctx context.Context, c *rpc.Call) (any, error) {
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.doctor, nil
	})
	srv.Handle(api.MethodDaemonStatus, func(ctx context.Context, c *rpc.Call) (any, error) {
		return api.DaemonStatus{PID: 42, UID: os.Getuid(), Version: "test", Accel: "tcg", StateDir: dir}, nil
	})
	ln, err := rpc.Listen(paths.Layout{Root: dir}.Socket())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-errc:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return")
		}
	})
	return f
}

func (f *fakeDaemon) add(v api.VM) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.vms[v.Name] = v
}

func (f *fakeDaemon) has(name string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.vms[name]
	return ok
}

func (f *fakeDaemon) list(ctx context.Context, c *rpc.Call) (any, error) {
	if err := c.Decode(&struct{}{}); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	out := []api.VM{}
	for _, v := range f.vms {
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func (f *fakeDaemon) show(ctx context.Context, c *rpc.Call) (any, error) {
	var p api.NameParams
	if err := c.Decode(&p); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.vms[p.Name]
	if !ok {
		return nil, fmt.Errorf("vm %q: %w", p.Name, api.ErrNotFound)
	}
	return v, nil
}

func (f *fakeDaemon) create(ctx context.Context, c *rpc.Call) (any, error) {
	var p api.CreateVMParams
	if err := c.Decode(&p); err != nil {
		return nil, err
	}
	if p.Image == "missing" {
		return nil, fmt.Errorf("image %q: %w", p.Image, api.ErrNotFound)
	}
	c.Progress("clone", "")
	c.Progress("boot", "waiting for ssh")
	if p.VMM != "" && p.VMM != "qemu" {
		return nil, fmt.Errorf("vmm %s cannot run vms on this host: %w", p.VMM, api.ErrNotFound)
	}
	v := api.VM{ID: "id-" + p.Name, Name: p.Name, State: "running", GuestIP: "172.30.0.9", Image: "default",
		VCPU: 2, MemoryMiB: 1024, CreatedAt: time.Now(), NAT: p.NAT, NATPrivate: p.NATPrivate, HostAccess: p.HostAccess, Driver: "qemu"}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, dup := f.vms[p.Name]; dup {
		return nil, fmt.Errorf("vm %q: %w", p.Name, api.ErrExists)
	}
	f.vms[p.Name] = v
	return v, nil
}

func (f *fakeDaemon) delete(ctx context.Context, c *rpc.Call) (any, error) {
	var p api.DeleteVMParams
	if err := c.Decode(&p); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.deletes = append(f.deletes, p.Name)
	if _, ok := f.vms[p.Name]; !ok {
		return nil, fmt.Errorf("vm %q: %w", p.Name, api.ErrNotFound)
	}
	delete(f.vms, p.Name)
	return nil, nil
}

// exec plays a few remote commands: "exit N" (writes to both streams),
// "cat" (echoes stdin, records the input frames), "boom" (a daemon-side
// failure, not the command's).
func (f *fakeDaemon) exec(ctx context.Context, c *rpc.Call) (any, error) {
	var p api.ExecParams
	if err := c.Decode(&p); err != nil {
		return nil, err
	}
	f.mu.Lock()
	f.execs = append(f.execs, p)
	_, ok := f.vms[p.Name]
	f.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("vm %q: %w", p.Name, api.ErrNotFound)
	}
	cmd := p.Command
	if len(p.Argv) > 0 {
		cmd = strings.Join(p.Argv, " ")
	}
	switch {
	case cmd == "boom":
		return nil, fmt.Errorf("ssh to guest: connection reset: %w", api.ErrNotRunning)
	case cmd == "cat":
		var frames []api.Input
		for {
			select {
			case in, ok := <-c.Input():
				if !ok {
					return nil, errors.New("input closed before EOF frame")
				}
				frames = append(frames, in)
				if len(in.Stdin) > 0 {
					_, _ = c.Stdout().Write(in.Stdin)
				}
				if in.EOF {
					f.mu.Lock()
					f.inputs = frames
					f.mu.Unlock()
					return api.ExecResult{ExitCode: 0}, nil
				}
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(10 * time.Second):
				return nil, errors.New("no EOF frame within 10s")
			}
		}
	case strings.HasPrefix(cmd, "exit "):
		var code int
		if _, err := fmt.Sscanf(cmd, "exit %d", &code); err != nil {
			return nil, fmt.Errorf("bad command %q: %w", cmd, api.ErrInvalid)
		}
		fmt.Fprint(c.Stdout(), "to-stdout\n")
		fmt.Fprint(c.Stderr(), "to-stderr\n")
		return api.ExecResult{ExitCode: code}, nil
	}
	return api.ExecResult{}, nil
}

// run drives Main against dir; the exit code and both outputs come back.
func run(t *testing.T, dir string, stdin string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	full := append([]string{"--state-dir", dir, "--no-autostart"}, args...)
	code := Main(full, strings.NewReader(stdin), &out, &errb)
	return code, out.String(), errb.String()
}

func TestVMListTableAndJSON(t *testing.T) {
	f := newFakeDaemon(t)
	f.add(api.VM{ID: "a1", Name: "alpha", State: "running", GuestIP: "172.30.0.2", Image: "default", VCPU: 2, MemoryMiB: 1024, CreatedAt: time.Now()})
	f.add(api.VM{ID: "b2", Name: "beta", State: "stopped", GuestIP: "172.30.0.3", Image: "custom", VCPU: 4, MemoryMiB: 2048, CreatedAt: time.Now().Add(-3 * time.Hour)})

	code, out, errs := run(t, f.dir, "", "vm", "list")
	if code != 0 || errs != "" {
		t.Fatalf("vm list: code %d stderr %q", code, errs)
	}
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) != 3 {
		t.Fatalf("want header + 2 rows, got %q", out)
	}
	if got := strings.Fields(lines[0]); strings.Join(got, " ") != "NAME STATE IP IMAGE VCPU MEMORY CREATED" {
		t.Errorf("header %q", lines[0])
	}
	want := []*regexp.Regexp{
		regexp.MustCompile(`^alpha running 172\.30\.0\.2 default 2 1024M \d+s ago$`),
		regexp.MustCompile(`^beta stopped 172\.30\.0\.3 custom 4 2048M 3h ago$`),
	}
	for i, w := range want {
		if got := strings.Join(strings.Fields(lines[i+1]), " "); !w.MatchString(got) {
			t.Errorf("row %d = %q, want %s", i, got, w)
		}
	}
	// Columns line up (tabwriter): STATE starts at the same offset everywhere.
	col := strings.Index(lines[0], "STATE")
	for _, l := range lines[1:] {
		if l[col-1] != ' ' || l[col] == ' ' {
			t.Errorf("misaligned row %q (STATE at %d)", l, col)
		}
	}

	code, out, errs = run(t, f.dir, "", "vm", "list", "--json")
	if code != 0 || errs != "" {
		t.Fatalf("vm list --json: code %d stderr %q", code, errs)
	}
	var vms []api.VM
	if err := json.Unmarshal([]byte(out), &vms); err != nil {
		t.Fatalf("--json output is not a VM list: %v\n%s", err, out)
	}
	if len(vms) != 2 || vms[0].Name != "alpha" || vms[1].Name != "beta" || vms[1].MemoryMiB != 2048 || vms[0].ID != "a1" {
		t.Errorf("--json = %+v", vms)
	}

	// An empty list is still valid JSON: [] rather than null.
	g := newFakeDaemon(t)
	code, out, _ = run(t, g.dir, "", "vm", "ls", "--json")
	if code != 0 || strings.TrimSpace(out) != "[]" {
		t.Errorf("empty --json: code %d out %q", code, out)
	}
}

var oneLineErr = regexp.MustCompile(`^banger: vm "ghost": not found \[not_found, op [0-9a-zA-Z-]+\]\n$`)

func TestVMShowMissingIsOneLine(t *testing.T) {
	f := newFakeDaemon(t)
	code, out, errs := run(t, f.dir, "", "vm", "show", "ghost")
	if code != 1 {
		t.Errorf("exit %d, want 1", code)
	}
	if out != "" {
		t.Errorf("stdout %q, want empty", out)
	}
	if !oneLineErr.MatchString(errs) {
		t.Errorf("stderr %q, want one line `banger: vm \"ghost\": not found [not_found, op ID]`", errs)
	}

	f.add(api.VM{ID: "abc", Name: "here", State: "running", VCPU: 2, MemoryMiB: 512, CreatedAt: time.Now()})
	code, out, errs = run(t, f.dir, "", "vm", "show", "here")
	if code != 0 || errs != "" || !regexp.MustCompile(`(?m)^name:\s+here$`).MatchString(out) ||
		!regexp.MustCompile(`(?m)^memory:\s+512 MiB$`).MatchString(out) {
		t.Errorf("vm show here: code %d stderr %q stdout:\n%s", code, errs, out)
	}
}

func TestVMSSHPropagatesExitCodeAndStreams(t *testing.T) {
	f := newFakeDaemon(t)
	f.add(api.VM{ID: "1", Name: "box", State: "running"})
	code, out, errs := run(t, f.dir, "", "vm", "ssh", "box", "--", "exit 3")
	if code != 3 {
		t.Errorf("exit %d, want 3 (stderr %q)", code, errs)
	}
	if out != "to-stdout\n" {
		t.Errorf("stdout %q", out)
	}
	if errs != "to-stderr\n" {
		t.Errorf("stderr %q (no banger: line expected for a remote exit code)", errs)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.execs) != 1 || f.execs[0].Command != "exit 3" || f.execs[0].Name != "box" || !f.execs[0].Stdin || f.execs[0].TTY {
		t.Errorf("exec params %+v", f.execs)
	}
}

func TestVMExecStdinFrames(t *testing.T) {
	f := newFakeDaemon(t)
	f.add(api.VM{ID: "1", Name: "box", State: "running"})
	code, out, errs := run(t, f.dir, "hello\nworld\n", "vm", "exec", "box", "--", "cat")
	if code != 0 || errs != "" {
		t.Fatalf("exit %d stderr %q", code, errs)
	}
	if out != "hello\nworld\n" {
		t.Errorf("echoed stdout %q", out)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var data []byte
	for i, in := range f.inputs {
		if i < len(f.inputs)-1 && in.EOF {
			t.Errorf("EOF frame before the end: %+v", f.inputs)
		}
		data = append(data, in.Stdin...)
	}
	if string(data) != "hello\nworld\n" {
		t.Errorf("stdin frames carried %q", data)
	}
	if n := len(f.inputs); n == 0 || !f.inputs[n-1].EOF {
		t.Errorf("last frame is not EOF: %+v", f.inputs)
	}
	// One word after -- is a shell command line; several are an argv.
	if f.execs[0].Command != "cat" || f.execs[0].Argv != nil {
		t.Errorf("exec params %+v", f.execs[0])
	}
}

func TestVMExecArgv(t *testing.T) {
	f := newFakeDaemon(t)
	f.add(api.VM{ID: "1", Name: "box", State: "running"})
	code, _, errs := run(t, f.dir, "", "vm", "exec", "-e", "A=b", "-w", "/tmp", "box", "--", "exit", "5")
	if code != 5 {
		t.Errorf("exit %d, want 5 (stderr %q)", code, errs)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	p := f.execs[0]
	if strings.Join(p.Argv, "|") != "exit|5" || p.Command != "" || p.Env["A"] != "b" || p.Dir != "/tmp" {
		t.Errorf("exec params %+v", p)
	}
	code, _, errs = run(t, f.dir, "", "vm", "exec", "-e", "novalue", "box", "--", "true")
	if code != 125 || !strings.HasPrefix(errs, "banger: ") {
		t.Errorf("bad --env: exit %d stderr %q, want 125", code, errs)
	}
}

func TestExecTransportErrorsExit125(t *testing.T) {
	f := newFakeDaemon(t)
	f.add(api.VM{ID: "1", Name: "box", State: "running"})
	for _, args := range [][]string{
		{"vm", "exec", "box", "--", "boom"},
		{"vm", "ssh", "box", "--", "boom"},
		{"vm", "exec", "nobox", "--", "true"},
	} {
		code, out, errs := run(t, f.dir, "", args...)
		if code != 125 {
			t.Errorf("%v: exit %d, want 125", args, code)
		}
		if out != "" || strings.Count(errs, "\n") != 1 || !strings.HasPrefix(errs, "banger: ") {
			t.Errorf("%v: stdout %q stderr %q, want one banger: line", args, out, errs)
		}
	}
	// No daemon at all (and no autostart).
	empty := t.TempDir()
	for _, args := range [][]string{
		{"vm", "exec", "box", "--", "true"},
		{"vm", "run", "--", "true"},
	} {
		code, _, errs := run(t, empty, "", args...)
		if code != 125 {
			t.Errorf("no daemon, %v: exit %d, want 125 (stderr %q)", args, code, errs)
		}
		if !strings.Contains(errs, "daemon not running") {
			t.Errorf("no daemon, %v: stderr %q", args, errs)
		}
	}
}

func TestVMRunRmDeletesEvenOnFailure(t *testing.T) {
	f := newFakeDaemon(t)

	// The command fails: its code is propagated and the VM is gone.
	code, out, errs := run(t, f.dir, "", "vm", "run", "--name", "r1", "--rm", "--", "exit 7")
	if code != 7 {
		t.Errorf("exit %d, want 7 (stderr %q)", code, errs)
	}
	if out != "to-stdout\n" {
		t.Errorf("stdout %q", out)
	}
	if f.has("r1") {
		t.Error("vm r1 still exists after vm run --rm")
	}

	// Banger's own failure during exec: 125, and the VM is gone too.
	code, _, errs = run(t, f.dir, "", "vm", "run", "--name", "r2", "--rm", "--", "boom")
	if code != 125 {
		t.Errorf("exit %d, want 125 (stderr %q)", code, errs)
	}
	if f.has("r2") {
		t.Error("vm r2 still exists after a failed vm run --rm")
	}

	// Without --rm the VM stays; a generated name is used when none is given.
	code, _, errs = run(t, f.dir, "", "vm", "run", "--", "exit 0")
	if code != 0 {
		t.Errorf("exit %d (stderr %q)", code, errs)
	}
	f.mu.Lock()
	var kept []string
	for n := range f.vms {
		kept = append(kept, n)
	}
	deletes := append([]string(nil), f.deletes...)
	f.mu.Unlock()
	if len(kept) != 1 || !regexp.MustCompile(`^run-[0-9a-f]{6}$`).MatchString(kept[0]) {
		t.Errorf("vms left %v, want one run-XXXXXX", kept)
	}
	if strings.Join(deletes, ",") != "r1,r2" {
		t.Errorf("vm.delete calls %v, want [r1 r2]", deletes)
	}

	// Create itself fails: banger's failure (125), delete attempted, its
	// not_found is not reported.
	code, _, errs = run(t, f.dir, "", "vm", "run", "--name", "r3", "--image", "missing", "--rm", "--", "true")
	if code != 125 {
		t.Errorf("create failure: exit %d, want 125 (stderr %q)", code, errs)
	}
	if strings.Count(errs, "banger:") != 1 || !strings.Contains(errs, "[not_found, op ") {
		t.Errorf("create failure: stderr %q", errs)
	}
}

func TestDaemonStatus(t *testing.T) {
	empty := t.TempDir()
	code, out, errs := run(t, empty, "", "daemon", "status")
	if code != 3 {
		t.Errorf("exit %d, want 3", code)
	}
	if !strings.Contains(out, "not running") || errs != "" {
		t.Errorf("stdout %q stderr %q", out, errs)
	}
	code, out, _ = run(t, empty, "", "daemon", "status", "--json")
	var m map[string]any
	if err := json.Unmarshal([]byte(out), &m); err != nil || m["running"] != false ||
		m["socket"] != filepath.Join(empty, paths.SocketFile) {
		t.Errorf("--json: code %d out %q (%v)", code, out, err)
	}

	f := newFakeDaemon(t)
	code, out, errs = run(t, f.dir, "", "daemon", "status")
	if code != 0 || errs != "" || !strings.HasPrefix(out, "bangerd running: pid 42,") {
		t.Errorf("running: code %d stdout %q stderr %q", code, out, errs)
	}
}

func TestVMCreateRendersStages(t *testing.T) {
	f := newFakeDaemon(t)
	code, out, errs := run(t, f.dir, "", "vm", "create", "--name", "new1")
	if code != 0 {
		t.Fatalf("exit %d stderr %q", code, errs)
	}
	lines := strings.Split(strings.TrimRight(errs, "\n"), "\n")
	re := []*regexp.Regexp{
		regexp.MustCompile(`^==> clone$`),
		regexp.MustCompile(`^    clone done \(\d+\.\ds\)$`),
		regexp.MustCompile(`^==> boot: waiting for ssh$`),
		regexp.MustCompile(`^    boot done \(\d+\.\ds\); total \d+\.\ds$`),
	}
	if len(lines) != len(re) {
		t.Fatalf("stderr %q", errs)
	}
	for i, r := range re {
		if !r.MatchString(lines[i]) {
			t.Errorf("stderr line %d = %q, want %s", i, lines[i], r)
		}
	}
	if !regexp.MustCompile(`(?m)^name:\s+new1$`).MatchString(out) {
		t.Errorf("stdout %q", out)
	}
	if !f.has("new1") {
		t.Error("vm not created")
	}
	// A refused create prints no final "total" line.
	code, _, errs = run(t, f.dir, "", "vm", "create", "--name", "new1")
	if code != 1 || strings.Contains(errs, "total") || !strings.Contains(errs, "[exists, op ") {
		t.Errorf("duplicate create: exit %d stderr %q", code, errs)
	}
}

func TestStageViewJSONStillOnStderr(t *testing.T) {
	f := newFakeDaemon(t)
	code, out, errs := run(t, f.dir, "", "vm", "create", "--name", "j1", "--json")
	if code != 0 {
		t.Fatalf("exit %d stderr %q", code, errs)
	}
	var v api.VM
	if err := json.Unmarshal([]byte(out), &v); err != nil || v.Name != "j1" {
		t.Errorf("stdout is not the VM as JSON: %q (%v)", out, err)
	}
	if strings.Contains(out, "==>") {
		t.Errorf("stage lines leaked to stdout: %q", out)
	}
}

var _ io.Reader = (*strings.Reader)(nil)
