package kernel

import (
	"errors"
	"fmt"
	"io"
	"strings"
)

// File type bits of a cpio/stat mode.
const (
	modeDir  = 0o040000
	modeReg  = 0o100000
	modeChar = 0o020000
)

// cpioWriter writes a newc ("070701") archive, the format the kernel unpacks
// into the initramfs. Uncompressed: unpacking it is the fastest boot.
type cpioWriter struct {
	w      io.Writer
	off    int64
	ino    uint32
	closed bool
}

func newCpioWriter(w io.Writer) *cpioWriter { return &cpioWriter{w: w, ino: 1} }

type cpioHeader struct {
	name         string
	mode         uint32
	size         int64
	rmaj, rmin   uint32
	nlink, mtime uint32
}

func (c *cpioWriter) write(p []byte) error {
	n, err := c.w.Write(p)
	c.off += int64(n)
	return err
}

func (c *cpioWriter) pad() error {
	if r := c.off % 4; r != 0 {
		return c.write(make([]byte, 4-r))
	}
	return nil
}

func (c *cpioWriter) header(h cpioHeader) error {
	if c.closed {
		return errors.New("cpio: write after close")
	}
	name := strings.TrimPrefix(h.name, "/")
	if name == "" || strings.ContainsRune(name, 0) {
		return fmt.Errorf("cpio: bad entry name %q", h.name)
	}
	if h.size < 0 || h.size > 0xffffffff {
		return fmt.Errorf("cpio: %s: size %d out of range", name, h.size)
	}
	nlink := h.nlink
	if nlink == 0 {
		nlink = 1
	}
	ino := c.ino
	c.ino++
	hdr := fmt.Sprintf("070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		ino, h.mode, 0, 0, nlink, h.mtime, uint32(h.size), 0, 0, h.rmaj, h.rmin, len(name)+1, 0)
	if err := c.write([]byte(hdr)); err != nil {
		return err
	}
	if err := c.write(append([]byte(name), 0)); err != nil {
		return err
	}
	return c.pad()
}

// Dir adds a directory.
func (c *cpioWriter) Dir(name string, perm uint32) error {
	return c.header(cpioHeader{name: name, mode: modeDir | perm&0o7777, nlink: 2})
}

// CharDev adds a character device node.
func (c *cpioWriter) CharDev(name string, perm, major, minor uint32) error {
	return c.header(cpioHeader{name: name, mode: modeChar | perm&0o7777, rmaj: major, rmin: minor})
}

// File adds a regular file of exactly size bytes read from r.
func (c *cpioWriter) File(name string, perm uint32, size int64, r io.Reader) error {
	if err := c.header(cpioHeader{name: name, mode: modeReg | perm&0o7777, size: size}); err != nil {
		return err
	}
	n, err := io.CopyN(c.w, r, size)
	c.off += n
	if err != nil {
		return fmt.Errorf("cpio: %s: %w", name, err)
	}
	return c.pad()
}

// Close writes the trailer. It does not close the underlying writer.
func (c *cpioWriter) Close() error {
	if c.closed {
		return nil
	}
	if err := c.header(cpioHeader{name: "TRAILER!!!"}); err != nil {
		return err
	}
	c.closed = true
	return nil
}
