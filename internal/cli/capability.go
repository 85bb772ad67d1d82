package cli

import (
	"fmt"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/banger-dev/banger/internal/api"
)

// cap list; vm create --cap/--cap-env; the capability rows of `vm show`.

func (a *app) capCmd() *cobra.Command {
	c := &cobra.Command{Use: "cap", Short: "Capabilities a VM can be given at create (vm create --cap NAME)"}
	c.AddCommand(&cobra.Command{
		Use: "list", Aliases: []string{"ls"}, Short: "List capabilities, what each needs and what the host keeps cached for them", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var caps []api.Capability
			if err := a.call(cmd.Context(), api.MethodCapList, nil, &caps); err != nil {
				return err
			}
			if a.json {
				return a.printJSON(caps)
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tVERSION\tPORT\tSUMMARY")
			for _, c := range caps {
				port := "-"
				if c.Port != 0 {
					port = fmt.Sprint(c.Port)
				}
				version := c.Version
				if version == "" {
					version = "-"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", c.Name, version, port, c.Summary)
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			for _, c := range caps {
				for _, n := range c.Needs {
					fmt.Fprintf(a.stdout, "%s needs: %s\n", c.Name, n)
				}
				for _, e := range c.Cached {
					used := strings.Join(e.UsedBy, ",")
					if used == "" {
						used = "no VM"
					}
					fmt.Fprintf(a.stdout, "%s cached: %s@%s %s (%s), used by %s\n", c.Name, e.Package, e.Version, human(e.Size), e.Path, used)
				}
			}
			return nil
		},
	})
	return c
}

// capEnvFlag is --cap-env KEY=VALUE or KEY (the value from this process's
// environment, as `docker run -e KEY` does).
type capEnvFlag struct{ m *map[string]string }

func (f capEnvFlag) String() string { return "" }
func (f capEnvFlag) Type() string   { return "KEY[=VALUE]" }
func (f capEnvFlag) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if k == "" {
		return fmt.Errorf("want KEY=VALUE or KEY")
	}
	if !ok {
		if v, ok = os.LookupEnv(k); !ok {
			return fmt.Errorf("%s is not set in this shell (give KEY=VALUE)", k)
		}
	}
	if *f.m == nil {
		*f.m = map[string]string{}
	}
	(*f.m)[k] = v
	return nil
}

// capRows are a VM's capabilities for `vm show`.
func capRows(v api.VM) [][2]string {
	var rows [][2]string
	for _, c := range v.Capabilities {
		state := c.State
		if c.Error != "" {
			state += ": " + c.Error
		}
		name := "cap " + c.Name
		if c.Version != "" {
			name += "@" + c.Version
		}
		rows = append(rows, [2]string{name, state})
		if c.Connect != "" {
			rows = append(rows, [2]string{"  connect", c.Connect})
			if c.Port != 0 {
				rows = append(rows, [2]string{"  or", fmt.Sprintf("banger vm forward %s %d  (then http://127.0.0.1:%d)", v.Name, c.Port, c.Port)})
			}
		}
	}
	return rows
}
