package proxy_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/coordproxy/coordproxy/proxy"
	"github.com/coordproxy/coordproxy/proxy/proxytest"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The KV, Watch, Lease, Maintenance.Status and Auth.Authenticate services
// are etcd's own passed through: the same table of calls, run against etcd
// and through the proxy, must record the same outcomes (codes, messages,
// responses with revisions relative to the run's start).

type passCase struct {
	name string
	run  func(r *run, kv pb.KVClient, w pb.WatchClient)
}

func put(key, val string) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte(key), Value: []byte(val)}}}
}

func get(key string) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestRange{RequestRange: &pb.RangeRequest{Key: []byte(key)}}}
}

var passCases = []passCase{
	{"put-range-delete", func(r *run, kv pb.KVClient, _ pb.WatchClient) {
		k := r.name("k")
		resp, err := kv.Put(r.ctx, &pb.PutRequest{Key: []byte(k + "/1"), Value: []byte("v1")})
		r.outcome("put 1", resp, err)
		resp, err = kv.Put(r.ctx, &pb.PutRequest{Key: []byte(k + "/1"), Value: []byte("v1b"), PrevKv: true})
		r.outcome("put 1 again with prev_kv", resp, err)
		resp, err = kv.Put(r.ctx, &pb.PutRequest{Key: []byte(k + "/2"), Value: []byte("v2")})
		r.outcome("put 2", resp, err)
		rr, err := kv.Range(r.ctx, &pb.RangeRequest{Key: []byte(k + "/"), RangeEnd: []byte(k + "0"), SortOrder: pb.RangeRequest_DESCEND, SortTarget: pb.RangeRequest_KEY, Limit: 1})
		r.outcome("range prefix descending limit 1", rr, err)
		rr, err = kv.Range(r.ctx, &pb.RangeRequest{Key: []byte(k + "/"), RangeEnd: []byte(k + "0"), CountOnly: true, Serializable: true})
		r.outcome("count serializable", rr, err)
		rr, err = kv.Range(r.ctx, &pb.RangeRequest{Key: []byte(k + "/1"), Revision: r.rev0 + 1})
		r.outcome("range at an old revision", rr, err)
		dr, err := kv.DeleteRange(r.ctx, &pb.DeleteRangeRequest{Key: []byte(k + "/"), RangeEnd: []byte(k + "0"), PrevKv: true})
		r.outcome("delete prefix with prev_kv", dr, err)
	}},
	{"txn-compare-then-else-nested", func(r *run, kv pb.KVClient, _ pb.WatchClient) {
		k := r.name("t")
		create := &pb.Compare{Key: []byte(k), Target: pb.Compare_CREATE, Result: pb.Compare_EQUAL, TargetUnion: &pb.Compare_CreateRevision{CreateRevision: 0}}
		txn := &pb.TxnRequest{Compare: []*pb.Compare{create}, Success: []*pb.RequestOp{put(k, "first")}, Failure: []*pb.RequestOp{get(k)}}
		tr, err := kv.Txn(r.ctx, txn)
		r.outcome("txn creates", tr, err)
		tr, err = kv.Txn(r.ctx, txn)
		r.outcome("txn sees it exists", tr, err)
		nested := &pb.TxnRequest{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestTxn{RequestTxn: &pb.TxnRequest{Success: []*pb.RequestOp{put(k+"/n", "nested")}}}}}}
		tr, err = kv.Txn(r.ctx, nested)
		r.outcome("nested txn", tr, err)
		r.keys("after")
	}},
	{"bad-requests", func(r *run, kv pb.KVClient, _ pb.WatchClient) {
		k := r.name("b")
		resp, err := kv.Put(r.ctx, &pb.PutRequest{})
		r.outcome("put empty key", resp, err)
		rr, err := kv.Range(r.ctx, &pb.RangeRequest{})
		r.outcome("range empty key", rr, err)
		dr, err := kv.DeleteRange(r.ctx, &pb.DeleteRangeRequest{})
		r.outcome("delete empty key", dr, err)
		rr, err = kv.Range(r.ctx, &pb.RangeRequest{Key: []byte(k), SortOrder: 7})
		r.outcome("range bad sort order", rr, err)
		resp, err = kv.Put(r.ctx, &pb.PutRequest{Key: []byte(k), Value: []byte("v"), IgnoreValue: true})
		r.outcome("put ignore_value with a value", resp, err)
		resp, err = kv.Put(r.ctx, &pb.PutRequest{Key: []byte(k), Lease: 0x7fff0002})
		r.outcome("put unknown lease", resp, err)
		tr, err := kv.Txn(r.ctx, &pb.TxnRequest{Success: []*pb.RequestOp{{}}})
		r.outcome("txn empty op", tr, err)
		tr, err = kv.Txn(r.ctx, &pb.TxnRequest{Success: []*pb.RequestOp{put("", "v")}})
		r.outcome("txn put empty key", tr, err)
		tr, err = kv.Txn(r.ctx, &pb.TxnRequest{Compare: []*pb.Compare{{Target: pb.Compare_VERSION}}})
		r.outcome("txn compare empty key", tr, err)
		tr, err = kv.Txn(r.ctx, &pb.TxnRequest{Success: []*pb.RequestOp{put(k, "a"), put(k, "b")}})
		r.outcome("txn duplicate key", tr, err)
		tr, err = kv.Txn(r.ctx, &pb.TxnRequest{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestTxn{RequestTxn: &pb.TxnRequest{Success: []*pb.RequestOp{{}}}}}}})
		r.outcome("nested txn empty op", tr, err)
		cr, err := kv.Compact(r.ctx, &pb.CompactionRequest{Revision: r.rev0 + 1_000_000})
		r.outcome("compact a future revision", cr, err)
		r.keys("after")
	}},
	{"watch-events-prev-kv-cancel", func(r *run, kv pb.KVClient, w pb.WatchClient) {
		k := r.name("w")
		ctx, cancel := context.WithCancel(r.ctx)
		defer cancel()
		ws, err := w.Watch(ctx)
		if err != nil {
			r.t.Fatal(err)
		}
		next := func(step string) *pb.WatchResponse {
			m, err := ws.Recv()
			r.outcome(step, m, err)
			return m
		}
		ws.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: &pb.WatchCreateRequest{
			Key: []byte(k + "/"), RangeEnd: []byte(k + "0"), PrevKv: true, WatchId: 7}}})
		next("created with the client's watch id")
		kv.Put(r.ctx, &pb.PutRequest{Key: []byte(k + "/a"), Value: []byte("1")})
		kv.Put(r.ctx, &pb.PutRequest{Key: []byte(k + "/a"), Value: []byte("2")})
		kv.DeleteRange(r.ctx, &pb.DeleteRangeRequest{Key: []byte(k + "/a")})
		for n := 0; n < 3; {
			m := next("events")
			if m == nil {
				return
			}
			n += len(m.Events)
		}
		ws.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: &pb.WatchCreateRequest{
			Key: []byte(k + "/a"), StartRevision: r.rev0 + 1, Filters: []pb.WatchCreateRequest_FilterType{pb.WatchCreateRequest_NODELETE}}}})
		next("created from an old revision, no deletes")
		next("history")
		ws.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_ProgressRequest{ProgressRequest: &pb.WatchProgressRequest{}}})
		next("progress")
		ws.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CancelRequest{CancelRequest: &pb.WatchCancelRequest{WatchId: 7}}})
		next("cancelled")
		ws.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: &pb.WatchCreateRequest{Key: []byte(k), StartRevision: -1}}})
		next("negative start revision")
	}},
	{"lease-keys-and-status", func(r *run, kv pb.KVClient, _ pb.WatchClient) {
		l := r.grant(60)
		k := r.name("l")
		kv.Put(r.ctx, &pb.PutRequest{Key: []byte(k), Value: []byte("v"), Lease: l})
		ttl, err := r.lease.LeaseTimeToLive(r.ctx, &pb.LeaseTimeToLiveRequest{ID: l, Keys: true})
		r.outcome("time to live with keys", ttl, err)
	}},
}

func TestPassThrough_answersAsEtcd(t *testing.T) {
	etcd := proxytest.StartEtcd(t)
	p := proxytest.StartProxy(t, []string{etcd.URL}, proxy.Config{})
	kv := proxytest.Client(t, etcd.URL)
	targets := []target{
		{"native", proxytest.Dial(t, strings.TrimPrefix(etcd.URL, "http://"))},
		{"proxy", proxytest.Dial(t, p.Addr().String())},
	}
	for _, c := range passCases {
		t.Run(c.name, func(t *testing.T) {
			var got [2][]string
			for i, tg := range targets {
				r := newRun(t, tg, kv, c.name)
				c.run(r, pb.NewKVClient(tg.conn), pb.NewWatchClient(tg.conn))
				got[i] = r.lines
			}
			compareRuns(t, got)
		})
	}

	// Status answers for the member behind the proxy; Authenticate is
	// etcd's (auth is off here); the cluster-wide Maintenance calls are
	// left to etcd's endpoints.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var st [2]*pb.StatusResponse
	var auth [2]error
	for i, tg := range targets {
		var err error
		st[i], err = pb.NewMaintenanceClient(tg.conn).Status(ctx, &pb.StatusRequest{})
		if err != nil {
			t.Fatalf("%s: Status: %v", tg.name, err)
		}
		_, auth[i] = pb.NewAuthClient(tg.conn).Authenticate(ctx, &pb.AuthenticateRequest{Name: "u", Password: "p"})
	}
	if st[0].Version != st[1].Version || st[0].Leader != st[1].Leader || st[0].Header.MemberId != st[1].Header.MemberId {
		t.Errorf("Status through the proxy %v, native %v", st[1], st[0])
	}
	if status.Convert(auth[0]).String() != status.Convert(auth[1]).String() || auth[0] == nil {
		t.Errorf("Authenticate through the proxy: %v, native: %v", auth[1], auth[0])
	}
	if _, err := pb.NewMaintenanceClient(targets[1].conn).Defragment(ctx, &pb.DefragmentRequest{}); status.Code(err) != codes.Unimplemented {
		t.Errorf("Defragment through the proxy: %v, want Unimplemented", err)
	}
}

// compareRuns fails t where the native run and the proxy's differ.
func compareRuns(t *testing.T, got [2][]string) {
	t.Helper()
	if len(got[0]) == 0 {
		t.Fatal("scenario recorded nothing")
	}
	diff := false
	for i := range max(len(got[0]), len(got[1])) {
		var a, b string
		if i < len(got[0]) {
			a = got[0][i]
		}
		if i < len(got[1]) {
			b = got[1][i]
		}
		if a != b {
			diff = true
			t.Errorf("outcome %d differs:\nnative: %s\nproxy:  %s", i, a, b)
		}
	}
	if !diff && testing.Verbose() {
		for _, l := range got[0] {
			t.Log(l)
		}
	}
}
