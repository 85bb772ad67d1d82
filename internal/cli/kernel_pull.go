package cli

import (
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/rpc"
	"github.com/banger-dev/banger/internal/termsafe"
)

// EnvKernelCatalog names the default kernel catalog URL.
const EnvKernelCatalog = "BANGER_KERNEL_CATALOG"

func (a *app) kernelPullCmd() *cobra.Command {
	var p api.KernelPullParams
	cmd := &cobra.Command{
		Use:   "pull NAME [--catalog URL] [--name LOCAL]",
		Short: "Download a kernel from a catalog (sha256-checked, cached) and import it",
		Long: `Download a kernel from a catalog (sha256-checked, cached) and import it.
The catalog and every file it names are fetched over https; a plain-http
catalog (from --catalog or $` + EnvKernelCatalog + `) needs --insecure. A download
fails when the server sends nothing for 60 s; a retry resumes it.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p.Entry = args[0]
			if p.Catalog == "" {
				p.Catalog = os.Getenv(EnvKernelCatalog)
			}
			pv := &pullView{w: a.stderr, start: time.Now(), sv: a.newStageView("pulling kernel " + p.Entry)}
			var k api.Kernel
			if err := a.call(cmd.Context(), api.MethodKernelPull, p, &k, rpc.WithEvents(pv.event)); err != nil {
				return err
			}
			pv.sv.done()
			if a.json {
				return a.printJSON(k)
			}
			fmt.Fprintf(a.stdout, "kernel %s pulled (%s, sha256 %s)\n", k.Name, termsafe.Field(k.Version), k.SHA256)
			return nil
		},
	}
	cmd.Flags().StringVar(&p.Catalog, "catalog", "", "catalog URL (default $"+EnvKernelCatalog+")")
	cmd.Flags().StringVar(&p.Name, "name", "", "local kernel name (default: the catalog entry's)")
	cmd.Flags().BoolVar(&p.Insecure, "insecure", false, "allow a plain-http catalog and downloads (also for $"+EnvKernelCatalog+")")
	return cmd
}
