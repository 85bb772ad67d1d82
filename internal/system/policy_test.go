package system_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// spawners start a process without os/exec; they are held to the same rule.
var spawners = map[string]map[string]bool{
	"os":                    {"StartProcess": true},
	"syscall":               {"ForkExec": true, "StartProcess": true, "Exec": true},
	"golang.org/x/sys/unix": {"Exec": true},
}

// replacesSelf may call exec(2) to become another program: banger-agent as
// the guest's init hands PID 1 to systemd. It spawns nothing on the host.
var replacesSelf = map[string]bool{"internal/agentinit/": true}

// guestSide are the files of banger-agent's server, which runs inside the
// guest and whose job is to start the user's commands there (exec,
// sessions, poweroff); no host process runs this code. The host side of
// internal/agent (client.go and the shared framing) stays under the rule.
func guestSide(rel string) bool {
	if !strings.HasPrefix(rel, "internal/agent/") {
		return false
	}
	base := strings.TrimPrefix(rel, "internal/agent/")
	return base == "server.go" || base == "exec_linux.go" || strings.HasPrefix(base, "session")
}

// Only internal/system may import os/exec or otherwise start a process:
// every exec'd binary goes through the Runner seam. The e2e harness drives
// the built binaries from outside (ip netns exec, ssh) and is exempt; it
// runs nothing of banger in-process.
func TestOnlySystemStartsProcesses(t *testing.T) {
	root := "../.."
	files := 0
	err := filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == "testdata") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") {
			return nil
		}
		files++
		rel, _ := filepath.Rel(root, path)
		if strings.HasPrefix(rel, "internal/system/") || strings.HasPrefix(rel, "test/e2e/") || guestSide(rel) {
			return nil
		}
		fset := token.NewFileSet()
		f, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			return err
		}
		names := map[string]string{} // local name → import path
		for _, imp := range f.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			if p == "os/exec" {
				t.Errorf("%s imports os/exec; use internal/system.Runner", rel)
			}
			local := p[strings.LastIndex(p, "/")+1:]
			if imp.Name != nil {
				local = imp.Name.Name
			}
			names[local] = p
		}
		ast.Inspect(f, func(n ast.Node) bool {
			sel, ok := n.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			id, ok := sel.X.(*ast.Ident)
			if !ok {
				return true
			}
			pkg := names[id.Name]
			if !spawners[pkg][sel.Sel.Name] {
				return true
			}
			if sel.Sel.Name == "Exec" && allowedSelfExec(rel) {
				return true
			}
			t.Errorf("%s: %s.%s starts a process; use internal/system.Runner", fset.Position(sel.Pos()), pkg, sel.Sel.Name)
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// A walk from the wrong directory would find nothing and pass.
	if files < 100 {
		t.Fatalf("walked only %d Go files from %s; the policy checked nothing", files, root)
	}
}

func allowedSelfExec(rel string) bool {
	for p := range replacesSelf {
		if strings.HasPrefix(rel, p) {
			return true
		}
	}
	return false
}
