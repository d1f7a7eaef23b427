package client

import (
	"context"

	coordproxyv1 "github.com/coordproxy/coordproxy/proto/coordproxy/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Mutex is a lock on a name, held under the session's lease: etcd's Lock
// through the proxy, with TryLock, a fencing token and Describe.
type Mutex struct {
	s     Leaser
	locks coordproxyv1.LockServiceClient
	name  string
	held  *coordproxyv1.Held
}

// NewMutex returns a Mutex on name (keys name + "/" + hex(lease), as
// concurrency.NewMutex).
func NewMutex(s Leaser, name string) *Mutex {
	return &Mutex{s: s, locks: coordproxyv1.NewLockServiceClient(s.Client().ActiveConnection()), name: name}
}

// Lock waits until the mutex is held or ctx ends. If the session's lease
// ends while waiting it returns concurrency.ErrSessionExpired; if the grant
// comes back after a Session's window passed, the Session's error (the
// mutex counts as held: Unlock gives it back).
func (m *Mutex) Lock(ctx context.Context) error {
	ctx, end := sessionBound(ctx, m.s)
	h, err := m.locks.Lock(ctx, &coordproxyv1.LockRequest{Name: []byte(m.name), Lease: int64(m.s.Lease())})
	if err = end(fromWire(err)); err != nil {
		return err
	}
	m.held = h
	return inWindow(m.s)
}

// TryLock takes the mutex only if nobody holds or waits for it; otherwise it
// returns a *LockedError (errors.Is concurrency.ErrLocked) naming the holder,
// and writes nothing.
func (m *Mutex) TryLock(ctx context.Context) error {
	ctx, end := sessionBound(ctx, m.s)
	h, err := m.locks.TryLock(ctx, &coordproxyv1.LockRequest{Name: []byte(m.name), Lease: int64(m.s.Lease())})
	if err = end(fromWire(err)); err != nil {
		return err
	}
	m.held = h
	return inWindow(m.s)
}

// Unlock releases the mutex.
func (m *Mutex) Unlock(ctx context.Context) error {
	if m.held == nil {
		return errNotHeld
	}
	if _, err := m.locks.Unlock(ctx, &coordproxyv1.UnlockRequest{Key: m.held.Key, FencingToken: m.held.FencingToken}); err != nil {
		return fromWire(err)
	}
	m.held = nil
	return nil
}

// Key is the ownership key, "" when not held.
func (m *Mutex) Key() string { return string(m.held.GetKey()) }

// FencingToken is the ownership key's create revision (0 when not held): it
// grows with every grant, so a resource that keeps the highest token it has
// seen can refuse an older holder's writes.
func (m *Mutex) FencingToken() int64 { return m.held.GetFencingToken() }

// Header is the header of the answer that granted the mutex.
func (m *Mutex) Header() *coordproxyv1.ResponseHeader { return m.held.GetHeader() }

// IsOwner is a comparison that holds while this grant of the mutex does, for
// transactions that must only apply while it is held (as concurrency's).
func (m *Mutex) IsOwner() clientv3.Cmp {
	return clientv3.Compare(clientv3.CreateRevision(m.Key()), "=", m.FencingToken())
}

// Describe reads who holds the mutex's name and who waits.
func (m *Mutex) Describe(ctx context.Context) (*coordproxyv1.LockDescription, error) {
	d, err := m.locks.Describe(ctx, &coordproxyv1.DescribeRequest{Name: []byte(m.name)})
	return d, fromWire(err)
}
