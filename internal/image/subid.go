package image

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// MinSubIDs is how many subordinate ids mmdebstrap's unshare mode needs:
// a Debian root file system uses ids up to 65534 (nobody).
const MinSubIDs = 65536

// RootlessBuildReady reports whether `image build` can run as user (name,
// uid) without root: newuidmap and newgidmap present (lookPath) and a range
// of at least MinSubIDs subordinate ids in both subuidFile and subgidFile
// (normally /etc/subuid and /etc/subgid). detail says what is missing.
func RootlessBuildReady(lookPath func(string) (string, error), subuidFile, subgidFile, user string, uid int) (bool, string) {
	var missing []string
	for _, b := range []string{"newuidmap", "newgidmap"} {
		if _, err := lookPath(b); err != nil {
			missing = append(missing, b+" (package uidmap)")
		}
	}
	for _, f := range []string{subuidFile, subgidFile} {
		data, err := os.ReadFile(f)
		if err != nil {
			missing = append(missing, fmt.Sprintf("%s: %v", f, err))
			continue
		}
		if !hasSubIDRange(data, user, uid) {
			missing = append(missing, fmt.Sprintf("a range of %d ids for %s in %s", MinSubIDs, user, f))
		}
	}
	if len(missing) > 0 {
		return false, "image build as " + user + " needs " + strings.Join(missing, ", ") + " (`sudo banger system install` sets them up; pulls and --from-dir need none)"
	}
	return true, "mmdebstrap unshare mode: newuidmap and subordinate ids for " + user + " present"
}

// hasSubIDRange reports whether a subuid/subgid file ("name-or-uid:start:count"
// lines) gives user or uid at least MinSubIDs ids in one range.
func hasSubIDRange(data []byte, user string, uid int) bool {
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Split(strings.TrimSpace(sc.Text()), ":")
		if len(f) != 3 || (f[0] != user && f[0] != strconv.Itoa(uid)) {
			continue
		}
		if n, err := strconv.ParseUint(f[2], 10, 32); err == nil && n >= MinSubIDs {
			return true
		}
	}
	return false
}
