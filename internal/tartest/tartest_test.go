package tartest

import (
	"archive/tar"
	"bytes"
	"io"
	"testing"
)

// TestSparseEntryReads checks that archive/tar expands every kind to its
// logical size with the data at the end.
func TestSparseEntryReads(t *testing.T) {
	for _, kind := range Kinds {
		t.Run(kind, func(t *testing.T) {
			tr := tar.NewReader(bytes.NewReader(Archive(SparseEntry(kind, "big", 1<<20, []byte("end")))))
			hdr, err := tr.Next()
			if err != nil {
				t.Fatal(err)
			}
			if hdr.Name != "big" || hdr.Size != 1<<20 {
				t.Fatalf("header %q size %d, want big 1048576", hdr.Name, hdr.Size)
			}
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			if len(b) != 1<<20 || string(b[len(b)-3:]) != "end" {
				t.Fatalf("read %d bytes ending %q", len(b), b[len(b)-3:])
			}
			if _, err := tr.Next(); err != io.EOF {
				t.Fatalf("second Next: %v", err)
			}
		})
	}
}
