package lockproxy

import (
	"context"

	"github.com/coordproxy/coordproxy/answer"
	"github.com/coordproxy/coordproxy/etcdio"
	"github.com/coordproxy/coordproxy/grant"
	"github.com/coordproxy/coordproxy/keyspace"
	coordproxyv1 "github.com/coordproxy/coordproxy/proto/coordproxy/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
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
	key := keyspace.OwnerKey(name, lease)
	pfx := keyspace.Prefix(name)
	getOwner := clientv3.OpGet(pfx, clientv3.WithFirstCreate()...)
	resp, err := l.etcd.SendCreate(ctx, etcdio.Txn{
		If:     []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(pfx), "=", 0).WithPrefix()},
		Then:   []clientv3.Op{clientv3.OpPut(key, "", clientv3.WithLease(lease)), getOwner},
		Else:   []clientv3.Op{getOwner},
		Prefix: pfx,
	})
	if err != nil {
		return nil, err
	}
	owner := resp.Responses[len(resp.Responses)-1].GetResponseRange().Kvs
	if len(owner) == 0 {
		// Only if the lease expired and took the key with it at once.
		return nil, grant.ErrSessionExpired
	}
	if string(owner[0].Key) != key {
		holder := answer.KeyInfo(owner[0])
		if err := answer.LeaseTTLs(ctx, l.etcd, []*coordproxyv1.Key{holder}); err != nil {
			return nil, err
		}
		st, err := errLockHeld.WithDetails(&coordproxyv1.Contended{Holder: holder})
		if err != nil {
			return nil, err
		}
		return nil, st.Err()
	}
	g, err := l.g.Take(ctx, grant.Claim{Service: grant.ServiceLock, Name: name, Key: key, Lease: lease,
		Rev: owner[0].CreateRevision, Header: resp.Header, Created: resp.Succeeded, Free: true})
	if err != nil {
		return nil, err
	}
	return answer.Held(g, lease), nil
}
