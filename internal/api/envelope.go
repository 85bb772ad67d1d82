package api

import (
	"encoding/json"
	"time"
)

// Version is the wire protocol version carried in every Request. A server
// refuses any other version with CodeInvalid.
const Version = 1

// Request is the first frame a client sends on a connection. One request per
// connection; frames are newline-delimited JSON in both directions. Unknown
// fields are rejected: extending the envelope means bumping Version.
type Request struct {
	Version int             `json:"version"`
	Method  string          `json:"method"`
	Params  json.RawMessage `json:"params,omitempty"`
	// OpID is a forwarded operation id (e.g. daemon → helper); the server
	// adopts it when well-formed and mints its own otherwise.
	OpID string `json:"op_id,omitempty"`
}

// Response is a server → client frame: zero or more frames carrying Event,
// then exactly one final frame with Done=true carrying Result or Error.
type Response struct {
	OpID   string          `json:"op_id"`
	Event  *Event          `json:"event,omitempty"`
	Done   bool            `json:"done,omitempty"`
	Result json.RawMessage `json:"result,omitempty"`
	Error  *Error          `json:"error,omitempty"`
}

// Event is progress or output streamed before the final frame.
type Event struct {
	// Stage names a step of a long operation ("disk", "tap", "vmm_launch",
	// "wait_ready", ...); Message is its human text.
	Stage   string `json:"stage,omitempty"`
	Message string `json:"message,omitempty"`
	// Stream is "stdout" or "stderr" for exec output carried in Data.
	Stream string `json:"stream,omitempty"`
	Data   []byte `json:"data,omitempty"`
	// Current and Total give optional byte progress.
	Current int64 `json:"current,omitempty"`
	Total   int64 `json:"total,omitempty"`
	// At is when the stage began, set on stages replayed to a client that
	// attached later (vm.wait), so it can time them.
	At time.Time `json:"at,omitzero"`
}

// Stream names used in Event.Stream.
const (
	StreamStdout = "stdout"
	StreamStderr = "stderr"
)

// Input is a client → server frame sent after the Request (exec stdin,
// terminal resizes, signals).
type Input struct {
	Stdin  []byte   `json:"stdin,omitempty"`
	EOF    bool     `json:"eof,omitempty"`
	Resize *Winsize `json:"resize,omitempty"`
	Signal string   `json:"signal,omitempty"`
}

// Winsize is a terminal size in character cells.
type Winsize struct {
	Cols int `json:"cols"`
	Rows int `json:"rows"`
}
