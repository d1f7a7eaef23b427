package lockproxy

import (
	"context"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	coordproxyv1 "github.com/coordproxy/coordproxy/proto/coordproxy/v1"
)

// TryLock takes name for req.Lease only if nobody holds or waits for it.
//
// concurrency.Mutex.TryLock puts its key and, if an earlier key holds the
// lock, deletes it again: a key that stays behind forever if the client dies
// in between, and one a waiter in that moment queues behind. TryLock here is
// one transaction that puts the key only if the prefix is empty, so a failed
// attempt writes nothing. The key, once put, is the Mutex layout's, and as
// the only key under the prefix it is the holder for every etcd client. A
// lease that already holds the lock holds it again (re-entrant, as Mutex).
func (l *Locks) TryLock(ctx context.Context, req *coordproxyv1.LockRequest) (*coordproxyv1.Held, error) {
	name, lease, err := lockArgs(req)
	if err != nil {
		return nil, err
	}
	key := OwnerKey(name, lease)
	pfx := Prefix(name)
	getOwner := clientv3.OpGet(pfx, clientv3.WithFirstCreate()...)
	resp, err := l.b.Acquire(ctx, func(ctx context.Context) (*clientv3.TxnResponse, error) {
		return l.b.For(ctx).Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(pfx), "=", 0).WithPrefix()).
			Then(clientv3.OpPut(key, "", clientv3.WithLease(lease)), getOwner).
			Else(getOwner).
			Commit()
	})
	if err != nil {
		return nil, err
	}
	owner := resp.Responses[len(resp.Responses)-1].GetResponseRange().Kvs
	if len(owner) == 0 {
		// Only if the lease expired and took the key with it at once.
		return nil, errSessionExpired
	}
	if string(owner[0].Key) != key {
		holder := KeyInfo(owner[0])
		if err := l.b.LeaseTTLs(ctx, []*coordproxyv1.Key{holder}); err != nil {
			return nil, err
		}
		st, err := status.New(codes.FailedPrecondition, "coordproxy: lock is held").
			WithDetails(&coordproxyv1.Contended{Holder: holder})
		if err != nil {
			return nil, err
		}
		return nil, st.Err()
	}
	rev := owner[0].CreateRevision
	if ctx.Err() != nil && resp.Succeeded {
		l.b.Abandon(key, rev) // the client left while we took the lock for it
		return nil, ctx.Err()
	}
	l.b.Hold(ServiceLock, name, key, rev)
	return held(grant{resp.Header, key, rev}, lease), nil
}

// lockArgs checks a LockRequest of coordproxy's API.
func lockArgs(req *coordproxyv1.LockRequest) (string, clientv3.LeaseID, error) {
	if len(req.Name) == 0 {
		return "", 0, ErrNameMissing
	}
	if req.Lease == 0 {
		return "", 0, ErrLeaseMissing
	}
	return string(req.Name), clientv3.LeaseID(req.Lease), nil
}

func held(g grant, lease clientv3.LeaseID) *coordproxyv1.Held {
	return &coordproxyv1.Held{Header: Header(g.header), Key: []byte(g.key), FencingToken: g.rev, Lease: int64(lease)}
}
