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
// its etcd client as an error without a gRPC code, and serviceErr puts etcd's
// status back.

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

func serviceErrUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	resp, err := handler(ctx, req)
	if err != nil && isEtcdService(info.FullMethod) {
		err = serviceErr(err)
	}
	return resp, err
}

func serviceErrStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	err := handler(srv, ss)
	if err != nil && isEtcdService(info.FullMethod) {
		err = serviceErr(err)
	}
	return err
}
