package etcdio

import "time"

// next starts the next round of what queued while the group's request was
// in flight; the last batch of a round to return starts the one after,
// until nothing is left and the group is idle. A round is up to maxRound
// of the waiting transactions, taken by priority and flows in turn (take),
// split into as few batches
// as the rules allow (first fit), all sent at once, each by its first
// caller: transactions that may not share a batch (one name's waiters)
// still go to etcd side by side, as they would alone.
//
// When etcd is the bottleneck the next round first gathers (gatherFor):
// the callers the round just answered come back with their next
// transactions within the proxy's own turnaround, while etcd took
// milliseconds; sent at once, the next round would carry only those that
// queued meanwhile, and rounds would alternate between two halves of the
// callers, each paying etcd's fixed cost per request.
func (b *batcher) next(key batchGroup, q *queued) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if pause := b.gatherFor(q); pause > 0 {
		g := &gathering{}
		g.timer = time.AfterFunc(pause, func() { b.gathered(key, q, g) })
		q.gather, q.gatherFrom = g, len(q.pending)
		return
	}
	b.startLocked(key, q)
}

func (b *batcher) startLocked(key batchGroup, q *queued) {
	batches := b.take(q)
	if len(batches) == 0 {
		q.busy = false
		if len(q.pending) == 0 {
			delete(b.groups, key)
		}
		return
	}
	q.round = len(batches)
	q.sentAt, q.size = time.Now(), 0
	for _, batch := range batches {
		q.size += len(batch)
		batch[0].batch = batch
		close(batch[0].lead)
	}
}

// Gathering: only after a round of two or more transactions that took
// etcd at least gatherAfter, while the next round has room (however many
// wait already: under steady load the other half of the callers does);
// for a quarter of the round's time, at most maxGather. A pause that gathered
// nothing (callers that do not come back at once) turns gathering off for
// the next gatherSkip rounds. A lone transaction never waits: at low load
// nothing changes.
const (
	gatherAfter = time.Millisecond
	maxGather   = 5 * time.Millisecond
	gatherSkip  = 8
)

func (b *batcher) gatherFor(q *queued) time.Duration {
	if q.size < 2 || len(q.pending) >= maxRound {
		return 0
	}
	took := time.Since(q.sentAt)
	if took < b.gatherAfter {
		return 0
	}
	if q.gatherSkip > 0 {
		q.gatherSkip--
		return 0
	}
	return b.pause(took)
}

func gatherPause(took time.Duration) time.Duration { return min(took/4, maxGather) }

// gathering is a pause before a round.
type gathering struct{ timer *time.Timer }

// gathered ends the pause g and starts the round (unless the pause was
// called off meanwhile: HoldBatches in tests).
func (b *batcher) gathered(key batchGroup, q *queued, g *gathering) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if q.gather != g {
		return
	}
	q.gather = nil
	if len(q.pending) <= q.gatherFrom {
		q.gatherSkip = gatherSkip
	}
	b.gathers.Inc()
	b.startLocked(key, q)
}
