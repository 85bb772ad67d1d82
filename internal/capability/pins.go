package capability

// The opencode server banger installs by default: the linux-x64 binary
// package that the `opencode-ai` npm package depends on, pinned with the
// integrity npm publishes for it (`npm view opencode-linux-x64@VERSION
// dist.integrity`), so no registry or mirror can substitute other bytes.
// `--cap opencode@VERSION` takes another version, verified against the
// integrity its registry publishes.
const (
	OpencodePackage   = "opencode-linux-x64"
	OpencodeVersion   = "1.18.33"
	OpencodeIntegrity = "sha512-q/t/3p2CTxOT9y2kvjesb/LZab2+1eqlhhWA02Be6mjTtmYtNBcBsrI5yDo4Fw7ZSPBW2oyMIGMNRqiKQjiAWw=="
	// OpencodeMember is the binary inside the package's tarball.
	OpencodeMember = "package/bin/opencode"
	// OpencodePort is where the guest's opencode server listens.
	OpencodePort = 4096
)
