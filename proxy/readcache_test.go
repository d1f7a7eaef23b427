package proxy_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/coordproxy/coordproxy/proxy"
	"github.com/coordproxy/coordproxy/proxy/proxytest"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/proto"
)

// TestReadCache_neverStale: serializable reads of a key through a proxy
// with a read cache are answered from it (etcd sees no request for them),
// with the revision they reflect in the header and etcd's value at that
// revision: a write straight at etcd reaches the cache through its watch,
// a write through the proxy is read back at once (never a value older than
// one the proxy answered), keys-only and count-only reads are answered as
// etcd answers them, a deleted key reads as none, and a linearizable read
// always goes to etcd.
func TestReadCache_neverStale(t *testing.T) {
	env := proxytest.New(t, proxy.Config{ReadCacheKeys: 16})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	kv := pb.NewKVClient(env.Conn)
	native := pb.NewKVClient(proxytest.Dial(t, env.Etcd.URL[len("http://"):]))
	hits := func() float64 {
		return env.Metric(t, "coordproxy_read_cache_total", map[string]string{"result": "hit"})
	}
	// read reads k serializably through the proxy and checks the answer
	// against etcd's own at the revision it reports.
	read := func(what string, req *pb.RangeRequest) *pb.RangeResponse {
		t.Helper()
		req.Serializable = true
		got, err := kv.Range(ctx, req)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		at := proto.Clone(req).(*pb.RangeRequest)
		at.Revision = got.Header.Revision
		want, err := native.Range(ctx, at)
		if err != nil {
			t.Fatalf("%s: etcd at %d: %v", what, at.Revision, err)
		}
		if !proto.Equal(&pb.RangeResponse{Kvs: got.Kvs, Count: got.Count}, &pb.RangeResponse{Kvs: want.Kvs, Count: want.Count}) {
			t.Fatalf("%s: proxy answered %v (count %d) at revision %d; etcd had %v (count %d)", what, got.Kvs, got.Count, got.Header.Revision, want.Kvs, want.Count)
		}
		return got
	}
	key := []byte("hot")
	if _, err := kv.Put(ctx, &pb.PutRequest{Key: key, Value: []byte("v1")}); err != nil {
		t.Fatal(err)
	}
	read("first read (fills)", &pb.RangeRequest{Key: key})
	// Its watch is made: reads come from the cache.
	proxytest.WaitFor(t, 10*time.Second, func() (bool, string) {
		h := hits()
		read("read", &pb.RangeRequest{Key: key})
		return hits() > h, "no read answered from the cache"
	})
	h := hits()
	for range 5 {
		read("cached read", &pb.RangeRequest{Key: key})
		read("cached keys-only read", &pb.RangeRequest{Key: key, KeysOnly: true})
		read("cached count-only read", &pb.RangeRequest{Key: key, CountOnly: true})
	}
	if hits()-h != 15 {
		t.Fatalf("%v of 15 reads answered from the cache", hits()-h)
	}
	// A write straight at etcd comes through the watch.
	w, err := native.Put(ctx, &pb.PutRequest{Key: key, Value: []byte("v2")})
	if err != nil {
		t.Fatal(err)
	}
	proxytest.WaitFor(t, 10*time.Second, func() (bool, string) {
		r := read("read after a write elsewhere", &pb.RangeRequest{Key: key})
		return r.Header.Revision >= w.Header.Revision && string(r.Kvs[0].Value) == "v2", "the cache did not see the write"
	})
	// A write through the proxy is read back at once, and so is a delete.
	for i := range 20 {
		v := fmt.Sprintf("p%d", i)
		p, err := kv.Put(ctx, &pb.PutRequest{Key: key, Value: []byte(v)})
		if err != nil {
			t.Fatal(err)
		}
		if r := read("read your write", &pb.RangeRequest{Key: key}); r.Header.Revision < p.Header.Revision || string(r.Kvs[0].Value) != v {
			t.Fatalf("wrote %s at %d, read %v at %d", v, p.Header.Revision, r.Kvs, r.Header.Revision)
		}
	}
	d, err := kv.DeleteRange(ctx, &pb.DeleteRangeRequest{Key: key})
	if err != nil {
		t.Fatal(err)
	}
	if r := read("read after delete", &pb.RangeRequest{Key: key}); r.Header.Revision < d.Header.Revision || len(r.Kvs) != 0 {
		t.Fatalf("deleted at %d, read %v at %d", d.Header.Revision, r.Kvs, r.Header.Revision)
	}
	// A linearizable read is never a hit.
	h = hits()
	if _, err := kv.Range(ctx, &pb.RangeRequest{Key: key}); err != nil {
		t.Fatal(err)
	}
	if hits() != h {
		t.Fatal("a linearizable read was answered from the cache")
	}
}
