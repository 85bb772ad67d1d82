package workspace

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/guest"
	"github.com/banger-dev/banger/internal/rpc"
)

// Hostile guests: the fake guest writes crafted bytes to the request's
// stdio instead of running the script; everything else is real (git, the
// store, the temp dir).

// serve writes data to stdout like the SSH transport does: in chunks,
// giving up (as Pool.Exec does) when the host's writer refuses more.
func serve(stdout []byte, code int) func(req guest.ExecRequest) (int, error) {
	return func(req guest.ExecRequest) (int, error) {
		for len(stdout) > 0 {
			n := min(len(stdout), 32<<10)
			if _, err := req.Stdout.Write(stdout[:n]); err != nil {
				return -1, err
			}
			stdout = stdout[n:]
		}
		return code, nil
	}
}

// allocated is how many bytes fn allocated on the heap: an upper bound on
// what it held at once.
func allocated(fn func()) uint64 {
	var a, b runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&a)
	fn()
	runtime.ReadMemStats(&b)
	return b.TotalAlloc - a.TotalAlloc
}

// leftovers lists what a failed pull left in the host's scratch dir.
func (f *fixture) leftovers() []string {
	var left []string
	filepath.WalkDir(f.s.d.Tmp, func(p string, d os.DirEntry, err error) error {
		if p != f.s.d.Tmp {
			left = append(left, p)
		}
		return nil
	})
	return left
}

func (f *fixture) noBranch(t *testing.T, what string) {
	t.Helper()
	if out := sh(t, f.host, "git for-each-ref '--format=%(refname)' refs/heads/banger/"); out != "" {
		t.Errorf("%s: branch created: %s", what, out)
	}
	if left := f.leftovers(); len(left) > 0 {
		t.Errorf("%s: left in the scratch dir: %v", what, left)
	}
}

func (f *fixture) head(t *testing.T) string {
	ws, err := f.store.GetWorkspace(f.ctx, f.g.vm.ID)
	if err != nil {
		t.Fatal(err)
	}
	return ws.Head
}

// A few KiB of sparse tar used to become a 300 MiB bundle on disk (PAX
// formats) or a 300 MiB patch in memory; now any sparse entry is refused.
func TestPullRefusesSparseBomb(t *testing.T) {
	f := newFixture(t)
	f.prepare(false)
	head := f.head(t)
	for _, format := range sparseFormats {
		for _, name := range []string{"bundle", "patch"} {
			bomb := new(tarBuilder).sparse(format, name, 300<<20).file("count", "0\n").file("tip", head+"\n").bytes()
			f.g.hostile = serve(bomb, 0)
			var err error
			alloc := allocated(func() { _, err = f.s.Pull(f.ctx, PullParams{Name: "dev", Force: true}) })
			want := `vm "dev": pull: tar entry "` + name + `" from the guest is a sparse file: refused`
			if !errors.Is(err, api.ErrInvalid) || !strings.HasPrefix(err.Error(), want) {
				t.Errorf("%s %s (%d-byte tar): err %v, want %q", format, name, len(bomb), err, want)
			}
			if alloc > 16<<20 {
				t.Errorf("%s %s: pull allocated %d MiB", format, name, alloc>>20)
			}
			f.noBranch(t, format+" "+name)
		}
	}
}

func TestPullRefusesOversizedEntries(t *testing.T) {
	f := newFixture(t)
	f.prepare(false)
	head := f.head(t)
	for _, tc := range []struct {
		name string
		tar  []byte
		want string
	}{
		{"patch", new(tarBuilder).file("count", "0\n").file("patch", strings.Repeat("x", PullPatchLimit+1)).file("tip", head+"\n").bytes(),
			`vm "dev": pull: tar entry "patch" from the guest exceeds the 32 MiB limit`},
		{"bundle", new(tarBuilder).header("bundle", PullBundleLimit+1).bytes(),
			`vm "dev": pull: tar entry "bundle" from the guest exceeds the 1 GiB limit`},
		{"tip", new(tarBuilder).file("count", "0\n").file("tip", head+strings.Repeat("\n", 1<<20)).bytes(),
			`vm "dev": pull: tar entry "tip" from the guest exceeds the 128 bytes limit`},
		{"count", new(tarBuilder).file("count", strings.Repeat("0", 1<<10)).file("tip", head+"\n").bytes(),
			`vm "dev": pull: tar entry "count" from the guest exceeds the 32 bytes limit`},
	} {
		f.g.hostile = serve(tc.tar, 0)
		var err error
		alloc := allocated(func() { _, err = f.s.Pull(f.ctx, PullParams{Name: "dev", Patch: true}) })
		var le *guest.LimitError
		if !errors.As(err, &le) || !errors.Is(err, api.ErrInvalid) || err.Error() != tc.want {
			t.Errorf("%s: err %v, want %q", tc.name, err, tc.want)
		}
		if alloc > 16<<20 {
			t.Errorf("%s: pull allocated %d MiB", tc.name, alloc>>20)
		}
		f.noBranch(t, tc.name)
	}
}

// stderrFlood writes n MiB to stderr, then a last line, and exits 3.
func stderrFlood(n int) func(req guest.ExecRequest) (int, error) {
	return func(req guest.ExecRequest) (int, error) {
		if req.Stdin != nil {
			io.Copy(io.Discard, req.Stdin) // read what the host sends, then fail
		}
		chunk := bytes.Repeat([]byte("noise "), 1<<20/6)
		for i := 0; i < n; i++ {
			req.Stderr.Write(chunk)
		}
		req.Stderr.Write([]byte("\x1b]0;pwned\x07the real error\n"))
		return 3, nil
	}
}

// A guest that writes 256 MiB to stderr: the error carries only the tail
// (escaped), and the host holds no more than that.
func TestGuestStderrKeptAsTail(t *testing.T) {
	f := newFixture(t)
	f.prepare(false)
	home := f.s.d.Home
	if err := os.MkdirAll(home, 0o700); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(home, ".gitconfig"), []byte("[user]\n"), 0o600)
	os.WriteFile(f.s.d.SyncConfig, []byte(`{"files":[{"path":"~/.gitconfig"}]}`), 0o600)
	f.g.hostile = stderrFlood(256)
	for name, op := range map[string]func() error{
		"pull": func() error { _, err := f.s.Pull(f.ctx, PullParams{Name: "dev"}); return err },
		"sync": func() error { _, err := f.s.SyncFiles(f.ctx, "dev"); return err },
		"prepare": func() error {
			_, err := f.s.Prepare(f.ctx, PrepareParams{Name: "dev", Repo: f.host, Force: true}, nil)
			return err
		},
		"status": func() error {
			st, err := f.s.Status(f.ctx, "dev")
			if err == nil {
				err = errors.New(st.GuestError)
			}
			return err
		},
	} {
		var err error
		alloc := allocated(func() { err = op() })
		if err == nil {
			t.Fatalf("%s: no error", name)
		}
		msg := err.Error()
		if !strings.Contains(msg, "3") || !strings.Contains(msg, "bytes cut] ") || !strings.HasSuffix(msg, `\u001b]0;pwned\u0007the real error`) {
			t.Errorf("%s: error %.200q...%q", name, msg, msg[max(0, len(msg)-60):])
		}
		if len(msg) > guest.TailSize+512 {
			t.Errorf("%s: error is %d bytes", name, len(msg))
		}
		if alloc > 16<<20 {
			t.Errorf("%s: allocated %d MiB", name, alloc>>20)
		}
	}
}

func TestStatusOutputBounded(t *testing.T) {
	f := newFixture(t)
	f.prepare(false)
	f.g.hostile = serve([]byte(strings.Repeat("f", 1<<20)+"\nmain\n0\n"), 0)
	st, err := f.s.Status(f.ctx, "dev")
	if err != nil || st.GuestHead != "" || !strings.Contains(st.GuestError, "workspace status output from the guest exceeds the 4 KiB limit") {
		t.Fatalf("status: head %.40q error %.200q %v", st.GuestHead, st.GuestError, err)
	}
	f.g.hostile = serve([]byte(testTip+"\n\x1b[31mred\n2\n"), 0)
	st, err = f.s.Status(f.ctx, "dev")
	if err != nil || st.GuestHead != testTip || st.GuestBranch != `\u001b[31mred` || st.GuestDirty != 2 {
		t.Fatalf("status: %+v %v", st, err)
	}
}

// The largest patch a pull accepts still fits the one RPC frame that
// carries it back (base64 in JSON, plus the other fields).
func TestPatchLimitFitsTheRPCResult(t *testing.T) {
	b, err := json.Marshal(api.WorkspacePullResult{Branch: strings.Repeat("b", 255), Commit: testTip, Patch: make([]byte, PullPatchLimit)})
	if err != nil {
		t.Fatal(err)
	}
	if len(b)+1<<10 > rpc.MaxResponseFrame {
		t.Fatalf("a %s patch is a %d-byte result; the frame limit is %d", guest.SizeString(PullPatchLimit), len(b), rpc.MaxResponseFrame)
	}
}
