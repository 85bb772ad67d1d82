package rpc

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/opid"
)

type echoParams struct {
	Name string `json:"name"`
	N    int    `json:"n"`
}

type echoResult struct {
	Name string `json:"name"`
	N    int    `json:"n"`
	OpID string `json:"op_id"`
	Peer int    `json:"peer"`
}

func echoHandler(ctx context.Context, c *Call) (any, error) {
	var p echoParams
	if err := c.Decode(&p); err != nil {
		return nil, err
	}
	return echoResult{Name: p.Name, N: p.N * 2, OpID: opid.FromContext(ctx), Peer: c.PeerPID}, nil
}

func TestRoundTrip(t *testing.T) {
	h := newHarness(t, ownUID())
	h.srv.Handle("test.echo", echoHandler)

	var res echoResult
	if err := h.client.Call(context.Background(), "test.echo", echoParams{Name: "vm1", N: 21}, &res); err != nil {
		t.Fatal(err)
	}
	if res.Name != "vm1" || res.N != 42 {
		t.Fatalf("result = %+v", res)
	}
	if !opid.Valid(res.OpID) || len(res.OpID) != 12 {
		t.Fatalf("handler ctx op id = %q", res.OpID)
	}
	if res.Peer != os.Getpid() {
		t.Fatalf("peer pid = %d, want %d", res.Peer, os.Getpid())
	}
	// nil params and nil result are fine too.
	if err := h.client.Call(context.Background(), "test.echo", nil, nil); err != nil {
		t.Fatal(err)
	}

	h.stop(t)
	var start, done map[string]any
	for _, r := range h.logs.records(t) {
		if r["op_id"] != res.OpID {
			continue
		}
		switch r["msg"] {
		case "rpc start":
			start = r
		case "rpc done":
			done = r
		}
	}
	if start == nil || start["method"] != "test.echo" {
		t.Fatalf("no start record for op %s: %v", res.OpID, h.logs.records(t))
	}
	if done == nil || done["method"] != "test.echo" || done["duration_ms"] == nil || done["code"] != nil {
		t.Fatalf("done record = %v", done)
	}
}

func TestForwardedOpID(t *testing.T) {
	h := newHarness(t, ownUID())
	h.srv.Handle("test.echo", echoHandler)

	var res echoResult
	if err := h.client.Call(context.Background(), "test.echo", nil, &res, WithOpID("cli-op_42")); err != nil {
		t.Fatal(err)
	}
	if res.OpID != "cli-op_42" {
		t.Fatalf("forwarded id not adopted: %q", res.OpID)
	}
	// A hostile id must not reach the logs; the server mints its own.
	bad := "x\n{\"level\":\"ERROR\"}"
	if err := h.client.Call(context.Background(), "test.echo", nil, &res, WithOpID(bad)); err != nil {
		t.Fatal(err)
	}
	if res.OpID == bad || !opid.Valid(res.OpID) {
		t.Fatalf("malformed forwarded id adopted: %q", res.OpID)
	}
}

func TestErrorMapping(t *testing.T) {
	h := newHarness(t, ownUID())
	cases := []struct {
		method  string
		err     error
		panics  bool
		code    api.Code
		is      error
		message string
	}{
		{method: "e.notfound", err: fmt.Errorf("vm %q: %w", "web", api.ErrNotFound), code: api.CodeNotFound, is: api.ErrNotFound, message: `vm "web": not found`},
		{method: "e.exists", err: fmt.Errorf("image %q: %w", "deb", api.ErrExists), code: api.CodeExists, is: api.ErrExists},
		{method: "e.invalid", err: fmt.Errorf("%w: vcpu must be > 0", api.ErrInvalid), code: api.CodeInvalid, is: api.ErrInvalid},
		{method: "e.notrunning", err: fmt.Errorf("vm x: %w", api.ErrNotRunning), code: api.CodeNotRunning, is: api.ErrNotRunning},
		{method: "e.busy", err: api.ErrBusy, code: api.CodeBusy, is: api.ErrBusy},
		{method: "e.plain", err: errors.New("disk full"), code: api.CodeInternal, message: "disk full"},
		{method: "e.canceled", err: fmt.Errorf("boot: %w", context.Canceled), code: api.CodeCanceled},
		{method: "e.relayed", err: fmt.Errorf("helper: %w", &api.Error{Code: api.CodeCanceled, Message: "x"}), code: api.CodeCanceled},
		{method: "e.panic", panics: true, code: api.CodeInternal},
	}
	for _, c := range cases {
		c := c
		h.srv.Handle(c.method, func(ctx context.Context, _ *Call) (any, error) {
			if c.panics {
				panic("boom")
			}
			return nil, c.err
		})
	}
	for _, c := range cases {
		t.Run(c.method, func(t *testing.T) {
			err := h.client.Call(context.Background(), c.method, nil, nil)
			var we *api.Error
			if !errors.As(err, &we) {
				t.Fatalf("err = %v (%T), want *api.Error", err, err)
			}
			if we.Code != c.code {
				t.Fatalf("code = %q, want %q (%v)", we.Code, c.code, err)
			}
			if !opid.Valid(we.OpID) {
				t.Fatalf("error carries no op id: %+v", we)
			}
			if c.is != nil && !errors.Is(err, c.is) {
				t.Fatalf("errors.Is(%v, %v) = false", err, c.is)
			}
			if c.message != "" && we.Message != c.message {
				t.Fatalf("message = %q, want %q", we.Message, c.message)
			}
			if !strings.Contains(err.Error(), we.OpID) {
				t.Fatalf("error text %q does not name the op id", err)
			}
		})
	}
	// The server survived the panic and logged it with the op id.
	h.srv.Handle("test.echo", echoHandler)
	if err := h.client.Call(context.Background(), "test.echo", nil, nil); err != nil {
		t.Fatalf("server unusable after panic: %v", err)
	}
	found := false
	for _, r := range h.logs.records(t) {
		if r["msg"] == "rpc handler panic" && r["panic"] == "boom" && r["op_id"] != nil {
			found = true
		}
	}
	if !found {
		t.Fatal("panic not logged with op id")
	}
}

func TestDecodeStrict(t *testing.T) {
	h := newHarness(t, ownUID())
	h.srv.Handle("test.echo", echoHandler)
	err := h.client.Call(context.Background(), "test.echo", map[string]any{"name": "x", "evil": 1}, nil)
	if !errors.Is(err, api.ErrInvalid) || !strings.Contains(err.Error(), "evil") {
		t.Fatalf("unknown param field: err = %v", err)
	}
	err = h.client.Call(context.Background(), "test.echo", map[string]any{"n": "not a number"}, nil)
	if !errors.Is(err, api.ErrInvalid) {
		t.Fatalf("wrong param type: err = %v", err)
	}
	err = h.client.Call(context.Background(), "test.echo", []int{1}, nil)
	if !errors.Is(err, api.ErrInvalid) {
		t.Fatalf("array params: err = %v", err)
	}
}

func TestUnknownMethod(t *testing.T) {
	h := newHarness(t, ownUID())
	err := h.client.Call(context.Background(), "no.such", nil, nil)
	var we *api.Error
	if !errors.As(err, &we) || we.Code != api.CodeUnknown || !strings.Contains(we.Message, `"no.such"`) {
		t.Fatalf("err = %v", err)
	}
}

func TestEventsInOrder(t *testing.T) {
	h := newHarness(t, ownUID())
	const n = 200
	h.srv.Handle("test.events", func(ctx context.Context, c *Call) (any, error) {
		for i := range n {
			switch i % 3 {
			case 0:
				c.Progress("stage", fmt.Sprint(i))
			case 1:
				fmt.Fprintf(c.Stdout(), "%d", i)
			case 2:
				fmt.Fprintf(c.Stderr(), "%d", i)
			}
		}
		if err := c.Event(api.Event{Stage: "disk", Current: 5, Total: 10}); err != nil {
			return nil, err
		}
		return "ok", nil
	})
	var got []api.Event
	var res string
	err := h.client.Call(context.Background(), "test.events", nil, &res, WithEvents(func(ev api.Event) { got = append(got, ev) }))
	if err != nil || res != "ok" {
		t.Fatalf("res=%q err=%v", res, err)
	}
	if len(got) != n+1 {
		t.Fatalf("got %d events, want %d", len(got), n+1)
	}
	for i := range n {
		ev := got[i]
		var want api.Event
		switch i % 3 {
		case 0:
			want = api.Event{Stage: "stage", Message: fmt.Sprint(i)}
		case 1:
			want = api.Event{Stream: "stdout", Data: []byte(fmt.Sprint(i))}
		case 2:
			want = api.Event{Stream: "stderr", Data: []byte(fmt.Sprint(i))}
		}
		if ev.Stage != want.Stage || ev.Message != want.Message || ev.Stream != want.Stream || !bytes.Equal(ev.Data, want.Data) {
			t.Fatalf("event %d = %+v, want %+v", i, ev, want)
		}
	}
	if last := got[n]; last.Current != 5 || last.Total != 10 {
		t.Fatalf("byte progress lost: %+v", last)
	}
}

func TestLargeOutputChunked(t *testing.T) {
	h := newHarness(t, ownUID())
	big := bytes.Repeat([]byte("0123456789abcdef"), 100_000) // 1.6 MB
	h.srv.Handle("test.big", func(ctx context.Context, c *Call) (any, error) {
		n, err := c.Stdout().Write(big)
		if n != len(big) {
			return nil, fmt.Errorf("short write %d: %v", n, err)
		}
		return nil, err
	})
	var out bytes.Buffer
	frames := 0
	err := h.client.Call(context.Background(), "test.big", nil, nil, WithEvents(func(ev api.Event) {
		frames++
		if len(ev.Data) > streamChunk {
			t.Errorf("frame with %d bytes of data", len(ev.Data))
		}
		out.Write(ev.Data)
	}))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), big) || frames < 2 {
		t.Fatalf("got %d bytes in %d frames", out.Len(), frames)
	}
}

func TestInputReachesHandler(t *testing.T) {
	h := newHarness(t, ownUID())
	type seen struct {
		Stdin   string
		Resizes []api.Winsize
		Signals []string
		EOF     bool
	}
	h.srv.Handle("test.stdin", func(ctx context.Context, c *Call) (any, error) {
		var s seen
		for in := range c.Input() { // ends when the client half-closes
			s.Stdin += string(in.Stdin)
			if in.Resize != nil {
				s.Resizes = append(s.Resizes, *in.Resize)
			}
			if in.Signal != "" {
				s.Signals = append(s.Signals, in.Signal)
			}
			s.EOF = s.EOF || in.EOF
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("half-close cancelled the handler: %w", ctx.Err())
		}
		// Still connected after the half-close: output must still arrive.
		fmt.Fprint(c.Stdout(), "after-eof")
		return s, nil
	})
	in := make(chan api.Input)
	big := strings.Repeat("x", 3*streamChunk+7) // split by the client
	go func() {
		in <- api.Input{Stdin: []byte("hello ")}
		in <- api.Input{Resize: &api.Winsize{Cols: 120, Rows: 40}}
		in <- api.Input{Stdin: []byte("world")}
		in <- api.Input{Signal: "INT"}
		in <- api.Input{Stdin: []byte(big)}
		in <- api.Input{EOF: true}
		close(in)
	}()
	var res seen
	var out string
	err := h.client.Call(context.Background(), "test.stdin", nil, &res, WithInput(in),
		WithEvents(func(ev api.Event) { out += string(ev.Data) }))
	if err != nil {
		t.Fatal(err)
	}
	if res.Stdin != "hello world"+big || len(res.Resizes) != 1 || res.Resizes[0] != (api.Winsize{Cols: 120, Rows: 40}) ||
		len(res.Signals) != 1 || res.Signals[0] != "INT" || !res.EOF {
		t.Fatalf("handler saw stdin %d bytes, resizes %v, signals %v, eof %v", len(res.Stdin), res.Resizes, res.Signals, res.EOF)
	}
	if out != "after-eof" {
		t.Fatalf("output after half-close = %q", out)
	}
}

func TestHandlerCancelledWhenClientGoes(t *testing.T) {
	h := newHarness(t, ownUID())
	started := make(chan struct{})
	cancelled := make(chan error, 1)
	h.srv.Handle("test.block", func(ctx context.Context, c *Call) (any, error) {
		close(started)
		select {
		case <-ctx.Done():
			cancelled <- context.Cause(ctx)
			return nil, ctx.Err()
		case <-time.After(20 * time.Second):
			cancelled <- nil
			return nil, errors.New("not cancelled")
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-started
		cancel()
	}()
	err := h.client.Call(ctx, "test.block", nil, nil)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("client err = %v", err)
	}
	select {
	case cause := <-cancelled:
		if !errors.Is(cause, errClientGone) {
			t.Fatalf("handler cancel cause = %v", cause)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("handler ctx not cancelled within 5s of the client leaving")
	}
}

// The client half-closes at once (no input) and then disappears: the
// half-close must not cancel, the disappearance must.
func TestHalfCloseThenDisconnect(t *testing.T) {
	h := newHarness(t, ownUID())
	inputClosed := make(chan struct{})
	cancelled := make(chan struct{})
	h.srv.Handle("test.block", func(ctx context.Context, c *Call) (any, error) {
		for range c.Input() {
		}
		close(inputClosed)
		<-ctx.Done()
		close(cancelled)
		return nil, ctx.Err()
	})
	conn, err := net.Dial("unix", h.path)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(conn, `{"version":1,"method":"test.block"}`+"\n")
	_ = conn.(*net.UnixConn).CloseWrite()
	select {
	case <-inputClosed:
	case <-time.After(5 * time.Second):
		t.Fatal("Input() not closed after half-close")
	}
	select {
	case <-cancelled:
		t.Fatal("half-close cancelled the handler")
	case <-time.After(3 * hangupPoll):
	}
	conn.Close()
	select {
	case <-cancelled:
	case <-time.After(5 * time.Second):
		t.Fatal("handler not cancelled after the client closed")
	}
}

// With no grace period, a call in flight at shutdown is interrupted at once,
// and its client is told so (not "canceled", not "client went away").
func TestServeStopInterruptsInFlight(t *testing.T) {
	h := newHarness(t, ownUID())
	started := make(chan struct{})
	h.srv.Handle("test.block", func(ctx context.Context, c *Call) (any, error) {
		close(started)
		<-ctx.Done()
		return nil, ctx.Err()
	})
	errc := make(chan error, 1)
	go func() { errc <- h.client.Call(context.Background(), "test.block", nil, nil) }()
	<-started
	h.stop(t)
	err := <-errc
	var we *api.Error
	if !errors.As(err, &we) || we.Code != api.CodeShutdown || !errors.Is(err, api.ErrShuttingDown) ||
		!strings.HasPrefix(we.Message, "the daemon is shutting down; test.block was interrupted") {
		t.Fatalf("in-flight call during shutdown: err = %v", err)
	}
	if _, err := os.Lstat(h.path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("socket left behind after shutdown: %v", err)
	}
}

func TestWrongPeerUIDRefused(t *testing.T) {
	h := newHarness(t, os.Getuid()+1)
	var called atomic.Bool
	h.srv.Handle("test.echo", func(ctx context.Context, c *Call) (any, error) {
		called.Store(true)
		return nil, nil
	})
	err := h.client.Call(context.Background(), "test.echo", nil, nil)
	if !errors.Is(err, api.ErrPermission) {
		t.Fatalf("err = %v, want permission denied", err)
	}
	var we *api.Error
	if !errors.As(err, &we) || we.OpID == "" {
		t.Fatalf("refusal without op id: %v", err)
	}
	if called.Load() {
		t.Fatal("handler ran for a refused peer")
	}
}

func TestListenSocketMode(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "d.sock")
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode = %v, want socket 0600", fi.Mode())
	}
	if ln.Addr().String() != path {
		t.Fatalf("Addr() = %s", ln.Addr())
	}
	// The private bind directory is gone; nothing else was left next to the socket.
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Fatalf("dir holds %d entries, want only the socket", len(ents))
	}
	ln.Close()
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Close left the socket: %v", err)
	}
}

func TestListenStaleLiveAndForeign(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "d.sock")

	// A stale socket: bound, then closed without unlinking (a crashed daemon).
	old, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	old.SetUnlinkOnClose(false)
	old.Close()
	if err := NewClient(path).Call(context.Background(), "x", nil, nil); !errors.Is(err, ErrNoDaemon) {
		t.Fatalf("call on stale socket: err = %v, want ErrNoDaemon", err)
	}
	ln, err := Listen(path)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	defer ln.Close()

	// A live one is refused and left working.
	if _, err := Listen(path); !errors.Is(err, api.ErrBusy) {
		t.Fatalf("second Listen: err = %v, want busy", err)
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("first listener broken by second Listen: %v", err)
	}
	c.Close()

	// A regular file at the path is never removed.
	file := filepath.Join(dir, "not-a-socket")
	if err := os.WriteFile(file, []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(file); !errors.Is(err, api.ErrExists) {
		t.Fatalf("Listen over a file: err = %v", err)
	}
	if b, _ := os.ReadFile(file); string(b) != "data" {
		t.Fatal("Listen clobbered a regular file")
	}

	long := filepath.Join(dir, strings.Repeat("x", 120))
	if _, err := Listen(long); !errors.Is(err, api.ErrInvalid) {
		t.Fatalf("over-long path: err = %v", err)
	}
}

func TestNoDaemon(t *testing.T) {
	err := NewClient(filepath.Join(t.TempDir(), "missing.sock")).Call(context.Background(), "x", nil, nil)
	if !errors.Is(err, ErrNoDaemon) {
		t.Fatalf("err = %v", err)
	}
}

func TestHostileFrames(t *testing.T) {
	h := newHarness(t, ownUID())
	h.srv.Handle("test.echo", echoHandler)
	cases := []struct {
		name    string
		payload []byte
		code    api.Code
	}{
		{"garbage", []byte("not json at all\n"), api.CodeInvalid},
		{"empty line", []byte("\n"), api.CodeInvalid},
		{"array", []byte("[1,2]\n"), api.CodeInvalid},
		{"null", []byte("null\n"), api.CodeInvalid},
		{"truncated", []byte(`{"version":1,"method":"test.ec`), api.CodeInvalid},
		{"trailing", []byte(`{"version":1,"method":"test.echo"} {"x":1}` + "\n"), api.CodeInvalid},
		{"unknown field", []byte(`{"version":1,"method":"test.echo","sudo":true}` + "\n"), api.CodeInvalid},
		{"wrong version", []byte(`{"version":2,"method":"test.echo"}` + "\n"), api.CodeInvalid},
		{"no version", []byte(`{"method":"test.echo"}` + "\n"), api.CodeInvalid},
		{"no method", []byte(`{"version":1}` + "\n"), api.CodeInvalid},
		{"method with newline", []byte(`{"version":1,"method":"a\nb"}` + "\n"), api.CodeInvalid},
		{"unknown method", []byte(`{"version":1,"method":"rm.rf"}` + "\n"), api.CodeUnknown},
		{"bad params", []byte(`{"version":1,"method":"test.echo","params":{"n":"x"}}` + "\n"), api.CodeInvalid},
		{"oversized", append(bytes.Repeat([]byte("a"), MaxRequestFrame+10), '\n'), api.CodeInvalid},
		{"oversized no newline", bytes.Repeat([]byte(" "), MaxRequestFrame+100<<10), api.CodeInvalid},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			frames := rawExchange(t, h.path, c.payload)
			if len(frames) != 1 || !frames[0].Done || frames[0].Error == nil {
				t.Fatalf("frames = %+v, want one final error frame", frames)
			}
			if e := frames[0].Error; e.Code != c.code || !opid.Valid(e.OpID) || e.OpID != frames[0].OpID {
				t.Fatalf("error = %+v, want code %s with op id", e, c.code)
			}
		})
	}
	// A good request on a raw connection still works afterwards.
	frames := rawExchange(t, h.path, []byte(`{"version":1,"method":"test.echo","params":{"n":2}}`+"\n"))
	if len(frames) != 1 || frames[0].Error != nil || !strings.Contains(string(frames[0].Result), `"n":4`) {
		t.Fatalf("good request after hostile ones: %+v", frames)
	}
}

func TestHostileInputFrame(t *testing.T) {
	h := newHarness(t, ownUID())
	h.srv.Handle("test.stdin", func(ctx context.Context, c *Call) (any, error) {
		for range c.Input() {
		}
		<-ctx.Done()
		return nil, ctx.Err()
	})
	for name, payload := range map[string][]byte{
		"garbage":       []byte("{{{\n"),
		"unknown field": []byte(`{"exec":"/bin/sh"}` + "\n"),
		"oversized":     append(bytes.Repeat([]byte("a"), MaxInputFrame+1), '\n'),
	} {
		t.Run(name, func(t *testing.T) {
			req := []byte(`{"version":1,"method":"test.stdin"}` + "\n")
			frames := rawExchange(t, h.path, append(req, payload...))
			if len(frames) != 1 || frames[0].Error == nil || frames[0].Error.Code != api.CodeInvalid {
				t.Fatalf("frames = %+v, want one invalid error", frames)
			}
		})
	}
}

func TestClientRejectsOversizedRequest(t *testing.T) {
	h := newHarness(t, ownUID())
	h.srv.Handle("test.echo", echoHandler)
	err := h.client.Call(context.Background(), "test.echo", map[string]string{"name": strings.Repeat("a", MaxRequestFrame)}, nil)
	if !errors.Is(err, api.ErrInvalid) {
		t.Fatalf("err = %v", err)
	}
}

func TestResultDecodeError(t *testing.T) {
	h := newHarness(t, ownUID())
	h.srv.Handle("test.str", func(ctx context.Context, c *Call) (any, error) { return "text", nil })
	var n int
	err := h.client.Call(context.Background(), "test.str", nil, &n)
	if err == nil || !strings.Contains(err.Error(), "decode result") {
		t.Fatalf("err = %v", err)
	}
}

func TestConcurrentCalls(t *testing.T) {
	h := newHarness(t, ownUID())
	h.srv.Handle("test.echo", echoHandler)
	errc := make(chan error, 20)
	for i := range 20 {
		go func() {
			var res echoResult
			err := h.client.Call(context.Background(), "test.echo", echoParams{N: i}, &res)
			if err == nil && res.N != 2*i {
				err = fmt.Errorf("call %d got %d", i, res.N)
			}
			errc <- err
		}()
	}
	for range 20 {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
}

func TestReadFrame(t *testing.T) {
	in := "a\n\nbb\n" + strings.Repeat("c", 10) + "\n" + "tail"
	br := bufio.NewReaderSize(strings.NewReader(in), 16) // frames span buffer refills
	var got []string
	for {
		f, err := readFrame(br, 10)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, string(f))
	}
	want := []string{"a", "", "bb", strings.Repeat("c", 10), "tail"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("frames = %q, want %q", got, want)
	}
	for _, in := range []string{strings.Repeat("x", 11) + "\n", strings.Repeat("x", 40) + "\n", strings.Repeat("x", 11)} {
		if _, err := readFrame(bufio.NewReaderSize(strings.NewReader(in), 16), 10); !errors.Is(err, errFrameTooLarge) {
			t.Errorf("readFrame(%d bytes) err = %v, want too large", len(in), err)
		}
	}
}
