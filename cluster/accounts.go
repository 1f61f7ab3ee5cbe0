package cluster

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/jackc/pgx/v5"

	"silo/users"
)

// accountsLock is the advisory lock key that serialises account updates,
// as the users file's lock file does.
const accountsLock = 0x73696c6f02

// accountsChannel is the NOTIFY channel of account changes.
const accountsChannel = "silo_accounts"

// Accounts is the account store in the database, a users.Backend.
func (d *DB) Accounts() users.Backend { return accounts{d} }

type accounts struct{ d *DB }

// Load reads every account.
func (a accounts) Load() (*users.File, error) {
	ctx, cancel := opContext()
	defer cancel()
	f, _, err := loadAccounts(ctx, a.d.pool)
	return f, err
}

type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// loadAccounts returns the accounts, and each one's stored encoding.
func loadAccounts(ctx context.Context, q querier) (*users.File, map[string][]byte, error) {
	rows, err := q.Query(ctx, "SELECT name, data FROM silo_accounts ORDER BY name")
	if err != nil {
		return nil, nil, err
	}
	f := &users.File{}
	stored := make(map[string][]byte)
	for rows.Next() {
		var name string
		var data []byte
		if err := rows.Scan(&name, &data); err != nil {
			return nil, nil, err
		}
		// Fields a newer silo stores are ignored here, and kept in the
		// database by Update.
		var u users.User
		if err := json.Unmarshal(data, &u); err != nil {
			return nil, nil, fmt.Errorf("account %s: %w", name, err)
		}
		if u.Name != name {
			return nil, nil, fmt.Errorf("account %s: record names %q", name, u.Name)
		}
		f.Users = append(f.Users, u)
		stored[name], _ = json.Marshal(u)
	}
	if err := rows.Err(); err != nil {
		return nil, nil, err
	}
	if err := f.Validate(); err != nil {
		return nil, nil, err
	}
	return f, stored, nil
}

// Update applies fn to the accounts under a lock, validates the result,
// writes the records that changed and notifies every server, in one
// transaction.
func (a accounts) Update(fn func(*users.File) error) error {
	ctx, cancel := opContext()
	defer cancel()
	return pgx.BeginFunc(ctx, a.d.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", accountsLock); err != nil {
			return err
		}
		f, stored, err := loadAccounts(ctx, tx)
		if err != nil {
			return err
		}
		if err := fn(f); err != nil {
			return err
		}
		if err := f.Validate(); err != nil {
			return err
		}
		changed := false
		kept := make(map[string]bool, len(f.Users))
		for _, u := range f.Users {
			kept[u.Name] = true
			data, err := json.Marshal(u)
			if err != nil {
				return err
			}
			if old, ok := stored[u.Name]; ok && string(old) == string(data) {
				continue
			}
			changed = true
			// || keeps the keys a newer silo wrote and this one does not
			// know.
			if _, err := tx.Exec(ctx, `INSERT INTO silo_accounts (name, data) VALUES ($1, $2)
				ON CONFLICT (name) DO UPDATE SET data = silo_accounts.data || EXCLUDED.data`, u.Name, data); err != nil {
				return err
			}
		}
		for name := range stored {
			if !kept[name] {
				changed = true
				if _, err := tx.Exec(ctx, "DELETE FROM silo_accounts WHERE name = $1", name); err != nil {
					return err
				}
			}
		}
		if changed {
			// Delivered at commit, to every server listening.
			if _, err := tx.Exec(ctx, "SELECT pg_notify($1, '')", accountsChannel); err != nil {
				return err
			}
		}
		return nil
	})
}
