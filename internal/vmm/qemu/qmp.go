package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"time"
)

// qmpStatus returns the run state from query-status ("running",
// "prelaunch", "paused", "shutdown", ...).
func qmpStatus(ctx context.Context, sock string) (string, error) {
	ret, err := qmpExec(ctx, sock, "query-status")
	if err != nil {
		return "", err
	}
	var st struct {
		Status string `json:"status"`
	}
	if err := json.Unmarshal(ret, &st); err != nil {
		return "", fmt.Errorf("qmp query-status: %w", err)
	}
	return st.Status, nil
}

// qmpExec connects to the QMP socket, negotiates capabilities and runs one
// argument-less command, returning its "return" value.
func qmpExec(ctx context.Context, sock, cmd string) (json.RawMessage, error) {
	var dialer net.Dialer
	dctx, cancel := context.WithTimeout(ctx, qmpTimeout)
	defer cancel()
	conn, err := dialer.DialContext(dctx, "unix", sock)
	if err != nil {
		return nil, fmt.Errorf("qmp dial: %w", err)
	}
	defer conn.Close()
	deadline := time.Now().Add(qmpTimeout)
	if dl, ok := dctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	_ = conn.SetDeadline(deadline)
	r := bufio.NewReader(conn)

	var greeting struct {
		QMP json.RawMessage `json:"QMP"`
	}
	if err := readMsg(r, &greeting); err != nil || greeting.QMP == nil {
		return nil, fmt.Errorf("qmp greeting: %v", err)
	}
	if _, err := qmpCall(conn, r, "qmp_capabilities"); err != nil {
		return nil, err
	}
	return qmpCall(conn, r, cmd)
}

func qmpCall(conn net.Conn, r *bufio.Reader, cmd string) (json.RawMessage, error) {
	b, _ := json.Marshal(map[string]string{"execute": cmd})
	if _, err := conn.Write(append(b, '\n')); err != nil {
		return nil, fmt.Errorf("qmp %s: %w", cmd, err)
	}
	return readReply(r, cmd)
}

// readMsg reads one JSON line, bounded so a misbehaving peer cannot make us
// buffer without limit.
func readMsg(r *bufio.Reader, v any) error {
	const max = 1 << 20
	var line []byte
	for {
		chunk, isPrefix, err := r.ReadLine()
		if err != nil {
			return err
		}
		line = append(line, chunk...)
		if len(line) > max {
			return fmt.Errorf("qmp message over %d bytes", max)
		}
		if !isPrefix {
			break
		}
	}
	return json.Unmarshal(line, v)
}
