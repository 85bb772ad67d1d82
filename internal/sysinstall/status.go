package sysinstall

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
)

// UnitStatus is one unit as systemctl show reports it.
type UnitStatus struct {
	Name          string   `json:"name"`
	LoadState     string   `json:"load_state"`
	ActiveState   string   `json:"active_state"`
	SubState      string   `json:"sub_state"`
	UnitFileState string   `json:"unit_file_state"`
	Result        string   `json:"result"`
	MainPID       int      `json:"main_pid"`
	Logs          []string `json:"logs,omitempty"` // last journal lines when it is not healthy
	// Error is why systemctl could not say (a user without a D-Bus system bus).
	Error string `json:"error,omitempty"`
}

// Check is one probe's outcome.
type Check struct {
	Path string `json:"path,omitempty"`
	OK   bool   `json:"ok"`
	Info string `json:"info,omitempty"`
}

// Status is `banger system status`.
type Status struct {
	Installed bool         `json:"installed"`
	Systemd   bool         `json:"systemd"`
	Meta      *Metadata    `json:"install,omitempty"`
	Units     []UnitStatus `json:"units,omitempty"`
	Owner     Check        `json:"owner"`
	Binaries  Check        `json:"binaries"`
	Helper    Check        `json:"helper"`
	Daemon    Check        `json:"daemon"`
	// Problems say what is wrong and what to do; Healthy is len(Problems)==0.
	Problems []string `json:"problems,omitempty"`
	Notes    []string `json:"notes,omitempty"`
	Healthy  bool     `json:"healthy"`
}

// Probes reach the running services; the CLI supplies them (they speak
// the helper's and the daemon's protocols).
type Probes struct {
	// Helper calls a read-only helper verb; ok when it answered.
	Helper func(ctx context.Context, socket string) (info string, err error)
	// Daemon asks bangerd at socket for its status; pid is its pid.
	Daemon func(ctx context.Context, socket string) (pid int, info string, err error)
}

// Status inspects the install: metadata, units (with their last log lines
// when not healthy), owner, binaries, and the two sockets.
func (in *Installer) Status(ctx context.Context, p Probes) Status {
	s := Status{Systemd: in.systemd() == nil}
	m, err := in.ReadMetadata()
	switch {
	case errors.Is(err, os.ErrNotExist):
		s.Problems = append(s.Problems, "banger is not installed (no "+MetaFile+"): `sudo banger system install --owner USER`")
		return s
	case err != nil:
		s.Problems = append(s.Problems, err.Error())
		return s
	}
	s.Installed, s.Meta = true, m
	if !s.Systemd {
		s.Problems = append(s.Problems, ErrNoSystemd.Error()+": the units cannot run")
	}
	var unknown []string
	for _, u := range m.Units {
		st, err := in.unitStatus(ctx, u)
		if err != nil {
			st.Error = err.Error()
			unknown = append(unknown, u+": "+firstLine(st.Error))
			s.Units = append(s.Units, st)
			continue
		}
		switch {
		case st.LoadState != "loaded":
			s.Problems = append(s.Problems, fmt.Sprintf("%s is %s: `sudo banger system install` again", u, orUnknown(st.LoadState)))
		case st.ActiveState != "active":
			st.Logs = in.journal(ctx, u)
			s.Problems = append(s.Problems, fmt.Sprintf("%s is %s (%s, result %s): see its log below, then `sudo banger system restart`",
				u, st.ActiveState, st.SubState, st.Result))
		}
		if st.LoadState == "loaded" && st.UnitFileState != "enabled" {
			s.Problems = append(s.Problems, fmt.Sprintf("%s is %s, not enabled: it will not start at boot", u, orUnknown(st.UnitFileState)))
		}
		s.Units = append(s.Units, st)
	}

	s.Owner = Check{Info: fmt.Sprintf("%s (uid %d)", m.Owner.Name, m.Owner.UID)}
	lookup := in.LookupUser
	if lookup == nil {
		lookup = LookupOwner
	}
	if o, err := lookup(m.Owner.Name); err != nil {
		s.Problems = append(s.Problems, fmt.Sprintf("owner %q is unknown on this host (%v): `sudo banger system uninstall` and install for an existing user", m.Owner.Name, err))
	} else if o.UID != m.Owner.UID {
		s.Problems = append(s.Problems, fmt.Sprintf("owner %q is now uid %d, installed for uid %d: `sudo banger system install --owner %s` again", m.Owner.Name, o.UID, m.Owner.UID, m.Owner.Name))
	} else {
		s.Owner.OK = true
	}

	s.Binaries = Check{Path: m.BinDir, OK: true, Info: "as installed"}
	for _, name := range Binaries {
		sum, err := fileSHA256(in.Paths.At(filepath.Join(m.BinDir, name)))
		if err != nil || sum != m.Binaries[name] {
			s.Binaries.OK, s.Binaries.Info = false, "changed since install"
			s.Problems = append(s.Problems, fmt.Sprintf("%s/%s is missing or not the installed version: `sudo banger system install` again", m.BinDir, name))
		}
	}

	s.Helper = Check{Path: m.HelperSocket}
	if _, err := os.Stat(in.Paths.At(m.HelperSocket)); err != nil {
		s.Helper.Info = "no socket"
		s.Problems = append(s.Problems, "helper socket "+m.HelperSocket+" is missing: is "+HelperUnit+" running?")
	} else if p.Helper != nil {
		info, err := p.Helper(ctx, in.Paths.At(m.HelperSocket))
		if err != nil {
			s.Helper.Info = err.Error()
			s.Problems = append(s.Problems, "helper does not answer: "+err.Error())
		} else {
			s.Helper.OK, s.Helper.Info = true, info
		}
	} else {
		s.Helper.OK, s.Helper.Info = true, "socket present"
	}

	s.Daemon = Check{Path: m.DaemonSocket}
	if _, err := os.Stat(in.Paths.At(m.DaemonSocket)); err != nil {
		s.Daemon.Info = "no socket"
		s.Problems = append(s.Problems, "bangerd socket "+m.DaemonSocket+" is missing: is "+DaemonUnit+" running?")
	} else if p.Daemon != nil {
		pid, info, err := p.Daemon(ctx, in.Paths.At(m.DaemonSocket))
		var unitPID int
		for _, u := range s.Units {
			if u.Name == DaemonUnit {
				unitPID = u.MainPID
			}
		}
		switch {
		case err != nil:
			s.Daemon.Info = err.Error()
			s.Problems = append(s.Problems, "bangerd does not answer: "+err.Error())
		case pid != 0 && unitPID != 0 && pid != unitPID: // pid 0: not the owner, not asked
			s.Daemon.Info = info
			s.Problems = append(s.Problems, fmt.Sprintf("the bangerd answering on %s is pid %d, not %s's (pid %d): stop it with `banger daemon stop`, then `sudo banger system restart`",
				m.DaemonSocket, pid, DaemonUnit, unitPID))
		default:
			s.Daemon.OK, s.Daemon.Info = true, info
		}
		// A binary replaced under a running daemon: the old one still runs.
		if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err == nil && pid != 0 && strings.HasSuffix(exe, " (deleted)") {
			s.Problems = append(s.Problems, "bangerd runs a binary replaced since it started: `sudo banger system restart`")
		}
	} else {
		s.Daemon.OK, s.Daemon.Info = true, "socket present (only the owner can talk to it)"
	}
	if len(unknown) > 0 {
		// Without a D-Bus system bus only root reaches systemd; the sockets
		// answering is then the evidence that both services run.
		msg := "systemd does not answer this user (" + strings.Join(unknown, "; ") + "): `sudo banger system status` shows the units"
		if s.Helper.OK && s.Daemon.OK {
			s.Notes = append(s.Notes, msg+"; both sockets answer")
		} else {
			s.Problems = append(s.Problems, msg)
		}
	}
	s.Healthy = len(s.Problems) == 0
	return s
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// unitStatus asks systemctl show.
func (in *Installer) unitStatus(ctx context.Context, unit string) (UnitStatus, error) {
	st := UnitStatus{Name: unit}
	out, err := in.Runner.Run(ctx, "systemctl", "show", unit,
		"--property=LoadState,ActiveState,SubState,UnitFileState,Result,MainPID")
	if err != nil {
		return st, err
	}
	for _, line := range strings.Split(string(out), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), "=")
		if !ok {
			continue
		}
		switch k {
		case "LoadState":
			st.LoadState = v
		case "ActiveState":
			st.ActiveState = v
		case "SubState":
			st.SubState = v
		case "UnitFileState":
			st.UnitFileState = v
		case "Result":
			st.Result = v
		case "MainPID":
			st.MainPID, _ = strconv.Atoi(v)
		}
	}
	return st, nil
}

// journalLines bounds what status keeps of a unit's log.
const journalLines = 15

// journal is the unit's last log lines (the journal may refuse a user not
// in systemd-journal/adm: that message is returned instead).
func (in *Installer) journal(ctx context.Context, unit string) []string {
	out, err := in.Runner.Run(ctx, "journalctl", "--unit", unit, "--lines", strconv.Itoa(journalLines), "--no-pager", "--output", "short-iso")
	text := strings.TrimSpace(string(out))
	if err != nil && text == "" {
		text = err.Error()
	}
	if text == "" || strings.HasPrefix(text, "-- No entries --") {
		return nil
	}
	lines := strings.Split(text, "\n")
	if len(lines) > journalLines+2 {
		lines = lines[len(lines)-journalLines-2:]
	}
	for i, l := range lines {
		if len(l) > 400 {
			lines[i] = l[:400] + "..."
		}
	}
	return lines
}

// LookupOwner resolves a user name (or numeric uid) from the host's user database.
func LookupOwner(name string) (Owner, error) {
	var u *user.User
	var err error
	if _, nerr := strconv.Atoi(name); nerr == nil {
		u, err = user.LookupId(name)
	} else {
		u, err = user.Lookup(name)
	}
	if err != nil {
		return Owner{}, err
	}
	uid, err := strconv.Atoi(u.Uid)
	if err != nil {
		return Owner{}, err
	}
	gid, err := strconv.Atoi(u.Gid)
	if err != nil {
		return Owner{}, err
	}
	return Owner{Name: u.Username, UID: uid, GID: gid, Home: u.HomeDir}, nil
}
