package paths

import "path/filepath"

// SSHConfigFile is the banger-owned OpenSSH config that ~/.ssh/config Includes.
const SSHConfigFile = "config"

func (l Layout) SSHConfig() string { return filepath.Join(l.Root, SSHDir, SSHConfigFile) }
