package disk

import (
	"errors"
	"testing"

	"github.com/banger-dev/banger/internal/api"
)

func TestParseSize(t *testing.T) {
	good := map[string]int64{
		"1024":     1024,
		"1":        1,
		"512B":     512,
		"4K":       4 << 10,
		"4k":       4 << 10,
		"512M":     512 << 20,
		"512MB":    512 << 20,
		"4G":       4 << 30,
		"8GiB":     8 << 30,
		"8gib":     8 << 30,
		"2T":       2 << 40,
		" 16G ":    16 << 30,
		"007M":     7 << 20,
		"1024T":    1 << 50,
		"1048576G": 1 << 50,
	}
	for in, want := range good {
		got, err := ParseSize(in)
		if err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	bad := []string{
		"", " ", "G", "0", "0G", "-1", "-4G", "+4G", "4.5G", "4 G", "4GG", "4P", "4E",
		"0x10", "1e9", "4G\x00", "4\nG", "９", "4Ｇ", "1025T", "1048577G",
		"99999999999999999999", "9223372036854775807", "18446744073709551617K",
		"4g;rm -rf /", "NaN", "Inf",
	}
	for _, in := range bad {
		if got, err := ParseSize(in); !errors.Is(err, api.ErrInvalid) {
			t.Errorf("ParseSize(%q) = %d, %v; want ErrInvalid", in, got, err)
		}
	}
}

func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"4G", "512M", "1024", "8GiB", "-1", "99999999999999999T"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseSize(s)
		if err == nil && (n <= 0 || n > MaxSize) {
			t.Fatalf("ParseSize(%q) = %d", s, n)
		}
		if err != nil && !errors.Is(err, api.ErrInvalid) {
			t.Fatalf("ParseSize(%q): %v is not ErrInvalid", s, err)
		}
	})
}
