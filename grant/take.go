package grant

import (
	"context"
	"errors"

	"github.com/coordproxy/coordproxy/quota"

	"github.com/coordproxy/coordproxy/etcdio"
	"github.com/coordproxy/coordproxy/keyspace"
	"github.com/coordproxy/coordproxy/queue"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// A Claim is a key that a call's transaction put in a name's queue (or found
// there, put by an earlier call with the same lease), and how its turn is
// judged. Every primitive makes one and hands it to Take.
type Claim struct {
	Service string // labels the waiters and holders gauges
	Name    string // whose queue, keyspace.Prefix(Name), holds Key
	Key     string
	Rev     int64              // Key's create revision: the fencing token
	Lease   clientv3.LeaseID   // Key's lease
	Header  *pb.ResponseHeader // of the transaction that put or found Key
	Created bool               // this call's transaction created Key
	// Free: the transaction saw Key's turn already come, so there is
	// nothing to wait for.
	Free bool

	// Wait blocks until the name's queue shows the turn has come; nil is
	// the queue's WaitTurn (no older key under the prefix). It selects on
	// stop itself and returns queue.ErrKeyGone once Key is gone.
	Wait func(ctx context.Context, stop <-chan struct{}, q *queue.Queue) error
	// Blockers, if set, is the prefix (under keyspace.Prefix(Name)) of the keys the post-wait check
	// counts: the turn has come if fewer than Allowed of them were created
	// before Key. Without Blockers the check only confirms that Key is
	// still there: WaitTurn's answer cannot be taken back.
	Blockers string
	Allowed  int64
}

// A Grant is a Claim whose turn came and whose caller is told so.
type Grant struct {
	Header *pb.ResponseHeader
	Key    string
	Rev    int64 // Key's create revision: the fencing token
}

// Take turns c into a grant: if its turn has not come, it waits through the
// name's shared queue and then confirms with one linearizable read that the
// key still exists with its create revision and that its turn has come (the
// post-wait check: a candidate whose lease expired while waiting is told so,
// never granted; etcd #19597). A key gone while waiting (lease expired or
// revoked, key deleted) is etcd's answer for an expired session; any other
// failure removes the key so that no ghost waiter blocks the others (etcd
// #13330, #21128). A caller that left while its key was granted has it
// removed too: nobody would ever learn they hold it. What is granted is
// counted as held (hold.go).
func (g *Granter) Take(ctx context.Context, c Claim) (Grant, error) {
	hdr := c.Header
	if !c.Free {
		var err error
		if hdr, err = g.await(ctx, &c); err != nil {
			return Grant{}, err
		}
	} else if c.Created && ctx.Err() != nil {
		g.Abandon(c.Key, c.Rev) // the client left while we took it for it
		return Grant{}, ctx.Err()
	}
	g.holds.add(c.Service, c.Key, c.Rev, c.Lease, quota.From(ctx))
	return Grant{Header: hdr, Key: c.Key, Rev: c.Rev}, nil
}

// await waits for c's turn and confirms it, as often as the check finds the
// turn not yet come. (c is a pointer and the default wait a plain call, not
// a closure: every byte of this frame and of the heap it holds is paid
// once per parked waiter.)
func (g *Granter) await(ctx context.Context, c *Claim) (*pb.ResponseHeader, error) {
	for {
		waiting := g.metrics.Waiting.WithLabelValues(c.Service)
		waiting.Inc()
		q := g.queues.Join(keyspace.Prefix(c.Name))
		// The wait is a child span of a traced call (coordproxy.queue.wait).
		_, span := etcdio.StartSpan(ctx, "coordproxy.queue.wait")
		var err error
		if c.Wait != nil {
			err = c.Wait(ctx, g.etcd.Stopping(), q)
		} else {
			err = q.WaitTurn(ctx, g.etcd.Stopping(), c.Key, c.Rev)
		}
		span.End()
		g.queues.Leave(q)
		waiting.Dec()

		if errors.Is(err, queue.ErrKeyGone) {
			return nil, ErrSessionExpired
		}
		if err != nil {
			g.Abandon(c.Key, c.Rev)
			return nil, g.CallErr(ctx, err)
		}
		hdr, came, err := g.confirm(ctx, c)
		if err != nil || came {
			return hdr, err
		}
		// Keys are never created with an old revision, so a turn the
		// watch saw cannot be taken back; wait again rather than trust it.
		g.log.Warn("post-wait check found the turn not yet come; waiting again", "key", c.Key, "create_revision", c.Rev)
	}
}

// confirm is the post-wait check: one linearizable read of c's key and, with
// Blockers, of the blockers created before it. It is a transaction so that
// checks ready at once share etcd requests (etcdio.SendTxn).
func (g *Granter) confirm(ctx context.Context, c *Claim) (hdr *pb.ResponseHeader, came bool, err error) {
	// A waiter whose turn came goes ahead of new acquisitions.
	ctx, cancel := g.etcd.WithStop(etcdio.WithPriority(ctx, etcdio.PriorityKeep))
	defer cancel()
	t := etcdio.Txn{Then: []clientv3.Op{clientv3.OpGet(c.Key, clientv3.WithKeysOnly())}, Prefix: c.Key}
	if c.Blockers != "" {
		t.Then = append(t.Then, clientv3.OpGet(c.Blockers, clientv3.WithPrefix(), clientv3.WithKeysOnly(),
			clientv3.WithMaxCreateRev(c.Rev-1), clientv3.WithLimit(c.Allowed)))
		t.Prefix = keyspace.Prefix(c.Name)
	}
	var own []*mvccpb.KeyValue
	came = true
	resp, err := g.etcd.SendTxn(ctx, t)
	if err == nil {
		hdr, own = resp.Header, resp.Responses[0].GetResponseRange().Kvs
		if c.Blockers != "" {
			came = int64(len(resp.Responses[1].GetResponseRange().Kvs)) < c.Allowed
		}
	}
	if err != nil {
		g.Abandon(c.Key, c.Rev)
		return nil, false, g.CallErr(ctx, err)
	}
	if len(own) == 0 || own[0].CreateRevision != c.Rev {
		return nil, false, ErrSessionExpired
	}
	if came && ctx.Err() != nil {
		g.Abandon(c.Key, c.Rev) // the client left as we won
		return nil, false, g.CallErr(ctx, ctx.Err())
	}
	return hdr, came, nil
}
