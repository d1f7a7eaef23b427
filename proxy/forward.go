package proxy

import (
	"context"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
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

// forwardContext reads only the keys it forwards (metadata.FromIncomingContext
// would copy all of the call's metadata, on every call).
func forwardContext(ctx context.Context) context.Context {
	var kv []string
	for _, k := range forwardedMetadata {
		if v := metadata.ValueFromIncomingContext(ctx, k); len(v) > 0 {
			kv = append(kv, k, v[0])
		}
	}
	if len(kv) == 0 {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, kv...)
}
