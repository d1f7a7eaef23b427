package etcdio

import (
	"context"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/semaphore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

// limiter bounds the unary requests the proxy has in flight to etcd.
// Thousands of clients calling Lock at once would otherwise become thousands
// of concurrent transactions, and etcd answers "etcdserver: too many
// requests" once its apply backlog grows past 5000 entries; queued here, each
// call waits on its own deadline and etcd sees a steady stream. A request
// whose context comes from SendTimeout waits as long as its queue
// context allows and gets its timeout from the moment it is sent.
type limiter struct {
	sem              *semaphore.Weighted
	inFlight, queued prometheus.Gauge
}

func newLimiter(n int, reg prometheus.Registerer) *limiter {
	l := &limiter{
		sem: semaphore.NewWeighted(int64(n)),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "coordproxy", Name: "etcd_requests_in_flight",
			Help: "Unary etcd requests the proxy has in flight (bounded by --max-etcd-requests).",
		}),
		queued: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "coordproxy", Name: "etcd_requests_queued",
			Help: "Unary etcd requests waiting for a slot under --max-etcd-requests.",
		}),
	}
	reg.MustRegister(l.inFlight, l.queued)
	return l
}

// unary sends a request once it has a slot. The time it waits for one is a
// child span of a traced call's, coordproxy.etcd.slot.
func (l *limiter) unary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	queue, timeout, sendBound := SendBound(ctx)
	if !sendBound {
		queue = ctx
	}
	if !l.sem.TryAcquire(1) {
		l.queued.Inc()
		_, span := startSpan(ctx, "coordproxy.etcd.slot", trace.WithAttributes(attribute.String("rpc.method", method)))
		err := l.sem.Acquire(queue, 1)
		span.End()
		l.queued.Dec()
		if err != nil {
			// As gRPC words a call whose context ended before it was sent.
			return status.FromContextError(err).Err()
		}
	}
	l.inFlight.Inc()
	defer func() {
		l.inFlight.Dec()
		l.sem.Release(1)
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
