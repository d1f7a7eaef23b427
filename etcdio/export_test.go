package etcdio

import (
	"context"
	"time"
)

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
	if q.gather != nil { // a pause gathering a round: called off
		q.gather.timer.Stop()
		q.gather = nil
	}
	q.size = 0 // so that release starts the round at once
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

// GatherLong makes every round of two or more gather for an hour before the
// next (EndGather ends the pause), however fast etcd answered.
func GatherLong(e *Etcd) {
	e.batches.mu.Lock()
	defer e.batches.mu.Unlock()
	e.batches.gatherAfter = 0
	e.batches.pause = func(time.Duration) time.Duration { return time.Hour }
}

// Gathering is whether ctx's group pauses before its next round.
func Gathering(e *Etcd, ctx context.Context) bool {
	b := e.batches
	b.mu.Lock()
	defer b.mu.Unlock()
	q := b.groups[e.groupOf(ctx)]
	return q != nil && q.gather != nil
}

// EndGather ends the pause of ctx's group now.
func EndGather(e *Etcd, ctx context.Context) {
	b := e.batches
	b.mu.Lock()
	q := b.groups[e.groupOf(ctx)]
	g := q.gather
	b.mu.Unlock()
	if g.timer.Stop() {
		b.gathered(e.groupOf(ctx), q, g)
	}
}
