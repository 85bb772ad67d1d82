package agent

import (
	"bufio"
	"bytes"
	"cmp"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

func (s *Server) info() (Info, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return Info{}, err
	}
	host, err := os.Hostname()
	if err != nil {
		return Info{}, err
	}
	up, err := readUptime()
	if err != nil {
		return Info{}, err
	}
	return Info{
		Version:  s.Version,
		Protocol: fmt.Sprintf("%d.%d", ProtoMajor, ProtoMinor),
		Hostname: host,
		Kernel:   unix.ByteSliceToString(u.Release[:]),
		Uptime:   up,
	}, nil
}

func readUptime() (time.Duration, error) {
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0, fmt.Errorf("/proc/uptime: empty")
	}
	sec, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return 0, fmt.Errorf("/proc/uptime: %w", err)
	}
	return time.Duration(sec * float64(time.Second)), nil
}

func (s *Server) stats() (Stats, error) {
	if s.Stats != nil {
		return s.Stats()
	}
	st, err := readStats()
	if err != nil {
		return Stats{}, err
	}
	age := sessionOutputAge(s.Sessions.stateDir(), time.Now())
	st.SessionOutputAge = &age
	return st, nil
}

// sessionOutputAge is the whole seconds since the newest write to a live
// session log in dir (a supervisor appends all its session's output there),
// NoSessionOutput when there is none. A log dated in the future is 0 s old.
func sessionOutputAge(dir string, now time.Time) int64 {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return NoSessionOutput
	}
	var newest time.Time
	for _, e := range ents {
		if !e.Type().IsRegular() || !strings.HasSuffix(e.Name(), sessionLogExt) {
			continue
		}
		fi, err := e.Info()
		if err != nil || fi.Size() == 0 {
			continue
		}
		if t := fi.ModTime(); t.After(newest) {
			newest = t
		}
	}
	if newest.IsZero() {
		return NoSessionOutput
	}
	return min(int64(max(now.Sub(newest), 0)/time.Second), maxSessionOutputAge)
}

func readStats() (Stats, error) {
	var st Stats
	var err error
	if st.CPU, err = readCPU(); err != nil {
		return Stats{}, err
	}
	if st.MemTotal, st.MemAvailable, err = readMeminfo(); err != nil {
		return Stats{}, err
	}
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return Stats{}, err
	}
	if _, err := fmt.Sscan(string(b), &st.Load1, &st.Load5, &st.Load15); err != nil {
		return Stats{}, fmt.Errorf("/proc/loadavg: %w", err)
	}
	if st.Root, err = diskUsage("/"); err != nil {
		return Stats{}, err
	}
	if st.Home, err = diskUsage("/root"); err != nil {
		return Stats{}, err
	}
	if st.Uptime, err = readUptime(); err != nil {
		return Stats{}, err
	}
	if st.SSH, err = readSSHConns(); err != nil {
		return Stats{}, err
	}
	return st, nil
}

// readSSHConns counts the established TCP connections to local port 22.
func readSSHConns() (*SSHConns, error) {
	c := &SSHConns{}
	for _, file := range []string{"tcp", "tcp6"} {
		b, err := os.ReadFile("/proc/net/" + file)
		if os.IsNotExist(err) {
			continue // no IPv6
		}
		if err != nil {
			return nil, err
		}
		countSSH(c, b)
	}
	return c, nil
}

// countSSH adds the established connections to local port 22 of one
// /proc/net/tcp{,6} table to c, keeping the first MaxSSHPeers remote ends.
func countSSH(c *SSHConns, b []byte) {
	for i, line := range bytes.Split(b, []byte("\n")) {
		fl := strings.Fields(string(line))
		if i == 0 || len(fl) < 4 || fl[3] != tcpEstablished {
			continue
		}
		_, lport, ok := parseHexAddr(fl[1])
		raddr, rport, rok := parseHexAddr(fl[2])
		if !ok || !rok || lport != sshPort {
			continue
		}
		c.Count++
		if len(c.Peers) < MaxSSHPeers {
			c.Peers = append(c.Peers, netip.AddrPortFrom(raddr, uint16(rport)).String())
		}
	}
}

func readCPU() (CPUTimes, error) {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return CPUTimes{}, err
	}
	defer f.Close()
	line, err := bufio.NewReader(f).ReadString('\n')
	if err != nil {
		return CPUTimes{}, fmt.Errorf("/proc/stat: %w", err)
	}
	fl := strings.Fields(line)
	if len(fl) < 9 || fl[0] != "cpu" {
		return CPUTimes{}, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	var v [8]uint64
	for i := range v {
		if v[i], err = strconv.ParseUint(fl[i+1], 10, 64); err != nil {
			return CPUTimes{}, fmt.Errorf("/proc/stat: %w", err)
		}
	}
	return CPUTimes{User: v[0], Nice: v[1], System: v[2], Idle: v[3], IOWait: v[4], IRQ: v[5], SoftIRQ: v[6], Steal: v[7]}, nil
}

func readMeminfo() (total, avail uint64, err error) {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, 0, err
	}
	for line := range strings.Lines(string(b)) {
		fl := strings.Fields(line)
		if len(fl) < 2 {
			continue
		}
		var dst *uint64
		switch fl[0] {
		case "MemTotal:":
			dst = &total
		case "MemAvailable:":
			dst = &avail
		default:
			continue
		}
		kb, err := strconv.ParseUint(fl[1], 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("/proc/meminfo: %w", err)
		}
		*dst = kb * 1024
	}
	if total == 0 {
		return 0, 0, fmt.Errorf("/proc/meminfo: no MemTotal")
	}
	return total, min(avail, total), nil
}

func diskUsage(p string) (DiskUsage, error) {
	var fs unix.Statfs_t
	if err := unix.Statfs(p, &fs); err != nil {
		return DiskUsage{}, fmt.Errorf("statfs %s: %w", p, err)
	}
	bs := uint64(fs.Bsize)
	return DiskUsage{Total: fs.Blocks * bs, Used: (fs.Blocks - min(fs.Bfree, fs.Blocks)) * bs}, nil
}

// Socket states in /proc/net/*.
const (
	tcpEstablished = "01"
	tcpListen      = "0A"
	udpClose       = "07" // an unconnected UDP socket: bound, receiving
	sshPort        = 22
)

type socketEntry struct {
	proto string
	addr  netip.Addr
	port  int
	inode uint64
}

// parseProcNet parses one /proc/net/{tcp,tcp6,udp,udp6} table, keeping the
// sockets in state want.
func parseProcNet(b []byte, proto, want string) []socketEntry {
	var out []socketEntry
	for i, line := range bytes.Split(b, []byte("\n")) {
		fl := strings.Fields(string(line))
		if i == 0 || len(fl) < 10 || fl[3] != want {
			continue
		}
		addr, port, ok := parseHexAddr(fl[1])
		inode, err := strconv.ParseUint(fl[9], 10, 64)
		if !ok || err != nil {
			continue
		}
		out = append(out, socketEntry{proto, addr, port, inode})
	}
	return out
}

// parseHexAddr parses "0100007F:1F90": the address as 32-bit words in host
// (little-endian) order, the port big-endian.
func parseHexAddr(s string) (netip.Addr, int, bool) {
	a, p, ok := strings.Cut(s, ":")
	if !ok {
		return netip.Addr{}, 0, false
	}
	raw, err := hex.DecodeString(a)
	port, perr := strconv.ParseUint(p, 16, 16)
	if err != nil || perr != nil || (len(raw) != 4 && len(raw) != 16) {
		return netip.Addr{}, 0, false
	}
	for w := 0; w < len(raw); w += 4 {
		raw[w], raw[w+1], raw[w+2], raw[w+3] = raw[w+3], raw[w+2], raw[w+1], raw[w]
	}
	addr, _ := netip.AddrFromSlice(raw)
	return addr.Unmap(), int(port), true
}

// socketOwners maps socket inodes to the first process holding them.
func socketOwners(want map[uint64]bool) map[uint64]int {
	owners := map[uint64]int{}
	pids, _ := filepath.Glob("/proc/[0-9]*")
	for _, dir := range pids {
		pid, err := strconv.Atoi(filepath.Base(dir))
		if err != nil {
			continue
		}
		fds, err := os.ReadDir(dir + "/fd")
		if err != nil {
			continue
		}
		for _, fd := range fds {
			l, err := os.Readlink(dir + "/fd/" + fd.Name())
			if err != nil || !strings.HasPrefix(l, "socket:[") {
				continue
			}
			ino, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]"), 10, 64)
			if err == nil && want[ino] {
				if _, seen := owners[ino]; !seen {
					owners[ino] = pid
				}
			}
		}
	}
	return owners
}

// listPorts lists listening TCP and bound UDP sockets with their owners.
func listPorts() ([]Port, error) {
	var socks []socketEntry
	for _, t := range []struct{ file, proto, state string }{
		{"tcp", "tcp", tcpListen}, {"tcp6", "tcp", tcpListen}, {"udp", "udp", udpClose}, {"udp6", "udp", udpClose},
	} {
		b, err := os.ReadFile("/proc/net/" + t.file)
		if os.IsNotExist(err) {
			continue // no IPv6
		}
		if err != nil {
			return nil, err
		}
		socks = append(socks, parseProcNet(b, t.proto, t.state)...)
	}
	want := map[uint64]bool{}
	for _, s := range socks {
		want[s.inode] = true
	}
	owners := socketOwners(want)
	ports := make([]Port, 0, len(socks))
	for _, s := range socks {
		p := Port{Proto: s.proto, Addr: s.addr.String(), Port: s.port}
		if pid, ok := owners[s.inode]; ok && s.inode != 0 {
			p.PID = pid
			if comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); err == nil {
				p.Process = strings.TrimSpace(string(comm))
			}
		}
		ports = append(ports, p)
	}
	slices.SortFunc(ports, func(a, b Port) int {
		return cmp.Or(cmp.Compare(a.Proto, b.Proto), cmp.Compare(a.Port, b.Port), cmp.Compare(a.Addr, b.Addr))
	})
	return ports, nil
}

// writePorts sends the port list as JSON in output frames: it may exceed a
// control frame.
func writePorts(fw *frameWriter) error {
	ports, err := listPorts()
	if err != nil {
		return err
	}
	b, err := json.Marshal(ports)
	if err != nil {
		return err
	}
	out := newOutputWriter(fw)
	if _, err := out.Write(b); err != nil {
		return err
	}
	return out.Flush()
}
