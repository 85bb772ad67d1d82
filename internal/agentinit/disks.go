package agentinit

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Disk labels banger's host side writes.
const (
	LabelRoot = "rootfs"
	LabelWork = "bangerwork"
)

// DiskKind says what a disk holds.
type DiskKind int

const (
	DiskUnknown DiskKind = iota
	DiskRoot
	DiskWork
	DiskSeed
)

func (k DiskKind) String() string {
	switch k {
	case DiskRoot:
		return "root"
	case DiskWork:
		return "work"
	case DiskSeed:
		return "seed"
	}
	return "unknown"
}

const (
	sbOffset    = 1024
	sbMagicOff  = 56
	sbLabelOff  = 120
	ext4Magic   = 0xEF53
	tarMagicOff = 257
)

// Ext4Label returns the volume label of an ext2/3/4 file system, and false
// when r holds none.
func Ext4Label(r io.ReaderAt) (string, bool) {
	var sb [sbLabelOff + 16]byte
	if _, err := r.ReadAt(sb[:], sbOffset); err != nil {
		return "", false
	}
	if uint16(sb[sbMagicOff])|uint16(sb[sbMagicOff+1])<<8 != ext4Magic {
		return "", false
	}
	label := sb[sbLabelOff : sbLabelOff+16]
	if i := bytes.IndexByte(label, 0); i >= 0 {
		label = label[:i]
	}
	return string(label), true
}

// IsTar reports whether r starts with a ustar header.
func IsTar(r io.ReaderAt) bool {
	var m [5]byte
	if _, err := r.ReadAt(m[:], tarMagicOff); err != nil {
		return false
	}
	return string(m[:]) == "ustar"
}

// Classify says what r holds: banger's root or work ext4, the seed tar, or
// something else.
func Classify(r io.ReaderAt) DiskKind {
	if label, ok := Ext4Label(r); ok {
		switch label {
		case LabelRoot:
			return DiskRoot
		case LabelWork:
			return DiskWork
		}
		return DiskUnknown
	}
	if IsTar(r) {
		return DiskSeed
	}
	return DiskUnknown
}

// Disks maps each kind to its device path.
type Disks map[DiskKind]string

// ScanDisks classifies the virtio disks listed in sysBlock (/sys/block),
// opening them under devDir (/dev). Enumeration order of virtio-mmio devices
// is not stable, so content decides. A second disk of one kind is an error:
// guessing would mount the wrong root.
func ScanDisks(sysBlock, devDir string) (Disks, error) {
	ents, err := os.ReadDir(sysBlock)
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(ents))
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "vd") {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	found := Disks{}
	var errs []error
	for _, n := range names {
		dev := filepath.Join(devDir, n)
		kind, err := classifyPath(dev)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if kind == DiskUnknown {
			continue
		}
		if prev, dup := found[kind]; dup {
			return nil, fmt.Errorf("two %s disks: %s and %s", kind, prev, dev)
		}
		found[kind] = dev
	}
	return found, errors.Join(errs...)
}

func classifyPath(p string) (DiskKind, error) {
	f, err := os.Open(p)
	if err != nil {
		return DiskUnknown, err
	}
	defer f.Close()
	return Classify(f), nil
}
