package api

import "time"

// Method names. The CLI and the daemon share them.
const (
	MethodVMCreate     = "vm.create"
	MethodVMList       = "vm.list"
	MethodVMShow       = "vm.show"
	MethodVMStart      = "vm.start"
	MethodVMStop       = "vm.stop"
	MethodVMRestart    = "vm.restart"
	MethodVMKill       = "vm.kill"
	MethodVMDelete     = "vm.delete"
	MethodVMExec       = "vm.exec"
	MethodVMLogs       = "vm.logs"
	MethodVMSSHInfo    = "vm.ssh_info"
	MethodKernelImport = "kernel.import"
	MethodKernelList   = "kernel.list"
	MethodKernelRm     = "kernel.rm"
	MethodImageBuild   = "image.build"
	MethodImageList    = "image.list"
	MethodImageRm      = "image.rm"
	MethodDaemonStatus = "daemon.status"
	MethodDaemonStop   = "daemon.stop"
	MethodDoctor       = "doctor"
)

// VM is the CLI-facing view of a VM.
type VM struct {
	ID            string    `json:"id"`
	Name          string    `json:"name"`
	State         string    `json:"state"`
	Image         string    `json:"image"`
	Kernel        string    `json:"kernel"`
	VCPU          int       `json:"vcpu"`
	MemoryMiB     int       `json:"memory_mib"`
	DiskBytes     int64     `json:"disk_bytes"`
	WorkDiskBytes int64     `json:"work_disk_bytes"`
	GuestIP       string    `json:"guest_ip"`
	MAC           string    `json:"mac"`
	Tap           string    `json:"tap"`
	PID           int       `json:"pid,omitempty"`
	Driver        string    `json:"driver"`        // the VMM that runs it: "qemu" or "firecracker" (vm create --vmm)
	VMM           *VMMProc  `json:"vmm,omitempty"` // the running VMM's confinement, from /proc
	NAT           bool      `json:"nat"`
	NATPrivate    bool      `json:"nat_private"` // with nat: private ranges beyond the host too
	HostAccess    bool      `json:"host_access"` // host services beyond the gateway's DNS
	CloneMethod   string    `json:"clone_method"`
	Snapshot      string    `json:"snapshot,omitempty"` // restored from this snapshot
	LastError     string    `json:"last_error,omitempty"`
	Dir           string    `json:"dir"`
	CreatedAt     time.Time `json:"created_at"`
	Idle
	// Operation is the create/start/restart in progress, if any.
	Operation *Operation `json:"operation,omitempty"`
	// Forwards are the VM's port forwards (`vm forward`), oldest first.
	Forwards []Forward `json:"forwards,omitempty"`
	// Capabilities are those given at create (`--cap`), in that order.
	Capabilities []VMCapability `json:"capabilities,omitempty"`
}

// VMMProc is how a running VMM process is confined (/proc/<pid>/status).
type VMMProc struct {
	UID        int    `json:"uid"`     // effective uid
	Seccomp    string `json:"seccomp"` // "disabled", "strict" or "filter"
	NoNewPrivs bool   `json:"no_new_privs"`
}

// NameParams addresses one VM/kernel/image by name (or id for VMs).
type NameParams struct {
	Name string `json:"name"`
}

type CreateVMParams struct {
	Name        string `json:"name"`
	Image       string `json:"image,omitempty"`
	Kernel      string `json:"kernel,omitempty"`
	VCPU        int    `json:"vcpu,omitempty"`
	MemoryMiB   int    `json:"memory_mib,omitempty"`
	Disk        string `json:"disk,omitempty"`
	WorkDisk    string `json:"work_disk,omitempty"`
	NoStart     bool   `json:"no_start,omitempty"`
	NAT         bool   `json:"nat,omitempty"`         // masquerade the guest's traffic beyond the bridge
	NATPrivate  bool   `json:"nat_private,omitempty"` // with NAT: also private/special ranges (never link-local)
	HostAccess  bool   `json:"host_access,omitempty"` // reach services on any host address, not just DNS
	BootTimeout int    `json:"boot_timeout_s,omitempty"`
	IdleTimeout int    `json:"idle_timeout_s,omitempty"` // stop the VM after this many idle seconds; 0: never
	// From restores the VM from this snapshot instead of booting it.
	From string `json:"from,omitempty"`
	// Warm restores from the image's warm template (`image warm`) when one
	// exists and the other parameters allow it; else the VM boots.
	Warm bool `json:"warm,omitempty"`
	// Detach: answer with OpStarted at once; the create runs on in the
	// daemon and `vm.wait` follows it.
	Detach bool `json:"detach,omitempty"`
	// VMM runs the VM under this driver ("qemu", "firecracker"); empty:
	// the daemon's default (bangerd --vmm). A restore runs under the
	// snapshot's.
	VMM string `json:"vmm,omitempty"`
	// Caps are capabilities (NAME or NAME@VERSION, `banger cap list`),
	// prepared, installed and checked ready at every start, in this order.
	Caps []string `json:"caps,omitempty"`
	// CapEnv is set in the environment of the capabilities' guest services
	// (model provider credentials): written into the guest at the first
	// start, never kept on the host.
	CapEnv map[string]string `json:"cap_env,omitempty"`
}

type DeleteVMParams struct {
	Name  string `json:"name"`
	Force bool   `json:"force,omitempty"` // delete a running VM (kills it)
}

type ExecParams struct {
	Name    string            `json:"name"`
	Argv    []string          `json:"argv,omitempty"`
	Command string            `json:"command,omitempty"`
	TTY     bool              `json:"tty,omitempty"`
	Term    string            `json:"term,omitempty"`
	Cols    int               `json:"cols,omitempty"`
	Rows    int               `json:"rows,omitempty"`
	Env     map[string]string `json:"env,omitempty"`
	Dir     string            `json:"dir,omitempty"`
	Stdin   bool              `json:"stdin,omitempty"` // the client will stream stdin frames
	Via     string            `json:"via,omitempty"`   // "", "agent" or "ssh"
}

type ExecResult struct {
	ExitCode int `json:"exit_code"`
}

type LogsParams struct {
	Name  string `json:"name"`
	Bytes int64  `json:"bytes,omitempty"` // tail size; 0 = all (capped)
}

type LogsResult struct {
	Path string `json:"path"`
	Data []byte `json:"data"`
}

type SSHInfo struct {
	Name       string `json:"name"`
	Host       string `json:"host"`
	Port       int    `json:"port"`
	User       string `json:"user"`
	KeyPath    string `json:"key_path"`
	KnownHosts string `json:"known_hosts"`
}

type KernelImportParams struct {
	Name   string `json:"name,omitempty"`
	Debian bool   `json:"debian,omitempty"`
	Deb    string `json:"deb,omitempty"`
	// A kernel given as files: a bzImage/vmlinux, and either an initrd used
	// as is or a module directory (lib/modules/<version>) for banger's initramfs.
	Vmlinux string `json:"vmlinux,omitempty"`
	Initrd  string `json:"initrd,omitempty"`
	Modules string `json:"modules,omitempty"`
	// Config is the kernel's build configuration (.config), kept with it so
	// doctor and vm create can tell what it has built in.
	Config string `json:"config,omitempty"`
}

type Kernel struct {
	Name      string    `json:"name"`
	Version   string    `json:"version"`
	Source    string    `json:"source"`
	Path      string    `json:"path"`
	Initrd    string    `json:"initrd"`
	SHA256    string    `json:"sha256"`
	CreatedAt time.Time `json:"created_at"`
}

type ImageBuildParams struct {
	Name    string `json:"name"`
	Kernel  string `json:"kernel,omitempty"`
	Mirror  string `json:"mirror,omitempty"`
	FromDir string `json:"from_dir,omitempty"` // build from an existing rootfs tree instead of mmdebstrap
}

type Image struct {
	Name      string    `json:"name"`
	Source    string    `json:"source"`
	Path      string    `json:"path"`
	KernelRef string    `json:"kernel_ref,omitempty"`
	SizeBytes int64     `json:"size_bytes"`
	CreatedAt time.Time `json:"created_at"`
	// Set for images pulled from an OCI registry.
	Digest string `json:"digest,omitempty"`
	// FirstBoot: the image lacks systemd or sshd; its VMs install them at first boot.
	FirstBoot bool `json:"first_boot,omitempty"`
}

type DaemonStatus struct {
	PID       int       `json:"pid"`
	UID       int       `json:"uid"`
	StateDir  string    `json:"state_dir"`
	Socket    string    `json:"socket"`
	Version   string    `json:"version"`
	StartedAt time.Time `json:"started_at"`
	VMs       int       `json:"vms"`
	Running   int       `json:"running"`
	Accel     string    `json:"accel"`
	TapPool   []PoolTap `json:"tap_pool,omitempty"` // pooled TAPs that exist now
}

// DaemonStopResult answers daemon.stop: the pid of the daemon that is now
// shutting down (the CLI waits for it to exit).
type DaemonStopResult struct {
	PID int `json:"pid"`
}

// PoolTap is one pooled TAP and the VM whose row holds it ("" when idle).
type PoolTap struct {
	Name string `json:"name"`
	VM   string `json:"vm,omitempty"`
}

type DoctorCheck struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail"`
	// Optional: a failure does not stop banger's default use of this host
	// (a VMM it is not told to use by default); shown, not counted.
	Optional bool `json:"optional,omitempty"`
}

// Mark is how a check is shown: "ok", "FAIL", or "no" for an optional one
// that failed (it does not count against the host).
func (c DoctorCheck) Mark() string {
	switch {
	case c.OK:
		return "ok"
	case c.Optional:
		return "no"
	}
	return "FAIL"
}

type DoctorResult struct {
	Checks []DoctorCheck `json:"checks"`
	Accel  string        `json:"accel"`
	// VMM is the daemon's default VMM (bangerd --vmm).
	VMM string `json:"vmm,omitempty"`
	// Firecracker is whether `vm create --vmm firecracker` can work here.
	Firecracker *DoctorVMM `json:"firecracker,omitempty"`
}

// DoctorVMM is whether a VMM other than QEMU can run VMs on this host.
type DoctorVMM struct {
	// Available: the VMM can run a VM here with at least one imported kernel.
	Available bool   `json:"available"`
	Binary    string `json:"binary,omitempty"`  // its path; "" when missing
	Version   string `json:"version,omitempty"` // e.g. "1.16.1"
	// Reason says why it is not available (every problem, "; "-joined).
	Reason string `json:"reason,omitempty"`
	// Problems are what stops it on this host, kernels aside.
	Problems []string `json:"problems,omitempty"`
	// Kernels is each imported kernel's fitness for it.
	Kernels []DoctorKernel `json:"kernels,omitempty"`
}

// DoctorKernel is one imported kernel checked for a VMM: OK when it can
// boot it, Known false when its build configuration is not known.
type DoctorKernel struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Known  bool   `json:"known"`
	Detail string `json:"detail"`
}
