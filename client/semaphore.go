package client

import (
	"context"

	coordproxyv1 "github.com/coordproxy/coordproxy/proto/coordproxy/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Semaphore lets up to limit holders in at once; the others wait first
// come, first served.
type Semaphore struct {
	s     Leaser
	sems  coordproxyv1.SemaphoreServiceClient
	name  string
	limit int64
	held  *coordproxyv1.Held
}

// NewSemaphore returns a Semaphore on name for limit holders. Every user of
// a name must give the same limit.
func NewSemaphore(s Leaser, name string, limit int64) *Semaphore {
	return &Semaphore{s: s, sems: coordproxyv1.NewSemaphoreServiceClient(s.Client().ActiveConnection()), name: name, limit: limit}
}

// Acquire waits for a place or until ctx ends. A place granted after a
// Session's window passed returns the Session's error (Release gives it
// back).
func (m *Semaphore) Acquire(ctx context.Context) error {
	ctx, end := sessionBound(ctx, m.s)
	h, err := m.sems.Acquire(ctx, &coordproxyv1.AcquireRequest{Name: []byte(m.name), Lease: int64(m.s.Lease()), Limit: m.limit})
	if err = end(fromWire(err)); err != nil {
		return err
	}
	m.held = h
	return inWindow(m.s)
}

// Release gives the place back.
func (m *Semaphore) Release(ctx context.Context) error {
	if m.held == nil {
		return errNotHeld
	}
	if _, err := m.sems.Release(ctx, &coordproxyv1.ReleaseRequest{Key: m.held.Key, FencingToken: m.held.FencingToken}); err != nil {
		return fromWire(err)
	}
	m.held = nil
	return nil
}

// Key is the holder's key, "" when not held.
func (m *Semaphore) Key() string { return string(m.held.GetKey()) }

// FencingToken is the key's create revision (0 when not held).
func (m *Semaphore) FencingToken() int64 { return m.held.GetFencingToken() }

// IsOwner holds while this place is held.
func (m *Semaphore) IsOwner() clientv3.Cmp {
	return clientv3.Compare(clientv3.CreateRevision(m.Key()), "=", m.FencingToken())
}

// Describe reads the holders and the waiters.
func (m *Semaphore) Describe(ctx context.Context) (*coordproxyv1.SemaphoreDescription, error) {
	d, err := m.sems.Describe(ctx, &coordproxyv1.DescribeRequest{Name: []byte(m.name)})
	return d, fromWire(err)
}
