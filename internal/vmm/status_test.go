package vmm

import (
	"os"
	"testing"
)

func TestParseStatus(t *testing.T) {
	got, err := parseStatus([]byte("Name:\tqemu\nUid:\t1000\t1001\t1001\t1001\nGid:\t1000\t1000\t1000\t1000\nNoNewPrivs:\t1\nSeccomp:\t2\nSeccomp_filters:\t1\n"))
	if err != nil || got.UID != 1001 || got.Seccomp != "filter" || !got.NoNewPrivs {
		t.Fatalf("got %+v %v", got, err)
	}
	if _, err := parseStatus([]byte("Name:\tx\nUid:\t0\t0\t0\t0\n")); err == nil {
		t.Fatal("status without Seccomp/NoNewPrivs accepted")
	}
	self, err := Confinement(os.Getpid())
	if err != nil || self.UID != os.Geteuid() {
		t.Fatalf("self: %+v %v", self, err)
	}
}
