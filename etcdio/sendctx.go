package etcdio

import (
	"context"
	"time"
)

type sendBoundKey struct{}

type sendBound struct {
	queue   context.Context
	timeout time.Duration
}

// SendTimeout derives from ctx (values kept, cancellation dropped) a context
// for an etcd request whose deadline d runs from the moment the request is
// sent, not from now: the proxy's request limiter (--max-etcd-requests) lets
// it wait for a slot for as long as queue lasts, then gives etcd the whole of
// d. Time spent queued in the proxy would otherwise be taken from etcd's, and
// a request that reaches etcd with little time left ends inside etcd as
// "etcdserver: request timed out", its outcome unknown. However late it is
// sent, its deadline is never more than d after queue's, so a call still ends
// within d of its caller's deadline. Without a limiter, the deadline runs
// from now.
func SendTimeout(queue, ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	ctx = context.WithValue(context.WithoutCancel(ctx), sendBoundKey{}, sendBound{queue: queue, timeout: d})
	return context.WithTimeout(ctx, d)
}

// SendBound reports what SendTimeout put into ctx: how long the request may
// wait for a slot, and its deadline once sent.
func SendBound(ctx context.Context) (queue context.Context, timeout time.Duration, ok bool) {
	b, ok := ctx.Value(sendBoundKey{}).(sendBound)
	return b.queue, b.timeout, ok
}
