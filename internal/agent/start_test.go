package agent

import (
	"errors"
	"net"
	"strings"
	"testing"
	"time"
)

// An exec that fails before the agent reports the process started is
// ErrNotStarted (the daemon may run it over SSH); one that fails after is
// not (it may have run).
func TestExecNotStarted(t *testing.T) {
	for _, tc := range []struct {
		name    string
		started bool
	}{{"closed before start", false}, {"closed after start", true}} {
		t.Run(tc.name, func(t *testing.T) {
			stdinRead := make(chan struct{}, 1)
			c := fakeClient(t, func(guest net.Conn) {
				sess := fakeSession(t, guest, "1.0", "test")
				if sess == nil {
					return
				}
				st, err := sess.AcceptStream()
				if err != nil {
					return
				}
				fr := newFrameReader(st)
				if _, _, err := fr.next(); err != nil {
					return
				}
				if tc.started {
					_ = (&frameWriter{w: st}).write(frameStarted, nil)
				}
				// Does the host send stdin before the start? It must not.
				_ = st.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
				if typ, _, err := fr.next(); err == nil && typ == frameInput {
					stdinRead <- struct{}{}
				}
				sess.Close() // the agent dies
			})
			_, err := c.Exec(testCtx(t, 10*time.Second), ExecRequest{Command: "cat", Stdin: strings.NewReader("data")})
			if err == nil {
				t.Fatal("exec on a dying agent succeeded")
			}
			if got := errors.Is(err, ErrNotStarted); got == tc.started {
				t.Fatalf("errors.Is(%v, ErrNotStarted) = %v", err, got)
			}
			select {
			case <-stdinRead:
				if !tc.started {
					t.Fatal("stdin was sent before the agent said the exec started")
				}
			default:
				if tc.started {
					t.Fatal("stdin not sent after the start")
				}
			}
		})
	}
}
