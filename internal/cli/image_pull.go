package cli

import (
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/rpc"
)

func (a *app) imagePullCmd() *cobra.Command {
	var p api.ImagePullParams
	cmd := &cobra.Command{
		Use:   "pull REF",
		Short: "Pull an OCI image (linux/amd64) from a registry and make it bootable",
		Long: `Pull an image from an OCI registry (credentials from ~/.docker/config.json),
flatten its layers without mounting anything, and build rootfs.ext4 from it.
Pulling a reference that resolves to the digest already pulled under that
name does nothing. Plain-HTTP registries need --insecure.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p.Ref = args[0]
			pv := &pullView{w: a.stderr, start: time.Now(), sv: a.newStageView("pulling " + p.Ref)}
			var res api.ImagePullResult
			if err := a.call(cmd.Context(), api.MethodImagePull, p, &res, rpc.WithEvents(pv.event)); err != nil {
				return err
			}
			pv.sv.done()
			if a.json {
				return a.printJSON(res)
			}
			img := res.Image
			switch {
			case res.Unchanged:
				fmt.Fprintf(a.stdout, "image %s is up to date (%s)\n", img.Name, img.Digest)
			default:
				fmt.Fprintf(a.stdout, "image %s pulled (%s, %s)\n", img.Name, img.Digest, human(img.SizeBytes))
			}
			if res.SkippedCount > 0 {
				fmt.Fprintf(a.stdout, "skipped %d device nodes/FIFOs (a guest's /dev comes from devtmpfs)\n", res.SkippedCount)
			}
			if img.FirstBoot {
				fmt.Fprintln(a.stdout, "no systemd or sshd in the image: its VMs install them at first boot")
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&p.Name, "name", "", "image name (default: from the reference, e.g. debian-bookworm)")
	cmd.Flags().StringVar(&p.KernelRef, "kernel-ref", "", "default kernel for VMs of this image")
	cmd.Flags().StringVar(&p.Size, "size", "", "rootfs size, e.g. 4G (default: content + headroom)")
	cmd.Flags().BoolVar(&p.Insecure, "insecure", false, "allow a plain-HTTP registry")
	return cmd
}

// pullView adds byte progress to the stage view: at most one line per
// layer (or per 5 s) when not on a terminal.
type pullView struct {
	w         io.Writer
	sv        *stageView
	start     time.Time
	lastMsg   string
	lastPrint time.Time
}

func (pv *pullView) event(ev api.Event) {
	if ev.Total <= 0 {
		pv.sv.event(ev)
		return
	}
	msg := fmt.Sprintf("%s, %s of %s", ev.Message, human(ev.Current), human(ev.Total))
	if pv.sv.bar != nil {
		pv.sv.event(api.Event{Stage: ev.Stage, Message: msg})
		return
	}
	if ev.Message != pv.lastMsg || time.Since(pv.lastPrint) > 5*time.Second || ev.Current == ev.Total {
		pv.lastMsg, pv.lastPrint = ev.Message, time.Now()
		pv.sv.event(api.Event{Stage: ev.Stage, Message: msg})
	}
}
