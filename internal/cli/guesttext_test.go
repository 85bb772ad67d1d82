package cli

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/rpc"
)

// hostile is what a guest prints to take over the user's terminal: a window
// title (OSC 0), a screen clear (CSI 2J), a hyperlink, an 8-bit CSI, a bell
// and a carriage return that overwrites the line.
const hostile = "boot ok\r\n\x1b]0;pwned\x07\x1b[2J\x1b]8;;http://evil/\x1b\\click\x1b]8;;\x1b\\ \u009b31m\a\rlogin: "

// guestTextDaemon answers with guest-controlled text in every field the CLI
// renders.
func guestTextDaemon(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	srv := rpc.NewServer(nil, os.Getuid())
	srv.Handle(api.MethodVMLogs, func(ctx context.Context, c *rpc.Call) (any, error) {
		return api.LogsResult{Path: "/x/console.log", Data: []byte(hostile)}, nil
	})
	srv.Handle(api.MethodVMPorts, func(ctx context.Context, c *rpc.Call) (any, error) {
		return []api.Port{{Proto: "tcp", Address: "0.0.0.0\x1b[2J", Port: 22, Process: "sshd\x1b]0;pwned\x07\tfake\ncol"}}, nil
	})
	srv.Handle(api.MethodVMShow, func(ctx context.Context, c *rpc.Call) (any, error) {
		return api.VM{Name: "dev", State: "error", LastError: "vmm exited: " + hostile}, nil
	})
	srv.Handle(api.MethodWorkspaceStatus, func(ctx context.Context, c *rpc.Call) (any, error) {
		return api.WorkspaceStatus{Running: true, GuestHead: "abc", GuestBranch: "main\x1b[2J", GuestError: ""}, nil
	})
	srv.Handle(api.MethodVMStart, func(ctx context.Context, c *rpc.Call) (any, error) {
		return nil, fmt.Errorf("guest did not answer: \x1b]0;pwned\x07\x1b[2Jconsole tail: %s: %w", hostile, api.ErrInvalid)
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
		case <-errc:
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return")
		}
	})
	return dir
}

// controls lists the control bytes in s other than \n and \t.
func controls(s string) []string {
	var out []string
	for _, r := range s {
		if (r < 0x20 && r != '\n' && r != '\t') || (r >= 0x7f && r <= 0x9f) {
			out = append(out, fmt.Sprintf("%U", r))
		}
	}
	return out
}

func TestGuestTextIsSanitized(t *testing.T) {
	dir := guestTextDaemon(t)
	for _, args := range [][]string{
		{"vm", "logs", "dev"},
		{"vm", "ports", "dev"},
		{"vm", "show", "dev"},
		{"vm", "workspace", "status", "dev"},
		{"vm", "start", "dev"},
	} {
		_, out, errOut := run(t, dir, "", args...)
		for _, s := range []string{out, errOut} {
			if c := controls(s); len(c) > 0 || strings.Contains(s, "pwned") {
				t.Errorf("banger %s printed controls %v: %q", strings.Join(args, " "), c, s)
			}
		}
		t.Logf("banger %s: %q %q", strings.Join(args, " "), out, errOut)
	}
	_, out, _ := run(t, dir, "", "vm", "logs", "dev")
	if out != "boot ok\nclick login: " {
		t.Errorf("vm logs = %q", out)
	}
	_, out, _ = run(t, dir, "", "vm", "ports", "dev")
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 2 || !strings.Contains(lines[1], "sshd fake col") {
		t.Errorf("a process name forged table rows: %q", out)
	}
	// --raw is for a user who asks for the bytes as the guest sent them.
	if _, out, _ := run(t, dir, "", "vm", "logs", "--raw", "dev"); out != hostile {
		t.Errorf("vm logs --raw = %q", out)
	}
}
