package kernel

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/api"
)

// TestPlainHTTPCatalogNeedsInsecure: a catalog (or a download) over http://
// can be rewritten in transit; it is refused unless the user said --insecure.
func TestPlainHTTPCatalogNeedsInsecure(t *testing.T) {
	imp, _, _ := newTestImporter(t, nil)
	cs := newCatalogServer(t, map[string][]byte{"/catalog.json": []byte(`{"kernels": []}`), "/blob": []byte("x")})
	p := &Puller{Importer: imp}
	_, err := p.FetchCatalog(context.Background(), cs.url+"/catalog.json")
	if !errors.Is(err, api.ErrInvalid) || !strings.Contains(err.Error(), "--insecure") {
		t.Fatalf("plain-http catalog: %v, want ErrInvalid mentioning --insecure", err)
	}
	_, err = p.Download(context.Background(), Artifact{URL: cs.url + "/blob", SHA256: sum([]byte("x"))}, "blob", func(PullProgress) {})
	if !errors.Is(err, api.ErrInvalid) || !strings.Contains(err.Error(), "--insecure") {
		t.Fatalf("plain-http download: %v, want ErrInvalid mentioning --insecure", err)
	}
	p.Insecure = true
	if _, err := p.FetchCatalog(context.Background(), cs.url+"/catalog.json"); err != nil {
		t.Fatalf("with Insecure: %v", err)
	}
}

// TestDownloadTimeouts: a server that never answers, or stops sending in
// the middle, fails the download within the stated timeouts; one that is
// slow but keeps sending finishes however long it takes.
func TestDownloadTimeouts(t *testing.T) {
	blob := bytes.Repeat([]byte("z"), 64<<10)
	stop := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/no-headers":
			select {
			case <-stop:
			case <-r.Context().Done():
			}
		case "/stall":
			w.Header().Set("Content-Length", "65536")
			_, _ = w.Write(blob[:1000])
			w.(http.Flusher).Flush()
			select {
			case <-stop:
			case <-r.Context().Done():
			}
		case "/slow":
			w.Header().Set("Content-Length", "65536")
			for i := 0; i < len(blob); i += 8 << 10 {
				_, _ = w.Write(blob[i : i+8<<10])
				w.(http.Flusher).Flush()
				time.Sleep(100 * time.Millisecond)
			}
		}
	}))
	defer srv.Close()
	defer close(stop)
	imp, _, _ := newTestImporter(t, nil)
	p := &Puller{Importer: imp, Insecure: true, HeaderTimeout: 300 * time.Millisecond, IdleTimeout: 300 * time.Millisecond}
	for _, path := range []string{"/no-headers", "/stall"} {
		t.Run(path, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			t0 := time.Now()
			_, err := p.Download(ctx, Artifact{URL: srv.URL + path, SHA256: sum(blob)}, "blob", func(PullProgress) {})
			d := time.Since(t0)
			t.Logf("%s: %v after %v", path, err, d)
			if err == nil || d > 3*time.Second {
				t.Fatalf("stalled server: err %v after %v, want a timeout error within 3s", err, d)
			}
			if !strings.Contains(err.Error(), "timeout") && !strings.Contains(err.Error(), "no data") {
				t.Errorf("error %q does not say it timed out", err)
			}
		})
	}
	t.Run("slow but steady", func(t *testing.T) {
		got, err := p.Download(context.Background(), Artifact{URL: srv.URL + "/slow", SHA256: sum(blob)}, "slow", func(PullProgress) {})
		if err != nil {
			t.Fatalf("slow download (~800 ms, idle timeout 300 ms): %v", err)
		}
		t.Logf("slow download ok: %s", got)
	})
}
