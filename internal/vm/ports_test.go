package vm

import (
	"bytes"
	"context"
	"errors"
	"runtime"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/guest"
)

// ssGuest answers `ss` like a hostile guest: stdout written in chunks
// (giving up, as guest.Pool.Exec does, when the host refuses more), then
// stderrMiB MiB of noise on stderr and a last line.
type ssGuest struct {
	fakeGuest
	stdout    []byte
	stderrMiB int
	code      int
}

func (g *ssGuest) Exec(ctx context.Context, t guest.Target, req guest.ExecRequest) (int, error) {
	if len(req.Argv) == 0 || req.Argv[0] != "ss" {
		return g.fakeGuest.Exec(ctx, t, req)
	}
	for out := g.stdout; len(out) > 0; {
		n := min(len(out), 32<<10)
		if _, err := req.Stdout.Write(out[:n]); err != nil {
			return -1, err
		}
		out = out[n:]
	}
	noise := bytes.Repeat([]byte("noise "), 1<<20/6)
	for i := 0; i < g.stderrMiB; i++ {
		req.Stderr.Write(noise)
	}
	req.Stderr.Write([]byte("\x1b[2Jlast line\n"))
	return g.code, nil
}

// ports runs Ports on svc with g answering as set.
func ports(svc *Service, g *ssGuest, set ssGuest) (ports []api.Port, alloc uint64, err error) {
	g.stdout, g.stderrMiB, g.code = set.stdout, set.stderrMiB, set.code
	var a, b runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&a)
	ports, err = svc.Ports(context.Background(), "web")
	runtime.ReadMemStats(&b)
	return ports, b.TotalAlloc - a.TotalAlloc, err
}

func TestPortsReadsBoundedGuestOutput(t *testing.T) {
	f := newFixture(t)
	g := &ssGuest{fakeGuest: fakeGuest{f.h}}
	d := f.deps
	d.Guest = g
	svc := New(d)
	if _, err := svc.Create(context.Background(), api.CreateVMParams{Name: "web", WorkDisk: "32M"}, nil); err != nil {
		t.Fatal(err)
	}
	line := "tcp   LISTEN 0      128              0.0.0.0:22        0.0.0.0:*    users:((\"sshd\",pid=210,fd=3))\n"

	// Over the limit: refused, with the limit named.
	_, _, err := ports(svc, g, ssGuest{stdout: []byte(strings.Repeat(line, PortsLimit/len(line)+1))})
	var le *guest.LimitError
	if !errors.As(err, &le) || !errors.Is(err, api.ErrInvalid) || !strings.Contains(err.Error(), `vm "web": ss: `) ||
		!strings.Contains(err.Error(), "ss output from the guest exceeds the 4 MiB limit") {
		t.Fatalf("ss output over the limit: %v", err)
	}

	// 256 MiB of stderr: the error carries the escaped tail only.
	_, alloc, err := ports(svc, g, ssGuest{stderrMiB: 256, code: 1})
	if err == nil {
		t.Fatal("no error")
	}
	msg := err.Error()
	if !strings.HasPrefix(msg, `vm "web": ss exited 1: [`) || !strings.HasSuffix(msg, `\u001b[2Jlast line`) || len(msg) > guest.TailSize+256 {
		t.Errorf("error: %.80q ... %q (%d bytes)", msg, msg[max(0, len(msg)-40):], len(msg))
	}
	if alloc > 16<<20 {
		t.Errorf("ports allocated %d MiB", alloc>>20)
	}

	// A process name that would drive the terminal is escaped.
	got, _, err := ports(svc, g, ssGuest{stdout: []byte("tcp LISTEN 0 128 0.0.0.0:80 0.0.0.0:* users:((\"\x1b]0;x\x07evil\",pid=1,fd=3))\n")})
	if err != nil || len(got) != 1 || got[0].Process != `\u001b]0;x\u0007evil` {
		t.Fatalf("ports %+v %v", got, err)
	}
}
