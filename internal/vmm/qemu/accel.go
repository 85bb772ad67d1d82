package qemu

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"time"
)

const (
	defaultKVMDevice  = "/dev/kvm"
	defaultProbeLimit = 1500 * time.Millisecond
)

// ProbeAccel decides whether KVM can really run a guest: /dev/kvm must open,
// and a tiny microvm with "-accel kvm -cpu host" must still be running after a
// short while (a nested PVM host has /dev/kvm but QEMU aborts at vCPU setup,
// "failed to set MSR 0x10a"). Otherwise TCG. The reason is for `banger doctor`.
// The answer is cached; a cancelled probe is not.
func (d *Driver) ProbeAccel(ctx context.Context) (Accel, string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.Accel != "" {
		if d.accelReason == "" {
			d.accelReason = "set by configuration"
		}
		return d.Accel, d.accelReason
	}
	a, reason, final := d.probe(ctx)
	if final {
		d.Accel, d.accelReason = a, reason
		d.kvm = newKVMAnswer(a, reason)
		d.log().Info("qemu accelerator chosen", "accel", string(a), "reason", reason)
	}
	return a, reason
}

// kvmAnswer is whether KVM runs guests here, and why.
type kvmAnswer struct {
	usable bool
	why    string
}

func newKVMAnswer(a Accel, reason string) *kvmAnswer {
	return &kvmAnswer{usable: a == AccelKVM, why: strings.TrimSuffix(reason, "; using tcg")}
}

// ProbeKVM says whether KVM can run a guest on this host, by the same probe
// as ProbeAccel but whatever accelerator QEMU was told to use: the question
// of a VMM that has no TCG (Firecracker). The answer is cached; one that
// could not be had (no QEMU to probe with, a cancelled probe) is not, and
// counts as usable with why saying it was not probed.
func (d *Driver) ProbeKVM(ctx context.Context) (usable bool, why string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.kvm != nil {
		return d.kvm.usable, d.kvm.why
	}
	a, reason, final := d.probe(ctx)
	if !final {
		return true, "not probed: " + reason
	}
	d.kvm = newKVMAnswer(a, reason)
	return d.kvm.usable, d.kvm.why
}

func (d *Driver) probe(ctx context.Context) (Accel, string, bool) {
	bin, err := d.binary()
	if err != nil {
		return AccelTCG, err.Error(), false
	}
	dev := d.kvmDevice
	if dev == "" {
		dev = defaultKVMDevice
	}
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return AccelTCG, fmt.Sprintf("kvm unavailable (%v); using tcg", err), true
	}
	f.Close()

	limit := d.probeLimit
	if limit == 0 {
		limit = defaultProbeLimit
	}
	pctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	// No kernel: the built-in firmware runs in a real KVM vCPU, which is what
	// fails on a nested PVM host. Staying alive until the deadline means KVM works.
	out, err := d.Runner.Run(pctx, bin,
		"-M", "microvm", "-accel", "kvm", "-cpu", "host", "-m", "32", "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none", "-no-reboot")
	switch {
	case ctx.Err() != nil:
		return AccelTCG, "accelerator probe cancelled: " + ctx.Err().Error(), false
	case err == nil:
		return AccelKVM, "kvm: probe guest ran and powered off", true
	case pctx.Err() != nil:
		return AccelKVM, fmt.Sprintf("kvm: probe guest ran for %s", limit), true
	}
	// Any early exit means KVM cannot run this guest; QEMU's first line says why.
	msg := firstLine(string(out))
	if msg == "" {
		msg = err.Error()
	}
	return AccelTCG, fmt.Sprintf("kvm unusable (%s); using tcg", msg), true
}

// parseCPUkHz reads the first "cpu MHz" of /proc/cpuinfo as kHz.
func parseCPUkHz(cpuinfo string) (int, error) {
	for _, line := range strings.Split(cpuinfo, "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || strings.TrimSpace(k) != "cpu MHz" {
			continue
		}
		mhz, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		// 1 MHz .. 100 GHz: anything else is garbage, not a clock.
		if err != nil || math.IsNaN(mhz) || mhz < 1 || mhz > 100000 {
			return 0, fmt.Errorf("cpuinfo: bad cpu MHz %q", strings.TrimSpace(v))
		}
		return int(math.Round(mhz * 1000)), nil
	}
	return 0, errors.New("cpuinfo: no cpu MHz line")
}
