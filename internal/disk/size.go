package disk

import (
	"fmt"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/api"
)

// MaxSize bounds ParseSize: 1 PiB is far beyond any disk or memory banger sizes,
// and keeps every arithmetic on the result clear of overflow.
const MaxSize int64 = 1 << 50

var sizeUnits = map[string]int64{
	"": 1, "b": 1,
	"k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10,
	"m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
	"g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30,
	"t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40,
}

// ParseSize parses a positive size such as "4G", "512M", "8GiB" or "1024"
// (bytes). Units are case-insensitive and always binary: "G", "GB" and "GiB"
// all mean 2^30, as in qemu-img and docker. Anything else is api.ErrInvalid.
func ParseSize(s string) (int64, error) {
	bad := func(why string) (int64, error) {
		return 0, fmt.Errorf("size %q: %s: %w", s, why, api.ErrInvalid)
	}
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && t[i] >= '0' && t[i] <= '9' {
		i++
	}
	if i == 0 {
		return bad("must start with a number")
	}
	if i > 16 { // more digits than MaxSize has
		return bad("too large")
	}
	mult, ok := sizeUnits[strings.ToLower(t[i:])]
	if !ok {
		return bad("unknown unit (use K, M, G or T)")
	}
	var n int64
	for _, c := range t[:i] {
		n = n*10 + int64(c-'0')
	}
	if n == 0 {
		return bad("must be positive")
	}
	if n > MaxSize/mult {
		return bad("too large")
	}
	return n * mult, nil
}

// FormatSize writes n the way ParseSize reads it, in the largest binary unit
// that divides it exactly: 8G, 64M, 1536K, 1000.
func FormatSize(n int64) string {
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"T", 1 << 40}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}} {
		if n != 0 && n%u.mult == 0 {
			return fmt.Sprintf("%d%s", n/u.mult, u.suffix)
		}
	}
	return fmt.Sprint(n)
}

// Allocated is the space p takes on disk (st_blocks), 0 when it cannot be read.
func Allocated(p string) int64 {
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		return 0
	}
	return st.Blocks * 512
}
