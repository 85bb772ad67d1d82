// Package tartest crafts hostile tar archives for tests: GNU and PAX sparse
// entries whose logical size is far larger than the archive, which Go's
// archive/tar can read but not write.
package tartest

import (
	"bytes"
	"fmt"
	"strconv"
)

// Sparse kinds.
const (
	GNU   = "gnu"   // old GNU format: typeflag 'S', map in the header block
	PAX01 = "pax01" // PAX GNU.sparse.map (format 0.1)
	PAX10 = "pax10" // PAX GNU.sparse.major=1 (format 1.0): map at the start of the data
)

// Kinds lists every sparse flavour.
var Kinds = []string{GNU, PAX01, PAX10}

// SparseEntry returns one tar entry (headers, data, padding; no end-of-archive
// marker) named name whose logical size is realSize: data sits at its end and
// the rest is a hole.
func SparseEntry(kind, name string, realSize int64, data []byte) []byte {
	if int64(len(data)) > realSize {
		realSize = int64(len(data))
	}
	off := realSize - int64(len(data))
	var buf bytes.Buffer
	switch kind {
	case GNU:
		blk := header(name, 'S', int64(len(data)), true)
		copy(blk[386:398], octal(off, 12))
		copy(blk[398:410], octal(int64(len(data)), 12))
		copy(blk[483:495], octal(realSize, 12))
		checksum(blk)
		buf.Write(blk)
		writePadded(&buf, data)
	case PAX01:
		pax := records(
			"GNU.sparse.size", strconv.FormatInt(realSize, 10),
			"GNU.sparse.numblocks", "1",
			"GNU.sparse.map", fmt.Sprintf("%d,%d", off, len(data)),
		)
		buf.Write(checksum(header("PaxHeaders/"+name, 'x', int64(len(pax)), false)))
		writePadded(&buf, pax)
		buf.Write(checksum(header(name, '0', int64(len(data)), false)))
		writePadded(&buf, data)
	case PAX10:
		pax := records(
			"GNU.sparse.major", "1",
			"GNU.sparse.minor", "0",
			"GNU.sparse.name", name,
			"GNU.sparse.realsize", strconv.FormatInt(realSize, 10),
		)
		buf.Write(checksum(header("PaxHeaders/"+name, 'x', int64(len(pax)), false)))
		writePadded(&buf, pax)
		m := make([]byte, 512)
		copy(m, fmt.Sprintf("1\n%d\n%d\n", off, len(data)))
		body := append(m, data...)
		buf.Write(checksum(header("GNUSparseFile.0/"+name, '0', int64(len(body)), false)))
		writePadded(&buf, body)
	default:
		panic("tartest: unknown sparse kind " + kind)
	}
	return buf.Bytes()
}

// Archive wraps entries into a complete tar (end-of-archive marker added).
func Archive(entries ...[]byte) []byte {
	var buf bytes.Buffer
	for _, e := range entries {
		buf.Write(e)
	}
	buf.Write(make([]byte, 1024))
	return buf.Bytes()
}

func header(name string, typ byte, size int64, gnu bool) []byte {
	blk := make([]byte, 512)
	copy(blk[0:100], name)
	copy(blk[100:108], octal(0o644, 8))
	copy(blk[108:116], octal(0, 8))
	copy(blk[116:124], octal(0, 8))
	copy(blk[124:136], octal(size, 12))
	copy(blk[136:148], octal(0, 12))
	blk[156] = typ
	if gnu {
		copy(blk[257:265], "ustar  \x00")
	} else {
		copy(blk[257:265], "ustar\x0000")
	}
	return blk
}

func checksum(blk []byte) []byte {
	copy(blk[148:156], "        ")
	var sum int64
	for _, b := range blk {
		sum += int64(b)
	}
	copy(blk[148:156], fmt.Sprintf("%06o\x00 ", sum))
	return blk
}

func octal(v int64, width int) string {
	return fmt.Sprintf("%0*o\x00", width-1, v)
}

func records(kv ...string) []byte {
	var b bytes.Buffer
	for i := 0; i+1 < len(kv); i += 2 {
		rec := " " + kv[i] + "=" + kv[i+1] + "\n"
		n := len(rec)
		for n2 := len(strconv.Itoa(n)) + len(rec); n2 != n; n2 = len(strconv.Itoa(n)) + len(rec) {
			n = n2
		}
		b.WriteString(strconv.Itoa(n) + rec)
	}
	return b.Bytes()
}

func writePadded(buf *bytes.Buffer, data []byte) {
	buf.Write(data)
	if r := len(data) % 512; r != 0 {
		buf.Write(make([]byte, 512-r))
	}
}
