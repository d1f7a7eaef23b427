package queue

import (
	"context"
	"errors"
	"sort"
	"sync"
	"time"

	"github.com/coordproxy/coordproxy/etcdio"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// ErrStopped is returned to waiters and observers when the proxy closes the
// queue under them.
var ErrStopped = errors.New("coordproxy: queue stopped")

// Queue is the view of one key prefix that this proxy keeps from one etcd
// watch: every key under the prefix ordered by create revision, exact as of
// revision rev.
type Queue struct {
	r      *Registry
	prefix string

	users     int         // guarded by r.mu
	lingering *time.Timer // guarded by r.mu

	ctx    context.Context
	cancel context.CancelFunc
	ready  chan struct{} // closed after the first snapshot, or when stopped

	mu        sync.Mutex
	stopped   bool
	loaded    bool
	rev       int64 // the view is exact as of this revision
	cluster   uint64
	member    uint64
	term      uint64
	keys      map[string]*mvccpb.KeyValue
	order     []*mvccpb.KeyValue // ascending (CreateRevision, Key)
	waits     map[string][]chan struct{}
	hooks     map[any]*hook    // see Hook
	leader    *mvccpb.KeyValue // order[0] as last told to observers
	observers map[*Observer]struct{}
}

func newQueue(r *Registry, prefix string) *Queue {
	ctx, cancel := context.WithCancel(r.ctx)
	return &Queue{
		r:         r,
		prefix:    prefix,
		ctx:       ctx,
		cancel:    cancel,
		ready:     make(chan struct{}),
		keys:      map[string]*mvccpb.KeyValue{},
		waits:     map[string][]chan struct{}{},
		hooks:     map[any]*hook{},
		observers: map[*Observer]struct{}{},
	}
}

// run keeps the view current until the queue stops. A broken watch resumes
// from the next revision so that no change is missed; only a compacted
// revision forces a new snapshot.
func (q *Queue) run() {
	defer q.r.wg.Done()
	defer q.stop()
	backoff := etcdio.NewBackoff(50*time.Millisecond, 2*time.Second)
	for q.ctx.Err() == nil {
		if q.watchOnce() {
			backoff.Reset()
		}
		select {
		case <-q.ctx.Done():
		case <-time.After(backoff.Next()):
		}
	}
}

// watchOnce runs one etcd watch until it ends and reports whether it made
// progress.
func (q *Queue) watchOnce() bool {
	// Require a leader so that a member cut off from the cluster ends the
	// watch instead of silently delivering nothing.
	ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(q.ctx))
	defer cancel()

	q.mu.Lock()
	loaded, from := q.loaded, q.rev+1
	q.mu.Unlock()

	var wch clientv3.WatchChan
	if loaded {
		wch = q.r.client.Watch(ctx, q.prefix, clientv3.WithPrefix(), clientv3.WithRev(from))
	} else {
		// Watch first, then read: a watch from "now" starts synced, and every
		// change after the read is then certain to arrive on it.
		wch = q.r.client.Watch(ctx, q.prefix, clientv3.WithPrefix(), clientv3.WithCreatedNotify())
		wr, ok := <-wch
		if !ok || wr.Err() != nil || !wr.Created {
			q.logWatchEnd(wr, ok)
			return false
		}
		if err := q.snapshot(); err != nil {
			if q.ctx.Err() == nil {
				q.r.log.Warn("queue snapshot failed", "prefix", q.prefix, "error", err)
			}
			return false
		}
	}
	progressed := !loaded
	for wr := range wch {
		if wr.CompactRevision != 0 {
			q.r.log.Warn("queue watch compacted; reloading", "prefix", q.prefix, "compact_revision", wr.CompactRevision)
			q.mu.Lock()
			q.loaded = false
			q.mu.Unlock()
			return true
		}
		if wr.Err() != nil {
			q.logWatchEnd(wr, true)
			return progressed
		}
		q.apply(wr)
		progressed = true
	}
	return progressed
}

func (q *Queue) logWatchEnd(wr clientv3.WatchResponse, ok bool) {
	if q.ctx.Err() != nil {
		return
	}
	if ok && wr.Err() != nil {
		q.r.log.Warn("queue watch ended", "prefix", q.prefix, "error", wr.Err())
	} else {
		q.r.log.Debug("queue watch closed", "prefix", q.prefix)
	}
}

// snapshot loads every key under the prefix and wakes all waiters to judge
// their place again.
func (q *Queue) snapshot() error {
	ctx, cancel := context.WithTimeout(q.ctx, q.r.timeout)
	defer cancel()
	resp, err := q.r.client.Get(ctx, q.prefix, clientv3.WithPrefix())
	if err != nil {
		return err
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.stopped {
		return ErrStopped
	}
	q.keys = make(map[string]*mvccpb.KeyValue, len(resp.Kvs))
	q.order = append([]*mvccpb.KeyValue(nil), resp.Kvs...)
	for _, kv := range resp.Kvs {
		q.keys[string(kv.Key)] = kv
	}
	sort.Slice(q.order, func(i, j int) bool { return less(q.order[i], q.order[j].CreateRevision, q.order[j].Key) })
	q.rev = resp.Header.Revision
	q.noteHeader(resp.Header)
	q.loaded = true
	q.readyLocked()
	q.wakeAllLocked()
	q.notifyLocked()
	return nil
}

func less(kv *mvccpb.KeyValue, createRev int64, key []byte) bool {
	if kv.CreateRevision != createRev {
		return kv.CreateRevision < createRev
	}
	return string(kv.Key) < string(key)
}

// index is the position of the first entry not before (createRev, key).
func (q *Queue) index(createRev int64, key []byte) int {
	return sort.Search(len(q.order), func(i int) bool { return !less(q.order[i], createRev, key) })
}

func (q *Queue) apply(wr clientv3.WatchResponse) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.noteHeader(wr.Header)
	for i, ev := range wr.Events {
		rev := ev.Kv.ModRevision
		if rev <= q.rev {
			continue // already in the snapshot
		}
		key := string(ev.Kv.Key)
		old := q.keys[key]
		switch {
		case ev.Type == mvccpb.PUT && old != nil && old.CreateRevision == ev.Kv.CreateRevision:
			// A new value for a key in place (Proclaim): same position.
			q.order[q.index(old.CreateRevision, old.Key)] = ev.Kv
			q.keys[key] = ev.Kv
		case ev.Type == mvccpb.PUT:
			if old != nil {
				q.removeLocked(old)
			}
			q.insertLocked(ev.Kv)
		case old != nil:
			q.removeLocked(old)
		}
		q.wakeLocked(key)
		// Observers see the state after each revision, never in the middle of
		// one transaction.
		if i == len(wr.Events)-1 || wr.Events[i+1].Kv.ModRevision != rev {
			q.rev = rev
			q.notifyLocked()
		}
	}
}

func (q *Queue) noteHeader(h *pb.ResponseHeader) {
	if h != nil && h.ClusterId != 0 {
		q.cluster, q.member, q.term = h.ClusterId, h.MemberId, h.RaftTerm
	}
}

func (q *Queue) insertLocked(kv *mvccpb.KeyValue) {
	q.keys[string(kv.Key)] = kv
	// A new key has the highest create revision so far: almost always an append.
	i := q.index(kv.CreateRevision, kv.Key)
	if i == len(q.order) {
		q.order = append(q.order, kv)
		return
	}
	q.order = append(q.order, nil)
	copy(q.order[i+1:], q.order[i:])
	q.order[i] = kv
}

func (q *Queue) removeLocked(kv *mvccpb.KeyValue) {
	delete(q.keys, string(kv.Key))
	i := q.index(kv.CreateRevision, kv.Key)
	if i >= len(q.order) || q.order[i] != kv {
		return
	}
	if i == 0 {
		// The holder leaving is the common case: no copying.
		q.order[0] = nil
		q.order = q.order[1:]
	} else {
		copy(q.order[i:], q.order[i+1:])
		q.order[len(q.order)-1] = nil
		q.order = q.order[:len(q.order)-1]
	}
	for _, h := range q.hooks {
		h.removed(View{q}, i)
	}
}

// stop ends the queue: its watch, its waiters and its observers.
func (q *Queue) stop() {
	q.cancel()
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.stopped {
		return
	}
	q.stopped = true
	q.readyLocked()
	q.wakeAllLocked()
	for o := range q.observers {
		o.err = ErrStopped
		delete(q.observers, o)
		close(o.C)
	}
}

// readyLocked lets waits and observers in (once loaded, or stopped).
func (q *Queue) readyLocked() {
	select {
	case <-q.ready:
	default:
		close(q.ready)
	}
}

// wakeAllLocked wakes every waiter to judge its place again.
func (q *Queue) wakeAllLocked() {
	for k := range q.waits {
		q.wakeLocked(k)
	}
}
