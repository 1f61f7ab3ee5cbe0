package cluster

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// penaltiesChannel is the NOTIFY channel of penalties earned on a member:
// every other member adds them to the source's penalty, so that an attacker
// spread across members by a balancer is blocked on all of them.
const penaltiesChannel = "silo_penalties"

// SharePenalty tells the other members that a's source earned d here. It
// does not wait: penalties queue for Run to send, and past a full queue
// (the database away, or a flood) they stay this member's own.
func (d *DB) SharePenalty(a netip.Addr, dur time.Duration) {
	select {
	case d.penalties <- fmt.Sprintf("%s %s %d", d.node, a, dur):
	default:
	}
}

// sendPenalties sends queued penalties until ctx ends.
func (d *DB) sendPenalties(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case p := <-d.penalties:
			octx, cancel := context.WithTimeout(ctx, opTimeout)
			if _, err := d.pool.Exec(octx, "SELECT pg_notify($1, $2)", penaltiesChannel, p); err != nil {
				d.log.Debug("penalty not shared", "err", err)
			}
			cancel()
		}
	}
}

// parsePenalty reads a notification of SharePenalty's.
func parsePenalty(payload string) (node string, a netip.Addr, d time.Duration, err error) {
	f := strings.Fields(payload)
	if len(f) != 3 {
		return "", a, 0, fmt.Errorf("penalty notification %q: want 3 fields", payload)
	}
	if a, err = netip.ParseAddr(f[1]); err != nil {
		return "", a, 0, err
	}
	n, err := strconv.ParseInt(f[2], 10, 64)
	if err != nil || n <= 0 {
		return "", a, 0, fmt.Errorf("penalty notification %q: bad duration", payload)
	}
	return f[0], a, time.Duration(n), nil
}
