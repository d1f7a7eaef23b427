package proxy_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math"
	"regexp"
	"strings"
	"testing"

	"github.com/coordproxy/coordproxy/proxy"
	"github.com/coordproxy/coordproxy/proxy/proxytest"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
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
		if errors.Is(err, io.EOF) {
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

// sized takes the message's own size out of gRPC's "larger than max (N vs.
// LIMIT)": the runs' keys differ in length.
func sized(err error) error {
	st, ok := status.FromError(err)
	if !ok || err == nil {
		return err
	}
	return status.Error(st.Code(), messageSize.ReplaceAllString(st.Message(), "(<size> vs. "))
}

var messageSize = regexp.MustCompile(`\(\d+ vs\. `)

// TestConformance_requestSizeFollowsTheCluster: behind an etcd whose
// --max-request-bytes is not the default, a proxy given the same limit
// accepts what etcd accepts and refuses the rest with etcd's answers:
// "request is too large" over the limit, gRPC's ResourceExhausted over the
// limit and its 512 KiB of overhead (tests/integration TestKVLargeRequests,
// TestV3AdditionalGRPCOptions).
func TestConformance_requestSizeFollowsTheCluster(t *testing.T) {
	const limit = 3 << 20
	etcd := proxytest.StartEtcdWith(t, proxy.EmbedOptions{MaxRequestBytes: limit})
	p := proxytest.StartProxy(t, []string{etcd.URL}, proxy.Config{MaxRequestBytes: limit})
	kv := proxytest.Client(t, etcd.URL)
	var got [2][]string
	for i, tg := range []target{
		{"native", proxytest.Dial(t, strings.TrimPrefix(etcd.URL, "http://"))},
		{"proxy", proxytest.Dial(t, p.Addr().String())},
	} {
		r := newRun(t, tg, kv, "size")
		c := pb.NewKVClient(r.conn)
		for _, size := range []int{limit - 1024, limit + 1024, limit + 512<<10 + 1024} {
			val := bytes.Repeat([]byte{'x'}, size)
			resp, err := c.Put(r.ctx, &pb.PutRequest{Key: []byte(r.name("k")), Value: val})
			r.outcome(fmt.Sprintf("put %d bytes", size), resp, sized(err))
			tx, err := c.Txn(r.ctx, &pb.TxnRequest{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestPut{
				RequestPut: &pb.PutRequest{Key: []byte(r.name("t")), Value: val}}}}})
			r.outcome(fmt.Sprintf("txn %d bytes", size), tx, sized(err))
			g, err := c.Range(r.ctx, &pb.RangeRequest{Key: []byte(r.name("k"))}, grpc.MaxCallRecvMsgSize(math.MaxInt32))
			if err == nil && len(g.Kvs) == 1 {
				r.record("get: %d bytes, mod rev0+%d", len(g.Kvs[0].Value), g.Kvs[0].ModRevision-r.rev0)
			} else {
				r.outcome("get", g, err)
			}
		}
		got[i] = r.lines
	}
	compareRuns(t, got)
}
