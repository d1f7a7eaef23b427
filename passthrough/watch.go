package passthrough

import (
	"context"

	"github.com/coordproxy/coordproxy/etcdio"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// Watch passes etcd's Watch service through: each client stream is
// one stream to etcd, requests and responses unchanged but for the
// namespace, so watch IDs, progress notifications, fragments, compaction and
// cancel reasons are etcd's own. A client's require-leader metadata goes
// along (proxy/forward.go): etcd itself then ends the stream with
// "etcdserver: no leader" when it loses its leader.
type Watch struct {
	pb.UnsafeWatchServer
	ns    string
	etcd  *etcdio.Etcd
	allow func(ctx context.Context, cr *pb.WatchCreateRequest) bool
}

// NewWatch returns the Watch pass-through; ns is the proxy's namespace, and
// allow, if not nil, decides each watch a caller creates (the policy): a
// refused one is answered as etcd answers a watch its RBAC refuses.
func NewWatch(etcd *etcdio.Etcd, ns string, allow func(ctx context.Context, cr *pb.WatchCreateRequest) bool) *Watch {
	return &Watch{ns: ns, etcd: etcd, allow: allow}
}

// Watch relays one client stream over one etcd stream. It ends when either
// side ends, and with Unavailable when the proxy stops.
func (w *Watch) Watch(stream pb.Watch_WatchServer) error {
	ctx, cancel := w.etcd.WithStop(stream.Context())
	defer cancel()
	up, err := pb.NewWatchClient(w.etcd.Conn(ctx)).Watch(ctx)
	if err != nil {
		return etcdio.StopErr(ctx, err)
	}
	err = relay(ctx, cancel, stream, up, w.in(stream.Context()), w.out)
	return etcdio.StopErr(ctx, err)
}

// invalidWatchID is clientv3.InvalidWatchID: the ID of a refused watch.
const invalidWatchID = -1

func (w *Watch) in(ctx context.Context) func(req *pb.WatchRequest) (*pb.WatchResponse, bool, error) {
	return func(req *pb.WatchRequest) (*pb.WatchResponse, bool, error) {
		cr := req.GetCreateRequest()
		if cr == nil {
			return nil, false, nil
		}
		if w.allow != nil && !w.allow(ctx, cr) {
			// As etcd refuses a watch its RBAC does not permit: a created
			// and canceled response, no stream error.
			return &pb.WatchResponse{Header: &pb.ResponseHeader{}, WatchId: invalidWatchID, Created: true, Canceled: true,
				CancelReason: rpctypes.ErrGRPCPermissionDenied.Error()}, true, nil
		}
		if w.ns != "" {
			cr.Key, cr.RangeEnd = prefixInterval(w.ns, cr.Key, cr.RangeEnd)
		}
		return nil, false, nil
	}
}

func (w *Watch) out(resp *pb.WatchResponse) {
	if w.ns == "" {
		return
	}
	for _, ev := range resp.Events {
		stripKV(w.ns, ev.Kv)
		stripKV(w.ns, ev.PrevKv)
	}
}
