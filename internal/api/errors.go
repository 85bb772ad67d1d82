// Package api holds the wire types shared by the CLI, the daemon and the
// helper: the request/response envelope, error codes and payloads.
package api

import (
	"errors"
	"fmt"
)

// Sentinel errors used by domain packages; mapped to wire codes only at the RPC boundary.
var (
	ErrNotFound   = errors.New("not found")
	ErrExists     = errors.New("already exists")
	ErrInvalid    = errors.New("invalid argument")
	ErrNotRunning = errors.New("not running")
	ErrBusy       = errors.New("busy")
	ErrPermission = errors.New("permission denied")
	// ErrShuttingDown: the daemon is stopping, so the request was not run or
	// was interrupted (its work rolled back as the operation's own undo does).
	ErrShuttingDown = errors.New("the daemon is shutting down")
)

// Code is a typed RPC error code.
type Code string

const (
	CodeNotFound   Code = "not_found"
	CodeExists     Code = "exists"
	CodeInvalid    Code = "invalid"
	CodeNotRunning Code = "not_running"
	CodeBusy       Code = "busy"
	CodePermission Code = "permission_denied"
	CodeInternal   Code = "internal"
	CodeCanceled   Code = "canceled"
	CodeShutdown   Code = "shutting_down"
	CodeUnknown    Code = "unknown_method"
)

// CodeOf maps an error chain to its wire code.
func CodeOf(err error) Code {
	switch {
	case errors.Is(err, ErrNotFound):
		return CodeNotFound
	case errors.Is(err, ErrExists):
		return CodeExists
	case errors.Is(err, ErrInvalid):
		return CodeInvalid
	case errors.Is(err, ErrNotRunning):
		return CodeNotRunning
	case errors.Is(err, ErrBusy):
		return CodeBusy
	case errors.Is(err, ErrPermission):
		return CodePermission
	case errors.Is(err, ErrShuttingDown):
		return CodeShutdown
	}
	return CodeInternal
}

// Error is an error received over the wire.
type Error struct {
	Code    Code   `json:"code"`
	Message string `json:"message"`
	OpID    string `json:"op_id,omitempty"`
}

func (e *Error) Error() string {
	if e.OpID != "" {
		return fmt.Sprintf("%s (%s, op %s)", e.Message, e.Code, e.OpID)
	}
	return fmt.Sprintf("%s (%s)", e.Message, e.Code)
}

// Is lets errors.Is(wireErr, api.ErrNotFound) work on the client side too.
func (e *Error) Is(target error) bool {
	switch e.Code {
	case CodeNotFound:
		return target == ErrNotFound
	case CodeExists:
		return target == ErrExists
	case CodeInvalid:
		return target == ErrInvalid
	case CodeNotRunning:
		return target == ErrNotRunning
	case CodeBusy:
		return target == ErrBusy
	case CodePermission:
		return target == ErrPermission
	case CodeShutdown:
		return target == ErrShuttingDown
	}
	return false
}
