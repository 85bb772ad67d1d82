package agentinit

import (
	"archive/tar"
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

type tarEnt struct {
	name string
	typ  byte
	mode int64
	body string
	link string
}

func mkTar(t testing.TB, ents ...tarEnt) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range ents {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, Linkname: e.link, Uid: 1000, Gid: 1000, Format: tar.FormatPAX}
		if e.typ == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if e.typ == tar.TypeReg {
			tw.Write([]byte(e.body))
		}
	}
	tw.Close()
	return buf.Bytes()
}

func mode(t *testing.T, p string) os.FileMode {
	t.Helper()
	st, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	return st.Mode()
}

func TestUnpackSeed(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/hostname"), []byte("old\n"), 0o644)
	data := mkTar(t,
		tarEnt{name: "./", typ: tar.TypeDir, mode: 0o755},
		tarEnt{name: "etc/", typ: tar.TypeDir, mode: 0o755},
		tarEnt{name: "etc/hostname", typ: tar.TypeReg, mode: 0o644, body: "vm1\n"},
		tarEnt{name: "./etc/ssh/ssh_host_ed25519_key", typ: tar.TypeReg, mode: 0o600, body: "KEY"},
		tarEnt{name: "root/.ssh/", typ: tar.TypeDir, mode: 0o700},
		tarEnt{name: "root/.ssh/authorized_keys", typ: tar.TypeReg, mode: 0o600, body: "ssh-ed25519 AAAA"},
		tarEnt{name: "usr/local/bin/tool", typ: tar.TypeReg, mode: 0o4755, body: "#!"},
	)
	res, err := UnpackSeed(bytes.NewReader(data), root)
	if err != nil {
		t.Fatal(err)
	}
	if res.Files != 4 || res.Dirs != 2 || len(res.Refused) != 0 {
		t.Fatalf("result %+v", res)
	}
	for p, want := range map[string]string{
		"etc/hostname": "vm1\n", "etc/ssh/ssh_host_ed25519_key": "KEY", "root/.ssh/authorized_keys": "ssh-ed25519 AAAA",
	} {
		if b, err := os.ReadFile(filepath.Join(root, p)); err != nil || string(b) != want {
			t.Errorf("%s = %q, %v", p, b, err)
		}
	}
	for p, want := range map[string]os.FileMode{
		"etc/ssh/ssh_host_ed25519_key": 0o600,
		"root/.ssh":                    os.ModeDir | 0o700,
		"root/.ssh/authorized_keys":    0o600,
		"etc/ssh":                      os.ModeDir | 0o755, // implied parent
		"usr/local/bin/tool":           os.ModeSetuid | 0o755,
	} {
		if got := mode(t, filepath.Join(root, p)); got != want {
			t.Errorf("%s mode %v, want %v", p, got, want)
		}
	}
	if os.Geteuid() == 0 {
		// The tar says 1000:1000; the seed always lands owned by root.
		for _, p := range []string{"root/.ssh", "root/.ssh/authorized_keys", "etc/ssh"} {
			st, _ := os.Stat(filepath.Join(root, p))
			if s := st.Sys().(*syscall.Stat_t); s.Uid != 0 || s.Gid != 0 {
				t.Errorf("%s owned by %d:%d", p, s.Uid, s.Gid)
			}
		}
	}
}

func TestUnpackSeedHostile(t *testing.T) {
	outside := t.TempDir()
	sentinel := filepath.Join(outside, "passwd")
	os.WriteFile(sentinel, []byte("untouched"), 0o644)

	root := t.TempDir()
	// The root image holds symlinks pointing out of it.
	os.Symlink(outside, filepath.Join(root, "linkdir"))
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.Symlink(sentinel, filepath.Join(root, "etc/resolv.conf"))
	os.MkdirAll(filepath.Join(root, "var/lib"), 0o755)

	data := mkTar(t,
		tarEnt{name: "../escape", typ: tar.TypeReg, mode: 0o644, body: "x"},
		tarEnt{name: "etc/../../escape2", typ: tar.TypeReg, mode: 0o644, body: "x"},
		tarEnt{name: "/etc/abs", typ: tar.TypeReg, mode: 0o644, body: "x"},
		tarEnt{name: "linkdir/passwd", typ: tar.TypeReg, mode: 0o644, body: "pwned"},
		tarEnt{name: "linkdir/sub/", typ: tar.TypeDir, mode: 0o755},
		tarEnt{name: "etc/sym", typ: tar.TypeSymlink, link: "/etc/passwd"},
		tarEnt{name: "etc/hard", typ: tar.TypeLink, link: "etc/hostname"},
		tarEnt{name: "dev/sda", typ: tar.TypeBlock},
		tarEnt{name: "fifo", typ: tar.TypeFifo},
		tarEnt{name: "var/lib", typ: tar.TypeReg, mode: 0o644, body: "over a dir"},
		// Replaces the symlink itself; must not write through it.
		tarEnt{name: "etc/resolv.conf", typ: tar.TypeReg, mode: 0o644, body: "nameserver 10.0.0.1\n"},
		tarEnt{name: "etc/ok", typ: tar.TypeReg, mode: 0o644, body: "fine"},
	)
	res, err := UnpackSeed(bytes.NewReader(data), root)
	if err != nil {
		t.Fatal(err)
	}
	if res.Files != 2 || len(res.Refused) != 10 {
		t.Fatalf("files %d, refused %d:\n%s", res.Files, len(res.Refused), strings.Join(res.Refused, "\n"))
	}
	for _, want := range []string{`"../escape": '..' in path`, `"/etc/abs": absolute path`, `"linkdir/passwd": path component "linkdir" is a symlink`,
		`"etc/sym": entry type '2' not allowed`, `"var/lib": a directory exists`} {
		if !strings.Contains(strings.Join(res.Refused, "\n"), want) {
			t.Errorf("no refusal %q in:\n%s", want, strings.Join(res.Refused, "\n"))
		}
	}
	if b, _ := os.ReadFile(sentinel); string(b) != "untouched" {
		t.Fatalf("file outside root modified: %q", b)
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 1 {
		t.Fatalf("entries created outside root: %v", ents)
	}
	if m := mode(t, filepath.Join(root, "etc/resolv.conf")); !m.IsRegular() {
		t.Errorf("resolv.conf not replaced by a regular file: %v", m)
	}
	for _, p := range []string{"escape", "etc/abs", "etc/sym", "etc/hard", "dev", "fifo"} {
		if _, err := os.Lstat(filepath.Join(root, p)); err == nil {
			t.Errorf("%s created", p)
		}
	}
	if _, err := os.Lstat(filepath.Join(filepath.Dir(root), "escape")); err == nil {
		t.Error("escape created next to root")
	}
}

func TestUnpackSeedCorrupt(t *testing.T) {
	good := mkTar(t, tarEnt{name: "a", typ: tar.TypeReg, mode: 0o644, body: strings.Repeat("x", 1000)})
	if _, err := UnpackSeed(bytes.NewReader(good[:700]), t.TempDir()); err == nil {
		t.Error("truncated archive accepted")
	}
	bad := append([]byte(nil), good...)
	bad[148] ^= 0xff // header checksum
	if _, err := UnpackSeed(bytes.NewReader(bad), t.TempDir()); err == nil {
		t.Error("bad checksum accepted")
	}
	// A raw disk image: tar followed by zero padding is fine.
	padded := append(append([]byte(nil), good...), make([]byte, 1<<16)...)
	if res, err := UnpackSeed(bytes.NewReader(padded), t.TempDir()); err != nil || res.Files != 1 {
		t.Errorf("padded image: %+v %v", res, err)
	}
}

func FuzzUnpackSeed(f *testing.F) {
	f.Add(mkTar(f, tarEnt{name: "etc/hostname", typ: tar.TypeReg, mode: 0o644, body: "x"}))
	f.Add(mkTar(f, tarEnt{name: "../x", typ: tar.TypeReg, mode: 0o644, body: "x"}, tarEnt{name: "l", typ: tar.TypeSymlink, link: "/"}))
	f.Fuzz(func(t *testing.T, data []byte) {
		parent := t.TempDir()
		root := filepath.Join(parent, "root")
		os.Mkdir(root, 0o755)
		UnpackSeed(bytes.NewReader(data), root)
		if ents, _ := os.ReadDir(parent); len(ents) != 1 {
			t.Fatalf("wrote outside root: %v", ents)
		}
		filepath.Walk(root, func(p string, info os.FileInfo, err error) error {
			if err == nil && !info.Mode().IsRegular() && !info.IsDir() {
				t.Fatalf("%s has type %v", p, info.Mode().Type())
			}
			return nil
		})
	})
}

func TestUnpackSeedBudget(t *testing.T) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	// Header claims more than the budget; the body is never written, so an
	// unpacker that trusted Size would fail late or fill the disk.
	tw.WriteHeader(&tar.Header{Name: "big", Typeflag: tar.TypeReg, Mode: 0o644, Size: MaxSeedBytes + 1})
	res, err := UnpackSeed(bytes.NewReader(buf.Bytes()), t.TempDir())
	if len(res.Refused) != 1 || !strings.Contains(res.Refused[0], "budget") || res.Files != 0 {
		t.Fatalf("res %+v, err %v", res, err)
	}
}
