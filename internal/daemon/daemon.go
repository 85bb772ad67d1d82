// Package daemon maps RPC methods onto the services. It holds no domain
// logic: decode, call, render.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/capability"
	"github.com/banger-dev/banger/internal/forward"
	"github.com/banger-dev/banger/internal/guest"
	"github.com/banger-dev/banger/internal/image"
	"github.com/banger-dev/banger/internal/kernel"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/rpc"
	"github.com/banger-dev/banger/internal/store"
	"github.com/banger-dev/banger/internal/vm"
	"github.com/banger-dev/banger/internal/vmop"
	"github.com/banger-dev/banger/internal/workspace"
)

// Version is stamped by the build.
var Version = "dev"

// Deps are the services the daemon dispatches to.
type Deps struct {
	Log      *slog.Logger
	Layout   paths.Layout
	Store    *store.Store
	VMs      *vm.Service
	Kernels  *kernel.Importer
	Images   *image.Builder
	Doctor   func(ctx context.Context) api.DoctorResult
	Accel    func() string
	Shutdown func() // asks the daemon to exit
	// Workspaces serves workspace.* and vm.sync (see workspace.go); optional.
	Workspaces *workspace.Service
	// Ops holds the create/start/restart in progress per VM (vmop.go); nil:
	// a tracker of the daemon's own.
	Ops *vmop.Tracker
	// Forwards serves vm.forward and vm.forward_stop (forward.go); nil: the
	// methods are refused.
	Forwards *forward.Manager
	// Caps is the capability registry (cap.list; capability.go); nil: none.
	Caps *capability.Registry
}

// Daemon is the RPC front.
type Daemon struct {
	d       Deps
	ops     *vmop.Tracker
	started time.Time
}

// Register installs every method on srv.
func Register(srv *rpc.Server, d Deps) *Daemon {
	dm := &Daemon{d: d, ops: d.Ops, started: time.Now()}
	if dm.ops == nil {
		dm.ops = vmop.New(time.Now)
	}
	srv.Handle(api.MethodVMCreate, dm.vmCreate)
	srv.Handle(api.MethodVMList, dm.vmList)
	srv.Handle(api.MethodVMShow, dm.vmShow)
	srv.Handle(api.MethodVMStart, dm.vmStart)
	srv.Handle(api.MethodVMStop, dm.vmStop)
	srv.Handle(api.MethodVMKill, dm.vmKill)
	srv.Handle(api.MethodVMRestart, dm.vmRestart)
	srv.Handle(api.MethodVMDelete, dm.vmDelete)
	srv.Handle(api.MethodVMExec, dm.vmExec)
	srv.Handle(api.MethodVMLogs, dm.vmLogs)
	srv.Handle(api.MethodVMSSHInfo, dm.vmSSHInfo)
	srv.Handle(api.MethodVMWait, dm.vmWait)
	srv.Handle(api.MethodKernelImport, dm.kernelImport)
	srv.Handle(api.MethodKernelList, dm.kernelList)
	srv.Handle(api.MethodKernelRm, dm.kernelRm)
	srv.Handle(api.MethodImageBuild, dm.imageBuild)
	srv.Handle(api.MethodImageList, dm.imageList)
	srv.Handle(api.MethodImageRm, dm.imageRm)
	srv.Handle(api.MethodImagePull, dm.imagePull)
	srv.Handle(api.MethodKernelPull, dm.kernelPull)
	srv.Handle(api.MethodDaemonStatus, dm.status)
	srv.Handle(api.MethodDaemonStop, dm.stop)
	srv.Handle(api.MethodDoctor, dm.doctor)
	dm.registerWorkspace(srv)
	dm.registerNet(srv)
	dm.registerSession(srv)
	dm.registerStats(srv)
	dm.registerSnapshot(srv)
	srv.Handle(api.MethodCapList, dm.capList)
	dm.registerForward(srv)
	return dm
}

// detached runs long work on a context that outlives the request: a client
// that hangs up (Ctrl-C) stops watching, the work still completes or rolls
// back cleanly. Progress is forwarded while the client listens. When the
// daemon shuts down, the server interrupts the work once its grace period
// is over; the handler then waits for the work's rollback and returns its
// error, which the server reports as interrupted.
func detached[T any](ctx context.Context, c *rpc.Call, work func(ctx context.Context, progress vm.Progress) (T, error)) (T, error) {
	type result struct {
		v   T
		err error
	}
	done := make(chan result, 1)
	wctx, release := c.Detach()
	go func() {
		defer release()
		v, err := work(wctx, func(stage, msg string) { c.Progress(stage, msg) })
		done <- result{v, err}
	}()
	select {
	case r := <-done:
		return r.v, r.err
	case <-ctx.Done():
		if errors.Is(context.Cause(ctx), api.ErrShuttingDown) {
			r := <-done // interrupted too: report how it ended
			return r.v, r.err
		}
		var zero T
		return zero, fmt.Errorf("client went away; the operation continues in the daemon: %w", ctx.Err())
	}
}

func (dm *Daemon) vmCreate(ctx context.Context, c *rpc.Call) (any, error) {
	var p api.CreateVMParams
	if err := c.Decode(&p); err != nil {
		return nil, err
	}
	// An existing VM's latest operation is not replaced by a create that
	// can only fail.
	if _, err := dm.d.VMs.Get(ctx, p.Name); err == nil {
		return nil, fmt.Errorf("vm %q: %w", p.Name, api.ErrExists)
	}
	return dm.vmOp(ctx, c, vmop.KindCreate, p.Name, p.Detach, func(ctx context.Context, pr vm.Progress) (store.VM, error) {
		return dm.d.VMs.Create(ctx, p, pr)
	})
}

func (dm *Daemon) vmList(ctx context.Context, c *rpc.Call) (any, error) {
	vms, err := dm.d.VMs.List(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]api.VM, 0, len(vms))
	for _, v := range vms {
		out = append(out, dm.viewVM(v))
	}
	return out, nil
}

func (dm *Daemon) name(c *rpc.Call) (string, error) {
	var p api.NameParams
	if err := c.Decode(&p); err != nil {
		return "", err
	}
	if p.Name == "" {
		return "", fmt.Errorf("name is required: %w", api.ErrInvalid)
	}
	return p.Name, nil
}

func (dm *Daemon) vmShow(ctx context.Context, c *rpc.Call) (any, error) {
	n, err := dm.name(c)
	if err != nil {
		return nil, err
	}
	v, err := dm.d.VMs.Get(ctx, n)
	if err != nil {
		return nil, err
	}
	return dm.viewVM(v), nil
}

func (dm *Daemon) vmStart(ctx context.Context, c *rpc.Call) (any, error) {
	return dm.vmStartOp(ctx, c, vmop.KindStart, dm.d.VMs.Start)
}

func (dm *Daemon) vmRestart(ctx context.Context, c *rpc.Call) (any, error) {
	return dm.vmStartOp(ctx, c, vmop.KindRestart, dm.d.VMs.Restart)
}

// vmStartOp serves vm.start and vm.restart as operations on the VM's name.
func (dm *Daemon) vmStartOp(ctx context.Context, c *rpc.Call, kind string,
	start func(ctx context.Context, name string, pr vm.Progress) (store.VM, error)) (any, error) {
	var p api.StartVMParams
	if err := c.Decode(&p); err != nil {
		return nil, err
	}
	if p.Name == "" {
		return nil, fmt.Errorf("name is required: %w", api.ErrInvalid)
	}
	v, err := dm.d.VMs.Get(ctx, p.Name)
	if err != nil {
		return nil, err
	}
	return dm.vmOp(ctx, c, kind, v.Name, p.Detach, func(ctx context.Context, pr vm.Progress) (store.VM, error) {
		return start(ctx, v.ID, pr)
	})
}

func (dm *Daemon) vmStop(ctx context.Context, c *rpc.Call) (any, error) {
	n, err := dm.name(c)
	if err != nil {
		return nil, err
	}
	v, err := dm.d.VMs.Stop(context.WithoutCancel(ctx), n, false)
	if err != nil {
		return nil, err
	}
	return dm.d.VMs.View(v), nil
}

func (dm *Daemon) vmKill(ctx context.Context, c *rpc.Call) (any, error) {
	n, err := dm.name(c)
	if err != nil {
		return nil, err
	}
	v, err := dm.d.VMs.Kill(context.WithoutCancel(ctx), n)
	if err != nil {
		return nil, err
	}
	return dm.d.VMs.View(v), nil
}

func (dm *Daemon) vmDelete(ctx context.Context, c *rpc.Call) (any, error) {
	var p api.DeleteVMParams
	if err := c.Decode(&p); err != nil {
		return nil, err
	}
	v, err := dm.d.VMs.Get(ctx, p.Name)
	if err != nil {
		return nil, err
	}
	if err := dm.d.VMs.Delete(context.WithoutCancel(ctx), v.ID, p.Force); err != nil {
		return nil, err
	}
	dm.ops.Forget(v.Name) // its last outcome is no VM's any more
	return nil, nil
}

func (dm *Daemon) vmLogs(ctx context.Context, c *rpc.Call) (any, error) {
	var p api.LogsParams
	if err := c.Decode(&p); err != nil {
		return nil, err
	}
	path, data, err := dm.d.VMs.Logs(ctx, p.Name, p.Bytes)
	if err != nil {
		return nil, err
	}
	return api.LogsResult{Path: path, Data: data}, nil
}

func (dm *Daemon) vmSSHInfo(ctx context.Context, c *rpc.Call) (any, error) {
	n, err := dm.name(c)
	if err != nil {
		return nil, err
	}
	v, _, err := dm.d.VMs.SSHTarget(ctx, n)
	if err != nil {
		return nil, err
	}
	return api.SSHInfo{Name: v.Name, Host: v.GuestIP, Port: 22, User: "root",
		KeyPath: dm.d.Layout.ClientKey(), KnownHosts: dm.d.Layout.KnownHosts()}, nil
}

func (dm *Daemon) vmExec(ctx context.Context, c *rpc.Call) (any, error) {
	var p api.ExecParams
	if err := c.Decode(&p); err != nil {
		return nil, err
	}
	if p.Name == "" {
		return nil, fmt.Errorf("name is required: %w", api.ErrInvalid)
	}
	switch p.Via {
	case guest.ViaAny, guest.ViaAgent, guest.ViaSSH:
	default:
		return nil, fmt.Errorf("via %q: want agent or ssh: %w", p.Via, api.ErrInvalid)
	}
	req := guest.ExecRequest{Argv: p.Argv, Command: p.Command, Env: p.Env, Dir: p.Dir,
		Stdout: c.Stdout(), Stderr: c.Stderr(), Via: p.Via}
	if p.TTY {
		req.TTY = &guest.TTY{Term: p.Term, Cols: p.Cols, Rows: p.Rows}
	}
	resize := make(chan guest.Winsize, 4)
	signals := make(chan string, 4)
	req.Resize, req.Signals = resize, signals
	var stdinW *io.PipeWriter
	if p.Stdin {
		var r *io.PipeReader
		r, stdinW = io.Pipe()
		req.Stdin = r
		// A pump blocked writing stdin nobody reads any more returns.
		defer r.CloseWithError(io.ErrClosedPipe)
	}
	// Pump client frames: stdin bytes, window changes, signals.
	go func() {
		defer func() {
			if stdinW != nil {
				_ = stdinW.Close()
			}
		}()
		for in := range c.Input() {
			switch {
			case in.Resize != nil:
				select {
				case resize <- guest.Winsize{Cols: in.Resize.Cols, Rows: in.Resize.Rows}:
				default:
				}
			case in.Signal != "":
				select {
				case signals <- in.Signal:
				default:
				}
			case len(in.Stdin) > 0 && stdinW != nil:
				if _, err := stdinW.Write(in.Stdin); err != nil {
					return
				}
			}
			if in.EOF && stdinW != nil {
				_ = stdinW.Close()
				stdinW = nil
			}
		}
	}()
	code, err := dm.d.VMs.Exec(ctx, p.Name, req)
	if err != nil {
		return nil, err
	}
	return api.ExecResult{ExitCode: code}, nil
}

func (dm *Daemon) kernelImport(ctx context.Context, c *rpc.Call) (any, error) {
	var p api.KernelImportParams
	if err := c.Decode(&p); err != nil {
		return nil, err
	}
	if p.Vmlinux != "" {
		return dm.kernelImportFiles(ctx, c, p)
	}
	if p.Config != "" {
		return nil, fmt.Errorf("--config goes with --vmlinux (a kernel package carries its own): %w", api.ErrInvalid)
	}
	if p.Debian == (p.Deb != "") {
		return nil, fmt.Errorf("give exactly one of --debian or --deb FILE: %w", api.ErrInvalid)
	}
	return detached(ctx, c, func(ctx context.Context, pr vm.Progress) (api.Kernel, error) {
		deb := p.Deb
		if p.Debian {
			pr("download", "apt-get download linux-image-cloud-amd64")
			dir, err := os.MkdirTemp(dm.d.Layout.Tmp(), "deb-")
			if err != nil {
				return api.Kernel{}, err
			}
			defer os.RemoveAll(dir)
			if deb, err = dm.d.Kernels.DownloadDebian(ctx, dir); err != nil {
				return api.Kernel{}, err
			}
		}
		name := p.Name
		if name == "" {
			name = "debian-cloud"
		}
		if _, err := dm.d.Store.GetKernel(ctx, name); err == nil {
			return api.Kernel{}, fmt.Errorf("kernel %q: %w", name, api.ErrExists)
		}
		info, err := dm.d.Kernels.ImportDeb(ctx, name, deb, func(stage string) { pr(stage, "") })
		if err != nil {
			return api.Kernel{}, err
		}
		// The uncompressed vmlinux boots through PVH (~0.4 s faster under TCG,
		// and the only form Firecracker takes); the bzImage is the fallback.
		path := info.Kernel
		if info.Vmlinux != "" {
			path = info.Vmlinux
		}
		k := store.Kernel{Name: info.Name, Version: info.Version, Source: info.Source, Path: path, Initrd: info.Initrd, SHA256: info.SHA256}
		if err := dm.d.Store.CreateKernel(ctx, &k); err != nil {
			_ = kernel.Remove(dm.d.Layout, name)
			return api.Kernel{}, err
		}
		return kernelView(k), nil
	})
}

func kernelView(k store.Kernel) api.Kernel {
	return api.Kernel{Name: k.Name, Version: k.Version, Source: k.Source, Path: k.Path, Initrd: k.Initrd, SHA256: k.SHA256, CreatedAt: k.CreatedAt}
}

func imageView(i store.Image) api.Image {
	return api.Image{Name: i.Name, Source: i.Source, Path: i.Path, KernelRef: i.KernelRef, SizeBytes: i.SizeBytes, CreatedAt: i.CreatedAt}
}

func (dm *Daemon) kernelList(ctx context.Context, c *rpc.Call) (any, error) {
	ks, err := dm.d.Store.ListKernels(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]api.Kernel, 0, len(ks))
	for _, k := range ks {
		out = append(out, kernelView(k))
	}
	return out, nil
}

func (dm *Daemon) kernelRm(ctx context.Context, c *rpc.Call) (any, error) {
	n, err := dm.name(c)
	if err != nil {
		return nil, err
	}
	// Either half of an interrupted commit (a row without files, files
	// without a row) is removable: only when neither exists is it not found.
	_, rerr := dm.d.Store.GetKernel(ctx, n)
	if rerr != nil && !errors.Is(rerr, api.ErrNotFound) {
		return nil, fmt.Errorf("kernel %q: %w", n, rerr)
	}
	if err := kernel.ValidName(n); err != nil {
		return nil, err
	}
	_, derr := os.Lstat(dm.d.Layout.Kernel(n))
	if rerr != nil && errors.Is(derr, fs.ErrNotExist) {
		return nil, fmt.Errorf("kernel %q: %w", n, rerr)
	}
	if err := dm.inUse(ctx, func(v store.VM) bool { return v.Kernel == n }, "kernel", n); err != nil {
		return nil, err
	}
	// A restore starts the VMM with the snapshot's kernel again.
	sns, err := dm.d.Store.ListSnapshots(ctx)
	if err != nil {
		return nil, err
	}
	for _, sn := range sns {
		if sn.Kernel == n {
			return nil, fmt.Errorf("kernel %q is used by snapshot %q: %w", n, sn.Name, api.ErrBusy)
		}
	}
	if rerr == nil {
		if err := dm.d.Store.DeleteKernel(ctx, n); err != nil {
			return nil, err
		}
	}
	if err := kernel.Remove(dm.d.Layout, n); err != nil && !errors.Is(err, api.ErrNotFound) {
		return nil, err
	}
	return nil, nil
}

func (dm *Daemon) inUse(ctx context.Context, uses func(store.VM) bool, kind, name string) error {
	vms, err := dm.d.Store.ListVMs(ctx)
	if err != nil {
		return err
	}
	for _, v := range vms {
		if uses(v) {
			return fmt.Errorf("%s %q is used by vm %q: %w", kind, name, v.Name, api.ErrBusy)
		}
	}
	return nil
}

func (dm *Daemon) imageBuild(ctx context.Context, c *rpc.Call) (any, error) {
	var p api.ImageBuildParams
	if err := c.Decode(&p); err != nil {
		return nil, err
	}
	if p.Name == "" {
		return nil, fmt.Errorf("name is required: %w", api.ErrInvalid)
	}
	if p.Kernel != "" {
		if _, err := dm.d.Store.GetKernel(ctx, p.Kernel); err != nil {
			return nil, fmt.Errorf("kernel %q: %w", p.Kernel, err)
		}
	}
	if img, err := dm.d.Store.GetImage(ctx, p.Name); err == nil {
		// An image is never rebuilt in place: its file may back VMs' root
		// disks (qcow2 overlays). Say who holds it, since `image rm` would
		// refuse too.
		if uerr := dm.d.Store.CheckImageUnused(ctx, img.Name, img.Path); uerr != nil {
			return nil, fmt.Errorf("image %q: %w, and it cannot be removed or replaced: %v", p.Name, api.ErrExists, uerr)
		}
		return nil, fmt.Errorf("image %q: %w", p.Name, api.ErrExists)
	}
	return detached(ctx, c, func(ctx context.Context, pr vm.Progress) (api.Image, error) {
		b := *dm.d.Images
		if p.Mirror != "" {
			b.Mirror = p.Mirror
		}
		stage := func(s string) { pr(s, "") }
		var info image.Info
		var err error
		if p.FromDir != "" {
			info, err = b.BuildFromDir(ctx, p.Name, p.FromDir, stage)
		} else {
			info, err = b.BuildDefault(ctx, p.Name, stage)
		}
		if err != nil {
			return api.Image{}, err
		}
		img := store.Image{Name: info.Name, Source: info.Source, Path: dm.d.Layout.Image(info.Name) + "/" + paths.RootfsFile,
			KernelRef: p.Kernel, SizeBytes: info.Size}
		if err := dm.d.Store.CreateImage(ctx, &img); err != nil {
			_ = image.Remove(dm.d.Layout, p.Name)
			return api.Image{}, err
		}
		return imageView(img), nil
	})
}

func (dm *Daemon) imageList(ctx context.Context, c *rpc.Call) (any, error) {
	is, err := dm.d.Store.ListImages(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]api.Image, 0, len(is))
	for _, i := range is {
		out = append(out, dm.withImageMeta(imageView(i)))
	}
	return out, nil
}

func (dm *Daemon) imageRm(ctx context.Context, c *rpc.Call) (any, error) {
	n, err := dm.name(c)
	if err != nil {
		return nil, err
	}
	// Either half of an interrupted commit (a row without files, files
	// without a row) is removable: only when neither exists is it not found.
	_, rerr := dm.d.Store.GetImage(ctx, n)
	if rerr != nil && !errors.Is(rerr, api.ErrNotFound) {
		return nil, fmt.Errorf("image %q: %w", n, rerr)
	}
	if err := image.ValidateName(n); err != nil {
		return nil, err
	}
	_, derr := os.Lstat(dm.d.Layout.Image(n))
	if rerr != nil && errors.Is(derr, fs.ErrNotExist) {
		return nil, fmt.Errorf("image %q: %w", n, rerr)
	}
	// Refused while a VM or a snapshot depends on it (store.ImageInUseError
	// names them): its file backs their qcow2 root disks, and a VM made by
	// copy still names it (`vm show` must never point at nothing). The
	// check and the row's delete are one transaction, so a create that
	// inserts its row meanwhile either makes this refuse or finds no image
	// (vm.Service.makeRootDisk); the files go only after the row.
	if rerr == nil {
		if err := dm.d.Store.DeleteImageUnused(ctx, n); err != nil {
			return nil, err
		}
	} else if err := dm.d.Store.CheckImageUnused(ctx, n, filepath.Join(dm.d.Layout.Image(n), paths.RootfsFile)); err != nil {
		return nil, err
	}
	if err := image.Remove(dm.d.Layout, n); err != nil && !errors.Is(err, api.ErrNotFound) {
		return nil, err
	}
	return nil, nil
}

func (dm *Daemon) status(ctx context.Context, c *rpc.Call) (any, error) {
	vms, err := dm.d.Store.ListVMs(ctx)
	if err != nil {
		return nil, err
	}
	running := 0
	for _, v := range vms {
		if dm.d.VMs.Running(v) {
			running++
		}
	}
	pool, err := dm.d.VMs.Pool(ctx)
	if err != nil { // informational only: status is also the CLI's liveness probe
		dm.d.Log.WarnContext(ctx, "list tap pool", "err", err)
	}
	return api.DaemonStatus{PID: os.Getpid(), UID: os.Getuid(), StateDir: dm.d.Layout.Root, Socket: dm.d.Layout.Socket(),
		Version: Version, StartedAt: dm.started, VMs: len(vms), Running: running, Accel: dm.d.Accel(), TapPool: pool}, nil
}

func (dm *Daemon) stop(ctx context.Context, c *rpc.Call) (any, error) {
	if dm.d.Shutdown == nil {
		return nil, errors.New("shutdown not wired")
	}
	// The server stops accepting at once (the socket goes), lets the calls
	// in flight, this one included, finish within its grace period and
	// interrupts the rest; the process then exits. Running VMs keep running
	// and are adopted at next start.
	dm.d.Shutdown()
	return api.DaemonStopResult{PID: os.Getpid()}, nil
}

func (dm *Daemon) doctor(ctx context.Context, c *rpc.Call) (any, error) {
	return dm.d.Doctor(ctx), nil
}
