package disk

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/testenv"
)

// makeSparse writes a size-byte file that is all hole except the given chunks.
func makeSparse(t *testing.T, path string, size int64, chunks map[int64][]byte) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	for off, b := range chunks {
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
	}
}

func randBytes(t *testing.T, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func allocated(t *testing.T, path string) int64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// dataRanges lists a file's data extents as [start, end) pairs.
func dataRanges(t *testing.T, f *os.File, size int64) [][2]int64 {
	t.Helper()
	var rs [][2]int64
	for off := int64(0); off < size; {
		s, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
		if err == unix.ENXIO {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		e, err := unix.Seek(int(f.Fd()), s, unix.SEEK_HOLE)
		if err != nil {
			t.Fatal(err)
		}
		rs = append(rs, [2]int64{s, e})
		off = e
	}
	return rs
}

// sameContent compares two files byte for byte, reading only where either has
// data: elsewhere both read as zeros.
func sameContent(t *testing.T, a, b string) {
	t.Helper()
	fa, err := os.Open(a)
	if err != nil {
		t.Fatal(err)
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		t.Fatal(err)
	}
	defer fb.Close()
	sa, _ := fa.Stat()
	sb, _ := fb.Stat()
	if sa.Size() != sb.Size() {
		t.Fatalf("sizes differ: %d vs %d", sa.Size(), sb.Size())
	}
	ba, bb := make([]byte, 1<<20), make([]byte, 1<<20)
	for _, r := range append(dataRanges(t, fa, sa.Size()), dataRanges(t, fb, sb.Size())...) {
		for off := r[0]; off < r[1]; {
			n := min(int64(len(ba)), r[1]-off)
			if _, err := fa.ReadAt(ba[:n], off); err != nil && err != io.EOF {
				t.Fatal(err)
			}
			if _, err := fb.ReadAt(bb[:n], off); err != nil && err != io.EOF {
				t.Fatal(err)
			}
			if !bytes.Equal(ba[:n], bb[:n]) {
				t.Fatalf("%s and %s differ in [%d, %d)", a, b, off, off+n)
			}
			off += n
		}
	}
}

func noTemps(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if len(e.Name()) > 0 && e.Name()[0] == '.' {
			t.Errorf("temporary file left behind: %s", e.Name())
		}
	}
}

func TestCloneKeepsHoles(t *testing.T) {
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src.img"), filepath.Join(dir, "dst.img")
	const size = 1 << 30
	makeSparse(t, src, size, map[int64][]byte{
		0:          randBytes(t, 4096),
		512 << 20:  randBytes(t, 1<<20),
		size - 100: randBytes(t, 100), // data right up to an unaligned end
	})
	if err := os.Chmod(src, 0o640); err != nil {
		t.Fatal(err)
	}
	m, err := Clone(context.Background(), src, dst)
	if err != nil {
		t.Fatal(err)
	}
	if m != MethodReflink && m != MethodSparseCopy {
		t.Fatalf("method %q", m)
	}
	st, err := os.Stat(dst)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != size || st.Mode().Perm() != 0o640 {
		t.Fatalf("dst size %d mode %v, want %d 0640", st.Size(), st.Mode().Perm(), size)
	}
	if got := allocated(t, dst); got > 3<<20 {
		t.Fatalf("clone allocates %d bytes; holes were filled (method %s)", got, m)
	}
	sameContent(t, src, dst)
	noTemps(t, dir)
}

// /dev/shm is tmpfs: copy_file_range to the test dir fails with EXDEV, so this
// exercises the read/write fallback, which must keep holes too.
func TestCloneAcrossFileSystems(t *testing.T) {
	shm, err := os.MkdirTemp("/dev/shm", "banger-disk-test-")
	if err != nil {
		testenv.Missing(t, "no /dev/shm: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(shm) })
	var a, b unix.Statfs_t
	dir := t.TempDir()
	if unix.Statfs(shm, &a) != nil || unix.Statfs(dir, &b) != nil || a.Type == b.Type {
		testenv.Missing(t, "test dir and /dev/shm are the same file system type")
	}
	src, dst := filepath.Join(shm, "src.img"), filepath.Join(dir, "dst.img")
	makeSparse(t, src, 256<<20, map[int64][]byte{
		1 << 20:   randBytes(t, 1<<20),
		100 << 20: append(make([]byte, 128<<10), randBytes(t, 4096)...), // zeros inside data stay holes
	})
	m, err := Clone(context.Background(), src, dst)
	if err != nil {
		t.Fatal(err)
	}
	if m != MethodSparseCopy {
		t.Fatalf("method %q, want sparse-copy", m)
	}
	if got := allocated(t, dst); got > 2<<20 {
		t.Fatalf("clone allocates %d bytes; holes were filled", got)
	}
	sameContent(t, src, dst)
}

func TestCopyRangeReadWriteFallback(t *testing.T) {
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	data := randBytes(t, 3<<20+17)
	copy(data[1<<20:], make([]byte, 1<<20)) // a zero run the fallback must not write
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	in, _ := os.Open(src)
	defer in.Close()
	out, _ := os.Create(dst)
	defer out.Close()
	if err := out.Truncate(int64(len(data))); err != nil {
		t.Fatal(err)
	}
	useCFR := false
	if err := copyRange(context.Background(), in, out, 0, int64(len(data)), &useCFR); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(dst)
	if !bytes.Equal(got, data) {
		t.Fatal("content differs")
	}
	if a := allocated(t, dst); a > int64(len(data))-(1<<20)+(64<<10) {
		t.Fatalf("zero run was written: %d bytes allocated", a)
	}
}

func TestCloneFailureLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	makeSparse(t, src, 64<<20, map[int64][]byte{0: randBytes(t, 1<<20)})

	if _, err := Clone(context.Background(), filepath.Join(dir, "missing"), filepath.Join(dir, "a")); err == nil {
		t.Fatal("clone of a missing file succeeded")
	}
	if _, err := Clone(context.Background(), dir, filepath.Join(dir, "b")); err == nil {
		t.Fatal("clone of a directory succeeded")
	}
	if _, err := Clone(context.Background(), src, filepath.Join(dir, "nodir", "c")); err == nil {
		t.Fatal("clone into a missing directory succeeded")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Clone(ctx, src, filepath.Join(dir, "d")); err == nil {
		t.Fatal("clone with a cancelled context succeeded")
	}
	for _, n := range []string{"a", "b", "c", "d"} {
		if _, err := os.Lstat(filepath.Join(dir, n)); !os.IsNotExist(err) {
			t.Errorf("%s exists after a failed clone", n)
		}
	}
	noTemps(t, dir)
}

// mountXFS mounts a fresh reflink-capable XFS (a loop device over a file in
// the test's temp dir) and returns its mount point; it is gone after the test.
func mountXFS(t *testing.T) string {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireTools(t, "mkfs.xfs", "losetup", "mount", "umount")
	ctx := context.Background()
	r := system.Exec{}
	dir := t.TempDir()
	backing := filepath.Join(dir, "xfs.img")
	if err := os.WriteFile(backing, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(backing, 512<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := r.Run(ctx, "mkfs.xfs", "-q", "-m", "reflink=1", backing); err != nil {
		testenv.Missing(t, "mkfs.xfs: %v %s", err, out)
	}
	out, err := r.Run(ctx, "losetup", "--find", "--show", backing)
	if err != nil {
		testenv.Missing(t, "losetup: %v", err)
	}
	loop := string(bytes.TrimSpace(out))
	t.Cleanup(func() { r.Run(context.Background(), "losetup", "-d", loop) })
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Run(ctx, "mount", "-t", "xfs", loop, mnt); err != nil {
		testenv.Missing(t, "mount xfs: %v", err)
	}
	// Registered after losetup's cleanup, so it runs first.
	t.Cleanup(func() { r.Run(context.Background(), "umount", mnt) })
	return mnt
}

// TestCloneReflinkXFS clones on a real reflink-capable XFS (loop device).
func TestCloneReflinkXFS(t *testing.T) {
	mnt := mountXFS(t)
	ctx := context.Background()
	src, dst := filepath.Join(mnt, "src.img"), filepath.Join(mnt, "dst.img")
	makeSparse(t, src, 256<<20, map[int64][]byte{4096: randBytes(t, 8<<20)})
	m, err := Clone(ctx, src, dst)
	if err != nil {
		t.Fatal(err)
	}
	if m != MethodReflink {
		t.Fatalf("method %q on XFS with reflink=1, want reflink", m)
	}
	sameContent(t, src, dst)
	// The clone shares extents: changing it must not change the source.
	f, err := os.OpenFile(dst, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("changed"), 4096); err != nil {
		t.Fatal(err)
	}
	f.Close()
	b := make([]byte, 7)
	sf, _ := os.Open(src)
	defer sf.Close()
	if _, err := sf.ReadAt(b, 4096); err != nil || string(b) == "changed" {
		t.Fatalf("source changed through the clone: %q %v", b, err)
	}
	noTemps(t, mnt)
}
