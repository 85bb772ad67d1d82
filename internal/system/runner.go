// Package system is the only place that executes host binaries. Everything
// else receives a Runner, so unit tests can substitute a state-keeping fake.
package system

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
)

// Runner runs host commands.
type Runner interface {
	// Run runs name with args to completion and returns its combined output.
	// A non-zero exit becomes an error that carries the command line and output.
	Run(ctx context.Context, name string, args ...string) ([]byte, error)
	// Start launches a long-lived process that is NOT tied to ctx (ctx only
	// bounds the launch itself) and returns its pid.
	Start(ctx context.Context, spec ProcSpec) (int, error)
}

// ProcSpec describes a detached process.
type ProcSpec struct {
	Path   string
	Args   []string
	Dir    string
	Env    []string // appended to LC_ALL=C and PATH
	Stdout string   // file to append stdout+stderr to; /dev/null when empty
	UID    int      // run as this uid/gid when non-zero and we are root
	GID    int
	// ExtraFiles are inherited as fds 3, 4, ... (a TAP opened by the
	// privileged side, for a VMM that could not open it itself).
	ExtraFiles []*os.File
}

// ExitError is returned by Run when the command exited non-zero.
type ExitError struct {
	Cmd    string
	Code   int
	Output string
}

func (e *ExitError) Error() string {
	out := strings.TrimSpace(e.Output)
	if len(out) > 2000 {
		out = "..." + out[len(out)-2000:]
	}
	return fmt.Sprintf("%s: exit status %d: %s", e.Cmd, e.Code, out)
}

// Exec is the real Runner.
type Exec struct{}

func baseEnv() []string {
	path := os.Getenv("PATH")
	if path == "" {
		path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	} else if !strings.Contains(path, "/usr/sbin") {
		path += ":/usr/local/sbin:/usr/sbin:/sbin"
	}
	return []string{"LC_ALL=C", "PATH=" + path, "HOME=" + os.Getenv("HOME")}
}

func (Exec) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = baseEnv()
	var buf bytes.Buffer
	cmd.Stdout = &buf
	cmd.Stderr = &buf
	err := cmd.Run()
	if err != nil {
		line := name + " " + strings.Join(args, " ")
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return buf.Bytes(), &ExitError{Cmd: line, Code: ee.ExitCode(), Output: buf.String()}
		}
		return buf.Bytes(), fmt.Errorf("%s: %w", line, err)
	}
	return buf.Bytes(), nil
}

func (Exec) Start(ctx context.Context, spec ProcSpec) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	var out io.Writer
	var f *os.File
	var err error
	if spec.Stdout != "" {
		f, err = os.OpenFile(spec.Stdout, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return 0, fmt.Errorf("open %s: %w", spec.Stdout, err)
		}
		defer f.Close()
		out = f
	}
	// exec.Command, not CommandContext: the process must outlive the request.
	cmd := exec.Command(spec.Path, spec.Args...)
	cmd.Dir = spec.Dir
	cmd.Env = append(baseEnv(), spec.Env...)
	cmd.Stdout = out
	cmd.Stderr = out
	cmd.ExtraFiles = spec.ExtraFiles
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if spec.UID != 0 && os.Geteuid() == 0 {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(spec.UID), Gid: uint32(spec.GID)}
	}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("start %s: %w", spec.Path, err)
	}
	pid := cmd.Process.Pid
	// Reap in the background so the child never lingers as a zombie while we live.
	go func() { _ = cmd.Wait() }()
	return pid, nil
}

// LookPath reports whether a binary is on PATH (for doctor checks).
func LookPath(name string) (string, error) { return exec.LookPath(name) }

// Executable returns the path of a binary next to the running one, or on PATH.
func Executable(name string) (string, error) {
	self, err := os.Executable()
	if err == nil {
		cand := strings.TrimSuffix(self, "/"+lastElem(self)) + "/" + name
		if st, err := os.Stat(cand); err == nil && !st.IsDir() {
			return cand, nil
		}
	}
	return exec.LookPath(name)
}

func lastElem(p string) string {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[i+1:]
	}
	return p
}
