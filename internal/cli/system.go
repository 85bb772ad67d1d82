package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"os/user"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/banger-dev/banger/internal/hostnet"
	"github.com/banger-dev/banger/internal/opid"
	"github.com/banger-dev/banger/internal/privileged"
	"github.com/banger-dev/banger/internal/system"
)

// envHelperFailpoint is failure injection for the e2e tests, read only here:
// "kill-before:<verb>" makes the helper SIGKILL itself when an authorized
// call of that verb arrives. Unset in production.
const envHelperFailpoint = "BANGER_HELPER_FAILPOINT"

// systemCmd is the host-level group: commands run as root that set up or
// serve the privileged side. Each subcommand adds itself here.
func (a *app) systemCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "system",
		Short: "Host-level setup and the privileged helper (run as root)",
		// No state dir and no root refusal: these run as root on purpose.
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error { return nil },
	}
	c.AddCommand(a.systemHelperCmd())
	c.AddCommand(a.systemInstallCmds()...) // system_install.go
	return c
}

func (a *app) systemHelperCmd() *cobra.Command {
	var owner, socket, bridge, subnet, natBlock string
	cmd := &cobra.Command{
		Use:   "helper --owner USER",
		Short: "Run the privileged helper in the foreground (root) for USER's bangerd",
		Long: "Serves the owner's bangerd on a unix socket only that user may use: bridge, TAPs (handed over\n" +
			"as open fds), per-VM firewall, ip_forward, the DNS port and resolver routing. Every argument\n" +
			"is checked against banger's rules; nothing else is offered. Logs JSON to stderr.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if os.Geteuid() != 0 {
				return errors.New("banger system helper must run as root: sudo banger system helper --owner " + currentUserName())
			}
			if owner == "" {
				owner = os.Getenv("SUDO_USER")
			}
			if owner == "" {
				return errors.New("--owner USER is required (the user whose bangerd the helper serves)")
			}
			uid, err := lookupUID(owner)
			if err != nil {
				return err
			}
			if uid == 0 {
				return errors.New("--owner root: run bangerd as root instead (all-in-one mode); the helper serves an unprivileged owner")
			}
			prefix, err := netip.ParsePrefix(subnet)
			cfg := hostnet.Config{Bridge: bridge, Subnet: prefix}
			if err == nil {
				err = cfg.Validate()
			}
			if err != nil {
				return fmt.Errorf("--subnet %q: %w", subnet, err)
			}
			if cfg.ExtraBlocked, err = hostnet.ParseBlocked(natBlock); err != nil {
				return fmt.Errorf("--nat-block: %w", err)
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			log := slog.New(opid.Handler(slog.NewJSONHandler(cmd.ErrOrStderr(), nil)))
			ln, err := privileged.Listen(socket, uid)
			if err != nil {
				return err
			}
			defer ln.Close()
			local := privileged.NewLocal(log, system.Exec{}, cfg)
			local.Net.Owner = &uid                // only the owner's TAPs are opened, released, deleted or reused
			go local.FW.Watch(ctx, 5*time.Second) // a host's `nft flush ruleset` is undone within seconds
			srv := privileged.NewServer(log, privileged.Rules{Subnet: prefix, Owner: uid}, local)
			if fp := os.Getenv(envHelperFailpoint); fp != "" {
				op, ok := strings.CutPrefix(fp, "kill-before:")
				if !ok || op == "" {
					return fmt.Errorf("%s=%q: want kill-before:<verb>", envHelperFailpoint, fp)
				}
				log.Warn("failpoint armed: the helper will kill itself", "before_verb", op)
				srv.BeforeVerb = func(verb string) {
					if verb == op {
						log.Warn("failpoint: killing the helper", "before_verb", verb)
						_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
					}
				}
			}
			err = srv.ServeListener(ctx, ln)
			log.Info("banger helper stopped")
			if err != nil && !errors.Is(err, context.Canceled) {
				return err
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&owner, "owner", "", "the user whose bangerd may use the helper (default $SUDO_USER)")
	f.StringVar(&socket, "socket", privileged.DefaultSocket, "unix socket to listen on")
	f.StringVar(&bridge, "bridge", envOr("BANGER_BRIDGE", hostnet.DefaultBridge), "bridge name (env BANGER_BRIDGE)")
	f.StringVar(&subnet, "subnet", envOr("BANGER_SUBNET", "172.30.0.0/24"), "guest subnet (env BANGER_SUBNET)")
	f.StringVar(&natBlock, "nat-block", envOr("BANGER_NAT_BLOCK", ""),
		"CIDR[,CIDR]: IPv4 destinations no NAT guest reaches, even with --nat-private, besides link-local and cloud metadata (env BANGER_NAT_BLOCK)")
	return cmd
}

// lookupUID takes a user name or a numeric uid.
func lookupUID(name string) (int, error) {
	if n, err := strconv.Atoi(name); err == nil && n >= 0 {
		return n, nil
	}
	u, err := user.Lookup(name)
	if err != nil {
		return 0, fmt.Errorf("--owner %q: %w", name, err)
	}
	return strconv.Atoi(u.Uid)
}

func currentUserName() string {
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return "$USER"
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
