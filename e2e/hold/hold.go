// Package hold takes what the e2e tests' holders hold: a lock, a semaphore
// place of one, a write lock, or leadership, through the Go client.
package hold

import (
	"context"
	"fmt"

	"github.com/coordproxy/coordproxy/client"
)

// Kinds are what Take takes.
var Kinds = []string{"lock", "semaphore", "rwlock", "campaign"}

// Take acquires kind on name through s (a campaign proclaims value) and
// returns the fencing token.
func Take(ctx context.Context, s *client.Session, kind, name, value string) (int64, error) {
	switch kind {
	case "lock":
		m := client.NewMutex(s, name)
		err := m.Lock(ctx)
		return m.FencingToken(), err
	case "semaphore":
		m := client.NewSemaphore(s, name, 1)
		err := m.Acquire(ctx)
		return m.FencingToken(), err
	case "rwlock":
		m := client.NewRWMutex(s, name)
		err := m.Lock(ctx)
		return m.FencingToken(), err
	case "campaign":
		e := client.NewElection(s, name)
		err := e.Campaign(ctx, value)
		return e.Rev(), err
	}
	return 0, fmt.Errorf("no such kind %q", kind)
}
