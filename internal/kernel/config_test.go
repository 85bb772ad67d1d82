package kernel

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/paths"
)

const sampleConfig = `#
# Automatically generated file; DO NOT EDIT.
#
CONFIG_VIRTIO_MMIO=m
# CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES is not set
CONFIG_ACPI=y
CONFIG_LOCALVERSION="-cloud"
CONFIG_NR_CPUS=64
`

func TestParseConfig(t *testing.T) {
	cfg, err := ParseConfig(strings.NewReader(sampleConfig))
	if err != nil {
		t.Fatal(err)
	}
	want := Config{"CONFIG_VIRTIO_MMIO": "m", "CONFIG_ACPI": "y", "CONFIG_LOCALVERSION": `"-cloud"`, "CONFIG_NR_CPUS": "64"}
	if len(cfg) != len(want) {
		t.Fatalf("cfg = %v", cfg)
	}
	for k, v := range want {
		if cfg[k] != v {
			t.Errorf("%s = %q, want %q", k, cfg[k], v)
		}
	}
	if _, ok := cfg["CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES"]; ok {
		t.Error("a symbol that is not set is present")
	}
	for name, text := range map[string]string{
		"not a symbol":   "VIRTIO=y\n",
		"no value":       "CONFIG_X\n",
		"bad name":       "CONFIG_X-Y=y\n",
		"control char":   "CONFIG_X=\"a\x1bb\"\n",
		"long line":      "CONFIG_X=" + strings.Repeat("y", maxConfigLine) + "\n",
		"too large":      strings.Repeat("# c\n", MaxConfigBytes/4+1), // every line valid: only the limit refuses it
		"binary garbage": "\x7fELF\x02\x01\x01",
	} {
		if _, err := ParseConfig(strings.NewReader(text)); !errors.Is(err, api.ErrInvalid) {
			t.Errorf("%s: err = %v, want ErrInvalid", name, err)
		}
	}
	if _, err := ParseConfig(strings.NewReader(strings.Repeat("# c\n", MaxConfigBytes/4))); err != nil {
		t.Errorf("exactly the limit refused: %v", err)
	}
}

func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(sampleConfig))
	f.Add([]byte("CONFIG_A=y\n\n# x\nCONFIG_B=\"q\"\n"))
	f.Add([]byte("CONFIG_=\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		cfg, err := ParseConfig(bytes.NewReader(b))
		if err != nil {
			return
		}
		for k, v := range cfg {
			if !configSymRE.MatchString(k) || strings.ContainsAny(v, "\n\r\x00") {
				t.Fatalf("accepted %q=%q", k, v)
			}
		}
	})
}

// ikconfigImage is a stand-in vmlinux: an ELF header, padding, then the
// IKCONFIG blob (marker, gzip'd config, end marker) at offset at.
func ikconfigImage(t *testing.T, at int, config string) []byte {
	t.Helper()
	var z bytes.Buffer
	zw := gzip.NewWriter(&z)
	_, _ = zw.Write([]byte(config))
	_ = zw.Close()
	img := make([]byte, at)
	copy(img, "\x7fELF\x02\x01\x01")
	// A marker with no gzip after it (the string in some other section)
	// is skipped.
	copy(img[64:], "IKCFG_ST not gzip")
	img = append(img, "IKCFG_ST"...)
	img = append(img, z.Bytes()...)
	img = append(img, "IKCFG_ED"...)
	return append(img, make([]byte, 4096)...)
}

func TestReadConfig(t *testing.T) {
	dir := t.TempDir()
	kdir := filepath.Join(dir, "kernels", "k")
	_ = os.MkdirAll(kdir, 0o700)
	vmlinux := filepath.Join(kdir, VmlinuxFile)

	// Nothing kept, nothing embedded: not known.
	if err := os.WriteFile(vmlinux, ikconfigImage(t, 4096, "")[:4096], 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := ReadConfig(vmlinux); !errors.Is(err, api.ErrNotFound) || !strings.Contains(err.Error(), "CONFIG_IKCONFIG") {
		t.Fatalf("no config: %v", err)
	}

	// Embedded, also with the marker straddling the scanner's reads (1 MiB
	// + 8 bytes, the next starting 7 bytes back); the store row may name the
	// bzImage, the vmlinux beside it is searched.
	for _, at := range []int{4096, 1<<20 - 3, 1<<20 + 5, 2<<20 + 5, 3<<20 + 5} {
		if err := os.WriteFile(vmlinux, ikconfigImage(t, at, sampleConfig), 0o644); err != nil {
			t.Fatal(err)
		}
		for _, p := range []string{vmlinux, filepath.Join(kdir, paths.KernelFile)} {
			cfg, src, err := ReadConfig(p)
			if err != nil || cfg["CONFIG_VIRTIO_MMIO"] != "m" || src != vmlinux+" (embedded)" {
				t.Fatalf("embedded at %d via %s: %v %q %v", at, filepath.Base(p), cfg, src, err)
			}
		}
	}

	// A kept config file wins.
	if err := os.WriteFile(filepath.Join(kdir, paths.KernelConfig), []byte("CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, src, err := ReadConfig(vmlinux)
	if err != nil || cfg["CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES"] != "y" || src != filepath.Join(kdir, paths.KernelConfig) {
		t.Fatalf("kept config: %v %q %v", cfg, src, err)
	}
	// A broken kept file is an error, not a fallback.
	if err := os.WriteFile(filepath.Join(kdir, paths.KernelConfig), []byte("junk\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := ReadConfig(vmlinux); !errors.Is(err, api.ErrInvalid) {
		t.Fatalf("broken kept config: %v", err)
	}
}

func TestImportFilesKeepsConfig(t *testing.T) {
	imp, _, _ := newTestImporter(t, nil)
	dir := t.TempDir()
	k, rd, cfgPath := filepath.Join(dir, "vmlinux"), filepath.Join(dir, "initrd.img"), filepath.Join(dir, ".config")
	_ = os.WriteFile(k, versionedBzImage("6.1.1-fc"), 0o644)
	_ = os.WriteFile(rd, []byte("my initrd"), 0o644)
	_ = os.WriteFile(cfgPath, []byte(sampleConfig), 0o644)
	var stages []string
	info, err := imp.ImportFiles(context.Background(), "fc", FilesSpec{Kernel: k, Initrd: rd, Config: cfgPath}, func(s string) { stages = append(stages, s) })
	if err != nil {
		t.Fatal(err)
	}
	if info.Config != filepath.Join(imp.Layout.Kernel("fc"), paths.KernelConfig) || !strings.Contains(strings.Join(stages, ","), "config") {
		t.Fatalf("info %+v, stages %v", info, stages)
	}
	if b, _ := os.ReadFile(info.Config); string(b) != sampleConfig {
		t.Fatalf("kept config %q", b)
	}
	// A file that is not a configuration is refused and nothing is kept.
	_ = os.WriteFile(cfgPath, []byte("not a config\n"), 0o644)
	if _, err := imp.ImportFiles(context.Background(), "bad", FilesSpec{Kernel: k, Initrd: rd, Config: cfgPath}, nil); !errors.Is(err, api.ErrInvalid) {
		t.Fatalf("bad config: %v", err)
	}
	if _, err := os.Stat(imp.Layout.Kernel("bad")); !os.IsNotExist(err) {
		t.Fatalf("kernel dir left: %v", err)
	}
	assertEmptyDir(t, imp.Layout.Tmp())
}
