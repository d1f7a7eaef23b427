package lockproxy

import (
	"context"

	"github.com/coordproxy/coordproxy/answer"
	"github.com/coordproxy/coordproxy/etcdio"
	"github.com/coordproxy/coordproxy/grant"
	"github.com/coordproxy/coordproxy/keyspace"
	coordproxyv1 "github.com/coordproxy/coordproxy/proto/coordproxy/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3lock/v3lockpb"
)

// Lock acquires name for req.Lease, waiting for earlier holders as
// concurrency.Mutex.Lock does, with the same keys and transactions.
func (s *Server) Lock(ctx context.Context, req *v3lockpb.LockRequest) (*v3lockpb.LockResponse, error) {
	if len(req.Name) == 0 {
		return nil, grant.ErrNameMissing
	}
	name := string(req.Name)
	lease, err := s.l0.Lease(ctx, "Lock", name, req.Lease)
	if err != nil {
		return nil, err
	}
	g, err := s.lock(ctx, name, lease)
	if err != nil {
		return nil, err
	}
	return &v3lockpb.LockResponse{Header: g.Header, Key: []byte(g.Key)}, nil
}

// Lock is etcd's Lock (the same keys, transaction and waiting) answering
// with the fencing token: the ownership key's create revision, which grows
// with every grant, so that a resource can refuse writes from a holder that
// has since lost the lock (docs/extensions.md).
func (l *Locks) Lock(ctx context.Context, req *coordproxyv1.LockRequest) (*coordproxyv1.Held, error) {
	name, lease, err := lockArgs(req)
	if err != nil {
		return nil, err
	}
	g, err := l.lock(ctx, name, lease)
	if err != nil {
		return nil, err
	}
	return answer.Held(g, lease), nil
}

// lock takes name for lease: concurrency.Mutex's transaction, then, if an
// earlier key holds it, the shared wait and the post-wait ownership check.
func (l *locks) lock(ctx context.Context, name string, lease clientv3.LeaseID) (grant.Grant, error) {
	c, err := l.enqueue(ctx, name, keyspace.OwnerKey(name, lease), lease)
	if err != nil {
		return grant.Grant{}, err
	}
	return l.g.Take(ctx, c)
}

// enqueue is concurrency.Mutex's tryAcquire transaction: put key unless it
// exists, and read the oldest key under the prefix, the holder. Once sent,
// it runs detached from the client's cancellation so that the proxy always
// learns whether it created a key, and can remove it if the client has gone.
// Locking again with a lease that holds or waits is the same claim, as for
// Mutex.
//
// When this proxy already follows the name's queue (others wait there), the
// transaction leaves the holder's read out and the queue decides: the read
// is a range over the prefix, O(n) in etcd for n waiters, and the queue's
// view, synced and exact once it has passed the put's revision, gives the
// same answer by the same rule (no older key; an older key can only go
// away, never come). Parking n waiters then costs etcd O(n), not O(n²); a
// waiter granted so still passes the post-wait check.
func (l *locks) enqueue(ctx context.Context, name, key string, lease clientv3.LeaseID) (grant.Claim, error) {
	put, get := []clientv3.Op{clientv3.OpPut(key, "", clientv3.WithLease(lease))}, []clientv3.Op{clientv3.OpGet(key)}
	readHolder := !l.g.Following(name)
	if readHolder {
		getOwner := clientv3.OpGet(keyspace.Prefix(name), clientv3.WithFirstCreate()...)
		put, get = append(put, getOwner), append(get, getOwner)
	}
	resp, err := l.etcd.SendCreate(ctx, etcdio.Txn{
		If:     []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(key), "=", 0)},
		Then:   put,
		Else:   get,
		Prefix: keyspace.Prefix(name),
	})
	if err != nil {
		return grant.Claim{}, err
	}
	c := grant.Claim{Service: grant.ServiceLock, Name: name, Key: key, Rev: resp.Header.Revision, Lease: lease,
		Header: resp.Header, Created: resp.Succeeded}
	if !resp.Succeeded {
		c.Rev = resp.Responses[0].GetResponseRange().Kvs[0].CreateRevision
	}
	if readHolder {
		holder := resp.Responses[1].GetResponseRange().Kvs
		c.Free = len(holder) == 0 || holder[0].CreateRevision == c.Rev
	}
	return c, nil
}

// lockArgs checks a LockRequest of coordproxy's API.
func lockArgs(req *coordproxyv1.LockRequest) (string, clientv3.LeaseID, error) {
	if len(req.Name) == 0 {
		return "", 0, grant.ErrNameMissing
	}
	if req.Lease == 0 {
		return "", 0, grant.ErrLeaseMissing
	}
	return string(req.Name), clientv3.LeaseID(req.Lease), nil
}
