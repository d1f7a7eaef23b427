package answer

import (
	"context"

	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sync/errgroup"

	"github.com/coordproxy/coordproxy/etcdio"
	"github.com/coordproxy/coordproxy/keyspace"
	coordproxyv1 "github.com/coordproxy/coordproxy/proto/coordproxy/v1"
)

// DescribeLimit is how many waiters Describe lists when the request names no
// limit; Waiting still counts them all.
const DescribeLimit = 1000

// Describe reads the queue under keyspace.Prefix(name) in grant order (create
// revision): the first holders keys, with their leases' TTLs, then up to
// limit waiters (DescribeLimit for 0), and how many wait in all. It is one
// linearizable read of the prefix, plus one lease lookup per holder.
func Describe(ctx context.Context, e *etcdio.Etcd, name string, holders int, limit int64) (hdr *coordproxyv1.ResponseHeader, held, waiters []*coordproxyv1.Key, waiting int64, err error) {
	if limit <= 0 {
		limit = DescribeLimit
	}
	resp, err := ReadQueue(ctx, e, name, int64(holders)+limit)
	if err != nil {
		return nil, nil, nil, 0, err
	}
	n := min(holders, len(resp.Kvs))
	held = make([]*coordproxyv1.Key, n)
	for i, kv := range resp.Kvs[:n] {
		held[i] = KeyInfo(kv)
	}
	if err := LeaseTTLs(ctx, e, held); err != nil {
		return nil, nil, nil, 0, err
	}
	for _, kv := range resp.Kvs[n:] {
		waiters = append(waiters, KeyInfo(kv))
	}
	return Header(resp.Header), held, waiters, max(0, resp.Count-int64(holders)), nil
}

// ReadQueue reads up to n keys under keyspace.Prefix(name) in grant order; the
// response's Count is how many there are in all.
func ReadQueue(ctx context.Context, e *etcdio.Etcd, name string, n int64) (*clientv3.GetResponse, error) {
	return e.For(ctx).Get(ctx, keyspace.Prefix(name), clientv3.WithPrefix(),
		clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend), clientv3.WithLimit(n))
}

// LeaseTTLs fills in the TTL left and the granted TTL of each key's lease
// (-1 for a lease that has expired), asking etcd for all of them at once.
func LeaseTTLs(ctx context.Context, e *etcdio.Etcd, keys []*coordproxyv1.Key) error {
	eg, ctx := errgroup.WithContext(ctx)
	for _, k := range keys {
		if k.Lease == 0 {
			continue
		}
		eg.Go(func() error {
			ttl, err := e.For(ctx).TimeToLive(ctx, clientv3.LeaseID(k.Lease))
			if err != nil {
				return err
			}
			k.Ttl, k.GrantedTtl = ttl.TTL, ttl.GrantedTTL
			return nil
		})
	}
	return eg.Wait()
}
