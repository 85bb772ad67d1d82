package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/banger-dev/banger/internal/agent"
)

// runServe is the guest agent service: it serves the host on the
// virtio-serial port (QEMU) and, where /dev/vsock exists, on vsock
// (Firecracker), until SIGTERM. systemd restarts it.
func runServe(args []string, _, stderr io.Writer) int {
	if len(args) != 0 {
		fmt.Fprintln(stderr, "usage: banger-agent serve")
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	srv := &agent.Server{Log: log, Version: version}
	log.Info("banger-agent serving", "version", version, "protocol", fmt.Sprintf("%d.%d", agent.ProtoMajor, agent.ProtoMinor))
	var wg sync.WaitGroup
	wg.Go(func() {
		port := &agent.SerialPort{Log: log}
		_ = port.Serve(ctx, srv)
	})
	if _, err := os.Stat("/dev/vsock"); err == nil {
		wg.Go(func() {
			if err := agent.ServeVsock(ctx, srv, log); err != nil && !errors.Is(err, context.Canceled) {
				log.Error("vsock", "err", err)
			}
		})
	}
	wg.Wait()
	return 0
}
