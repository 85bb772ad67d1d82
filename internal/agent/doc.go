// Package agent is the channel between the host daemon and banger-agent
// inside a guest: one byte stream (a virtio-serial port on QEMU, a vsock
// connection on Firecracker) carrying a versioned handshake, then yamux, then
// one yamux stream per operation. The host side is Client, the guest side
// Server.
//
// Trust is one-way: the agent trusts the host, the host treats every byte from
// the agent as hostile. Every host-side reader states its limit and fails
// with an error wrapping ErrProtocol when the agent exceeds it; nothing is
// truncated silently and no guest-sent length is allocated before it has been
// checked.
//
// # Handshake
//
// Text lines, before yamux. The host writes
//
//	BANGER-AGENT-HELLO <major>.<minor> <nonce>\n
//
// where nonce is 16 random hex digits. A serial line may hold stale bytes from
// an earlier session, so the agent discards input until it sees
// "BANGER-AGENT-HELLO " (at most 1 MiB of junk; the HELLO line itself at most
// 4 KiB), then answers
//
//	BANGER-AGENT-OK <major>.<minor> <nonce> <agent-build>\n
//	BANGER-AGENT-ERR <major>.<minor> <nonce> <reason>\n   (major mismatch)
//
// The host likewise discards up to 1 MiB until a reply carrying its nonce.
// Differing majors are refused on both sides (ErrVersion); minors may differ.
// Then the host is the yamux client and the agent the yamux server. Only the
// host opens streams; a stream opened by the agent ends the session.
//
// # Frames
//
// Every stream carries frames: 1 type byte, 4 bytes big-endian payload length,
// payload. Control payloads are JSON of at most 64 KiB, data payloads at most
// 256 KiB, end-of-input is empty.
//
//	'Q' request  host→agent  JSON request; the first frame of every stream
//	'I' input    host→agent  exec stdin, put tar stream, dial bytes
//	'e' in-EOF   host→agent  end of input (always sent; a stream that ends
//	                         without it was aborted by the host; dial: one
//	                         the host closes before 'R' or 'X')
//	'S' started  agent→host  exec: the process runs; dial: connected
//	'O' output   agent→host  exec stdout, get tar stream, ports JSON, dial bytes
//	'E' stderr   agent→host  exec stderr
//	'R' result   agent→host  JSON result; the last frame of a success
//	'X' error    agent→host  JSON error message; the last frame of a failure
//
// A stream closed by the host before 'R' or 'X' aborts the operation: the
// agent kills the process group of an exec. Signals, window changes and kills
// for a running exec travel on a stream of their own (op "ctl", naming the
// exec's stream ID), so they never queue behind stdin the process does not
// read. Flow control is yamux's per-stream window; neither side buffers more
// than a window and a frame or two per stream.
//
// Operations (the "op" of the request): info, exec, ctl, put, get, stats,
// ports, shutdown, identity (1.1: re-identify a guest restored from a
// snapshot; identity.go), dial (1.2: one TCP connection to a port on the
// guest's loopback for `vm forward`: 'S' once connected or 'X' naming why
// not, then 'I'/'e' one way and 'O' then 'R' (EOF) or 'X' (reset) the other,
// each direction ending on its own; forward.go), and the sessions'
// session_start, session_list, session_logs, session_attach (input frames
// are typed into the session's terminal, end-of-input detaches),
// session_send, session_kill and session_resize (session_linux.go). An error frame of a session operation
// may carry a code (not_found, exists, ended, invalid) the client maps to
// ErrSession*.
package agent
