package queue_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coordproxy/coordproxy/etcdio"
	"github.com/coordproxy/coordproxy/proxy/proxytest"
	"github.com/coordproxy/coordproxy/queue"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// The queue is tested on its own over a real etcd, without a proxy: keys
// are put and deleted straight in etcd, waits run on one Registry.

// put creates key and returns its create revision.
func put(t *testing.T, c *clientv3.Client, key string) int64 {
	t.Helper()
	resp, err := c.Put(proxytest.Ctx(t), key, "")
	if err != nil {
		t.Fatalf("put %q: %v", key, err)
	}
	return resp.Header.Revision
}

func del(t *testing.T, c *clientv3.Client, key string) {
	t.Helper()
	if _, err := c.Delete(proxytest.Ctx(t), key); err != nil {
		t.Fatalf("delete %q: %v", key, err)
	}
}

// registry is a Registry over its own client of etcdURL, closed at cleanup.
func registry(t *testing.T, etcdURL string, log *slog.Logger) *queue.Registry {
	t.Helper()
	r := queue.NewRegistry(proxytest.Client(t, etcdURL), log, 5*time.Second, time.Minute)
	t.Cleanup(r.Close)
	return r
}

// turn is a WaitTurn running in the background, counting how often its
// condition was judged (each time, but the first, after a wake-up).
type turn struct {
	call   *proxytest.Call
	mu     sync.Mutex
	judged int
}

func (w *turn) judgedTimes() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.judged
}

// waitTurn is WaitTurn, its turn (queue.FirstInLine) counted.
func waitTurn(ctx context.Context, q *queue.Queue, key string, rev int64) *turn {
	w := &turn{}
	first := queue.FirstInLine(key, rev)
	w.call = proxytest.Go(func() error {
		return q.Wait(ctx, nil, queue.ForKey(key, rev, func(v queue.View, watch []string) ([]string, bool) {
			w.mu.Lock()
			w.judged++
			w.mu.Unlock()
			return first(v, watch)
		}))
	})
	return w
}

// Waiters are served in create-revision order, whatever order they began
// waiting in; a waiter whose key is deleted is told at once; each hand-off
// wakes only the waiter whose predecessor left.
func TestQueue_waitTurnServesInCreateRevisionOrderAndWakesOnlyTheNext(t *testing.T) {
	etcd := proxytest.StartEtcd(t)
	c := proxytest.Client(t, etcd.URL)
	ctx := proxytest.Ctx(t)
	const n = 6
	keys, revs := make([]string, n), make([]int64, n)
	for i := range n {
		// Names that sort against creation order: the queue's order is by
		// create revision, not by key.
		keys[i] = fmt.Sprintf("q/%c", 'z'-i)
		revs[i] = put(t, c, keys[i])
	}
	r := registry(t, etcd.URL, nil)
	q := r.Join("q/")
	defer r.Leave(q)

	turns := make([]*turn, n)
	for i := n - 1; i >= 0; i-- { // the last in line starts waiting first
		turns[i] = waitTurn(ctx, q, keys[i], revs[i])
	}
	if err := turns[0].call.Wait(t); err != nil {
		t.Fatalf("first in line: %v", err)
	}
	// Every other waiter has judged its place once and sleeps.
	proxytest.WaitFor(t, 30*time.Second, func() (bool, string) {
		for i := 1; i < n; i++ {
			if turns[i].judgedTimes() == 0 {
				return false, fmt.Sprintf("waiter %d has not looked at the queue", i)
			}
		}
		return true, ""
	})
	before := make([]int, n)
	for i := range turns {
		before[i] = turns[i].judgedTimes()
	}

	// A key from the middle leaves: its own waiter is told so.
	del(t, c, keys[3])
	if err := turns[3].call.Wait(t); !errors.Is(err, queue.ErrKeyGone) {
		t.Fatalf("waiter of a deleted key: %v, want ErrKeyGone", err)
	}
	for i := 1; i < n; i++ {
		del(t, c, keys[i-1])
		if i == 3 {
			continue
		}
		if err := turns[i].call.Wait(t); err != nil {
			t.Fatalf("waiter %d: %v", i, err)
		}
		for j := i + 1; j < n; j++ {
			if j != 3 && turns[j].call.Returned() {
				t.Fatalf("waiter %d returned while %s (created before it) still exists", j, keys[i])
			}
		}
	}
	// Each waiter was woken by its own predecessors' changes only: waiter
	// 4's predecessor changed twice (key 3 deleted, then key 2, its new
	// predecessor); every other waiter's once.
	for i := 1; i < n; i++ {
		want := 1
		switch i {
		case 3:
			want = 0 // its key deleted: ForKey says so before its turn is judged
		case 4:
			want = 2
		}
		if got := turns[i].judgedTimes() - before[i]; got != want {
			t.Errorf("waiter %d judged its place %d times after the first look, want %d", i, got, want)
		}
	}
}

// A waiter that begins before the view has seen its key's creation waits
// for it; one whose key is already gone is told at once.
func TestQueue_waitTurnAwaitsItsKeyAndNoticesItGone(t *testing.T) {
	etcd := proxytest.StartEtcd(t)
	c := proxytest.Client(t, etcd.URL)
	ctx := proxytest.Ctx(t)
	r := registry(t, etcd.URL, nil)
	holder := put(t, c, "k/holder")
	q := r.Join("k/")
	defer r.Leave(q)
	if err := q.WaitTurn(ctx, nil, "k/holder", holder); err != nil {
		t.Fatal(err)
	}
	gone := put(t, c, "k/gone")
	del(t, c, "k/gone")
	if err := q.WaitTurn(ctx, nil, "k/gone", gone); !errors.Is(err, queue.ErrKeyGone) {
		t.Fatalf("wait of a key created and deleted: %v, want ErrKeyGone", err)
	}
	// The stop channel and the context end a wait.
	next := put(t, c, "k/next")
	stop := make(chan struct{})
	w := proxytest.Go(func() error { return q.WaitTurn(ctx, stop, "k/next", next) })
	close(stop)
	if err := w.Wait(t); !errors.Is(err, etcdio.ErrStopping) {
		t.Fatalf("wait after stop: %v, want ErrStopping", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	w = proxytest.Go(func() error { return q.WaitTurn(cctx, nil, "k/next", next) })
	cancel()
	if err := w.Wait(t); !errors.Is(err, context.Canceled) {
		t.Fatalf("wait after cancel: %v, want Canceled", err)
	}
	// Closing the registry ends what still waits.
	w = proxytest.Go(func() error { return q.WaitTurn(ctx, nil, "k/next", next) })
	r.Close()
	if err := w.Wait(t); !errors.Is(err, queue.ErrStopped) {
		t.Fatalf("wait after Close: %v, want ErrStopped", err)
	}
}

// When the queue's watch breaks and etcd compacts the revisions it missed,
// the queue loads a new snapshot: waiters are served as the keys now are,
// and observers see the leader as it now is.
func TestQueue_resyncsAfterMissedCompactedRevisions(t *testing.T) {
	etcd := proxytest.StartEtcd(t)
	c := proxytest.Client(t, etcd.URL)
	ctx := proxytest.Ctx(t)
	// The queue reaches etcd through a TCP relay that the test cuts, so
	// that the watch breaks and cannot come back until the revisions it
	// missed are compacted.
	relay := newCutRelay(t, etcd.URL)
	var logs proxytest.LockedBuffer
	r := registry(t, "http://"+relay.addr, slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))

	holder := put(t, c, "r/holder")
	waiterRev := put(t, c, "r/waiter")
	q := r.Join("r/")
	defer r.Leave(q)
	o, err := q.Observe(ctx, 16)
	if err != nil {
		t.Fatal(err)
	}
	defer q.StopObserving(o)
	w := proxytest.Go(func() error { return q.WaitTurn(ctx, nil, "r/waiter", waiterRev) })
	// The waiter has judged its place (it waits behind the holder) once the
	// view is loaded: a wait of the holder's own turn then returns at once.
	if err := q.WaitTurn(ctx, nil, "r/holder", holder); err != nil {
		t.Fatal(err)
	}

	relay.cut()
	del(t, c, "r/holder")
	newLeader := put(t, c, "r/aaa-later") // sorts first by name, not by revision
	resp, err := c.Put(ctx, "unrelated", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Compact(ctx, resp.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	relay.resume()

	if err := w.Wait(t); err != nil {
		t.Fatalf("waiter after the resync: %v", err)
	}
	if !strings.Contains(logs.String(), "queue watch compacted; reloading") {
		t.Fatalf("the queue did not reload from a snapshot; log:\n%s", logs.String())
	}
	// Observers see the state after the reload: the waiter leads (the new
	// key was created after it).
	var last *mvccpb.KeyValue
	proxytest.WaitFor(t, 30*time.Second, func() (bool, string) {
		for {
			select {
			case ch := <-o.C:
				last = ch.Kv
				continue
			default:
			}
			break
		}
		return last != nil && string(last.Key) == "r/waiter", fmt.Sprintf("observed leader %v, want r/waiter", last)
	})
	// And a wait behind the waiter is served once it leaves.
	w = proxytest.Go(func() error { return q.WaitTurn(ctx, nil, "r/aaa-later", newLeader) })
	del(t, c, "r/waiter")
	if err := w.Wait(t); err != nil {
		t.Fatal(err)
	}
}

// cutRelay copies TCP connections to etcd until cut, which closes every one
// of them and refuses new ones until resume.
type cutRelay struct {
	addr string
	to   string

	mu    sync.Mutex
	cuts  bool
	conns map[net.Conn]struct{}
}

func newCutRelay(t *testing.T, etcdURL string) *cutRelay {
	t.Helper()
	u, err := url.Parse(etcdURL)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &cutRelay{addr: l.Addr().String(), to: u.Host, conns: map[net.Conn]struct{}{}}
	t.Cleanup(func() {
		l.Close()
		r.cut()
	})
	go func() {
		for {
			in, err := l.Accept()
			if err != nil {
				return
			}
			go r.serve(in)
		}
	}()
	return r
}

func (r *cutRelay) serve(in net.Conn) {
	out, err := net.Dial("tcp", r.to)
	if err != nil {
		in.Close()
		return
	}
	r.mu.Lock()
	if r.cuts {
		r.mu.Unlock()
		in.Close()
		out.Close()
		return
	}
	r.conns[in], r.conns[out] = struct{}{}, struct{}{}
	r.mu.Unlock()
	go func() {
		io.Copy(out, in)
		out.Close()
	}()
	io.Copy(in, out)
	in.Close()
}

func (r *cutRelay) cut() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cuts = true
	for c := range r.conns {
		c.Close()
		delete(r.conns, c)
	}
}

func (r *cutRelay) resume() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cuts = false
}
