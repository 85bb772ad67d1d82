package vmm

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/banger-dev/banger/internal/api"
)

// Confinement reads how process pid is confined from /proc/<pid>/status:
// effective uid, seccomp mode, no_new_privs.
func Confinement(pid int) (api.VMMProc, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return api.VMMProc{}, err
	}
	return parseStatus(b)
}

func parseStatus(b []byte) (api.VMMProc, error) {
	var out api.VMMProc
	seen := 0
	var err error
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		f := strings.Fields(val)
		if len(f) == 0 {
			continue
		}
		switch key {
		case "Uid":
			if len(f) < 2 {
				return out, fmt.Errorf("status: Uid line %q", val)
			}
			out.UID, err = strconv.Atoi(f[1])
			if err != nil {
				return out, fmt.Errorf("status: Uid line %q", val)
			}
			seen++
		case "Seccomp":
			out.Seccomp = map[string]string{"0": "disabled", "1": "strict", "2": "filter"}[f[0]]
			if out.Seccomp == "" {
				out.Seccomp = "mode " + f[0]
			}
			seen++
		case "NoNewPrivs":
			out.NoNewPrivs = f[0] == "1"
			seen++
		}
	}
	if seen < 3 {
		return out, fmt.Errorf("status: Uid, Seccomp or NoNewPrivs missing")
	}
	return out, nil
}
