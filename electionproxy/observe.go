package electionproxy

import (
	"errors"

	"github.com/coordproxy/coordproxy/lockproxy"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	epb "go.etcd.io/etcd/server/v3/etcdserver/api/v3election/v3electionpb"
)

// Observe streams the current leader, then every new leader and every
// proclamation in revision order. All streams of one election on this proxy
// share one etcd watch (the election's queue), and unlike etcd's Observe no
// change is dropped when several land in one watch response (etcd #7815,
// #18163).
func (s *Server) Observe(req *epb.LeaderRequest, stream epb.Election_ObserveServer) error {
	if len(req.Name) == 0 {
		return errNameMissing
	}
	ctx, cancel := s.b.WithStop(stream.Context())
	defer cancel()
	pfx := lockproxy.Prefix(string(req.Name))

	q := s.b.Queues.Acquire(pfx)
	defer s.b.Queues.Release(q)
	o, err := q.Observe(ctx, s.b.ObserveBuffer())
	if err != nil {
		return s.b.CallErr(ctx, err)
	}
	defer q.StopObserving(o)

	// The first answer is a linearizable read taken after the observer was
	// registered: every change after it arrives on o, earlier ones are
	// skipped by revision.
	resp, err := s.b.For(ctx).Get(ctx, pfx, clientv3.WithFirstCreate()...)
	if err != nil {
		return s.b.CallErr(ctx, err)
	}
	// A caller that requires a leader (etcd's "hasleader") has its stream
	// ended with "etcdserver: no leader" when etcd loses it, as etcd does.
	var leaderLost <-chan struct{}
	if lockproxy.RequiresLeader(stream.Context()) {
		leaderLost = s.b.Leader.Lost()
	}
	seen := resp.Header.Revision
	if len(resp.Kvs) > 0 {
		if err := stream.Send(&epb.LeaderResponse{Header: resp.Header, Kv: resp.Kvs[0]}); err != nil {
			return err
		}
	}
	for {
		select {
		case <-ctx.Done():
			return s.b.CallErr(ctx, ctx.Err())
		case <-leaderLost:
			return rpctypes.ErrGRPCNoLeader
		case ch, ok := <-o.C:
			if !ok {
				if errors.Is(o.Err(), lockproxy.ErrObserverTooSlow) {
					return errObserverTooSlow
				}
				return s.b.CallErr(ctx, o.Err())
			}
			if ch.Rev <= seen || ch.Kv == nil {
				continue // before the first answer, or no leader: etcd sends nothing then
			}
			if err := stream.Send(&epb.LeaderResponse{Header: ch.Header, Kv: ch.Kv}); err != nil {
				return err
			}
		}
	}
}
