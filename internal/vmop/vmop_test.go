package vmop

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/api"
)

// clock is a fake clock that moves only when told.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// follower runs Follow in the background and keeps what it saw as text:
// "stage@seconds-since-start[:message]" per event.
type follower struct {
	start time.Time
	mu    sync.Mutex
	seen  []string
	got   chan string // every stage as it arrives
	done  chan struct{}
	v     api.VM
	err   error
}

func follow(ctx context.Context, op *Op) *follower {
	f := &follower{start: op.Started, got: make(chan string, 2*MaxEvents), done: make(chan struct{})}
	go func() {
		defer close(f.done)
		f.v, f.err = op.Follow(ctx, func(ev Event) {
			s := fmt.Sprintf("%s@%g", ev.Stage, ev.At.Sub(f.start).Seconds())
			if ev.Message != "" {
				s += ":" + ev.Message
			}
			f.mu.Lock()
			f.seen = append(f.seen, s)
			f.mu.Unlock()
			f.got <- ev.Stage
		})
	}()
	return f
}

func (f *follower) text() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return strings.Join(f.seen, " ")
}

// waitFor reads stages until stage arrives.
func (f *follower) waitFor(t *testing.T, stage string) {
	t.Helper()
	for {
		select {
		case s := <-f.got:
			if s == stage {
				return
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("follower never saw %q (saw %s)", stage, f.text())
		}
	}
}

func (f *follower) result(t *testing.T) (api.VM, error) {
	t.Helper()
	select {
	case <-f.done:
		return f.v, f.err
	case <-time.After(5 * time.Second):
		t.Fatalf("Follow did not return (saw %s)", f.text())
		return api.VM{}, nil
	}
}

// A follower that attaches mid-way gets the earlier stages with the times
// they began, then the later ones live, then the outcome; a second one
// attached at another point sees the same history.
func TestFollowReplaysThenLive(t *testing.T) {
	c := newClock()
	tr := New(c.now)
	op, err := tr.Begin("slow", KindCreate, "op1")
	if err != nil {
		t.Fatal(err)
	}
	if v := op.View(); v == nil || v.Stage != "" || v.Kind != KindCreate || v.OpID != "op1" {
		t.Fatalf("view before any stage: %+v", v)
	}
	select {
	case <-op.Underway():
		t.Fatal("underway before the first stage")
	default:
	}
	c.add(time.Second)
	op.Progress("root_disk", "")
	<-op.Underway()
	c.add(2 * time.Second)
	op.Progress("vmm_launch", "")
	c.add(time.Second)
	op.Progress("wait_ready", "")

	ctx := context.Background()
	a := follow(ctx, op)
	a.waitFor(t, "wait_ready")
	c.add(500 * time.Millisecond)
	op.Progress("wait_ready", "agent answered")
	b := follow(ctx, op)
	b.waitFor(t, "wait_ready") // replayed
	b.waitFor(t, "wait_ready") // the message
	if v := op.View(); v.Stage != "wait_ready" || !v.StageStarted.Equal(op.Started.Add(4*time.Second)) {
		t.Errorf("view: stage %q since %v (want wait_ready since +4s)", v.Stage, v.StageStarted.Sub(op.Started))
	}
	c.add(time.Second)
	op.Progress("ready", "")
	op.End(api.VM{Name: "slow", State: "running"}, nil)
	op.Progress("late", "") // ignored: the operation is over

	want := "root_disk@1 vmm_launch@3 wait_ready@4 wait_ready@4.5:agent answered ready@5.5"
	for name, f := range map[string]*follower{"mid-way": a, "later": b} {
		v, err := f.result(t)
		if err != nil || v.Name != "slow" || v.State != "running" {
			t.Errorf("%s follower: %+v %v", name, v, err)
		}
		if got := f.text(); got != want {
			t.Errorf("%s follower saw\n %s\nwant\n %s", name, got, want)
		}
	}
	if op.View() != nil {
		t.Error("an ended operation still shows as in progress")
	}
	// After the end: the whole history and the stored outcome at once.
	late := follow(ctx, op)
	if v, err := late.result(t); err != nil || v.State != "running" || late.text() != want {
		t.Errorf("follow after the end: %+v %v %s", v, err, late.text())
	}
}

func TestFollowFailureAndContext(t *testing.T) {
	tr := New(nil)
	op, _ := tr.Begin("bad", KindStart, "op2")
	ctx, cancel := context.WithCancel(context.Background())
	f := follow(ctx, op)
	op.Progress("seed", "")
	f.waitFor(t, "seed")
	cancel()
	if _, err := f.result(t); !errors.Is(err, context.Canceled) {
		t.Fatalf("follower whose ctx ended: %v", err)
	}
	boom := fmt.Errorf("vmm_launch: open tap: %w", api.ErrPermission)
	g := follow(context.Background(), op)
	op.End(api.VM{}, boom)
	if _, err := g.result(t); err != boom {
		t.Fatalf("failed operation's follower got %v", err)
	}
	if _, err, ended := op.Outcome(); !ended || err != boom {
		t.Fatalf("outcome %v %v", err, ended)
	}
	select {
	case <-op.Done():
	default:
		t.Fatal("Done not closed")
	}
}

// One operation per VM: a second is refused while one runs, and replaces
// it once it ended; Forget drops only an ended one.
func TestBeginAndForget(t *testing.T) {
	tr := New(nil)
	op, _ := tr.Begin("a", KindCreate, "op1")
	if _, err := tr.Begin("a", KindStart, "op2"); !errors.Is(err, api.ErrBusy) ||
		!strings.Contains(err.Error(), "create is in progress (op op1") || !strings.Contains(err.Error(), "vm wait a") {
		t.Fatalf("second op while one runs: %v", err)
	}
	tr.Forget("a")
	if tr.Get("a") != op {
		t.Fatal("Forget dropped a running operation")
	}
	op.End(api.VM{}, errors.New("x"))
	op2, err := tr.Begin("a", KindStart, "op2")
	if err != nil || tr.Get("a") != op2 {
		t.Fatalf("begin after the end: %v", err)
	}
	op2.End(api.VM{}, nil)
	tr.Forget("a")
	if tr.Get("a") != nil {
		t.Fatal("Forget kept an ended operation")
	}
}

// Events beyond MaxEvents drop the oldest; a follower that comes late is
// told how many it missed.
func TestEventsCapped(t *testing.T) {
	tr := New(nil)
	op, _ := tr.Begin("a", KindCreate, "op1")
	for i := range MaxEvents + 5 {
		op.Progress(fmt.Sprintf("s%d", i), "")
	}
	op.End(api.VM{}, nil)
	f := follow(context.Background(), op)
	f.result(t)
	f.mu.Lock()
	seen := f.seen
	f.mu.Unlock()
	if len(seen) != MaxEvents {
		t.Fatalf("%d events replayed, want %d: %v", len(seen), MaxEvents, seen)
	}
	if !strings.HasPrefix(seen[0], "s5@") || !strings.HasSuffix(seen[0], ":5 earlier events not kept") ||
		!strings.HasPrefix(seen[len(seen)-1], fmt.Sprintf("s%d@", MaxEvents+4)) {
		t.Fatalf("%d events, first %q last %q", len(seen), seen[0], seen[len(seen)-1])
	}
}

// Past MaxOps the oldest ended operations go; running ones stay.
func TestTrackerBounded(t *testing.T) {
	c := newClock()
	tr := New(c.now)
	running, _ := tr.Begin("running", KindStart, "r")
	for i := range MaxOps + 10 {
		op, _ := tr.Begin(fmt.Sprintf("vm%d", i), KindCreate, "x")
		c.add(time.Second)
		op.End(api.VM{}, nil)
	}
	tr.mu.Lock()
	n := len(tr.ops)
	tr.mu.Unlock()
	if n > MaxOps {
		t.Fatalf("%d operations kept, limit %d", n, MaxOps)
	}
	if tr.Get("running") != running || tr.Get("vm0") != nil || tr.Get(fmt.Sprintf("vm%d", MaxOps+9)) == nil {
		t.Fatal("trim dropped the wrong operations")
	}
}
