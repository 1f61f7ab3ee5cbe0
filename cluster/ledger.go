package cluster

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"silo/vfs"
)

// Ledger returns the usage ledger of account's home, for this member
// (after Join).
func (d *DB) Ledger(account string) vfs.Ledger { return &ledger{d: d, account: account} }

type ledger struct {
	d       *DB
	account string
}

// errReaped: this member was declared dead, and its leases returned.
var errReaped = errors.New("this server's leases expired; quota is granted again once it has rejoined")

func (l *ledger) tx(fn func(ctx context.Context, tx pgx.Tx) error) error {
	ctx, cancel := opContext()
	defer cancel()
	err := pgx.BeginFunc(ctx, l.d.pool, func(tx pgx.Tx) error { return fn(ctx, tx) })
	var qe *vfs.QuotaError
	if err != nil && !errors.As(err, &qe) && !errors.Is(err, errReaped) {
		return fmt.Errorf("%w: %v", ErrDown, err)
	}
	return err
}

// Open records that this member has the home open and returns the
// committed usage: found, when no other member has it open.
func (l *ledger) Open(found vfs.Usage) (vfs.Usage, error) {
	var u vfs.Usage
	err := l.tx(func(ctx context.Context, tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "INSERT INTO silo_open (account, node) VALUES ($1, $2) ON CONFLICT DO NOTHING",
			l.account, l.d.node); err != nil {
			return err
		}
		// Serialises the opens and settles of this home.
		if _, err := tx.Exec(ctx, "INSERT INTO silo_usage (account, bytes, files) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
			l.account, found.Bytes, found.Files); err != nil {
			return err
		}
		if err := tx.QueryRow(ctx, "SELECT bytes, files FROM silo_usage WHERE account = $1 FOR UPDATE",
			l.account).Scan(&u.Bytes, &u.Files); err != nil {
			return err
		}
		var others bool
		if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM silo_open WHERE account = $1 AND node <> $2)",
			l.account, l.d.node).Scan(&others); err != nil {
			return err
		}
		if others {
			return nil
		}
		// Nobody else writes: the files are the truth.
		u = found
		_, err := tx.Exec(ctx, "UPDATE silo_usage SET bytes = $2, files = $3 WHERE account = $1", l.account, u.Bytes, u.Files)
		return err
	})
	return u, err
}

// Settle folds delta in and sets this member's lease (see vfs.Ledger).
func (l *ledger) Settle(lim vfs.Limits, delta, need, extra vfs.Usage) (lease, committed vfs.Usage, err error) {
	var refused error
	err = l.tx(func(ctx context.Context, tx pgx.Tx) error {
		// A member reaped meanwhile holds nothing; the lock keeps a reap
		// from running while this settles.
		var one int
		if err := tx.QueryRow(ctx, "SELECT 1 FROM silo_nodes WHERE id = $1 FOR KEY SHARE", l.d.node).Scan(&one); err != nil {
			if errors.Is(err, pgx.ErrNoRows) {
				return errReaped
			}
			return err
		}
		err := tx.QueryRow(ctx, `INSERT INTO silo_usage AS u (account, bytes, files) VALUES ($1, greatest(0, $2::bigint), greatest(0, $3::bigint))
			ON CONFLICT (account) DO UPDATE SET bytes = greatest(0, u.bytes + $2), files = greatest(0, u.files + $3)
			RETURNING bytes, files`, l.account, delta.Bytes, delta.Files).Scan(&committed.Bytes, &committed.Files)
		if err != nil {
			return err
		}
		var others vfs.Usage
		if err := tx.QueryRow(ctx, "SELECT coalesce(sum(bytes), 0), coalesce(sum(files), 0) FROM silo_leases WHERE account = $1 AND node <> $2",
			l.account, l.d.node).Scan(&others.Bytes, &others.Files); err != nil {
			return err
		}
		var qe *vfs.QuotaError
		lease.Files, qe = grant(lim.Files, committed.Files, others.Files, need.Files, extra.Files)
		if qe != nil {
			qe.Files = true
		} else {
			lease.Bytes, qe = grant(lim.Bytes, committed.Bytes, others.Bytes, need.Bytes, extra.Bytes)
		}
		if qe != nil {
			refused, lease = qe, vfs.Usage{}
		}
		if lease == (vfs.Usage{}) {
			_, err = tx.Exec(ctx, "DELETE FROM silo_leases WHERE account = $1 AND node = $2", l.account, l.d.node)
		} else {
			_, err = tx.Exec(ctx, `INSERT INTO silo_leases (account, node, bytes, files) VALUES ($1, $2, $3, $4)
				ON CONFLICT (account, node) DO UPDATE SET bytes = EXCLUDED.bytes, files = EXCLUDED.files`,
				l.account, l.d.node, lease.Bytes, lease.Files)
		}
		return err
	})
	if err != nil {
		return vfs.Usage{}, vfs.Usage{}, err
	}
	return lease, committed, refused
}

// grant is the lease of one dimension: need, and of extra at most a
// quarter of the room need leaves, so that others still find some; or a
// QuotaError when the room is less than need. limit 0 is unlimited.
func grant(limit, committed, others, need, extra int64) (int64, *vfs.QuotaError) {
	if limit == 0 {
		return need + extra, nil
	}
	room := limit - committed - others
	if need > room {
		return 0, &vfs.QuotaError{Left: max(0, room), Limit: limit}
	}
	return need + min(extra, (room-need)/4), nil
}

// Recount sets the committed usage to a walk of the home.
func (l *ledger) Recount(found vfs.Usage) error {
	return l.tx(func(ctx context.Context, tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO silo_usage (account, bytes, files) VALUES ($1, $2, $3)
			ON CONFLICT (account) DO UPDATE SET bytes = EXCLUDED.bytes, files = EXCLUDED.files`, l.account, found.Bytes, found.Files)
		return err
	})
}

// Close records that this member no longer has the home open.
func (l *ledger) Close() {
	l.tx(func(ctx context.Context, tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "DELETE FROM silo_leases WHERE account = $1 AND node = $2", l.account, l.d.node); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, "DELETE FROM silo_open WHERE account = $1 AND node = $2", l.account, l.d.node)
		return err
	})
}
