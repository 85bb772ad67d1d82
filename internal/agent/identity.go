package agent

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"time"
)

// Identity is what a restored guest must become.
type Identity struct {
	Hostname   string    `json:"hostname"`     // also /etc/hostname and the 127.0.1.1 line of /etc/hosts
	MachineID  string    `json:"machine_id"`   // 32 lower-case hex
	Interface  string    `json:"interface"`    // "eth0"
	MAC        string    `json:"mac"`          // unicast, set on Interface
	Address    string    `json:"address"`      // IPv4 CIDR, e.g. "172.16.0.5/24"
	Gateway    string    `json:"gateway"`      // IPv4, the default route
	HostKey    []byte    `json:"host_key"`     // OpenSSH ed25519 private key (PEM), ssh_host_ed25519_key
	HostKeyPub []byte    `json:"host_key_pub"` // its authorized_keys line, ssh_host_ed25519_key.pub
	Time       time.Time `json:"time"`         // host wall clock when sent; the guest steps its clock to it
	Seed       []byte    `json:"seed"`         // MinSeed..MaxSeed random bytes mixed into the kernel RNG (credited)
}

// LogValue keeps the private key and the seed out of logs.
func (id Identity) LogValue() slog.Value {
	return slog.GroupValue(slog.String("hostname", id.Hostname), slog.String("machine_id", id.MachineID),
		slog.String("interface", id.Interface), slog.String("mac", id.MAC), slog.String("address", id.Address),
		slog.String("gateway", id.Gateway), slog.Time("time", id.Time), slog.Int("seed_bytes", len(id.Seed)))
}

// Bounds of an Identity.
const (
	MinSeed       = 32
	MaxSeed       = 512
	maxHostKey    = 8 << 10
	maxHostKeyPub = 1 << 10
)

var (
	// ErrInvalidIdentity: an Identity field is malformed; nothing was changed.
	ErrInvalidIdentity = errors.New("invalid identity")
	// ErrAgentTooOld: the guest's agent predates the operation.
	ErrAgentTooOld = errors.New("guest agent too old")
)

// identityMinor is the protocol minor that brought the identity operation.
const identityMinor = 1

// validHostname is a VM name: ^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$
func validHostname(s string) bool {
	if len(s) < 1 || len(s) > 32 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// validIfname is a sane interface name: ^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$
func validIfname(s string) bool {
	if len(s) < 1 || len(s) > 15 || s[0] == '_' || s[0] == '.' || s[0] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-') {
			return false
		}
	}
	return true
}

// validMachineID is ^[0-9a-f]{32}$, not all zero.
func validMachineID(s string) bool {
	if len(s) != 32 || strings.Trim(s, "0") == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// identity is the checked form of an Identity.
type identity struct {
	Identity
	mac  net.HardwareAddr
	addr netip.Prefix
	gw   netip.Addr
}

// check validates every field; both ends run it, the agent before it
// changes anything.
func (id Identity) check() (identity, error) {
	bad := func(format string, args ...any) (identity, error) {
		return identity{}, fmt.Errorf("%w: %s", ErrInvalidIdentity, fmt.Sprintf(format, args...))
	}
	v := identity{Identity: id}
	if !validHostname(id.Hostname) {
		return bad("hostname %q: want 1-32 of a-z, 0-9 and inner '-'", token(id.Hostname, 64))
	}
	if !validMachineID(id.MachineID) {
		return bad("machine id %q: want 32 lower-case hex digits, not all zero", token(id.MachineID, 64))
	}
	if !validIfname(id.Interface) {
		return bad("interface %q: want 1-15 of A-Z, a-z, 0-9, '_', '.', '-'", token(id.Interface, 64))
	}
	mac, err := net.ParseMAC(id.MAC)
	if err != nil || len(mac) != 6 {
		return bad("mac %q: want 6 bytes like 02:00:ac:10:00:05", token(id.MAC, 64))
	}
	if mac[0]&1 != 0 || bytes.Equal(mac, make([]byte, 6)) {
		return bad("mac %s: not a unicast address", mac)
	}
	v.mac = mac
	addr, err := netip.ParsePrefix(id.Address)
	if err != nil || !addr.Addr().Is4() || addr.Bits() < 1 || addr.Bits() > 30 {
		return bad("address %q: want an IPv4 CIDR of /1 to /30", token(id.Address, 64))
	}
	a := addr.Addr()
	if a.IsUnspecified() || a.IsLoopback() || a.IsMulticast() || a.IsLinkLocalUnicast() || !hostOf(addr, a) {
		return bad("address %s: not a host address", addr)
	}
	v.addr = addr
	gw, err := netip.ParseAddr(id.Gateway)
	if err != nil || !gw.Is4() {
		return bad("gateway %q: want an IPv4 address", token(id.Gateway, 64))
	}
	if !addr.Contains(gw) || !hostOf(addr, gw) || gw == a {
		return bad("gateway %s: not another host of %s", gw, addr.Masked())
	}
	v.gw = gw
	if err := checkHostKey(id.HostKey, id.HostKeyPub); err != nil {
		return bad("%v", err)
	}
	if id.Time.IsZero() || id.Time.Year() < 2000 || id.Time.Year() > 2200 {
		return bad("time %s: out of range", id.Time.UTC().Format(time.RFC3339))
	}
	if len(id.Seed) < MinSeed || len(id.Seed) > MaxSeed {
		return bad("seed of %d bytes: want %d to %d", len(id.Seed), MinSeed, MaxSeed)
	}
	return v, nil
}

// hostOf reports whether a is neither the network nor the broadcast
// address of p.
func hostOf(p netip.Prefix, a netip.Addr) bool {
	b := a.As4()
	n := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	host := uint32(1)<<(32-p.Bits()) - 1
	return n&host != 0 && n&host != host
}

// checkHostKey parses key as an unencrypted OpenSSH ed25519 private key and
// pub as the line of its public half. The agent is a static binary in every
// image: these few lines of the one format sshd is given stand in for
// golang.org/x/crypto/ssh, which would add 2 MB to it.
func checkHostKey(key, pub []byte) error {
	if len(key) == 0 || len(key) > maxHostKey {
		return fmt.Errorf("host key of %d bytes: want 1 to %d", len(key), maxHostKey)
	}
	if len(pub) == 0 || len(pub) > maxHostKeyPub {
		return fmt.Errorf("host public key of %d bytes: want 1 to %d", len(pub), maxHostKeyPub)
	}
	pk, err := parseOpenSSHEd25519(key)
	if err != nil {
		return fmt.Errorf("host key: %w", err)
	}
	ppk, err := parseEd25519PubLine(pub)
	if err != nil {
		return fmt.Errorf("host public key: %w", err)
	}
	if !pk.Equal(ppk) {
		return errors.New("host public key does not match the private key")
	}
	return nil
}

const (
	sshEd25519      = "ssh-ed25519"
	openSSHKeyMagic = "openssh-key-v1\x00"
)

// sshReader reads the SSH wire encoding (RFC 4251): uint32 and
// length-prefixed strings; the first error sticks.
type sshReader struct {
	b   []byte
	err error
}

func (r *sshReader) uint32() uint32 {
	if r.err != nil || len(r.b) < 4 {
		r.fail()
		return 0
	}
	v := binary.BigEndian.Uint32(r.b)
	r.b = r.b[4:]
	return v
}

func (r *sshReader) string() []byte {
	n := r.uint32()
	if r.err != nil || uint64(n) > uint64(len(r.b)) {
		r.fail()
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *sshReader) fail() {
	if r.err == nil {
		r.err = errors.New("truncated")
	}
}

// ed25519Blob parses the public key blob: string "ssh-ed25519", string key.
func ed25519Blob(b []byte) (ed25519.PublicKey, error) {
	r := &sshReader{b: b}
	if typ := r.string(); r.err == nil && string(typ) != sshEd25519 {
		return nil, fmt.Errorf("key type %q is not %s", token(string(typ), 32), sshEd25519)
	}
	key := r.string()
	switch {
	case r.err != nil || len(r.b) != 0:
		return nil, errors.New("malformed public key blob")
	case len(key) != ed25519.PublicKeySize:
		return nil, fmt.Errorf("ed25519 public key of %d bytes", len(key))
	}
	return ed25519.PublicKey(key), nil
}

// parseOpenSSHEd25519 checks an "OPENSSH PRIVATE KEY" (PROTOCOL.key in
// OpenSSH) as ssh-keygen writes it for one unencrypted ed25519 key, and
// returns its public key. The private key must derive that public key.
func parseOpenSSHEd25519(pemBytes []byte) (ed25519.PublicKey, error) {
	block, rest := pem.Decode(pemBytes)
	if block == nil || block.Type != "OPENSSH PRIVATE KEY" || len(block.Headers) != 0 || len(bytes.TrimSpace(rest)) != 0 {
		return nil, errors.New("want one OPENSSH PRIVATE KEY block")
	}
	b, ok := bytes.CutPrefix(block.Bytes, []byte(openSSHKeyMagic))
	if !ok {
		return nil, errors.New("not an openssh-key-v1 key")
	}
	r := &sshReader{b: b}
	cipher, kdf, _, n := r.string(), r.string(), r.string(), r.uint32()
	if r.err == nil && (string(cipher) != "none" || string(kdf) != "none") {
		return nil, errors.New("encrypted (passphrase-protected) keys are not supported")
	}
	if r.err == nil && n != 1 {
		return nil, fmt.Errorf("%d keys, want 1", n)
	}
	blob, priv := r.string(), r.string()
	if r.err != nil || len(r.b) != 0 {
		return nil, errors.New("malformed openssh-key-v1 key")
	}
	pub, err := ed25519Blob(blob)
	if err != nil {
		return nil, err
	}
	// The private section: two equal check words, the key, a comment and
	// padding 1, 2, 3... to the cipher's block size (8 for "none").
	if len(priv)%8 != 0 {
		return nil, errors.New("private section not padded to 8 bytes")
	}
	pr := &sshReader{b: priv}
	c1, c2 := pr.uint32(), pr.uint32()
	typ, pub2, key, _ := pr.string(), pr.string(), pr.string(), pr.string()
	if pr.err != nil {
		return nil, errors.New("malformed private section")
	}
	if c1 != c2 {
		return nil, errors.New("check words differ (a wrong passphrase or a corrupt key)")
	}
	for i, c := range pr.b {
		if c != byte(i+1) {
			return nil, errors.New("bad padding in the private section")
		}
	}
	if string(typ) != sshEd25519 || !bytes.Equal(pub2, pub) || len(key) != ed25519.PrivateKeySize {
		return nil, errors.New("private section does not hold the ed25519 key of its header")
	}
	if derived := ed25519.NewKeyFromSeed(key[:ed25519.SeedSize]).Public().(ed25519.PublicKey); !derived.Equal(pub) || !bytes.Equal(key[ed25519.SeedSize:], pub) {
		return nil, errors.New("private key does not derive its public key")
	}
	return pub, nil
}

// parseEd25519PubLine parses "ssh-ed25519 <base64 blob> [comment]", one line
// with an optional line end, as ssh-keygen writes a .pub file.
func parseEd25519PubLine(line []byte) (ed25519.PublicKey, error) {
	line = bytes.TrimSuffix(line, []byte("\n"))
	for _, c := range line {
		if c < ' ' && c != '\t' || c == 0x7f {
			return nil, errors.New("want one line of printable text")
		}
	}
	f := strings.Fields(string(line))
	if len(f) < 2 || f[0] != sshEd25519 {
		return nil, fmt.Errorf("want %q, a base64 key and a comment", sshEd25519)
	}
	blob, err := base64.StdEncoding.DecodeString(f[1])
	if err != nil {
		return nil, errors.New("key is not base64")
	}
	return ed25519Blob(blob)
}

// Reidentify makes a guest restored from a snapshot a new machine: it steps
// the clock, reseeds the RNG, moves the network interface to the new MAC,
// address and default route, and rewrites the hostname, machine ID and SSH
// host key (sshd is made to use it). It returns once all of it is done; an
// error names the step that failed. An invalid id wraps ErrInvalidIdentity
// and is refused before it is sent; an agent without the operation wraps
// ErrAgentTooOld and is sent nothing. Give ctx some seconds: the agent waits
// up to 10 s for sshd to listen again. Every step is idempotent, so an
// identity whose call failed or timed out part-way may be sent again.
func (c *Client) Reidentify(ctx context.Context, id Identity) error {
	if _, err := id.check(); err != nil {
		return fmt.Errorf("agent %s: %w", opIdentity, err)
	}
	proto, _, _ := strings.Cut(c.version, " ")
	if major, minor, ok := parseVersion(proto); !ok || major != ProtoMajor || minor < identityMinor {
		return fmt.Errorf("agent %s: %w for identity (protocol %s)", opIdentity, ErrAgentTooOld, token(proto, 16))
	}
	cl, err := c.open(ctx, request{Op: opIdentity, Identity: &id})
	if err != nil {
		return err
	}
	defer cl.close()
	err = cl.result(nil, nil, nil)
	if err != nil && strings.Contains(err.Error(), fmt.Sprintf("unknown operation %q", opIdentity)) {
		return fmt.Errorf("agent %s: %w for identity (protocol %s)", opIdentity, ErrAgentTooOld, token(proto, 16))
	}
	return err
}

// CanReidentify reports whether the agent at the other end speaks the
// identity operation (protocol 1.1 on).
func (c *Client) CanReidentify() bool {
	proto, _, _ := strings.Cut(c.version, " ")
	major, minor, ok := parseVersion(proto)
	return ok && major == ProtoMajor && minor >= identityMinor
}
