package kernel

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/paths"
)

// Config is a kernel's build configuration: CONFIG_* symbol → value ("y",
// "m", a number or a quoted string). Symbols the file says are not set are
// absent.
type Config map[string]string

// Limits on configuration text, which comes from a package or a file the
// user named: a real one is about 300 KB, with lines far below 4 KiB.
const (
	MaxConfigBytes = 4 << 20
	maxConfigLine  = 64 << 10
)

var configSymRE = regexp.MustCompile(`^CONFIG_[A-Za-z0-9_]+$`)

// ParseConfig reads a kernel .config: blank lines, comments and
// CONFIG_SYMBOL=value lines only; anything else is refused, naming the line.
// At most MaxConfigBytes are read; more is an error, never a truncation.
func ParseConfig(r io.Reader) (Config, error) {
	lr := &io.LimitedReader{R: r, N: MaxConfigBytes + 1}
	sc := bufio.NewScanner(lr)
	sc.Buffer(make([]byte, 0, 4096), maxConfigLine)
	cfg := Config{}
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || !configSymRE.MatchString(k) || strings.ContainsFunc(v, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
			return nil, fmt.Errorf("kernel config line %d: not CONFIG_SYMBOL=value: %w", n, api.ErrInvalid)
		}
		cfg[k] = v
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return nil, fmt.Errorf("kernel config: a line longer than %d bytes (limit): %w", maxConfigLine, api.ErrInvalid)
		}
		return nil, fmt.Errorf("kernel config: %w", err)
	}
	if lr.N <= 0 {
		return nil, fmt.Errorf("kernel config larger than %d bytes (limit): %w", MaxConfigBytes, api.ErrInvalid)
	}
	return cfg, nil
}

// readConfigFile parses the configuration file at path.
func readConfigFile(path string) (Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil {
		return nil, err
	} else if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("kernel config %s is not a regular file: %w", path, api.ErrInvalid)
	}
	cfg, err := ParseConfig(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return cfg, nil
}

// storeConfig checks the configuration at src and copies it into the
// kernel directory being built (out).
func storeConfig(src, out string) error {
	if _, err := readConfigFile(src); err != nil {
		return err
	}
	_, err := copyFile(src, filepath.Join(out, paths.KernelConfig), 0o644)
	return err
}

// ikcfgStart marks the gzip'd configuration a kernel built with
// CONFIG_IKCONFIG carries (kernel/configs.c; scripts/extract-ikconfig), which
// IKCFG_ED follows.
var ikcfgStart = []byte("IKCFG_ST")

// embeddedConfig finds the configuration a CONFIG_IKCONFIG kernel carries in
// the uncompressed image at path (a vmlinux). ErrNotFound when it has none.
func embeddedConfig(path string) (Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() || fi.Size() > maxVmlinux {
		return nil, fmt.Errorf("kernel image %s: not a regular file of at most %d bytes: %w", path, int64(maxVmlinux), api.ErrInvalid)
	}
	const chunk = 1 << 20
	buf := make([]byte, chunk+len(ikcfgStart))
	var base int64 // file offset of buf[0]
	keep := 0      // bytes carried over from the previous chunk
	for {
		n, rerr := io.ReadFull(f, buf[keep:])
		data := buf[:keep+n]
		for i := 0; ; {
			j := bytes.Index(data[i:], ikcfgStart)
			if j < 0 {
				break
			}
			off := base + int64(i+j+len(ikcfgStart))
			if cfg, err := gzipConfigAt(f, off); err == nil {
				return cfg, nil
			}
			i += j + 1
		}
		if rerr != nil {
			if errors.Is(rerr, io.EOF) || errors.Is(rerr, io.ErrUnexpectedEOF) {
				return nil, fmt.Errorf("kernel image %s: no embedded configuration (CONFIG_IKCONFIG): %w", path, api.ErrNotFound)
			}
			return nil, rerr
		}
		// Carry the tail over so a marker across chunks is found once.
		keep = len(ikcfgStart) - 1
		copy(buf, data[len(data)-keep:])
		base += int64(len(data) - keep)
	}
}

// gzipConfigAt parses the gzip stream at off in f as a configuration; the
// kernel puts IKCFG_ED right after it.
func gzipConfigAt(f *os.File, off int64) (Config, error) {
	zr, err := gzip.NewReader(io.NewSectionReader(f, off, maxVmlinux))
	if err != nil {
		return nil, err
	}
	zr.Multistream(false)
	text, err := io.ReadAll(io.LimitReader(zr, MaxConfigBytes+1))
	if err != nil {
		return nil, err
	}
	if len(text) > MaxConfigBytes {
		return nil, fmt.Errorf("embedded kernel config larger than %d bytes (limit): %w", MaxConfigBytes, api.ErrInvalid)
	}
	return ParseConfig(bytes.NewReader(text))
}

// ReadConfig returns the build configuration of the stored kernel whose
// boot file is kernelPath (a store row's path), and where it came from:
// the `config` file kept in its directory at import, else the one embedded
// in its uncompressed image (CONFIG_IKCONFIG). An error wrapping
// api.ErrNotFound says it is not known; callers say so rather than guess.
func ReadConfig(kernelPath string) (Config, string, error) {
	dir := filepath.Dir(kernelPath)
	p := filepath.Join(dir, paths.KernelConfig)
	cfg, err := readConfigFile(p)
	if err == nil {
		return cfg, p, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, "", err
	}
	for _, img := range []string{kernelPath, filepath.Join(dir, VmlinuxFile)} {
		if ok, _ := isELF(img); !ok {
			continue
		}
		if cfg, err := embeddedConfig(img); err == nil {
			return cfg, img + " (embedded)", nil
		}
	}
	return nil, "", fmt.Errorf("kernel %s: no build configuration kept (imported before banger kept Debian's boot/config-*, or given without --config) and none embedded (CONFIG_IKCONFIG): %w",
		filepath.Base(dir), api.ErrNotFound)
}

// isELF reports whether the file at path starts with the ELF magic.
func isELF(path string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	var magic [4]byte
	if _, err := io.ReadFull(f, magic[:]); err != nil {
		return false, nil
	}
	return string(magic[:]) == "\x7fELF", nil
}
