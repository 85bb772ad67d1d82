//go:build e2e

package e2e

import (
	"encoding/json"
	"strings"
	"testing"
)

// poolTapPrefix names banger's pooled TAPs (hostnet.PoolTapPrefix).
const poolTapPrefix = "bgr-p"

// tapPool is `daemon status --json`'s tap_pool: pooled TAP → holding VM ("" idle).
func tapPool(t *testing.T) map[string]string {
	t.Helper()
	var st struct {
		TapPool []struct{ Name, VM string } `json:"tap_pool"`
	}
	out := must(t, "daemon", "status", "--json")
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("daemon status: %v\n%s", err, out)
	}
	m := map[string]string{}
	for _, p := range st.TapPool {
		m[p.Name] = p.VM
	}
	return m
}

// assertTapReleased checks that a TAP a VM held is either gone or back in
// the pool: a pooled name, held by no row (or by another VM, reused), and if
// idle then down and without a guard chain.
func assertTapReleased(t *testing.T, tap, vmName string) {
	t.Helper()
	if tap == "" {
		return
	}
	out, err := run("ip", "-n", E.ns, "-o", "link", "show", tap)
	if err != nil {
		return // deleted
	}
	if !strings.HasPrefix(tap, poolTapPrefix) {
		t.Errorf("non-pooled tap %s still exists: %s", tap, out)
		return
	}
	holder, ok := tapPool(t)[tap]
	switch {
	case !ok:
		t.Errorf("tap %s exists but the daemon does not list it in its pool: %s", tap, out)
	case holder == vmName:
		t.Errorf("tap %s still held by %s", tap, vmName)
	case holder == "":
		assertPoolTapIdle(t, tap, out)
	}
}

// assertPoolTapIdle: an idle pooled TAP is down and has no guard chain.
func assertPoolTapIdle(t *testing.T, tap, linkLine string) {
	t.Helper()
	if i, j := strings.IndexByte(linkLine, '<'), strings.IndexByte(linkLine, '>'); i >= 0 && j > i {
		for _, f := range strings.Split(linkLine[i+1:j], ",") {
			if f == "UP" {
				t.Errorf("idle pooled tap %s is up: %s", tap, linkLine)
			}
		}
	}
	rules, _ := run("ip", "netns", "exec", E.ns, "nft", "list", "ruleset")
	if strings.Contains(rules, "guard-"+tap+" ") || strings.Contains(rules, `"`+tap+`"`) {
		t.Errorf("idle pooled tap %s still has rules:\n%s", tap, rules)
	}
}

// assertPoolIdle checks every pooled TAP that exists is idle (no VM holds
// it), down and without rules: what may remain once every VM is deleted.
func assertPoolIdle(t *testing.T) {
	t.Helper()
	for tap, holder := range tapPool(t) {
		if holder != "" {
			t.Errorf("pooled tap %s held by %s after every VM was deleted", tap, holder)
			continue
		}
		out, err := run("ip", "-n", E.ns, "-o", "link", "show", tap)
		if err != nil {
			t.Errorf("pooled tap %s listed but missing: %v", tap, err)
			continue
		}
		assertPoolTapIdle(t, tap, out)
	}
}
