// Package download issues the HTTP GETs banger fetches artifacts with
// (kernel catalogs and files, npm metadata and tarballs): only https unless
// Insecure, redirects checked the same way, connect, TLS and
// response-header timeouts on the client and an idle timeout, never a total
// one, on the body.
package download

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/banger-dev/banger/internal/api"
)

// Default timeouts.
const (
	DefaultConnectTimeout = 30 * time.Second
	DefaultTLSTimeout     = 30 * time.Second
	DefaultHeaderTimeout  = 60 * time.Second
	DefaultIdleTimeout    = 60 * time.Second
)

// maxRedirects bounds a redirect chain.
const maxRedirects = 10

// Getter issues GETs. Set its fields before the first Get; it must not be
// copied after that.
type Getter struct {
	// Insecure allows http:// (also as a redirect target); otherwise
	// anything but https is refused.
	Insecure bool
	// Timeouts (zero = the defaults above). A transfer may take as long as
	// it needs while bytes keep arriving; IdleTimeout bounds a stall.
	ConnectTimeout, TLSTimeout, HeaderTimeout, IdleTimeout time.Duration
	// Client does the requests; nil = one built from the timeouts. Either
	// way redirects are checked (scheme, at most 10) before the client's
	// own CheckRedirect, if it has one.
	Client *http.Client

	once  sync.Once
	built *http.Client
}

func orDefault(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

// CheckScheme refuses anything but https unless Insecure (then http too).
// what names the URL in the error.
func (g *Getter) CheckScheme(what string, u *url.URL) error {
	switch {
	case u.Scheme == "https":
		return nil
	case u.Scheme == "http" && g.Insecure:
		return nil
	case u.Scheme == "http":
		return fmt.Errorf("%s %s is plain http, which anyone on the path can rewrite; use https or --insecure: %w", what, u.Redacted(), api.ErrInvalid)
	}
	return fmt.Errorf("%s %q: want https: %w", what, u.Redacted(), api.ErrInvalid)
}

func (g *Getter) checkRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= maxRedirects {
		return fmt.Errorf("stopped after %d redirects", maxRedirects)
	}
	return g.CheckScheme("redirect", req.URL)
}

// client is built once, so successive requests share connections.
func (g *Getter) client() *http.Client {
	g.once.Do(func() {
		if g.Client != nil {
			c := *g.Client
			if own := c.CheckRedirect; own != nil {
				c.CheckRedirect = func(req *http.Request, via []*http.Request) error {
					if err := g.checkRedirect(req, via); err != nil {
						return err
					}
					return own(req, via)
				}
			} else {
				c.CheckRedirect = g.checkRedirect
			}
			g.built = &c
			return
		}
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.DialContext = (&net.Dialer{Timeout: orDefault(g.ConnectTimeout, DefaultConnectTimeout), KeepAlive: 30 * time.Second}).DialContext
		tr.TLSHandshakeTimeout = orDefault(g.TLSTimeout, DefaultTLSTimeout)
		tr.ResponseHeaderTimeout = orDefault(g.HeaderTimeout, DefaultHeaderTimeout)
		g.built = &http.Client{Transport: tr, CheckRedirect: g.checkRedirect}
	})
	return g.built
}

// Get issues a GET of rawURL with the extra header hdr (may be nil); what
// names it in errors. Reads of the returned body fail once no byte arrived
// for IdleTimeout. The caller closes resp.Body and calls cancel.
func (g *Getter) Get(ctx context.Context, what, rawURL string, hdr http.Header) (*http.Response, io.Reader, context.CancelFunc, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("%s url %q: %v: %w", what, rawURL, err, api.ErrInvalid)
	}
	if err := g.CheckScheme(what, u); err != nil {
		return nil, nil, nil, err
	}
	idle := orDefault(g.IdleTimeout, DefaultIdleTimeout)
	ctx, cancelCause := context.WithCancelCause(ctx)
	errIdle := fmt.Errorf("no data for %v (idle timeout)", idle)
	timer := time.AfterFunc(idle, func() { cancelCause(errIdle) })
	timer.Stop() // the header phase has the client's own timeout
	cancel := func() { timer.Stop(); cancelCause(nil) }
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		cancel()
		return nil, nil, nil, fmt.Errorf("%s: %w", what, err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := g.client().Do(req)
	if err != nil {
		cancel()
		return nil, nil, nil, fmt.Errorf("%s: %w", what, err)
	}
	timer.Reset(idle)
	return resp, &idleReader{r: resp.Body, timer: timer, idle: idle, ctx: ctx}, cancel, nil
}

// idleReader pushes the idle deadline back on every byte read and reports
// the idle timeout, not a bare "context canceled", when it fired. A
// cancelled chunked response may end in a clean-looking io.EOF: after the
// timeout fired, that is reported as the timeout too.
type idleReader struct {
	r     io.Reader
	timer *time.Timer
	idle  time.Duration
	ctx   context.Context
}

func (r *idleReader) Read(b []byte) (int, error) {
	n, err := r.r.Read(b)
	if n > 0 {
		r.timer.Reset(r.idle)
	}
	if err != nil {
		if cause := context.Cause(r.ctx); cause != nil && !errors.Is(cause, context.Canceled) {
			err = cause
		}
	}
	return n, err
}
