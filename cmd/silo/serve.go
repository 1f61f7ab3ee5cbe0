package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"

	"silo/hostkeys"
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

	store, err := users.OpenStore(cfg.Users, cfg.Homes, log)
	if err != nil {
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
	srv, err := sshd.New(sshd.Config{HostSigners: signers, Users: store, Homes: cfg.Homes, Fsync: cfg.Fsync,
		Limits: cfg.Limits, Penalties: cfg.Penalties, Logger: log})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return err
	}
	log.Info("listening on "+ln.Addr().String(), "addr", ln.Addr().String())

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	reloaded := func(removed []string, err error) {
		if err != nil {
			log.Error("users file not reloaded; the previous version stays in force", "err", err)
			return
		}
		log.Info("users reloaded", "users", store.Len())
		srv.Reloaded(removed)
	}
	// The watchers end with ctx; serve returns only after they have.
	var watchers sync.WaitGroup
	defer watchers.Wait()
	wctx, stopWatchers := context.WithCancel(ctx)
	defer stopWatchers()
	watchers.Go(func() { store.Watch(wctx, usersPollInterval, reloaded) })
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	watchers.Go(func() {
		for {
			select {
			case <-wctx.Done():
				return
			case <-hup:
				// The limits, penalties and log level change at once; the
				// listen address, paths and fsync need a restart.
				if nc, err := loadConfig(*configPath); err != nil {
					log.Error("config not reloaded; the previous one stays in force", "err", err)
				} else {
					srv.SetLimits(nc.Limits, nc.Penalties)
					lv, _ := parseLevel(nc.LogLevel)
					level.Set(lv)
					if nc.Listen != cfg.Listen || nc.Homes != cfg.Homes || nc.HostKeys != cfg.HostKeys ||
						nc.Users != cfg.Users || nc.Fsync != cfg.Fsync || nc.LogFormat != cfg.LogFormat {
						log.Warn("config reloaded; listen, homes, host_keys, users, fsync and log_format take effect at the next start")
					} else {
						log.Info("config reloaded")
					}
				}
				reloaded(store.Reload())
			}
		}
	})

	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	select {
	case err := <-serveErr:
		srv.Close()
		return err
	case <-ctx.Done():
	}
	grace := cfg.ShutdownGrace
	log.Info("shutting down", "grace", grace)
	sctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	// Shutdown returns when every session has finished, or when the grace
	// has run out and the rest has been closed and has finished: no file
	// is being written when serve returns and the process exits.
	err = srv.Shutdown(sctx)
	<-serveErr
	if errors.Is(err, context.DeadlineExceeded) {
		log.Warn("grace ran out; closed the transfers still running", "grace", grace)
	} else if err != nil {
		return err
	}
	log.Info("stopped")
	return nil
}
