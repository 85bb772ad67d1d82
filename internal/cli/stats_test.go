package cli

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/api"
)

func TestIdleTimeoutFlag(t *testing.T) {
	for in, want := range map[string]int{"30m": 1800, "20s": 20, "1h30m": 5400, "0": 0, "off": 0, "never": 0} {
		secs := -1
		if err := (idleTimeoutFlag{&secs}).Set(in); err != nil || secs != want {
			t.Errorf("%q: %d, %v; want %d", in, secs, err, want)
		}
	}
	for _, in := range []string{"", "-5m", "500ms", "1.5s", "soon"} {
		secs := 0
		if err := (idleTimeoutFlag{&secs}).Set(in); !errors.Is(err, api.ErrInvalid) {
			t.Errorf("%q accepted: %d, %v", in, secs, err)
		}
	}
}

// A guest without an agent answer still gets its host columns; the reason,
// which may quote the guest, is printed without escapes.
func TestRenderStats(t *testing.T) {
	var out bytes.Buffer
	a := &app{stdout: &out}
	ssh := 0
	last := time.Now().Add(-90 * time.Second)
	err := a.renderStats([]api.VMStats{
		{Name: "up", Guest: &api.GuestStats{CPUPercent: 12.34, MemUsedBytes: 300 << 20, MemTotalBytes: 1 << 30, Load1: 0.5,
			RootUsedBytes: 1 << 30, RootTotal: 4 << 30, WorkUsedBytes: 64 << 20, WorkTotal: 8 << 30, UptimeSeconds: 3725, SSHSessions: &ssh},
			Net: &api.NetStats{RxBytes: 2048, TxBytes: 512}, VMMRSSBytes: 600 << 20, Idle: api.Idle{LastActivity: &last}},
		{Name: "mute", GuestError: "guest agent not available: \x1b[2Jgone", Net: &api.NetStats{RxBytes: 1, TxBytes: 2}},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := `NAME  CPU    MEM          LOAD1  ROOT       WORK        RX    TX    VMM RSS  UPTIME  LAST ACTIVITY
up    12.3%  300.0M/1.0G  0.50   1.0G/4.0G  64.0M/8.0G  2.0K  512B  600.0M   1h2m5s  1m ago
mute  -      -            -      -          -           1B    2B    -        -       -
mute: guest unavailable: guest agent not available: gone
`
	if got := out.String(); got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
	if strings.Contains(out.String(), "\x1b") {
		t.Fatal("escape reached the terminal")
	}
}
