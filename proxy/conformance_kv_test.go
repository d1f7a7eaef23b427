package proxy_test

import (
	"crypto/sha256"
	"fmt"
	"io"
	"math"
	"strings"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
)

// The KV and Watch pass-through where etcd 3.7's wire differs from what a
// relay through the etcd client gives by default: RangeStream, and
// responses over gRPC's default 4 MiB (etcd's tests/integration
// TestV3RangeRequest, TestV3RangeStream*, clientv3/watch
// TestWatchFragmentDisable).
func init() {
	scenarios = append(scenarios,
		scenario{"kv-rangestream-as-etcd-streams-it", func(r *run) {
			prefix := r.name("s/")
			for i := range 40 {
				r.put(fmt.Sprintf("%sk%03d", prefix, i), strings.Repeat("v", 100))
			}
			key, end := []byte(prefix), []byte(clientv3.GetPrefixRangeEnd(prefix))
			mid := r.rev0 + 20
			r.rangeStream("all", &pb.RangeRequest{Key: key, RangeEnd: end})
			r.rangeStream("limit", &pb.RangeRequest{Key: key, RangeEnd: end, Limit: 7})
			r.rangeStream("count only", &pb.RangeRequest{Key: key, RangeEnd: end, CountOnly: true})
			r.rangeStream("keys only at a revision", &pb.RangeRequest{Key: key, RangeEnd: end, KeysOnly: true, Revision: mid})
			r.rangeStream("one key", &pb.RangeRequest{Key: []byte(prefix + "k007")})
			r.rangeStream("empty key", &pb.RangeRequest{})
			r.rangeStream("future revision", &pb.RangeRequest{Key: key, RangeEnd: end, Revision: r.rev0 + 1000})
			if _, err := r.kv.Compact(r.ctx, r.rev0+40); err != nil {
				r.t.Fatal(err)
			}
			r.rangeStream("compacted revision", &pb.RangeRequest{Key: key, RangeEnd: end, Revision: mid})
		}},
		scenario{"watch-response-over-4-mib-unfragmented", func(r *run) {
			key := r.name("big")
			for i := range 5 {
				r.put(key, strings.Repeat(string(rune('a'+i)), 1<<20))
			}
			// From the first put: etcd sends the five events of its
			// history in one response of over 5 MiB.
			w, err := pb.NewWatchClient(r.conn).Watch(r.ctx, grpc.MaxCallRecvMsgSize(math.MaxInt32))
			if err != nil {
				r.t.Fatal(err)
			}
			defer w.CloseSend()
			if err := w.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: &pb.WatchCreateRequest{
				Key: []byte(key), StartRevision: r.rev0 + 1}}}); err != nil {
				r.t.Fatal(err)
			}
			for events := 0; events < 5; {
				resp, err := w.Recv()
				if err != nil {
					r.outcome("watch", nil, err)
					return
				}
				if resp.Canceled {
					r.record("watch: canceled: %q", resp.CancelReason)
					return
				}
				var sum []string
				for _, ev := range resp.Events {
					sum = append(sum, fmt.Sprintf("%s %s rev0+%d %d bytes %x", ev.Type, r.text(string(ev.Kv.Key)), ev.Kv.ModRevision-r.rev0,
						len(ev.Kv.Value), sha256.Sum256(ev.Kv.Value)))
				}
				r.record("watch: created=%v fragment=%v events [%s]", resp.Created, resp.Fragment, strings.Join(sum, "; "))
				events += len(resp.Events)
			}
		}},
	)
}

// put writes key straight to etcd.
func (r *run) put(key, val string) {
	if _, err := r.kv.Put(r.ctx, key, val); err != nil {
		r.t.Fatal(err)
	}
}

// rangeStream records each chunk of a RangeStream and how it ends.
func (r *run) rangeStream(step string, req *pb.RangeRequest) {
	st, err := pb.NewKVClient(r.conn).RangeStream(r.ctx, req)
	if err != nil {
		r.outcome(step, nil, err)
		return
	}
	for i := 0; ; i++ {
		resp, err := st.Recv()
		if err == io.EOF {
			r.record("%s: end after %d chunks", step, i)
			return
		}
		if err != nil {
			r.outcome(fmt.Sprintf("%s: chunk %d", step, i), nil, err)
			return
		}
		r.outcome(fmt.Sprintf("%s: chunk %d", step, i), resp, nil)
	}
}
