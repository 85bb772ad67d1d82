package guest

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// testServer is an in-process SSH server with a tiny command interpreter
// (no real shell): enough of sshd for the pool to be exercised for real.
type testServer struct {
	t        *testing.T
	ln       net.Listener
	addr     string
	hostKeys []ssh.Signer
	client   ssh.PublicKey

	refuseSignals bool

	mu     sync.Mutex
	conns  int
	open   []net.Conn
	events []string
}

func newHostSigner(t *testing.T) ssh.Signer {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// startServer listens on addr ("127.0.0.1:0" for any port).
func startServer(t *testing.T, addr string, client ssh.PublicKey, hostKeys ...ssh.Signer) *testServer {
	t.Helper()
	if len(hostKeys) == 0 {
		hostKeys = []ssh.Signer{newHostSigner(t)}
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	s := &testServer{t: t, ln: ln, addr: ln.Addr().String(), hostKeys: hostKeys, client: client}
	go s.serve()
	t.Cleanup(s.stop)
	return s
}

func (s *testServer) stop() {
	s.ln.Close()
	s.dropAll()
}

func (s *testServer) dropAll() {
	s.mu.Lock()
	open := s.open
	s.open = nil
	s.mu.Unlock()
	for _, c := range open {
		c.Close()
	}
}

func (s *testServer) connCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conns
}

func (s *testServer) record(ev string) {
	s.mu.Lock()
	s.events = append(s.events, ev)
	s.mu.Unlock()
}

func (s *testServer) eventList() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.events...)
}

func (s *testServer) serve() {
	cfg := &ssh.ServerConfig{
		PublicKeyCallback: func(meta ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
			if meta.User() == "root" && bytes.Equal(key.Marshal(), s.client.Marshal()) {
				return nil, nil
			}
			return nil, errors.New("unknown key")
		},
	}
	for _, k := range s.hostKeys {
		cfg.AddHostKey(k)
	}
	for {
		nc, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.open = append(s.open, nc)
		s.mu.Unlock()
		go func() {
			conn, chans, reqs, err := ssh.NewServerConn(nc, cfg)
			if err != nil {
				nc.Close()
				return
			}
			s.mu.Lock()
			s.conns++
			s.mu.Unlock()
			go ssh.DiscardRequests(reqs)
			for nch := range chans {
				if nch.ChannelType() != "session" {
					nch.Reject(ssh.UnknownChannelType, "only sessions")
					continue
				}
				ch, creqs, err := nch.Accept()
				if err != nil {
					continue
				}
				go s.session(ch, creqs)
			}
			conn.Close()
		}()
	}
}

type serverSession struct {
	s       *testServer
	ch      ssh.Channel
	mu      sync.Mutex
	pty     bool
	term    string
	cols    int
	rows    int
	sizeCh  chan struct{}
	signals chan string
	env     map[string]string
	dir     string
	started bool
}

func (s *testServer) session(ch ssh.Channel, reqs <-chan *ssh.Request) {
	ss := &serverSession{s: s, ch: ch, sizeCh: make(chan struct{}, 16), signals: make(chan string, 16), env: map[string]string{}, dir: "/root"}
	for req := range reqs {
		switch req.Type {
		case "pty-req":
			var m struct {
				Term             string
				Cols, Rows, W, H uint32
				Modes            string
			}
			if err := ssh.Unmarshal(req.Payload, &m); err != nil {
				req.Reply(false, nil)
				continue
			}
			ss.mu.Lock()
			ss.pty, ss.term, ss.cols, ss.rows = true, m.Term, int(m.Cols), int(m.Rows)
			ss.mu.Unlock()
			req.Reply(true, nil)
		case "window-change":
			var m struct{ Cols, Rows, W, H uint32 }
			if ssh.Unmarshal(req.Payload, &m) == nil {
				ss.mu.Lock()
				ss.cols, ss.rows = int(m.Cols), int(m.Rows)
				ss.mu.Unlock()
				ss.sizeCh <- struct{}{}
			}
		case "env":
			req.Reply(false, nil) // like sshd without AcceptEnv
		case "signal":
			var m struct{ Signal string }
			if s.refuseSignals || ssh.Unmarshal(req.Payload, &m) != nil {
				req.Reply(false, nil)
				continue
			}
			s.record("signal " + m.Signal)
			ss.signals <- m.Signal
			req.Reply(true, nil)
		case "exec":
			var m struct{ Command string }
			if ss.started || ssh.Unmarshal(req.Payload, &m) != nil {
				req.Reply(false, nil)
				continue
			}
			ss.started = true
			req.Reply(true, nil)
			go func() { ss.finish(ss.run(m.Command, ch)) }()
		case "shell":
			if ss.started {
				req.Reply(false, nil)
				continue
			}
			ss.started = true
			req.Reply(true, nil)
			go func() { ss.finish(ss.shell()) }()
		default:
			if req.WantReply {
				req.Reply(false, nil)
			}
		}
	}
}

// result is an exit status, or a signal death when sig is set.
type result struct {
	code int
	sig  string
}

func (ss *serverSession) finish(r result) {
	if r.sig != "" {
		ss.ch.SendRequest("exit-signal", false, ssh.Marshal(struct {
			Signal     string
			CoreDumped bool
			Error      string
			Lang       string
		}{Signal: r.sig}))
	} else {
		ss.ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{uint32(r.code)}))
	}
	ss.ch.Close()
}

func (ss *serverSession) shell() result {
	br := bufio.NewReader(ss.ch)
	last := result{}
	for {
		line, err := br.ReadString('\n')
		if strings.TrimSpace(line) != "" {
			r, exited := ss.script(line, br)
			last = r
			if exited {
				return r
			}
		}
		if err != nil {
			return last
		}
	}
}

func (ss *serverSession) run(script string, stdin io.Reader) result {
	r, _ := ss.script(script, stdin)
	return r
}

var sigNums = map[string]int{"HUP": 1, "INT": 2, "QUIT": 3, "KILL": 9, "USR1": 10, "USR2": 12, "TERM": 15}

// script interprets a command line; exited reports an explicit `exit`.
func (ss *serverSession) script(script string, stdin io.Reader) (r result, exited bool) {
	out, errw := ss.ch, ss.ch.Stderr()
	cmds, err := shParse(script)
	if err != nil {
		fmt.Fprintf(errw, "sh: %v\n", err)
		return result{code: 2}, true
	}
	status := 0
	for _, c := range cmds {
		if (c.after == "&&" && status != 0) || (c.after == "||" && status == 0) {
			continue
		}
		argv := c.words
		if len(argv) == 0 {
			continue
		}
		if !c.quoted0 && strings.Contains(argv[0], "=") {
			fmt.Fprintf(errw, "sh: assignment not supported\n")
			return result{code: 2}, true
		}
		switch argv[0] {
		case "true", "sync":
			status = 0
			if argv[0] == "sync" {
				ss.s.record("sync")
			}
		case "false":
			status = 1
		case "flood":
			// flood stdout|stderr MIB: a guest that writes without end.
			w := io.Writer(out)
			if argv[1] == "stderr" {
				w = errw
			}
			mib, _ := strconv.Atoi(argv[2])
			chunk := bytes.Repeat([]byte("x"), 1<<20)
			status = 0
			for i := 0; i < mib; i++ {
				if _, err := w.Write(chunk); err != nil {
					ss.s.record("flood write failed")
					return result{code: 141}, true
				}
			}
		case "echo":
			fmt.Fprintln(out, strings.Join(argv[1:], " "))
			status = 0
		case "stderr":
			fmt.Fprintln(errw, strings.Join(argv[1:], " "))
			status = 0
		case "argv":
			for _, a := range argv[1:] {
				fmt.Fprintf(out, "%q\n", a)
			}
			status = 0
		case "exit":
			n := 0
			if len(argv) > 1 {
				n, _ = strconv.Atoi(argv[1])
			}
			return result{code: n}, true
		case "cat":
			io.Copy(out, stdin)
			status = 0
		case "export":
			for _, kv := range argv[1:] {
				k, v, _ := strings.Cut(kv, "=")
				ss.env[k] = v
			}
			status = 0
		case "printenv":
			fmt.Fprintln(out, ss.env[argv[1]])
			status = 0
		case "cd":
			d := argv[len(argv)-1]
			if d == "/nonexistent" {
				fmt.Fprintf(errw, "cd: %s: No such file or directory\n", d)
				status = 1
				continue
			}
			ss.dir = d
			status = 0
		case "pwd":
			fmt.Fprintln(out, ss.dir)
			status = 0
		case "systemctl", "poweroff":
			ss.s.record(strings.Join(argv, " "))
			status = 0
		case "winsize":
			ss.mu.Lock()
			fmt.Fprintf(out, "%s %dx%d\n", ss.term, ss.cols, ss.rows)
			ss.mu.Unlock()
			status = 0
		case "wait-winsize":
			want := argv[1]
			deadline := time.After(5 * time.Second)
			for {
				ss.mu.Lock()
				got := fmt.Sprintf("%dx%d", ss.cols, ss.rows)
				ss.mu.Unlock()
				if got == want {
					fmt.Fprintln(out, got)
					status = 0
					break
				}
				select {
				case <-ss.sizeCh:
					continue
				case <-deadline:
					return result{code: 1}, true
				}
			}
		case "die-by-signal":
			return result{sig: argv[1]}, true
		case "sleep-until-signal":
			// A real program started from a shell: it dies of the signal and
			// the shell reports 128+signo. With a PTY, ^C on stdin is INT.
			fmt.Fprintln(out, "ready")
			ctrlC := make(chan struct{}, 1)
			ss.mu.Lock()
			pty := ss.pty
			ss.mu.Unlock()
			if pty {
				go func() {
					b := make([]byte, 1)
					for {
						if _, err := stdin.Read(b); err != nil {
							return
						}
						if b[0] == 0x03 {
							ctrlC <- struct{}{}
							return
						}
					}
				}()
			}
			select {
			case sig := <-ss.signals:
				return result{code: 128 + sigNums[sig]}, true
			case <-ctrlC:
				ss.s.record("ctrl-c")
				return result{code: 130}, true
			case <-time.After(10 * time.Second):
				return result{code: 99}, true
			}
		default:
			fmt.Fprintf(errw, "sh: %s: not found\n", argv[0])
			status = 127
		}
	}
	return result{code: status}, false
}

// shCmd is one simple command and the operator that precedes it.
type shCmd struct {
	after   string // "", ";", "&&", "||"
	words   []string
	quoted0 bool
}

// shParse is a small sh-like splitter: quotes, backslashes, ; && || and
// newlines. Anything it does not model (expansions, globs, redirections,
// reserved words) is an error, so an unquoted metacharacter in what the
// client sent shows up as a failure instead of being silently accepted.
func shParse(s string) ([]shCmd, error) {
	var cmds []shCmd
	cur := shCmd{}
	var word strings.Builder
	inWord, quoted := false, false
	endWord := func() error {
		if !inWord {
			return nil
		}
		w := word.String()
		if !quoted && len(cur.words) == 0 && reservedWords[w] {
			return fmt.Errorf("reserved word %q in command position", w)
		}
		if len(cur.words) == 0 {
			cur.quoted0 = quoted
		}
		cur.words = append(cur.words, w)
		word.Reset()
		inWord, quoted = false, false
		return nil
	}
	endCmd := func(op string) {
		cmds = append(cmds, cur)
		cur = shCmd{after: op}
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\'':
			j := strings.IndexByte(s[i+1:], '\'')
			if j < 0 {
				return nil, errors.New("unterminated single quote")
			}
			word.WriteString(s[i+1 : i+1+j])
			i += j + 1
			inWord, quoted = true, true
		case c == '"':
			i++
			for ; i < len(s) && s[i] != '"'; i++ {
				switch s[i] {
				case '\\':
					if i+1 < len(s) && strings.IndexByte("$`\"\\\n", s[i+1]) >= 0 {
						i++
						if s[i] != '\n' {
							word.WriteByte(s[i])
						}
						continue
					}
					word.WriteByte('\\')
				case '$', '`':
					return nil, fmt.Errorf("expansion %q in double quotes not supported", s[i])
				default:
					word.WriteByte(s[i])
				}
			}
			if i >= len(s) {
				return nil, errors.New("unterminated double quote")
			}
			inWord, quoted = true, true
		case c == '\\':
			if i+1 >= len(s) {
				return nil, errors.New("trailing backslash")
			}
			i++
			if s[i] == '\n' {
				continue
			}
			word.WriteByte(s[i])
			inWord, quoted = true, true
		case c == ' ' || c == '\t':
			if err := endWord(); err != nil {
				return nil, err
			}
		case c == '\n' || c == ';':
			if err := endWord(); err != nil {
				return nil, err
			}
			endCmd(";")
		case c == '&' || c == '|':
			if i+1 >= len(s) || s[i+1] != c {
				return nil, fmt.Errorf("unsupported operator %q", c)
			}
			if err := endWord(); err != nil {
				return nil, err
			}
			endCmd(string([]byte{c, c}))
			i++
		case c == '#' && !inWord:
			for i < len(s) && s[i] != '\n' {
				i++
			}
			i--
		case strings.IndexByte("$`()<>*?[]{}~!", c) >= 0:
			return nil, fmt.Errorf("unquoted metacharacter %q", c)
		default:
			word.WriteByte(c)
			inWord = true
		}
	}
	if err := endWord(); err != nil {
		return nil, err
	}
	endCmd("")
	return cmds, nil
}
