package disk

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/testenv"
)

func fileSum(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

// qemuInfo is what `qemu-img info` says about a file opened as format.
type qemuInfo struct {
	Format        string `json:"format"`
	VirtualSize   int64  `json:"virtual-size"`
	Backing       string `json:"backing-filename"`
	BackingFormat string `json:"backing-filename-format"`
}

func imgInfo(t *testing.T, path, format string) qemuInfo {
	t.Helper()
	out, err := system.Exec{}.Run(context.Background(), "qemu-img", "info", "--output=json", "-f", format, path)
	if err != nil {
		t.Fatal(err)
	}
	var i qemuInfo
	if err := json.Unmarshal(out, &i); err != nil {
		t.Fatalf("qemu-img info: %v\n%s", err, out)
	}
	return i
}

// sameAsSeen compares what QEMU's block layer reads from a (format fa) and b
// (format fb): `qemu-img compare` exits 0 when identical, 1 when not.
func sameAsSeen(t *testing.T, a, fa, b, fb string) bool {
	t.Helper()
	_, err := system.Exec{}.Run(context.Background(), "qemu-img", "compare", "-q", "-f", fa, "-F", fb, a, b)
	var ee *system.ExitError
	switch {
	case err == nil:
		return true
	case errors.As(err, &ee) && ee.Code == 1:
		return false
	default:
		t.Fatal(err)
		return false
	}
}

func qemuIO(t *testing.T, path, format, cmd string) {
	t.Helper()
	if out, err := (system.Exec{}).Run(context.Background(), "qemu-io", "-f", format, "-c", cmd, path); err != nil ||
		strings.Contains(string(out), "Pattern verification failed") {
		t.Fatalf("qemu-io %s %q: %v\n%s", path, cmd, err, out)
	}
}

func mode(t *testing.T, path string) os.FileMode {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Mode().Perm()
}

// requireNoReflink stops the test where dir's file system shares extents:
// Layer would take FICLONE there, never reaching the path under test.
func requireNoReflink(t *testing.T, m Method) {
	t.Helper()
	if m == MethodReflink {
		testenv.Missing(t, "the test dir's file system supports FICLONE; the overlay and copy paths need one that does not (ext4, tmpfs)")
	}
}

func TestLayerQcow2Overlay(t *testing.T) {
	testenv.RequireTools(t, "qemu-img", "qemu-io")
	ctx := context.Background()
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src.img"), filepath.Join(dir, "dst.img")
	const size = 256 << 20
	makeSparse(t, src, size, map[int64][]byte{
		0:         randBytes(t, 4096),
		64 << 20:  randBytes(t, 1<<20),
		size - 16: randBytes(t, 16),
	})
	if err := os.Chmod(src, 0o644); err != nil {
		t.Fatal(err)
	}
	srcSum := fileSum(t, src)

	m, format, err := Layer(ctx, system.Exec{}, src, FormatRaw, dst, true)
	if err != nil {
		t.Fatal(err)
	}
	requireNoReflink(t, m)
	if m != MethodQcow2 || format != FormatQcow2 {
		t.Fatalf("Layer = %s, %s; want %s, %s", m, format, MethodQcow2, FormatQcow2)
	}
	info := imgInfo(t, dst, FormatQcow2)
	if info.Format != FormatQcow2 || info.VirtualSize != size || info.Backing != src || info.BackingFormat != FormatRaw {
		t.Fatalf("overlay = %+v; want qcow2 of %d bytes backed by %s (raw)", info, size, src)
	}
	if got := mode(t, dst); got != 0o600 {
		t.Errorf("overlay mode %v, want 0600", got)
	}
	if a := allocated(t, dst); a > 1<<20 {
		t.Errorf("overlay allocates %d bytes; it should hold metadata only", a)
	}
	noTemps(t, dir)

	// What the VMM reads through the overlay is the source...
	if !sameAsSeen(t, dst, FormatQcow2, src, FormatRaw) {
		t.Fatal("overlay content differs from its source")
	}
	// ...and what it writes stays in the overlay.
	qemuIO(t, dst, FormatQcow2, "write -P 0xab 4096 64k")
	qemuIO(t, dst, FormatQcow2, "read -P 0xab 4096 64k")
	if fileSum(t, src) != srcSum {
		t.Fatal("a write to the overlay changed its source")
	}
	if sameAsSeen(t, dst, FormatQcow2, src, FormatRaw) {
		t.Fatal("the write did not reach the overlay")
	}

	// A qcow2 source (a VM restored from a snapshot, say) layers the same way.
	dst2 := filepath.Join(dir, "dst2.img")
	m, format, err = Layer(ctx, system.Exec{}, dst, FormatQcow2, dst2, true)
	if err != nil || m != MethodQcow2 || format != FormatQcow2 {
		t.Fatalf("Layer of a qcow2 source = %s, %s, %v", m, format, err)
	}
	if info := imgInfo(t, dst2, FormatQcow2); info.Backing != dst || info.BackingFormat != FormatQcow2 {
		t.Fatalf("second overlay = %+v", info)
	}
	qemuIO(t, dst2, FormatQcow2, "read -P 0xab 4096 64k")
	if !sameAsSeen(t, dst2, FormatQcow2, dst, FormatQcow2) {
		t.Fatal("second overlay differs from the first")
	}
}

// The backing format is the one given, never probed: a raw source whose
// first bytes are a qcow2 header (a guest can write one) is still raw.
func TestLayerNeverProbesTheSource(t *testing.T) {
	testenv.RequireTools(t, "qemu-img")
	ctx := context.Background()
	dir := t.TempDir()
	hostile := filepath.Join(dir, "hostile.qcow2")
	if _, err := (system.Exec{}).Run(ctx, "qemu-img", "create", "-q", "-u", "-f", "qcow2", "-b", "/etc/shadow", "-F", "raw", hostile, "64M"); err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(dir, "src.img")
	hdr, err := os.ReadFile(hostile)
	if err != nil {
		t.Fatal(err)
	}
	makeSparse(t, src, 64<<20, map[int64][]byte{0: hdr})
	dst := filepath.Join(dir, "dst.img")
	m, _, err := Layer(ctx, system.Exec{}, src, FormatRaw, dst, true)
	if err != nil {
		t.Fatal(err)
	}
	requireNoReflink(t, m)
	if info := imgInfo(t, dst, FormatQcow2); info.Backing != src || info.BackingFormat != FormatRaw {
		t.Fatalf("overlay = %+v; want backed by %s as raw", info, src)
	}
	if !sameAsSeen(t, dst, FormatQcow2, src, FormatRaw) {
		t.Fatal("overlay does not read its source as raw bytes")
	}
}

func TestLayerSparseCopy(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src.img"), filepath.Join(dir, "dst.img")
	makeSparse(t, src, 128<<20, map[int64][]byte{8192: randBytes(t, 1<<20)})
	if err := os.Chmod(src, 0o644); err != nil {
		t.Fatal(err)
	}
	// No runner: the copy path must not run anything.
	m, format, err := Layer(ctx, nil, src, FormatRaw, dst, false)
	if err != nil {
		t.Fatal(err)
	}
	requireNoReflink(t, m)
	if m != MethodSparseCopy || format != FormatRaw {
		t.Fatalf("Layer = %s, %s; want %s, raw", m, format, MethodSparseCopy)
	}
	if got := mode(t, dst); got != 0o600 {
		t.Errorf("copy mode %v, want 0600", got)
	}
	if a := allocated(t, dst); a > 2<<20 {
		t.Errorf("copy allocates %d bytes; holes were filled", a)
	}
	sameContent(t, src, dst)
	noTemps(t, dir)
	// A qcow2 source stays qcow2 when copied.
	if _, format, err := Layer(ctx, nil, src, FormatQcow2, filepath.Join(dir, "q"), false); err != nil || format != FormatQcow2 {
		t.Fatalf("copy of a qcow2 source: format %q, %v", format, err)
	}
}

func TestLayerReflinkXFS(t *testing.T) {
	mnt := mountXFS(t)
	ctx := context.Background()
	src := filepath.Join(mnt, "src.img")
	makeSparse(t, src, 128<<20, map[int64][]byte{4096: randBytes(t, 4<<20)})
	for _, f := range []string{FormatRaw, FormatQcow2} {
		dst := filepath.Join(mnt, "dst-"+f)
		// No runner: reflink wins over the overlay without running qemu-img.
		m, format, err := Layer(ctx, nil, src, f, dst, true)
		if err != nil {
			t.Fatal(err)
		}
		if m != MethodReflink || format != f {
			t.Fatalf("Layer(%s) on XFS = %s, %s; want reflink, %s", f, m, format, f)
		}
		if got := mode(t, dst); got != 0o600 {
			t.Errorf("clone mode %v, want 0600", got)
		}
		sameContent(t, src, dst)
	}
	noTemps(t, mnt)
}

// failRunner fails every command, recording it.
type failRunner struct{ cmds []string }

func (r *failRunner) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	r.cmds = append(r.cmds, name+" "+strings.Join(args, " "))
	return nil, errors.New("qemu-img: simulated failure")
}
func (r *failRunner) Start(ctx context.Context, spec system.ProcSpec) (int, error) {
	return 0, errors.New("not here")
}

func TestLayerFailureLeavesNothing(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	makeSparse(t, src, 16<<20, map[int64][]byte{0: randBytes(t, 4096)})

	if _, _, err := Layer(ctx, nil, src, "vmdk", filepath.Join(dir, "a"), true); !errors.Is(err, api.ErrInvalid) {
		t.Errorf("format vmdk: %v", err)
	}
	if _, _, err := Layer(ctx, nil, filepath.Join(dir, "missing"), FormatRaw, filepath.Join(dir, "b"), true); err == nil {
		t.Error("layer of a missing file succeeded")
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, _, err := Layer(cctx, nil, src, FormatRaw, filepath.Join(dir, "c"), false); err == nil {
		t.Error("layer with a cancelled context succeeded")
	}
	r := &failRunner{}
	m, _, err := Layer(ctx, r, src, FormatRaw, filepath.Join(dir, "d"), true)
	if m == MethodReflink {
		requireNoReflink(t, m)
	}
	if err == nil || !strings.Contains(err.Error(), "simulated failure") {
		t.Errorf("failing qemu-img: %v", err)
	}
	if len(r.cmds) != 1 || !strings.HasPrefix(r.cmds[0], "qemu-img create -q -f qcow2 -b "+src+" -F raw "+filepath.Join(dir, ".d.tmp-")) {
		t.Errorf("commands = %q", r.cmds)
	}
	for _, n := range []string{"a", "b", "c", "d"} {
		if _, err := os.Lstat(filepath.Join(dir, n)); !os.IsNotExist(err) {
			t.Errorf("%s exists after a failed layer", n)
		}
	}
	noTemps(t, dir)
}
