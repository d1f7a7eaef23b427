package electionproxy

import (
	"context"
	"errors"

	"github.com/coordproxy/coordproxy/etcdio"
	"github.com/coordproxy/coordproxy/keyspace"
	"github.com/coordproxy/coordproxy/queue"
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
	return observeLeader(stream.Context(), s.elections, req.Name,
		func(resp *clientv3.GetResponse) error {
			if len(resp.Kvs) == 0 {
				return nil
			}
			return stream.Send(&epb.LeaderResponse{Header: resp.Header, Kv: resp.Kvs[0]})
		},
		func(ch queue.LeaderChange) error {
			if ch.Kv == nil {
				return nil // no leader: etcd sends nothing then
			}
			return stream.Send(&epb.LeaderResponse{Header: ch.Header, Kv: ch.Kv})
		})
}

// observeLeader is what both services' Observe do: it registers with the
// election's shared queue, reads the current leader, and hands first that
// read, then each leader change after it in revision order, to the stream's
// own callbacks, until one of them fails or the stream ends. Changes at or
// before the read's revision are skipped. The callbacks' errors end the
// stream as they are.
//
// A stream that falls more than the Granter's observe buffer behind ends
// with errObserverTooSlow; one whose caller requires a leader (etcd's
// "hasleader") ends with "etcdserver: no leader" when etcd loses it, as
// etcd's does; one cut short by the proxy stopping, Unavailable.
func observeLeader(sctx context.Context, e elections, name []byte,
	first func(*clientv3.GetResponse) error, next func(queue.LeaderChange) error) error {
	if len(name) == 0 {
		return errNameMissing
	}
	ctx, cancel := e.etcd.WithStop(sctx)
	defer cancel()
	o, stop, err := e.g.Observe(ctx, string(name))
	if err != nil {
		return err
	}
	defer stop()

	// The first answer is a linearizable read taken after the observer was
	// registered: every change after it arrives on o, earlier ones are
	// skipped by revision.
	resp, err := e.etcd.For(ctx).Get(ctx, keyspace.Prefix(string(name)), clientv3.WithFirstCreate()...)
	if err != nil {
		return e.g.CallErr(ctx, err)
	}
	var leaderLost <-chan struct{}
	if etcdio.RequiresLeader(sctx) {
		leaderLost = e.etcd.LeaderLost()
	}
	seen := resp.Header.Revision
	if err := first(resp); err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return e.g.CallErr(ctx, ctx.Err())
		case <-leaderLost:
			return rpctypes.ErrGRPCNoLeader
		case ch, ok := <-o.C:
			if !ok {
				if errors.Is(o.Err(), queue.ErrObserverTooSlow) {
					return errObserverTooSlow
				}
				return e.g.CallErr(ctx, o.Err())
			}
			if ch.Rev <= seen {
				continue // already in the first answer
			}
			if err := next(ch); err != nil {
				return err
			}
		}
	}
}
