package proxy

import (
	"context"

	middleware "github.com/grpc-ecosystem/go-grpc-middleware/v2"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// forwardedMetadata is the caller's metadata that etcd acts on and that the
// proxy therefore sends along with the etcd requests it makes for the call:
// "hasleader" (etcd then refuses the request, or ends the stream, with
// "etcdserver: no leader" when it has no leader, exactly as for a native
// caller) and "token" (the caller's etcd auth token, so that etcd's RBAC
// judges the caller). Requests the proxy makes on its own account (cleanup
// of abandoned waiters, the shared watches) never carry them.
var forwardedMetadata = []string{rpctypes.MetadataRequireLeaderKey, rpctypes.TokenFieldNameGRPC}

func forwardContext(ctx context.Context) context.Context {
	md, ok := metadata.FromIncomingContext(ctx)
	if !ok {
		return ctx
	}
	var kv []string
	for _, k := range forwardedMetadata {
		if v := md.Get(k); len(v) > 0 {
			kv = append(kv, k, v[0])
		}
	}
	if len(kv) == 0 {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, kv...)
}

func forwardUnary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	return handler(forwardContext(ctx), req)
}

func forwardStream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx := forwardContext(ss.Context())
	if ctx == ss.Context() {
		return handler(srv, ss)
	}
	w := middleware.WrapServerStream(ss)
	w.WrappedContext = ctx
	return handler(srv, w)
}
