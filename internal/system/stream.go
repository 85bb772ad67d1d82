package system

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
)

// StreamSpec is a command whose stdio the caller supplies.
type StreamSpec struct {
	Name   string
	Args   []string
	Dir    string
	Env    []string // appended to LC_ALL=C, PATH and HOME
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
}

// Stream runs spec to completion with the caller's stdio and returns its exit
// code. Only a failure to run at all is an error; a non-zero exit is not.
func (Exec) Stream(ctx context.Context, spec StreamSpec) (int, error) {
	cmd := exec.CommandContext(ctx, spec.Name, spec.Args...)
	cmd.Dir = spec.Dir
	cmd.Env = append(baseEnv(), spec.Env...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = spec.Stdin, spec.Stdout, spec.Stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) && ctx.Err() == nil {
		return ee.ExitCode(), nil
	}
	if err != nil {
		return -1, fmt.Errorf("%s: %w", spec.Name, err)
	}
	return 0, nil
}
