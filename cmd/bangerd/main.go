// Command bangerd is banger's daemon: it owns state, VM lifecycle, images and
// kernels, and serves the CLI over a 0600 unix socket. All wiring is here.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/capability"
	"github.com/banger-dev/banger/internal/daemon"
	"github.com/banger-dev/banger/internal/doctor"
	"github.com/banger-dev/banger/internal/forward"
	"github.com/banger-dev/banger/internal/guest"
	"github.com/banger-dev/banger/internal/hostnet"
	"github.com/banger-dev/banger/internal/image"
	"github.com/banger-dev/banger/internal/kernel"
	"github.com/banger-dev/banger/internal/npm"
	"github.com/banger-dev/banger/internal/opid"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/privileged"
	"github.com/banger-dev/banger/internal/rpc"
	"github.com/banger-dev/banger/internal/store"
	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/vm"
	"github.com/banger-dev/banger/internal/vmm"
	"github.com/banger-dev/banger/internal/vmm/cgroup"
	"github.com/banger-dev/banger/internal/vmm/firecracker"
	"github.com/banger-dev/banger/internal/vmm/qemu"
	"github.com/banger-dev/banger/internal/vmop"
	"github.com/banger-dev/banger/internal/workspace"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bangerd:", err)
		os.Exit(1)
	}
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func run() error {
	layout, err := paths.Default()
	if err != nil {
		return err
	}
	stateDir := flag.String("state-dir", layout.Root, "state root (env "+paths.EnvStateDir+")")
	bridge := flag.String("bridge", envOr("BANGER_BRIDGE", "banger0"), "bridge name (env BANGER_BRIDGE)")
	subnet := flag.String("subnet", envOr("BANGER_SUBNET", "172.30.0.0/24"), "guest subnet (env BANGER_SUBNET)")
	accel := flag.String("accel", envOr("BANGER_ACCEL", ""), "force the QEMU accelerator: kvm or tcg (env BANGER_ACCEL; default: probe)")
	vmmName := flag.String("vmm", envOr("BANGER_VMM", "qemu"),
		"the VMM new VMs run under unless `vm create --vmm` says otherwise: qemu or firecracker (env BANGER_VMM; existing VMs keep theirs)")
	debug := flag.Bool("debug", os.Getenv("BANGER_DEBUG") != "", "debug logging")
	helper := flag.String("helper", os.Getenv("BANGER_HELPER"),
		"privileged helper socket (env BANGER_HELPER; default: in-process when running as root, else "+privileged.DefaultSocket+")")
	guestVia := flag.String("guest-via", envOr("BANGER_GUEST_VIA", "auto"),
		"how the daemon reaches guests: auto (the guest agent when it answers, else ssh) or ssh (env BANGER_GUEST_VIA)")
	diskClone := flag.String("disk-clone", envOr("BANGER_DISK_CLONE", vm.DiskCloneAuto),
		"how vm create makes root disks: auto (reflink where the file system can, else a qcow2 overlay on the image, else a full copy) or copy (reflink, else a full copy: the method before overlays, a benchmark baseline) (env BANGER_DISK_CLONE)")
	npmRegistry := flag.String("npm-registry", envOr("BANGER_NPM_REGISTRY", npm.DefaultRegistry),
		"the npm registry capabilities fetch from (opencode) (env BANGER_NPM_REGISTRY)")
	npmInsecure := flag.Bool("npm-insecure", os.Getenv("BANGER_NPM_INSECURE") != "",
		"allow a plain-http npm registry (env BANGER_NPM_INSECURE; banger's pinned versions are sha512-checked either way)")
	grace := flag.Duration("shutdown-grace", defaultShutdownGrace,
		"at shutdown (daemon stop, SIGTERM), how long requests in flight may still finish before they are interrupted and rolled back (env BANGER_SHUTDOWN_GRACE)")
	logFile := flag.String("log-file", "", "log to this file, rotated at 10 MiB with 3 old files kept, with stdout and stderr (default: stderr)")
	if v := os.Getenv("BANGER_SHUTDOWN_GRACE"); v != "" {
		if err := flag.Set("shutdown-grace", v); err != nil {
			return fmt.Errorf("BANGER_SHUTDOWN_GRACE: %w", err)
		}
	}
	flag.Parse()
	layout = paths.Layout{Root: *stateDir}
	if err := layout.Ensure(); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	prefix, err := netip.ParsePrefix(*subnet)
	if err != nil || !prefix.Addr().Is4() || prefix.Bits() > 29 {
		return fmt.Errorf("subnet %q: want an IPv4 prefix of /29 or larger", *subnet)
	}
	level := slog.LevelInfo
	if *debug {
		level = slog.LevelDebug
	}

	// One daemon per state dir: hold an exclusive lock on the pid file.
	pidf, err := os.OpenFile(layout.PID(), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return err
	}
	defer pidf.Close()
	if err := unix.Flock(int(pidf.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return fmt.Errorf("another bangerd holds %s: %w", layout.PID(), err)
	}
	// Only the lock holder rotates the log.
	logOut := io.Writer(os.Stderr)
	if *logFile != "" {
		w, err := openDaemonLog(*logFile, 1, 2)
		if err != nil {
			return err
		}
		defer w.Close()
		logOut = w
	}
	log := slog.New(opid.Handler(slog.NewJSONHandler(logOut, &slog.HandlerOptions{Level: level})))
	_ = pidf.Truncate(0)
	_, _ = pidf.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)

	// ctx ends when shutdown is asked for (a signal or daemon.stop); a second
	// signal then kills at once instead of waiting for the shutdown.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	unwatch := context.AfterFunc(ctx, func() {
		stop()
		log.Info("bangerd shutting down: no new requests; those in flight may finish", "grace", grace.String())
	})
	defer unwatch() // not on a failed start

	st, err := store.Open(ctx, layout.DB())
	if err != nil {
		return err
	}
	defer st.Close()

	runner := system.Exec{}
	drv := qemu.New(runner, log)
	// Firecracker is offered whatever the default; a host without it
	// refuses `vm create --vmm firecracker` with why (doctor says so too).
	fc := firecracker.New(runner, log)
	fc.KVM = drv.ProbeKVM // the same probe: a PVM host's /dev/kvm runs no ordinary guest
	fc.KernelConfig = func(path string) (map[string]string, error) {
		cfg, _, err := kernel.ReadConfig(path)
		return cfg, err
	}
	drivers := []vmm.Driver{drv, fc}
	var defaultDrv vmm.Driver
	for _, d := range drivers {
		if d.Name() == *vmmName {
			defaultDrv = d
		}
	}
	if defaultDrv == nil {
		return fmt.Errorf("--vmm %q: want qemu or firecracker", *vmmName)
	}
	switch *accel {
	case "":
		a, why := drv.ProbeAccel(ctx)
		log.Info("accelerator", "accel", a, "reason", why)
	case "kvm", "tcg":
		drv.Accel = qemu.Accel(*accel)
	default:
		return fmt.Errorf("--accel %q: want kvm or tcg", *accel)
	}
	natBlock, err := hostnet.ParseBlocked(*natBlockFlag)
	if err != nil {
		return fmt.Errorf("--nat-block: %w", err)
	}
	netCfg := hostnet.Config{Bridge: *bridge, Subnet: prefix, ExtraBlocked: natBlock}
	priv := newPrivileged(log, runner, netCfg, *helper)
	if local, ok := priv.(*privileged.Local); ok {
		go local.FW.Watch(ctx, firewallWatchEvery) // a flushed ruleset is put back within seconds
	}
	signer, err := guest.EnsureClientKey(layout.ClientKey())
	if err != nil {
		return err
	}
	kh, err := guest.OpenKnownHosts(layout.KnownHosts())
	if err != nil {
		return err
	}
	if *guestVia != "auto" && *guestVia != "ssh" {
		return fmt.Errorf("--guest-via %q: want auto or ssh", *guestVia)
	}
	guests := &guest.Router{Log: log, SSH: guest.NewPool(log, signer, kh), Agents: guest.NewAgents(log), SSHOnly: *guestVia == "ssh"}
	defer guests.Close()
	afterStep, err := failpoint(os.Getenv(envFailpoint), log, killSelf)
	if err != nil {
		return err
	}
	var wss *workspace.Service // file sync runs after every boot; built below, it needs vms
	var fwds *forward.Manager  // port forwards end with their VM; built below, they need vms
	if !vm.ValidDiskClone(*diskClone) {
		return fmt.Errorf("--disk-clone %q: want auto or copy", *diskClone)
	}
	if defaultDrv == fc {
		if err := fc.CheckHost(ctx).Err(fc.Name()); err != nil {
			log.Warn("the default vmm cannot run vms on this host; creates will be refused until it can", "err", err)
		}
	}
	npmCache := &npm.Cache{Dir: filepath.Join(layout.Cache(), "npm"), Log: log,
		Registry: &npm.Registry{URL: *npmRegistry, Insecure: *npmInsecure}}
	if err := npmCache.RemoveTemp(); err != nil {
		log.Warn("npm cache: could not remove interrupted fetches", "err", err)
	}
	caps := capability.NewRegistry(&capability.Opencode{Fetch: npmCache, Log: log}, capability.NAT{})
	vms := vm.New(vm.Deps{Log: log, Layout: layout, Store: st, Runner: runner, Driver: defaultDrv, Drivers: drivers, Net: priv,
		Subnet: netCfg.Subnet, Gateway: netCfg.Gateway(),
		Guest: guests, KnownHosts: kh, ClientKey: signer.PublicKey(), UID: os.Getuid(), GID: os.Getgid(),
		Firewall:   priv,
		Limits:     vmmLimits(log),
		AfterStart: func(ctx context.Context, v store.VM) { wss.AfterStart(ctx, v) },
		AfterStop:  func(id string) { fwds.StopVM(id) },
		Forwards:   func(id string) []api.Forward { return fwds.List(id) },
		AfterStep:  afterStep,
		DiskClone:  *diskClone,
		Caps:       caps})
	fwds = forward.New(forward.Deps{Log: log, VMs: forwardVMs{vms}})
	// Shutdown begins: every forward's listener goes at once, so a
	// foreground `vm forward` does not hold the daemon for its grace.
	defer context.AfterFunc(ctx, fwds.Close)()
	defer fwds.Close()
	home, _ := os.UserHomeDir()
	wss = workspace.New(workspace.Deps{Log: log, Store: st, VMs: vms, Runner: runner, Tmp: layout.Tmp(),
		Home: home, SyncConfig: layout.SyncConfig()})
	agent, err := system.Executable("banger-agent")
	if err != nil {
		log.Warn("banger-agent not found next to bangerd or on PATH; kernel import and image build will fail", "err", err)
	}
	doc := &doctor.Checker{Runner: runner, Layout: layout, Store: st, LookPath: system.LookPath,
		Accel:       func(ctx context.Context) (string, string) { a, why := drv.ProbeAccel(ctx); return string(a), why },
		Privileged:  func(ctx context.Context) (bool, string) { return privilegedStatus(ctx, priv) },
		Firecracker: fc, DefaultVMM: defaultDrv.Name()}

	srv := rpc.NewServer(log, os.Getuid())
	srv.ShutdownGrace = *grace
	dm := daemon.Register(srv, daemon.Deps{
		Log: log, Layout: layout, Store: st, VMs: vms, Workspaces: wss,
		Kernels:  &kernel.Importer{Runner: runner, Layout: layout, Log: log, AgentPath: agent},
		Images:   &image.Builder{Runner: runner, Layout: layout, Log: log, AgentPath: agent},
		Doctor:   doc.Run,
		Accel:    func() string { return string(drv.Accel) },
		Shutdown: stop,
		Ops:      vmop.New(time.Now),
		Forwards: fwds,
		Caps:     caps,
	})
	ln, err := rpc.Listen(layout.Socket())
	if err != nil {
		return err
	}
	// Staging trees and half-committed images/kernels a crash left.
	if err := dm.ReconcileArtifacts(ctx); err != nil {
		log.Error("reconcile images and kernels", "err", err)
	}
	// Reconcile before serving: adopt live VMMs, tear down dead ones.
	if err := vms.Reconcile(ctx); err != nil {
		log.Error("reconcile", "err", err)
	}
	go vms.RunIdle(ctx) // idle auto-stop; adopted VMs' idle clocks start now
	stopNet := startNetServices(ctx, log, priv, netCfg, vms)
	defer stopNet()
	log.Info("bangerd listening", "socket", layout.Socket(), "pid", os.Getpid(), "state_dir", layout.Root)
	err = srv.Serve(ctx, ln)
	_ = os.Remove(layout.Socket())
	if err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	log.Info("bangerd stopped; running VMs keep running and are adopted at next start")
	return nil
}

// defaultShutdownGrace is how long a stopping daemon lets requests in flight
// finish: a VM create past its disks under KVM boots within it, while a
// build, a pull or a TCG boot is interrupted and rolled back rather than
// holding `daemon stop` for minutes.
const defaultShutdownGrace = 10 * time.Second

// vmmLimits returns the per-VM cgroup limiter when cgroup v2 is delegated to
// this daemon (a cgroup of its own, memory and cpu available, writable by
// it); nil otherwise, and doctor says why there are no limits.
func vmmLimits(log *slog.Logger) vm.Limits {
	self, err := os.ReadFile(cgroup.SelfCgroupFile)
	if err != nil {
		log.Info("no per-VM cgroup limits", "reason", err.Error())
		return nil
	}
	m, err := cgroup.Detect(cgroup.DefaultMount, self)
	if err == nil {
		err = m.Setup(os.Getpid())
	}
	if err != nil {
		log.Info("no per-VM cgroup limits", "reason", err.Error())
		return nil
	}
	m.Log = log
	log.Info("per-VM cgroup limits on", "cgroup", m.Dir)
	return m
}
