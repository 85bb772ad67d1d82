package qemu

import (
	"os"
	"slices"
	"testing"
)

// A passed TAP fd replaces ifname: QEMU never opens /dev/net/tun itself, and
// the fd it is told is the one ProcSpec.ExtraFiles puts there.
func TestBuildArgsTapFD(t *testing.T) {
	s := baseSpec()
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s.TapFile = f
	got, err := buildArgs(s, AccelTCG, 0)
	if err != nil {
		t.Fatal(err)
	}
	i := slices.Index(got, "-netdev")
	if i < 0 || got[i+1] != "tap,id=n0,fd=3" {
		t.Fatalf("netdev with a passed fd: %q", got)
	}
	if ex := extraFiles(s); len(ex) != 1 || ex[0] != f || tapFD != 3 {
		t.Fatalf("extra files %v: the tap must be the first (fd 3)", ex)
	}
	s.TapFile = nil
	if ex := extraFiles(s); ex != nil {
		t.Fatalf("extra files without a tap fd: %v", ex)
	}
}
