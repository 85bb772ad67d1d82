package api

import "time"

// Methods of `vm session`: commands the guest agent supervises.
const (
	MethodVMSessionStart  = "vm.session.start"
	MethodVMSessionList   = "vm.session.list"
	MethodVMSessionLogs   = "vm.session.logs"   // output as stdout events
	MethodVMSessionAttach = "vm.session.attach" // input: stdin, resize; EOF detaches
	MethodVMSessionSend   = "vm.session.send"   // input: stdin until EOF
	MethodVMSessionKill   = "vm.session.kill"
)

// SessionStartParams starts a session in a running VM. Like exec, one of
// Argv (quoted for the guest's shell) or Command (a shell command line).
type SessionStartParams struct {
	Name    string            `json:"name"`              // the VM
	Session string            `json:"session,omitempty"` // default: from the command's first word
	Argv    []string          `json:"argv,omitempty"`
	Command string            `json:"command,omitempty"`
	Env     map[string]string `json:"env,omitempty"`
	Dir     string            `json:"dir,omitempty"`
}

// SessionParams addresses one session of a VM.
type SessionParams struct {
	Name    string `json:"name"` // the VM
	Session string `json:"session"`
	Tail    int    `json:"tail,omitempty"`   // logs: the last N lines (0: all kept)
	Follow  bool   `json:"follow,omitempty"` // logs
	Signal  string `json:"signal,omitempty"` // kill: INT TERM HUP KILL QUIT USR1 USR2 (default TERM)
	EOF     bool   `json:"eof,omitempty"`    // send: then the terminal's EOF character
	Cols    int    `json:"cols,omitempty"`   // attach: the terminal's size
	Rows    int    `json:"rows,omitempty"`
}

// Session states: running, exited (ExitCode set), ended (Reason says why,
// e.g. "vm stopped").
const (
	SessionRunning = "running"
	SessionExited  = "exited"
	SessionEnded   = "ended"
)

// Session is one supervised command. Command, Dir and LastOutput are guest
// text.
type Session struct {
	Name       string     `json:"name"`
	Command    string     `json:"command"`
	Dir        string     `json:"dir,omitempty"`
	State      string     `json:"state"`
	ExitCode   *int       `json:"exit_code,omitempty"`
	Reason     string     `json:"reason,omitempty"`
	PID        int        `json:"pid,omitempty"`
	StartedAt  time.Time  `json:"started_at"`
	EndedAt    *time.Time `json:"ended_at,omitempty"`
	LastOutput string     `json:"last_output,omitempty"`
}

// SessionAttachResult is how an attach ended: detached (the session runs
// on) or ended (with its exit code, -1 when unknown).
type SessionAttachResult struct {
	Detached bool `json:"detached,omitempty"`
	Ended    bool `json:"ended,omitempty"`
	ExitCode int  `json:"exit_code"`
}
