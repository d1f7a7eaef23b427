package proxy_test

import (
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
)

// Watch corner cases under sharing (passthrough/watchshare.go), each run
// against etcd's own Watch and through the proxy: watch IDs and the
// duplicate-ID refusal, cancel, start revisions in the shared watch's past
// and future, filters and prev_kv, compaction while a watch is shared,
// RequestProgress with shared and catching-up watchers, fragments. Through
// the proxy the watchers of one key share an etcd watch.
func init() {
	scenarios = append(scenarios,
		scenario{"watch-ids-duplicates-and-cancel", func(r *run) {
			k := []byte(r.name("k"))
			r.put(string(k), "0")
			a := r.watchStream()
			a.create("auto", &pb.WatchCreateRequest{Key: k})
			a.create("chosen 7", &pb.WatchCreateRequest{Key: k, WatchId: 7})
			a.create("auto after 7", &pb.WatchCreateRequest{Key: k})
			a.create("7 again", &pb.WatchCreateRequest{Key: k, WatchId: 7})
			a.create("1 again", &pb.WatchCreateRequest{Key: k, WatchId: 1})
			a.cancel("cancel 7", 7, 1)
			a.cancel("cancel 42 (none)", 42, 0)
			a.create("7 once more", &pb.WatchCreateRequest{Key: k, WatchId: 7})
			b := r.watchStream()
			b.create("another stream's first", &pb.WatchCreateRequest{Key: k})
			r.put(string(k), "1")
			a.expect("put: stream a", 3)
			b.expect("put: stream b", 1)
			a.cancel("cancel 0", 0, 1)
			r.put(string(k), "2")
			a.expect("put after cancel: stream a", 2)
			b.expect("put after cancel: stream b", 1)
		}},
		scenario{"watch-start-revisions-filters-prev-kv", func(r *run) {
			k := r.name("a")
			r.put(k, "1")
			r.put(k, "2")
			r.del(k)
			r.put(k, "3")
			w := r.watchStream()
			key := []byte(k)
			w.create("from rev0+2 (history)", &pb.WatchCreateRequest{Key: key, StartRevision: r.rev0 + 2})
			w.expect("history", 1)
			w.create("now, no puts", &pb.WatchCreateRequest{Key: key, Filters: []pb.WatchCreateRequest_FilterType{pb.WatchCreateRequest_NOPUT}})
			w.create("now, no deletes", &pb.WatchCreateRequest{Key: key, Filters: []pb.WatchCreateRequest_FilterType{pb.WatchCreateRequest_NODELETE}})
			w.create("now, prev_kv", &pb.WatchCreateRequest{Key: key, PrevKv: true})
			w.create("from rev0+3, prev_kv", &pb.WatchCreateRequest{Key: key, PrevKv: true, StartRevision: r.rev0 + 3})
			w.expect("history with prev_kv", 1)
			w.create("from the future", &pb.WatchCreateRequest{Key: key, StartRevision: r.rev0 + 1000})
			r.put(k, "4")
			w.expect("put", 4)
			r.del(k)
			w.expect("delete", 4)
		}},
		scenario{"watch-compaction-while-shared", func(r *run) {
			k := r.name("c")
			for i := range 3 {
				r.put(k, fmt.Sprint(i))
			}
			w := r.watchStream()
			key := []byte(k)
			w.create("now", &pb.WatchCreateRequest{Key: key})
			w.create("now, again", &pb.WatchCreateRequest{Key: key})
			if _, err := r.kv.Compact(r.ctx, r.rev0+3); err != nil {
				r.t.Fatal(err)
			}
			w.create("from a compacted revision", &pb.WatchCreateRequest{Key: key, StartRevision: r.rev0 + 1})
			w.expect("compacted", 1)
			w.create("from the compaction's revision", &pb.WatchCreateRequest{Key: key, StartRevision: r.rev0 + 3})
			w.expect("history", 1)
			r.put(k, "3")
			w.expect("put", 3)
		}},
		scenario{"watch-request-progress", func(r *run) {
			k := r.name("p")
			key := []byte(k)
			w := r.watchStream()
			w.progress() // no watcher: etcd answers nothing
			w.create("after a progress request with no watcher", &pb.WatchCreateRequest{Key: key})
			r.put(k, "1")
			w.expect("put", 1)
			w.create("now, again", &pb.WatchCreateRequest{Key: key})
			w.progress()
			w.expect("progress", 1)
			w.create("from rev0+1 (history)", &pb.WatchCreateRequest{Key: key, StartRevision: r.rev0 + 1})
			w.expect("history", 1)
			w.progress()
			w.expect("progress with a watcher from history", 1)
			r.put(k, "2")
			w.expect("put", 3)
			w.progress()
			w.expect("progress after the put", 1)
			w.create("from the future", &pb.WatchCreateRequest{Key: key, StartRevision: r.rev0 + 1000})
			w.progress() // a watcher starts after the current revision: no answer
			w.cancel("cancel the future one", 3, 1)
			w.progress()
			w.expect("progress once it is gone", 1)
		}},
		scenario{"watch-fragments", func(r *run) {
			k := r.name("f")
			for i := range 3 {
				r.put(k, strings.Repeat(string(rune('a'+i)), 1<<20))
			}
			w := r.watchStream()
			w.create("shared", &pb.WatchCreateRequest{Key: []byte(k)})
			w.create("from rev0+1, fragmented", &pb.WatchCreateRequest{Key: []byte(k), StartRevision: r.rev0 + 1, Fragment: true})
			w.expect("fragments", 3)
		}},
	)
}

// wrecorder is a raw Watch stream whose responses the run records.
type wrecorder struct {
	r    *run
	s    pb.Watch_WatchClient
	resp chan *pb.WatchResponse
	err  chan error
}

func (r *run) watchStream() *wrecorder {
	s, err := pb.NewWatchClient(r.conn).Watch(r.ctx, grpc.MaxCallRecvMsgSize(math.MaxInt32))
	if err != nil {
		r.t.Fatal(err)
	}
	w := &wrecorder{r: r, s: s, resp: make(chan *pb.WatchResponse, 1000), err: make(chan error, 1)}
	go func() {
		for {
			resp, err := s.Recv()
			if err != nil {
				w.err <- err
				return
			}
			w.resp <- resp
		}
	}()
	r.t.Cleanup(func() { _ = s.CloseSend() })
	return w
}

func (w *wrecorder) send(req *pb.WatchRequest) {
	if err := w.s.Send(req); err != nil && !errors.Is(err, io.EOF) {
		w.r.t.Fatal(err)
	}
}

// create sends a create and records its answer.
func (w *wrecorder) create(step string, cr *pb.WatchCreateRequest) {
	w.send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: cr}})
	w.expect("create "+step, 1)
}

// cancel sends a cancel and records the n answers expected (0: the next
// response recorded shows there was none).
func (w *wrecorder) cancel(step string, id int64, n int) {
	w.send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CancelRequest{CancelRequest: &pb.WatchCancelRequest{WatchId: id}}})
	w.expect(step, n)
}

func (w *wrecorder) progress() {
	w.send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_ProgressRequest{ProgressRequest: &pb.WatchProgressRequest{}}})
}

// expect records the next n responses, in a sorted order: etcd sends the
// responses of one revision to a stream's watchers in no set order.
func (w *wrecorder) expect(step string, n int) {
	var lines []string
	for range n {
		select {
		case resp := <-w.resp:
			lines = append(lines, w.r.normalize(resp))
		case err := <-w.err:
			w.r.outcome(step, nil, err)
			return
		case <-w.r.ctx.Done():
			w.r.t.Fatalf("%s: %d of %d responses", step, len(lines), n)
		}
	}
	slices.Sort(lines)
	for _, l := range lines {
		w.r.record("%s: %s", step, l)
	}
}

// del deletes key straight at etcd.
func (r *run) del(key string) {
	if _, err := r.kv.Delete(r.ctx, key); err != nil {
		r.t.Fatal(err)
	}
}
