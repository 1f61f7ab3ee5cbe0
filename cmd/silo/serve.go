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

// shutdownGrace is how long running transfers may take to finish after
// SIGTERM or SIGINT.
const shutdownGrace = 30 * time.Second

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
	log := slog.New(slog.NewTextHandler(stderr, nil))

	store, err := users.OpenStore(cfg.Users, log)
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
	srv, err := sshd.New(sshd.Config{HostSigners: signers, Users: store, Homes: cfg.Homes, Fsync: cfg.Fsync, Logger: log})
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
	go store.Watch(ctx, usersPollInterval, reloaded)
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				reloaded(store.Reload())
			}
		}
	}()

	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	select {
	case err := <-serveErr:
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down; waiting for transfers to finish", "grace", shutdownGrace)
	sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	log.Info("stopped")
	return nil
}
