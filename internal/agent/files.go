package agent

import (
	"archive/tar"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"time"
)

// localName cleans a tar entry name and refuses one that is absolute or
// climbs out of the extraction directory.
func localName(name string) (string, error) {
	c := path.Clean(name)
	if c == "." || filepath.IsLocal(c) {
		return c, nil
	}
	return "", fmt.Errorf("tar entry %q: outside the target directory", name)
}

// put extracts a tar stream under dir. os.Root confines every step, symlinks
// included: an entry that would write outside dir fails the extraction.
func put(dir string, in io.Reader) error {
	if !filepath.IsAbs(dir) {
		return fmt.Errorf("put: %q is not an absolute path", dir)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	type dirMeta struct {
		name  string
		mode  fs.FileMode
		mtime time.Time
	}
	var dirs []dirMeta
	tr := tar.NewReader(in)
	buf := make([]byte, 256<<10)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("tar: %w", err)
		}
		name, err := localName(h.Name)
		if err != nil {
			return err
		}
		mode := h.FileInfo().Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
		if name == "." && h.Typeflag != tar.TypeDir {
			return fmt.Errorf("tar entry %q: not a directory", h.Name)
		}
		if name != "." {
			if err := root.MkdirAll(path.Dir(name), 0o755); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			if h.Typeflag != tar.TypeDir {
				// Replace what is there rather than write through a symlink.
				if fi, err := root.Lstat(name); err == nil && !fi.IsDir() {
					if err := root.Remove(name); err != nil {
						return err
					}
				}
			}
		}
		switch h.Typeflag {
		case tar.TypeDir:
			if err := root.MkdirAll(name, 0o755); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			dirs = append(dirs, dirMeta{name, mode, h.ModTime})
		case tar.TypeReg:
			f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_EXCL, 0o600)
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			// io.CopyBuffer through a plain Writer: larger writes than the
			// 32 KiB of File.ReadFrom's fallback.
			_, err = io.CopyBuffer(struct{ io.Writer }{f}, tr, buf)
			if err == nil {
				err = f.Chmod(mode)
			}
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err == nil {
				err = root.Chtimes(name, h.ModTime, h.ModTime)
			}
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
		case tar.TypeSymlink:
			if err := root.Symlink(h.Linkname, name); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
		case tar.TypeLink:
			target, err := localName(h.Linkname)
			if err != nil {
				return err
			}
			if err := root.Link(target, name); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
		default:
			return fmt.Errorf("tar entry %q: unsupported type %q", h.Name, h.Typeflag)
		}
	}
	// Entries created inside a directory changed its time: set directories
	// last, deepest first.
	for i := len(dirs) - 1; i >= 0; i-- {
		d := dirs[i]
		if err := root.Chmod(d.name, d.mode); err != nil {
			return err
		}
		if err := root.Chtimes(d.name, d.mtime, d.mtime); err != nil {
			return err
		}
	}
	// Drain the stream to its end-of-input frame (tar padding may follow).
	if _, err := io.Copy(io.Discard, in); err != nil {
		return err
	}
	return nil
}

// get writes a tar stream of p, names relative to p's parent, as output
// frames. Symlinks are archived as links, never followed.
func get(p string, fw *frameWriter) error {
	if !filepath.IsAbs(p) {
		return fmt.Errorf("get: %q is not an absolute path", p)
	}
	p = filepath.Clean(p)
	out := newOutputWriter(fw)
	tw := tar.NewWriter(out)
	parent := filepath.Dir(p)
	buf := make([]byte, 256<<10)
	err := filepath.WalkDir(p, func(file string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if info.Mode()&fs.ModeSocket != 0 {
			return nil // tar cannot hold a socket
		}
		var link string
		if info.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(file); err != nil {
				return err
			}
		}
		h, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return fmt.Errorf("%s: %w", file, err)
		}
		rel, err := filepath.Rel(parent, file)
		if err != nil {
			return err
		}
		h.Name = filepath.ToSlash(rel)
		if info.IsDir() {
			h.Name += "/"
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if !info.Mode().IsRegular() {
			return nil
		}
		f, err := os.Open(file)
		if err != nil {
			return err
		}
		defer f.Close()
		// Exactly the size in the header: a file that shrank fails, one
		// that grew is cut at its size when archived.
		n, err := io.CopyBuffer(tw, io.LimitReader(struct{ io.Reader }{f}, h.Size), buf)
		if err == nil && n != h.Size {
			err = fmt.Errorf("file shrank from %d to %d bytes while being read", h.Size, n)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", file, err)
		}
		return nil
	})
	if err == nil {
		err = tw.Close()
	}
	if err == nil {
		err = out.Flush()
	}
	return err
}
