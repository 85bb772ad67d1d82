package guest

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/system"
)

func hostileArgs() []string {
	return []string{
		"plain", "", " ", "a b", "'", "''", `"`, `\`, `\'`, "it's", `say "hi"`, "$(touch /tmp/pwned)",
		"`id`", "$HOME", "${x:-y}", "a;b", "a && b", "a || b", "a|b", "a&", "<in", ">out", "*", "?", "[a]",
		"{a,b}", "~", "~root", "!", "#not a comment", "x#y", "line1\nline2", "\n", "\t", "tab\there",
		"FOO=bar", "if", "then", "-n", "--", "é ü 日本", "\x01\x7f", "'\"'\"'", "%1", "a\\\nb",
	}
}

func TestShellQuoteParsesBack(t *testing.T) {
	args := hostileArgs()
	cmds, err := shParse(ShellQuote(append([]string{"argv"}, args...)))
	if err != nil {
		t.Fatal(err)
	}
	if len(cmds) != 1 {
		t.Fatalf("quoted args split into %d commands", len(cmds))
	}
	got := cmds[0].words[1:]
	if len(got) != len(args) {
		t.Fatalf("got %d words, want %d: %q", len(got), len(args), got)
	}
	for i := range args {
		if got[i] != args[i] {
			t.Errorf("arg %d: got %q want %q", i, got[i], args[i])
		}
	}
	for _, a := range []string{"plain", "-n", "/usr/bin/env", "a.b:c@d%e+f,g"} {
		if q := ShellQuote([]string{a}); q != a {
			t.Errorf("safe %q quoted as %q", a, q)
		}
	}
}

// TestShellQuoteRealShells round-trips through the shells a guest may have.
func TestShellQuoteRealShells(t *testing.T) {
	args := hostileArgs()
	for _, sh := range []string{"/bin/sh", "/bin/dash", "/bin/bash"} {
		if _, err := system.LookPath(sh); err != nil {
			continue
		}
		t.Run(sh, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			// The script is ShellQuote's own output: exactly what the remote shell gets.
			out, err := system.Exec{}.Run(ctx, sh, "-c", ShellQuote(append([]string{"printf", `%s\0`}, args...)))
			if err != nil {
				t.Fatal(err)
			}
			got := strings.Split(strings.TrimSuffix(string(out), "\x00"), "\x00")
			if len(got) != len(args) {
				t.Fatalf("got %d args, want %d: %q", len(got), len(args), got)
			}
			for i := range args {
				if got[i] != args[i] {
					t.Errorf("arg %d: got %q want %q", i, got[i], args[i])
				}
			}
			// In command position an assignment or reserved word stays a word:
			// the shell looks for a command of that name (127), not syntax.
			for _, first := range []string{"FOO=bar", "if", "!", "{", "time"} {
				_, err := system.Exec{}.Run(ctx, sh, "-c", ShellQuote([]string{first, "x"}))
				var ee *system.ExitError
				if !errors.As(err, &ee) || ee.Code != 127 {
					t.Errorf("%q in command position: %v, want exit 127", first, err)
				}
			}
		})
	}
}
