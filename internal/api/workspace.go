package api

import "time"

// Workspace methods.
const (
	MethodWorkspacePrepare = "workspace.prepare"
	MethodWorkspaceStatus  = "workspace.status"
	MethodWorkspaceCheck   = "workspace.check"
	MethodWorkspacePull    = "workspace.pull"
	MethodVMSync           = "vm.sync"
)

type WorkspacePrepareParams struct {
	Name  string `json:"name"`
	Repo  string `json:"repo"`           // absolute host path in a git repository
	Into  string `json:"into,omitempty"` // guest directory (default /root/repo)
	Force bool   `json:"force,omitempty"`
}

// Workspace is a prepared repository.
type Workspace struct {
	VM         string    `json:"vm"`
	HostPath   string    `json:"host_path"`
	GuestPath  string    `json:"guest_path"`
	Head       string    `json:"head"`
	Branch     string    `json:"branch,omitempty"`
	Files      int64     `json:"files"`
	Bytes      int64     `json:"bytes"`
	PreparedAt time.Time `json:"prepared_at"`
	SyncedAt   time.Time `json:"synced_at"`
}

type WorkspacePrepareResult struct {
	Workspace    Workspace `json:"workspace"`
	Full         bool      `json:"full"`
	FilesSent    int       `json:"files_sent"`
	BytesSent    int64     `json:"bytes_sent"`
	Deleted      int       `json:"deleted"`
	HistoryBytes int64     `json:"history_bytes"` // git objects + index (or a bundle)
	TookMs       int64     `json:"took_ms"`
}

// WorkspaceCheck is what `vm exec` needs: where to cd and what drifted.
type WorkspaceCheck struct {
	GuestPath string `json:"guest_path,omitempty"` // "" = no workspace (or VM not running)
	HostPath  string `json:"host_path,omitempty"`
	Drift     string `json:"drift,omitempty"` // one line; "" = in sync
}

type WorkspaceStatus struct {
	Workspace   Workspace `json:"workspace"`
	HostHead    string    `json:"host_head"`
	HostBranch  string    `json:"host_branch,omitempty"`
	HostDirty   int       `json:"host_dirty"`
	Drift       string    `json:"drift,omitempty"`
	Running     bool      `json:"running"`
	GuestHead   string    `json:"guest_head,omitempty"`
	GuestBranch string    `json:"guest_branch,omitempty"`
	GuestDirty  int       `json:"guest_dirty"`
	GuestError  string    `json:"guest_error,omitempty"`
}

type WorkspacePullParams struct {
	Name   string `json:"name"`
	Branch string `json:"branch,omitempty"`
	Force  bool   `json:"force,omitempty"`
	Patch  bool   `json:"patch,omitempty"`
}

type WorkspacePullResult struct {
	Branch  string `json:"branch"`
	Commit  string `json:"commit"`
	Commits int    `json:"commits"`
	Patch   []byte `json:"patch,omitempty"`
}

type SyncedFile struct {
	Path  string `json:"path"`
	Guest string `json:"guest"`
	Mode  string `json:"mode"`
	Bytes int64  `json:"bytes"`
}

type FileRefusal struct {
	Path   string `json:"path"`
	Reason string `json:"reason"`
}

type VMSyncResult struct {
	Synced  []SyncedFile  `json:"synced"`
	Refused []FileRefusal `json:"refused,omitempty"`
}
