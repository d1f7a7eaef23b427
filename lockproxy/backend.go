package lockproxy

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"google.golang.org/grpc/metadata"
)

// Lease0TTL is the TTL of the lease granted for a call that names lease 0.
// concurrency.NewSession grants its default session TTL (60 s, unexported)
// and etcd's native services then orphan the session, so nobody refreshes it.
const Lease0TTL = 60

// Options tune a Backend. Zero values take the defaults.
type Options struct {
	// RequestTimeout bounds every etcd call the proxy makes on its own
	// (cleanups, queue snapshots, the acquire transaction).
	RequestTimeout time.Duration
	// QueueLinger keeps a prefix's watch this long after its last waiter.
	QueueLinger time.Duration
	// ObserveBuffer is how many leader changes one Observe stream may lag
	// behind before it is ended.
	ObserveBuffer int
	Logger        *slog.Logger
	Metrics       *Metrics
	// Callers, if set, is a client without the proxy's etcd credentials,
	// for requests that carry a caller's own etcd token (see For).
	Callers *clientv3.Client
	// Workers is how many goroutines send the etcd requests that calls make
	// before they wait (see workers; 0: 128). More calls than that wait for
	// one, on the same terms as for a slot to etcd, so it should be no less
	// than the proxy's bound on requests in flight to etcd.
	Workers int
}

// Backend is what the Lock and Election services share: the etcd client, the
// per-prefix queues, the cleanup of abandoned keys and the lease-0 policy.
type Backend struct {
	Client *clientv3.Client
	// Callers, if not nil, serves requests that carry a caller's token.
	Callers *clientv3.Client
	Queues  *Queues
	// Leader tells streams that require a leader when etcd loses it.
	Leader *leaderWatch

	timeout       time.Duration
	observeBuffer int
	log           *slog.Logger
	metrics       *Metrics
	cleaner       *cleaner
	workers       *workers

	stopCtx context.Context
	stop    context.CancelFunc

	holds sync.WaitGroup // the goroutines of Hold

	mu         sync.Mutex
	lease0Seen map[string]struct{}
	held       map[heldKey]struct{}
}

type heldKey struct {
	key string
	rev int64
}

var errStopping = errors.New("lockproxy: stopping")

// maxLease0Names bounds the memory spent on logging lease-0 calls once per name.
const maxLease0Names = 4096

// NewBackend returns a Backend over client.
func NewBackend(client *clientv3.Client, opts Options) *Backend {
	if opts.RequestTimeout <= 0 {
		opts.RequestTimeout = 5 * time.Second
	}
	if opts.QueueLinger <= 0 {
		opts.QueueLinger = 30 * time.Second
	}
	if opts.ObserveBuffer <= 0 {
		opts.ObserveBuffer = 1024
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Metrics == nil {
		opts.Metrics = NewMetrics(nil)
	}
	if opts.Workers <= 0 {
		opts.Workers = 128
	}
	stopCtx, stop := context.WithCancel(context.Background())
	return &Backend{
		Client:        client,
		Callers:       opts.Callers,
		Queues:        NewQueues(client, opts.Logger, opts.RequestTimeout, opts.QueueLinger),
		timeout:       opts.RequestTimeout,
		observeBuffer: opts.ObserveBuffer,
		log:           opts.Logger,
		metrics:       opts.Metrics,
		cleaner:       newCleaner(client, opts.RequestTimeout, opts.Logger, opts.Metrics),
		workers:       newWorkers(opts.Workers),
		Leader:        newLeaderWatch(stopCtx, client.Watcher),
		stopCtx:       stopCtx,
		stop:          stop,
		lease0Seen:    map[string]struct{}{},
		held:          map[heldKey]struct{}{},
	}
}

// For is the client for an etcd request made on a caller's behalf. One that
// carries the caller's own etcd token (forwarded by the proxy as outgoing
// metadata) goes through Callers, so that etcd judges it as the caller's;
// with the proxy's credentials on the connection too, etcd would read the
// proxy's token first. Any other goes through Client.
func (b *Backend) For(ctx context.Context) *clientv3.Client {
	if b.Callers != nil {
		if md, ok := metadata.FromOutgoingContext(ctx); ok && len(md.Get(rpctypes.TokenFieldNameGRPC)) > 0 {
			return b.Callers
		}
	}
	return b.Client
}

// Stop cuts every wait short: waiting Lock and Campaign calls remove their
// keys and answer Unavailable; Observe streams end with Unavailable.
func (b *Backend) Stop() { b.stop() }

// Close stops waits, gives pending cleanups until ctx is done, and stops the
// watches.
func (b *Backend) Close(ctx context.Context) {
	b.stop()
	// A Hold that has not yet seen the stop has added to holds by the time
	// it lets go of mu; later ones add nothing.
	b.mu.Lock()
	b.mu.Unlock()
	b.holds.Wait()
	b.cleaner.wait(ctx)
	b.Queues.Close()
	b.workers.close()
}

// WithStop derives a context that Stop cancels too.
func (b *Backend) WithStop(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(ctx)
	unhook := context.AfterFunc(b.stopCtx, func() { cancel(errStopping) })
	return ctx, func() {
		unhook()
		cancel(nil)
	}
}

// CallErr maps an error of a call whose context came from WithStop, or of a
// queue wait given the Backend's stop (errStopping): a call cut short
// because the proxy is stopping answers Unavailable, as an etcd member that
// stops does; anything else is returned as etcd's service would.
func (b *Backend) CallErr(ctx context.Context, err error) error {
	if errors.Is(context.Cause(ctx), errStopping) || errors.Is(err, errStopping) || errors.Is(err, ErrQueueStopped) {
		return rpctypes.ErrGRPCStopped
	}
	return err
}

// Detached gives a call that must learn its outcome even if the client goes
// away (a transaction that may create a key) its own deadline of the request
// timeout. A caller with a deadline gets it counted from now, so that the call
// ends within the request timeout of the caller's deadline. A caller without
// one (a Lock that waits as long as it takes) may wait in the proxy for a slot
// to etcd for as long as it stays, and etcd then gets the whole timeout from
// the moment the request is sent (SendTimeout): otherwise, with thousands of
// such calls queued, the queue ate etcd's time and calls failed with
// "etcdserver: request timed out".
func (b *Backend) Detached(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithTimeout(context.WithoutCancel(ctx), b.timeout)
	}
	return SendTimeout(ctx, ctx, b.timeout)
}

// Acquire runs a transaction that creates a waiter key, of the shape
// If(CreateRevision(key) = 0) Then(Put key …) Else(Get key …), on a context
// from Detached(ctx). When etcd's answer leaves the outcome unknown (the
// request timed out inside etcd, or its leader changed), the same
// transaction is sent again until etcd answers or the Detached context ends
// (for a caller without a deadline: for up to the request timeout more): it
// creates the key at most once, and the answer then says whether the key
// exists and with which create revision, so the proxy can hand it to the
// caller or clean it up. Without this, a waiter key could stay behind with
// nobody knowing of it.
func (b *Backend) Acquire(ctx context.Context, txn func(context.Context) (*clientv3.TxnResponse, error)) (resp *clientv3.TxnResponse, err error) {
	actx, cancel := b.Detached(ctx)
	defer cancel()
	b.workers.do(sendQueue(actx), func() { resp, err = b.sendAcquire(ctx, actx, txn) })
	return resp, err
}

func (b *Backend) sendAcquire(ctx, actx context.Context, txn func(context.Context) (*clientv3.TxnResponse, error)) (*clientv3.TxnResponse, error) {
	resp, err := txn(actx)
	if err == nil || !outcomeUnknown(err) {
		return resp, err
	}
	rctx := actx
	if _, ok := ctx.Deadline(); !ok {
		var rcancel context.CancelFunc
		rctx, rcancel = context.WithTimeout(context.WithoutCancel(ctx), b.timeout)
		defer rcancel()
	}
	bo := newBackoff(20*time.Millisecond, 500*time.Millisecond)
	for {
		b.log.Debug("acquire transaction's outcome unknown; sending it again", "err", err)
		select {
		case <-rctx.Done():
			return nil, err
		case <-time.After(bo.next()):
		}
		resp, err = txn(rctx)
		if err == nil || !outcomeUnknown(err) || rctx.Err() != nil {
			return resp, err
		}
	}
}

// BeforeWait runs f, an etcd request that a call makes on ctx before it
// waits, on one of the Backend's workers, so that the call's goroutine keeps
// the small stack that waiting needs (see workers).
func (b *Backend) BeforeWait(ctx context.Context, f func()) { b.workers.do(sendQueue(ctx), f) }

// outcomeUnknown: etcd gave up waiting for the request, which may still be
// applied.
func outcomeUnknown(err error) bool {
	return errors.Is(err, rpctypes.ErrTimeout) || errors.Is(err, rpctypes.ErrTimeoutDueToLeaderFail) ||
		errors.Is(err, rpctypes.ErrTimeoutDueToConnectionLost) || errors.Is(err, rpctypes.ErrTimeoutWaitAppliedIndex)
}

// ObserveBuffer is the per-stream bound for Observe.
func (b *Backend) ObserveBuffer() int { return b.observeBuffer }

// Lease returns the lease a call runs under. For lease 0 it grants a fresh
// lease of Lease0TTL seconds that nobody refreshes, as etcd's services do, and
// makes that visible: a metric counts it and the log says so once per name.
func (b *Backend) Lease(ctx context.Context, rpc, name string, id int64) (clientv3.LeaseID, error) {
	if id != 0 {
		return clientv3.LeaseID(id), nil
	}
	var resp *clientv3.LeaseGrantResponse
	var err error
	b.BeforeWait(ctx, func() { resp, err = b.For(ctx).Grant(ctx, Lease0TTL) })
	if err != nil {
		return 0, err
	}
	b.NoteLease0(rpc, name, "granted a lease that expires in 60s unless the client keeps it alive", slog.Int64("lease", int64(resp.ID)))
	return resp.ID, nil
}

// NoteLease0 counts a call that named lease 0 and logs it once per name.
func (b *Backend) NoteLease0(rpc, name, what string, attrs ...any) {
	b.metrics.Lease0.WithLabelValues(rpc).Inc()
	b.mu.Lock()
	_, seen := b.lease0Seen[rpc+"\x00"+name]
	if !seen && len(b.lease0Seen) < maxLease0Names {
		b.lease0Seen[rpc+"\x00"+name] = struct{}{}
	}
	b.mu.Unlock()
	if !seen {
		b.log.Warn(rpc+" with lease 0: "+what, append([]any{"name", name}, attrs...)...)
	}
}

// Wait waits until key, created at revision rev, is the oldest key under
// name's prefix, then confirms with a linearizable read that key still exists
// with that create revision (the post-wait ownership check). It returns that
// read's header. If the wait fails for any reason other than the key being
// gone, key is removed so that no ghost waiter blocks the queue.
// service (ServiceLock or ServiceElection) labels the waiters gauge.
func (b *Backend) Wait(ctx context.Context, service, name, key string, rev int64) (*pb.ResponseHeader, error) {
	waiting := b.metrics.Waiting.WithLabelValues(service)
	waiting.Inc()
	q := b.Queues.Acquire(Prefix(name))
	err := q.WaitTurn(ctx, b.stopCtx.Done(), key, rev)
	b.Queues.Release(q)
	waiting.Dec()

	if errors.Is(err, errKeyGone) {
		return nil, concurrency.ErrSessionExpired
	}
	if err != nil {
		b.Abandon(key, rev)
		return nil, b.CallErr(ctx, err)
	}
	ctx, cancel := b.WithStop(ctx)
	defer cancel()
	resp, err := b.For(ctx).Get(ctx, key)
	if err != nil {
		b.Abandon(key, rev)
		return nil, b.CallErr(ctx, err)
	}
	if len(resp.Kvs) == 0 || resp.Kvs[0].CreateRevision != rev {
		return nil, concurrency.ErrSessionExpired
	}
	if ctx.Err() != nil {
		// The client left as we won: it will never learn it holds the key.
		b.Abandon(key, rev)
		return nil, b.CallErr(ctx, ctx.Err())
	}
	return resp.Header, nil
}

// Abandon removes key if it still has create revision rev, in the background
// on the proxy's own context: each attempt is bounded by the request timeout,
// and attempts repeat until etcd answers or the proxy closes.
func (b *Backend) Abandon(key string, rev int64) { b.cleaner.remove(key, rev) }

// Hold counts key, which this proxy has just granted with create revision
// rev, in the holders gauge of service until the name's shared watch sees the
// key deleted, whoever deletes it, or the proxy stops. It keeps the name's
// queue, and so its watch, for that long. A key counted already is not
// counted twice.
func (b *Backend) Hold(service, name, key string, rev int64) {
	prefix := Prefix(name)
	id := heldKey{key, rev}
	b.mu.Lock()
	if _, ok := b.held[id]; ok || b.stopCtx.Err() != nil {
		b.mu.Unlock()
		return
	}
	b.held[id] = struct{}{}
	b.holds.Add(1)
	b.mu.Unlock()
	holders := b.metrics.Holders.WithLabelValues(service)
	holders.Inc()
	q := b.Queues.Acquire(prefix)
	go func() {
		defer b.holds.Done()
		err := q.WaitGone(b.stopCtx, key, rev)
		b.Queues.Release(q)
		holders.Dec()
		b.mu.Lock()
		delete(b.held, id)
		b.mu.Unlock()
		if err != nil && b.stopCtx.Err() == nil {
			b.log.Debug("no longer tracking a holder", "key", key, "err", err)
		}
	}()
}
