package etcdio

import (
	"context"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

// limiter bounds the unary requests the proxy has in flight to etcd.
// Thousands of clients calling Lock at once would otherwise become thousands
// of concurrent transactions, and etcd answers "etcdserver: too many
// requests" once its apply backlog grows past 5000 entries; queued here, each
// call waits on its own deadline and etcd sees a steady stream. A request
// whose context comes from SendTimeout waits as long as its queue
// context allows and gets its timeout from the moment it is sent. Slots
// are shared fairly (flow.go): by priority, then round robin over the
// flows' buckets.
type limiter struct {
	mu     sync.Mutex
	free   int
	levels [numPriorities]level
	queued int // waiters in every level

	inFlight prometheus.Gauge
	// By priority: waiters, buckets with waiters, time waited for a slot.
	depth, flows [numPriorities]prometheus.Gauge
	waited       [numPriorities]prometheus.Observer
}

// flowBuckets is how many queues each priority has; flows hash into them.
const flowBuckets = 64

// level is one priority's queues: a FIFO per bucket, and the buckets that
// have waiters in the order they take turns.
type level struct {
	buckets [flowBuckets][]*slotWaiter
	turns   []int // buckets with waiters, next to be served first
}

type slotWaiter struct {
	ready   chan struct{} // closed when the slot is handed over
	granted bool          // under limiter.mu
}

func newLimiter(n int, reg prometheus.Registerer) *limiter {
	l := &limiter{
		free: n,
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "coordproxy", Name: "etcd_requests_in_flight",
			Help: "Unary etcd requests the proxy has in flight (bounded by --max-etcd-requests).",
		}),
	}
	depth := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "coordproxy", Name: "etcd_requests_queued",
		Help: "Unary etcd requests waiting for a slot under --max-etcd-requests, by priority (release, keep, acquire, pass).",
	}, []string{"priority"})
	flows := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "coordproxy", Name: "etcd_request_flows_queued",
		Help: "Flow buckets (of 64 per priority; a flow is a caller's identity or connection) with requests waiting for a slot, by priority.",
	}, []string{"priority"})
	waited := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "coordproxy", Name: "etcd_request_queue_seconds",
		Help:    "Time unary etcd requests waited for a slot under --max-etcd-requests (0 for none), by priority.",
		Buckets: []float64{.0001, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
	}, []string{"priority"})
	for p := range numPriorities {
		name := Priority(p).String()
		l.depth[p] = depth.WithLabelValues(name)
		l.flows[p] = flows.WithLabelValues(name)
		l.waited[p] = waited.WithLabelValues(name)
	}
	reg.MustRegister(l.inFlight, depth, flows, waited)
	return l
}

// tryAcquire takes a free slot if nobody waits for one.
func (l *limiter) tryAcquire() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.free > 0 && l.queued == 0 {
		l.free--
		return true
	}
	return false
}

// waiting is how many requests wait for a slot.
func (l *limiter) waiting() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.queued
}

// acquire takes a slot for a request of flow f, waiting on ctx for its
// turn.
func (l *limiter) acquire(ctx context.Context, f flowOf) error {
	l.mu.Lock()
	if l.free > 0 && l.queued == 0 {
		l.free--
		l.mu.Unlock()
		return nil
	}
	w := &slotWaiter{ready: make(chan struct{})}
	lv := &l.levels[f.prio]
	b := bucketOf(f.flow, flowBuckets)
	if len(lv.buckets[b]) == 0 {
		lv.turns = append(lv.turns, b)
		l.flows[f.prio].Inc()
	}
	lv.buckets[b] = append(lv.buckets[b], w)
	l.queued++
	l.depth[f.prio].Inc()
	l.mu.Unlock()
	select {
	case <-w.ready:
		return nil
	case <-ctx.Done():
	}
	l.mu.Lock()
	if w.granted { // handed over as ctx ended: pass it on
		l.mu.Unlock()
		l.release()
		return ctx.Err()
	}
	l.remove(f, b, w)
	l.mu.Unlock()
	return ctx.Err()
}

// remove takes w, which gave up, out of its bucket. Under l.mu.
func (l *limiter) remove(f flowOf, b int, w *slotWaiter) {
	lv := &l.levels[f.prio]
	q := lv.buckets[b]
	for i, x := range q {
		if x == w {
			lv.buckets[b] = append(q[:i:i], q[i+1:]...)
			break
		}
	}
	l.queued--
	l.depth[f.prio].Dec()
	if len(lv.buckets[b]) == 0 {
		for i, t := range lv.turns {
			if t == b {
				lv.turns = append(lv.turns[:i:i], lv.turns[i+1:]...)
				break
			}
		}
		l.flows[f.prio].Dec()
	}
}

// release gives the slot to the next waiter: the highest priority with
// waiters, its next bucket in turn, that bucket's oldest; else frees it.
func (l *limiter) release() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for p := range l.levels {
		lv := &l.levels[p]
		if len(lv.turns) == 0 {
			continue
		}
		b := lv.turns[0]
		w := lv.buckets[b][0]
		lv.buckets[b][0] = nil
		lv.buckets[b] = lv.buckets[b][1:]
		lv.turns = lv.turns[1:]
		if len(lv.buckets[b]) > 0 {
			lv.turns = append(lv.turns, b) // its next request: at the back of the turns
		} else {
			lv.buckets[b] = nil
			l.flows[p].Dec()
		}
		l.queued--
		l.depth[p].Dec()
		w.granted = true
		close(w.ready)
		return
	}
	l.free++
}

// unary sends a request once it has a slot. The time it waits for one is a
// child span of a traced call's, coordproxy.etcd.slot.
func (l *limiter) unary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	queue, timeout, sendBound := SendBound(ctx)
	if !sendBound {
		queue = ctx
	}
	f := flowFrom(ctx)
	if l.tryAcquire() {
		l.waited[f.prio].Observe(0)
	} else {
		start := time.Now()
		_, span := startSpan(ctx, "coordproxy.etcd.slot", trace.WithAttributes(attribute.String("rpc.method", method)))
		err := l.acquire(queue, f)
		span.End()
		l.waited[f.prio].Observe(time.Since(start).Seconds())
		if err != nil {
			// As gRPC words a call whose context ended before it was sent.
			return status.FromContextError(err).Err()
		}
	}
	l.inFlight.Inc()
	defer func() {
		l.inFlight.Dec()
		l.release()
	}()
	if sendBound {
		// etcd gets the whole timeout, counted from now, but never past the
		// timeout after the queue's deadline: the etcd client may send a
		// request again, and each attempt comes through here.
		if qd, ok := queue.Deadline(); ok {
			timeout = min(timeout, time.Until(qd)+timeout)
		}
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), timeout)
		defer cancel()
	}
	return invoker(ctx, method, req, reply, cc, opts...)
}
