package etcdio

import (
	"context"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// noLeaderIsFinal sits between the etcd client's retry loop and the wire:
// etcd's "no leader" refusal of a call that required a leader (the caller's
// "hasleader" metadata, which the proxy forwards) is the answer for that
// caller, as from etcd itself, but the client would otherwise retry a read
// on it (it is Unavailable) up to 100 times, sending etcd a hundred requests
// for one and answering seconds later. As an rpctypes value it is not
// retried; the proxy's edge maps it back to etcd's status.
func noLeaderIsFinal(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	err := invoker(ctx, method, req, reply, cc, opts...)
	if st, ok := status.FromError(err); ok && st.Code() == codes.Unavailable && st.Message() == rpctypes.ErrNoLeader.Error() {
		return rpctypes.ErrNoLeader
	}
	return err
}
