package image

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/system"
)

// Owners is the side table of an image build: the owner, group, mode
// (setuid, setgid and sticky included) and extended attributes each entry
// must have in the ext4, recorded while the staging tree is written by
// whoever runs banger. Nothing in the staging tree is chowned, no setuid or
// setgid bit is set there and no xattr is applied: an unprivileged owner
// could not, and a root daemon should not materialise a hostile image's
// setuid-root files on the host. After mkfs.ext4 -d, StampScript turns the
// table into debugfs commands that write exactly the recorded metadata into
// the image's inodes.
//
// Entries are keyed by their slash-separated path relative to the tree's
// root. A path that is not in the table (a directory created implicitly, or
// a file Customize wrote, or a tree copied as root) keeps what the staging
// tree says, except that the staging uid/gid (the process's own, files it
// wrote) stand for root: 0:0.
type Owners struct {
	byPath     map[string]*ownerMeta
	euid, egid uint32 // who writes the staging tree
	// kids indexes the recorded paths and their ancestors by parent, so
	// forgetting a subtree costs its size, not the table's: a layer of
	// whiteouts must not make a flatten quadratic.
	kids map[string]map[string]struct{}
}

type ownerMeta struct {
	uid, gid int
	mode     fs.FileMode // permission bits plus setuid, setgid, sticky
	xattrs   map[string][]byte
	symlink  bool
}

// NewOwners returns an empty table for a tree written by euid:egid.
func NewOwners(euid, egid int) *Owners {
	return &Owners{byPath: map[string]*ownerMeta{}, kids: map[string]map[string]struct{}{}, euid: uint32(euid), egid: uint32(egid)}
}

const specialBits = fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky

// stagingMode is what a staging entry gets on the host: only permission bits
// (no setuid/setgid/sticky), and always readable and writable (directories
// also searchable) by the staging owner, so later layers, mkfs.ext4 -d and
// the staging clean-up can go through it. The real mode lives in the table.
func stagingMode(mode fs.FileMode, dir bool) fs.FileMode {
	if dir {
		return mode.Perm() | 0o700
	}
	return mode.Perm() | 0o600
}

func (o *Owners) record(p string, uid, gid int, mode fs.FileMode, xattrs map[string][]byte) {
	if o == nil {
		return
	}
	o.put(p, &ownerMeta{uid: uid, gid: gid, mode: mode & (fs.ModePerm | specialBits), xattrs: xattrs})
}

// put records m at p and links p and its ancestors into the kids index.
func (o *Owners) put(p string, m *ownerMeta) {
	p = path.Clean(p)
	o.byPath[p] = m
	for p != "." && p != "/" {
		parent := path.Dir(p)
		k := o.kids[parent]
		if k == nil {
			k = map[string]struct{}{}
			o.kids[parent] = k
		}
		if _, ok := k[p]; ok {
			return // the rest of the chain is indexed already
		}
		k[p] = struct{}{}
		p = parent
	}
}

func (o *Owners) recordSymlink(p string, uid, gid int) {
	if o == nil {
		return
	}
	o.put(p, &ownerMeta{uid: uid, gid: gid, mode: 0o777, symlink: true})
}

// link makes newp a hard link of oldp: one inode, one record.
func (o *Owners) link(newp, oldp string) {
	if o == nil {
		return
	}
	if m, ok := o.byPath[oldp]; ok {
		o.put(newp, m)
	} else {
		delete(o.byPath, newp)
	}
}

// forget drops p and everything below it (it was removed or replaced).
func (o *Owners) forget(p string) {
	if o == nil {
		return
	}
	p = path.Clean(p)
	if p == "." || p == "/" {
		clear(o.byPath)
		clear(o.kids)
		return
	}
	o.drop(p)
	delete(o.kids[path.Dir(p)], p)
}

// drop removes p's record and its subtree's, and their index entries.
func (o *Owners) drop(p string) {
	delete(o.byPath, p)
	for k := range o.kids[p] {
		o.drop(k)
	}
	delete(o.kids, p)
}

// setMode changes a recorded entry's mode (Customize's chmods).
func (o *Owners) setMode(p string, mode fs.FileMode) {
	if o == nil {
		return
	}
	if m, ok := o.byPath[path.Clean(p)]; ok {
		m.mode = mode & (fs.ModePerm | specialBits)
	}
}

// Len is the number of recorded paths.
func (o *Owners) Len() int {
	if o == nil {
		return 0
	}
	return len(o.byPath)
}

// xattrNamespaces are the extended attribute namespaces an image may carry;
// POSIX ACLs (system.*) and anything else are left out.
var xattrNamespaces = []string{"user.", "security.", "trusted."}

func allowedXattr(name string) bool {
	for _, ns := range xattrNamespaces {
		if strings.HasPrefix(name, ns) && len(name) > len(ns) {
			return true
		}
	}
	return false
}

// debugfsQuote quotes s for debugfs' command parser (lib/ss): inside double
// quotes everything is literal except a doubled quote, which stands for one.
// Control characters (a newline would end the command) cannot be encoded;
// entry names never hold them (cleanEntryName), anything else is refused.
func debugfsQuote(s string) (string, error) {
	if strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return "", fmt.Errorf("path %q: control characters cannot be written to debugfs: %w", s, api.ErrInvalid)
	}
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`, nil
}

// StampScript walks rootfs (the tree mkfs.ext4 -d copied) and returns the
// debugfs commands that give each inode of the image its recorded owner,
// group, mode and xattrs: only what differs from the staging tree, since
// mkfs.ext4 -d already copied that. Xattr values are written as files under
// valueDir (ea_set -f), so binary values need no quoting. Hard links are
// stamped once, through the first path met.
func (o *Owners) StampScript(rootfs, valueDir string) ([]byte, int, error) {
	if o == nil {
		o = NewOwners(os.Geteuid(), os.Getegid())
	}
	var sb strings.Builder
	cmds, values := 0, 0
	seen := map[uint64]bool{}
	err := filepath.WalkDir(rootfs, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(rootfs, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		fi, err := d.Info()
		if err != nil {
			return err
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return fmt.Errorf("stat %s: no unix stat", p)
		}
		if !d.IsDir() && st.Nlink > 1 {
			if seen[st.Ino] {
				return nil
			}
			seen[st.Ino] = true
		}
		diskMode := fs.FileMode(st.Mode & 0o777)
		if st.Mode&syscall.S_ISUID != 0 {
			diskMode |= fs.ModeSetuid
		}
		if st.Mode&syscall.S_ISGID != 0 {
			diskMode |= fs.ModeSetgid
		}
		if st.Mode&syscall.S_ISVTX != 0 {
			diskMode |= fs.ModeSticky
		}
		var want ownerMeta
		if rec, ok := o.byPath[rel]; ok {
			want = *rec
		} else {
			want = ownerMeta{uid: int(st.Uid), gid: int(st.Gid), mode: diskMode}
			if st.Uid == o.euid {
				want.uid = 0
			}
			if st.Gid == o.egid {
				want.gid = 0
			}
		}
		if st.Mode&syscall.S_IFMT == syscall.S_IFLNK {
			want.mode = 0o777 // a symlink's mode means nothing; keep what mkfs wrote
			diskMode = 0o777
		}
		if uint32(want.uid) == st.Uid && uint32(want.gid) == st.Gid && want.mode == diskMode && len(want.xattrs) == 0 {
			return nil
		}
		target := "/" + rel
		if rel == "." {
			target = "/"
		}
		q, err := debugfsQuote(target)
		if err != nil {
			return err
		}
		if uint32(want.uid) != st.Uid {
			fmt.Fprintf(&sb, "sif %s uid %d\n", q, want.uid)
			cmds++
		}
		if uint32(want.gid) != st.Gid {
			fmt.Fprintf(&sb, "sif %s gid %d\n", q, want.gid)
			cmds++
		}
		if want.mode != diskMode {
			m := st.Mode&syscall.S_IFMT | uint32(want.mode.Perm())
			if want.mode&fs.ModeSetuid != 0 {
				m |= syscall.S_ISUID
			}
			if want.mode&fs.ModeSetgid != 0 {
				m |= syscall.S_ISGID
			}
			if want.mode&fs.ModeSticky != 0 {
				m |= syscall.S_ISVTX
			}
			fmt.Fprintf(&sb, "sif %s mode 0%o\n", q, m)
			cmds++
		}
		names := make([]string, 0, len(want.xattrs))
		for k := range want.xattrs {
			names = append(names, k)
		}
		sort.Strings(names)
		for _, k := range names {
			if !allowedXattr(k) {
				continue
			}
			qk, err := debugfsQuote(k)
			if err != nil {
				return err
			}
			values++
			vf := filepath.Join(valueDir, strconv.Itoa(values))
			if err := os.WriteFile(vf, want.xattrs[k], 0o600); err != nil {
				return err
			}
			qv, err := debugfsQuote(vf)
			if err != nil {
				return err
			}
			fmt.Fprintf(&sb, "ea_set -f %s %s %s\n", qv, q, qk)
			cmds++
		}
		return nil
	})
	if err != nil {
		return nil, 0, fmt.Errorf("ownership script: %w", err)
	}
	return []byte(sb.String()), cmds, nil
}

// stampImage writes the table into img with debugfs -w. debugfs exits 0 even
// when a command fails, so its output is checked: every line must be its
// banner or the echo of a command; anything else is an error.
func stampImage(ctx context.Context, r system.Runner, img, rootfs, work string, owners *Owners) (int, error) {
	valueDir := filepath.Join(work, "xattr-values")
	if err := os.Mkdir(valueDir, 0o700); err != nil {
		return 0, fmt.Errorf("ownership: %w", err)
	}
	script, n, err := owners.StampScript(rootfs, valueDir)
	if err != nil {
		return 0, err
	}
	if n == 0 {
		return 0, nil
	}
	sf := filepath.Join(work, "owners.debugfs")
	if err := os.WriteFile(sf, script, 0o600); err != nil {
		return 0, fmt.Errorf("ownership: %w", err)
	}
	out, err := r.Run(ctx, "debugfs", "-w", "-f", sf, img)
	if err != nil {
		return 0, fmt.Errorf("stamp ownership into %s: %w", img, err)
	}
	if bad := debugfsErrors(out); bad != "" {
		return 0, fmt.Errorf("stamp ownership into %s: debugfs: %s", img, bad)
	}
	return n, nil
}

// debugfsErrors returns the first lines of debugfs output that are neither
// its version banner ("debugfs 1.47.0 (...)") nor a command echo
// ("debugfs: sif ..."), bounded.
func debugfsErrors(out []byte) string {
	var bad []string
	for _, l := range strings.Split(string(out), "\n") {
		if l == "" || strings.HasPrefix(l, "debugfs: ") || strings.HasPrefix(l, "debugfs 1.") {
			continue
		}
		if len(l) > 300 {
			l = l[:300] + "..."
		}
		bad = append(bad, l)
		if len(bad) == 5 {
			break
		}
	}
	return strings.Join(bad, "; ")
}
