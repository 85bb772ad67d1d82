package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// qmpConn is one QMP session for a sequence of commands (snapshot and
// restore need several, one of them carrying an fd).
type qmpConn struct {
	c *net.UnixConn
	r *bufio.Reader
}

// dialQMP connects and negotiates capabilities. Every read and write is
// bounded by ctx's deadline, or by timeout when ctx has none.
func dialQMP(ctx context.Context, sock string, timeout time.Duration) (*qmpConn, error) {
	var d net.Dialer
	dctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	conn, err := d.DialContext(dctx, "unix", sock)
	if err != nil {
		return nil, fmt.Errorf("qmp dial: %w", err)
	}
	deadline := time.Now().Add(timeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	_ = conn.SetDeadline(deadline)
	q := &qmpConn{c: conn.(*net.UnixConn), r: bufio.NewReader(conn)}
	var greeting struct {
		QMP json.RawMessage `json:"QMP"`
	}
	if err := readMsg(q.r, &greeting); err != nil || greeting.QMP == nil {
		conn.Close()
		return nil, fmt.Errorf("qmp greeting: %v", err)
	}
	if _, err := q.call("qmp_capabilities", nil); err != nil {
		conn.Close()
		return nil, err
	}
	return q, nil
}

func (q *qmpConn) Close() error { return q.c.Close() }

// call runs one command with arguments (nil: none).
func (q *qmpConn) call(cmd string, args any) (json.RawMessage, error) {
	return q.callFile(cmd, args, nil)
}

// callFile runs one command, passing f's descriptor with it (SCM_RIGHTS), as
// QMP's getfd wants.
func (q *qmpConn) callFile(cmd string, args any, f *os.File) (json.RawMessage, error) {
	msg := map[string]any{"execute": cmd}
	if args != nil {
		msg["arguments"] = args
	}
	b, err := json.Marshal(msg)
	if err != nil {
		return nil, err
	}
	b = append(b, '\n')
	if f != nil {
		_, _, err = q.c.WriteMsgUnix(b, unix.UnixRights(int(f.Fd())), nil)
	} else {
		_, err = q.c.Write(b)
	}
	if err != nil {
		return nil, fmt.Errorf("qmp %s: %w", cmd, err)
	}
	return readReply(q.r, cmd)
}

func readReply(r *bufio.Reader, cmd string) (json.RawMessage, error) {
	for {
		var resp struct {
			Return json.RawMessage `json:"return"`
			Error  *struct {
				Class string `json:"class"`
				Desc  string `json:"desc"`
			} `json:"error"`
		}
		if err := readMsg(r, &resp); err != nil {
			return nil, fmt.Errorf("qmp %s: %w", cmd, err)
		}
		switch {
		case resp.Error != nil:
			return nil, fmt.Errorf("qmp %s: %s: %s", cmd, resp.Error.Class, resp.Error.Desc)
		case resp.Return != nil:
			return resp.Return, nil
		}
		// Asynchronous events interleave with replies; skip them.
	}
}

// migrateStatus is query-migrate's answer.
type migrateStatus struct {
	Status    string `json:"status"`
	ErrorDesc string `json:"error-desc"`
}

// waitMigration polls query-migrate until the migration completed or failed.
func (q *qmpConn) waitMigration(ctx context.Context) error {
	for {
		ret, err := q.call("query-migrate", nil)
		if err != nil {
			return err
		}
		var st migrateStatus
		if err := json.Unmarshal(ret, &st); err != nil {
			return fmt.Errorf("qmp query-migrate: %w", err)
		}
		switch st.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("migration %s: %s", st.Status, firstLine(st.ErrorDesc))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("migration not done (%s): %w", st.Status, ctx.Err())
		case <-time.After(pollInterval):
		}
	}
}

// cancelMigration cancels an outgoing migration in progress and waits
// (bounded) until it has stopped; with none in progress it does nothing.
func (q *qmpConn) cancelMigration(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, pauseTimeout)
	defer cancel()
	cancelled := false
	for {
		ret, err := q.call("query-migrate", nil)
		if err != nil {
			return err
		}
		var st migrateStatus
		if err := json.Unmarshal(ret, &st); err != nil {
			return fmt.Errorf("qmp query-migrate: %w", err)
		}
		switch st.Status {
		case "", "none", "completed", "failed", "cancelled":
			return nil
		}
		if !cancelled {
			if _, err := q.call("migrate_cancel", nil); err != nil {
				return err
			}
			cancelled = true
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("migration still %s after cancel: %w", st.Status, ctx.Err())
		case <-time.After(pollInterval):
		}
	}
}

// status is query-status's run state.
func (q *qmpConn) status() (string, error) {
	ret, err := q.call("query-status", nil)
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
