package proxy

import (
	"context"
	"errors"
	"io"

	"github.com/coordproxy/coordproxy/lockproxy"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// leaseServer passes etcd's Lease service through unchanged, so that a
// client needs only the proxy's address to grant and keep alive the leases it
// locks and campaigns with. Requests, responses and errors are etcd's own.
type leaseServer struct {
	pb.UnimplementedLeaseServer
	lc pb.LeaseClient
	b  *lockproxy.Backend
}

func (l *leaseServer) LeaseGrant(ctx context.Context, r *pb.LeaseGrantRequest) (*pb.LeaseGrantResponse, error) {
	return l.lc.LeaseGrant(ctx, r)
}

func (l *leaseServer) LeaseRevoke(ctx context.Context, r *pb.LeaseRevokeRequest) (*pb.LeaseRevokeResponse, error) {
	return l.lc.LeaseRevoke(ctx, r)
}

func (l *leaseServer) LeaseTimeToLive(ctx context.Context, r *pb.LeaseTimeToLiveRequest) (*pb.LeaseTimeToLiveResponse, error) {
	return l.lc.LeaseTimeToLive(ctx, r)
}

func (l *leaseServer) LeaseLeases(ctx context.Context, r *pb.LeaseLeasesRequest) (*pb.LeaseLeasesResponse, error) {
	return l.lc.LeaseLeases(ctx, r)
}

// LeaseKeepAlive relays one client stream over one upstream stream. It ends
// when either side ends, and with Unavailable when the proxy stops.
func (l *leaseServer) LeaseKeepAlive(stream pb.Lease_LeaseKeepAliveServer) error {
	ctx, cancel := l.b.WithStop(stream.Context())
	defer cancel()
	up, err := l.lc.LeaseKeepAlive(ctx)
	if err != nil {
		return l.b.CallErr(ctx, err)
	}
	go func() {
		for {
			req, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				// The client is done sending: so is the proxy; etcd then ends
				// the stream and up.Recv sees io.EOF.
				up.CloseSend()
				return
			}
			if err == nil {
				err = up.Send(req)
			}
			if err != nil {
				cancel()
				return
			}
		}
	}()
	for {
		resp, err := up.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return l.b.CallErr(ctx, err)
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
}
