package agentinit

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/system"
)

func TestPlanFor(t *testing.T) {
	for _, tc := range []struct{ osRelease, family string }{
		{"PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\n", "debian"},
		{"ID=ubuntu\nID_LIKE=debian\n", "debian"},
		{"ID=pop\nID_LIKE=\"ubuntu debian\"\n", "debian"},
		{"ID=\"rocky\"\nID_LIKE=\"rhel centos fedora\"\n", "fedora"},
		{"ID=someel\nID_LIKE='rhel fedora'\n", "fedora"},
		{"ID=\"opensuse-leap\"\nID_LIKE=\"suse opensuse\"\n", "suse"},
		{"ID=endeavouros\nID_LIKE=arch\n", "arch"},
		{"# comment\nID=alpine\n", "alpine"},
	} {
		p, err := PlanFor(tc.osRelease)
		if err != nil || p.Family != tc.family {
			t.Errorf("%q: got %q, %v; want %s", tc.osRelease, p.Family, err, tc.family)
		}
	}
	if _, err := PlanFor("ID=plan9\nID_LIKE=inferno\n"); err == nil || !strings.Contains(err.Error(), "plan9") {
		t.Errorf("unknown distribution: %v", err)
	}
}

// fakeStreamer records command lines and fails the ones listed.
type fakeStreamer struct {
	ran  []string
	fail map[string]int
}

func (f *fakeStreamer) Stream(_ context.Context, s system.StreamSpec) (int, error) {
	line := s.Name + " " + strings.Join(s.Args, " ")
	if len(s.Env) > 0 {
		line = strings.Join(s.Env, " ") + " " + line
	}
	f.ran = append(f.ran, line)
	return f.fail[s.Name], nil
}

func TestRunPlanApt(t *testing.T) {
	p, _ := PlanFor("ID=debian\n")
	var console bytes.Buffer
	f := &fakeStreamer{}
	if err := RunPlan(context.Background(), f, p, &console, &Logger{W: &console}); err != nil {
		t.Fatal(err)
	}
	want := "DEBIAN_FRONTEND=noninteractive apt-get -q -o Acquire::Languages=none update\n" +
		"DEBIAN_FRONTEND=noninteractive apt-get -q -y --no-install-recommends -o Dpkg::Options::=--force-confold -o Dpkg::Options::=--force-unsafe-io install systemd-sysv openssh-server"
	if got := strings.Join(f.ran, "\n"); got != want {
		t.Errorf("commands:\n%s\nwant:\n%s", got, want)
	}
	f = &fakeStreamer{fail: map[string]int{"apt-get": 100}}
	err := RunPlan(context.Background(), f, p, &console, &Logger{W: &console})
	if err == nil || !strings.Contains(err.Error(), "apt-get -q -o Acquire::Languages=none update exited 100") || len(f.ran) != 1 {
		t.Errorf("failing update: %v after %v", err, f.ran)
	}
}
