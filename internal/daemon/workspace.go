package daemon

import (
	"context"
	"fmt"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/rpc"
	"github.com/banger-dev/banger/internal/store"
	"github.com/banger-dev/banger/internal/vm"
	"github.com/banger-dev/banger/internal/workspace"
)

// registerWorkspace installs the workspace and file-sync methods; a daemon
// without a workspace service (tests) simply lacks them.
func (dm *Daemon) registerWorkspace(srv *rpc.Server) {
	if dm.d.Workspaces == nil {
		return
	}
	srv.Handle(api.MethodWorkspacePrepare, dm.wsPrepare)
	srv.Handle(api.MethodWorkspaceStatus, dm.wsStatus)
	srv.Handle(api.MethodWorkspaceCheck, dm.wsCheck)
	srv.Handle(api.MethodWorkspacePull, dm.wsPull)
	srv.Handle(api.MethodVMSync, dm.vmSync)
}

func (dm *Daemon) wsView(name string, w store.Workspace) api.Workspace {
	return api.Workspace{VM: name, HostPath: w.HostPath, GuestPath: w.GuestPath, Head: w.Head, Branch: w.Branch,
		Files: w.Files, Bytes: w.Bytes, PreparedAt: w.PreparedAt, SyncedAt: w.SyncedAt}
}

func (dm *Daemon) wsPrepare(ctx context.Context, c *rpc.Call) (any, error) {
	var p api.WorkspacePrepareParams
	if err := c.Decode(&p); err != nil {
		return nil, err
	}
	if p.Name == "" || p.Repo == "" {
		return nil, fmt.Errorf("name and repo are required: %w", api.ErrInvalid)
	}
	// Like create: a client that hangs up does not leave a half-applied sync.
	return detached(ctx, c, func(ctx context.Context, pr vm.Progress) (api.WorkspacePrepareResult, error) {
		r, err := dm.d.Workspaces.Prepare(ctx, workspace.PrepareParams{Name: p.Name, Repo: p.Repo, Into: p.Into, Force: p.Force},
			workspace.Progress(pr))
		if err != nil {
			return api.WorkspacePrepareResult{}, err
		}
		return api.WorkspacePrepareResult{Workspace: dm.wsView(p.Name, r.Workspace), Full: r.Full, FilesSent: r.FilesSent,
			BytesSent: r.BytesSent, Deleted: r.Deleted, HistoryBytes: r.HistoryBytes, TookMs: r.Took.Milliseconds()}, nil
	})
}

func (dm *Daemon) wsCheck(ctx context.Context, c *rpc.Call) (any, error) {
	n, err := dm.name(c)
	if err != nil {
		return nil, err
	}
	ws, d, err := dm.d.Workspaces.Check(ctx, n)
	if err != nil {
		return nil, err
	}
	out := api.WorkspaceCheck{GuestPath: ws.GuestPath, HostPath: ws.HostPath}
	if !d.None() {
		out.Drift = d.String()
	}
	return out, nil
}

func (dm *Daemon) wsStatus(ctx context.Context, c *rpc.Call) (any, error) {
	n, err := dm.name(c)
	if err != nil {
		return nil, err
	}
	st, err := dm.d.Workspaces.Status(ctx, n)
	if err != nil {
		return nil, err
	}
	out := api.WorkspaceStatus{Workspace: dm.wsView(n, st.Workspace), HostHead: st.HostHead, HostBranch: st.HostBranch,
		HostDirty: st.HostDirty, Running: st.Running, GuestHead: st.GuestHead, GuestBranch: st.GuestBranch,
		GuestDirty: st.GuestDirty, GuestError: st.GuestError}
	if !st.Drift.None() {
		out.Drift = st.Drift.String()
	}
	return out, nil
}

func (dm *Daemon) wsPull(ctx context.Context, c *rpc.Call) (any, error) {
	var p api.WorkspacePullParams
	if err := c.Decode(&p); err != nil {
		return nil, err
	}
	if p.Name == "" {
		return nil, fmt.Errorf("name is required: %w", api.ErrInvalid)
	}
	r, err := dm.d.Workspaces.Pull(ctx, workspace.PullParams{Name: p.Name, Branch: p.Branch, Force: p.Force, Patch: p.Patch})
	if err != nil {
		return nil, err
	}
	return api.WorkspacePullResult{Branch: r.Branch, Commit: r.Commit, Commits: r.Commits, Patch: r.Patch}, nil
}

func (dm *Daemon) vmSync(ctx context.Context, c *rpc.Call) (any, error) {
	n, err := dm.name(c)
	if err != nil {
		return nil, err
	}
	r, err := dm.d.Workspaces.SyncFiles(ctx, n)
	if err != nil {
		return nil, err
	}
	out := api.VMSyncResult{Synced: []api.SyncedFile{}}
	for _, f := range r.Synced {
		out.Synced = append(out.Synced, api.SyncedFile{Path: f.Path, Guest: f.Guest, Mode: fmt.Sprintf("%04o", f.Mode.Perm()), Bytes: f.Bytes})
	}
	for _, f := range r.Refused {
		out.Refused = append(out.Refused, api.FileRefusal{Path: f.Path, Reason: f.Reason})
	}
	return out, nil
}
