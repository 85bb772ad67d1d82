// Package vmop keeps, per VM, the latest long operation the daemon ran on it
// (create, start, restart): its op id, the stages seen with the time each
// began, the stage in progress and, once over, its outcome. A client that
// did not start the operation follows it from here (`vm wait`), and `vm
// show` reports the stage in progress. It lives in memory only: a restarted
// daemon knows no operation, and reconcile settles what an interrupted one
// left in the store.
//
// Bounds: one operation per VM name (the latest; Begin refuses a second
// while one runs), MaxEvents events per operation (the newest kept) and
// MaxOps operations in all (the oldest finished ones go first).
package vmop

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/banger-dev/banger/internal/api"
)

// Kinds of operation.
const (
	KindCreate  = "create"
	KindStart   = "start"
	KindRestart = "restart"
)

const (
	// MaxEvents is how many progress events an operation keeps (the newest).
	MaxEvents = 128
	// MaxOps is how many operations the tracker keeps; past it, finished
	// ones are dropped oldest first (running ones never are).
	MaxOps = 256
)

// Event is one progress report of an operation.
type Event struct {
	Stage, Message string
	At             time.Time
}

// Op is one operation on one VM. Its methods are safe for concurrent use.
type Op struct {
	ID, Kind, Name string
	Started        time.Time

	now func() time.Time

	mu       sync.Mutex
	events   []Event // the newest MaxEvents
	seq      uint64  // events reported in all; events[i] has seq seq-len(events)+i
	stage    string  // the stage in progress
	stageAt  time.Time
	changed  chan struct{} // closed and replaced at every event and at the end
	underway chan struct{} // closed at the first event or the end
	done     chan struct{} // closed at the end
	ended    time.Time
	result   api.VM
	err      error
}

// Progress records a stage report; it never blocks on followers.
func (o *Op) Progress(stage, msg string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if !o.ended.IsZero() {
		return
	}
	now := o.now()
	if stage != o.stage || o.stageAt.IsZero() {
		o.stage, o.stageAt = stage, now
	}
	if len(o.events) == MaxEvents {
		copy(o.events, o.events[1:])
		o.events = o.events[:MaxEvents-1]
	}
	o.events = append(o.events, Event{Stage: stage, Message: msg, At: now})
	o.seq++
	if o.seq == 1 {
		close(o.underway)
	}
	o.notify()
}

// End records the outcome: result when err is nil. Only the first call counts.
func (o *Op) End(result api.VM, err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if !o.ended.IsZero() {
		return
	}
	o.ended = o.now()
	o.result, o.err = result, err
	if o.seq == 0 {
		close(o.underway)
	}
	close(o.done)
	o.notify()
}

func (o *Op) notify() {
	close(o.changed)
	o.changed = make(chan struct{})
}

// Done is closed once the operation has ended.
func (o *Op) Done() <-chan struct{} { return o.done }

// Underway is closed at the first stage report or at the end, whichever
// comes first: past it, the operation has passed its up-front checks.
func (o *Op) Underway() <-chan struct{} { return o.underway }

// Outcome is the operation's result or error; ok is false while it runs.
func (o *Op) Outcome() (v api.VM, err error, ok bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.result, o.err, !o.ended.IsZero()
}

// View is the operation as part of the VM view; nil once it has ended.
func (o *Op) View() *api.Operation {
	o.mu.Lock()
	defer o.mu.Unlock()
	if !o.ended.IsZero() {
		return nil
	}
	return &api.Operation{OpID: o.ID, Kind: o.Kind, Started: o.Started, Stage: o.stage, StageStarted: o.stageAt}
}

// Follow calls fn with every event kept so far, then with each new one, on
// the calling goroutine, until the operation ends (its outcome is returned)
// or ctx does (its error). fn may block: the operation never waits for it.
// Events that a slow fn let fall out of the kept window are skipped, and
// the next one it gets says how many.
func (o *Op) Follow(ctx context.Context, fn func(Event)) (api.VM, error) {
	var next uint64 // seq of the next event fn should get
	for {
		o.mu.Lock()
		first := o.seq - uint64(len(o.events))
		var batch []Event
		if next < first {
			skipped := first - next
			batch = append(batch, o.events[0])
			batch[0].Message = fmt.Sprintf("%d earlier events not kept", skipped)
			if o.events[0].Message != "" {
				batch[0].Message = o.events[0].Message + " (" + batch[0].Message + ")"
			}
			next = first + 1
		}
		batch = append(batch, o.events[next-first:]...)
		next = o.seq
		changed, ended := o.changed, !o.ended.IsZero()
		result, err := o.result, o.err
		o.mu.Unlock()

		for _, ev := range batch {
			fn(ev)
		}
		if ended {
			return result, err
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return api.VM{}, ctx.Err()
		}
	}
}

// Tracker holds the latest operation of each VM, by name.
type Tracker struct {
	now func() time.Time

	mu  sync.Mutex
	ops map[string]*Op
}

// New returns a tracker whose operations take their times from now (nil:
// time.Now).
func New(now func() time.Time) *Tracker {
	if now == nil {
		now = time.Now
	}
	return &Tracker{now: now, ops: map[string]*Op{}}
}

// Begin records a new operation of kind on the VM called name, replacing
// its previous one. It refuses (api.ErrBusy) while another runs on it.
func (t *Tracker) Begin(name, kind, id string) (*Op, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if cur := t.ops[name]; cur != nil {
		if _, _, ended := cur.Outcome(); !ended {
			return nil, fmt.Errorf("vm %q: a %s is in progress (op %s; follow it with `banger vm wait %s`): %w",
				name, cur.Kind, cur.ID, name, api.ErrBusy)
		}
	}
	op := &Op{ID: id, Kind: kind, Name: name, Started: t.now(), now: t.now,
		changed: make(chan struct{}), underway: make(chan struct{}), done: make(chan struct{})}
	t.ops[name] = op
	t.trim()
	return op, nil
}

// trim drops the oldest finished operations beyond MaxOps. t.mu is held.
func (t *Tracker) trim() {
	if len(t.ops) <= MaxOps {
		return
	}
	type fin struct {
		name  string
		ended time.Time
	}
	var done []fin
	for name, op := range t.ops {
		op.mu.Lock()
		if !op.ended.IsZero() {
			done = append(done, fin{name, op.ended})
		}
		op.mu.Unlock()
	}
	sort.Slice(done, func(i, j int) bool { return done[i].ended.Before(done[j].ended) })
	for _, f := range done {
		if len(t.ops) <= MaxOps {
			return
		}
		delete(t.ops, f.name)
	}
}

// Get returns the latest operation on the VM called name, running or not;
// nil when there is none.
func (t *Tracker) Get(name string) *Op {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.ops[name]
}

// Forget drops the VM's operation once it has ended (the VM was deleted).
func (t *Tracker) Forget(name string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if op := t.ops[name]; op != nil {
		if _, _, ended := op.Outcome(); ended {
			delete(t.ops, name)
		}
	}
}
