package queue

import (
	"context"
	"log/slog"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// DefaultLinger is how long a queue nobody uses keeps its watch.
const DefaultLinger = 30 * time.Second

// Registry shares one queue, and so one etcd watch, per key prefix among all
// the waiters and observers of a proxy.
type Registry struct {
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

// NewRegistry returns an empty registry over client (the proxy's own
// credentials: the watches are the proxy's, not a caller's). timeout bounds
// each etcd read a queue makes on its own; an unused queue keeps its watch
// for linger (0: DefaultLinger) so that alternating waiters do not pay for a
// new watch each time.
func NewRegistry(client *clientv3.Client, log *slog.Logger, timeout, linger time.Duration) *Registry {
	if linger <= 0 {
		linger = DefaultLinger
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Registry{
		client:  client,
		log:     log,
		timeout: timeout,
		linger:  linger,
		ctx:     ctx,
		cancel:  cancel,
		queues:  map[string]*Queue{},
	}
}

// Join returns the queue of prefix, starting its watch if there is none, and
// counts the caller among its users. Every Join must be paired with a Leave.
func (r *Registry) Join(prefix string) *Queue {
	r.mu.Lock()
	defer r.mu.Unlock()
	q := r.queues[prefix]
	if q == nil {
		q = newQueue(r, prefix)
		r.queues[prefix] = q
		if r.ctx.Err() != nil {
			q.stop()
		} else {
			r.wg.Add(1)
			go q.run()
		}
	}
	q.users++
	if q.lingering != nil {
		q.lingering.Stop()
		q.lingering = nil
	}
	return q
}

// Leave gives back a queue from Join. The last user leaves the watch
// running for the linger time.
func (r *Registry) Leave(q *Queue) {
	r.mu.Lock()
	defer r.mu.Unlock()
	q.users--
	if q.users > 0 {
		return
	}
	q.lingering = time.AfterFunc(r.linger, func() {
		r.mu.Lock()
		if q.users > 0 || r.queues[q.prefix] != q {
			r.mu.Unlock()
			return
		}
		delete(r.queues, q.prefix)
		r.mu.Unlock()
		q.stop()
	})
}

// Following reports whether the queue of prefix runs and has loaded its
// view: it then follows every change under the prefix from a synced watch,
// and a key put now will be seen in its place.
func (r *Registry) Following(prefix string) bool {
	r.mu.Lock()
	q := r.queues[prefix]
	r.mu.Unlock()
	if q == nil {
		return false
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.loaded && !q.stopped
}

// Close stops every watch. Waiters and observers still there get
// ErrStopped.
func (r *Registry) Close() {
	r.cancel()
	r.mu.Lock()
	for _, q := range r.queues {
		q.stop()
	}
	r.mu.Unlock()
	r.wg.Wait()
}
