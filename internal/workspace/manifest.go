package workspace

import (
	"archive/tar"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// entry is what the quick check compares for one working-tree file: a file
// whose size, mtime and mode are unchanged is not sent again (rsync's rule).
type entry struct {
	Size  int64       `json:"s"`
	Mtime int64       `json:"m"` // Unix nanoseconds
	Mode  fs.FileMode `json:"p"`
}

// manifest maps a repository-relative path to its entry at the last sync.
type manifest map[string]entry

// scan lstats names under root. Only regular files and symlinks are kept: a
// listed directory is a submodule (not synced), a vanished file is a deletion.
func scan(root string, names []string) (manifest, error) {
	m := make(manifest, len(names))
	for _, n := range names {
		st, err := os.Lstat(filepath.Join(root, n))
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if !st.Mode().IsRegular() && st.Mode()&fs.ModeSymlink == 0 {
			continue
		}
		m[n] = entry{Size: st.Size(), Mtime: st.ModTime().UnixNano(), Mode: st.Mode()}
	}
	return m, nil
}

// diff returns what must be sent to turn old into cur, and what must go.
func diff(old, cur manifest) (changed, deleted []string) {
	for n, e := range cur {
		if o, ok := old[n]; !ok || o != e {
			changed = append(changed, n)
		}
	}
	for n := range old {
		if _, ok := cur[n]; !ok {
			deleted = append(deleted, n)
		}
	}
	slices.Sort(changed)
	slices.Sort(deleted)
	return changed, deleted
}

func (m manifest) bytes() int64 {
	var n int64
	for _, e := range m {
		n += e.Size
	}
	return n
}

func loadManifest(path string) (manifest, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var m manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("manifest %s: %w", path, err)
	}
	return m, nil
}

func saveManifest(path string, m manifest) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// tarWriter streams files into a tar for the guest's `tar -x`. Owners are
// root (the guest user); modes and mtimes are the host's.
type tarWriter struct {
	tw    *tar.Writer
	bytes int64
}

func newTar(w io.Writer) *tarWriter { return &tarWriter{tw: tar.NewWriter(w)} }

// file adds the host file src as name (relative, slash-separated). mode, when
// non-zero, replaces the file's permission bits.
func (t *tarWriter) file(name, src string, mode fs.FileMode) error {
	st, err := os.Lstat(src)
	if err != nil {
		return err
	}
	hdr := &tar.Header{Name: name, ModTime: st.ModTime(), Format: tar.FormatPAX, Uname: "root", Gname: "root"}
	perm := st.Mode().Perm()
	if mode != 0 {
		perm = mode.Perm()
	}
	hdr.Mode = int64(perm)
	switch {
	case st.Mode()&fs.ModeSymlink != 0:
		target, err := os.Readlink(src)
		if err != nil {
			return err
		}
		hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, target
		return t.tw.WriteHeader(hdr)
	case st.Mode().IsRegular():
	default:
		return fmt.Errorf("%s: not a regular file or symlink", src)
	}
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	hdr.Typeflag, hdr.Size = tar.TypeReg, st.Size()
	if err := t.tw.WriteHeader(hdr); err != nil {
		return err
	}
	// A file that shrank while we read it is padded by the tar writer's
	// error; one that grew is truncated to the header's size.
	n, err := io.CopyN(t.tw, f, hdr.Size)
	t.bytes += n
	if err != nil {
		return fmt.Errorf("%s changed while being sent: %w", src, err)
	}
	return nil
}

// data adds an in-memory file.
func (t *tarWriter) data(name string, b []byte) error {
	hdr := &tar.Header{Name: name, Mode: 0o600, Size: int64(len(b)), ModTime: time.Now(), Typeflag: tar.TypeReg, Format: tar.FormatPAX}
	if err := t.tw.WriteHeader(hdr); err != nil {
		return err
	}
	_, err := t.tw.Write(b)
	t.bytes += int64(len(b))
	return err
}

func (t *tarWriter) close() error { return t.tw.Close() }

// Keys of the manifest that are not working-tree files: the object store and
// the index, sent as files (objects are immutable and content-addressed, so a
// file copy is exact; new packs and loose objects are all a resync sends).
const (
	gitObjectsKey = ".git/objects/"
	gitIndexKey   = ".git/index"
)

// scanGit adds the object store under objectsDir and the index file to m.
// Temporary files of a running git (tmp_*, incoming-*) are skipped.
func scanGit(m manifest, objectsDir, index string) error {
	err := filepath.WalkDir(objectsDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if os.IsNotExist(err) {
				return nil // a git process removed it under us
			}
			return err
		}
		name := d.Name()
		if strings.HasPrefix(name, "tmp_") || strings.HasPrefix(name, "incoming-") {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() {
			return nil
		}
		st, err := d.Info()
		if err != nil {
			return nil
		}
		rel, _ := filepath.Rel(objectsDir, p)
		m[gitObjectsKey+filepath.ToSlash(rel)] = entry{Size: st.Size(), Mtime: st.ModTime().UnixNano(), Mode: st.Mode()}
		return nil
	})
	if err != nil {
		return err
	}
	if index != "" {
		if st, err := os.Stat(index); err == nil && st.Mode().IsRegular() {
			m[gitIndexKey] = entry{Size: st.Size(), Mtime: st.ModTime().UnixNano(), Mode: st.Mode()}
		}
	}
	return nil
}

// worktreeOnly drops the git entries (drift is about the working tree).
func (m manifest) worktreeOnly() manifest {
	out := make(manifest, len(m))
	for k, e := range m {
		if !strings.HasPrefix(k, ".git/") {
			out[k] = e
		}
	}
	return out
}
