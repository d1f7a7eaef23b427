package lockproxy

import (
	"context"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sync/errgroup"

	coordproxyv1 "github.com/coordproxy/coordproxy/proto/coordproxy/v1"
)

// DescribeLimit is how many waiters Describe lists when the request names no
// limit; Waiting still counts them all.
const DescribeLimit = 1000

// Describe reads the queue under Prefix(name) in grant order (create
// revision): the first holders keys, with their leases' TTLs, then up to
// limit waiters (DescribeLimit for 0), and how many wait in all. It is one
// linearizable read of the prefix, plus one lease lookup per holder.
func (b *Backend) Describe(ctx context.Context, name string, holders int, limit int64) (hdr *coordproxyv1.ResponseHeader, held, waiters []*coordproxyv1.Key, waiting int64, err error) {
	if limit <= 0 {
		limit = DescribeLimit
	}
	resp, err := b.ReadQueue(ctx, name, int64(holders)+limit)
	if err != nil {
		return nil, nil, nil, 0, err
	}
	n := min(holders, len(resp.Kvs))
	held = make([]*coordproxyv1.Key, n)
	for i, kv := range resp.Kvs[:n] {
		held[i] = KeyInfo(kv)
	}
	if err := b.LeaseTTLs(ctx, held); err != nil {
		return nil, nil, nil, 0, err
	}
	for _, kv := range resp.Kvs[n:] {
		waiters = append(waiters, KeyInfo(kv))
	}
	return Header(resp.Header), held, waiters, max(0, resp.Count-int64(holders)), nil
}

// ReadQueue reads up to n keys under Prefix(name) in grant order; the
// response's Count is how many there are in all.
func (b *Backend) ReadQueue(ctx context.Context, name string, n int64) (*clientv3.GetResponse, error) {
	return b.For(ctx).Get(ctx, Prefix(name), clientv3.WithPrefix(),
		clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend), clientv3.WithLimit(n))
}

// LeaseTTLs fills in the TTL left and the granted TTL of each key's lease
// (-1 for a lease that has expired), asking etcd for all of them at once.
func (b *Backend) LeaseTTLs(ctx context.Context, keys []*coordproxyv1.Key) error {
	g, ctx := errgroup.WithContext(ctx)
	for _, k := range keys {
		if k.Lease == 0 {
			continue
		}
		g.Go(func() error {
			ttl, err := b.For(ctx).TimeToLive(ctx, clientv3.LeaseID(k.Lease))
			if err != nil {
				return err
			}
			k.Ttl, k.GrantedTtl = ttl.TTL, ttl.GrantedTTL
			return nil
		})
	}
	return g.Wait()
}

// KeyInfo is kv as a key of coordproxy's API.
func KeyInfo(kv *mvccpb.KeyValue) *coordproxyv1.Key {
	return &coordproxyv1.Key{Key: kv.Key, Lease: kv.Lease, CreateRevision: kv.CreateRevision,
		ModRevision: kv.ModRevision, Value: kv.Value}
}

// Header is etcd's response header in coordproxy's API.
func Header(h *pb.ResponseHeader) *coordproxyv1.ResponseHeader {
	return &coordproxyv1.ResponseHeader{ClusterId: h.GetClusterId(), MemberId: h.GetMemberId(),
		Revision: h.GetRevision(), RaftTerm: h.GetRaftTerm()}
}

// Describe reads who holds name (with the lease's TTL left) and who waits,
// in the order they will be granted.
func (l *Locks) Describe(ctx context.Context, req *coordproxyv1.DescribeRequest) (*coordproxyv1.LockDescription, error) {
	if len(req.Name) == 0 {
		return nil, ErrNameMissing
	}
	hdr, held, waiters, waiting, err := l.b.Describe(ctx, string(req.Name), 1, req.Limit)
	if err != nil {
		return nil, err
	}
	d := &coordproxyv1.LockDescription{Header: hdr, Waiters: waiters, Waiting: waiting}
	if len(held) > 0 {
		d.Holder = held[0]
	}
	return d, nil
}
