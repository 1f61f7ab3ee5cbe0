package activity

import (
	"cmp"
	"slices"
	"time"
)

// Status is a snapshot of a server's connections and transfers: what
// `silo status` shows and the admin socket's /v1/status returns.
type Status struct {
	Time        time.Time        `json:"time"`
	Connections []ConnStatus     `json:"connections"`
	Transfers   []TransferStatus `json:"transfers"`
}

// ConnStatus is one connection.
type ConnStatus struct {
	User    string    `json:"user"`    // "" before login
	Session string    `json:"session"` // "" before login
	Remote  string    `json:"remote"`
	Client  string    `json:"client"` // the client's SSH version string
	Since   time.Time `json:"since"`
	// Idle is how long the connection has done nothing, in seconds.
	Idle float64 `json:"idle_seconds"`
}

// TransferStatus is one running transfer.
type TransferStatus struct {
	ID        uint64    `json:"id"`
	User      string    `json:"user"`
	Session   string    `json:"session"`
	Path      string    `json:"path"`
	Direction Kind      `json:"direction"` // upload or download
	Protocol  string    `json:"protocol"`
	Bytes     int64     `json:"bytes"`
	Size      int64     `json:"size"` // -1: not known
	Since     time.Time `json:"since"`
	// Rate is bytes per second over the last sample (about a second);
	// ETA the seconds left at that rate, -1 when it cannot be told.
	Rate float64 `json:"rate"`
	ETA  float64 `json:"eta_seconds"`
}

// rateWindow is how long a rate sample spans: short enough to follow a
// transfer that speeds up or stalls, long enough not to flicker.
const rateWindow = time.Second

// Status returns a snapshot. Each call may take a new rate sample.
func (m *Monitor) Status() Status {
	now := m.now()
	st := Status{Time: now, Connections: []ConnStatus{}, Transfers: []TransferStatus{}}
	m.mu.Lock()
	defer m.mu.Unlock()
	for c := range m.conns {
		cs := ConnStatus{User: c.user, Session: c.session, Remote: c.info.Remote, Client: c.client, Since: c.since}
		last := c.since
		if c.info.LastActive != nil {
			if t := c.info.LastActive(); t.After(last) {
				last = t
			}
		}
		cs.Idle = max(0, now.Sub(last).Seconds())
		st.Connections = append(st.Connections, cs)
		for t := range c.transfers {
			st.Transfers = append(st.Transfers, t.statusLocked(now))
		}
	}
	sortConns(st.Connections)
	sortTransfers(st.Transfers)
	return st
}

func (t *Transfer) statusLocked(now time.Time) TransferStatus {
	done, size := t.done.Load(), t.size.Load()
	if dt := now.Sub(t.sampleAt); dt >= rateWindow {
		t.rate = float64(done-t.sampleBytes) / dt.Seconds()
		t.sampleAt, t.sampleBytes = now, done
	} else if t.sampleAt.Equal(t.start) && now.After(t.start) {
		// No full sample yet: the average so far.
		t.rate = float64(done) / now.Sub(t.start).Seconds()
	}
	eta := -1.0
	if size >= 0 && t.rate > 0 {
		eta = max(0, float64(size-done)/t.rate)
	}
	return TransferStatus{ID: t.id, User: t.c.user, Session: t.c.session, Path: t.path, Direction: t.kind,
		Protocol: t.protocol, Bytes: done, Size: size, Since: t.start, Rate: t.rate, ETA: eta}
}

// sortConns orders connections by the time they opened, then by remote
// address, and transfers by when they started, so that the view does not
// jump between redraws.
func sortConns(cs []ConnStatus) {
	slices.SortFunc(cs, func(a, b ConnStatus) int {
		return cmp.Or(a.Since.Compare(b.Since), cmp.Compare(a.Remote, b.Remote))
	})
}

func sortTransfers(ts []TransferStatus) {
	slices.SortFunc(ts, func(a, b TransferStatus) int { return cmp.Compare(a.ID, b.ID) })
}
