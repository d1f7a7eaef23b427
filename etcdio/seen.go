package etcdio

import (
	"context"
	"sync/atomic"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
)

// seenRevision is the highest revision any etcd answer to the proxy's etcd
// clients carried: what a client of this replica may have seen, so that a
// read the replica answers on its own (the read cache) is never older than
// something the replica answered before.
type seenRevision struct{ rev atomic.Int64 }

type withHeader interface{ GetHeader() *pb.ResponseHeader }

func (s *seenRevision) unary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	err := invoker(ctx, method, req, reply, cc, opts...)
	if r, ok := reply.(withHeader); ok && err == nil {
		s.note(r.GetHeader())
	}
	return err
}

func (s *seenRevision) note(h *pb.ResponseHeader) {
	if h == nil {
		return
	}
	for {
		cur := s.rev.Load()
		if h.Revision <= cur || s.rev.CompareAndSwap(cur, h.Revision) {
			return
		}
	}
}

// SeenRevision is the highest revision etcd has answered the proxy with
// (unary calls; a replica's own reads and writes through KV and the
// coordination services).
func (e *Etcd) SeenRevision() int64 { return e.seen.rev.Load() }

// Plain says the credentials carry neither a caller's token nor hasleader:
// a request with them is the proxy's own to etcd.
func (c Credentials) Plain() bool { return c.token == "" && c.hasLeader == "" }
