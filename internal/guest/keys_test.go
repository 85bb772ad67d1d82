package guest

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/testenv"
)

func TestEnsureClientKey(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state", "ssh")
	p := filepath.Join(dir, "id_ed25519")
	s1, err := EnsureClientKey(p)
	if err != nil {
		t.Fatal(err)
	}
	if s1.PublicKey().Type() != ssh.KeyAlgoED25519 {
		t.Fatalf("type %s", s1.PublicKey().Type())
	}
	st, _ := os.Stat(p)
	dst, _ := os.Stat(dir)
	if st.Mode().Perm() != 0o600 || dst.Mode().Perm() != 0o700 {
		t.Fatalf("modes key %v dir %v", st.Mode().Perm(), dst.Mode().Perm())
	}
	b, _ := os.ReadFile(p)
	if !bytes.HasPrefix(b, []byte("-----BEGIN OPENSSH PRIVATE KEY-----")) {
		t.Fatalf("not OpenSSH PEM: %.40s", b)
	}
	pub, _ := os.ReadFile(p + ".pub")
	if !bytes.Equal(pub, AuthorizedKey(s1.PublicKey())) {
		t.Fatalf(".pub %q", pub)
	}
	s2, err := EnsureClientKey(p)
	if err != nil {
		t.Fatal(err)
	}
	if !keysEqual(s1.PublicKey(), s2.PublicKey()) {
		t.Fatal("second call generated a new key")
	}
	// A loosened mode is tightened (OpenSSH would refuse the key).
	os.Chmod(p, 0o644)
	if _, err := EnsureClientKey(p); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(p); st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", st.Mode().Perm())
	}
	// A corrupt key is an error, never silently replaced.
	os.WriteFile(p, []byte("not a key"), 0o600)
	if _, err := EnsureClientKey(p); err == nil {
		t.Fatal("corrupt key accepted")
	}
	if b2, _ := os.ReadFile(p); string(b2) != "not a key" {
		t.Fatal("corrupt key overwritten")
	}
}

func TestEnsureClientKeyConcurrentFirstUse(t *testing.T) {
	p := filepath.Join(t.TempDir(), "ssh", "id_ed25519")
	var wg sync.WaitGroup
	keys := make([]ssh.PublicKey, 8)
	for i := range keys {
		wg.Go(func() {
			s, err := EnsureClientKey(p)
			if err != nil {
				t.Error(err)
				return
			}
			keys[i] = s.PublicKey()
		})
	}
	wg.Wait()
	for _, k := range keys[1:] {
		if !keysEqual(keys[0], k) {
			t.Fatal("concurrent first use handed out different keys")
		}
	}
}

func TestNewHostKey(t *testing.T) {
	priv, pub, err := NewHostKey()
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.ParsePrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	if !keysEqual(s.PublicKey(), pub) || pub.Type() != ssh.KeyAlgoED25519 {
		t.Fatal("private and public halves differ")
	}
	_, pub2, _ := NewHostKey()
	if keysEqual(pub, pub2) {
		t.Fatal("two VMs got the same host key")
	}
	line := AuthorizedKey(pub)
	parsed, _, _, rest, err := ssh.ParseAuthorizedKey(line)
	if err != nil || !keysEqual(parsed, pub) || len(rest) != 0 || !bytes.HasSuffix(line, []byte("\n")) {
		t.Fatalf("authorized_keys line %q: %v", line, err)
	}
}

// TestOpenSSHInterop drives the real OpenSSH client with banger's key and
// known_hosts against the in-process server: the formats are OpenSSH's.
func TestOpenSSHInterop(t *testing.T) {
	testenv.RequireTools(t, "ssh")
	f := newFixture(t)
	s := startServer(t, "127.0.0.1:0", f.signer.PublicKey())
	run(t, f, target(s), ExecRequest{Argv: []string{"true"}}) // TOFU pin by banger
	host, port, _ := strings.Cut(s.addr, ":")
	args := func(kh string) []string {
		return []string{"-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
			"-o", "UserKnownHostsFile=" + kh, "-o", "GlobalKnownHostsFile=/dev/null",
			"-o", "IdentitiesOnly=yes", "-i", filepath.Join(f.dir, "ssh", "id_ed25519"),
			"-p", port, "root@" + host, "echo", "from-openssh"}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := system.Exec{}.Run(ctx, "ssh", args(f.kh.Path())...)
	if err != nil || !strings.Contains(string(out), "from-openssh") {
		t.Fatalf("ssh with banger's known_hosts: %v\n%s", err, out)
	}
	// And OpenSSH refuses a mismatch recorded the same way.
	other := filepath.Join(f.dir, "ssh", "other_known_hosts")
	kh2, err := OpenKnownHosts(other)
	if err != nil {
		t.Fatal(err)
	}
	kh2.Pin(s.addr, newPub(t))
	out, err = system.Exec{}.Run(ctx, "ssh", args(other)...)
	var ee *system.ExitError
	if !errors.As(err, &ee) || !strings.Contains(string(out), "HOST IDENTIFICATION HAS CHANGED") {
		t.Fatalf("ssh accepted a wrong pin: %v\n%s", err, out)
	}
}
