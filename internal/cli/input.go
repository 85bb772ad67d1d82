package cli

import (
	"bytes"
	"io"
	"os"
	"os/signal"
	"syscall"

	"golang.org/x/term"

	"github.com/banger-dev/banger/internal/api"
)

// inputPump feeds a streaming call's input frames (stdin, window changes,
// signals) until the call ends: sends after close are dropped, never
// blocked on.
type inputPump struct {
	ch   chan api.Input
	done chan struct{}
}

func newInputPump() *inputPump {
	return &inputPump{ch: make(chan api.Input, 16), done: make(chan struct{})}
}

// close ends the pump's goroutines; call it when the call has returned.
func (p *inputPump) close() { close(p.done) }

func (p *inputPump) send(in api.Input) bool {
	select {
	case p.ch <- in:
		return true
	case <-p.done:
		return false
	}
}

// copyStdin sends r's bytes and then EOF. cut, when set, may end the input
// early at a chunk (a detach key): it returns the part to send and whether
// the input ends there.
func (p *inputPump) copyStdin(r io.Reader, cut func([]byte) ([]byte, bool)) {
	go func() {
		buf := make([]byte, 32<<10)
		for {
			n, err := r.Read(buf)
			chunk, end := buf[:n], false
			if cut != nil {
				chunk, end = cut(chunk)
			}
			if len(chunk) > 0 && !p.send(api.Input{Stdin: bytes.Clone(chunk)}) {
				return
			}
			if end || err != nil {
				p.send(api.Input{EOF: true})
				return
			}
		}
	}()
}

// forwardSignals sends window changes of tty (when not nil) and, with
// signals, SIGINT/SIGTERM/SIGHUP as signal frames, until the pump closes.
func (p *inputPump) forwardSignals(tty *os.File, signals bool) {
	watch := []os.Signal{syscall.SIGWINCH}
	if signals {
		watch = append(watch, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, watch...)
	go func() {
		defer signal.Stop(sigs)
		for {
			select {
			case <-p.done:
				return
			case s := <-sigs:
				switch s {
				case syscall.SIGWINCH:
					if tty != nil {
						if w, h, err := term.GetSize(int(tty.Fd())); err == nil {
							p.send(api.Input{Resize: &api.Winsize{Cols: w, Rows: h}})
						}
					}
				case syscall.SIGINT:
					p.send(api.Input{Signal: "INT"})
				case syscall.SIGTERM:
					p.send(api.Input{Signal: "TERM"})
				case syscall.SIGHUP:
					p.send(api.Input{Signal: "HUP"})
				}
			}
		}
	}()
}

// rawTerminal puts f in raw mode and returns its size and the undo; ok is
// false (and nothing changed) when f is not a terminal.
func rawTerminal(f *os.File) (cols, rows int, restore func(), ok bool) {
	fd := int(f.Fd())
	if !term.IsTerminal(fd) {
		return 0, 0, func() {}, false
	}
	if w, h, err := term.GetSize(fd); err == nil {
		cols, rows = w, h
	}
	restore = func() {}
	if old, err := term.MakeRaw(fd); err == nil {
		restore = func() { _ = term.Restore(fd, old) }
	}
	return cols, rows, restore, true
}
