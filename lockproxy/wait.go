package lockproxy

import (
	"context"
	"errors"
	"log/slog"
	"sort"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// concurrency.Mutex and Election wait for each predecessor with a watch that
// starts at the Get's header revision. etcd treats such a watch as unsynced and
// only catches it up on its 100 ms sync loop, so every contended hand-off
// stalls, and every waiter costs etcd one watcher. Queues replaces that
// waiting, never the transactions: this proxy holds one synced watch per key
// prefix, keeps the prefix's keys in create-revision order from it, and wakes
// exactly the waiter whose predecessor went away.

var (
	// errKeyGone: the waiter's own key no longer exists with its create
	// revision (lease expired, revoked, or the key was deleted).
	errKeyGone = errors.New("lockproxy: waiter key is gone")
	// ErrQueueStopped is returned to waiters and observers when the proxy closes
	// the queue under them.
	ErrQueueStopped = errors.New("lockproxy: queue stopped")
	// ErrObserverTooSlow ends an observer that fell more than its buffer behind.
	ErrObserverTooSlow = errors.New("lockproxy: observer fell behind")
)

// Queues shares one etcd watch per key prefix among all Lock and Campaign
// waiters and Observe streams of this proxy.
type Queues struct {
	client  *clientv3.Client
	log     *slog.Logger
	timeout time.Duration // bound for the snapshot reads a queue makes on its own
	linger  time.Duration // how long an unused queue keeps its watch

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	queues map[string]*Queue
}

// NewQueues returns an empty set of queues over client. timeout bounds each
// etcd read a queue makes on its own; an unused queue keeps its watch for
// linger so that alternating waiters do not pay for a new watch each time.
func NewQueues(client *clientv3.Client, log *slog.Logger, timeout, linger time.Duration) *Queues {
	ctx, cancel := context.WithCancel(context.Background())
	return &Queues{
		client:  client,
		log:     log,
		timeout: timeout,
		linger:  linger,
		ctx:     ctx,
		cancel:  cancel,
		queues:  map[string]*Queue{},
	}
}

// Acquire returns the queue of prefix, starting its watch if there is none.
// Every Acquire must be paired with a Release.
func (qs *Queues) Acquire(prefix string) *Queue {
	qs.mu.Lock()
	defer qs.mu.Unlock()
	q := qs.queues[prefix]
	if q == nil {
		q = newQueue(qs, prefix)
		qs.queues[prefix] = q
		if qs.ctx.Err() != nil {
			q.stop()
		} else {
			qs.wg.Add(1)
			go q.run()
		}
	}
	q.refs++
	if q.lingering != nil {
		q.lingering.Stop()
		q.lingering = nil
	}
	return q
}

// Release gives back a queue from Acquire. The last release leaves the watch
// running for the linger time.
func (qs *Queues) Release(q *Queue) {
	qs.mu.Lock()
	defer qs.mu.Unlock()
	q.refs--
	if q.refs > 0 {
		return
	}
	q.lingering = time.AfterFunc(qs.linger, func() {
		qs.mu.Lock()
		if q.refs > 0 || qs.queues[q.prefix] != q {
			qs.mu.Unlock()
			return
		}
		delete(qs.queues, q.prefix)
		qs.mu.Unlock()
		q.stop()
	})
}

// Len is the number of prefixes with a running watch.
func (qs *Queues) Len() int {
	qs.mu.Lock()
	defer qs.mu.Unlock()
	return len(qs.queues)
}

// Close stops every watch. Waiters and observers still registered get
// ErrQueueStopped.
func (qs *Queues) Close() {
	qs.cancel()
	qs.mu.Lock()
	for _, q := range qs.queues {
		q.stop()
	}
	qs.mu.Unlock()
	qs.wg.Wait()
}

// Queue is the view of one key prefix that this proxy keeps from one etcd
// watch: every key under the prefix ordered by create revision, exact as of
// revision rev.
type Queue struct {
	qs     *Queues
	prefix string

	refs      int         // guarded by qs.mu
	lingering *time.Timer // guarded by qs.mu

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
	ranks     map[int]int      // WaitRank's waiters by rank n
	leader    *mvccpb.KeyValue // order[0] as last told to observers
	observers map[*Observer]struct{}
}

func newQueue(qs *Queues, prefix string) *Queue {
	ctx, cancel := context.WithCancel(qs.ctx)
	return &Queue{
		qs:        qs,
		prefix:    prefix,
		ctx:       ctx,
		cancel:    cancel,
		ready:     make(chan struct{}),
		keys:      map[string]*mvccpb.KeyValue{},
		waits:     map[string][]chan struct{}{},
		ranks:     map[int]int{},
		observers: map[*Observer]struct{}{},
	}
}

// Prefix is the key prefix this queue watches.
func (q *Queue) Prefix() string { return q.prefix }

// run keeps the view current until the queue stops. A broken watch resumes
// from the next revision so that no change is missed; only a compacted
// revision forces a new snapshot.
func (q *Queue) run() {
	defer q.qs.wg.Done()
	defer q.stop()
	backoff := newBackoff(50*time.Millisecond, 2*time.Second)
	for q.ctx.Err() == nil {
		if q.watchOnce() {
			backoff.reset()
		}
		select {
		case <-q.ctx.Done():
		case <-time.After(backoff.next()):
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
		wch = q.qs.client.Watch(ctx, q.prefix, clientv3.WithPrefix(), clientv3.WithRev(from))
	} else {
		// Watch first, then read: a watch from "now" starts synced, and every
		// change after the read is then certain to arrive on it.
		wch = q.qs.client.Watch(ctx, q.prefix, clientv3.WithPrefix(), clientv3.WithCreatedNotify())
		wr, ok := <-wch
		if !ok || wr.Err() != nil || !wr.Created {
			q.logWatchEnd(wr, ok)
			return false
		}
		if err := q.snapshot(); err != nil {
			if q.ctx.Err() == nil {
				q.qs.log.Warn("queue snapshot failed", "prefix", q.prefix, "err", err)
			}
			return false
		}
	}
	progressed := !loaded
	for wr := range wch {
		if wr.CompactRevision != 0 {
			q.qs.log.Warn("queue watch compacted; reloading", "prefix", q.prefix, "compact_revision", wr.CompactRevision)
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
		q.qs.log.Warn("queue watch ended", "prefix", q.prefix, "err", wr.Err())
	} else {
		q.qs.log.Debug("queue watch closed", "prefix", q.prefix)
	}
}

// snapshot loads every key under the prefix and wakes all waiters to judge
// their place again.
func (q *Queue) snapshot() error {
	ctx, cancel := context.WithTimeout(q.ctx, q.qs.timeout)
	defer cancel()
	resp, err := q.qs.client.Get(ctx, q.prefix, clientv3.WithPrefix())
	if err != nil {
		return err
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.stopped {
		return ErrQueueStopped
	}
	q.keys = make(map[string]*mvccpb.KeyValue, len(resp.Kvs))
	q.order = append([]*mvccpb.KeyValue(nil), resp.Kvs...)
	for _, kv := range resp.Kvs {
		q.keys[string(kv.Key)] = kv
	}
	sort.Slice(q.order, func(i, j int) bool { return less(q.order[i], q.order[j].CreateRevision, q.order[j].Key) })
	q.rev = resp.Header.Revision
	q.noteHeader(resp.Header)
	if !q.loaded {
		q.loaded = true
		select {
		case <-q.ready:
		default:
			close(q.ready)
		}
	}
	for k := range q.waits {
		q.wakeLocked(k)
	}
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
	// A key leaving from among the first n moves exactly one key into them:
	// the one now at n-1. Waking just that waiter spares WaitRank from
	// watching all n keys ahead of it.
	for n := range q.ranks {
		if i < n && n-1 < len(q.order) {
			q.wakeLocked(string(q.order[n-1].Key))
		}
	}
}

func (q *Queue) wakeLocked(key string) {
	for _, ch := range q.waits[key] {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
	delete(q.waits, key)
}

func (q *Queue) unwaitLocked(key string, ch chan struct{}) {
	chans := q.waits[key]
	for i, c := range chans {
		if c == ch {
			chans[i] = chans[len(chans)-1]
			chans = chans[:len(chans)-1]
			break
		}
	}
	if len(chans) == 0 {
		delete(q.waits, key)
	} else {
		q.waits[key] = chans
	}
}

func (q *Queue) waitReady(ctx context.Context, stop <-chan struct{}) error {
	select {
	case <-q.ready:
	case <-ctx.Done():
		return ctx.Err()
	case <-stop:
		return errStopping
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.stopped {
		return ErrQueueStopped
	}
	return nil
}

// WaitTurn blocks until, as the shared watch sees it, no key under the prefix
// has a create revision below rev: the condition concurrency's waitDeletes
// waits for. It returns errKeyGone as soon as key no longer exists with create
// revision rev, instead of waiting for the keys before it as concurrency does.
//
// The view is exact as of the queue's revision and keys are never created
// with an old revision, so once the view reaches rev the answer stays true;
// the caller still confirms key with a linearizable read.
//
// When stop is closed first it returns errStopping. (A context derived from
// ctx for that would cost each waiting call some 700 bytes of heap for as
// long as it waits.)
func (q *Queue) WaitTurn(ctx context.Context, stop <-chan struct{}, key string, rev int64) error {
	return q.waitFor(ctx, stop, func(watch []string) ([]string, bool, error) {
		if q.rev < rev {
			// The view has not yet seen the key's own creation.
			return append(watch, key), false, nil
		}
		kv := q.keys[key]
		if kv == nil || kv.CreateRevision != rev {
			return nil, true, errKeyGone
		}
		i := q.index(rev, nil)
		if i == 0 {
			return nil, true, nil
		}
		return append(watch, key, string(q.order[i-1].Key)), false, nil
	})
}

// WaitGone blocks until, as the shared watch sees it, key no longer exists
// with create revision rev, or ctx ends, or the queue stops.
func (q *Queue) WaitGone(ctx context.Context, key string, rev int64) error {
	return q.waitFor(ctx, nil, func(watch []string) ([]string, bool, error) {
		if q.rev >= rev {
			if kv := q.keys[key]; kv == nil || kv.CreateRevision != rev {
				return nil, true, nil
			}
		}
		return append(watch, key), false, nil
	})
}

// WaitRank blocks until, as the shared watch sees it, fewer than n keys under
// the prefix have a create revision below rev: key is among the first n, the
// holders of a semaphore of limit n. Like WaitTurn, it returns errKeyGone as
// soon as key no longer exists with create revision rev; the caller confirms
// the grant with a linearizable read.
//
// It watches only key: whenever a key leaves from among the first n, the
// queue wakes the waiter of the key that moved up to place n-1 (see
// removeLocked), so a hand-off wakes one waiter, whatever n is.
func (q *Queue) WaitRank(ctx context.Context, key string, rev int64, n int) error {
	q.mu.Lock()
	q.ranks[n]++
	q.mu.Unlock()
	defer func() {
		q.mu.Lock()
		if q.ranks[n]--; q.ranks[n] == 0 {
			delete(q.ranks, n)
		}
		q.mu.Unlock()
	}()
	return q.waitFor(ctx, nil, func(watch []string) ([]string, bool, error) {
		if q.rev < rev {
			return append(watch, key), false, nil
		}
		kv := q.keys[key]
		if kv == nil || kv.CreateRevision != rev {
			return nil, true, errKeyGone
		}
		if q.index(rev, nil) < n {
			return nil, true, nil
		}
		return append(watch, key), false, nil
	})
}

// WaitNoneBefore blocks until, as the shared watch sees it, no key for which
// blocks is true has a create revision below rev: the condition of
// recipes.RWMutex's waitOnLastRev loop (a reader waits for the earlier
// writers). Like the recipe it watches the last such key only: the ones
// before it cannot all be gone while it stays. It returns errKeyGone as soon
// as key no longer exists with create revision rev.
func (q *Queue) WaitNoneBefore(ctx context.Context, key string, rev int64, blocks func(key []byte) bool) error {
	return q.waitFor(ctx, nil, func(watch []string) ([]string, bool, error) {
		if q.rev < rev {
			return append(watch, key), false, nil
		}
		kv := q.keys[key]
		if kv == nil || kv.CreateRevision != rev {
			return nil, true, errKeyGone
		}
		for i := q.index(rev, nil) - 1; i >= 0; i-- {
			if blocks(q.order[i].Key) {
				return append(watch, key, string(q.order[i].Key)), false, nil
			}
		}
		return nil, true, nil
	})
}

// waitFor is the loop of WaitTurn, WaitGone, WaitRank and WaitNoneBefore,
// once the queue's view is ready: check runs under q.mu and either ends the
// wait (done, with err) or names the keys (appended to watch) whose changes
// could change its answer; the wait then sleeps until one of them changes,
// ctx ends, stop is closed (errStopping) or the queue stops, and checks
// again.
func (q *Queue) waitFor(ctx context.Context, stop <-chan struct{}, check func(watch []string) (keys []string, done bool, err error)) error {
	if err := q.waitReady(ctx, stop); err != nil {
		return err
	}
	wake := make(chan struct{}, 1)
	var buf [2]string
	for {
		q.mu.Lock()
		if q.stopped {
			q.mu.Unlock()
			return ErrQueueStopped
		}
		watching, done, err := check(buf[:0])
		if done {
			q.mu.Unlock()
			return err
		}
		for _, k := range watching {
			q.waits[k] = append(q.waits[k], wake)
		}
		q.mu.Unlock()

		select {
		case <-wake:
		case <-ctx.Done():
			err = ctx.Err()
		case <-stop:
			err = errStopping
		}
		q.mu.Lock()
		for _, k := range watching {
			q.unwaitLocked(k, wake)
		}
		q.mu.Unlock()
		if err != nil {
			return err
		}
	}
}

// LeaderChange is the leader of the prefix (the key with the lowest create
// revision) after revision Rev. Kv is nil when the prefix became empty.
type LeaderChange struct {
	Rev    int64
	Header *pb.ResponseHeader
	Kv     *mvccpb.KeyValue
}

// Observer receives every leader change of a queue in revision order.
type Observer struct {
	C   chan LeaderChange // closed when the observer ends; see Err
	err error             // guarded by the queue's mu
	q   *Queue
}

// Err tells why C was closed: ErrObserverTooSlow or ErrQueueStopped.
func (o *Observer) Err() error {
	o.q.mu.Lock()
	defer o.q.mu.Unlock()
	return o.err
}

// Observe registers an observer whose channel holds up to buffer changes; an
// observer that falls further behind is ended with ErrObserverTooSlow rather
// than slowing the others or dropping a change silently.
func (q *Queue) Observe(ctx context.Context, buffer int) (*Observer, error) {
	if err := q.waitReady(ctx, nil); err != nil {
		return nil, err
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.stopped {
		return nil, ErrQueueStopped
	}
	o := &Observer{C: make(chan LeaderChange, buffer), q: q}
	q.observers[o] = struct{}{}
	return o, nil
}

// StopObserving unregisters o.
func (q *Queue) StopObserving(o *Observer) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if _, ok := q.observers[o]; ok {
		delete(q.observers, o)
		close(o.C)
	}
}

func (q *Queue) notifyLocked() {
	var leader *mvccpb.KeyValue
	if len(q.order) > 0 {
		leader = q.order[0]
	}
	if sameKV(leader, q.leader) {
		return
	}
	q.leader = leader
	if len(q.observers) == 0 {
		return
	}
	hdr := &pb.ResponseHeader{ClusterId: q.cluster, MemberId: q.member, Revision: q.rev, RaftTerm: q.term}
	ch := LeaderChange{Rev: q.rev, Header: hdr, Kv: leader}
	for o := range q.observers {
		select {
		case o.C <- ch:
		default:
			o.err = ErrObserverTooSlow
			delete(q.observers, o)
			close(o.C)
		}
	}
}

func sameKV(a, b *mvccpb.KeyValue) bool {
	if a == nil || b == nil {
		return a == b
	}
	return string(a.Key) == string(b.Key) && a.CreateRevision == b.CreateRevision && a.ModRevision == b.ModRevision
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
	select {
	case <-q.ready:
	default:
		close(q.ready)
	}
	for k := range q.waits {
		q.wakeLocked(k)
	}
	for o := range q.observers {
		o.err = ErrQueueStopped
		delete(q.observers, o)
		close(o.C)
	}
}

type backoff struct {
	min, max, cur time.Duration
}

func newBackoff(min, max time.Duration) *backoff { return &backoff{min: min, max: max} }

func (b *backoff) reset() { b.cur = 0 }

func (b *backoff) next() time.Duration {
	switch {
	case b.cur == 0:
		b.cur = b.min
	case b.cur < b.max:
		b.cur = min(2*b.cur, b.max)
	}
	return b.cur
}
