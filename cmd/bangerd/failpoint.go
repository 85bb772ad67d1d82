package main

import (
	"fmt"
	"log/slog"
	"os"
	"strings"
	"syscall"
)

// envFailpoint names the failure-injection setting, read only here: the
// value "kill-after:<step>" makes bangerd SIGKILL itself right after the
// named create/start step of any VM succeeded (test/e2e/crash_test.go uses
// it to prove reconcile leaves nothing behind). Unset in production.
const envFailpoint = "BANGER_FAILPOINT"

// failpoint parses the BANGER_FAILPOINT value into a vm.Deps.AfterStep hook
// (nil when empty); kill is how the process dies.
func failpoint(val string, log *slog.Logger, kill func()) (func(step string), error) {
	if val == "" {
		return nil, nil
	}
	target, ok := strings.CutPrefix(val, "kill-after:")
	if !ok || target == "" {
		return nil, fmt.Errorf("%s=%q: want kill-after:<step>", envFailpoint, val)
	}
	log.Warn("failpoint armed: the daemon will kill itself", "after_step", target)
	return func(step string) {
		if step == target {
			log.Warn("failpoint: killing the daemon", "after_step", step)
			kill()
		}
	}, nil
}

func killSelf() { _ = syscall.Kill(os.Getpid(), syscall.SIGKILL) }
