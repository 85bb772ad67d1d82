// Package tarsafe holds the header checks shared by every reader of an
// untrusted tar stream: guest pull streams, image layers, kernel module
// tarballs and the per-VM seed read by the guest agent.
package tarsafe

import (
	"archive/tar"
	"strings"
)

// IsSparse reports a GNU sparse entry, old style ('S') or PAX 0.0/0.1/1.0
// (GNU.sparse.* records). archive/tar expands such an entry to its logical
// size, which a few hundred bytes on the wire can make arbitrarily large, so
// readers refuse it or charge it at that size.
func IsSparse(h *tar.Header) bool {
	if h.Typeflag == tar.TypeGNUSparse {
		return true
	}
	for k := range h.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return true
		}
	}
	return false
}
