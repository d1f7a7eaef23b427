package grant

import (
	"context"
	"errors"
	"log/slog"

	"time"

	"github.com/coordproxy/coordproxy/etcdio"
	"github.com/coordproxy/coordproxy/keyspace"
	"github.com/coordproxy/coordproxy/queue"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// DefaultObserveBuffer is how many leader changes one Observe stream may lag
// behind before it is ended.
const DefaultObserveBuffer = 1024

// Options tune a Granter. Zero values take the defaults.
type Options struct {
	// QueueLinger keeps a prefix's watch this long after its last user
	// (0: queue.DefaultLinger).
	QueueLinger time.Duration
	// ObserveBuffer bounds how far one observer may lag (0:
	// DefaultObserveBuffer).
	ObserveBuffer int
	// HoldCheck is how often the keys counted as held are read to learn of
	// the ones released elsewhere or lost with their lease (0:
	// DefaultHoldCheck).
	HoldCheck time.Duration
	Logger    *slog.Logger
	Metrics   *Metrics
}

// Granter is what every primitive shares between the transaction that puts
// its key in a name's queue and its answer: the wait for the key's turn and
// the check after it (Take), the holders it has granted (hold.go), the
// removal of keys nobody will hold (cleanup.go) and releases (release.go).
type Granter struct {
	etcd          *etcdio.Etcd
	queues        *queue.Registry
	observeBuffer int
	log           *slog.Logger
	metrics       *Metrics
	cleaner       *cleaner
	holds         *holds
}

// New returns a Granter over etcd.
func New(etcd *etcdio.Etcd, opts Options) *Granter {
	if opts.ObserveBuffer <= 0 {
		opts.ObserveBuffer = DefaultObserveBuffer
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Metrics == nil {
		opts.Metrics = NewMetrics(nil)
	}
	g := &Granter{
		etcd:          etcd,
		queues:        queue.NewRegistry(etcd.Own(), opts.Logger, etcd.RequestTimeout(), opts.QueueLinger),
		observeBuffer: opts.ObserveBuffer,
		log:           opts.Logger,
		metrics:       opts.Metrics,
		cleaner:       newCleaner(etcd, opts.Logger, opts.Metrics),
		holds:         newHolds(etcd, opts.Metrics.Holders, opts.HoldCheck),
	}
	opts.Metrics.OldestHold.measure(g.holds.ages)
	etcd.OnLeaseRevoked(g.leaseRevoked)
	return g
}

// Close stops every wait (etcdio.Etcd.Stop), lets pending cleanups run until
// ctx is done, and stops the queues' watches.
func (g *Granter) Close(ctx context.Context) {
	g.etcd.Stop()
	g.holds.wg.Wait()
	g.cleaner.wait(ctx)
	g.queues.Close()
}

// CallErr maps the error of a call on a context from etcd's WithStop, or of
// a queue's wait: a call cut short because the proxy is stopping (its
// context, its wait, or the queue under it) answers as a stopping etcd
// member does; anything else is returned as etcd's service would.
func (g *Granter) CallErr(ctx context.Context, err error) error {
	if errors.Is(err, queue.ErrStopped) {
		return rpctypes.ErrGRPCStopped
	}
	return etcdio.StopErr(ctx, err)
}

// Following reports whether this proxy follows name's queue with a synced
// watch (waiters or observers of the name are here, or were a moment ago):
// a transaction that puts a key there need not read who holds, the queue
// will tell (see lockproxy's enqueue).
func (g *Granter) Following(name string) bool { return g.queues.Following(keyspace.Prefix(name)) }

// Observe registers an observer of name's queue (its first key, in revision
// order); stop unregisters it. The error is CallErr's.
func (g *Granter) Observe(ctx context.Context, name string) (o *queue.Observer, stop func(), err error) {
	q := g.queues.Join(keyspace.Prefix(name))
	o, err = q.Observe(ctx, g.observeBuffer)
	if err != nil {
		g.queues.Leave(q)
		return nil, nil, g.CallErr(ctx, err)
	}
	return o, func() {
		q.StopObserving(o)
		g.queues.Leave(q)
	}, nil
}
