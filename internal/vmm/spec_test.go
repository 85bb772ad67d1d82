package vmm

import (
	"errors"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/api"
)

func TestValidate(t *testing.T) {
	lim := Limits{MaxVCPU: 4, MinMemoryMiB: 64, MaxMemoryMiB: 4096, MaxDisks: 2, MaxCmdline: 64, Formats: []string{"raw"}}
	good := Spec{ID: "abc123", Dir: "/v/abc", VCPU: 1, MemoryMiB: 128, Kernel: "/k", Disks: []Disk{{Path: "/d"}},
		Tap: "bgr-p0", MAC: "02:ba:0a:00:00:02"}
	if err := Validate("x", good, "console=ttyS0", lim); err != nil {
		t.Fatal(err)
	}
	for name, mut := range map[string]func(*Spec, *string){
		"id":        func(s *Spec, _ *string) { s.ID = "a,b" },
		"dir":       func(s *Spec, _ *string) { s.Dir = "rel" },
		"vcpu":      func(s *Spec, _ *string) { s.VCPU = 5 },
		"memory":    func(s *Spec, _ *string) { s.MemoryMiB = 1 },
		"kernel":    func(s *Spec, _ *string) { s.Kernel = "/k\n" },
		"initrd":    func(s *Spec, _ *string) { s.Initrd = "initrd" },
		"cmdline":   func(_ *Spec, c *string) { *c = "a\nb" },
		"long":      func(_ *Spec, c *string) { *c = strings.Repeat("a", 65) },
		"disks":     func(s *Spec, _ *string) { s.Disks = make([]Disk, 3) },
		"format":    func(s *Spec, _ *string) { s.Disks[0].Format = "qcow2" },
		"tap only":  func(s *Spec, _ *string) { s.MAC = "" },
		"tap":       func(s *Spec, _ *string) { s.Tap = "bad,tap" },
		"mac":       func(s *Spec, _ *string) { s.MAC = "zz" },
		"multicast": func(s *Spec, _ *string) { s.MAC = "01:00:5e:00:00:01" },
		"uid":       func(s *Spec, _ *string) { s.UID = -1 },
	} {
		s, c := good, "console=ttyS0"
		s.Disks = append([]Disk(nil), good.Disks...)
		mut(&s, &c)
		err := Validate("x", s, c, lim)
		if !errors.Is(err, api.ErrInvalid) || !strings.HasPrefix(err.Error(), "x spec: ") {
			t.Errorf("%s: err = %v", name, err)
		}
	}
}
