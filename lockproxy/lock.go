package lockproxy

import (
	"context"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3lock/v3lockpb"
)

// Lock acquires name for req.Lease, waiting for earlier holders as
// concurrency.Mutex.Lock does, with the same keys and transactions.
func (s *Server) Lock(ctx context.Context, req *v3lockpb.LockRequest) (*v3lockpb.LockResponse, error) {
	if len(req.Name) == 0 {
		return nil, ErrNameMissing
	}
	name := string(req.Name)
	lease, err := s.b.Lease(ctx, "Lock", name, req.Lease)
	if err != nil {
		return nil, err
	}
	g, err := s.b.lock(ctx, name, lease)
	if err != nil {
		return nil, err
	}
	return &v3lockpb.LockResponse{Header: g.header, Key: []byte(g.key)}, nil
}

// grant is a lock (or semaphore) granted to a call.
type grant struct {
	header *pb.ResponseHeader
	key    string
	rev    int64 // create revision of key: the fencing token
}

// lock takes name for lease: concurrency.Mutex's transaction, then, if an
// earlier key holds it, the shared wait and the post-wait ownership check.
func (b *Backend) lock(ctx context.Context, name string, lease clientv3.LeaseID) (grant, error) {
	key := OwnerKey(name, lease)
	a, err := b.acquire(ctx, name, key, lease)
	if err != nil {
		return grant{}, err
	}
	if !a.owner {
		hdr, err := b.Wait(ctx, ServiceLock, name, key, a.rev)
		if err != nil {
			return grant{}, err
		}
		b.Hold(ServiceLock, name, key, a.rev)
		return grant{hdr, key, a.rev}, nil
	}
	if ctx.Err() != nil && a.created {
		// The client left while we took the lock for it.
		b.Abandon(key, a.rev)
		return grant{}, ctx.Err()
	}
	b.Hold(ServiceLock, name, key, a.rev)
	return grant{a.header, key, a.rev}, nil
}

type acquisition struct {
	rev     int64 // create revision of key
	created bool  // this call created key
	owner   bool  // key is the oldest under the prefix
	header  *pb.ResponseHeader
}

// acquire is concurrency.Mutex's tryAcquire transaction. Once sent, it runs
// detached from the client's cancellation so that the proxy always learns
// whether it created a key, and can remove it if the client has gone.
func (b *Backend) acquire(ctx context.Context, name, key string, lease clientv3.LeaseID) (acquisition, error) {
	pfx := Prefix(name)
	getOwner := clientv3.OpGet(pfx, clientv3.WithFirstCreate()...)
	resp, err := b.Acquire(ctx, func(ctx context.Context) (*clientv3.TxnResponse, error) {
		return b.For(ctx).Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
			Then(clientv3.OpPut(key, "", clientv3.WithLease(lease)), getOwner).
			Else(clientv3.OpGet(key), getOwner).
			Commit()
	})
	if err != nil {
		return acquisition{}, err
	}
	a := acquisition{rev: resp.Header.Revision, created: resp.Succeeded, header: resp.Header}
	if !resp.Succeeded {
		a.rev = resp.Responses[0].GetResponseRange().Kvs[0].CreateRevision
	}
	holder := resp.Responses[1].GetResponseRange().Kvs
	a.owner = len(holder) == 0 || holder[0].CreateRevision == a.rev
	return a, nil
}
