package vm

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/banger-dev/banger/internal/agent"
	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/store"
)

// Idle auto-stop (`vm create|run|set --idle-timeout`).
//
// A running VM is in use while any of these holds, and its last-activity
// time is then moved to now:
//   - an exec through the daemon is in progress (Exec, so `vm exec`,
//     `vm ssh`, `vm run`, workspace, file sync, ports), or the agent
//     session was asked for (Agent);
//   - something else in the daemon said so: Touch or Hold (while it
//     lasts), e.g. for a banger session a client attaches to;
//   - the guest's agent counts an established connection to its port 22
//     other than the daemon's own kept SSH connection (a person's ssh);
//   - the guest's CPU was busy above IdleCPUPercent of one vCPU, averaged
//     since the previous check.
//   - a banger session in the guest wrote output, attached or not: the
//     agent reports how long ago (Stats.SessionOutputAge), and that moment
//     becomes the last activity when it is later than the one known.
//
// RunIdle checks each running VM with a timeout every idleInterval(timeout)
// and stops it through the normal graceful Stop once the last activity is
// older than the timeout, recording why (`vm show`: stop reason). A VM
// whose agent does not answer is never stopped for idleness: nothing tells
// whether someone is logged in. Last activity lives in memory only: it
// starts when the VMM is launched or adopted, so a daemon restart gives
// every VM a fresh timeout.

// IdleCPUPercent is the guest CPU use, in percent of one vCPU averaged over
// a check interval, that counts as activity.
const IdleCPUPercent = 5.0

// Idle check intervals: timeout/4, at most idleMaxInterval, at least the
// service's idleFloor (idleMinInterval in production).
const (
	idleMaxInterval = 30 * time.Second
	idleMinInterval = 2 * time.Second
	// idleProbeTimeout bounds one check's conversation with the agent.
	idleProbeTimeout = 5 * time.Second
)

// activity is what the daemon knows of a running VM's use.
type activity struct {
	last     time.Time // last seen in use
	inflight int       // execs and holds in progress
	checked  time.Time // last idle check
	idleCPU  *cpuSample
	statsCPU *cpuSample // the previous `vm stats` sample (its CPU window)
}

type cpuSample struct {
	cpu agent.CPUTimes
	at  time.Time
}

// activities is the per-VM activity, keyed by VM id. An entry exists while
// the VM has a handle (setHandle creates and removes it).
type activities struct {
	mu sync.Mutex
	m  map[string]*activity
}

// log is Deps.Log, or a discarding logger when there is none (tests).
func (s *Service) log() *slog.Logger {
	if s.d.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.d.Log
}

func (s *Service) now() time.Time {
	if s.d.Now != nil {
		return s.d.Now()
	}
	return time.Now()
}

// activity runs f on the VM's entry under the lock; a VM without one (not
// running, or running under no handle yet) gets one starting now.
func (s *Service) activity(id string, f func(a *activity, now time.Time)) {
	now := s.now()
	s.act.mu.Lock()
	defer s.act.mu.Unlock()
	a := s.act.m[id]
	if a == nil {
		a = &activity{last: now}
		s.act.m[id] = a
	}
	f(a, now)
}

// knownActivity runs f on the VM's entry under the lock and reports whether
// there is one; unlike activity it never creates an entry (for the idle
// check and stats, which name VMs that may have stopped meanwhile).
func (s *Service) knownActivity(id string, f func(a *activity, now time.Time)) bool {
	now := s.now()
	s.act.mu.Lock()
	defer s.act.mu.Unlock()
	a := s.act.m[id]
	if a == nil {
		return false
	}
	f(a, now)
	return true
}

// resetActivity starts a VM's activity afresh (launch, adoption) or
// forgets it (running false: stop, teardown).
func (s *Service) resetActivity(id string, running bool) {
	s.act.mu.Lock()
	defer s.act.mu.Unlock()
	if !running {
		delete(s.act.m, id)
		return
	}
	s.act.m[id] = &activity{last: s.now()}
}

// Touch records that the VM (by id) is in use now: for daemon code that uses
// a guest outside Exec and Agent. Unknown ids are ignored.
func (s *Service) Touch(id string) {
	if s.handle(id) == nil {
		return
	}
	s.activity(id, func(a *activity, now time.Time) { a.last = now })
}

// Hold marks the VM (by id) in use until release is called (an exec, a
// session attached for a long time): it is never idle meanwhile.
func (s *Service) Hold(id string) (release func()) {
	s.activity(id, func(a *activity, now time.Time) { a.inflight++; a.last = now })
	var once sync.Once
	return func() {
		once.Do(func() {
			s.act.mu.Lock()
			defer s.act.mu.Unlock()
			if a := s.act.m[id]; a != nil {
				a.inflight = max(a.inflight-1, 0)
				a.last = s.now()
			}
		})
	}
}

// lastActivity is the running VM's last activity (an exec in progress is
// now); zero when the daemon has no record.
func (s *Service) lastActivity(id string) time.Time {
	now := s.now()
	s.act.mu.Lock()
	defer s.act.mu.Unlock()
	a := s.act.m[id]
	switch {
	case a == nil:
		return time.Time{}
	case a.inflight > 0:
		return now
	}
	return a.last
}

// idleInterval is how often a VM with timeout is checked.
func (s *Service) idleInterval(timeout time.Duration) time.Duration {
	floor := s.idleFloor
	if floor <= 0 {
		floor = idleMinInterval
	}
	return max(min(timeout/4, idleMaxInterval), floor)
}

// RunIdle stops idle VMs until ctx ends. cmd/bangerd runs it after
// Reconcile.
func (s *Service) RunIdle(ctx context.Context) {
	tick := s.idleFloor
	if tick <= 0 {
		tick = idleMinInterval
	}
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.checkIdle(ctx)
		}
	}
}

// checkIdle checks every running VM with a timeout whose interval has
// passed, concurrently (one slow agent does not delay the others).
func (s *Service) checkIdle(ctx context.Context) {
	timeouts, err := s.d.Store.IdleTimeouts(ctx)
	if err != nil {
		s.log().WarnContext(ctx, "idle check", "err", err)
		return
	}
	var wg sync.WaitGroup
	for id, timeout := range timeouts {
		due := false
		s.knownActivity(id, func(a *activity, now time.Time) { // none: not running
			if now.Sub(a.checked) >= s.idleInterval(timeout) {
				a.checked, due = now, true
			}
		})
		if due {
			wg.Go(func() { s.checkOne(ctx, id, timeout) })
		}
	}
	wg.Wait()
}

// checkOne looks at one VM's signs of use and stops it when it has been
// idle for timeout.
func (s *Service) checkOne(ctx context.Context, id string, timeout time.Duration) {
	v, err := s.d.Store.GetVM(ctx, id)
	if err != nil || !s.Running(v) {
		return
	}
	pctx, cancel := context.WithTimeout(ctx, idleProbeTimeout)
	st, perr := s.guestStats(pctx, v)
	cancel()
	var busy []string
	var idleFor time.Duration
	known := s.knownActivity(id, func(a *activity, now time.Time) {
		if a.inflight > 0 {
			busy = append(busy, "exec")
		}
		if perr == nil {
			if p := a.idleCPU; p != nil {
				if pct := agent.CPUPercent(p.cpu, st.CPU) * float64(max(v.VCPU, 1)); pct >= IdleCPUPercent {
					busy = append(busy, fmt.Sprintf("cpu %.0f%% of a vcpu", pct))
				}
			}
			a.idleCPU = &cpuSample{cpu: st.CPU, at: now}
			if n := s.sshSessions(v, st); n != nil && *n > 0 {
				busy = append(busy, fmt.Sprintf("%d ssh connection(s)", *n))
			}
		}
		if len(busy) > 0 {
			a.last = now
		} else if perr == nil && st.SessionOutputAge != nil && *st.SessionOutputAge >= 0 {
			// Session output is use at the time it was written (whole
			// seconds ago by the guest's clock: no clock skew involved).
			if at := now.Add(-time.Duration(*st.SessionOutputAge) * time.Second); at.After(a.last) {
				a.last = at
				busy = append(busy, fmt.Sprintf("session output %ds ago", *st.SessionOutputAge))
			}
		}
		idleFor = now.Sub(a.last)
	})
	if !known { // stopped meanwhile
		return
	}
	if len(busy) > 0 {
		s.log().DebugContext(ctx, "vm in use", "vm", v.Name, "signs", busy)
	}
	if len(busy) > 0 || idleFor < timeout {
		return
	}
	if perr != nil {
		s.log().InfoContext(ctx, "vm idle but its agent does not answer; not stopping", "vm", v.Name,
			"idle_for", idleFor.Round(time.Second), "err", perr)
		return
	}
	s.log().InfoContext(ctx, "stopping idle vm", "vm", v.Name, "idle_timeout", timeout, "idle_for", idleFor.Round(time.Second))
	if _, err := s.stop(context.WithoutCancel(ctx), v.ID, false, timeout); err != nil {
		s.log().WarnContext(ctx, "stop idle vm", "vm", v.Name, "err", err)
	}
}

// stillIdle reports, under the VM lock just before an idle stop, that
// nothing used the VM since the check decided to stop it.
func (s *Service) stillIdle(id string, timeout time.Duration) bool {
	idle := false
	s.knownActivity(id, func(a *activity, now time.Time) { idle = a.inflight == 0 && now.Sub(a.last) >= timeout })
	return idle
}

// guestStats samples the guest through its agent. It does not count as
// activity (Agent does).
func (s *Service) guestStats(ctx context.Context, v store.VM) (agent.Stats, error) {
	c, err := s.d.Guest.Agent(ctx, s.target(v))
	if err != nil {
		return agent.Stats{}, err
	}
	return c.Stats(ctx)
}

// keptSSH is implemented by a Guest that keeps SSH connections of its own
// (guest.Router): the guest counts them among its port-22 peers, and they
// are nobody's session.
type keptSSH interface {
	KeptSSH(vmID string) []netip.AddrPort
}

// sshSessions is the number of established connections to the guest's
// port 22 besides the daemon's own; nil when the agent does not count them.
func (s *Service) sshSessions(v store.VM, st agent.Stats) *int {
	if st.SSH == nil {
		return nil
	}
	n := st.SSH.Count
	if k, ok := s.d.Guest.(keptSSH); ok {
		for _, mine := range k.KeptSSH(v.ID) {
			if slices.Contains(st.SSH.Peers, mine.String()) {
				n--
			}
		}
	}
	n = max(n, 0)
	return &n
}

// idleView is the VM's idle state for views.
func (s *Service) idleView(ctx context.Context, v store.VM) api.Idle {
	var out api.Idle
	if idle, err := s.d.Store.Idle(ctx, v.ID); err == nil {
		out.IdleTimeout = int(idle.Timeout / time.Second)
		if idle.StopReason != "" && v.State == StateStopped {
			out.StopReason = idle.StopReason
			at := idle.StoppedAt
			out.StoppedAt = &at
		}
	}
	if s.handle(v.ID) != nil {
		if t := s.lastActivity(v.ID); !t.IsZero() {
			t = t.UTC()
			out.LastActivity = &t
		}
	}
	return out
}

// validIdleTimeout checks an idle timeout in seconds (0 = off).
func validIdleTimeout(secs int) error {
	if secs < 0 || time.Duration(secs)*time.Second > store.MaxIdleTimeout {
		return fmt.Errorf("idle timeout %ds: must be 0 (off) to %s: %w", secs, fmtDuration(store.MaxIdleTimeout), api.ErrInvalid)
	}
	return nil
}

// fmtDuration prints 30m, 1h30m, 20s, 2h rather than 30m0s.
func fmtDuration(d time.Duration) string {
	s := d.Round(time.Second).String()
	for _, z := range []string{"m0s", "h0m"} {
		if len(s) > len(z) && s[len(s)-len(z):] == z {
			s = s[:len(s)-len(z)+1]
		}
	}
	return s
}
