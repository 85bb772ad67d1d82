package workspace

import (
	"bytes"
	"fmt"
	"strconv"
)

// Hand-made tar streams: archive/tar's Writer cannot write sparse entries
// (it drops GNU.sparse.* records), and a hostile guest is not limited to
// what Go would write.

const block = 512

// rawHeader is one ustar (or, with gnu, old GNU) header block.
func rawHeader(name string, typ byte, size int64, gnu bool) []byte {
	h := make([]byte, block)
	copy(h[0:100], name)
	copy(h[100:108], "0000644\x00")
	copy(h[108:116], "0000000\x00")
	copy(h[116:124], "0000000\x00")
	copy(h[124:136], fmt.Sprintf("%011o\x00", size))
	copy(h[136:148], "00000000000\x00")
	h[156] = typ
	if gnu {
		copy(h[257:265], "ustar  \x00")
	} else {
		copy(h[257:265], "ustar\x0000")
	}
	return h
}

// checksum fills in a header's checksum field.
func checksum(h []byte) []byte {
	copy(h[148:156], "        ")
	sum := 0
	for _, b := range h {
		sum += int(b)
	}
	copy(h[148:156], fmt.Sprintf("%06o\x00 ", sum))
	return h
}

func pad(b []byte) []byte {
	if r := len(b) % block; r != 0 {
		b = append(b, make([]byte, block-r)...)
	}
	return b
}

// tarBuilder appends entries; bytes() ends the archive.
type tarBuilder struct{ b bytes.Buffer }

func (t *tarBuilder) file(name, data string) *tarBuilder {
	t.b.Write(checksum(rawHeader(name, '0', int64(len(data)), false)))
	t.b.Write(pad([]byte(data)))
	return t
}

// header writes a regular file's header claiming size, without its data.
func (t *tarBuilder) header(name string, size int64) *tarBuilder {
	t.b.Write(checksum(rawHeader(name, '0', size, false)))
	return t
}

func (t *tarBuilder) typed(name string, typ byte) *tarBuilder {
	t.b.Write(checksum(rawHeader(name, typ, 0, false)))
	return t
}

func paxRecord(k, v string) string {
	r := " " + k + "=" + v + "\n"
	n := len(r)
	for len(strconv.Itoa(n))+len(r) != n {
		n = len(strconv.Itoa(n)) + len(r)
	}
	return strconv.Itoa(n) + r
}

func (t *tarBuilder) pax(recs ...string) *tarBuilder {
	var body string
	for i := 0; i+1 < len(recs); i += 2 {
		body += paxRecord(recs[i], recs[i+1])
	}
	t.b.Write(checksum(rawHeader("PaxHeaders/x", 'x', int64(len(body)), false)))
	t.b.Write(pad([]byte(body)))
	return t
}

// sparse appends a sparse entry of logical size real whose only data is
// "X" at its last byte, in one of the GNU sparse formats: "gnu" (old style,
// type 'S'), "pax0.0", "pax0.1", "pax1.0".
func (t *tarBuilder) sparse(format, name string, real int64) *tarBuilder {
	off, rs := strconv.FormatInt(real-1, 10), strconv.FormatInt(real, 10)
	switch format {
	case "gnu":
		h := rawHeader(name, 'S', 1, true)
		copy(h[386:398], fmt.Sprintf("%011o\x00", real-1)) // sparse[0].offset
		copy(h[398:410], fmt.Sprintf("%011o\x00", 1))      // sparse[0].numbytes
		copy(h[483:495], fmt.Sprintf("%011o\x00", real))   // realsize
		t.b.Write(checksum(h))
		t.b.Write(pad([]byte("X")))
	case "pax0.0":
		t.pax("GNU.sparse.size", rs, "GNU.sparse.numblocks", "1", "GNU.sparse.offset", off, "GNU.sparse.numbytes", "1", "GNU.sparse.name", name)
		t.b.Write(checksum(rawHeader("GNUSparseFile.0/"+name, '0', 1, false)))
		t.b.Write(pad([]byte("X")))
	case "pax0.1":
		t.pax("GNU.sparse.size", rs, "GNU.sparse.numblocks", "1", "GNU.sparse.map", off+",1", "GNU.sparse.name", name)
		t.b.Write(checksum(rawHeader("GNUSparseFile.0/"+name, '0', 1, false)))
		t.b.Write(pad([]byte("X")))
	case "pax1.0":
		t.pax("GNU.sparse.major", "1", "GNU.sparse.minor", "0", "GNU.sparse.name", name, "GNU.sparse.realsize", rs)
		data := pad([]byte("1\n" + off + "\n1\n"))
		data = append(data, 'X')
		t.b.Write(checksum(rawHeader("GNUSparseFile.0/"+name, '0', int64(len(data)), false)))
		t.b.Write(pad(data))
	default:
		panic(format)
	}
	return t
}

func (t *tarBuilder) bytes() []byte {
	out := append([]byte(nil), t.b.Bytes()...)
	return append(out, make([]byte, 2*block)...)
}

var sparseFormats = []string{"gnu", "pax0.0", "pax0.1", "pax1.0"}
