package disk

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/api"
)

func TestWriteSeedRoundTrip(t *testing.T) {
	dir := t.TempDir()
	seed := filepath.Join(dir, "seed.img")
	files := []SeedFile{
		{Path: "etc/hostname", Mode: 0o644, Data: []byte("dev\n")},
		{Path: "etc/ssh/ssh_host_ed25519_key", Mode: 0o600, Data: []byte("PRIVATE")},
		{Path: "etc/ssh/ssh_host_ed25519_key.pub", Mode: 0o644, Data: []byte("ssh-ed25519 AAAA")},
		{Path: "etc/ssh/authorized_keys.d/root", Mode: 0o644, Data: []byte("ssh-ed25519 BBBB")},
		{Path: "etc/machine-id", Mode: 0o444, Data: []byte("0123456789abcdef0123456789abcdef\n")},
		{Path: "empty", Mode: 0o600, Data: nil},
	}
	if err := WriteSeed(seed, files); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(seed)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size()%512 != 0 || st.Size() < MinSeedSize || st.Mode().Perm() != 0o600 {
		t.Fatalf("seed is %d bytes, mode %v", st.Size(), st.Mode().Perm())
	}

	f, _ := os.Open(seed)
	defer f.Close()
	tr := tar.NewReader(f)
	var got []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Uid != 0 || h.Gid != 0 || h.Format != tar.FormatUSTAR {
			t.Errorf("%s: owner %d:%d format %v", h.Name, h.Uid, h.Gid, h.Format)
		}
		data, _ := io.ReadAll(tr)
		got = append(got, h.Name+" "+os.FileMode(h.Mode).String()+" "+string(data))
	}
	want := []string{
		"etc/ -rwxr-xr-x ",
		"etc/ssh/ -rwxr-xr-x ",
		"etc/ssh/authorized_keys.d/ -rwxr-xr-x ",
		"etc/hostname -rw-r--r-- dev\n",
		"etc/ssh/ssh_host_ed25519_key -rw------- PRIVATE",
		"etc/ssh/ssh_host_ed25519_key.pub -rw-r--r-- ssh-ed25519 AAAA",
		"etc/ssh/authorized_keys.d/root -rw-r--r-- ssh-ed25519 BBBB",
		"etc/machine-id -r--r--r-- 0123456789abcdef0123456789abcdef\n",
		"empty -rw------- ",
	}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("archive:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	noTemps(t, dir)
}

func TestWriteSeedPadding(t *testing.T) {
	seed := filepath.Join(t.TempDir(), "seed.img")
	big := bytes.Repeat([]byte("x"), 1<<20+3)
	if err := WriteSeed(seed, []SeedFile{{Path: "big", Mode: 0o644, Data: big}}); err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(seed)
	if st.Size()%512 != 0 || st.Size() < 1<<20+3+512 {
		t.Fatalf("seed is %d bytes", st.Size())
	}
	// An empty seed is still a valid (empty) archive of the minimum size.
	if err := WriteSeed(seed, nil); err != nil {
		t.Fatal(err)
	}
	st, _ = os.Stat(seed)
	if st.Size() != MinSeedSize {
		t.Fatalf("empty seed is %d bytes", st.Size())
	}
	f, _ := os.Open(seed)
	defer f.Close()
	if _, err := tar.NewReader(f).Next(); err != io.EOF {
		t.Fatalf("empty seed: %v", err)
	}
}

func TestWriteSeedHostile(t *testing.T) {
	cases := map[string][]SeedFile{
		"absolute":        {{Path: "/etc/passwd", Mode: 0o644}},
		"dotdot":          {{Path: "../etc/passwd", Mode: 0o644}},
		"inner dotdot":    {{Path: "etc/../../x", Mode: 0o644}},
		"dot":             {{Path: ".", Mode: 0o644}},
		"empty":           {{Path: "", Mode: 0o644}},
		"trailing slash":  {{Path: "etc/", Mode: 0o644}},
		"double slash":    {{Path: "etc//x", Mode: 0o644}},
		"nul":             {{Path: "etc/x\x00y", Mode: 0o644}},
		"newline":         {{Path: "etc/x\ny", Mode: 0o644}},
		"backslash":       {{Path: `etc\x`, Mode: 0o644}},
		"non-ascii":       {{Path: "etc/é", Mode: 0o644}},
		"too long":        {{Path: strings.Repeat("a/", 200) + "x", Mode: 0o644}},
		"setuid":          {{Path: "bin/x", Mode: 0o4755}},
		"symlink mode":    {{Path: "x", Mode: os.ModeSymlink | 0o777}},
		"dir mode":        {{Path: "x", Mode: os.ModeDir | 0o755}},
		"duplicate":       {{Path: "x", Mode: 0o644}, {Path: "x", Mode: 0o600}},
		"file as parent":  {{Path: "etc", Mode: 0o644}, {Path: "etc/x", Mode: 0o644}},
		"parent as file":  {{Path: "etc/x", Mode: 0o644}, {Path: "etc", Mode: 0o644}},
		"oversized entry": {{Path: "x", Mode: 0o644, Data: make([]byte, maxSeedFile+1)}},
	}
	for name, files := range cases {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			err := WriteSeed(filepath.Join(dir, "seed.img"), files)
			if !errors.Is(err, api.ErrInvalid) {
				t.Fatalf("err %v, want ErrInvalid", err)
			}
			if ents, _ := os.ReadDir(dir); len(ents) != 0 {
				t.Fatalf("left behind %v", ents)
			}
		})
	}
}

func TestWriteSeedMissingDir(t *testing.T) {
	if err := WriteSeed(filepath.Join(t.TempDir(), "no", "seed.img"), nil); err == nil {
		t.Fatal("expected error")
	}
}
