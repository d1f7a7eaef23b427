package passthrough

import (
	"github.com/coordproxy/coordproxy/etcdio"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// Watch passes etcd's Watch service through: each client stream is
// one stream to etcd, requests and responses unchanged but for the
// namespace, so watch IDs, progress notifications, fragments, compaction and
// cancel reasons are etcd's own. A client's require-leader metadata goes
// along (proxy/forward.go): etcd itself then ends the stream with
// "etcdserver: no leader" when it loses its leader.
type Watch struct {
	pb.UnsafeWatchServer
	ns   string
	etcd *etcdio.Etcd
}

// NewWatch returns the Watch pass-through; ns is the proxy's namespace.
func NewWatch(etcd *etcdio.Etcd, ns string) *Watch {
	return &Watch{ns: ns, etcd: etcd}
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
	err = relay(cancel, stream, up, w.in, w.out)
	return etcdio.StopErr(ctx, err)
}

// in puts a watch the client creates under the namespace.
func (w *Watch) in(req *pb.WatchRequest) error {
	if cr := req.GetCreateRequest(); cr != nil && w.ns != "" {
		cr.Key, cr.RangeEnd = prefixInterval(w.ns, cr.Key, cr.RangeEnd)
	}
	return nil
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
