// Package vm owns the VM lifecycle: the durable row in the store, the
// current handles (VMM pid, TAP), the start pipeline, stop, and reconcile.
package vm

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"github.com/banger-dev/banger/internal/agent"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/capability"
	"github.com/banger-dev/banger/internal/disk"
	"github.com/banger-dev/banger/internal/guest"
	"github.com/banger-dev/banger/internal/hostnet"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/store"
	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/vmm"
)

// VM states as stored in the row.
const (
	StateCreating = "creating"
	StateRunning  = "running"
	StateStopped  = "stopped"
	StateError    = "error"
)

// Defaults for `vm create`.
const (
	DefaultImage       = "default"
	DefaultVCPU        = 2
	DefaultMemoryMiB   = 1024
	DefaultWorkDisk    = 8 << 30
	DefaultBootTimeout = 120 * time.Second
	workLabel          = "bangerwork"
	guestUser          = "root"
)

var (
	nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$`)
	// idRE is the shape of newID's ids; no name may have it, so a name can
	// never shadow another VM's id (lookups take an id or a name).
	idRE = regexp.MustCompile(`^[0-9a-f]{12}$`)
)

// ValidName reports whether name is a valid VM name (it becomes the guest hostname).
func ValidName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("vm name %q: must be 1-32 lower-case letters, digits or '-', not starting or ending with '-': %w", name, api.ErrInvalid)
	}
	if idRE.MatchString(name) {
		return fmt.Errorf("vm name %q: 12 hex digits is the form of a VM id; pick another name: %w", name, api.ErrInvalid)
	}
	return nil
}

// Network is the host side of a VM's NIC (internal/hostnet in production).
type Network interface {
	EnsureBridge(ctx context.Context) error
	CreateTap(ctx context.Context, name string, uid int) error
	DeleteTap(ctx context.Context, name string) error
	FlushNeigh(ctx context.Context, ip netip.Addr) error
	// PoolTaps lists the pooled TAPs (hostnet.PoolTapName) that exist.
	PoolTaps(ctx context.Context) ([]string, error)
	// ReleaseTap returns a TAP to the pool (kept on the bridge, down).
	ReleaseTap(ctx context.Context, name string) error
	// OpenTap returns an open queue of the TAP for the VMM to inherit: the
	// VMM's uid may not open /dev/net/tun (0600 root on many hosts).
	OpenTap(ctx context.Context, name string) (*os.File, error)
}

// Limits puts each VM's VMM in its own cgroup with memory and CPU limits
// (internal/vmm/cgroup where cgroup v2 is delegated to the daemon; nil,
// and no limits, where it is not: doctor says so).
type Limits interface {
	Place(id string, pid, memMiB, vcpus int) error
	// Remove deletes a VM's group once its VMM is gone.
	Remove(id string) error
	// Prune removes the empty groups of VMs not in keep.
	Prune(keep map[string]bool) error
}

// Guest reaches into running VMs (internal/guest.Router in production).
type Guest interface {
	WaitReady(ctx context.Context, t guest.Target, interval time.Duration) error
	Exec(ctx context.Context, t guest.Target, req guest.ExecRequest) (int, error)
	Shutdown(ctx context.Context, t guest.Target) error
	Client(ctx context.Context, t guest.Target) (*ssh.Client, error)
	// Agent is the VM's guest-agent session (stats, sessions); an error
	// wrapping guest.ErrNoAgent when the agent does not answer.
	Agent(ctx context.Context, t guest.Target) (*agent.Client, error)
	Drop(vmID string)
}

// Pins is banger's known_hosts (internal/guest.KnownHosts in production).
type Pins interface {
	Pin(host string, key ssh.PublicKey) error
	Remove(hosts ...string) error
}

// Deps are the collaborators of the VM service, wired in cmd/bangerd.
type Deps struct {
	Log        *slog.Logger
	Layout     paths.Layout
	Store      *store.Store
	Runner     system.Runner
	Driver     vmm.Driver   // the VMM new VMs get unless they ask for another (bangerd --vmm)
	Drivers    []vmm.Driver // the others a VM may ask for (vm create --vmm); each VM keeps its row's (drivers.go)
	Net        Network
	Subnet     netip.Prefix // guest addresses; the gateway is its first host
	Gateway    netip.Addr
	Guest      Guest // the agent when it answers, else SSH (guest.Router)
	KnownHosts Pins
	ClientKey  ssh.PublicKey
	UID, GID   int      // the VMM runs as this user
	Firewall   Firewall // per-VM anti-spoofing + NAT rules (nil: none)
	Limits     Limits   // per-VM cgroup limits (nil: none)
	// AfterStart runs after every successful boot (create, start, restart),
	// best effort: it logs its own failures, the VM stays up (file sync).
	AfterStart func(ctx context.Context, v store.VM)
	// AfterStop runs in every teardown (stop, kill, delete, a VMM that
	// died) once the VM no longer counts as running (Running is false): its
	// port forwards end (internal/forward).
	AfterStop func(id string)
	// Forwards lists a VM's port forwards for View (internal/forward; nil:
	// none).
	Forwards func(id string) []api.Forward
	// AfterStep, when set, runs after each create/start step that succeeded,
	// with the step's name, and at "vmm_launch:started" (VMM running, row not
	// yet updated). It is failure injection only (cmd/bangerd sets it
	// from BANGER_FAILPOINT to kill the daemon at a chosen point); nil in
	// production.
	AfterStep func(step string)
	// Now is the clock of the idle check (nil: time.Now).
	Now func() time.Time
	// DiskClone is how root disks are made (rootdisk.go): DiskCloneAuto
	// ("" too) or DiskCloneCopy (bangerd --disk-clone copy).
	DiskClone string
	// Caps is the capability registry (`vm create --cap`; capability.go);
	// nil: no capabilities.
	Caps *capability.Registry
}

// Service is the VM lifecycle service.
type Service struct {
	d Deps

	mu      sync.Mutex
	locks   map[string]*sync.Mutex       // per-VM operation lock, by id
	handles map[string]*Handles          // what is true now, by id
	stopped map[string]bool              // VMs we are stopping on purpose (monitor must not flag them)
	poolMu  sync.Mutex                   // serialises TAP pool acquire/release (see tappool.go)
	snapMu  sync.Mutex                   // snapshot removal against its last user (snapshot.go)
	capEnv  map[string]map[string]string // `--cap-env` of a create, by id, until its first start (capability.go)

	act activities // per-VM use, for idle auto-stop (idle.go)
	// idleFloor is the shortest idle check interval and the checker's tick
	// (0: idleMinInterval); tests shorten it.
	idleFloor time.Duration
	// sysClassNet and procDir are where TAP counters and the VMM's memory
	// are read (stats.go); tests point them at fake trees.
	sysClassNet, procDir string

	// afterAllocIP runs between IP allocation and the row insert, under the
	// service lock: a test barrier (nil in production) that makes concurrent
	// creates collide every time if the lock is ever dropped.
	afterAllocIP func()
}

// New returns the service. Call Reconcile before serving requests.
func New(d Deps) *Service {
	return &Service{d: d, locks: map[string]*sync.Mutex{}, handles: map[string]*Handles{}, stopped: map[string]bool{},
		capEnv: map[string]map[string]string{}, act: activities{m: map[string]*activity{}}, sysClassNet: "/sys/class/net", procDir: "/proc"}
}

func (s *Service) lock(id string) func() {
	s.mu.Lock()
	l, ok := s.locks[id]
	if !ok {
		l = &sync.Mutex{}
		s.locks[id] = l
	}
	s.mu.Unlock()
	l.Lock()
	return l.Unlock
}

func (s *Service) handle(id string) *Handles {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.handles[id]
}

func (s *Service) setHandle(id string, h *Handles) {
	s.mu.Lock()
	defer s.mu.Unlock()
	// A launched or adopted VMM starts its idle clock afresh.
	if old := s.handles[id]; h == nil || old == nil || old.PID != h.PID {
		s.resetActivity(id, h != nil)
	}
	if h == nil {
		delete(s.handles, id)
		return
	}
	s.handles[id] = h
}

// Progress receives named stages of long operations.
type Progress func(stage, msg string)

func (p Progress) stage(name string) {
	if p != nil {
		p(name, "")
	}
}

// say returns a reporter of messages within stage (nil when p is).
func (p Progress) say(stage string) func(msg string) {
	if p == nil {
		return nil
	}
	return func(msg string) { p(stage, msg) }
}

// View renders a row plus current handles for the CLI.
func (s *Service) View(v store.VM) api.VM {
	out := api.VM{
		ID: v.ID, Name: v.Name, State: v.State, Image: v.Image, Kernel: v.Kernel, VCPU: v.VCPU,
		MemoryMiB: v.MemoryMiB, DiskBytes: v.DiskBytes, WorkDiskBytes: v.WorkDiskBytes, GuestIP: v.GuestIP,
		MAC: v.MAC, Tap: v.Tap, CloneMethod: v.CloneMethod, LastError: v.LastError, Dir: v.Dir, CreatedAt: v.CreatedAt,
		Driver: v.VMM,
	}
	pol := s.netPolicy(context.Background(), v)
	out.NAT, out.NATPrivate, out.HostAccess = pol.NAT, pol.NATPrivate, pol.HostAccess
	out.Idle = s.idleView(context.Background(), v)
	if s.d.Forwards != nil {
		out.Forwards = s.d.Forwards(v.ID)
	}
	if st, err := s.d.Store.SnapshotState(context.Background(), v.ID); err == nil {
		out.Snapshot = st.OriginSnapshot
		if sn, err := s.d.Store.GetSnapshot(context.Background(), st.OriginSnapshot); err == nil {
			out.Snapshot = sn.Name
		}
		if st.Paused && v.State == StateRunning {
			out.State = api.StatePaused
		}
	}
	out.Capabilities = s.capView(context.Background(), v)
	if h := s.handle(v.ID); h != nil {
		out.PID = h.PID
		if h.PID > 0 {
			if c, err := vmm.Confinement(h.PID); err == nil {
				out.VMM = &c
			}
		}
	}
	return out
}

// List returns every VM.
func (s *Service) List(ctx context.Context) ([]store.VM, error) { return s.d.Store.ListVMs(ctx) }

// Get returns one VM by name or id.
func (s *Service) Get(ctx context.Context, name string) (store.VM, error) {
	v, err := s.d.Store.GetVM(ctx, name)
	if err != nil {
		return store.VM{}, fmt.Errorf("vm %q: %w", name, err)
	}
	return v, nil
}

func newID() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Create makes a VM (disks, identity, row) and, unless p.NoStart, boots it
// and waits until it answers SSH. On failure nothing is left behind.
func (s *Service) Create(ctx context.Context, p api.CreateVMParams, progress Progress) (store.VM, error) {
	if err := ValidName(p.Name); err != nil {
		return store.VM{}, err
	}
	if p.NATPrivate && !p.NAT {
		return store.VM{}, fmt.Errorf("--nat-private needs --nat: %w", api.ErrInvalid)
	}
	if err := validIdleTimeout(p.IdleTimeout); err != nil {
		return store.VM{}, err
	}
	refs, err := s.capRefs(&p)
	if err != nil {
		return store.VM{}, err
	}
	if len(refs) > 0 {
		// A warm template has none of them installed.
		p.Warm = false
	}
	if p.From != "" {
		sn, err := s.d.Store.GetSnapshot(ctx, p.From)
		if err != nil {
			return store.VM{}, err
		}
		return s.createFrom(ctx, p, sn, progress)
	}
	drv, err := s.driverNamed(p.VMM)
	if err != nil {
		return store.VM{}, err
	}
	// Before anything exists: a VMM that cannot run here is refused with
	// why (its kernel is checked once it is chosen, below).
	if err := hostErr(ctx, drv); err != nil {
		return store.VM{}, fmt.Errorf("vm %q: %w", p.Name, err)
	}
	if sn, ok := s.warmFor(ctx, p, drv); ok {
		progress.stage("warm:" + sn.Name)
		v, err := s.createFrom(ctx, p, sn, progress)
		if !errors.Is(err, vmm.ErrSnapshotMismatch) {
			return v, err
		}
		// The template no longer fits this host (QEMU upgraded, another
		// accelerator): the restore left nothing; boot instead.
		s.d.Log.WarnContext(ctx, "warm template unusable; booting", "snapshot", sn.Name, "err", err)
		progress.stage("cold")
	}
	if p.VCPU == 0 {
		p.VCPU = DefaultVCPU
	}
	if p.MemoryMiB == 0 {
		p.MemoryMiB = DefaultMemoryMiB
	}
	if p.VCPU < 1 || p.VCPU > 32 {
		return store.VM{}, fmt.Errorf("vcpu %d: must be 1-32: %w", p.VCPU, api.ErrInvalid)
	}
	if p.MemoryMiB < 128 || p.MemoryMiB > 64<<10 {
		return store.VM{}, fmt.Errorf("memory %d MiB: must be 128-65536: %w", p.MemoryMiB, api.ErrInvalid)
	}
	if p.Image == "" {
		p.Image = DefaultImage
	}
	var rootSize, workSize int64 = 0, DefaultWorkDisk
	if p.Disk != "" {
		if rootSize, err = disk.ParseSize(p.Disk); err != nil {
			return store.VM{}, fmt.Errorf("--disk: %w", err)
		}
	}
	if p.WorkDisk != "" {
		if workSize, err = disk.ParseSize(p.WorkDisk); err != nil {
			return store.VM{}, fmt.Errorf("--work-disk: %w", err)
		}
	}
	if workSize < 16<<20 {
		return store.VM{}, fmt.Errorf("work disk %d bytes: at least 16M: %w", workSize, api.ErrInvalid)
	}
	img, err := s.d.Store.GetImage(ctx, p.Image)
	if err != nil {
		return store.VM{}, fmt.Errorf("image %q: %w", p.Image, err)
	}
	kname := p.Kernel
	if kname == "" {
		kname = img.KernelRef
	}
	kern, err := s.pickKernel(ctx, kname)
	if err != nil {
		return store.VM{}, err
	}
	if rootSize != 0 && rootSize < img.SizeBytes {
		return store.VM{}, fmt.Errorf("disk %d bytes is smaller than image %q (%d bytes): %w", rootSize, img.Name, img.SizeBytes, api.ErrInvalid)
	}
	if err := s.checkKernel(ctx, drv, kern.Name, kern.Path); err != nil {
		return store.VM{}, fmt.Errorf("vm %q: %w", p.Name, err)
	}

	v := store.VM{
		Name: p.Name, Image: img.Name, Kernel: kern.Name, VCPU: p.VCPU, MemoryMiB: p.MemoryMiB,
		DiskBytes: max(rootSize, img.SizeBytes), WorkDiskBytes: workSize, VMM: drv.Name(),
	}
	if err := s.insertVM(ctx, &v); err != nil {
		return store.VM{}, fmt.Errorf("vm %q: %w", p.Name, err)
	}
	id := v.ID
	unlock := s.lock(id)
	defer unlock()

	steps := []step{
		{name: "vm_dir", do: func(ctx context.Context) error { return os.MkdirAll(v.Dir, 0o700) },
			undo: func(ctx context.Context) error { return os.RemoveAll(v.Dir) }},
		{name: "identity", do: func(ctx context.Context) error { return s.makeIdentity(v) },
			undo: func(ctx context.Context) error { return s.d.KnownHosts.Remove(v.GuestIP, v.Name+"."+hostnet.DNSZone) }},
		{name: "root_disk", do: func(ctx context.Context) error { return s.makeRootDisk(ctx, &v, img) }},
		{name: "work_disk", do: func(ctx context.Context) error {
			return disk.CreateExt4(ctx, s.d.Runner, s.workPath(v), v.WorkDiskBytes, workLabel, "")
		}},
		{name: "record", do: func(ctx context.Context) error {
			v.State = StateStopped
			if err := s.d.Store.UpdateVM(ctx, &v); err != nil {
				return err
			}
			if err := s.recordCaps(ctx, v, refs, p.CapEnv); err != nil {
				return err
			}
			return s.recordOptions(ctx, v, p)
		}},
	}
	if err := runSteps(ctx, s.d.Log, s.hookSteps(steps), progress.stage); err != nil {
		return store.VM{}, s.undoRow(ctx, id, fmt.Errorf("create vm %q: %w", p.Name, err))
	}
	if p.NoStart {
		return v, nil
	}
	timeout := s.defaultBootTimeout(v)
	if p.BootTimeout > 0 {
		timeout = time.Duration(p.BootTimeout) * time.Second
	}
	if err := s.start(ctx, &v, timeout, progress); err != nil {
		if ctx.Err() != nil && rolledBack(err) {
			// Interrupted (the daemon is shutting down: the work runs detached
			// from the client) and the start undone: nothing half-created is
			// kept, so the same create can simply be run again.
			err = errors.Join(err, errors.Join(undoSteps(ctx, s.d.Log, steps)...))
			return store.VM{}, s.undoRow(ctx, id, fmt.Errorf("create vm %q: rolled back: %w", p.Name, err))
		}
		return v, fmt.Errorf("create vm %q: %w", p.Name, err)
	}
	return v, nil
}

// insertVM allocates v's id, directory, IP and MAC and inserts its row
// (creating). The IP is allocated and the row inserted under the service
// lock so two concurrent creates never get the same address.
func (s *Service) insertVM(ctx context.Context, v *store.VM) error {
	id := newID()
	// Rows from before names were kept apart from ids may use one as a name.
	for range 8 {
		if _, err := s.d.Store.GetVM(ctx, id); !errors.Is(err, api.ErrNotFound) {
			id = newID()
		}
	}
	v.ID, v.State, v.Dir = id, StateCreating, s.d.Layout.VM(id) // Tap: acquired from the pool at each start
	s.mu.Lock()
	defer s.mu.Unlock()
	ip, err := s.allocIP(ctx)
	if err != nil {
		return err
	}
	if s.afterAllocIP != nil {
		s.afterAllocIP()
	}
	v.GuestIP = ip.String()
	v.MAC = hostnet.MACForIP(ip).String()
	return s.d.Store.CreateVM(ctx, v)
}

// undoRow deletes the row of a create that failed, joining its own error.
func (s *Service) undoRow(ctx context.Context, id string, err error) error {
	uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), undoTimeout)
	defer cancel()
	s.mu.Lock()
	delete(s.capEnv, id)
	s.mu.Unlock()
	if derr := s.d.Store.DeleteVM(uctx, id); derr != nil {
		return errors.Join(err, fmt.Errorf("undo record: %w", derr))
	}
	return err
}

// recordOptions stores the create options that live outside the VM row.
func (s *Service) recordOptions(ctx context.Context, v store.VM, p api.CreateVMParams) error {
	if pol := (store.NetPolicy{NAT: p.NAT, NATPrivate: p.NATPrivate, HostAccess: p.HostAccess}); pol != (store.NetPolicy{}) {
		if err := s.d.Store.SetNetPolicy(ctx, v.ID, pol); err != nil {
			return err
		}
	}
	if p.IdleTimeout > 0 {
		return s.d.Store.SetIdleTimeout(ctx, v.ID, time.Duration(p.IdleTimeout)*time.Second)
	}
	return nil
}

// machineID is the VM's /etc/machine-id, derived from its id.
func machineID(id string) string {
	mid := sha256.Sum256([]byte("banger-machine-id:" + id))
	return hex.EncodeToString(mid[:16])
}

func (s *Service) pickKernel(ctx context.Context, name string) (store.Kernel, error) {
	if name != "" {
		k, err := s.d.Store.GetKernel(ctx, name)
		if err != nil {
			return store.Kernel{}, fmt.Errorf("kernel %q: %w", name, err)
		}
		return k, nil
	}
	ks, err := s.d.Store.ListKernels(ctx)
	if err != nil {
		return store.Kernel{}, err
	}
	if len(ks) == 0 {
		return store.Kernel{}, fmt.Errorf("no kernel imported (run `banger kernel import --debian`): %w", api.ErrNotFound)
	}
	return ks[len(ks)-1], nil
}

func (s *Service) allocIP(ctx context.Context) (netip.Addr, error) {
	used, err := s.d.Store.UsedIPs(ctx)
	if err != nil {
		return netip.Addr{}, err
	}
	var addrs []netip.Addr
	for _, u := range used {
		if a, err := netip.ParseAddr(u); err == nil {
			addrs = append(addrs, a)
		}
	}
	return hostnet.AllocIP(s.d.Subnet, addrs)
}

func (s *Service) rootPath(v store.VM) string    { return filepath.Join(v.Dir, paths.VMRootFile) }
func (s *Service) workPath(v store.VM) string    { return filepath.Join(v.Dir, paths.VMWorkFile) }
func (s *Service) seedPath(v store.VM) string    { return filepath.Join(v.Dir, paths.VMSeedFile) }
func (s *Service) hostKeyPath(v store.VM) string { return filepath.Join(v.Dir, paths.VMHostKeyFile) }
func (s *Service) consolePath(v store.VM) string { return filepath.Join(v.Dir, paths.VMConsoleLog) }

// makeIdentity generates the VM's own SSH host key and pins it before the
// first dial, so there is no trust-on-first-use window.
func (s *Service) makeIdentity(v store.VM) error {
	priv, pub, err := guest.NewHostKey()
	if err != nil {
		return err
	}
	if err := os.WriteFile(s.hostKeyPath(v), priv, 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(s.hostKeyPath(v)+".pub", ssh.MarshalAuthorizedKey(pub), 0o644); err != nil {
		return err
	}
	// Pinned under the IP (banger's own dials) and <name>.vm (`ssh root@<name>.vm`
	// with the generated ssh config), so neither is trust-on-first-use.
	return s.d.KnownHosts.Pin(v.GuestIP+","+v.Name+"."+hostnet.DNSZone, pub)
}

// writeSeed builds the per-VM seed disk the guest's /init unpacks onto the root.
func (s *Service) writeSeed(v store.VM) error {
	priv, err := os.ReadFile(s.hostKeyPath(v))
	if err != nil {
		return fmt.Errorf("read host key: %w", err)
	}
	pub, err := os.ReadFile(s.hostKeyPath(v) + ".pub")
	if err != nil {
		return fmt.Errorf("read host key: %w", err)
	}
	files := []disk.SeedFile{
		{Path: "etc/hostname", Mode: 0o644, Data: []byte(v.Name + "\n")},
		{Path: "etc/hosts", Mode: 0o644, Data: []byte(fmt.Sprintf("127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\tlocalhost ip6-localhost ip6-loopback\n", v.Name))},
		{Path: "etc/machine-id", Mode: 0o444, Data: []byte(machineID(v.ID) + "\n")},
		{Path: "etc/ssh/ssh_host_ed25519_key", Mode: 0o600, Data: priv},
		{Path: "etc/ssh/ssh_host_ed25519_key.pub", Mode: 0o644, Data: pub},
		{Path: "etc/ssh/authorized_keys.d/root", Mode: 0o644, Data: guest.AuthorizedKey(s.d.ClientKey)},
		// banger's DNS server on the bridge gateway answers <name>.vm.
		{Path: "etc/resolv.conf", Mode: 0o644, Data: []byte(fmt.Sprintf("nameserver %s\nsearch %s\n", s.d.Gateway, hostnet.DNSZone))},
	}
	return disk.WriteSeed(s.seedPath(v), files)
}

func (s *Service) spec(v store.VM) (vmm.Spec, error) {
	k, err := s.d.Store.GetKernel(context.Background(), v.Kernel)
	if err != nil {
		return vmm.Spec{}, fmt.Errorf("kernel %q: %w", v.Kernel, err)
	}
	ip, err := netip.ParseAddr(v.GuestIP)
	if err != nil {
		return vmm.Spec{}, fmt.Errorf("guest ip %q: %w", v.GuestIP, err)
	}
	mask := netipMask(s.d.Subnet)
	cmdline := fmt.Sprintf("console=ttyS0 rw net.ifnames=0 panic=-1 cryptomgr.notests quiet ip=%s::%s:%s:%s:eth0:off",
		ip, s.d.Gateway, mask, v.Name)
	cmdline += s.firstBootArg(v)
	workFormat, err := s.workFormat(v)
	if err != nil {
		return vmm.Spec{}, err
	}
	return vmm.Spec{
		ID: v.ID, Dir: v.Dir, VCPU: v.VCPU, MemoryMiB: v.MemoryMiB,
		Kernel: k.Path, Initrd: k.Initrd, Cmdline: cmdline,
		Disks: []vmm.Disk{{Path: s.rootPath(v), Format: v.RootFormat}, {Path: s.workPath(v), Format: workFormat},
			{Path: s.seedPath(v), ReadOnly: true}},
		Tap: v.Tap, MAC: v.MAC, UID: s.d.UID, GID: s.d.GID,
	}, nil
}

func netipMask(p netip.Prefix) string {
	bits := p.Bits()
	var m [4]byte
	for i := 0; i < bits; i++ {
		m[i/8] |= 0x80 >> (i % 8)
	}
	return netip.AddrFrom4(m).String()
}

func (s *Service) target(v store.VM) guest.Target {
	dir := s.d.Layout.VM(v.ID)
	return guest.Target{VMID: v.ID, Addr: netip.AddrPortFrom(netip.MustParseAddr(v.GuestIP), 22).String(), User: guestUser,
		Agent: func(ctx context.Context) (net.Conn, error) { return s.driverFor(v).DialAgent(ctx, dir) }}
}
