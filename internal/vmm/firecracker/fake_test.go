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
	"strings"
	"sync"
	"testing"
)

// fakeAPI is a state-keeping stand-in for Firecracker's API server. It keeps
// the configuration the way Firecracker does (pre-boot PUTs, InstanceStart
// checks), records every request for the contract test, and renders its
// state as text for comparison.
type fakeAPI struct {
	mu       sync.Mutex
	requests []recorded
	machine  map[string]any
	boot     map[string]any
	drives   map[string]map[string]any
	nics     map[string]map[string]any
	vsock    map[string]any
	serial   map[string]any
	running  bool
	onChange func(*fakeAPI) // called with mu held after every request
}

type recorded struct {
	Method string          `json:"method"`
	Path   string          `json:"path"`
	Body   json.RawMessage `json:"body,omitempty"`
}

func newFakeAPI() *fakeAPI {
	return &fakeAPI{drives: map[string]map[string]any{}, nics: map[string]map[string]any{}}
}

func (f *fakeAPI) fault(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]string{"fault_message": msg})
}

func (f *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
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

	if r.Method == http.MethodGet && r.URL.Path == "/" {
		state := "Not started"
		if f.running {
			state = "Running"
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]string{
			"app_name": "Firecracker", "id": "anonymous-instance", "state": state, "vmm_version": "1.16.1",
		})
		return
	}
	if r.Method != http.MethodPut {
		f.fault(w, http.StatusBadRequest, "Invalid request method and/or path: "+r.Method+" "+r.URL.Path)
		return
	}
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil {
		f.fault(w, http.StatusBadRequest, "An error occurred when deserializing the json body of a request: "+err.Error())
		return
	}
	if r.URL.Path == "/actions" {
		f.action(w, m)
		return
	}
	if f.running {
		f.fault(w, http.StatusBadRequest, "The requested operation is not supported after starting the microVM.")
		return
	}
	switch p := r.URL.Path; {
	case p == "/machine-config":
		f.machine = m
	case p == "/boot-source":
		if !fileExists(m["kernel_image_path"]) {
			f.fault(w, http.StatusBadRequest, "Invalid kernel path: No such file or directory (os error 2)")
			return
		}
		f.boot = m
	case strings.HasPrefix(p, "/drives/"):
		id := strings.TrimPrefix(p, "/drives/")
		if m["drive_id"] != id {
			f.fault(w, http.StatusBadRequest, "The id from the path does not match the id from the body!")
			return
		}
		if !fileExists(m["path_on_host"]) {
			f.fault(w, http.StatusBadRequest, "Unable to create the block device: No such file or directory (os error 2)")
			return
		}
		f.drives[id] = m
	case strings.HasPrefix(p, "/network-interfaces/"):
		id := strings.TrimPrefix(p, "/network-interfaces/")
		if m["iface_id"] != id {
			f.fault(w, http.StatusBadRequest, "The id from the path does not match the id from the body!")
			return
		}
		f.nics[id] = m
	case p == "/serial":
		f.serial = m
	case p == "/vsock":
		f.vsock = m
	default:
		f.fault(w, http.StatusBadRequest, "Invalid request method and/or path: "+r.Method+" "+p)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (f *fakeAPI) action(w http.ResponseWriter, m map[string]any) {
	switch m["action_type"] {
	case "InstanceStart":
		if f.running {
			f.fault(w, http.StatusBadRequest, "The requested operation is not supported after starting the microVM.")
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
		f.running = true
	case "SendCtrlAltDel":
		if !f.running {
			f.fault(w, http.StatusBadRequest, "The requested operation is not supported before starting the microVM.")
			return
		}
	default:
		f.fault(w, http.StatusBadRequest, fmt.Sprintf("unknown action %v", m["action_type"]))
		return
	}
	w.WriteHeader(http.StatusNoContent)
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
	fmt.Fprintf(&b, "running %v\n", f.running)
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
	t.Cleanup(func() { _ = srv.Close() })
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
	err = http.Serve(ln, f)
	if err != nil && !errors.Is(err, net.ErrClosed) {
		fmt.Println("fake firecracker:", err)
		return 1
	}
	return 0
}
