package guest

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/banger-dev/banger/internal/api"
)

// ErrHostKeyMismatch: the guest presented a key other than the pinned one.
var ErrHostKeyMismatch = errors.New("host key mismatch")

// KnownHosts is banger's own known_hosts file (never ~/.ssh/known_hosts):
// 0600 in a 0700 directory, in OpenSSH's format so `ssh -o
// UserKnownHostsFile=...` reads the same pins. Hosts are written as the guest
// address normalised by knownhosts.Normalize ("10.0.0.2", "[10.0.0.2]:2222").
type KnownHosts struct {
	path string
	mu   sync.Mutex // serialises read-modify-write within this process
	log  *slog.Logger
}

// OpenKnownHosts prepares path (creating its 0700 directory and an empty 0600
// file when missing, tightening the file's mode when it is looser).
func OpenKnownHosts(path string) (*KnownHosts, error) {
	if err := ensurePrivateDir(filepath.Dir(path)); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("known_hosts: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("known_hosts: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("known_hosts %s: not a regular file: %w", path, api.ErrInvalid)
	}
	if st.Mode().Perm() != 0o600 {
		if err := f.Chmod(0o600); err != nil {
			return nil, fmt.Errorf("known_hosts: %w", err)
		}
	}
	return &KnownHosts{path: path, log: slog.New(slog.DiscardHandler)}, nil
}

// SetLogger sets where warnings about corrupt lines go (discarded by default;
// the Pool passes its own logger when it dials).
func (k *KnownHosts) SetLogger(log *slog.Logger) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.log = log
}

// Path is the file's location (for `ssh -o UserKnownHostsFile=`).
func (k *KnownHosts) Path() string { return k.path }

// Pin replaces any pin for host with key. host may be a comma-separated list
// of names for the same guest ("10.0.0.2,dev.vm").
func (k *KnownHosts) Pin(host string, key ssh.PublicKey) error {
	hosts, err := normalizeHosts(strings.Split(host, ","))
	if err != nil {
		return err
	}
	if key == nil {
		return fmt.Errorf("pin %s: nil key: %w", host, api.ErrInvalid)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	lines, err := k.load(k.log)
	if err != nil {
		return err
	}
	lines = removeHosts(lines, hosts)
	lines = append(lines, khLine{raw: knownhosts.Line(hosts, key)})
	return k.store(lines)
}

// Remove drops every pin for hosts (vm delete). Other names on a shared line
// and lines banger cannot parse are kept as they are.
func (k *KnownHosts) Remove(hosts ...string) error {
	norm, err := normalizeHosts(hosts)
	if err != nil {
		return err
	}
	if len(norm) == 0 {
		return nil
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	lines, err := k.load(k.log)
	if err != nil {
		return err
	}
	kept := removeHosts(lines, norm)
	if len(kept) == len(lines) && !changed(lines, kept) {
		return nil
	}
	return k.store(kept)
}

// Keys returns the keys pinned for host (for display and tests).
func (k *KnownHosts) Keys(host string) ([]ssh.PublicKey, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	lines, err := k.load(k.log)
	if err != nil {
		return nil, err
	}
	return keysFor(lines, knownhosts.Normalize(host)), nil
}

// Callback is trust-on-first-use: an unknown host is pinned and accepted; a
// known host presenting any other key is refused with ErrHostKeyMismatch.
func (k *KnownHosts) Callback() ssh.HostKeyCallback {
	return k.callback(nil)
}

func (k *KnownHosts) callback(log *slog.Logger) ssh.HostKeyCallback {
	return func(hostname string, remote net.Addr, key ssh.PublicKey) error {
		k.mu.Lock()
		defer k.mu.Unlock()
		if log == nil {
			log = k.log
		}
		names := []string{knownhosts.Normalize(hostname)}
		// Dialled by name: the pin made under the IP counts too.
		if ta, ok := remote.(*net.TCPAddr); ok {
			if ip := knownhosts.Normalize(ta.String()); ip != names[0] {
				names = append(names, ip)
			}
		}
		lines, err := k.load(log)
		if err != nil {
			return err
		}
		for _, l := range lines {
			if l.marker == "revoked" && keysEqual(l.key, key) {
				return fmt.Errorf("host key %s for %s is marked @revoked in %s", ssh.FingerprintSHA256(key), names[0], k.path)
			}
		}
		var want []ssh.PublicKey
		for _, n := range names {
			want = append(want, keysFor(lines, n)...)
		}
		for _, w := range want {
			if keysEqual(w, key) {
				return nil
			}
		}
		if len(want) > 0 {
			pinned := make([]string, len(want))
			for i, w := range want {
				pinned[i] = w.Type() + " " + ssh.FingerprintSHA256(w)
			}
			return fmt.Errorf("%w for %s: it presented %s %s but %s pins %s: possible MITM attack (or the VM was recreated without dropping its pin)",
				ErrHostKeyMismatch, names[0], key.Type(), ssh.FingerprintSHA256(key), k.path, strings.Join(pinned, ", "))
		}
		if err := k.appendLine(knownhosts.Line(names, key)); err != nil {
			return fmt.Errorf("pin host key for %s: %w", names[0], err)
		}
		log.Info("pinned guest host key on first use", "host", names[0], "fingerprint", ssh.FingerprintSHA256(key))
		return nil
	}
}

// HostKeyAlgorithms restricts negotiation to the types pinned for addr, so a
// guest that also has (say) an ECDSA key is not refused because the client
// preferred that type. Unknown hosts prefer ed25519.
func (k *KnownHosts) HostKeyAlgorithms(addr string) []string {
	keys, err := k.Keys(addr)
	if err != nil || len(keys) == 0 {
		return []string{ssh.KeyAlgoED25519, ssh.KeyAlgoECDSA256, ssh.KeyAlgoECDSA384, ssh.KeyAlgoECDSA521, ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256}
	}
	var algos []string
	seen := map[string]bool{}
	for _, key := range keys {
		for _, a := range algosFor(key.Type()) {
			if !seen[a] {
				seen[a] = true
				algos = append(algos, a)
			}
		}
	}
	return algos
}

func algosFor(keyType string) []string {
	if keyType == ssh.KeyAlgoRSA {
		return []string{ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256}
	}
	return []string{keyType}
}

// khLine is one line of the file: a parsed entry, or raw text kept verbatim
// (comments, blanks, and lines we could not parse).
type khLine struct {
	raw     string
	entry   bool
	marker  string
	hosts   []string
	key     ssh.PublicKey
	comment string
}

// parseKnownHostsLine parses one line (without its newline). A blank or
// comment line is returned with entry=false and no error.
func parseKnownHostsLine(line string) (khLine, error) {
	l := khLine{raw: line}
	t := strings.TrimSpace(line)
	if t == "" || t[0] == '#' {
		return l, nil
	}
	if strings.ContainsAny(line, "\n\r\x00") {
		return l, errors.New("control character in line")
	}
	marker, hosts, key, comment, rest, err := ssh.ParseKnownHosts([]byte(line))
	if err != nil {
		return l, err
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return l, errors.New("trailing data")
	}
	if len(hosts) == 0 {
		return l, errors.New("no host patterns")
	}
	for _, h := range hosts {
		if h == "" || h == "!" {
			return l, errors.New("empty host pattern")
		}
	}
	if marker != "" && marker != "revoked" && marker != "cert-authority" {
		return l, fmt.Errorf("unknown marker @%s", marker)
	}
	l.entry, l.marker, l.hosts, l.key, l.comment = true, marker, hosts, key, comment
	return l, nil
}

// format renders an entry; used only for entries whose hosts we edited.
func (l khLine) format() string {
	var b strings.Builder
	if l.marker != "" {
		b.WriteString("@" + l.marker + " ")
	}
	b.WriteString(strings.Join(l.hosts, ","))
	b.WriteByte(' ')
	b.WriteString(strings.TrimSpace(string(ssh.MarshalAuthorizedKey(l.key))))
	if l.comment != "" {
		b.WriteString(" " + l.comment)
	}
	return b.String()
}

// load reads the file; corrupt lines are kept raw and warned about rather
// than failing every dial.
func (k *KnownHosts) load(log *slog.Logger) ([]khLine, error) {
	b, err := os.ReadFile(k.path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("known_hosts: %w", err)
	}
	return parseKnownHosts(b, k.path, log), nil
}

func parseKnownHosts(b []byte, path string, log *slog.Logger) []khLine {
	text := strings.TrimSuffix(string(b), "\n")
	if text == "" {
		return nil
	}
	var lines []khLine
	for i, s := range strings.Split(text, "\n") {
		l, err := parseKnownHostsLine(strings.TrimSuffix(s, "\r"))
		if err != nil {
			if log != nil {
				log.Warn("ignoring corrupt known_hosts line", "file", path, "line", i+1, "err", err)
			}
			l = khLine{raw: s}
		}
		lines = append(lines, l)
	}
	return lines
}

func (k *KnownHosts) store(lines []khLine) error {
	var b strings.Builder
	for _, l := range lines {
		b.WriteString(l.raw)
		b.WriteByte('\n')
	}
	return writeFileAtomic(k.path, []byte(b.String()), 0o600)
}

// appendLine adds one line in place, the way OpenSSH's accept-new does, so a
// concurrent OpenSSH writer is not undone by a rename.
func (k *KnownHosts) appendLine(line string) error {
	f, err := os.OpenFile(k.path, os.O_RDWR|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if n := st.Size(); n > 0 {
		last := make([]byte, 1)
		if _, err := f.ReadAt(last, n-1); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		if last[0] != '\n' {
			line = "\n" + line
		}
	}
	if _, err := f.WriteString(line + "\n"); err != nil {
		return err
	}
	return f.Sync()
}

// keysFor returns the keys of plain (non-marker) entries that match host.
func keysFor(lines []khLine, host string) []ssh.PublicKey {
	var out []ssh.PublicKey
	for _, l := range lines {
		if l.entry && l.marker == "" && matchHostPatterns(l.hosts, host) {
			out = append(out, l.key)
		}
	}
	return out
}

// removeHosts drops hosts from every plain entry, deleting entries that are
// left without names.
func removeHosts(lines []khLine, hosts []string) []khLine {
	out := make([]khLine, 0, len(lines))
	for _, l := range lines {
		if !l.entry || l.marker != "" {
			out = append(out, l)
			continue
		}
		var keep []string
		for _, p := range l.hosts {
			drop := false
			for _, h := range hosts {
				if strings.EqualFold(p, h) || (strings.HasPrefix(p, "|1|") && matchHashed(p, h)) {
					drop = true
					break
				}
			}
			if !drop {
				keep = append(keep, p)
			}
		}
		switch {
		case len(keep) == len(l.hosts):
			out = append(out, l)
		case len(keep) > 0:
			l.hosts = keep
			l.raw = l.format()
			out = append(out, l)
		}
	}
	return out
}

func changed(a, b []khLine) bool {
	for i := range a {
		if a[i].raw != b[i].raw {
			return true
		}
	}
	return false
}

// matchHostPatterns follows OpenSSH: a negated match wins; otherwise any
// positive match (exact, hashed or wildcard) accepts.
func matchHostPatterns(patterns []string, host string) bool {
	matched := false
	for _, p := range patterns {
		neg := strings.HasPrefix(p, "!")
		if neg {
			p = p[1:]
		}
		var ok bool
		switch {
		case strings.HasPrefix(p, "|1|"):
			ok = matchHashed(p, host)
		case strings.ContainsAny(p, "*?"):
			ok = wildcardMatch(strings.ToLower(p), strings.ToLower(host))
		default:
			ok = strings.EqualFold(p, host)
		}
		if ok && neg {
			return false
		}
		matched = matched || ok
	}
	return matched
}

// matchHashed checks a "|1|salt|hash" pattern (HMAC-SHA1 of the host).
func matchHashed(p, host string) bool {
	parts := strings.Split(p, "|")
	if len(parts) != 4 || parts[1] != "1" {
		return false
	}
	salt, err := base64.StdEncoding.DecodeString(parts[2])
	if err != nil {
		return false
	}
	want, err := base64.StdEncoding.DecodeString(parts[3])
	if err != nil {
		return false
	}
	mac := hmac.New(sha1.New, salt)
	mac.Write([]byte(host))
	return hmac.Equal(mac.Sum(nil), want)
}

// wildcardMatch matches '*' and '?' in O(len(p)*len(s)) worst case.
func wildcardMatch(p, s string) bool {
	pi, si := 0, 0
	star, mark := -1, 0
	for si < len(s) {
		switch {
		case pi < len(p) && (p[pi] == '?' || p[pi] == s[si]):
			pi++
			si++
		case pi < len(p) && p[pi] == '*':
			star, mark = pi, si
			pi++
		case star >= 0:
			pi = star + 1
			mark++
			si = mark
		default:
			return false
		}
	}
	for pi < len(p) && p[pi] == '*' {
		pi++
	}
	return pi == len(p)
}

func keysEqual(a, b ssh.PublicKey) bool {
	return a != nil && b != nil && bytes.Equal(a.Marshal(), b.Marshal())
}

// normalizeHosts validates names before they reach the file: a newline,
// space or comma in a name would forge extra entries or patterns.
func normalizeHosts(hosts []string) ([]string, error) {
	var out []string
	for _, h := range hosts {
		if h == "" || strings.ContainsAny(h, ",*?!|@#") || strings.IndexFunc(h, func(r rune) bool { return r <= ' ' || r == 0x7f }) >= 0 {
			return nil, fmt.Errorf("known_hosts host %q: %w", h, api.ErrInvalid)
		}
		out = append(out, knownhosts.Normalize(h))
	}
	return out, nil
}
