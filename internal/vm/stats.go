package vm

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/banger-dev/banger/internal/agent"
	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/store"
)

// Stats timing: how long the guest gets to answer, and the CPU window.
const (
	statsAgentTimeout = 3 * time.Second
	// A previous sample younger than statsMinWindow or older than
	// statsMaxWindow is not used for CPU%: a second one is taken
	// statsWindow after the first instead.
	statsMinWindow = 200 * time.Millisecond
	statsMaxWindow = time.Minute
	statsWindow    = 500 * time.Millisecond
	// procStatusLimit bounds the read of /proc/<pid>/status.
	procStatusLimit = 64 << 10
)

// Stats samples the named running VM, or every running VM when name is "".
// A guest whose agent does not answer still gets its host-side numbers.
func (s *Service) Stats(ctx context.Context, name string) ([]api.VMStats, error) {
	var vms []store.VM
	if name != "" {
		v, err := s.Get(ctx, name)
		if err != nil {
			return nil, err
		}
		if !s.Running(v) {
			return nil, fmt.Errorf("vm %q is %s: %w", v.Name, v.State, api.ErrNotRunning)
		}
		vms = append(vms, v)
	} else {
		all, err := s.List(ctx)
		if err != nil {
			return nil, err
		}
		for _, v := range all {
			if s.Running(v) {
				vms = append(vms, v)
			}
		}
	}
	out := make([]api.VMStats, len(vms))
	var wg sync.WaitGroup
	for i, v := range vms {
		wg.Go(func() { out[i] = s.vmStats(ctx, v) })
	}
	wg.Wait()
	return out, nil
}

// vmStats assembles one VM's sample: guest (agent), network (TAP counters),
// VMM memory, idle state.
func (s *Service) vmStats(ctx context.Context, v store.VM) api.VMStats {
	out := api.VMStats{Name: v.Name, ID: v.ID, SampledAt: s.now().UTC()}
	if g, err := s.guestSample(ctx, v); err != nil {
		out.GuestError = err.Error()
	} else {
		out.Guest = g
	}
	if n, err := s.tapCounters(v.Tap); err != nil {
		out.NetError = err.Error()
	} else {
		out.Net = n
	}
	if rss, err := s.vmmRSS(v); err != nil {
		out.VMMError = err.Error()
	} else {
		out.VMMRSSBytes = rss
	}
	out.Idle = s.idleView(ctx, v)
	return out
}

// guestSample asks the agent, twice when there is no usable previous
// sample to take the CPU share against.
func (s *Service) guestSample(ctx context.Context, v store.VM) (*api.GuestStats, error) {
	ctx, cancel := context.WithTimeout(ctx, statsAgentTimeout+statsWindow)
	defer cancel()
	st, err := s.guestStats(ctx, v)
	if err != nil {
		return nil, err
	}
	at := s.now()
	var prev *cpuSample
	s.knownActivity(v.ID, func(a *activity, _ time.Time) { prev = a.statsCPU })
	if prev == nil || at.Sub(prev.at) < statsMinWindow || at.Sub(prev.at) > statsMaxWindow {
		prev = &cpuSample{cpu: st.CPU, at: at}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(statsWindow):
		}
		if st, err = s.guestStats(ctx, v); err != nil {
			return nil, err
		}
		at = s.now()
	}
	cur := &cpuSample{cpu: st.CPU, at: at}
	s.knownActivity(v.ID, func(a *activity, _ time.Time) { a.statsCPU = cur })
	// The agent client has bounded every value (available <= total,
	// used <= size, loads finite); CPUPercent is 0-100 by construction.
	g := &api.GuestStats{
		CPUPercent:    agent.CPUPercent(prev.cpu, st.CPU),
		CPUWindowMS:   at.Sub(prev.at).Milliseconds(),
		MemUsedBytes:  st.MemTotal - st.MemAvailable,
		MemTotalBytes: st.MemTotal,
		Load1:         st.Load1, Load5: st.Load5, Load15: st.Load15,
		RootUsedBytes: st.Root.Used, RootTotal: st.Root.Total,
		WorkUsedBytes: st.Home.Used, WorkTotal: st.Home.Total,
		UptimeSeconds: int64(st.Uptime / time.Second),
		SSHSessions:   s.sshSessions(v, st),
	}
	return g, nil
}

// tapCounters reads the TAP's byte counters and turns them round: the
// TAP receives what the guest sends.
func (s *Service) tapCounters(tap string) (*api.NetStats, error) {
	if tap == "" || tap != filepath.Base(tap) || tap == "." || tap == ".." {
		return nil, fmt.Errorf("tap %q: no counters", tap)
	}
	dir := filepath.Join(s.sysClassNet, tap, "statistics")
	rx, err := readCounter(filepath.Join(dir, "rx_bytes"))
	if err != nil {
		return nil, err
	}
	tx, err := readCounter(filepath.Join(dir, "tx_bytes"))
	if err != nil {
		return nil, err
	}
	return &api.NetStats{RxBytes: tx, TxBytes: rx}, nil
}

func readCounter(path string) (uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 64))
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	return n, nil
}

// vmmRSS is the VMM process's VmRSS from /proc/<pid>/status.
func (s *Service) vmmRSS(v store.VM) (uint64, error) {
	h := s.handle(v.ID)
	if h == nil || h.PID <= 0 {
		return 0, errors.New("no vmm process")
	}
	f, err := os.Open(filepath.Join(s.procDir, strconv.Itoa(h.PID), "status"))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(io.LimitReader(f, procStatusLimit))
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:")
		if !ok {
			continue
		}
		kb, found := strings.CutSuffix(strings.TrimSpace(rest), " kB")
		n, err := strconv.ParseUint(strings.TrimSpace(kb), 10, 64)
		if !found || err != nil || n > 1<<40 {
			return 0, fmt.Errorf("vmm pid %d: VmRSS %q", h.PID, rest)
		}
		return n << 10, nil
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("vmm pid %d: no VmRSS", h.PID)
}
