package guest

import (
	"bytes"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/banger-dev/banger/internal/api"
)

func newPub(t *testing.T) ssh.PublicKey {
	t.Helper()
	_, pub, err := NewHostKey()
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

func openKH(t *testing.T) *KnownHosts {
	t.Helper()
	kh, err := OpenKnownHosts(filepath.Join(t.TempDir(), "ssh", "known_hosts"))
	if err != nil {
		t.Fatal(err)
	}
	return kh
}

func tcpAddr(s string) net.Addr {
	a, _ := net.ResolveTCPAddr("tcp", s)
	return a
}

func TestPinReplacesAndWritesOpenSSHLines(t *testing.T) {
	kh := openKH(t)
	k1, k2, k3 := newPub(t), newPub(t), newPub(t)
	if err := kh.Pin("10.0.0.2:22", k1); err != nil {
		t.Fatal(err)
	}
	if err := kh.Pin("10.0.0.3,other.vm", k3); err != nil {
		t.Fatal(err)
	}
	if err := kh.Pin("10.0.0.2,dev.vm", k2); err != nil { // replaces k1
		t.Fatal(err)
	}
	b, _ := os.ReadFile(kh.Path())
	want := knownhosts.Line([]string{"10.0.0.3", "other.vm"}, k3) + "\n" +
		knownhosts.Line([]string{"10.0.0.2", "dev.vm"}, k2) + "\n"
	if string(b) != want {
		t.Fatalf("file:\n%s\nwant:\n%s", b, want)
	}
	cb := kh.Callback()
	if err := cb("10.0.0.2:22", tcpAddr("10.0.0.2:22"), k2); err != nil {
		t.Fatal(err)
	}
	if err := cb("10.0.0.2:22", tcpAddr("10.0.0.2:22"), k1); !errors.Is(err, ErrHostKeyMismatch) {
		t.Fatalf("old key accepted after Pin replaced it: %v", err)
	}
	// Dialled by name, the IP's pin applies too.
	if err := cb("dev.vm:22", tcpAddr("10.0.0.2:22"), k3); !errors.Is(err, ErrHostKeyMismatch) {
		t.Fatalf("name dial with wrong key: %v", err)
	}
	// A non-default port is its own host, in OpenSSH's [host]:port form.
	if err := kh.Pin("127.0.0.1:2222", k1); err != nil {
		t.Fatal(err)
	}
	b, _ = os.ReadFile(kh.Path())
	if !strings.Contains(string(b), "[127.0.0.1]:2222 ssh-ed25519 ") {
		t.Fatalf("port form missing:\n%s", b)
	}
}

func TestRemoveKeepsOtherNamesAndForeignLines(t *testing.T) {
	kh := openKH(t)
	k1, k2 := newPub(t), newPub(t)
	foreign := "# a comment a human wrote\n" +
		"this line is garbage\n" +
		"@cert-authority *.example " + strings.TrimSpace(string(AuthorizedKey(k2))) + "\n"
	if err := os.WriteFile(kh.Path(), []byte(foreign), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := kh.Pin("10.0.0.2,dev.vm", k1); err != nil {
		t.Fatal(err)
	}
	if err := kh.Pin("10.0.0.9", k2); err != nil {
		t.Fatal(err)
	}
	if err := kh.Remove("10.0.0.2"); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(kh.Path())
	want := foreign + knownhosts.Line([]string{"dev.vm"}, k1) + "\n" + knownhosts.Line([]string{"10.0.0.9"}, k2) + "\n"
	if string(b) != want {
		t.Fatalf("file:\n%s\nwant:\n%s", b, want)
	}
	if err := kh.Remove("dev.vm", "10.0.0.9", "never.pinned"); err != nil {
		t.Fatal(err)
	}
	b, _ = os.ReadFile(kh.Path())
	if string(b) != foreign {
		t.Fatalf("file:\n%s\nwant:\n%s", b, foreign)
	}
	st, _ := os.Stat(kh.Path())
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("mode after rewrite %v", st.Mode().Perm())
	}
	// No temp files left behind by the atomic rewrites.
	ents, _ := os.ReadDir(filepath.Dir(kh.Path()))
	if len(ents) != 1 {
		t.Fatalf("dir holds %d entries, want only known_hosts", len(ents))
	}
}

func TestRemoveHashedPin(t *testing.T) {
	kh := openKH(t)
	k := newPub(t)
	line := knownhosts.HashHostname("10.0.0.5") + " " + strings.TrimSpace(string(AuthorizedKey(k))) + "\n"
	os.WriteFile(kh.Path(), []byte(line), 0o600)
	if keys, _ := kh.Keys("10.0.0.5"); len(keys) != 1 {
		t.Fatalf("hashed pin not matched")
	}
	if err := kh.Remove("10.0.0.5"); err != nil {
		t.Fatal(err)
	}
	if keys, _ := kh.Keys("10.0.0.5"); len(keys) != 0 {
		t.Fatalf("hashed pin survived Remove")
	}
}

func TestCorruptLinesIgnoredWithWarning(t *testing.T) {
	kh := openKH(t)
	var logs bytes.Buffer
	kh.SetLogger(slog.New(slog.NewTextHandler(&logs, nil)))
	k := newPub(t)
	content := "garbage garbage garbage\n" +
		"10.0.0.7 ssh-ed25519 not-base64!!!\n" +
		"10.0.0.7 ssh-ed25519\n" +
		"@bogus 10.0.0.7 " + strings.TrimSpace(string(AuthorizedKey(newPub(t)))) + "\n" +
		knownhosts.Line([]string{"10.0.0.7"}, k) + "\n" +
		"\x00\xff\n"
	os.WriteFile(kh.Path(), []byte(content), 0o600)
	cb := kh.Callback()
	if err := cb("10.0.0.7:22", tcpAddr("10.0.0.7:22"), k); err != nil {
		t.Fatalf("valid pin beside corrupt lines refused: %v", err)
	}
	if err := cb("10.0.0.7:22", tcpAddr("10.0.0.7:22"), newPub(t)); !errors.Is(err, ErrHostKeyMismatch) {
		t.Fatalf("corrupt lines disabled pinning: %v", err)
	}
	if n := strings.Count(logs.String(), "ignoring corrupt known_hosts line"); n < 5 {
		t.Fatalf("%d warnings, want one per corrupt line:\n%s", n, logs.String())
	}
	// x/crypto's reader agrees on the same file.
	xcb, err := knownhosts.New(kh.Path())
	if err != nil {
		t.Fatal(err)
	}
	if err := xcb("10.0.0.7:22", tcpAddr("10.0.0.7:22"), k); err != nil {
		t.Fatal(err)
	}
}

func TestRevokedKeyRefused(t *testing.T) {
	kh := openKH(t)
	k := newPub(t)
	os.WriteFile(kh.Path(), []byte("@revoked * "+string(AuthorizedKey(k))), 0o600)
	if err := kh.Callback()("10.0.0.8:22", tcpAddr("10.0.0.8:22"), k); err == nil || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("revoked key accepted: %v", err)
	}
}

func TestHostileHostNamesRejected(t *testing.T) {
	kh := openKH(t)
	k := newPub(t)
	for _, h := range []string{"", "10.0.0.2\n10.0.0.3", "a b", "10.0.0.2 ssh-ed25519 AAAA", "*", "!10.0.0.2",
		"|1|abc|def", "@revoked", "#x", "a\tb", "a\x00b", "a\rb", "10.0.0.2,"} {
		if err := kh.Pin(h, k); !errors.Is(err, api.ErrInvalid) {
			t.Errorf("Pin(%q) = %v, want ErrInvalid", h, err)
		}
		if err := kh.Remove(h); h != "" && !errors.Is(err, api.ErrInvalid) {
			t.Errorf("Remove(%q) = %v, want ErrInvalid", h, err)
		}
	}
	b, _ := os.ReadFile(kh.Path())
	if len(b) != 0 {
		t.Fatalf("file written by rejected input:\n%s", b)
	}
}

func TestOpenKnownHostsPermissions(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ssh")
	os.MkdirAll(dir, 0o755)
	p := filepath.Join(dir, "known_hosts")
	os.WriteFile(p, nil, 0o644)
	if _, err := OpenKnownHosts(p); err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(p)
	dst, _ := os.Stat(dir)
	if st.Mode().Perm() != 0o600 || dst.Mode().Perm() != 0o700 {
		t.Fatalf("modes file %v dir %v, want 0600/0700", st.Mode().Perm(), dst.Mode().Perm())
	}
	// A shared sticky directory is refused, never chmod'ed.
	shared := filepath.Join(t.TempDir(), "shared")
	os.Mkdir(shared, 0o777|os.ModeSticky)
	os.Chmod(shared, 0o777|os.ModeSticky)
	if _, err := OpenKnownHosts(filepath.Join(shared, "known_hosts")); !errors.Is(err, api.ErrPermission) {
		t.Fatalf("shared dir: %v", err)
	}
	if st, _ := os.Stat(shared); st.Mode().Perm() != 0o777 {
		t.Fatalf("shared dir was chmod'ed to %v", st.Mode().Perm())
	}
}

func TestWildcardMatch(t *testing.T) {
	for _, tc := range []struct {
		p, s string
		want bool
	}{
		{"*", "anything", true}, {"10.0.0.*", "10.0.0.42", true}, {"10.0.0.?", "10.0.0.42", false},
		{"*.vm", "dev.vm", true}, {"*.vm", "dev.vmx", false}, {"a*b*c", "axxbyyc", true}, {"a*b*c", "axxbyy", false},
		{"", "", true}, {"", "a", false}, {"**", "", true},
	} {
		if got := wildcardMatch(tc.p, tc.s); got != tc.want {
			t.Errorf("wildcardMatch(%q,%q)=%v", tc.p, tc.s, got)
		}
	}
	if matchHostPatterns([]string{"10.0.0.*", "!10.0.0.2"}, "10.0.0.2") {
		t.Error("negated pattern did not win")
	}
}
