package cli

import (
	"fmt"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/rpc"
	"github.com/banger-dev/banger/internal/termsafe"
)

func (a *app) kernelCmd() *cobra.Command {
	c := &cobra.Command{Use: "kernel", Short: "Import and manage guest kernels"}
	var p api.KernelImportParams
	imp := &cobra.Command{
		Use:   "import (--debian | --deb FILE.deb | --vmlinux FILE [--initrd FILE | --modules DIR] [--config FILE]) [--name NAME]",
		Short: "Import a Debian cloud kernel and generate banger's initramfs",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			for _, f := range []*string{&p.Deb, &p.Vmlinux, &p.Initrd, &p.Modules, &p.Config} {
				if *f != "" {
					abs, err := filepath.Abs(*f)
					if err != nil {
						return err
					}
					*f = abs
				}
			}
			sv := a.newStageView("importing kernel")
			var k api.Kernel
			if err := a.call(cmd.Context(), api.MethodKernelImport, p, &k, rpc.WithEvents(sv.event)); err != nil {
				return err
			}
			sv.done()
			if a.json {
				return a.printJSON(k)
			}
			fmt.Fprintf(a.stdout, "kernel %s imported (%s, sha256 %s)\n", k.Name, termsafe.Field(k.Version), short(k.SHA256))
			return nil
		},
	}
	imp.Flags().BoolVar(&p.Debian, "debian", false, "download linux-image-cloud-amd64 with apt-get")
	imp.Flags().StringVar(&p.Deb, "deb", "", "import this kernel .deb")
	imp.Flags().StringVar(&p.Name, "name", "", "kernel name (default debian-cloud)")
	imp.Flags().StringVar(&p.Vmlinux, "vmlinux", "", "import this kernel image (bzImage or vmlinux); needs --name")
	imp.Flags().StringVar(&p.Initrd, "initrd", "", "with --vmlinux: use this initrd as is (it must follow banger's initramfs contract)")
	imp.Flags().StringVar(&p.Modules, "modules", "", "with --vmlinux: lib/modules/<version> directory for banger's generated initramfs")
	imp.Flags().StringVar(&p.Config, "config", "", "with --vmlinux: the kernel's build configuration (.config), kept so doctor and vm create --vmm can check it")
	list := &cobra.Command{
		Use: "list", Aliases: []string{"ls"}, Short: "List kernels", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var ks []api.Kernel
			if err := a.call(cmd.Context(), api.MethodKernelList, nil, &ks); err != nil {
				return err
			}
			if a.json {
				return a.printJSON(ks)
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tVERSION\tSOURCE\tSHA256\tCREATED")
			for _, k := range ks {
				// the version string comes from the kernel package (image bytes)
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", k.Name, termsafe.Field(k.Version), termsafe.Field(k.Source), short(k.SHA256), ago(k.CreatedAt))
			}
			return tw.Flush()
		},
	}
	c.AddCommand(imp, a.kernelPullCmd(), list, a.rmCmd("kernel", api.MethodKernelRm))
	return c
}

func short(s string) string {
	if len(s) > 12 {
		return s[:12]
	}
	return s
}

func (a *app) rmCmd(kind, method string) *cobra.Command {
	return &cobra.Command{
		Use: "rm NAME", Aliases: []string{"delete"}, Short: "Remove a " + kind + " (refused while a VM uses it)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := a.call(cmd.Context(), method, api.NameParams{Name: args[0]}, nil); err != nil {
				return err
			}
			if !a.json {
				fmt.Fprintf(a.stdout, "removed %s %s\n", kind, args[0])
			}
			return nil
		},
	}
}

func (a *app) imageCmd() *cobra.Command {
	c := &cobra.Command{Use: "image", Short: "Build and manage root images"}
	var p api.ImageBuildParams
	build := &cobra.Command{
		Use:   "build NAME",
		Short: "Build a Debian bookworm image (systemd, sshd, git, banger-agent) without mounting",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p.Name = args[0]
			if p.FromDir != "" {
				abs, err := filepath.Abs(p.FromDir)
				if err != nil {
					return err
				}
				p.FromDir = abs
			}
			sv := a.newStageView("building image " + p.Name)
			var img api.Image
			if err := a.call(cmd.Context(), api.MethodImageBuild, p, &img, rpc.WithEvents(sv.event)); err != nil {
				return err
			}
			sv.done()
			if a.json {
				return a.printJSON(img)
			}
			fmt.Fprintf(a.stdout, "image %s built (%s)\n", img.Name, human(img.SizeBytes))
			return nil
		},
	}
	build.Flags().StringVar(&p.Kernel, "kernel", "", "default kernel for VMs of this image")
	build.Flags().StringVar(&p.Mirror, "mirror", "", "Debian mirror URL")
	build.Flags().StringVar(&p.FromDir, "from-dir", "", "use this rootfs tree instead of running mmdebstrap")
	list := &cobra.Command{
		Use: "list", Aliases: []string{"ls"}, Short: "List images", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var is []api.Image
			if err := a.call(cmd.Context(), api.MethodImageList, nil, &is); err != nil {
				return err
			}
			if a.json {
				return a.printJSON(is)
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tSIZE\tKERNEL\tSOURCE\tCREATED")
			for _, i := range is {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", i.Name, human(i.SizeBytes), i.KernelRef, termsafe.Field(i.Source), ago(i.CreatedAt))
			}
			return tw.Flush()
		},
	}
	c.AddCommand(build, a.imagePullCmd(), list, a.rmCmd("image", api.MethodImageRm), a.imageWarmCmd())
	return c
}

func (a *app) daemonCmd() *cobra.Command {
	c := &cobra.Command{Use: "daemon", Short: "Inspect or stop bangerd"}
	status := &cobra.Command{
		Use: "status", Short: "Show whether bangerd runs, and its state", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var st api.DaemonStatus
			if err := a.client().Call(cmd.Context(), api.MethodDaemonStatus, nil, &st); err != nil {
				if errorsIsNoDaemon(err) {
					if a.json {
						return a.printJSON(map[string]any{"running": false, "socket": a.layout.Socket()})
					}
					fmt.Fprintf(a.stdout, "bangerd is not running (socket %s)\n", a.layout.Socket())
					return exitCode(3)
				}
				return err
			}
			if a.json {
				return a.printJSON(st)
			}
			fmt.Fprintf(a.stdout, "bangerd running: pid %d, uid %d, %s, accel %s\nstate dir %s\nvms %d (%d running)\n",
				st.PID, st.UID, st.Version, st.Accel, st.StateDir, st.VMs, st.Running)
			if len(st.TapPool) > 0 {
				var taps []string
				for _, p := range st.TapPool {
					if p.VM == "" {
						p.VM = "idle"
					}
					taps = append(taps, p.Name+"="+p.VM)
				}
				fmt.Fprintf(a.stdout, "tap pool %s\n", strings.Join(taps, " "))
			}
			return nil
		},
	}
	c.AddCommand(status, a.daemonStopCmd())
	return c
}

func (a *app) doctorCmd() *cobra.Command {
	return &cobra.Command{
		Use: "doctor", Short: "Check that this host can run banger VMs", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var r api.DoctorResult
			if err := a.call(cmd.Context(), api.MethodDoctor, nil, &r); err != nil {
				return err
			}
			if a.json {
				return a.printJSON(r)
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			bad := 0
			for _, c := range r.Checks {
				if c.Mark() == "FAIL" {
					bad++
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\n", c.Mark(), c.Name, termsafe.Field(c.Detail))
			}
			_ = tw.Flush()
			if bad > 0 {
				return exitCode(1)
			}
			return nil
		},
	}
}
