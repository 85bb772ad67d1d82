package qemu

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/logfile"
	"github.com/banger-dev/banger/internal/system"
)

// floodRunner plays a QEMU whose guest prints flood bytes on its serial
// console, wherever the command line sends the serial: into a socket it
// serves (the guest blocks while nobody reads, as a connected QEMU does) or
// straight into a file. With -S it stays "prelaunch" until QMP "cont".
type floodRunner struct {
	flood   int64
	started chan struct{} // closed once the guest starts printing
	done    chan error    // the flood's result
	mu      sync.Mutex
	running bool
	conns   int    // console connections accepted
	last    string // the flood's last line
	pids    []int
	lns     []net.Listener
}

func (f *floodRunner) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

func (f *floodRunner) Start(ctx context.Context, spec system.ProcSpec) (int, error) {
	pidFile := argAfter(spec.Args, "-pidfile", "")
	f.running = !hasArg(spec.Args, "-S")
	qmp, err := net.Listen("unix", argAfter(spec.Args, "-chardev", "socket,id=qmp,path="))
	if err != nil {
		return 0, err
	}
	f.lns = append(f.lns, qmp)
	go f.serveQMP(qmp)
	if sock := argAfter(spec.Args, "-chardev", "socket,id=console,path="); sock != "" {
		ln, err := net.Listen("unix", sock)
		if err != nil {
			return 0, err
		}
		f.lns = append(f.lns, ln)
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				f.mu.Lock()
				f.conns++
				n := f.conns
				f.mu.Unlock()
				if n == 1 {
					go func() { f.done <- f.print(c); c.Close() }()
				}
			}
		}()
	} else if path := argAfter(spec.Args, "-chardev", "file,id=console,path="); path != "" {
		out, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err != nil {
			return 0, err
		}
		go func() { f.done <- f.print(out); out.Close() }()
	} else {
		return 0, fmt.Errorf("no console in %q", spec.Args)
	}
	pid, err := system.Exec{}.Start(ctx, system.ProcSpec{Path: "sh", Args: []string{"-c", "sleep 60; true", "sh", "-pidfile", pidFile}})
	if err != nil {
		return 0, err
	}
	f.pids = append(f.pids, pid)
	return pid, os.WriteFile(pidFile, []byte(strconv.Itoa(pid)+"\n"), 0o600)
}

// print writes the flood once the machine runs: a line-numbered stream whose
// last line says how many bytes came before it.
func (f *floodRunner) print(w interface{ Write([]byte) (int, error) }) error {
	for {
		f.mu.Lock()
		r := f.running
		f.mu.Unlock()
		if r {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	close(f.started)
	bw := bufio.NewWriterSize(w, 256<<10)
	var n int64
	for i := 0; n < f.flood; i++ {
		m, err := fmt.Fprintf(bw, "[%10d] \x1b[31mguest\x1b[0m floods the serial console ....................\r\n", i)
		if err != nil {
			return err
		}
		n += int64(m)
	}
	f.mu.Lock()
	f.last = fmt.Sprintf("LAST LINE after %d bytes\r\n", n)
	f.mu.Unlock()
	if _, err := bw.WriteString(f.last); err != nil {
		return err
	}
	return bw.Flush()
}

func (f *floodRunner) serveQMP(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			fmt.Fprintln(c, `{"QMP": {"version": {}, "capabilities": []}}`)
			sc := bufio.NewScanner(c)
			for sc.Scan() {
				var req struct{ Execute string }
				_ = json.Unmarshal(sc.Bytes(), &req)
				f.mu.Lock()
				switch req.Execute {
				case "qmp_capabilities":
					fmt.Fprintln(c, `{"return": {}}`)
				case "cont":
					f.running = true
					fmt.Fprintln(c, `{"return": {}}`)
				case "query-status":
					st := "prelaunch"
					if f.running {
						st = "running"
					}
					fmt.Fprintf(c, `{"return": {"status": %q, "running": %v}}`+"\n", st, f.running)
				}
				f.mu.Unlock()
			}
		}()
	}
}

func (f *floodRunner) close() {
	for _, ln := range f.lns {
		ln.Close()
	}
	for _, pid := range f.pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

func hasArg(args []string, a string) bool {
	for _, x := range args {
		if x == a {
			return true
		}
	}
	return false
}

func consoleFiles(t *testing.T, dir string) (map[string]int64, int64) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out, total := map[string]int64{}, int64(0)
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), "console.log") {
			continue
		}
		st, err := os.Stat(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = st.Size()
		total += st.Size()
	}
	return out, total
}

// A guest printing 200 MiB on its serial console leaves at most 4 MiB of
// console log on disk, the newest bytes, and the whole boot from its first
// byte when less was printed (the machine runs only once the copy is attached).
func TestConsoleFloodIsCapped(t *testing.T) {
	const capBytes = 4 << 20
	r := &floodRunner{flood: 200 << 20, started: make(chan struct{}), done: make(chan error, 1)}
	defer r.close()
	d := New(r, nil)
	d.lookPath = func(name string) (string, error) { return "/usr/bin/" + name, nil }
	d.Accel, d.TSCkHz = AccelTCG, 1000
	s := specIn(t)
	t0 := time.Now()
	if _, err := d.Start(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	if err := <-r.done; err != nil {
		t.Fatal(err)
	}
	console := filepath.Join(s.Dir, "console.log")
	var tail []byte
	for deadline := time.Now().Add(20 * time.Second); ; {
		tail, _ = logfile.Tail(console, capBytes)
		if bytes.Contains(tail, []byte("LAST LINE")) || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	files, total := consoleFiles(t, s.Dir)
	t.Logf("guest printed %d MiB in %s; console files %v (total %d bytes, cap %d)", r.flood>>20, time.Since(t0).Round(time.Millisecond), files, total, capBytes)
	if total > capBytes {
		t.Fatalf("console log takes %d bytes on disk, cap %d", total, capBytes)
	}
	if !bytes.HasSuffix(tail, []byte(r.last)) {
		t.Fatalf("latest bytes not kept; tail ends %q", tail[max(0, len(tail)-200):])
	}
	if int64(len(tail)) < capBytes/2 {
		t.Fatalf("only %d bytes kept", len(tail))
	}
}

// A small boot is kept whole from its first byte, and a second attach (a
// restarted daemon adopting the VM) continues the same file.
func TestConsoleKeepsWholeBootAndReattaches(t *testing.T) {
	r := &floodRunner{flood: 10 << 10, started: make(chan struct{}), done: make(chan error, 1)}
	defer r.close()
	d := New(r, nil)
	d.lookPath = func(name string) (string, error) { return "/usr/bin/" + name, nil }
	d.Accel, d.TSCkHz = AccelTCG, 1000
	s := specIn(t)
	if err := os.WriteFile(filepath.Join(s.Dir, "console.log.1"), []byte("previous boot\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Start(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	if err := <-r.done; err != nil {
		t.Fatal(err)
	}
	console := filepath.Join(s.Dir, "console.log")
	var b []byte
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if b, _ = logfile.Tail(console, 1<<20); bytes.Contains(b, []byte("LAST LINE")) {
			break
		}
	}
	if !bytes.HasPrefix(b, []byte("[         0]")) || bytes.Contains(b, []byte("previous boot")) {
		t.Fatalf("console does not hold exactly this boot: %q...", b[:min(len(b), 80)])
	}
	// The fake closed its end, like a QEMU that exited; a new attach (the
	// fake accepts it but prints nothing more) must append, not truncate.
	if err := d.AttachConsole(s); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	if b2, _ := logfile.Tail(console, 1<<20); !bytes.Equal(b, b2) {
		t.Fatalf("reattach changed the log: %d -> %d bytes", len(b), len(b2))
	}
}

// vmm.log (QEMU's own stderr, appended by QEMU) is cut back once past its cap.
func TestVMMLogCapped(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vmm.log")
	w, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, err := w.Write(bytes.Repeat([]byte("qemu: warning\n"), 2*VMMLogMax/14)); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go capVMMLog(path, done)
	defer close(done)
	for deadline := time.Now().Add(5 * vmmLogCheck); ; time.Sleep(20 * time.Millisecond) {
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if st.Size() <= VMMLogMax {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("vmm.log still %d bytes, cap %d", st.Size(), VMMLogMax)
		}
	}
	// QEMU's O_APPEND writes go on after the cut.
	if _, err := w.Write([]byte("qemu: later\n")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	if b, _ := os.ReadFile(path); !strings.Contains(string(b), "[banger: vmm.log truncated") || !strings.Contains(string(b), "qemu: later\n") || len(b) > 200 {
		t.Fatalf("vmm.log after the cut: %q", b)
	}
}
