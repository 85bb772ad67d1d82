package cli

import (
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// Every command group, present and future (the tree is walked, not listed),
// fails on an argument that is none of its commands, on one line naming the
// group; a bare group prints its help and exits 0.
func TestUnknownCommandsFail(t *testing.T) {
	dir := t.TempDir()
	var groups []*cobra.Command
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.HasSubCommands() {
			groups = append(groups, c)
		}
		for _, s := range c.Commands() {
			walk(s)
		}
	}
	walk((&app{}).rootCmd())
	if len(groups) < 5 {
		t.Fatalf("walked %d command groups; the tree walk is broken", len(groups))
	}
	for _, g := range groups {
		path := strings.Fields(g.CommandPath())[1:] // without "banger"
		name := g.CommandPath()
		t.Run(name, func(t *testing.T) {
			code, out, errs := run(t, dir, "", append(path, "bogus")...)
			want := `banger: unknown command "bogus" for "` + name + `"`
			if code == 0 || !strings.HasPrefix(errs, want) || strings.Count(errs, "\n") != 1 || out != "" {
				t.Errorf("%s bogus: exit %d, stdout %q, stderr %q; want non-zero and %s",
					name, code, out, errs, want)
			}
			code, out, errs = run(t, dir, "", path...)
			if code != 0 || errs != "" || !strings.Contains(out, "Available Commands:") ||
				!strings.Contains(out, "Usage:\n  "+name+" [command]\n") {
				t.Errorf("bare %s: exit %d, stdout %q, stderr %q; want its help and 0", name, code, out, errs)
			}
		})
	}
}

func TestUnknownCommandSuggestsAndFlagsFail(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"vm", "sesion", "list"}, `banger: unknown command "sesion" for "banger vm"; did you mean "session"?`},
		{[]string{"kernel", "imprt"}, `banger: unknown command "imprt" for "banger kernel"; did you mean "import"?`},
		{[]string{"vmm"}, `banger: unknown command "vmm" for "banger"; did you mean "vm"?`},
		{[]string{"vm", "list", "--bogus"}, "banger: unknown flag: --bogus"},
		{[]string{"vm", "--bogus"}, "banger: unknown flag: --bogus"},
	} {
		code, out, errs := run(t, dir, "", c.args...)
		if code == 0 || strings.TrimSpace(errs) != c.want || out != "" {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want non-zero and %q", c.args, code, out, errs, c.want)
		}
	}
}
