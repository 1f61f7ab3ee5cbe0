package sshd

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"sync"
	"time"
)

// Limits protect the server from floods and from clients that hold on to
// what they do not use. OpenSSH's sshd_config options of the same names are
// the model.
//
// The toml tags are the keys of config.toml's [limits] table, which decodes
// straight into a Limits.
type Limits struct {
	LoginGraceTime        time.Duration `toml:"login_grace_time"`          // to authenticate, key exchange included
	MaxStartups           Startups      `toml:"max_startups"`              // unauthenticated connections, all sources
	PerSourceMaxStartups  int           `toml:"per_source_max_startups"`   // unauthenticated connections from one address
	MaxAuthTries          int           `toml:"max_auth_tries"`            // failed attempts per connection
	MaxSessions           int           `toml:"max_sessions"`              // session channels open at once per connection
	MaxConnectionsPerUser int           `toml:"max_connections_per_user"`  // 0: unlimited
	IdleTimeout           time.Duration `toml:"idle_timeout"`              // without SFTP requests or a working command
	KeepaliveInterval     time.Duration `toml:"keepalive_interval"`        // keepalive@openssh.com probes
	KeepaliveCountMax     int           `toml:"keepalive_count_max"`       // unanswered probes before the connection is dropped
	MaxOpenHandles        int           `toml:"max_open_handles"`          // per SFTP session
	MaxOpenHandlesPerUser int           `toml:"max_open_handles_per_user"` // all of a user's SFTP sessions together
}

// Startups is MaxStartups' start:rate:full. From start unauthenticated
// connections on, a new one is dropped with probability rate percent,
// rising linearly to 100 at full.
type Startups struct{ Start, Rate, Full int }

// UnmarshalText reads "start:rate:full".
func (s *Startups) UnmarshalText(b []byte) error {
	var v Startups
	if n, err := fmt.Sscanf(string(b), "%d:%d:%d", &v.Start, &v.Rate, &v.Full); n != 3 || err != nil ||
		v.Start < 1 || v.Rate < 0 || v.Rate > 100 || v.Full < v.Start {
		return fmt.Errorf("%q is not start:rate:full with 1 <= start <= full and rate a percentage", b)
	}
	*s = v
	return nil
}

// DefaultLimits are OpenSSH's defaults, with PerSourceMaxStartups below
// MaxStartups' start, so that one source alone cannot push every other one
// into the random drop.
func DefaultLimits() Limits {
	return Limits{
		LoginGraceTime:        30 * time.Second,
		MaxStartups:           Startups{10, 30, 100},
		PerSourceMaxStartups:  5,
		MaxAuthTries:          6,
		MaxSessions:           10,
		MaxConnectionsPerUser: 20,
		IdleTimeout:           15 * time.Minute,
		KeepaliveInterval:     30 * time.Second,
		KeepaliveCountMax:     3,
		MaxOpenHandles:        256,
		MaxOpenHandlesPerUser: 1024,
	}
}

// Penalties are OpenSSH's PerSourcePenalties: each way a connection can
// end badly adds time to its source's penalty; a source whose penalty
// passes Min is refused before key exchange until the penalty has run out.
// Penalties never exceed Max. Sources are IPv4 addresses and IPv6 /64s.
//
// The toml tags are the keys of config.toml's [penalties] table.
type Penalties struct {
	AuthFail      time.Duration  `toml:"authfail"`       // the connection ended after failed logins
	InvalidUser   time.Duration  `toml:"invaliduser"`    // ... for a user that does not exist
	NoAuth        time.Duration  `toml:"noauth"`         // the connection ended without trying to log in
	GraceExceeded time.Duration  `toml:"grace_exceeded"` // LoginGraceTime ran out
	Min           time.Duration  `toml:"min"`
	Max           time.Duration  `toml:"max"`
	Exempt        []netip.Prefix `toml:"exempt"` // never penalised
}

// DefaultPenalties are OpenSSH's. Loopback is not exempt: a local proxy can
// front an attacker.
func DefaultPenalties() Penalties {
	return Penalties{
		AuthFail:      5 * time.Second,
		InvalidUser:   5 * time.Second,
		NoAuth:        time.Second,
		GraceExceeded: 10 * time.Second,
		Min:           15 * time.Second,
		Max:           10 * time.Minute,
	}
}

// maxPenaltySources bounds the penalty table; sources past it go
// untracked (let through), so the table cannot be grown without bound.
const maxPenaltySources = 65536

// gate decides, before key exchange, whether a connection may proceed, and
// keeps the counts that decision needs.
type gate struct {
	mu        sync.Mutex
	lim       Limits
	pen       Penalties
	unauth    int
	perSource map[netip.Addr]int
	penalties map[netip.Prefix]*penalty
	onBlock   func(src netip.Prefix, until time.Time) // called when a source becomes blocked
	now       func() time.Time
	intN      func(n int) int // the random early drop's dice
}

type penalty struct {
	expiry time.Time
	active bool // passed Min: refused until expiry
}

func newGate(lim Limits, pen Penalties, onBlock func(netip.Prefix, time.Time)) *gate {
	return &gate{lim: lim, pen: pen, perSource: make(map[netip.Addr]int),
		penalties: make(map[netip.Prefix]*penalty), onBlock: onBlock, now: time.Now, intN: rand.IntN}
}

func (g *gate) set(lim Limits, pen Penalties) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.lim, g.pen = lim, pen
}

func (g *gate) limits() Limits {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.lim
}

func (g *gate) penaltiesNow() Penalties {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.pen
}

func sourceOf(a netip.Addr) netip.Prefix {
	a = a.Unmap()
	if a.Is4() {
		return netip.PrefixFrom(a, 32)
	}
	p, _ := a.Prefix(64)
	return p
}

func (g *gate) exempt(a netip.Addr) bool {
	for _, p := range g.pen.Exempt {
		if p.Contains(a.Unmap()) {
			return true
		}
	}
	return false
}

// admit counts a new unauthenticated connection from a, or says why it is
// refused.
func (g *gate) admit(a netip.Addr) (ok bool, why string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if p := g.penalties[sourceOf(a)]; p != nil && p.active && !g.exempt(a) {
		if g.now().Before(p.expiry) {
			return false, "penalty"
		}
		delete(g.penalties, sourceOf(a))
	}
	if g.lim.PerSourceMaxStartups > 0 && g.perSource[a] >= g.lim.PerSourceMaxStartups {
		return false, "per-source startups"
	}
	if s := g.lim.MaxStartups; s.Start > 0 && g.unauth >= s.Start {
		if g.unauth >= s.Full {
			return false, "startups full"
		}
		p := s.Rate
		if s.Full > s.Start {
			p += (100 - s.Rate) * (g.unauth - s.Start) / (s.Full - s.Start)
		}
		if g.intN(100) < p {
			return false, "startups random drop"
		}
	}
	g.unauth++
	g.perSource[a]++
	return true, ""
}

// leave uncounts an unauthenticated connection: it logged in or ended.
func (g *gate) leave(a netip.Addr) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.unauth--
	if g.perSource[a]--; g.perSource[a] <= 0 {
		delete(g.perSource, a)
	}
}

// penalise adds d to a's source.
func (g *gate) penalise(a netip.Addr, d time.Duration) {
	if d <= 0 {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.exempt(a) {
		return
	}
	src, now := sourceOf(a), g.now()
	p := g.penalties[src]
	if p == nil {
		if len(g.penalties) >= maxPenaltySources {
			for k, v := range g.penalties {
				if !now.Before(v.expiry) {
					delete(g.penalties, k)
				}
			}
			if len(g.penalties) >= maxPenaltySources {
				return
			}
		}
		p = &penalty{expiry: now}
		g.penalties[src] = p
	}
	if p.expiry.Before(now) {
		p.expiry, p.active = now, false
	}
	p.expiry = p.expiry.Add(d)
	if limit := now.Add(g.pen.Max); g.pen.Max > 0 && p.expiry.After(limit) {
		p.expiry = limit
	}
	if !p.active && p.expiry.Sub(now) > g.pen.Min {
		p.active = true
		if g.onBlock != nil {
			g.onBlock(src, p.expiry)
		}
	}
}
