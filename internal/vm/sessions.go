package vm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/banger-dev/banger/internal/agent"
	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/guest"
	"github.com/banger-dev/banger/internal/store"
)

// Sessions (`vm session`): commands banger-agent supervises in a running VM
// (internal/agent/session_linux.go). The daemon keeps the last list it saw
// per VM in the store (vm_sessions), so a stopped VM still lists its
// sessions, as ended ("vm stopped"), and a restarted daemon knows them.

// SessionStart starts a session in a running VM.
func (s *Service) SessionStart(ctx context.Context, p api.SessionStartParams) (api.Session, error) {
	if len(p.Argv) > 0 && p.Command != "" {
		return api.Session{}, fmt.Errorf("session: give argv or a command, not both: %w", api.ErrInvalid)
	}
	command := p.Command
	if len(p.Argv) > 0 {
		for _, a := range p.Argv {
			if strings.IndexByte(a, 0) >= 0 {
				return api.Session{}, fmt.Errorf("session: argument %q contains NUL: %w", a, api.ErrInvalid)
			}
		}
		command = guest.ShellQuote(p.Argv)
	}
	v, c, err := s.Agent(ctx, p.Name)
	if err != nil {
		return api.Session{}, err
	}
	ses, err := c.SessionStart(ctx, agent.SessionSpec{Name: p.Session, Command: command, Env: p.Env, Dir: p.Dir})
	if err != nil {
		return api.Session{}, sessionErr(v, err)
	}
	if p.Session != "" && ses.Name != p.Session {
		// The agent answers for the session it was asked to start; any
		// other name would overwrite another session's record.
		return api.Session{}, fmt.Errorf("vm %q: agent started session %q when asked for %q: %w", v.Name, ses.Name, p.Session, agent.ErrProtocol)
	}
	if err := s.d.Store.PutSession(ctx, v.ID, storeSession(ses)); err != nil {
		s.d.Log.WarnContext(ctx, "record session", "vm", v.Name, "session", ses.Name, "err", err)
	}
	return sessionView(storeSession(ses)), nil
}

// SessionList lists a VM's sessions: from the agent when the VM runs (and
// recorded), else as last recorded, running ones shown ended.
func (s *Service) SessionList(ctx context.Context, name string) ([]api.Session, error) {
	v, err := s.Get(ctx, name)
	if err != nil {
		return nil, err
	}
	if !s.Running(v) {
		rows, err := s.d.Store.ListSessions(ctx, v.ID)
		if err != nil {
			return nil, err
		}
		out := make([]api.Session, 0, len(rows))
		for _, r := range rows {
			if r.State == api.SessionRunning { // recorded before a stop the hook missed (a crash)
				r.State, r.Reason, r.PID = api.SessionEnded, agent.ReasonVMStopped, 0
			}
			out = append(out, sessionView(r))
		}
		return out, nil
	}
	v, c, err := s.Agent(ctx, name)
	if err != nil {
		return nil, err
	}
	list, err := c.SessionList(ctx)
	if err != nil {
		return nil, sessionErr(v, err)
	}
	rows := make([]store.Session, 0, len(list))
	out := make([]api.Session, 0, len(list))
	for _, ses := range list {
		r := storeSession(ses)
		rows = append(rows, r)
		out = append(out, sessionView(r))
	}
	if err := s.d.Store.ReplaceSessions(ctx, v.ID, rows); err != nil {
		s.d.Log.WarnContext(ctx, "record sessions", "vm", v.Name, "err", err)
	}
	return out, nil
}

// SessionLogs writes a session's log to w: the last tail lines (0: all
// kept), then with follow what it prints until it ends or ctx is done.
func (s *Service) SessionLogs(ctx context.Context, name, session string, tail int, follow bool, w io.Writer) error {
	v, c, err := s.Agent(ctx, name)
	if err != nil {
		return err
	}
	if follow {
		release := s.Hold(v.ID) // someone is watching
		defer release()
	}
	return sessionErr(v, c.SessionLogs(ctx, session, tail, follow, w))
}

// SessionAttach joins a session's terminal until stdin ends (detach), the
// session ends, or ctx is done.
func (s *Service) SessionAttach(ctx context.Context, name, session string, r agent.AttachRequest) (api.SessionAttachResult, error) {
	v, c, err := s.Agent(ctx, name)
	if err != nil {
		return api.SessionAttachResult{}, err
	}
	release := s.Hold(v.ID) // attached: in use
	defer release()
	res, err := c.SessionAttach(ctx, session, r)
	if err != nil {
		return api.SessionAttachResult{}, sessionErr(v, err)
	}
	return api.SessionAttachResult{Detached: res.Detached, Ended: res.Ended, ExitCode: res.ExitCode}, nil
}

// SessionSend types in into a session's terminal (then ^D with eof).
func (s *Service) SessionSend(ctx context.Context, name, session string, in io.Reader, eof bool) error {
	v, c, err := s.Agent(ctx, name)
	if err != nil {
		return err
	}
	return sessionErr(v, c.SessionSend(ctx, session, in, eof))
}

// SessionKill signals a session's process group.
func (s *Service) SessionKill(ctx context.Context, name, session, signal string) error {
	v, c, err := s.Agent(ctx, name)
	if err != nil {
		return err
	}
	return sessionErr(v, c.SessionKill(ctx, session, signal))
}

// endSessions records the VM's running sessions as ended: it stopped.
func (s *Service) endSessions(ctx context.Context, v store.VM) {
	if err := s.d.Store.EndSessions(ctx, v.ID, agent.ReasonVMStopped, s.now()); err != nil {
		s.d.Log.WarnContext(ctx, "mark sessions ended", "vm", v.Name, "err", err)
	}
}

// sessionErr names the VM and maps the agent's session errors to the API's.
func sessionErr(v store.VM, err error) error {
	if err == nil {
		return nil
	}
	for _, m := range []struct{ from, to error }{
		{agent.ErrSessionNotFound, api.ErrNotFound},
		{agent.ErrSessionExists, api.ErrExists},
		{agent.ErrSessionEnded, api.ErrNotRunning},
		{agent.ErrSessionInvalid, api.ErrInvalid},
	} {
		if errors.Is(err, m.from) {
			return fmt.Errorf("vm %q: %w: %w", v.Name, err, m.to)
		}
	}
	return fmt.Errorf("vm %q: %w", v.Name, err)
}

func storeSession(s agent.Session) store.Session {
	return store.Session{Name: s.Name, Command: s.Command, Dir: s.Dir, State: s.State, ExitCode: s.ExitCode, Reason: s.Reason,
		PID: s.PID, StartedAt: s.Started, EndedAt: s.Ended, LastOutput: s.LastOutput}
}

func sessionView(r store.Session) api.Session {
	out := api.Session{Name: r.Name, Command: r.Command, Dir: r.Dir, State: r.State, ExitCode: r.ExitCode, Reason: r.Reason,
		PID: r.PID, StartedAt: r.StartedAt, LastOutput: r.LastOutput}
	if !r.EndedAt.IsZero() {
		t := r.EndedAt
		out.EndedAt = &t
	}
	if r.State != api.SessionRunning {
		out.PID = 0
	}
	return out
}
