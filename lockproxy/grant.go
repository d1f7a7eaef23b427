package lockproxy

import (
	"context"
	"errors"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// turn is what a semaphore's or read/write lock's waiter waits for.
type turn struct {
	service string // labels the waiters gauge
	prefix  string // the queue (shared watch) key is in
	key     string
	rev     int64 // key's create revision
	// wait blocks until the shared watch shows the turn has come.
	wait func(ctx context.Context, q *Queue) error
	// The grant as one linearizable read checks it: fewer than allowed keys
	// under blockPrefix were created before key.
	blockPrefix string
	allowed     int64
}

// waitGrant is Wait for semaphores and read/write locks: it waits through the
// shared watch of t.prefix, then confirms with one linearizable read that
// t.key still exists with its create revision and that its turn has come (the
// post-wait check). A key gone while waiting (lease expired or revoked, key
// deleted) is etcd Lock's answer for an expired session; any other failure
// removes the key so that no ghost waiter blocks the others.
func (b *Backend) waitGrant(ctx context.Context, t turn) (*pb.ResponseHeader, error) {
	ctx, cancel := b.WithStop(ctx)
	defer cancel()
	for {
		waiting := b.metrics.Waiting.WithLabelValues(t.service)
		waiting.Inc()
		q := b.Queues.Acquire(t.prefix)
		err := t.wait(ctx, q)
		b.Queues.Release(q)
		waiting.Dec()

		if errors.Is(err, errKeyGone) {
			return nil, errSessionExpired
		}
		if err != nil {
			b.Abandon(t.key, t.rev)
			return nil, b.CallErr(ctx, err)
		}
		resp, err := b.For(ctx).Txn(ctx).Then(
			clientv3.OpGet(t.key, clientv3.WithKeysOnly()),
			clientv3.OpGet(t.blockPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly(),
				clientv3.WithMaxCreateRev(t.rev-1), clientv3.WithLimit(t.allowed)),
		).Commit()
		if err != nil {
			b.Abandon(t.key, t.rev)
			return nil, b.CallErr(ctx, err)
		}
		own := resp.Responses[0].GetResponseRange().Kvs
		if len(own) == 0 || own[0].CreateRevision != t.rev {
			return nil, errSessionExpired
		}
		if int64(len(resp.Responses[1].GetResponseRange().Kvs)) >= t.allowed {
			// Keys are never created with an old revision, so a turn the
			// watch saw cannot be taken back; wait again rather than trust it.
			b.log.Warn("post-wait check found the turn not yet come; waiting again", "key", t.key, "create_revision", t.rev)
			continue
		}
		if ctx.Err() != nil {
			// The client left as we won: it will never learn it holds the key.
			b.Abandon(t.key, t.rev)
			return nil, b.CallErr(ctx, ctx.Err())
		}
		return resp.Header, nil
	}
}

// removeNow deletes key if it still has create revision rev, before the call
// answers, so that a refused call leaves no key; if etcd does not answer in
// time, the cleaner keeps trying in the background.
func (b *Backend) removeNow(ctx context.Context, key string, rev int64) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.timeout)
	defer cancel()
	_, err := b.For(ctx).Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", rev)).
		Then(clientv3.OpDelete(key)).
		Commit()
	if err != nil {
		b.Abandon(key, rev)
	}
}
