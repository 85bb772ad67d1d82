package firecracker

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// fakeAPI is a state-keeping stand-in for Firecracker's API server. It keeps
// the configuration the way Firecracker does (pre-boot PUTs, InstanceStart
// checks, pause state, snapshot files it wrote, the snapshot it loaded),
// records every request for the contract test, and renders its state as
// text for comparison. The rules it enforces are the v1.16.1 spec's and
// docs/snapshotting/snapshot-support.md's, quoted where they apply.
type fakeAPI struct {
	mu       sync.Mutex
	requests []recorded
	machine  map[string]any
	boot     map[string]any
	drives   map[string]map[string]any
	nics     map[string]map[string]any
	vsock    map[string]any
	serial   map[string]any
	// configured: a resource other than the logger and metrics was set, so
	// "Loads a snapshot. Pre-boot only ... Only accepted on a fresh
	// Firecracker process" no longer holds.
	configured bool
	booted     bool // InstanceStart or a snapshot load succeeded
	paused     bool
	loaded     map[string]any // the PUT /snapshot/load body that restored this VM
	created    []string       // snapshot files written, "state mem" per create
	listeners  []net.Listener // the vsock socket, bound when the device goes live
	// dead is the fault of a failed snapshot load: "on failure: A specific
	// error is reported and then the current Firecracker process is ended".
	// The process fake exits (onFatal); the in-process one refuses all else.
	dead     string
	onChange func(*fakeAPI) // called with mu held after every request
	onFatal  func()         // called after the fatal answer is sent
}

type recorded struct {
	Method string          `json:"method"`
	Path   string          `json:"path"`
	Body   json.RawMessage `json:"body,omitempty"`
}

const fakeVersion = "1.16.1"

func newFakeAPI() *fakeAPI {
	return &fakeAPI{drives: map[string]map[string]any{}, nics: map[string]map[string]any{}}
}

// fault answers like Firecracker's API server; the Content-Length lets a
// process that exits right after still deliver the whole answer.
func (f *fakeAPI) fault(w http.ResponseWriter, code int, msg string) {
	b, _ := json.Marshal(map[string]string{"fault_message": msg})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(code)
	_, _ = w.Write(b)
}

func (f *fakeAPI) answer(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

const (
	msgPostBoot = "The requested operation is not supported after starting the microVM."
	msgPreBoot  = "The requested operation is not supported before starting the microVM."
)

func (f *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	fatal := f.serve(w, r, body)
	if fatal && f.onFatal != nil {
		if fl, ok := w.(http.Flusher); ok {
			fl.Flush()
		}
		f.onFatal()
	}
}

func (f *fakeAPI) serve(w http.ResponseWriter, r *http.Request, body []byte) (fatal bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	rec := recorded{Method: r.Method, Path: r.URL.Path}
	if len(bytes.TrimSpace(body)) > 0 {
		rec.Body = json.RawMessage(bytes.TrimSpace(body))
	}
	f.requests = append(f.requests, rec)
	if f.onChange != nil {
		defer f.onChange(f)
	}
	if f.dead != "" {
		f.fault(w, http.StatusBadRequest, "firecracker ended after: "+f.dead)
		return false
	}

	p := r.URL.Path
	if r.Method == http.MethodGet {
		switch p {
		case "/":
			f.answer(w, map[string]string{
				"app_name": "Firecracker", "id": "anonymous-instance", "state": f.state(), "vmm_version": fakeVersion,
			})
		case "/version":
			f.answer(w, map[string]string{"firecracker_version": fakeVersion})
		case "/vm/config":
			f.answer(w, f.fullConfig())
		default:
			f.fault(w, http.StatusBadRequest, "Invalid request method and/or path: "+r.Method+" "+p)
		}
		return false
	}
	var m map[string]any
	if r.Method == http.MethodPut || r.Method == http.MethodPatch {
		if err := json.Unmarshal(body, &m); err != nil {
			f.fault(w, http.StatusBadRequest, "An error occurred when deserializing the json body of a request: "+err.Error())
			return false
		}
	}
	switch {
	case r.Method == http.MethodPatch && p == "/vm":
		f.patchVM(w, m)
		return false
	case r.Method == http.MethodPatch && strings.HasPrefix(p, "/drives/"):
		f.patchDrive(w, strings.TrimPrefix(p, "/drives/"), m)
		return false
	case r.Method != http.MethodPut:
		f.fault(w, http.StatusBadRequest, "Invalid request method and/or path: "+r.Method+" "+p)
		return false
	case p == "/actions":
		f.action(w, m)
		return false
	case p == "/snapshot/create":
		f.createSnapshot(w, m)
		return false
	case p == "/snapshot/load":
		return f.loadSnapshot(w, m)
	}
	if f.booted {
		f.fault(w, http.StatusBadRequest, msgPostBoot)
		return false
	}
	switch {
	case p == "/machine-config":
		f.machine = m
	case p == "/boot-source":
		if !fileExists(m["kernel_image_path"]) {
			f.fault(w, http.StatusBadRequest, "Invalid kernel path: No such file or directory (os error 2)")
			return false
		}
		f.boot = m
	case strings.HasPrefix(p, "/drives/"):
		id := strings.TrimPrefix(p, "/drives/")
		if m["drive_id"] != id {
			f.fault(w, http.StatusBadRequest, "The id from the path does not match the id from the body!")
			return false
		}
		if !fileExists(m["path_on_host"]) {
			f.fault(w, http.StatusBadRequest, "Unable to create the block device: No such file or directory (os error 2)")
			return false
		}
		f.drives[id] = m
	case strings.HasPrefix(p, "/network-interfaces/"):
		id := strings.TrimPrefix(p, "/network-interfaces/")
		if m["iface_id"] != id {
			f.fault(w, http.StatusBadRequest, "The id from the path does not match the id from the body!")
			return false
		}
		f.nics[id] = m
	case p == "/serial":
		f.serial = m
	case p == "/vsock":
		f.vsock = m
	default:
		f.fault(w, http.StatusBadRequest, "Invalid request method and/or path: "+r.Method+" "+p)
		return false
	}
	f.configured = true
	w.WriteHeader(http.StatusNoContent)
	return false
}

// state is InstanceInfo.state.
func (f *fakeAPI) state() string {
	switch {
	case !f.booted:
		return "Not started"
	case f.paused:
		return "Paused"
	}
	return "Running"
}

func (f *fakeAPI) action(w http.ResponseWriter, m map[string]any) {
	switch m["action_type"] {
	case "InstanceStart":
		if f.booted {
			f.fault(w, http.StatusBadRequest, msgPostBoot)
			return
		}
		if f.boot == nil {
			f.fault(w, http.StatusBadRequest, "Start microVM error: Cannot start microvm without kernel configuration.")
			return
		}
		// Firecracker loads the kernel at InstanceStart: it must be an ELF vmlinux.
		k, _ := f.boot["kernel_image_path"].(string)
		if b, err := os.ReadFile(k); err != nil || !bytes.HasPrefix(b, []byte("\x7fELF")) {
			f.fault(w, http.StatusBadRequest, "Start microVM error: Cannot load kernel due to invalid memory configuration or invalid kernel image: Kernel Loader: failed to load ELF kernel image")
			return
		}
		if err := f.bindVsock(); err != nil {
			f.fault(w, http.StatusBadRequest, "Start microVM error: "+err.Error())
			return
		}
		f.booted = true
	case "SendCtrlAltDel":
		if !f.booted {
			f.fault(w, http.StatusBadRequest, msgPreBoot)
			return
		}
	default:
		f.fault(w, http.StatusBadRequest, fmt.Sprintf("unknown action %v", m["action_type"]))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// bindVsock binds the vsock device's unix socket, as Firecracker does when
// the device goes live: an existing path is EADDRINUSE.
func (f *fakeAPI) bindVsock() error {
	if f.vsock == nil {
		return nil
	}
	p, _ := f.vsock["uds_path"].(string)
	ln, err := net.Listen("unix", p)
	if err != nil {
		return fmt.Errorf("vsock: %w", err)
	}
	f.listeners = append(f.listeners, ln)
	return nil
}

func (f *fakeAPI) close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, ln := range f.listeners {
		ln.Close()
	}
}

// PATCH /vm: "Prerequisites: The microVM is booted. Successive calls of this
// request keep the microVM in the Paused state" (and Resumed likewise).
func (f *fakeAPI) patchVM(w http.ResponseWriter, m map[string]any) {
	if !f.booted {
		f.fault(w, http.StatusBadRequest, msgPreBoot)
		return
	}
	switch m["state"] {
	case "Paused":
		f.paused = true
	case "Resumed":
		f.paused = false
	default:
		f.fault(w, http.StatusBadRequest, fmt.Sprintf("unknown vm state %v", m["state"]))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// PATCH /drives/{id}: "Updates the properties of a drive. Post-boot only."
// Firecracker reopens path_on_host with the drive's own read-only flag.
func (f *fakeAPI) patchDrive(w http.ResponseWriter, id string, m map[string]any) {
	if !f.booted {
		f.fault(w, http.StatusBadRequest, msgPreBoot)
		return
	}
	if m["drive_id"] != id {
		f.fault(w, http.StatusBadRequest, "The id from the path does not match the id from the body!")
		return
	}
	d, ok := f.drives[id]
	if !ok {
		f.fault(w, http.StatusBadRequest, "Drive config error: Invalid block device ID!")
		return
	}
	if p, ok := m["path_on_host"].(string); ok {
		ro, _ := d["is_read_only"].(bool)
		if err := openDisk(p, ro); err != nil {
			f.fault(w, http.StatusBadRequest, "Drive config error: Unable to patch the block device: "+err.Error())
			return
		}
		d["path_on_host"] = p
	}
	w.WriteHeader(http.StatusNoContent)
}

func openDisk(p string, ro bool) error {
	flag := os.O_RDWR
	if ro {
		flag = os.O_RDONLY
	}
	fd, err := os.OpenFile(p, flag, 0)
	if err != nil {
		return err
	}
	return fd.Close()
}

// fakeVMState is what the fake writes as a snapshot's microVM state file:
// the devices as configured, so a load can bring them back.
type fakeVMState struct {
	Magic   string                    `json:"magic"`
	Version string                    `json:"version"`
	Machine map[string]any            `json:"machine"`
	Drives  map[string]map[string]any `json:"drives"`
	Nics    map[string]map[string]any `json:"nics"`
	Vsock   map[string]any            `json:"vsock,omitempty"`
}

const fakeStateMagic = "fake-firecracker-vmstate"

// PUT /snapshot/create: "Post-boot only ... The microVM should be in the
// Paused state"; a diff snapshot needs dirty page tracking, which banger's
// VMs never enable. Both files are created or truncated. A memory file path
// containing "/full-disk/" fails after writing them, like a full disk.
func (f *fakeAPI) createSnapshot(w http.ResponseWriter, m map[string]any) {
	if !f.booted {
		f.fault(w, http.StatusBadRequest, msgPreBoot)
		return
	}
	if !f.paused {
		f.fault(w, http.StatusBadRequest, "Create snapshot error: Cannot save the microVM state: the microVM is not paused")
		return
	}
	if t, ok := m["snapshot_type"]; ok && t != "Full" {
		f.fault(w, http.StatusBadRequest, "Create snapshot error: diff snapshots need track_dirty_pages")
		return
	}
	statePath, _ := m["snapshot_path"].(string)
	memPath, _ := m["mem_file_path"].(string)
	st, _ := json.Marshal(fakeVMState{Magic: fakeStateMagic, Version: fakeVersion, Machine: f.machine,
		Drives: f.drives, Nics: f.nics, Vsock: f.vsock})
	if err := os.WriteFile(statePath, st, 0o600); err != nil {
		f.fault(w, http.StatusBadRequest, "Create snapshot error: Cannot perform open on the snapshot backing file: "+err.Error())
		return
	}
	mem, err := os.OpenFile(memPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err == nil {
		err = errors.Join(mem.Truncate(memBytes(f.machine)), mem.Close())
	}
	if err != nil {
		f.fault(w, http.StatusBadRequest, "Create snapshot error: Cannot perform open on the memory backing file: "+err.Error())
		return
	}
	if strings.Contains(memPath, "/full-disk/") {
		f.fault(w, http.StatusBadRequest, "Create snapshot error: Cannot write memory file: No space left on device (os error 28)")
		return
	}
	f.created = append(f.created, statePath+" "+memPath)
	w.WriteHeader(http.StatusNoContent)
}

func memBytes(machine map[string]any) int64 {
	n, _ := machine["mem_size_mib"].(float64)
	return int64(n) << 20
}

// PUT /snapshot/load: "Pre-boot only ... Only accepted on a fresh Firecracker
// process (before configuring any resource other than the Logger and
// Metrics)"; "Exactly one of the two mem_* fields must be present". The
// devices come back from the state file and are reopened where it says,
// after network_overrides and vsock_override ("The disk backing files,
// network interfaces backing TAPs and/or vsock backing socket that were used
// for the original microVM's configuration should be set up and accessible
// to the new Firecracker process"). A failed restore is fatal.
func (f *fakeAPI) loadSnapshot(w http.ResponseWriter, m map[string]any) (fatal bool) {
	if f.booted {
		f.fault(w, http.StatusBadRequest, msgPostBoot)
		return false
	}
	if f.configured {
		f.fault(w, http.StatusBadRequest, "Load snapshot error: Loading a microVM snapshot not allowed after configuring boot-specific resources.")
		return false
	}
	be, hasBackend := m["mem_backend"].(map[string]any)
	_, hasFile := m["mem_file_path"]
	if hasBackend == hasFile {
		f.fault(w, http.StatusBadRequest, "An error occurred when deserializing the json body of a request: exactly one of mem_backend and mem_file_path")
		return false
	}
	memPath, _ := m["mem_file_path"].(string)
	if hasBackend {
		if be["backend_type"] != "File" {
			f.fault(w, http.StatusBadRequest, "the fake firecracker only serves the File memory backend")
			return false
		}
		memPath, _ = be["backend_path"].(string)
	}
	die := func(format string, a ...any) bool {
		f.dead = "Load snapshot error: Failed to restore from snapshot: " + fmt.Sprintf(format, a...)
		f.fault(w, http.StatusBadRequest, f.dead)
		return true
	}
	statePath, _ := m["snapshot_path"].(string)
	b, err := os.ReadFile(statePath)
	if err != nil {
		return die("Failed to open snapshot file: %v", err)
	}
	var st fakeVMState
	if json.Unmarshal(b, &st) != nil || st.Magic != fakeStateMagic {
		return die("Snapshot file is corrupt (CRC mismatch)")
	}
	if st.Version != fakeVersion {
		return die("snapshot version %s, this firecracker is %s", st.Version, fakeVersion)
	}
	mi, err := os.Stat(memPath)
	if err != nil {
		return die("Cannot open the memory file: %v", err)
	}
	if mi.Size() < memBytes(st.Machine) {
		return die("memory file %d bytes for %d MiB of guest memory", mi.Size(), memBytes(st.Machine)>>20)
	}
	overrides, _ := m["network_overrides"].([]any)
	for _, o := range overrides {
		o, _ := o.(map[string]any)
		id, _ := o["iface_id"].(string)
		nic, ok := st.Nics[id]
		if !ok {
			return die("network override for unknown interface %q", id)
		}
		nic["host_dev_name"] = o["host_dev_name"]
	}
	if vo, ok := m["vsock_override"].(map[string]any); ok {
		if st.Vsock == nil {
			return die("vsock override without a vsock device")
		}
		st.Vsock["uds_path"] = vo["uds_path"]
	}
	for _, id := range sortedKeys(st.Drives) {
		p, _ := st.Drives[id]["path_on_host"].(string)
		ro, _ := st.Drives[id]["is_read_only"].(bool)
		if err := openDisk(p, ro); err != nil {
			return die("Cannot restore devices: block %s: %v", id, err)
		}
	}
	f.machine, f.drives, f.nics, f.vsock = st.Machine, st.Drives, st.Nics, st.Vsock
	if err := f.bindVsock(); err != nil {
		return die("Cannot restore devices: %v", err)
	}
	resume, _ := m["resume_vm"].(bool)
	f.booted, f.paused, f.loaded = true, !resume, m
	w.WriteHeader(http.StatusNoContent)
	return false
}

// fullConfig is GET /vm/config: for a restored VM the boot source is empty.
func (f *fakeAPI) fullConfig() map[string]any {
	out := map[string]any{}
	if f.machine != nil {
		out["machine-config"] = f.machine
	}
	if f.boot != nil {
		out["boot-source"] = f.boot
	}
	drives := []any{}
	for _, id := range sortedKeys(f.drives) {
		drives = append(drives, f.drives[id])
	}
	nics := []any{}
	for _, id := range sortedKeys(f.nics) {
		nics = append(nics, f.nics[id])
	}
	out["drives"], out["network-interfaces"] = drives, nics
	if f.vsock != nil {
		out["vsock"] = f.vsock
	}
	return out
}

func fileExists(p any) bool {
	s, ok := p.(string)
	if !ok || s == "" {
		return false
	}
	_, err := os.Stat(s)
	return err == nil
}

// stateText renders the configuration, one line per device, keys sorted.
func (f *fakeAPI) stateText() string {
	var b strings.Builder
	line := func(what string, m map[string]any) {
		if m == nil {
			return
		}
		j, _ := json.Marshal(m) // map keys are sorted
		fmt.Fprintf(&b, "%s %s\n", what, j)
	}
	line("machine-config", f.machine)
	line("boot-source", f.boot)
	for _, id := range sortedKeys(f.drives) {
		line("drive "+id, f.drives[id])
	}
	for _, id := range sortedKeys(f.nics) {
		line("network-interface "+id, f.nics[id])
	}
	line("vsock", f.vsock)
	line("serial", f.serial)
	line("loaded", f.loaded)
	for _, c := range f.created {
		fmt.Fprintf(&b, "snapshot %s\n", c)
	}
	fmt.Fprintf(&b, "state %s\n", f.state())
	return b.String()
}

func sortedKeys(m map[string]map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// serveFake runs a fakeAPI on a unix socket in a temp dir (in-process).
func serveFake(t *testing.T) (*fakeAPI, string) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), APISocket)
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	f := newFakeAPI()
	srv := &http.Server{Handler: f}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close(); f.close() })
	return f, sock
}

// The test binary doubles as a fake firecracker: Start tests symlink it as
// "firecracker" and the driver launches it with --api-sock. It then serves a
// fakeAPI there and mirrors requests and state into <sock>.requests and
// <sock>.state for the test to read. A socket path containing "/die/" makes
// it exit at once, like a VMM that fails on launch.
func TestMain(m *testing.M) {
	if filepath.Base(os.Args[0]) == DefaultBinary {
		os.Exit(fakeFirecrackerMain(os.Args[1:]))
	}
	os.Exit(m.Run())
}

func fakeFirecrackerMain(args []string) int {
	// Jailed (see fakeJailer): the jailer passes "--id <id> --start-time-us N"
	// first; chroot and drop to the jail's uid as the jailer would.
	if len(args) > 4 && args[0] == "--id" && args[2] == "--start-time-us" {
		if err := enterFakeJail(os.Getenv(fakeJailEnv)); err != nil {
			fmt.Println("fake firecracker:", err)
			return 1
		}
		args = args[4:]
	}
	if len(args) == 1 && args[0] == "--version" {
		fmt.Printf("Firecracker v%s\n\nSupported snapshot data format versions: v8.0.0\n", fakeVersion)
		return 0
	}
	if len(args) != 2 || args[0] != "--api-sock" {
		fmt.Println("usage: firecracker --api-sock PATH")
		return 2
	}
	sock := args[1]
	if strings.Contains(sock, "/die/") {
		fmt.Println("fake firecracker: refusing to run (die)")
		return 1
	}
	ln, err := net.Listen("unix", sock)
	if err != nil {
		fmt.Println("fake firecracker:", err)
		return 1
	}
	fmt.Println("fake firecracker: api on", sock)
	if strings.Contains(sock, "/flood/") {
		// A guest flooding its console, faster than any rate limit.
		const n = 24 << 20
		go func() {
			line := bytes.Repeat([]byte("x"), 1023)
			for written := 0; written < n; written += len(line) + 1 {
				os.Stdout.Write(append(line, '\n'))
			}
			fmt.Println("flood-end")
		}()
	}
	f := newFakeAPI()
	f.onChange = func(f *fakeAPI) {
		var b bytes.Buffer
		enc := json.NewEncoder(&b)
		for _, r := range f.requests {
			_ = enc.Encode(r)
		}
		_ = os.WriteFile(sock+".requests", b.Bytes(), 0o600)
		_ = os.WriteFile(sock+".state", []byte(f.stateText()), 0o600)
	}
	// A failed snapshot load ends Firecracker once the answer is out.
	f.onFatal = func() {
		fmt.Println("fake firecracker:", f.dead)
		os.Exit(1)
	}
	err = http.Serve(ln, f)
	if err != nil && !errors.Is(err, net.ErrClosed) {
		fmt.Println("fake firecracker:", err)
		return 1
	}
	return 0
}
