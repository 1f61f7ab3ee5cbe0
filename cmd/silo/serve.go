package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"reflect"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"golang.org/x/crypto/ssh"
	"golang.org/x/term"

	"silo/cluster"
	"silo/hostkeys"
	"silo/internal/gcpace"
	"silo/sshd"
	"silo/users"
)

// usersPollInterval is how often the users file is checked for changes made
// by `silo user ...` or by hand.
const usersPollInterval = 500 * time.Millisecond

func serve(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	configPath := fs.String("config", "config.toml", "configuration file")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return fmt.Errorf("%w: serve takes no arguments", errUsage)
	}
	cfg, err := loadConfig(*configPath)
	if err != nil {
		return err
	}
	level := new(slog.LevelVar)
	lv, _ := parseLevel(cfg.LogLevel)
	level.Set(lv)
	var handler slog.Handler = slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level})
	if cfg.LogFormat == "json" {
		handler = slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: level})
	}
	log := slog.New(handler)
	defer gcpace.Run(nil)()

	var (
		store *users.Store
		db    *cluster.DB
	)
	if cfg.Store.postgres() {
		octx, cancel := context.WithTimeout(context.Background(), time.Minute)
		backend, d, err := openAccounts(octx, cfg, log)
		cancel()
		if err != nil {
			return err
		}
		db = d
		// Closed last, after the homes have given their leases back.
		defer db.Close()
		if store, err = users.NewStore(backend, cfg.Homes, log); err != nil {
			return fmt.Errorf("accounts: %w", err)
		}
	} else if store, err = users.OpenStore(cfg.Users, cfg.Homes, log); err != nil {
		return fmt.Errorf("users: %w", err)
	}
	if store.Len() == 0 {
		log.Warn("no users yet; add one with `silo user add NAME`", "users", cfg.Users)
	}
	signers, err := hostkeys.LoadOrCreate(cfg.HostKeys)
	if err != nil {
		return err
	}
	for _, k := range signers {
		log.Info("host key", "type", k.PublicKey().Type(), "fingerprint", ssh.FingerprintSHA256(k.PublicKey()))
	}
	if err := os.MkdirAll(cfg.Homes, 0o700); err != nil {
		return fmt.Errorf("homes: %w", err)
	}
	obs, err := newObservers(cfg, log)
	if err != nil {
		return err
	}
	defer obs.close()
	scfg := sshd.Config{HostSigners: signers, Users: store, Homes: cfg.Homes, Fsync: cfg.Fsync,
		Limits: cfg.Limits, Penalties: cfg.Penalties, ProxyProtocol: cfg.ProxyProtocol, Logger: log, Monitor: obs.mon}
	if db != nil {
		scfg.Users, scfg.Ledger, scfg.Penalised = clusterUsers{store, db}, db.Ledger, db.SharePenalty
	}
	srv, err := sshd.New(scfg)
	if err != nil {
		return err
	}
	if err := obs.start(cfg, srv); err != nil {
		return err
	}
	reloaded := func(removed []string, err error) {
		if err != nil {
			what := "users file"
			if db != nil {
				what = "accounts"
			}
			log.Error(what+" not reloaded; the previous version stays in force", "err", err)
			return
		}
		log.Info("users reloaded", "users", store.Len())
		srv.Reloaded(removed)
	}
	// Signals are caught before "listening on" is logged: whoever waits
	// for that line may signal at once.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	usr2 := make(chan os.Signal, 1)
	signal.Notify(usr2, syscall.SIGUSR2)
	defer signal.Stop(usr2)

	lns, from, err := listeners(cfg.Listen)
	if err != nil {
		return err
	}
	for _, ln := range lns {
		log.Info("listening on "+ln.Addr().String(), "addr", ln.Addr().String(), "socket", from, "version", versionString(), "pid", os.Getpid())
	}
	if db != nil {
		if err := db.Join(lns[0].Addr().String(), versionString()); err != nil {
			return fmt.Errorf("store: joining the cluster: %w", err)
		}
		// The membership outlives the watchers: the sessions that drain
		// after SIGTERM still settle their quota, and it ends after them.
		mctx, stopMember := context.WithCancel(context.Background())
		member := make(chan struct{})
		defer func() { stopMember(); <-member }()
		go func() {
			defer close(member)
			db.Run(mctx, cfg.Store.NodeTimeout, cluster.Hooks{
				Accounts: func() { reloaded(store.Reload()) },
				Recount:  recountHome(store, cfg.Homes),
				Penalty:  srv.Penalise,
			})
		}()
		log.Info("joined the cluster", "node", db.Node())
	}
	if f, ok := stderr.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		// Someone trying silo out reads this; a log collector never sees it.
		fmt.Fprintf(stderr, "log in with: %s\n", sftpCommand(lns[0].Addr()))
	}

	// The watchers end with ctx; serve returns only after they have.
	var watchers sync.WaitGroup
	defer watchers.Wait()
	wctx, stopWatchers := context.WithCancel(ctx)
	defer stopWatchers()
	watchers.Go(func() { store.Watch(wctx, usersPollInterval, reloaded) })
	watchers.Go(func() {
		reloadOnHUP(wctx, hup, *configPath, cfg, srv, level, log, func() { reloaded(store.Reload()) })
	})

	conns := newConnCounter()
	serveErr := make(chan error, len(lns))
	for _, ln := range lns {
		go func() { serveErr <- srv.Serve(conns.listener(ln)) }()
	}
	// An upgraded process is not systemd's main process until its parent
	// says so, and the service is ready already.
	if os.Getenv(readyFDEnv) != "" {
		// A parent that died meanwhile leaves this process to serve alone.
		if err := signalReady(); err != nil {
			log.Warn("upgrade: the previous process did not hear that this one serves", "err", err)
		}
	} else if _, err := daemon.SdNotify(false, daemon.SdNotifyReady); err != nil {
		log.Warn("sd_notify", "err", err)
	}
	// The watchdog is pinged by the main process only: it stops here at a
	// handover, when the new process takes it over.
	wdCtx, stopWatchdog := context.WithCancel(ctx)
	defer stopWatchdog()
	if wd, err := daemon.SdWatchdogEnabled(false); err == nil && wd > 0 {
		go watchdog(wdCtx, wd/2)
	}

	upgraded := make(chan upgradeResult, 1)
	upgrading := false
	grace := time.Duration(cfg.ShutdownGrace)
	for {
		select {
		case err := <-serveErr:
			srv.Close()
			return err
		case <-usr2:
			if upgrading {
				log.Warn("SIGUSR2 ignored: an upgrade is under way")
				continue
			}
			upgrading = true
			log.Info("upgrade: starting the binary again", "pid", os.Getpid())
			go func() {
				hctx, cancel := context.WithTimeout(ctx, handoverTimeout)
				defer cancel()
				pid, err := handover(hctx, lns)
				upgraded <- upgradeResult{pid, err}
			}()
		case r := <-upgraded:
			if r.err != nil {
				upgrading = false
				log.Error("upgrade failed; this process goes on serving", "err", r.err)
				continue
			}
			stopWatchdog()
			obs.stopServing() // the new process has its own
			return drain(ctx, srv, lns, conns, serveErr, r.pid, grace, log)
		case <-ctx.Done():
			daemon.SdNotify(false, daemon.SdNotifyStopping)
			log.Info("shutting down", "grace", grace)
			return shutdown(srv, time.Now().Add(grace), serveErr, len(lns), log)
		}
	}
}

// reloadOnHUP re-reads the config at each SIGHUP and applies what can change
// while running, then calls reloadUsers.
func reloadOnHUP(ctx context.Context, hup <-chan os.Signal, configPath string, cfg Config, srv *sshd.Server,
	level *slog.LevelVar, log *slog.Logger, reloadUsers func()) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
		}
		// The limits, penalties and log level change at once; the listen
		// address, paths and fsync need a restart.
		nc, err := loadConfig(configPath)
		if err != nil {
			log.Error("config not reloaded; the previous one stays in force", "err", err)
		} else {
			srv.SetLimits(nc.Limits, nc.Penalties)
			lv, _ := parseLevel(nc.LogLevel)
			level.Set(lv)
			if nc.Listen != cfg.Listen || nc.Homes != cfg.Homes || nc.HostKeys != cfg.HostKeys ||
				nc.Users != cfg.Users || nc.Fsync != cfg.Fsync || nc.LogFormat != cfg.LogFormat ||
				nc.AdminSocket != cfg.AdminSocket || nc.MetricsListen != cfg.MetricsListen ||
				nc.MetricsUsers != cfg.MetricsUsers || !reflect.DeepEqual(nc.Hooks, cfg.Hooks) || nc.Store != cfg.Store ||
				!slices.Equal(nc.ProxyProtocol, cfg.ProxyProtocol) {
				log.Warn("config reloaded; listen, homes, host_keys, users, fsync, log_format, admin_socket, metrics, hooks, store and proxy_protocol take effect at the next start")
			} else {
				log.Info("config reloaded")
			}
		}
		reloadUsers()
	}
}

// sftpCommand is the OpenSSH command line that reaches addr from this host.
func sftpCommand(addr net.Addr) string {
	ap, err := netip.ParseAddrPort(addr.String())
	if err != nil {
		return "sftp " + addr.String()
	}
	host := ap.Addr().Unmap()
	if host.IsUnspecified() {
		host = netip.AddrFrom4([4]byte{127, 0, 0, 1})
	}
	h := host.String()
	if host.Is6() {
		h = "[" + h + "]"
	}
	return fmt.Sprintf("sftp -P %d USER@%s", ap.Port(), h)
}

// handoverTimeout bounds the start of the new process in an upgrade, host
// key generation included.
const handoverTimeout = time.Minute

type upgradeResult struct {
	pid int
	err error
}

// drain ends a process that handed its listeners to pid: it stops
// accepting, and serves the connections it has until they end or grace
// runs out (or SIGTERM comes), then shuts down.
func drain(ctx context.Context, srv *sshd.Server, lns []net.Listener, conns *connCounter, serveErr <-chan error,
	pid int, grace time.Duration, log *slog.Logger) error {
	// systemd accepts a new main pid from the current main process.
	daemon.SdNotify(false, fmt.Sprintf("MAINPID=%d", pid))
	for _, ln := range lns {
		ln.Close()
	}
	for range lns {
		if err := <-serveErr; !errors.Is(err, net.ErrClosed) {
			log.Warn("listener", "err", err)
		}
	}
	log.Info("upgrade: handed over; serving open connections until they end", "new_pid", pid, "grace", grace)
	deadline := time.Now().Add(grace)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-conns.idle():
	case <-t.C:
	case <-ctx.Done():
	}
	return shutdown(srv, deadline, serveErr, 0, log)
}

// shutdown closes the idle connections and gives the others until
// deadline, then waits for the pending Serve calls to return. Shutdown
// returns when every session has finished, or when the grace has run out
// and the rest has been closed and has finished: no file is being written
// when serve returns and the process exits.
func shutdown(srv *sshd.Server, deadline time.Time, serveErr <-chan error, pending int, log *slog.Logger) error {
	sctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	err := srv.Shutdown(sctx)
	for range pending {
		<-serveErr
	}
	if errors.Is(err, context.DeadlineExceeded) {
		log.Warn("grace ran out; closed the transfers still running")
	} else if err != nil {
		return err
	}
	log.Info("stopped", "pid", os.Getpid())
	return nil
}

// watchdog pings systemd's watchdog until ctx is done.
func watchdog(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			daemon.SdNotify(false, daemon.SdNotifyWatchdog)
		}
	}
}
