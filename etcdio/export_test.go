package etcdio

import "context"

// HoldBatches makes the group of ctx busy, as if a request of it were in
// flight, until release is called: transactions of the group sent
// meanwhile queue, and go as batches once it is.
func HoldBatches(e *Etcd, ctx context.Context) (release func()) {
	key := e.groupOf(ctx)
	b := e.batches
	b.mu.Lock()
	q := b.groups[key]
	if q == nil {
		q = &queued{}
		b.groups[key] = q
	}
	q.busy = true
	b.mu.Unlock()
	return func() { b.next(key, q) }
}

// Pending is how many transactions of ctx's group wait for a batch.
func Pending(e *Etcd, ctx context.Context) int {
	b := e.batches
	b.mu.Lock()
	defer b.mu.Unlock()
	if q := b.groups[e.groupOf(ctx)]; q != nil {
		return len(q.pending)
	}
	return 0
}

// Nested is how many etcd requests carried nested transactions.
func Nested(e *Etcd) int64 { return e.batches.nested.Load() }
