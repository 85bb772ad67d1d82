// Package rpc is banger's unix-socket transport: one request per connection,
// newline-delimited JSON frames both ways (see api.Request / api.Response),
// peer uid checked on every connection. It knows nothing about VMs; handlers
// are registered by method name and domain errors are mapped to wire codes
// here, at the boundary, with api.CodeOf.
package rpc

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/banger-dev/banger/internal/api"
)

// Frame size limits. Anything larger is refused rather than buffered.
// Requests carry names, flags and short argument lists, so 1 MiB is ample;
// stdin frames carry at most streamChunk bytes (base64 in JSON).
const (
	MaxRequestFrame  = 1 << 20   // the request, params included
	MaxInputFrame    = 512 << 10 // one client → server frame after the request
	MaxResponseFrame = 64 << 20  // one server → client frame (a large result)
	maxMethodLen     = 64
	// streamChunk bounds the data carried by one output or stdin frame.
	streamChunk = 256 << 10
)

var errFrameTooLarge = errors.New("frame too large")

// readFrame returns the next newline-terminated frame without its newline.
// An unterminated final frame at EOF is returned as a frame; a clean EOF
// with nothing pending is io.EOF. It never buffers more than max+1 bytes
// of one frame.
func readFrame(r *bufio.Reader, max int) ([]byte, error) {
	var buf []byte
	for {
		chunk, err := r.ReadSlice('\n')
		buf = append(buf, chunk...)
		switch {
		case err == nil:
			if len(buf)-1 > max {
				return nil, fmt.Errorf("%w: over %d bytes", errFrameTooLarge, max)
			}
			return buf[:len(buf)-1], nil
		case errors.Is(err, bufio.ErrBufferFull):
			if len(buf) > max {
				return nil, fmt.Errorf("%w: over %d bytes", errFrameTooLarge, max)
			}
		case errors.Is(err, io.EOF) && len(buf) > 0:
			if len(buf) > max {
				return nil, fmt.Errorf("%w: over %d bytes", errFrameTooLarge, max)
			}
			return buf, nil
		default:
			return nil, err
		}
	}
}

// decodeStrict decodes exactly one JSON value from b into v, rejecting
// unknown fields and trailing data.
func decodeStrict(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("trailing data after JSON value")
	}
	return nil
}

// decodeRequest parses and validates one request frame. Every failure wraps
// api.ErrInvalid. An ill-formed forwarded op id is not an error: the server
// replaces it with one of its own.
func decodeRequest(b []byte) (api.Request, error) {
	var req api.Request
	if err := decodeStrict(b, &req); err != nil {
		return api.Request{}, fmt.Errorf("%w: malformed request: %v", api.ErrInvalid, err)
	}
	if req.Version != api.Version {
		return api.Request{}, fmt.Errorf("%w: unsupported protocol version %d (this server speaks %d)",
			api.ErrInvalid, req.Version, api.Version)
	}
	if !validMethod(req.Method) {
		return api.Request{}, fmt.Errorf("%w: malformed method name", api.ErrInvalid)
	}
	return req, nil
}

// validMethod accepts names like "vm.create" or "vm.ssh_info".
func validMethod(m string) bool {
	if m == "" || len(m) > maxMethodLen {
		return false
	}
	for i := 0; i < len(m); i++ {
		c := m[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}
