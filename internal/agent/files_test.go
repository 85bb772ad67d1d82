package agent

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// blockReader yields deterministic data: one pseudo-random 1 MiB block,
// stamped with its index, so blocks differ and reordering shows in a hash.
type blockReader struct {
	block []byte
	i     uint64
	off   int
}

func newBlockReader() *blockReader {
	b := make([]byte, 1<<20)
	r := rand.NewChaCha8([32]byte{'b', 'a', 'n', 'g', 'e', 'r'})
	_, _ = r.Read(b)
	return &blockReader{block: b}
}

func (r *blockReader) Read(p []byte) (int, error) {
	if r.off == len(r.block) {
		r.i++
		r.off = 0
	}
	binary.BigEndian.PutUint64(r.block, r.i)
	n := copy(p, r.block[r.off:])
	r.off += n
	return n, nil
}

func TestPutGetLarge(t *testing.T) {
	size := int64(1 << 30)
	if testing.Short() {
		size = 64 << 20
	}
	c := pair(t, &Server{})
	dir := filepath.Join(t.TempDir(), "dst")
	mtime := time.Date(2020, 2, 3, 4, 5, 6, 0, time.UTC)

	pr, pw := io.Pipe()
	want := sha256.New()
	go func() {
		tw := tar.NewWriter(pw)
		err := tw.WriteHeader(&tar.Header{Name: "big.bin", Mode: 0o640, Size: size, ModTime: mtime, Typeflag: tar.TypeReg})
		if err == nil {
			_, err = io.Copy(io.MultiWriter(tw, want), io.LimitReader(newBlockReader(), size))
		}
		if err == nil {
			err = tw.Close()
		}
		pw.CloseWithError(err)
	}()
	start := time.Now()
	if err := c.Put(testCtx(t, 5*time.Minute), dir, pr); err != nil {
		t.Fatal(err)
	}
	putTime := time.Since(start)
	fi, err := os.Stat(filepath.Join(dir, "big.bin"))
	if err != nil || fi.Size() != size || fi.Mode().Perm() != 0o640 || !fi.ModTime().Equal(mtime) {
		t.Fatalf("extracted file %v %v", fi, err)
	}

	start = time.Now()
	gr, gw := io.Pipe()
	got := sha256.New()
	var n int64
	readErr := make(chan error, 1)
	go func() {
		tr := tar.NewReader(gr)
		h, err := tr.Next()
		if err == nil && (h.Name != "big.bin" || h.Size != size) {
			err = io.ErrUnexpectedEOF
		}
		if err == nil {
			n, err = io.Copy(got, tr)
		}
		if err == nil {
			_, err = tr.Next()
			if err == io.EOF {
				err = nil
			}
		}
		_, _ = io.Copy(io.Discard, gr)
		readErr <- err
	}()
	err = c.Get(testCtx(t, 5*time.Minute), filepath.Join(dir, "big.bin"), gw)
	gw.CloseWithError(err)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-readErr; err != nil {
		t.Fatal(err)
	}
	if n != size || !bytes.Equal(got.Sum(nil), want.Sum(nil)) {
		t.Fatalf("round trip: %d bytes, checksum mismatch", n)
	}
	t.Logf("%d MiB: put %v (%.0f MB/s), get %v (%.0f MB/s)", size>>20, putTime, float64(size)/putTime.Seconds()/1e6,
		time.Since(start), float64(size)/time.Since(start).Seconds()/1e6)
}

// tarOf builds an archive from headers; a regular file's body is its name.
func tarOf(t *testing.T, hs ...*tar.Header) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range hs {
		body := ""
		if h.Typeflag == tar.TypeReg {
			body = h.Name
			h.Size = int64(len(body))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(tw, body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// listTree prints a tree as sorted "path type [target|content]" lines.
func listTree(t *testing.T, root string) string {
	var lines []string
	err := filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		line := rel + " " + fi.Mode().String()
		switch {
		case fi.Mode()&os.ModeSymlink != 0:
			l, _ := os.Readlink(p)
			line += " -> " + l
		case fi.Mode().IsRegular():
			b, _ := os.ReadFile(p)
			line += " " + string(b)
		}
		lines = append(lines, line)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

func TestPutGetTree(t *testing.T) {
	c := pair(t, &Server{})
	dir := filepath.Join(t.TempDir(), "a", "b") // created
	mt := time.Date(2021, 1, 1, 0, 0, 0, 0, time.UTC)
	archive := tarOf(t,
		&tar.Header{Name: "d/", Typeflag: tar.TypeDir, Mode: 0o750, ModTime: mt},
		&tar.Header{Name: "d/f", Typeflag: tar.TypeReg, Mode: 0o604, ModTime: mt},
		&tar.Header{Name: "d/link", Typeflag: tar.TypeSymlink, Linkname: "f"},
		&tar.Header{Name: "d/hard", Typeflag: tar.TypeLink, Linkname: "d/f"},
		&tar.Header{Name: "./e/x", Typeflag: tar.TypeReg, Mode: 0o755, ModTime: mt}, // parent made on the way
	)
	if err := c.Put(testCtx(t, 20*time.Second), dir, bytes.NewReader(archive)); err != nil {
		t.Fatal(err)
	}
	want := strings.Join([]string{
		". drwxr-xr-x",
		"d drwxr-x---",
		"d/f -rw----r-- d/f",
		"d/hard -rw----r-- d/f",
		"d/link Lrwxrwxrwx -> f",
		"e drwxr-xr-x",
		"e/x -rwxr-xr-x ./e/x",
	}, "\n")
	if got := listTree(t, dir); got != want {
		t.Fatalf("tree:\n%s\nwant:\n%s", got, want)
	}
	if fi, _ := os.Stat(filepath.Join(dir, "d")); !fi.ModTime().Equal(mt) {
		t.Errorf("directory mtime %v, want %v", fi.ModTime(), mt)
	}

	// Get the tree back and extract it elsewhere: the same tree under "d".
	var buf bytes.Buffer
	if err := c.Get(testCtx(t, 20*time.Second), filepath.Join(dir, "d"), &buf); err != nil {
		t.Fatal(err)
	}
	var names []string
	tr := tar.NewReader(bytes.NewReader(buf.Bytes()))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
	}
	if got := strings.Join(names, " "); got != "d/ d/f d/hard d/link" {
		t.Fatalf("get entries %q", got)
	}
	dir2 := t.TempDir()
	if err := c.Put(testCtx(t, 20*time.Second), dir2, &buf); err != nil {
		t.Fatal(err)
	}
	if got, want := listTree(t, filepath.Join(dir2, "d")), listTree(t, filepath.Join(dir, "d")); got != want {
		t.Fatalf("round trip:\n%s\nwant:\n%s", got, want)
	}

	if err := c.Get(testCtx(t, 20*time.Second), filepath.Join(dir, "missing"), io.Discard); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Fatalf("get of a missing path: %v", err)
	}
	// A writer that fails aborts the Get with its error.
	if err := c.Get(testCtx(t, 20*time.Second), filepath.Join(dir, "d"), &failWriter{n: 10}); err == nil || !strings.Contains(err.Error(), errFull.Error()) {
		t.Fatalf("get into a failing writer: %v", err)
	}
}

func TestPutHostile(t *testing.T) {
	c := pair(t, &Server{})
	cases := map[string][]*tar.Header{
		"dotdot":   {{Name: "../escape", Typeflag: tar.TypeReg}},
		"deep":     {{Name: "a/../../escape", Typeflag: tar.TypeReg}},
		"absolute": {{Name: "/tmp/escape-abs", Typeflag: tar.TypeReg}},
		"symlink-dir": {
			{Name: "link", Typeflag: tar.TypeSymlink, Linkname: "../outside"},
			{Name: "link/escape", Typeflag: tar.TypeReg},
		},
		"symlink-abs": {
			{Name: "link", Typeflag: tar.TypeSymlink, Linkname: "OUTSIDE"},
			{Name: "link/escape", Typeflag: tar.TypeReg},
		},
		"hardlink": {{Name: "h", Typeflag: tar.TypeLink, Linkname: "../outside/victim"}},
		"device":   {{Name: "dev", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 3}},
	}
	for name, hs := range cases {
		t.Run(name, func(t *testing.T) {
			base := t.TempDir()
			outside := filepath.Join(base, "outside")
			if err := os.Mkdir(outside, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(outside, "victim"), []byte("v"), 0o644); err != nil {
				t.Fatal(err)
			}
			for _, h := range hs {
				if h.Linkname == "OUTSIDE" {
					h.Linkname = outside
				}
			}
			before := listTree(t, base)
			err := c.Put(testCtx(t, 20*time.Second), filepath.Join(base, "dst"), bytes.NewReader(tarOf(t, hs...)))
			if err == nil {
				t.Fatal("hostile archive accepted")
			}
			after := listTree(t, base)
			// Only dst and what it legitimately holds (the symlink) may be new.
			for _, line := range strings.Split(after, "\n") {
				if !strings.Contains(before, line) && !strings.HasPrefix(line, "dst") {
					t.Fatalf("written outside the target: %q (err %v)", line, err)
				}
			}
			if _, serr := os.Stat("/tmp/escape-abs"); serr == nil {
				t.Fatal("absolute entry written")
			}
		})
	}
}
