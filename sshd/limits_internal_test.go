package sshd

import (
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"
)

// The penalty table holds at most maxPenaltySources sources; past that, new
// sources go untracked (let through) rather than growing it.
func TestPenaltyTableBounded(t *testing.T) {
	t.Parallel()
	now := time.Unix(1_000_000, 0)
	pen := DefaultPenalties()
	g := newGate(DefaultLimits(), pen, nil)
	g.now = func() time.Time { return now }
	addr := func(i int) netip.Addr {
		return netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
	}
	for i := range maxPenaltySources {
		g.penalise(addr(i), pen.Max) // each blocked for 10 min
	}
	if len(g.penalties) != maxPenaltySources {
		t.Fatalf("%d sources tracked", len(g.penalties))
	}
	extra := addr(maxPenaltySources + 1)
	for range 10 {
		g.penalise(extra, pen.AuthFail)
	}
	if len(g.penalties) != maxPenaltySources {
		t.Fatalf("table grew to %d", len(g.penalties))
	}
	if ok, why := g.admit(extra); !ok {
		t.Fatalf("untracked source refused: %s", why)
	}
	if ok, _ := g.admit(addr(7)); ok {
		t.Fatal("a tracked, penalised source was admitted")
	}
	// Once penalties run out, room is made for new sources.
	now = now.Add(pen.Max + time.Second)
	for range 4 {
		g.penalise(extra, pen.AuthFail)
	}
	if ok, _ := g.admit(extra); ok {
		t.Fatal("a source past min was admitted once the table had room")
	}
}

// OpenSSH's random early drop: always below start, never at full.
func TestMaxStartupsDrop(t *testing.T) {
	t.Parallel()
	lim := DefaultLimits()
	lim.PerSourceMaxStartups = 0
	g := newGate(lim, DefaultPenalties(), nil)
	g.intN = rand.New(rand.NewPCG(1, 2)).IntN // the same dice every run
	a := netip.MustParseAddr("192.0.2.1")
	for i := range lim.MaxStartups.Start {
		if ok, why := g.admit(a); !ok {
			t.Fatalf("connection %d refused below start: %s", i+1, why)
		}
	}
	admitted := 0
	for range 5000 {
		if ok, _ := g.admit(a); ok {
			admitted++
		}
	}
	if g.unauth != lim.MaxStartups.Full {
		t.Fatalf("%d unauthenticated connections, want the cap %d", g.unauth, lim.MaxStartups.Full)
	}
	if admitted != lim.MaxStartups.Full-lim.MaxStartups.Start {
		t.Fatalf("admitted %d between start and full", admitted)
	}
}
