package download

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/api"
)

var blob = bytes.Repeat([]byte("z"), 64<<10)

// server serves blob: whole, stalled after 1000 bytes (with or without a
// Content-Length), or 1 KiB every 100 ms; /no-headers never answers.
func server(t *testing.T) *httptest.Server {
	stop := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		wait := func() {
			select {
			case <-stop:
			case <-r.Context().Done():
			}
		}
		switch r.URL.Path {
		case "/blob":
			w.Write(blob)
		case "/no-headers":
			wait()
		case "/stall":
			w.Header().Set("Content-Length", "65536")
			w.Write(blob[:1000])
			w.(http.Flusher).Flush()
			wait()
		case "/stall-chunked": // no Content-Length: chunked encoding
			w.Write(blob[:1000])
			w.(http.Flusher).Flush()
			wait()
		case "/trickle":
			for i := 0; i < 13; i++ {
				w.Write(blob[:1024])
				w.(http.Flusher).Flush()
				time.Sleep(100 * time.Millisecond)
			}
		case "/header":
			io.WriteString(w, r.Header.Get("Range"))
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(stop) }) // runs first: unblocks the handlers
	return srv
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// fetch GETs url and reads the whole body.
func fetch(ctx context.Context, g *Getter, url string, hdr http.Header) ([]byte, error) {
	resp, body, cancel, err := g.Get(ctx, "blob", url, hdr)
	if err != nil {
		return nil, err
	}
	defer cancel()
	defer resp.Body.Close()
	return io.ReadAll(body)
}

func TestGet(t *testing.T) {
	srv := server(t)
	g := &Getter{Insecure: true}
	got, err := fetch(ctxT(t), g, srv.URL+"/blob", nil)
	if err != nil || !bytes.Equal(got, blob) {
		t.Fatalf("got %d bytes, %v; want the %d-byte blob", len(got), err, len(blob))
	}
	got, err = fetch(ctxT(t), g, srv.URL+"/header", http.Header{"Range": {"bytes=5-"}})
	if err != nil || string(got) != "bytes=5-" {
		t.Fatalf("server saw Range %q (%v), want the one passed", got, err)
	}
}

// A body that stops arriving fails after IdleTimeout, with or without a
// Content-Length, and the error says so (not "context canceled" nor a
// clean EOF with a short body).
func TestIdleTimeout(t *testing.T) {
	srv := server(t)
	for _, path := range []string{"/stall", "/stall-chunked"} {
		t.Run(path, func(t *testing.T) {
			g := &Getter{Insecure: true, IdleTimeout: 300 * time.Millisecond}
			start := time.Now()
			got, err := fetch(ctxT(t), g, srv.URL+path, nil)
			d := time.Since(start)
			if err == nil || !strings.Contains(err.Error(), "no data for 300ms (idle timeout)") {
				t.Fatalf("stalled body: %d bytes, err %v; want the idle timeout", len(got), err)
			}
			if d > 5*time.Second {
				t.Errorf("stalled body failed after %v, want about 300ms", d)
			}
		})
	}
}

// A slow body that keeps sending is not cut off: IdleTimeout bounds a
// stall, not the transfer.
func TestIdleTimeoutIsNotATotalTimeout(t *testing.T) {
	srv := server(t)
	g := &Getter{Insecure: true, IdleTimeout: 400 * time.Millisecond}
	start := time.Now()
	got, err := fetch(ctxT(t), g, srv.URL+"/trickle", nil)
	if err != nil || len(got) != 13<<10 {
		t.Fatalf("trickle: %d bytes, %v", len(got), err)
	}
	if d := time.Since(start); d < 2*g.IdleTimeout {
		t.Fatalf("download took %v: the test does not outlast the idle timeout", d)
	}
}

// eofReader ends cleanly, as a cancelled chunked body may.
type eofReader struct{}

func (eofReader) Read([]byte) (int, error) { return 0, io.EOF }

// Once the idle timeout fired, even a clean-looking io.EOF is reported as
// the timeout: the body may be cut short.
func TestIdleReaderEOFAfterTimeout(t *testing.T) {
	errIdle := errors.New("no data for 1s (idle timeout)")
	ctx, cancel := context.WithCancelCause(context.Background())
	cancel(errIdle)
	r := &idleReader{r: eofReader{}, timer: time.NewTimer(time.Hour), idle: time.Hour, ctx: ctx}
	if _, err := r.Read(make([]byte, 1)); !errors.Is(err, errIdle) {
		t.Fatalf("EOF after the idle timeout fired: %v, want the timeout", err)
	}
	// Cancelled by the caller (cancel, no cause): EOF stays EOF.
	ctx, cancel = context.WithCancelCause(context.Background())
	cancel(nil)
	r.ctx = ctx
	if _, err := r.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("EOF after a plain cancel: %v, want io.EOF", err)
	}
}

// A server that never sends headers fails after HeaderTimeout.
func TestHeaderTimeout(t *testing.T) {
	srv := server(t)
	g := &Getter{Insecure: true, HeaderTimeout: 300 * time.Millisecond}
	start := time.Now()
	_, err := fetch(ctxT(t), g, srv.URL+"/no-headers", nil)
	if err == nil || !strings.Contains(err.Error(), "timeout") {
		t.Fatalf("no headers: %v, want a timeout", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("failed after %v, want about 300ms", d)
	}
}

// Plain http can be rewritten in transit: refused, before any request,
// unless Insecure; other schemes always.
func TestSchemePolicy(t *testing.T) {
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits.Add(1) }))
	defer srv.Close()
	_, err := fetch(ctxT(t), &Getter{}, srv.URL+"/x", nil)
	if !errors.Is(err, api.ErrInvalid) || !strings.Contains(err.Error(), "blob "+srv.URL+"/x is plain http, which anyone on the path can rewrite; use https or --insecure") {
		t.Fatalf("plain http: %v, want ErrInvalid naming --insecure", err)
	}
	if n := hits.Load(); n != 0 {
		t.Errorf("%d requests over refused http", n)
	}
	_, err = fetch(ctxT(t), &Getter{Insecure: true}, "ftp://example.com/x", nil)
	if !errors.Is(err, api.ErrInvalid) || !strings.Contains(err.Error(), "want https") {
		t.Fatalf("ftp: %v, want ErrInvalid", err)
	}
	if _, err := fetch(ctxT(t), &Getter{Insecure: true}, srv.URL+"/x", nil); err != nil || hits.Load() != 1 {
		t.Fatalf("with Insecure: %v (%d requests)", err, hits.Load())
	}
}

// An https server redirecting to http is refused unless Insecure, with an
// injected client whether or not it has a CheckRedirect of its own.
func TestRedirectToHTTP(t *testing.T) {
	plain := server(t)
	red := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, plain.URL+r.URL.Path, http.StatusFound)
	}))
	defer red.Close()
	var ownCalled atomic.Int32
	own := *red.Client()
	own.CheckRedirect = func(*http.Request, []*http.Request) error { ownCalled.Add(1); return nil }
	for name, c := range map[string]*http.Client{"plain client": red.Client(), "own CheckRedirect": &own} {
		t.Run(name, func(t *testing.T) {
			_, err := fetch(ctxT(t), &Getter{Client: c}, red.URL+"/blob", nil)
			if !errors.Is(err, api.ErrInvalid) || !strings.Contains(err.Error(), "redirect "+plain.URL+"/blob is plain http") {
				t.Fatalf("https -> http redirect: %v, want ErrInvalid", err)
			}
			got, err := fetch(ctxT(t), &Getter{Client: c, Insecure: true}, red.URL+"/blob", nil)
			if err != nil || !bytes.Equal(got, blob) {
				t.Fatalf("with Insecure: %d bytes, %v", len(got), err)
			}
		})
	}
	if ownCalled.Load() != 1 {
		t.Errorf("the client's own CheckRedirect ran %d times, want once (after ours allowed the redirect)", ownCalled.Load())
	}
}

func TestRedirectLimit(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/again", http.StatusFound)
	}))
	defer srv.Close()
	_, err := fetch(ctxT(t), &Getter{Insecure: true}, srv.URL+"/start", nil)
	if err == nil || !strings.Contains(err.Error(), "stopped after 10 redirects") {
		t.Fatalf("endless redirects: %v", err)
	}
}
