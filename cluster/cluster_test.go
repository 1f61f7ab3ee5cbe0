package cluster

import (
	"context"
	"reflect"
	"sync"
	"testing"

	"silo/internal/pgtest"
	"silo/users"
	"silo/vfs"
)

// Servers starting at once on a new database create the schema once, and
// starting again changes nothing.
func TestConcurrentMigration(t *testing.T) {
	pg := pgtest.Start(t)
	ctx := context.Background()
	const n = 4
	dbs := make([]*DB, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { dbs[i], errs[i] = Open(ctx, pg.DSN(), nil) })
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("server %d: %v", i, errs[i])
		}
		defer dbs[i].Close()
	}
	again, err := Open(ctx, pg.DSN(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	var rows, max int
	if err := again.pool.QueryRow(ctx, "SELECT count(*), max(version) FROM silo_schema").Scan(&rows, &max); err != nil {
		t.Fatal(err)
	}
	if rows != len(migrations) || max != len(migrations) {
		t.Fatalf("silo_schema has %d rows up to version %d; want %d", rows, max, len(migrations))
	}
}

// Accounts round-trip as whole records, and an update keeps the keys of a
// record that this version does not know (written by a newer one).
func TestAccountsKeepUnknownFields(t *testing.T) {
	pg := pgtest.Start(t)
	ctx := context.Background()
	db, err := Open(ctx, pg.DSN(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	a := db.Accounts()
	if err := a.Update(func(f *users.File) error {
		f.Users = append(f.Users, users.User{Name: "alice", Quota: 1 << 20, Keys: nil, Home: "a"})
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := db.pool.Exec(ctx, `UPDATE silo_accounts SET data = data || '{"FromTheFuture": 7}' WHERE name = 'alice'`); err != nil {
		t.Fatal(err)
	}
	if err := a.Update(func(f *users.File) error {
		f.Users[f.Find("alice")].Quota = 2 << 20
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	f, err := a.Load()
	if err != nil {
		t.Fatal(err)
	}
	if u := f.Users[f.Find("alice")]; u.Quota != 2<<20 || u.Home != "a" {
		t.Fatalf("alice after update: %+v", u)
	}
	var future int
	if err := db.pool.QueryRow(ctx, `SELECT (data->>'FromTheFuture')::int FROM silo_accounts WHERE name = 'alice'`).Scan(&future); err != nil || future != 7 {
		t.Fatalf("the newer version's key: %d, %v", future, err)
	}
}

// Leases from several members never take committed usage plus leases past
// the quota, and a refusal gives the refused member's lease back.
func TestLedgerLeasesStayWithinQuota(t *testing.T) {
	pg := pgtest.Start(t)
	ctx := context.Background()
	const quota = 10 << 20
	lim := vfs.Limits{Bytes: quota}
	var ls []vfs.Ledger
	for i := range 3 {
		db, err := Open(ctx, pg.DSN(), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		if err := db.Join("127.0.0.1:0", "test"); err != nil {
			t.Fatal(err)
		}
		l := db.Ledger("alice")
		if _, err := l.Open(vfs.Usage{}); err != nil {
			t.Fatalf("member %d: %v", i, err)
		}
		ls = append(ls, l)
	}
	// Each member asks for 1 MiB and as much again as extra, in turn,
	// folding in what it leased before as used.
	held := make([]int64, len(ls))
	for round := 0; round < 40; round++ {
		i := round % len(ls)
		lease, committed, err := ls[i].Settle(lim, vfs.Usage{Bytes: held[i]}, vfs.Usage{Bytes: 1 << 20}, vfs.Usage{Bytes: 1 << 20})
		var total int64
		if err := ls[i].(*ledger).d.pool.QueryRow(ctx, "SELECT coalesce(sum(bytes), 0) FROM silo_leases WHERE account = 'alice'").Scan(&total); err != nil {
			t.Fatal(err)
		}
		if committed.Bytes+total > quota {
			t.Fatalf("round %d: committed %d + leases %d > quota %d", round, committed.Bytes, total, quota)
		}
		if err != nil {
			if lease.Bytes != 0 {
				t.Fatalf("round %d: refused with a lease of %d", round, lease.Bytes)
			}
			held[i] = 0
			continue
		}
		held[i] = lease.Bytes // all of it used before the next settle
	}
	var committed int64
	if err := ls[0].(*ledger).d.pool.QueryRow(ctx, "SELECT bytes FROM silo_usage WHERE account = 'alice'").Scan(&committed); err != nil {
		t.Fatal(err)
	}
	if committed < quota-3<<20 {
		t.Fatalf("committed %d of a %d quota: leases left too much unused", committed, quota)
	}
}

// Every field of every account of the example users file comes back from
// the database as it went in: the record is stored whole, so a field added
// to users.User needs nothing here.
func TestAccountsRoundTripEveryField(t *testing.T) {
	want, err := users.Load("../users.example.toml")
	if err != nil {
		t.Fatal(err)
	}
	if len(want.Users) == 0 {
		t.Fatal("no accounts in users.example.toml")
	}
	pg := pgtest.Start(t)
	db, err := Open(context.Background(), pg.DSN(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Accounts().Update(func(f *users.File) error { f.Users = want.Users; return nil }); err != nil {
		t.Fatal(err)
	}
	got, err := db.Accounts().Load()
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range want.Users {
		i := got.Find(w.Name)
		if i < 0 {
			t.Fatalf("%s: not loaded", w.Name)
		}
		if !reflect.DeepEqual(got.Users[i], w) {
			t.Errorf("%s: got %+v\nwant %+v", w.Name, got.Users[i], w)
		}
	}
}
