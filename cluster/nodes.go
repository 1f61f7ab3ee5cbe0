package cluster

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"time"

	"github.com/jackc/pgx/v5"

	"silo/vfs"
)

// Node is one member as the database lists it.
type Node struct {
	ID, Addr, Host, Version string
	PID                     int
	Started, Seen           time.Time
}

// Join makes this process a member, listening on addr.
func (d *DB) Join(addr, version string) error {
	ctx, cancel := opContext()
	defer cancel()
	host, _ := os.Hostname()
	id := newNodeID()
	if _, err := d.pool.Exec(ctx, `INSERT INTO silo_nodes (id, addr, host, pid, version) VALUES ($1, $2, $3, $4, $5)`,
		id, addr, host, os.Getpid(), version); err != nil {
		return err
	}
	d.node = id
	return nil
}

// Node returns this member's id, empty before Join.
func (d *DB) Node() string { return d.node }

// Nodes lists the members seen within timeout, oldest first.
func (d *DB) Nodes(ctx context.Context, timeout time.Duration) ([]Node, error) {
	rows, err := d.pool.Query(ctx, `SELECT id, addr, host, version, pid, started, seen FROM silo_nodes
		WHERE seen > now() - $1::interval ORDER BY started, id`, timeout.String())
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Node, error) {
		var n Node
		err := r.Scan(&n.ID, &n.Addr, &n.Host, &n.Version, &n.PID, &n.Started, &n.Seen)
		return n, err
	})
}

// Hooks are what Run tells the server.
type Hooks struct {
	// Accounts is called when the accounts may have changed: after a
	// notification, and after the database comes back (notifications sent
	// meanwhile are lost).
	Accounts func()
	// Recount walks the home of account, when a member that stopped
	// answering held it; ok is false if the account no longer exists.
	Recount func(account string) (u vfs.Usage, ok bool, err error)
	// Penalty adds a penalty another member's source earned there.
	Penalty func(a netip.Addr, d time.Duration)
	// Down and Up are called when the database stops and starts
	// answering.
	Down func(err error)
	Up   func()
}

// Run keeps this process a member until ctx ends, then leaves: it listens
// for account changes, sends a heartbeat every timeout/4, and reaps members
// not seen for timeout, returning their leases and recounting the homes
// they had open. While the database is unreachable it retries with backoff.
func (d *DB) Run(ctx context.Context, timeout time.Duration, h Hooks) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		d.listen(ctx, h)
	}()
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		d.sendPenalties(ctx)
	}()
	defer func() { <-sent }()
	// Walking a large home takes long: not in the heartbeat's way.
	recounts := make(chan string, 1024)
	counted := make(chan struct{})
	go func() {
		defer close(counted)
		for {
			select {
			case <-ctx.Done():
				return
			case a := <-recounts:
				if err := d.recount(a, h); err != nil {
					d.log.Error("recount after a member stopped failed", "user", a, "err", err)
				}
			}
		}
	}()
	defer func() { <-counted }()
	beat := max(timeout/4, 10*time.Millisecond)
	t := time.NewTicker(beat)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			<-done
			d.leave()
			return
		case <-t.C:
		}
		if err := d.heartbeat(timeout, recounts); err != nil {
			d.beatingSince = time.Time{}
			d.setDown(err, h)
		} else if d.listening.Load() {
			d.setUp(h)
		}
	}
}

// setDown and setUp log the database's state changes once each.
func (d *DB) setDown(err error, h Hooks) {
	if d.up.Swap(false) {
		d.log.Error("account database unreachable: new logins are refused and writes that need quota fail until it is back; sessions that hold quota go on",
			"err", err)
		if h.Down != nil {
			h.Down(err)
		}
	}
}

func (d *DB) setUp(h Hooks) {
	if !d.up.Swap(true) {
		d.log.Info("account database reachable again: logins accepted")
		if h.Up != nil {
			h.Up()
		}
	}
}

// listen holds a connection that LISTENs for account changes, connecting
// again with backoff when it breaks.
func (d *DB) listen(ctx context.Context, h Hooks) {
	backoff := 50 * time.Millisecond
	first := true
	for ctx.Err() == nil {
		err := d.listenOnce(ctx, h, first)
		if ctx.Err() != nil {
			return
		}
		first = false
		d.setDown(err, h)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func (d *DB) listenOnce(ctx context.Context, h Hooks, first bool) error {
	cctx, cancel := context.WithTimeout(ctx, opTimeout)
	c, err := pgx.ConnectConfig(cctx, d.pool.Config().ConnConfig.Copy())
	cancel()
	if err != nil {
		return err
	}
	defer c.Close(context.Background())
	if _, err := c.Exec(ctx, "LISTEN "+accountsChannel+"; LISTEN "+penaltiesChannel); err != nil {
		return err
	}
	d.listening.Store(true)
	defer d.listening.Store(false)
	// What changed while nobody listened: before the first LISTEN, since
	// the accounts were loaded.
	h.Accounts()
	if first {
		d.log.Info("listening for account changes")
	}
	d.setUp(h)
	for {
		n, err := c.WaitForNotification(ctx)
		if err != nil {
			return err
		}
		if n.Channel != penaltiesChannel {
			h.Accounts()
			continue
		}
		node, a, dur, err := parsePenalty(n.Payload)
		switch {
		case err != nil:
			d.log.Warn("ignored a penalty notification", "err", err)
		case node != d.node && h.Penalty != nil:
			h.Penalty(a, dur)
		}
	}
}

// heartbeat marks this member seen, and reaps the others that have not
// been for timeout.
func (d *DB) heartbeat(timeout time.Duration, recounts chan<- string) error {
	ctx, cancel := opContext()
	defer cancel()
	tag, err := d.pool.Exec(ctx, "UPDATE silo_nodes SET seen = now() WHERE id = $1", d.node)
	if err != nil {
		return err
	}
	if tag.RowsAffected() == 0 {
		// Reaped while away: its leases were returned, its homes counted
		// again. It comes back as itself; what it folds in from now on
		// adds to the recount.
		d.log.Warn("this member was reaped while the database was away; joining again")
		host, _ := os.Hostname()
		if _, err := d.pool.Exec(ctx, `INSERT INTO silo_nodes (id, addr, host, pid, version) VALUES ($1, '', $2, $3, '')`,
			d.node, host, os.Getpid()); err != nil {
			return err
		}
	}
	// A member that was away itself does not judge the others until it
	// has been back for timeout: they were away from the same database,
	// and are beating again by then if they are alive.
	if d.beatingSince.IsZero() {
		d.beatingSince = time.Now()
	}
	if time.Since(d.beatingSince) < timeout {
		return nil
	}
	var accounts []string
	err = pgx.BeginFunc(ctx, d.pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `WITH dead AS (
				DELETE FROM silo_nodes WHERE seen < now() - $1::interval RETURNING id
			), l AS (
				DELETE FROM silo_leases WHERE node IN (SELECT id FROM dead) RETURNING account
			), o AS (
				DELETE FROM silo_open WHERE node IN (SELECT id FROM dead) RETURNING account
			)
			SELECT account FROM l UNION SELECT account FROM o`, timeout.String())
		if err != nil {
			return err
		}
		accounts, err = pgx.CollectRows(rows, pgx.RowTo[string])
		return err
	})
	if err != nil {
		return err
	}
	for _, a := range accounts {
		select {
		case recounts <- a:
		default:
			// Left as counted, off by what the dead member had not
			// folded in, until `silo user rescan` or the next open with
			// nobody else.
			d.log.Warn("too many homes to recount at once; run silo user rescan", "user", a)
		}
	}
	return nil
}

func (d *DB) recount(account string, h Hooks) error {
	u, ok, err := h.Recount(account)
	ctx, cancel := opContext()
	defer cancel()
	if err != nil {
		return err
	}
	if !ok {
		_, err := d.pool.Exec(ctx, "DELETE FROM silo_usage WHERE account = $1", account)
		return err
	}
	if _, err := d.pool.Exec(ctx, "UPDATE silo_usage SET bytes = $2, files = $3 WHERE account = $1",
		account, u.Bytes, u.Files); err != nil {
		return err
	}
	d.log.Info("usage recounted: a member holding the home stopped", "user", account, "bytes", u.Bytes, "files", u.Files)
	return nil
}

// leave removes this member, its leases and its open homes: a clean stop
// returns all it held.
func (d *DB) leave() {
	ctx, cancel := opContext()
	defer cancel()
	err := pgx.BeginFunc(ctx, d.pool, func(tx pgx.Tx) error {
		for _, q := range []string{"DELETE FROM silo_leases WHERE node = $1", "DELETE FROM silo_open WHERE node = $1",
			"DELETE FROM silo_nodes WHERE id = $1"} {
			if _, err := tx.Exec(ctx, q, d.node); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil && !errors.Is(err, context.Canceled) {
		d.log.Warn("could not leave the cluster; the others reap this member", "err", err)
	}
}
