package etcdio

import (
	"context"
	"strings"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/metadata"
)

// Credentials are what a caller's requests go to etcd as: the etcd client
// they are sent on (For), and the caller's token and hasleader metadata
// forwarded with them. Only requests with the same credentials may share
// an etcd request or stream (group commit, merged keep-alives), so that a
// caller's token never carries another's request. Comparable: a map key.
type Credentials struct {
	client           *clientv3.Client
	token, hasLeader string
}

// CredentialsOf is the credentials of ctx's requests.
func (e *Etcd) CredentialsOf(ctx context.Context) Credentials {
	c := Credentials{client: e.For(ctx)}
	if md, ok := metadata.FromOutgoingContext(ctx); ok {
		c.token = strings.Join(md.Get(rpctypes.TokenFieldNameGRPC), ",")
		c.hasLeader = strings.Join(md.Get(rpctypes.MetadataRequireLeaderKey), ",")
	}
	return c
}

// Context is parent carrying c's metadata, for a request or stream made on
// c's behalf that outlives the call it came from (parent carries none).
func (c Credentials) Context(parent context.Context) context.Context {
	var kv []string
	if c.token != "" {
		kv = append(kv, rpctypes.TokenFieldNameGRPC, c.token)
	}
	if c.hasLeader != "" {
		kv = append(kv, rpctypes.MetadataRequireLeaderKey, c.hasLeader)
	}
	if len(kv) == 0 {
		return parent
	}
	return metadata.AppendToOutgoingContext(parent, kv...)
}
