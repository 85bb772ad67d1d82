package rpc

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/api"
)

// syncBuffer is a log sink safe for the server's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// records returns the JSON log records written so far.
func (s *syncBuffer) records(t *testing.T) []map[string]any {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []map[string]any
	for _, line := range bytes.Split(bytes.TrimSpace(s.b.Bytes()), []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		m := map[string]any{}
		if err := json.Unmarshal(line, &m); err != nil {
			t.Fatalf("log line is not JSON: %q", line)
		}
		out = append(out, m)
	}
	return out
}

// harness is an in-process server and client on a socket in a temp dir.
type harness struct {
	srv    *Server
	client *Client
	path   string
	logs   *syncBuffer
	cancel context.CancelFunc
	errc   chan error
}

func newHarness(t *testing.T, allowUID int, opts ...func(*Server)) *harness {
	t.Helper()
	path := filepath.Join(t.TempDir(), "d.sock")
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	h := &harness{
		srv:    NewServer(slog.New(slog.NewJSONHandler(logs, nil)), allowUID),
		client: NewClient(path),
		path:   path,
		logs:   logs,
		errc:   make(chan error, 1),
	}
	for _, o := range opts {
		o(h.srv)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() { h.errc <- h.srv.Serve(ctx, ln) }()
	t.Cleanup(func() { h.stop(t) })
	return h
}

// stop shuts the server down and checks Serve returned cleanly.
func (h *harness) stop(t *testing.T) {
	t.Helper()
	if h.cancel == nil {
		return
	}
	h.cancel()
	h.cancel = nil
	select {
	case err := <-h.errc:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Error("Serve did not return after cancel")
	}
}

// rawExchange writes payload on a fresh connection and returns the frames
// the server answered with, until it closes the connection.
func rawExchange(t *testing.T, path string, payload []byte) []api.Response {
	t.Helper()
	conn, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	return exchangeOn(t, conn, payload)
}

// exchangeOn is rawExchange on a connection already made.
func exchangeOn(t *testing.T, conn net.Conn, payload []byte) []api.Response {
	t.Helper()
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	go func() {
		// May fail once the server gave up on us; the half-close marks the end
		// of an unterminated payload.
		if _, err := conn.Write(payload); err == nil {
			_ = conn.(*net.UnixConn).CloseWrite()
		}
	}()
	var out []api.Response
	sc := bufio.NewScanner(conn)
	sc.Buffer(nil, MaxResponseFrame)
	for sc.Scan() {
		var r api.Response
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("server sent a non-JSON frame %q: %v", sc.Bytes(), err)
		}
		out = append(out, r)
	}
	return out
}

func ownUID() int { return os.Getuid() }
