package agent

import (
	"errors"
	"fmt"
	"time"
	"unicode/utf8"
)

// Sessions are long-running commands the agent supervises (see
// session_linux.go): started detached, each under a PTY of its own, with
// their output kept in a ring and a capped log file, their state in a small
// JSON file, so they outlive the host's call, the daemon and the agent.

// Session states.
const (
	SessionRunning = "running"
	SessionExited  = "exited" // the process exited; ExitCode holds its code
	SessionEnded   = "ended"  // gone without an exit code; Reason says why
)

// Reasons of an ended session.
const (
	ReasonVMStopped      = "vm stopped"      // the guest rebooted under it
	ReasonSupervisorLost = "supervisor lost" // its supervisor died (killed)
)

// Session limits. The host enforces the ones on what the agent reports.
const (
	MaxSessions       = 256      // per guest, running or ended
	maxSessionsJSON   = 4 << 20  // a session list reply
	MaxSessionCommand = 16 << 10 // the command line
	maxSessionDir     = 4096
	maxSessionEnv     = 64 << 10 // all of --env together
	maxLastOutput     = 256
	maxReason         = 128
	// SessionRing is the recent output a supervisor keeps for attach.
	SessionRing = 256 << 10
	// SessionLogSegment is one of the two files of a session's log: at most
	// 2*SessionLogSegment bytes on disk, the newest kept.
	SessionLogSegment = 8 << 20
)

var (
	// ErrSessionNotFound: no session of that name.
	ErrSessionNotFound = errors.New("no such session")
	// ErrSessionExists: a running session has that name.
	ErrSessionExists = errors.New("session exists")
	// ErrSessionEnded: the session is not running.
	ErrSessionEnded = errors.New("session has ended")
	// ErrSessionInvalid: a bad name, command, environment or signal.
	ErrSessionInvalid = errors.New("invalid session request")
)

// Session is one supervised command as the agent reports it.
type Session struct {
	Name       string    `json:"name"`
	Command    string    `json:"command"`
	Dir        string    `json:"dir,omitempty"`
	State      string    `json:"state"`
	ExitCode   *int      `json:"exit_code,omitempty"` // with SessionExited
	Reason     string    `json:"reason,omitempty"`    // with SessionEnded
	PID        int       `json:"pid,omitempty"`
	Started    time.Time `json:"started"`
	Ended      time.Time `json:"ended,omitzero"`
	LastOutput string    `json:"last_output,omitempty"` // the last non-empty line of output
}

// SessionSpec is a session to start.
type SessionSpec struct {
	Name    string            `json:"name,omitempty"` // "" = derived from the command
	Command string            `json:"command"`        // run by the login shell with -c
	Env     map[string]string `json:"env,omitempty"`
	Dir     string            `json:"dir,omitempty"` // relative to the home directory; "" = home
	Cols    int               `json:"cols,omitempty"`
	Rows    int               `json:"rows,omitempty"`
}

// AttachResult is how an attach ended: the host detached, or the session
// ended (with its exit code; -1 when unknown).
type AttachResult struct {
	Detached bool `json:"detached,omitempty"`
	Ended    bool `json:"ended,omitempty"`
	ExitCode int  `json:"exit_code"`
}

// sessionReq is the session part of a request, to the agent and from the
// agent to a session's supervisor.
type sessionReq struct {
	Name   string       `json:"name,omitempty"`
	Spec   *SessionSpec `json:"spec,omitempty"`   // start
	Tail   int          `json:"tail,omitempty"`   // logs: the last N lines; 0 = all kept
	Follow bool         `json:"follow,omitempty"` // logs
	Signal string       `json:"signal,omitempty"` // kill
	EOF    bool         `json:"eof,omitempty"`    // send: end with the terminal's EOF character
	Resize *Winsize     `json:"resize,omitempty"` // resize, attach
}

// ValidSessionName checks a session name: [a-z0-9][a-z0-9-_.]{0,62}. It is
// a file name in the guest, so nothing else is allowed.
func ValidSessionName(n string) error {
	if n == "" || len(n) > 63 {
		return fmt.Errorf("%w: session name %q: 1 to 63 characters", ErrSessionInvalid, printable(n, 80))
	}
	for i := 0; i < len(n); i++ {
		c := n[i]
		ok := c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || i > 0 && (c == '-' || c == '_' || c == '.')
		if !ok {
			return fmt.Errorf("%w: session name %q: want [a-z0-9][a-z0-9-_.]*", ErrSessionInvalid, printable(n, 80))
		}
	}
	return nil
}

// validate checks a session the agent reported: the host trusts none of it.
func (s Session) validate() error {
	if err := ValidSessionName(s.Name); err != nil {
		return fmt.Errorf("%w: %v", ErrProtocol, err)
	}
	switch {
	case len(s.Command) > MaxSessionCommand || !utf8.ValidString(s.Command):
		return fmt.Errorf("%w: session %s: command of %d bytes", ErrProtocol, s.Name, len(s.Command))
	case len(s.Dir) > maxSessionDir || !utf8.ValidString(s.Dir):
		return fmt.Errorf("%w: session %s: dir of %d bytes", ErrProtocol, s.Name, len(s.Dir))
	case len(s.LastOutput) > maxLastOutput || !utf8.ValidString(s.LastOutput):
		return fmt.Errorf("%w: session %s: last output of %d bytes", ErrProtocol, s.Name, len(s.LastOutput))
	case s.PID < 0 || s.PID > 1<<22:
		return fmt.Errorf("%w: session %s: pid %d", ErrProtocol, s.Name, s.PID)
	case s.ExitCode != nil && (*s.ExitCode < 0 || *s.ExitCode > 255):
		return fmt.Errorf("%w: session %s: exit code %d", ErrProtocol, s.Name, *s.ExitCode)
	}
	switch s.State {
	case SessionRunning, SessionExited, SessionEnded:
	default:
		return fmt.Errorf("%w: session %s: state %q", ErrProtocol, s.Name, token(s.State, 16))
	}
	return checkText("session reason", s.Reason, maxReason)
}

// errCode is the wire code of a session error, "" for others.
func errCode(err error) string {
	for code, s := range sessionCodes {
		if errors.Is(err, s) {
			return code
		}
	}
	return ""
}

var sessionCodes = map[string]error{
	"not_found": ErrSessionNotFound, "exists": ErrSessionExists, "ended": ErrSessionEnded, "invalid": ErrSessionInvalid,
}

func codeSentinel(code string) error { return sessionCodes[code] }
