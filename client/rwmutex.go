package client

import (
	"context"

	coordproxyv1 "github.com/coordproxy/coordproxy/proto/coordproxy/v1"
)

// RWMutex is a read/write lock with the keys of etcd's
// experimental/recipes RWMutex on the same prefix.
type RWMutex struct {
	s    Leaser
	rw   coordproxyv1.RWLockServiceClient
	name string
	held *coordproxyv1.Held
}

// NewRWMutex returns an RWMutex on prefix, as recipes.NewRWMutex(s, prefix)
// (the keys are prefix + "/read/…" and prefix + "/write/…").
func NewRWMutex(s Leaser, prefix string) *RWMutex {
	return &RWMutex{s: s, rw: coordproxyv1.NewRWLockServiceClient(s.Client().ActiveConnection()), name: prefix}
}

// RLock waits until no earlier writer holds or waits.
func (m *RWMutex) RLock(ctx context.Context) error {
	ctx, end := sessionBound(ctx, m.s)
	h, err := m.rw.RLock(ctx, &coordproxyv1.RWLockRequest{Name: []byte(m.name), Lease: int64(m.s.Lease())})
	return m.take(h, end(fromWire(err)))
}

// Lock waits until every earlier reader and writer is gone.
func (m *RWMutex) Lock(ctx context.Context) error {
	ctx, end := sessionBound(ctx, m.s)
	h, err := m.rw.WLock(ctx, &coordproxyv1.RWLockRequest{Name: []byte(m.name), Lease: int64(m.s.Lease())})
	return m.take(h, end(fromWire(err)))
}

// take keeps a grant; one that came back after a Session's window passed
// returns the Session's error (Unlock gives it back).
func (m *RWMutex) take(h *coordproxyv1.Held, err error) error {
	if err != nil {
		return err
	}
	m.held = h
	return inWindow(m.s)
}

// Unlock releases a read or write hold.
func (m *RWMutex) Unlock(ctx context.Context) error {
	if m.held == nil {
		return errNotHeld
	}
	if _, err := m.rw.Unlock(ctx, &coordproxyv1.UnlockRequest{Key: m.held.Key, FencingToken: m.held.FencingToken}); err != nil {
		return fromWire(err)
	}
	m.held = nil
	return nil
}

// Key is the held key, "" when not held.
func (m *RWMutex) Key() string { return string(m.held.GetKey()) }

// FencingToken is the held key's create revision (0 when not held).
func (m *RWMutex) FencingToken() int64 { return m.held.GetFencingToken() }
