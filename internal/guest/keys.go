// Package guest is banger's access to a running guest over SSH: the client
// key, per-VM host keys, banger's own known_hosts with pinning and
// trust-on-first-use, and a pool that keeps one connection per VM (a new
// connection costs ~1.2 s under TCG, a command over a kept one ~0.12 s).
package guest

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/crypto/ssh"

	"github.com/banger-dev/banger/internal/api"
)

// EnsureClientKey returns banger's client key at path, generating an ed25519
// key (OpenSSH PEM, 0600, parent dir 0700) on first use. A public key is kept
// next to it as path+".pub" so OpenSSH tooling can use the pair as is.
func EnsureClientKey(path string) (ssh.Signer, error) {
	if err := ensurePrivateDir(filepath.Dir(path)); err != nil {
		return nil, err
	}
	signer, err := readClientKey(path)
	if errors.Is(err, fs.ErrNotExist) {
		signer, err = createClientKey(path)
	}
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(path + ".pub"); errors.Is(err, fs.ErrNotExist) {
		if err := writeFileAtomic(path+".pub", AuthorizedKey(signer.PublicKey()), 0o644); err != nil {
			return nil, err
		}
	}
	return signer, nil
}

func readClientKey(path string) (ssh.Signer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	// OpenSSH refuses keys readable by others; keep ours usable with `ssh -i`.
	if st, err := os.Stat(path); err == nil && st.Mode().Perm()&0o077 != 0 {
		if err := os.Chmod(path, 0o600); err != nil {
			return nil, fmt.Errorf("client key %s: %w", path, err)
		}
	}
	signer, err := ssh.ParsePrivateKey(b)
	if err != nil {
		return nil, fmt.Errorf("client key %s: %w", path, err)
	}
	return signer, nil
}

func createClientKey(path string) (ssh.Signer, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate client key: %w", err)
	}
	blk, err := ssh.MarshalPrivateKey(priv, "banger")
	if err != nil {
		return nil, fmt.Errorf("marshal client key: %w", err)
	}
	tmp, err := writeTemp(filepath.Dir(path), pem.EncodeToMemory(blk), 0o600)
	if err != nil {
		return nil, err
	}
	defer os.Remove(tmp)
	// Link, not rename: a concurrent first use must not replace a key that
	// another process already handed out.
	if err := os.Link(tmp, path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return readClientKey(path)
		}
		return nil, fmt.Errorf("client key %s: %w", path, err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		return nil, fmt.Errorf("client key: %w", err)
	}
	return signer, nil
}

// NewHostKey makes a fresh ed25519 host key for one VM. banger delivers the
// private half to the guest itself and pins the public half before the first
// dial, so there is no trust-on-first-use window.
func NewHostKey() (priv []byte, pub ssh.PublicKey, err error) {
	edPub, edPriv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate host key: %w", err)
	}
	blk, err := ssh.MarshalPrivateKey(edPriv, "banger guest host key")
	if err != nil {
		return nil, nil, fmt.Errorf("marshal host key: %w", err)
	}
	pub, err = ssh.NewPublicKey(edPub)
	if err != nil {
		return nil, nil, fmt.Errorf("host public key: %w", err)
	}
	return pem.EncodeToMemory(blk), pub, nil
}

// AuthorizedKey renders pub as one authorized_keys line (newline included).
func AuthorizedKey(pub ssh.PublicKey) []byte {
	return ssh.MarshalAuthorizedKey(pub)
}

// ensurePrivateDir makes dir (0700) or checks that an existing one is ours
// alone: a key or pin file in a directory others can write could be swapped.
func ensurePrivateDir(dir string) error {
	st, err := os.Stat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("create %s: %w", dir, err)
		}
		return nil
	}
	if err != nil {
		return err
	}
	if !st.IsDir() {
		return fmt.Errorf("%s: not a directory: %w", dir, api.ErrInvalid)
	}
	if st.Mode().Perm()&0o077 == 0 {
		return nil
	}
	if st.Mode()&fs.ModeSticky != 0 || !ownedByUs(st) {
		return fmt.Errorf("%s is shared (mode %v); refusing to keep ssh keys there: %w", dir, st.Mode(), api.ErrPermission)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("chmod %s: %w", dir, err)
	}
	return nil
}

// writeTemp writes data to a new temporary file in dir with perm and syncs it.
func writeTemp(dir string, data []byte, perm os.FileMode) (string, error) {
	f, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return "", err
	}
	name := f.Name()
	err = f.Chmod(perm)
	if err == nil {
		_, err = f.Write(data)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(name)
		return "", fmt.Errorf("write %s: %w", name, err)
	}
	return name, nil
}

// writeFileAtomic replaces path with data (temp file + rename + dir sync), so a
// crash leaves either the old or the new content, never half of it.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	tmp, err := writeTemp(dir, data, perm)
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("replace %s: %w", path, err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}
