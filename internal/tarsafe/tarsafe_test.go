package tarsafe_test

import (
	"archive/tar"
	"bytes"
	"testing"

	"github.com/banger-dev/banger/internal/tarsafe"
	"github.com/banger-dev/banger/internal/tartest"
)

func TestIsSparse(t *testing.T) {
	for _, kind := range []string{tartest.GNU, tartest.PAX01, tartest.PAX10} {
		tr := tar.NewReader(bytes.NewReader(tartest.SparseEntry(kind, "f", 300<<20, []byte("x"))))
		h, err := tr.Next()
		if err != nil {
			t.Fatalf("%s: %v", kind, err)
		}
		if !tarsafe.IsSparse(h) {
			t.Errorf("%s: sparse entry not recognised (type %q, pax %v)", kind, h.Typeflag, h.PAXRecords)
		}
	}
	if tarsafe.IsSparse(&tar.Header{Typeflag: tar.TypeReg, Name: "f", Size: 1}) {
		t.Error("a plain regular entry is reported sparse")
	}
}
