package passthrough

import (
	"bytes"
	"context"

	"github.com/coordproxy/coordproxy/etcdio"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// Lease passes etcd's Lease service through unchanged, so that a
// client needs only the proxy's address to grant and keep alive the leases it
// locks and campaigns with. Requests, responses and errors are etcd's own.
type Lease struct {
	pb.UnsafeLeaseServer
	ns   string
	etcd *etcdio.Etcd
	ka   keepAlives // the shared keep-alive streams (keepalive.go)
}

// NewLease returns the Lease pass-through; ns is the proxy's namespace.
// Grants and revokes go through etcdio's, which run its LeaseHooks.
func NewLease(etcd *etcdio.Etcd, ns string) *Lease {
	return &Lease{ns: ns, etcd: etcd, ka: keepAlives{etcd: etcd}}
}

// LeaseGrant passes etcd's Lease.LeaseGrant through.
func (l *Lease) LeaseGrant(ctx context.Context, r *pb.LeaseGrantRequest) (*pb.LeaseGrantResponse, error) {
	return l.etcd.GrantRequest(ctx, r)
}

// LeaseRevoke passes etcd's Lease.LeaseRevoke through.
func (l *Lease) LeaseRevoke(ctx context.Context, r *pb.LeaseRevokeRequest) (*pb.LeaseRevokeResponse, error) {
	return l.etcd.RevokeRequest(ctx, r)
}

// LeaseTimeToLive lists, under a namespace, only the lease's keys inside it,
// without the prefix: a lease ID is the cluster's, its keys may not all be.
func (l *Lease) LeaseTimeToLive(ctx context.Context, r *pb.LeaseTimeToLiveRequest) (*pb.LeaseTimeToLiveResponse, error) {
	resp, err := l.lc(ctx).LeaseTimeToLive(ctx, r)
	if err != nil || l.ns == "" {
		return resp, err
	}
	keys := resp.Keys[:0]
	for _, k := range resp.Keys {
		if after, ok := bytes.CutPrefix(k, []byte(l.ns)); ok {
			keys = append(keys, after)
		}
	}
	resp.Keys = keys
	return resp, nil
}

// LeaseLeases passes etcd's Lease.LeaseLeases through.
func (l *Lease) LeaseLeases(ctx context.Context, r *pb.LeaseLeasesRequest) (*pb.LeaseLeasesResponse, error) {
	return l.lc(ctx).LeaseLeases(ctx, r)
}

// lc is etcd's Lease service, reached as the caller (see etcdio.Etcd.For).
func (l *Lease) lc(ctx context.Context) pb.LeaseClient {
	return pb.NewLeaseClient(l.etcd.Conn(ctx))
}
