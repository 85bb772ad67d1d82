package vm

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
)

// resources keeps the state the steps acquire, so the test checks what is
// left, not the order of calls.
type resources map[string]bool

func acquire(r resources, name string, fail error) step {
	return step{
		name: name,
		do: func(ctx context.Context) error {
			r[name] = true
			return fail
		},
		undo: func(ctx context.Context) error {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			delete(r, name)
			return nil
		},
	}
}

func TestRunStepsRollsBackEverythingOnFailure(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	r := resources{}
	boom := errors.New("boom")
	var stages []string
	err := runSteps(context.Background(), log, []step{
		acquire(r, "disk", nil), acquire(r, "tap", nil), acquire(r, "vmm_launch", boom), acquire(r, "wait_ready", nil),
	}, func(s string) { stages = append(stages, s) })
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), "vmm_launch: boom") {
		t.Fatalf("err = %v", err)
	}
	if len(r) != 0 {
		t.Fatalf("leaked resources: %v", r)
	}
	if got := strings.Join(stages, ","); got != "disk,tap,vmm_launch" {
		t.Fatalf("stages = %s", got)
	}
}

func TestRunStepsUndoUsesUncancelledContextAndJoinsErrors(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	r := resources{}
	ctx, cancel := context.WithCancel(context.Background())
	undoErr := errors.New("tap busy")
	steps := []step{
		acquire(r, "disk", nil),
		{name: "tap", do: func(context.Context) error { r["tap"] = true; return nil },
			undo: func(context.Context) error { return undoErr }},
		{name: "vmm_launch", do: func(context.Context) error { cancel(); return context.Canceled }},
	}
	err := runSteps(ctx, log, steps, nil)
	if !errors.Is(err, context.Canceled) || !errors.Is(err, undoErr) {
		t.Fatalf("want root cause and undo error joined, got %v", err)
	}
	if r["disk"] {
		t.Fatal("disk undo did not run on the uncancelled context")
	}
	if !r["tap"] {
		t.Fatal("tap should remain: its undo failed")
	}
}

func TestRunStepsSuccess(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	r := resources{}
	if err := runSteps(context.Background(), log, []step{acquire(r, "a", nil), acquire(r, "b", nil)}, nil); err != nil {
		t.Fatal(err)
	}
	if !r["a"] || !r["b"] {
		t.Fatalf("resources = %v", r)
	}
}
