package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"text/tabwriter"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"silo/cluster"
	"silo/sshd"
	"silo/users"
	"silo/vfs"
)

// openAccounts returns the accounts' backend that cfg names, and the
// database behind it (nil for the users file), which the caller closes.
func openAccounts(ctx context.Context, cfg Config, log *slog.Logger) (users.Backend, *cluster.DB, error) {
	if !cfg.Store.postgres() {
		return users.FileBackend(cfg.Users), nil, nil
	}
	db, err := cluster.Open(ctx, cfg.Store.DSN, log)
	if err != nil {
		return nil, nil, err
	}
	return db.Accounts(), db, nil
}

// cliAccounts is openAccounts for a command: bounded in time, and with the
// function that closes what it opened.
func cliAccounts(cfg Config) (users.Backend, func(), error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	b, db, err := openAccounts(ctx, cfg, nil)
	if err != nil || db == nil {
		return b, func() {}, err
	}
	return b, db.Close, nil
}

// clusterUsers refuses logins while the database is unreachable: what this
// server last read of the accounts may be stale (a user deleted, a key
// withdrawn meanwhile), and the quota of a new session could not be
// recorded.
type clusterUsers struct {
	*users.Store
	db *cluster.DB
}

func (c clusterUsers) up() error {
	if !c.db.Up() {
		return fmt.Errorf("%w: %w; logins are refused until it is back", sshd.ErrUnavailable, cluster.ErrDown)
	}
	return nil
}

func (c clusterUsers) CheckPassword(name, password string) (users.User, error) {
	if err := c.up(); err != nil {
		return users.User{}, err
	}
	return c.Store.CheckPassword(name, password)
}

func (c clusterUsers) CheckKey(name string, key gossh.PublicKey) (users.User, error) {
	if err := c.up(); err != nil {
		return users.User{}, err
	}
	return c.Store.CheckKey(name, key)
}

// recountHome walks the home of the named user, for the usage ledger.
func recountHome(store *users.Store, homes string) func(string) (vfs.Usage, bool, error) {
	return func(name string) (vfs.Usage, bool, error) {
		u, ok := store.Lookup(name)
		if !ok {
			return vfs.Usage{}, false, nil
		}
		n, err := vfs.Scan(u.HomeDir(homes))
		if errors.Is(err, os.ErrNotExist) {
			return vfs.Usage{}, true, nil
		}
		return n, err == nil, err
	}
}

// clusterCmd lists the servers that share the database and are up.
func clusterCmd(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("cluster", flag.ContinueOnError)
	configPath := fs.String("config", "config.toml", "configuration file")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return fmt.Errorf("%w: cluster takes no arguments", errUsage)
	}
	cfg, err := loadConfig(*configPath)
	if err != nil {
		return err
	}
	if !cfg.Store.postgres() {
		return errors.New(`store.kind is "file": this server is a cluster of one`)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db, err := cluster.Open(ctx, cfg.Store.DSN, nil)
	if err != nil {
		return err
	}
	defer db.Close()
	nodes, err := db.Nodes(ctx, cfg.Store.NodeTimeout)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tADDRESS\tHOST\tPID\tVERSION\tUP SINCE\tLAST SEEN")
	for _, n := range nodes {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s ago\n", n.ID, n.Addr, n.Host, n.PID, n.Version,
			n.Started.UTC().Format(time.RFC3339), time.Since(n.Seen).Round(time.Millisecond))
	}
	return tw.Flush()
}

// importUsersFile adds every account of a silo users file to the
// configured store (the way from one server's users.toml into
// PostgreSQL), or none of them if any name is taken already.
func importUsersFile(cfg Config, path string, stdout io.Writer) error {
	if _, err := os.Stat(path); err != nil {
		return err
	}
	in, err := users.Load(path)
	if err != nil {
		return err
	}
	store, closeStore, err := cliAccounts(cfg)
	if err != nil {
		return err
	}
	defer closeStore()
	err = store.Update(func(f *users.File) error {
		var taken []error
		for _, u := range in.Users {
			if f.Find(u.Name) >= 0 {
				taken = append(taken, fmt.Errorf("user %s exists already", u.Name))
			}
			f.Users = append(f.Users, u)
		}
		if err := errors.Join(taken...); err != nil {
			return fmt.Errorf("nothing imported: %w", err)
		}
		return f.CheckHomes(cfg.Homes)
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "imported %d users from %s\n", len(in.Users), path)
	return nil
}
