package proxy

import (
	"context"

	"github.com/coordproxy/coordproxy/lockproxy"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// maintenanceServer answers Maintenance.Status with the status of the etcd
// member the proxy's client talks to, so that `etcdctl endpoint status`
// works against the proxy. The rest of the Maintenance service (snapshots,
// defragmentation, alarms, leader moves) acts on the whole cluster and is
// left to etcd's own endpoints: it answers Unimplemented here.
type maintenanceServer struct {
	pb.UnimplementedMaintenanceServer
	b *lockproxy.Backend
}

func (m *maintenanceServer) Status(ctx context.Context, r *pb.StatusRequest) (*pb.StatusResponse, error) {
	return pb.NewMaintenanceClient(m.b.For(ctx).ActiveConnection()).Status(ctx, r)
}

// authServer passes Auth.Authenticate through, so that a client with an etcd
// user gets its token from the proxy's address and sends it with its calls;
// etcd checks it (see forwardMetadata). User and role management stays on
// etcd's own endpoints: Unimplemented here.
type authServer struct {
	pb.UnimplementedAuthServer
	b *lockproxy.Backend
}

func (a *authServer) Authenticate(ctx context.Context, r *pb.AuthenticateRequest) (*pb.AuthenticateResponse, error) {
	return pb.NewAuthClient(a.b.For(ctx).ActiveConnection()).Authenticate(ctx, r)
}
