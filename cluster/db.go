// Package cluster keeps what several silo servers share in PostgreSQL: the
// accounts (as users.Backend), the usage ledger of every home (as
// vfs.Ledger), the list of servers that are up, and the notifications that
// tell each server at once that an account changed. The homes themselves
// are on a filesystem every server mounts.
//
// Lifecycle: Open connects and brings the schema up to date; Join makes
// this process a member, Run keeps it one (heartbeats, notifications,
// reaping members that stopped answering) until its context ends, and
// leaves; Close closes the connections.
package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// opTimeout bounds one database operation: a write waiting on the ledger
// fails after it, rather than hang while the database is away.
const opTimeout = 5 * time.Second

// DB is the shared state in one PostgreSQL database. Its methods are safe
// for concurrent use.
type DB struct {
	pool *pgxpool.Pool
	log  *slog.Logger
	node string // this process's member id: random, new at each Join

	penalties chan string // queued for sendPenalties

	up        atomic.Bool // the last heartbeat and the notification connection worked
	listening atomic.Bool // the notification connection is up
	// beatingSince is when the heartbeats last started to succeed, after
	// a failure (Run's goroutine only).
	beatingSince time.Time
}

// Open connects to the database at dsn and creates or migrates the schema.
func Open(ctx context.Context, dsn string, log *slog.Logger) (*DB, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("store dsn: %w", err) // pgx leaves the password out
	}
	if cfg.ConnConfig.ConnectTimeout == 0 || cfg.ConnConfig.ConnectTimeout > opTimeout {
		cfg.ConnConfig.ConnectTimeout = opTimeout
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	d := &DB{pool: pool, log: log, penalties: make(chan string, 256)}
	mctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := d.migrate(mctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("store: %w", err)
	}
	d.up.Store(true)
	return d, nil
}

// Close closes the connections.
func (d *DB) Close() { d.pool.Close() }

// Up reports whether the database answered the last time it was asked.
func (d *DB) Up() bool { return d.up.Load() }

// ErrDown is the error of what needs the database while it is unreachable.
var ErrDown = errors.New("account database unreachable")

// schemaLock is the advisory lock key under which the schema is migrated,
// so that servers starting at once apply each step once.
const schemaLock = 0x73696c6f01 // "silo", 1

// migrations are the schema's versions, in order; version N is
// migrations[N-1]. A step is never edited once released: a change is a new
// step.
var migrations = []string{
	`CREATE TABLE silo_accounts (
		name text PRIMARY KEY,
		data jsonb NOT NULL -- the whole users.User record
	);
	CREATE TABLE silo_nodes (
		id      text PRIMARY KEY,
		addr    text NOT NULL,
		host    text NOT NULL,
		pid     integer NOT NULL,
		version text NOT NULL,
		started timestamptz NOT NULL DEFAULT now(),
		seen    timestamptz NOT NULL DEFAULT now()
	);
	-- The committed usage of each account's home.
	CREATE TABLE silo_usage (
		account text PRIMARY KEY,
		bytes   bigint NOT NULL,
		files   bigint NOT NULL
	);
	-- Room each member may grow each home into without asking again.
	CREATE TABLE silo_leases (
		account text NOT NULL,
		node    text NOT NULL,
		bytes   bigint NOT NULL,
		files   bigint NOT NULL,
		PRIMARY KEY (account, node)
	);
	-- Which member has which home open.
	CREATE TABLE silo_open (
		account text NOT NULL,
		node    text NOT NULL,
		PRIMARY KEY (account, node)
	);`,
}

func (d *DB) migrate(ctx context.Context) error {
	c, err := d.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer c.Release()
	if _, err := c.Exec(ctx, "SELECT pg_advisory_lock($1)", schemaLock); err != nil {
		return err
	}
	defer c.Exec(context.Background(), "SELECT pg_advisory_unlock($1)", schemaLock)
	if _, err := c.Exec(ctx, "CREATE TABLE IF NOT EXISTS silo_schema (version integer NOT NULL)"); err != nil {
		return err
	}
	var v int
	if err := c.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM silo_schema").Scan(&v); err != nil {
		return err
	}
	if v > len(migrations) {
		return fmt.Errorf("the database's schema is version %d, newer than this silo knows (%d): upgrade silo", v, len(migrations))
	}
	for i := v; i < len(migrations); i++ {
		err := pgx.BeginFunc(ctx, c, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, migrations[i]); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, "INSERT INTO silo_schema (version) VALUES ($1)", i+1)
			return err
		})
		if err != nil {
			return fmt.Errorf("schema version %d: %w", i+1, err)
		}
		d.log.Info("store schema migrated", "version", i+1)
	}
	return nil
}

func newNodeID() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// ctx returns a context for one operation.
func opContext() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), opTimeout)
}
