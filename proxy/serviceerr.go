package proxy

import (
	"context"
	"errors"
	"strings"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// etcd's native Lock and Election services run concurrency's transactions
// inside the member, where no gRPC message limit applies: a request too big
// for etcd is answered "etcdserver: request is too large". The proxy sends
// the same transactions over gRPC, and etcd's gRPC server refuses those over
// its message limit (--max-request-bytes plus 512 KiB) before etcd sees them.
// serviceErr gives the proxy's Lock and Election callers etcd's own answer.
// (A request too big for the proxy's own listener never reaches a handler
// and gets gRPC's ResourceExhausted, as it does from etcd.)
//
// A caller that asks for a leader (etcd's "hasleader" metadata, which the
// proxy forwards) is refused by etcd's interceptor with Unavailable
// "etcdserver: no leader" when the member has none; the proxy learns it from
// its etcd client as an error without a gRPC code (see noLeaderIsFinal), and
// serviceErr puts etcd's status back.
//
// The pass-through services (KV, Watch, Lease, Maintenance, Auth) answer
// etcd's errors with etcd's codes: etcdStatus, applied to every error they
// return.

func isEtcdService(method string) bool {
	return strings.HasPrefix(method, "/v3lockpb.Lock/") || strings.HasPrefix(method, "/v3electionpb.Election/")
}

func serviceErr(err error) error {
	if errors.Is(err, rpctypes.ErrNoLeader) {
		return rpctypes.ErrGRPCNoLeader
	}
	st, ok := status.FromError(err)
	if ok && st.Code() == codes.ResourceExhausted &&
		(strings.HasPrefix(st.Message(), "grpc: received message larger than max") ||
			strings.HasPrefix(st.Message(), "grpc: trying to send message larger than max")) {
		return rpctypes.ErrRequestTooLarge
	}
	return err
}

func wireErr(method string, err error) error {
	if err == nil {
		return nil
	}
	if isEtcdService(method) {
		return serviceErr(err)
	}
	return etcdStatus(err)
}

// noLeaderIsFinal sits between the etcd client's retry loop and the wire:
// etcd's "no leader" refusal of a call that required a leader is the answer
// for that caller, as from etcd itself, but the client would otherwise retry
// a read on it (it is Unavailable) up to 100 times, sending etcd a hundred
// requests for one and answering seconds later. As an rpctypes value it is
// not retried, and still maps to etcd's status.
func noLeaderIsFinal(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	err := invoker(ctx, method, req, reply, cc, opts...)
	if st, ok := status.FromError(err); ok && st.Code() == codes.Unavailable && st.Message() == rpctypes.ErrNoLeader.Error() {
		return rpctypes.ErrNoLeader
	}
	return err
}
