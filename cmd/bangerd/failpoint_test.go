package main

import (
	"io"
	"log/slog"
	"testing"
)

func TestFailpoint(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if hook, err := failpoint("", log, func() { t.Fatal("killed") }); hook != nil || err != nil {
		t.Fatalf("unset failpoint: hook %v err %v", hook != nil, err)
	}
	for _, bad := range []string{"kill-after:", "kill-before:tap", "tap"} {
		if _, err := failpoint(bad, log, nil); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	var killed []string
	cur := ""
	hook, err := failpoint("kill-after:nat", log, func() { killed = append(killed, cur) })
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"seed", "tap", "nat", "vmm_launch"} {
		cur = s
		hook(s)
	}
	if len(killed) != 1 || killed[0] != "nat" {
		t.Fatalf("killed after %v, want [nat]", killed)
	}
}
