package proxy_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/coordproxy/coordproxy/proxy"
	"github.com/coordproxy/coordproxy/proxy/proxytest"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
)

// wstream is a raw client Watch stream that keeps every response it gets.
type wstream struct {
	t    testing.TB
	s    pb.Watch_WatchClient
	mu   sync.Mutex
	got  []*pb.WatchResponse
	err  error
	more chan struct{} // closed and replaced when got grows
	made int           // created answers taken by create
}

func openWatch(t testing.TB, ctx context.Context, conn *grpc.ClientConn, read bool) *wstream {
	t.Helper()
	s, err := pb.NewWatchClient(conn).Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	w := &wstream{t: t, s: s, more: make(chan struct{})}
	if read {
		w.read()
	}
	return w
}

// read starts taking the stream's responses.
func (w *wstream) read() {
	go func() {
		for {
			resp, err := w.s.Recv()
			w.mu.Lock()
			if err != nil {
				w.err = err
			} else {
				w.got = append(w.got, resp)
			}
			close(w.more)
			w.more = make(chan struct{})
			w.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
}

// until waits, for waitBound at most, for ok to hold of what came.
func (w *wstream) until(what string, ok func([]*pb.WatchResponse) bool) []*pb.WatchResponse {
	w.t.Helper()
	deadline := time.After(waitBound)
	for {
		w.mu.Lock()
		got, err, more := w.got, w.err, w.more
		w.mu.Unlock()
		if ok(got) {
			return got
		}
		if err != nil {
			w.t.Fatalf("%s: stream ended: %v", what, err)
		}
		select {
		case <-more:
		case <-deadline:
			w.t.Fatalf("%s: not within %s; got %d responses", what, waitBound, len(got))
		}
	}
}

func (w *wstream) send(req *pb.WatchRequest) {
	w.t.Helper()
	if err := w.s.Send(req); err != nil {
		w.t.Fatal(err)
	}
}

// create creates a watch and returns its created answer.
func (w *wstream) create(cr *pb.WatchCreateRequest) *pb.WatchResponse {
	w.t.Helper()
	w.send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: cr}})
	n := w.made + 1
	var created *pb.WatchResponse
	w.until("created", func(got []*pb.WatchResponse) bool {
		seen := 0
		for _, r := range got {
			if r.Created {
				if seen++; seen == n {
					created = r
					return true
				}
			}
		}
		return false
	})
	w.made = n
	return created
}

func (w *wstream) cancel(id int64) {
	w.send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CancelRequest{CancelRequest: &pb.WatchCancelRequest{WatchId: id}}})
}

// revs is the revisions of the events watch id got, in order.
func revs(got []*pb.WatchResponse, id int64) []int64 {
	var out []int64
	for _, r := range got {
		if r.WatchId == id && !r.Created {
			for _, ev := range r.Events {
				out = append(out, ev.Kv.ModRevision)
			}
		}
	}
	return out
}

// waitRevs waits until watch id got an event of rev or later.
func (w *wstream) waitRevs(id, rev int64) []int64 {
	w.t.Helper()
	got := w.until(fmt.Sprintf("watch %d to reach rev %d", id, rev), func(got []*pb.WatchResponse) bool {
		r := revs(got, id)
		return len(r) > 0 && r[len(r)-1] >= rev
	})
	return revs(got, id)
}

// history is the revisions of the puts from start to end, in order.
func history(puts []int64, from, to int64) []int64 {
	var out []int64
	for _, r := range puts {
		if r >= from && r <= to {
			out = append(out, r)
		}
	}
	return out
}

// TestSharedWatches_aThousandWatchersCostEtcdOne: 1 000 watchers of one
// prefix over 50 client streams cost etcd one watcher (today's pass-through:
// 1 000), and every watcher gets every put, in order, once, as etcd's
// history has them.
func TestSharedWatches_aThousandWatchersCostEtcdOne(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const prefix, streams, each = "cfg/", 50, 20
	before := proxytest.EtcdWatchers(t)
	ws := make([]*wstream, streams)
	for i := range ws {
		ws[i] = openWatch(t, ctx, env.Conn, true)
		for range each {
			ws[i].create(&pb.WatchCreateRequest{Key: []byte(prefix), RangeEnd: []byte(clientv3.GetPrefixRangeEnd(prefix))})
		}
	}
	if n := proxytest.EtcdWatchers(t) - before; n != 1 {
		t.Fatalf("etcd has %v watchers more for %d client watchers, want 1", n, streams*each)
	}
	if n := env.Metric(t, "coordproxy_watch_shared", nil); n != 1 {
		t.Fatalf("coordproxy_watch_shared %v, want 1", n)
	}
	var puts []int64
	for i := range 50 {
		r, err := env.KV.Put(ctx, fmt.Sprintf("%sk%d", prefix, i%7), fmt.Sprint(i))
		if err != nil {
			t.Fatal(err)
		}
		puts = append(puts, r.Header.Revision)
	}
	last := puts[len(puts)-1]
	for _, w := range ws {
		for id := range int64(each) {
			if got := w.waitRevs(id, last); !slices.Equal(got, puts) {
				t.Fatalf("watch %d got revisions %v, etcd's history %v", id, got, puts)
			}
		}
	}
}

// TestSharedWatches_joiningAndLeavingDuringWrites: watchers join a shared
// watch and leave it while a writer writes, from the current revision, from
// a recent one (the shared watch's buffer) and from an old one (a catch-up
// watch of their own, handed over to the shared one); each gets exactly
// etcd's history from its start to where it left: no gap at the join or
// the hand-over, nothing twice. When all have left, etcd has no watcher of
// theirs left.
func TestSharedWatches_joiningAndLeavingDuringWrites(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const prefix = "churn/"
	before := proxytest.EtcdWatchers(t)
	first, err := env.KV.Put(ctx, prefix+"first", "0")
	if err != nil {
		t.Fatal(err)
	}
	const writes = 600
	type watched struct {
		what  string
		start int64
		got   []int64
	}
	var (
		mu    sync.Mutex
		puts  = []int64{first.Header.Revision}
		seen  []watched
		done  = make(chan struct{})
		final = first.Header.Revision + writes // one writer: one revision each
	)
	go func() {
		defer close(done)
		for i := range writes {
			r, err := env.KV.Put(ctx, fmt.Sprintf("%sk%d", prefix, i%13), fmt.Sprint(i))
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			puts = append(puts, r.Header.Revision)
			mu.Unlock()
		}
	}()
	var wg sync.WaitGroup
	for j := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(j), 7))
			w := openWatch(t, ctx, env.Conn, true)
			for k := range 10 {
				mu.Lock()
				now := puts[len(puts)-1]
				mu.Unlock()
				var start int64
				switch k % 3 {
				case 1:
					start = max(now-int64(rng.IntN(20)), 1)
				case 2:
					start = first.Header.Revision // older than any shared watch
				}
				created := w.create(&pb.WatchCreateRequest{Key: []byte(prefix), RangeEnd: []byte(clientv3.GetPrefixRangeEnd(prefix)), StartRevision: start})
				if start == 0 {
					start = created.Header.Revision + 1
				}
				// Stay for a few more puts.
				mu.Lock()
				upto := min(puts[len(puts)-1]+int64(rng.IntN(30)), final)
				mu.Unlock()
				if upto >= start { // else it started after the last write
					w.waitRevs(created.WatchId, upto)
				}
				w.cancel(created.WatchId)
				w.until("canceled", func(rs []*pb.WatchResponse) bool {
					return slices.ContainsFunc(rs, func(r *pb.WatchResponse) bool { return r.Canceled && r.WatchId == created.WatchId })
				})
				got := revs(w.until("settled", func([]*pb.WatchResponse) bool { return true }), created.WatchId)
				mu.Lock()
				seen = append(seen, watched{fmt.Sprintf("stream %d watch %d from %d", j, created.WatchId, start), start, got})
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	<-done
	// The events each got up to its last are etcd's history.
	for _, w := range seen {
		if len(w.got) == 0 {
			continue
		}
		if want := history(puts, w.start, w.got[len(w.got)-1]); !slices.Equal(w.got, want) {
			t.Errorf("%s: got %v, history %v", w.what, w.got, want)
		}
	}
	// Watchers from an old revision caught up alone and joined.
	if n := env.Metric(t, "coordproxy_watch_moves_total", map[string]string{"to": "shared"}); n == 0 {
		t.Error("no watcher caught up and joined a shared watch")
	}
	deadline := time.Now().Add(waitBound)
	for proxytest.EtcdWatchers(t) != before || env.Metric(t, "coordproxy_watch_shared", nil) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("etcd has %v watchers more after every watcher left", proxytest.EtcdWatchers(t)-before)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestSharedWatches_aSlowClientHoldsNobodyBack: a client that stops
// reading does not hold back the others sharing its watch, is not
// cancelled, and once it reads again gets every event, in order, once.
func TestSharedWatches_aSlowClientHoldsNobodyBack(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const prefix = "slow/"
	rng := []byte(clientv3.GetPrefixRangeEnd(prefix))
	before := proxytest.EtcdWatchers(t)
	slow := openWatch(t, ctx, env.Conn, false)
	slow.send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: &pb.WatchCreateRequest{Key: []byte(prefix), RangeEnd: rng}}})
	// Its created answer, then nothing until the puts are done.
	created, err := slow.s.Recv()
	if err != nil || !created.Created {
		t.Fatalf("slow watcher's create: %v %v", created, err)
	}
	slow.got = append(slow.got, created)
	var others []*wstream
	for range 5 {
		w := openWatch(t, ctx, env.Conn, true)
		w.create(&pb.WatchCreateRequest{Key: []byte(prefix), RangeEnd: rng})
		others = append(others, w)
	}
	value := string(make([]byte, 4096))
	var puts []int64
	for i := range 2000 {
		r, err := env.KV.Put(ctx, fmt.Sprintf("%sk%d", prefix, i%11), value)
		if err != nil {
			t.Fatal(err)
		}
		puts = append(puts, r.Header.Revision)
	}
	last := puts[len(puts)-1]
	for _, w := range others {
		if got := w.waitRevs(0, last); !slices.Equal(got, puts) {
			t.Fatalf("a fast watcher got %d events, etcd's history %d", len(got), len(puts))
		}
	}
	// Every other watcher has everything while the slow one read nothing.
	slow.read()
	slow.until("created", func(rs []*pb.WatchResponse) bool { return len(rs) > 0 && rs[0].Created })
	if got := slow.waitRevs(0, last); !slices.Equal(got, puts) {
		t.Fatalf("the slow watcher got %d events (%v…), etcd's history %d", len(got), got[:min(len(got), 5)], len(puts))
	}
	// It was moved to a watch of its own (on a loaded machine a fast one
	// may be too), and back once caught up: etcd is left with the one
	// shared watcher.
	moved := func(to string) float64 {
		return env.Metric(t, "coordproxy_watch_moves_total", map[string]string{"to": to})
	}
	if moved("own") == 0 {
		t.Error("the slow watcher was not moved to a watch of its own")
	}
	deadline := time.Now().Add(waitBound)
	for moved("shared") != moved("own") || proxytest.EtcdWatchers(t)-before != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("%v of %v moved watchers joined again; etcd has %v watchers more", moved("shared"), moved("own"), proxytest.EtcdWatchers(t)-before)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestSharedWatches_aLostEtcdStreamEndsItsWatchers: when the etcd
// connection under a shared watch breaks (here the bytes to etcd are
// garbled, so etcd drops the connection), every client stream on it ends
// with an error, as its own etcd stream would have, instead of staying
// open on a watch that will never fire (etcd-io/etcd#21813); a client
// that comes back watches afresh and gets the next event.
func TestSharedWatches_aLostEtcdStreamEndsItsWatchers(t *testing.T) {
	etcd := proxytest.StartEtcd(t)
	fault, url := proxytest.FaultProxy(t, etcd.URL)
	env := proxytest.NewProxyEnv(t, etcd, url, proxy.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const prefix = "lost/"
	rng := []byte(clientv3.GetPrefixRangeEnd(prefix))
	var ws []*wstream
	for range 2 {
		w := openWatch(t, ctx, env.Conn, true)
		w.create(&pb.WatchCreateRequest{Key: []byte(prefix), RangeEnd: rng})
		ws = append(ws, w)
	}
	fault.ModifyTx(func([]byte) []byte { return []byte("not http/2 at all, not at all") })
	// Something for the connection to carry.
	pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
	_, _ = pb.NewKVClient(env.Conn).Put(pctx, &pb.PutRequest{Key: []byte(prefix + "x"), Value: []byte("1")})
	pcancel()
	for i, w := range ws {
		deadline := time.After(waitBound)
		for {
			w.mu.Lock()
			err, more := w.err, w.more
			w.mu.Unlock()
			if err != nil {
				break
			}
			select {
			case <-more:
			case <-deadline:
				t.Fatalf("client stream %d still open after its etcd connection broke", i)
			}
		}
	}
	fault.UnmodifyTx()
	// Once the proxy has its connection back:
	proxytest.WaitFor(t, time.Minute, func() (bool, string) {
		pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
		defer pcancel()
		_, err := pb.NewKVClient(env.Conn).Put(pctx, &pb.PutRequest{Key: []byte("other"), Value: []byte("1")})
		return err == nil, fmt.Sprintf("the proxy did not reach etcd again: %v", err)
	})
	w := openWatch(t, ctx, env.Conn, true)
	created := w.create(&pb.WatchCreateRequest{Key: []byte(prefix), RangeEnd: rng})
	put, err := env.KV.Put(ctx, prefix+"y", "2")
	if err != nil {
		t.Fatal(err)
	}
	if got := w.waitRevs(created.WatchId, put.Header.Revision); got[len(got)-1] != put.Header.Revision {
		t.Fatalf("the new watcher got %v, want the put at %d", got, put.Header.Revision)
	}
}
