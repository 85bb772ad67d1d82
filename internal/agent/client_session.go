package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
)

// SessionStart starts a supervised session and returns it; it does not wait
// for the command.
func (c *Client) SessionStart(ctx context.Context, spec SessionSpec) (Session, error) {
	if spec.Name != "" {
		if err := ValidSessionName(spec.Name); err != nil {
			return Session{}, err
		}
	}
	cl, err := c.open(ctx, request{Op: opSessionStart, Session: &sessionReq{Spec: &spec}})
	if err != nil {
		return Session{}, err
	}
	defer cl.close()
	var ses Session
	if err := cl.result(nil, nil, &ses); err != nil {
		return Session{}, err
	}
	if err := ses.validate(); err != nil {
		return Session{}, fmt.Errorf("agent %s: %w", opSessionStart, err)
	}
	return ses, nil
}

// SessionList lists the guest's sessions, running and ended, at most
// MaxSessions.
func (c *Client) SessionList(ctx context.Context) ([]Session, error) {
	cl, err := c.open(ctx, request{Op: opSessionList})
	if err != nil {
		return nil, err
	}
	defer cl.close()
	buf := &limitBuffer{max: maxSessionsJSON}
	if err := cl.result(buf, nil, nil); err != nil {
		return nil, err
	}
	var list []Session
	if err := json.Unmarshal(buf.b, &list); err != nil {
		return nil, fmt.Errorf("agent %s: %w: %v", opSessionList, ErrProtocol, err)
	}
	if len(list) > MaxSessions {
		return nil, fmt.Errorf("agent %s: %w: %d sessions exceed %d", opSessionList, ErrProtocol, len(list), MaxSessions)
	}
	seen := map[string]bool{}
	for _, s := range list {
		if err := s.validate(); err != nil {
			return nil, fmt.Errorf("agent %s: %w", opSessionList, err)
		}
		if seen[s.Name] {
			return nil, fmt.Errorf("agent %s: %w: session %s listed twice", opSessionList, ErrProtocol, s.Name)
		}
		seen[s.Name] = true
	}
	return list, nil
}

// SessionLogs writes the last tail lines of a session's log (all of it with
// 0) to w; with follow, then what it prints until it ends or ctx is done.
func (c *Client) SessionLogs(ctx context.Context, name string, tail int, follow bool, w io.Writer) error {
	if err := ValidSessionName(name); err != nil {
		return err
	}
	if tail < 0 {
		return fmt.Errorf("%w: negative tail", ErrSessionInvalid)
	}
	cl, err := c.open(ctx, request{Op: opSessionLogs, Session: &sessionReq{Name: name, Tail: tail, Follow: follow}})
	if err != nil {
		return err
	}
	defer cl.close()
	return cl.result(w, nil, nil)
}

// AttachRequest is the terminal of an attach.
type AttachRequest struct {
	Stdin  io.Reader // to the session's terminal; its EOF detaches (nil: output only, until ctx ends)
	Stdout io.Writer // the recent output, then live output
	Size   *Winsize  // the terminal's size at attach, if known
	Resize <-chan Winsize
}

// SessionAttach joins a session's terminal: the recent output first, then
// live output; Stdin is typed into the session. It returns when Stdin ends
// (detached: the session keeps running), when the session ends (with its
// exit code), or when ctx ends (an error; the session keeps running).
func (c *Client) SessionAttach(ctx context.Context, name string, r AttachRequest) (AttachResult, error) {
	if err := ValidSessionName(name); err != nil {
		return AttachResult{}, err
	}
	if r.Size != nil && !validSize(r.Size.Cols, r.Size.Rows) {
		r.Size = nil
	}
	cl, err := c.open(ctx, request{Op: opSessionAttach, Session: &sessionReq{Name: name, Resize: r.Size}})
	if err != nil {
		return AttachResult{}, err
	}
	defer cl.close()
	done := make(chan struct{})
	defer close(done)
	if r.Stdin != nil {
		go func() {
			if _, werr := cl.fw.pumpData(frameInput, r.Stdin); werr != nil {
				return
			}
			_ = cl.fw.write(frameInEOF, nil)
		}()
	}
	if r.Resize != nil {
		go func() {
			for {
				select {
				case <-done:
					return
				case ws, ok := <-r.Resize:
					if !ok {
						return
					}
					if !validSize(ws.Cols, ws.Rows) {
						continue
					}
					if err := c.sessionSimple(ctx, opSessionResize, &sessionReq{Name: name, Resize: &ws}); err != nil {
						c.log.Debug("agent session resize", "err", err)
					}
				}
			}
		}()
	}
	out := r.Stdout
	if out == nil {
		out = io.Discard
	}
	var res AttachResult
	if err := cl.result(out, nil, &res); err != nil {
		return AttachResult{}, err
	}
	if res.Detached == res.Ended || res.ExitCode < -1 || res.ExitCode > 255 {
		return AttachResult{}, fmt.Errorf("agent %s: %w: result %+v", opSessionAttach, ErrProtocol, res)
	}
	return res, nil
}

// SessionSend types in into a session's terminal; with eof, then the
// terminal's EOF character (^D). The session's own input is not closed.
func (c *Client) SessionSend(ctx context.Context, name string, in io.Reader, eof bool) error {
	if err := ValidSessionName(name); err != nil {
		return err
	}
	cl, err := c.open(ctx, request{Op: opSessionSend, Session: &sessionReq{Name: name, EOF: eof}})
	if err != nil {
		return err
	}
	defer cl.close()
	readErr := make(chan error, 1)
	go func() {
		rerr, werr := cl.fw.pumpData(frameInput, in)
		switch {
		case werr != nil:
		case rerr != nil:
			readErr <- rerr
			_ = cl.st.Close() // no end-of-input: the agent aborts
		default:
			_ = cl.fw.write(frameInEOF, nil)
		}
	}()
	err = cl.result(nil, nil, nil)
	select {
	case rerr := <-readErr:
		return fmt.Errorf("agent %s: reading input: %w", opSessionSend, rerr)
	default:
	}
	return err
}

// SessionKill sends signal (INT, TERM, HUP, KILL, QUIT, USR1, USR2; "" =
// TERM) to the session's process group. Its exit is recorded by its
// supervisor.
func (c *Client) SessionKill(ctx context.Context, name, signal string) error {
	if err := ValidSessionName(name); err != nil {
		return err
	}
	if signal != "" && !signalNames[signal] {
		return fmt.Errorf("%w: signal %q not allowed", ErrSessionInvalid, printable(signal, 16))
	}
	return c.sessionSimple(ctx, opSessionKill, &sessionReq{Name: name, Signal: signal})
}

func (c *Client) sessionSimple(ctx context.Context, op string, sr *sessionReq) error {
	cl, err := c.open(ctx, request{Op: op, Session: sr})
	if err != nil {
		return err
	}
	defer cl.close()
	return cl.result(nil, nil, nil)
}

// sessionError keeps the sentinel of an agent error frame's code.
func sessionError(op string, m errorMsg) error {
	msg := printable(m.Message, maxErrorText)
	if s := codeSentinel(m.Code); s != nil {
		// The message ends with the sentinel's text when it wrapped it.
		if trimmed, ok := strings.CutSuffix(msg, s.Error()); ok {
			return fmt.Errorf("agent %s: %s%w", op, trimmed, s)
		}
		return fmt.Errorf("agent %s: %s: %w", op, msg, s)
	}
	return errors.New("agent " + op + ": " + msg)
}
