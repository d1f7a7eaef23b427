package passthrough

import (
	"context"

	"github.com/coordproxy/coordproxy/etcdio"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
)

// Maintenance answers Status with the status of the etcd member the proxy's
// client talks to, so that `etcdctl endpoint status` works against the
// proxy. The rest of the Maintenance service (alarms, defragmentation,
// hashes, snapshots, leader moves, downgrades) acts on a member or on the
// whole cluster, which behind a proxy is never the caller's to pick: it is
// left to etcd's own endpoints.
type Maintenance struct {
	pb.UnsafeMaintenanceServer
	etcd *etcdio.Etcd
}

// NewMaintenance returns the Maintenance pass-through.
func NewMaintenance(etcd *etcdio.Etcd) *Maintenance { return &Maintenance{etcd: etcd} }

// Status passes etcd's Maintenance.Status through.
func (m *Maintenance) Status(ctx context.Context, r *pb.StatusRequest) (*pb.StatusResponse, error) {
	return pb.NewMaintenanceClient(m.etcd.Conn(ctx)).Status(ctx, r)
}

// Alarm is not served through the proxy: it answers as notServed says.
func (m *Maintenance) Alarm(context.Context, *pb.AlarmRequest) (*pb.AlarmResponse, error) {
	return nil, notServed("Alarm")
}

// Defragment is not served through the proxy: it answers as notServed says.
func (m *Maintenance) Defragment(context.Context, *pb.DefragmentRequest) (*pb.DefragmentResponse, error) {
	return nil, notServed("Defragment")
}

// Hash is not served through the proxy: it answers as notServed says.
func (m *Maintenance) Hash(context.Context, *pb.HashRequest) (*pb.HashResponse, error) {
	return nil, notServed("Hash")
}

// HashKV is not served through the proxy: it answers as notServed says.
func (m *Maintenance) HashKV(context.Context, *pb.HashKVRequest) (*pb.HashKVResponse, error) {
	return nil, notServed("HashKV")
}

// Snapshot is not served through the proxy: it answers as notServed says.
func (m *Maintenance) Snapshot(*pb.SnapshotRequest, grpc.ServerStreamingServer[pb.SnapshotResponse]) error {
	return notServed("Snapshot")
}

// MoveLeader is not served through the proxy: it answers as notServed says.
func (m *Maintenance) MoveLeader(context.Context, *pb.MoveLeaderRequest) (*pb.MoveLeaderResponse, error) {
	return nil, notServed("MoveLeader")
}

// Downgrade is not served through the proxy: it answers as notServed says.
func (m *Maintenance) Downgrade(context.Context, *pb.DowngradeRequest) (*pb.DowngradeResponse, error) {
	return nil, notServed("Downgrade")
}
