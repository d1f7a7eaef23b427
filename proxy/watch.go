package proxy

import (
	"github.com/coordproxy/coordproxy/lockproxy"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// watchServer passes etcd's Watch service through: each client stream is
// one stream to etcd, requests and responses unchanged but for the
// namespace, so watch IDs, progress notifications, fragments, compaction and
// cancel reasons are etcd's own. A client's require-leader metadata goes
// along (see forwardMetadata): etcd itself then ends the stream with
// "etcdserver: no leader" when it loses its leader.
type watchServer struct {
	pb.UnimplementedWatchServer
	ns string
	b  *lockproxy.Backend
}

func (w *watchServer) Watch(stream pb.Watch_WatchServer) error {
	ctx, cancel := w.b.WithStop(stream.Context())
	defer cancel()
	up, err := pb.NewWatchClient(w.b.For(ctx).ActiveConnection()).Watch(ctx)
	if err != nil {
		return w.b.CallErr(ctx, err)
	}
	err = relay(ctx, cancel, stream, up, w.in, w.out)
	return w.b.CallErr(ctx, err)
}

func (w *watchServer) in(req *pb.WatchRequest) error {
	if cr := req.GetCreateRequest(); cr != nil && w.ns != "" {
		cr.Key, cr.RangeEnd = prefixInterval(w.ns, cr.Key, cr.RangeEnd)
	}
	return nil
}

func (w *watchServer) out(resp *pb.WatchResponse) {
	if w.ns == "" {
		return
	}
	for _, ev := range resp.Events {
		stripKV(w.ns, ev.Kv)
		stripKV(w.ns, ev.PrevKv)
	}
}
