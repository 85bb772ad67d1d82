package firecracker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// The request and response bodies of the Firecracker API this driver uses.
// Field names and optionality follow the Swagger definitions of the same
// name in testdata/firecracker-v1.16.1.yaml; the contract test checks every
// body the driver sends against them.

// MachineConfiguration is the body of PUT /machine-config.
type MachineConfiguration struct {
	VCPUCount  int  `json:"vcpu_count"`
	MemSizeMiB int  `json:"mem_size_mib"`
	SMT        bool `json:"smt"`
}

// BootSource is the body of PUT /boot-source.
type BootSource struct {
	KernelImagePath string `json:"kernel_image_path"`
	InitrdPath      string `json:"initrd_path,omitempty"`
	BootArgs        string `json:"boot_args,omitempty"`
}

// Drive cache types (Drive.cache_type).
const (
	CacheUnsafe    = "Unsafe"
	CacheWriteback = "Writeback"
)

// Drive is the body of PUT /drives/{drive_id}.
type Drive struct {
	DriveID      string `json:"drive_id"`
	PathOnHost   string `json:"path_on_host"`
	IsRootDevice bool   `json:"is_root_device"`
	IsReadOnly   bool   `json:"is_read_only"`
	CacheType    string `json:"cache_type,omitempty"`
}

// NetworkInterface is the body of PUT /network-interfaces/{iface_id}.
type NetworkInterface struct {
	IfaceID     string `json:"iface_id"`
	HostDevName string `json:"host_dev_name"`
	GuestMAC    string `json:"guest_mac,omitempty"`
}

// Vsock is the body of PUT /vsock.
type Vsock struct {
	GuestCID uint32 `json:"guest_cid"`
	UDSPath  string `json:"uds_path"`
}

// TokenBucket is Firecracker's rate limiter bucket (size per refill_time ms).
type TokenBucket struct {
	Size       int64 `json:"size"`
	RefillTime int64 `json:"refill_time"`
}

// SerialDevice configures the guest's serial console output (PUT /serial).
type SerialDevice struct {
	SerialOutPath string       `json:"serial_out_path,omitempty"`
	RateLimiter   *TokenBucket `json:"rate_limiter,omitempty"`
}

// Action types of PUT /actions.
const (
	ActionInstanceStart  = "InstanceStart"
	ActionSendCtrlAltDel = "SendCtrlAltDel"
)

// InstanceActionInfo is the body of PUT /actions.
type InstanceActionInfo struct {
	ActionType string `json:"action_type"`
}

// InstanceInfo is the answer to GET /.
type InstanceInfo struct {
	AppName    string `json:"app_name"`
	ID         string `json:"id"`
	State      string `json:"state"` // "Not started", "Running", "Paused"
	VMMVersion string `json:"vmm_version"`
}

// InstanceInfo.State values.
const (
	StateNotStarted = "Not started"
	StateRunning    = "Running"
	StatePaused     = "Paused"
)

// VM is the body of PATCH /vm: the desired state, VMPaused or VMResumed.
type VM struct {
	State string `json:"state"`
}

// VM states of PATCH /vm.
const (
	VMPaused  = "Paused"
	VMResumed = "Resumed"
)

// SnapshotFull is SnapshotCreateParams.SnapshotType for a full snapshot (the
// whole guest memory; a diff snapshot is not restorable on its own).
const SnapshotFull = "Full"

// SnapshotCreateParams is the body of PUT /snapshot/create.
type SnapshotCreateParams struct {
	SnapshotType string `json:"snapshot_type,omitempty"`
	SnapshotPath string `json:"snapshot_path"`
	MemFilePath  string `json:"mem_file_path"`
}

// MemBackendFile is MemoryBackend.BackendType for a memory file that
// Firecracker maps MAP_PRIVATE (copy-on-write; the file is never written).
const MemBackendFile = "File"

// MemoryBackend says where PUT /snapshot/load finds the guest memory.
type MemoryBackend struct {
	BackendType string `json:"backend_type"`
	BackendPath string `json:"backend_path"`
}

// NetworkOverride points a restored interface at another TAP.
type NetworkOverride struct {
	IfaceID     string `json:"iface_id"`
	HostDevName string `json:"host_dev_name"`
}

// VsockOverride moves a restored vsock device's unix socket.
type VsockOverride struct {
	UDSPath string `json:"uds_path"`
}

// SnapshotLoadParams is the body of PUT /snapshot/load. ResumeVM is always
// sent: false leaves the loaded VM paused for PATCH /drives.
type SnapshotLoadParams struct {
	SnapshotPath     string            `json:"snapshot_path"`
	MemBackend       *MemoryBackend    `json:"mem_backend,omitempty"`
	ResumeVM         bool              `json:"resume_vm"`
	NetworkOverrides []NetworkOverride `json:"network_overrides,omitempty"`
	VsockOverride    *VsockOverride    `json:"vsock_override,omitempty"`
}

// PartialDrive is the body of PATCH /drives/{drive_id}.
type PartialDrive struct {
	DriveID    string `json:"drive_id"`
	PathOnHost string `json:"path_on_host,omitempty"`
}

// FullVMConfig is the part of GET /vm/config (FullVmConfiguration) the
// driver reads: the devices of a running or restored VM.
type FullVMConfig struct {
	MachineConfig     *MachineConfiguration `json:"machine-config,omitempty"`
	Drives            []Drive               `json:"drives"`
	NetworkInterfaces []NetworkInterface    `json:"network-interfaces"`
	Vsock             *Vsock                `json:"vsock,omitempty"`
}

// firecrackerVersion is the answer to GET /version.
type firecrackerVersion struct {
	FirecrackerVersion string `json:"firecracker_version"`
}

// apiError is Firecracker's Error definition.
type apiError struct {
	FaultMessage string `json:"fault_message"`
}

// ErrAPI marks an error answer from the Firecracker API; the message carries
// the method, path, status and fault_message.
var ErrAPI = errors.New("firecracker api error")

// Bounds on a single API exchange. Writing the memory of a large VM takes
// far longer than an ordinary request; a load only maps it.
const (
	requestTimeout = 5 * time.Second
	createTimeout  = 10 * time.Minute
	loadTimeout    = time.Minute
	maxResponse    = 64 << 10
)

// Client talks to one Firecracker process over its API unix socket.
type Client struct {
	sock string
	http *http.Client
	// Per-request bounds: requestTimeout, createTimeout, loadTimeout.
	timeout, createTimeout, loadTimeout time.Duration
}

// NewClient returns a client for the API socket at sock.
func NewClient(sock string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
		DisableKeepAlives: true,
	}
	return &Client{sock: sock, http: &http.Client{Transport: tr},
		timeout: requestTimeout, createTimeout: createTimeout, loadTimeout: loadTimeout}
}

// Close releases idle connections.
func (c *Client) Close() { c.http.CloseIdleConnections() }

func (c *Client) PutMachineConfig(ctx context.Context, m MachineConfiguration) error {
	return c.do(ctx, http.MethodPut, "/machine-config", m, nil)
}

func (c *Client) PutBootSource(ctx context.Context, b BootSource) error {
	return c.do(ctx, http.MethodPut, "/boot-source", b, nil)
}

func (c *Client) PutDrive(ctx context.Context, d Drive) error {
	return c.do(ctx, http.MethodPut, "/drives/"+url.PathEscape(d.DriveID), d, nil)
}

func (c *Client) PutNetworkInterface(ctx context.Context, n NetworkInterface) error {
	return c.do(ctx, http.MethodPut, "/network-interfaces/"+url.PathEscape(n.IfaceID), n, nil)
}

func (c *Client) PutSerial(ctx context.Context, sd SerialDevice) error {
	return c.do(ctx, http.MethodPut, "/serial", sd, nil)
}

func (c *Client) PutVsock(ctx context.Context, v Vsock) error {
	return c.do(ctx, http.MethodPut, "/vsock", v, nil)
}

// Action runs a synchronous action (ActionInstanceStart, ActionSendCtrlAltDel).
func (c *Client) Action(ctx context.Context, actionType string) error {
	return c.do(ctx, http.MethodPut, "/actions", InstanceActionInfo{ActionType: actionType}, nil)
}

// InstanceInfo returns GET /.
func (c *Client) InstanceInfo(ctx context.Context) (InstanceInfo, error) {
	var info InstanceInfo
	err := c.do(ctx, http.MethodGet, "/", nil, &info)
	return info, err
}

// PatchVM sets the VM state (VMPaused, VMResumed); repeating a state is a
// no-op for Firecracker.
func (c *Client) PatchVM(ctx context.Context, state string) error {
	return c.do(ctx, http.MethodPatch, "/vm", VM{State: state}, nil)
}

// CreateSnapshot writes the state and memory files of a paused VM.
func (c *Client) CreateSnapshot(ctx context.Context, p SnapshotCreateParams) error {
	return c.doWithin(ctx, c.createTimeout, http.MethodPut, "/snapshot/create", p, nil)
}

// LoadSnapshot loads a snapshot into a fresh process; it must be the first
// configuration request.
func (c *Client) LoadSnapshot(ctx context.Context, p SnapshotLoadParams) error {
	return c.doWithin(ctx, c.loadTimeout, http.MethodPut, "/snapshot/load", p, nil)
}

// PatchDrive updates a drive of a booted (or loaded) VM.
func (c *Client) PatchDrive(ctx context.Context, d PartialDrive) error {
	return c.do(ctx, http.MethodPatch, "/drives/"+url.PathEscape(d.DriveID), d, nil)
}

// VMConfig returns GET /vm/config.
func (c *Client) VMConfig(ctx context.Context) (FullVMConfig, error) {
	var cfg FullVMConfig
	err := c.do(ctx, http.MethodGet, "/vm/config", nil, &cfg)
	return cfg, err
}

// Version returns GET /version's firecracker_version (e.g. "1.16.1").
func (c *Client) Version(ctx context.Context) (string, error) {
	var v firecrackerVersion
	if err := c.do(ctx, http.MethodGet, "/version", nil, &v); err != nil {
		return "", err
	}
	return v.FirecrackerVersion, nil
}

// do sends one request within requestTimeout. body is marshalled as JSON
// when non-nil; out, when non-nil, receives a 200 answer. A 204 answer with
// out == nil is success.
func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	return c.doWithin(ctx, c.timeout, method, path, body, out)
}

func (c *Client) doWithin(ctx context.Context, timeout time.Duration, method, path string, body, out any) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("firecracker %s %s: %w", method, path, err)
		}
		rd = bytes.NewReader(b)
	}
	// The host part is ignored: the transport always dials the socket.
	req, err := http.NewRequestWithContext(ctx, method, "http://localhost"+path, rd)
	if err != nil {
		return fmt.Errorf("firecracker %s %s: %w", method, path, err)
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("firecracker %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse))
	if err != nil {
		return fmt.Errorf("firecracker %s %s: read answer: %w", method, path, err)
	}
	switch {
	case resp.StatusCode == http.StatusNoContent && out == nil:
		return nil
	case resp.StatusCode == http.StatusOK:
		if out == nil {
			return nil
		}
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("firecracker %s %s: decode answer: %w", method, path, err)
		}
		return nil
	}
	msg := strings.TrimSpace(string(data))
	var ae apiError
	if json.Unmarshal(data, &ae) == nil && ae.FaultMessage != "" {
		msg = ae.FaultMessage
	}
	if len(msg) > 512 {
		msg = msg[:512] + "..."
	}
	return fmt.Errorf("firecracker %s %s: %w: %d %s: %s", method, path, ErrAPI, resp.StatusCode,
		http.StatusText(resp.StatusCode), msg)
}
