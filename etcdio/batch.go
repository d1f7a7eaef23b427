package etcdio

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/status"
)

// Group commit: transactions that callers make at the same moment go to
// etcd as one Txn whose Success operations are the individual transactions
// (nested transactions, which etcd accepts since 3.3). etcd applies the
// batch as one raft entry and one backend transaction: work no client of
// etcd's own services can take off etcd.
//
// A transaction alone goes at once: only what queued while an earlier
// request of its group was in flight is batched, so a lone caller waits for
// nothing. When etcd is slow, the round after a round of several pauses
// briefly so that the callers just answered can join it (batchround.go).
// The rules, each tested:
//   - only requests made under the same credentials share a batch (the same
//     etcd client, the same forwarded token and hasleader metadata): a
//     caller's token never rides in another's request; and only requests of
//     the same Tenant (a caller's identity, flow.go), so that a tenant's
//     flood keeps its own rounds: another tenant's transaction is sent at
//     once beside them rather than after them, and answered without
//     waiting for theirs;
//   - never two transactions whose key prefixes nest (or are the same): two
//     keys created in one revision would tie a queue's order;
//   - at most maxBatch transactions and about maxBatchBytes a batch, under
//     etcd's --max-txn-ops (128) and its request size limit; transactions
//     that may not share one go side by side in batches of their own;
//   - any error of the batch (a lease not found, too large, permission
//     denied, a timeout…) sends each transaction again alone, so that every
//     caller gets exactly etcd's answer to its own request;
//   - every response carries the batch's header.
// Only transactions that are safe to send twice go here (each is guarded by
// its compares: put if absent, delete if still the same key).

// Batching is how transactions share etcd requests.
type Batching int

const (
	// BatchConcurrent (the default) batches what queued while an earlier
	// request of its group was in flight; a transaction alone goes alone.
	BatchConcurrent Batching = iota
	// BatchOff sends every transaction alone.
	BatchOff
	// BatchAlways also sends a transaction alone nested, as a batch of one,
	// so that every path meets etcd's nested-transaction semantics (the
	// package tests run so; see proxytest.StartProxy).
	BatchAlways
)

const (
	maxBatch      = 64
	maxBatchBytes = 512 << 10
)

// Txn is one transaction that may share an etcd request with others.
type Txn struct {
	If         []clientv3.Cmp
	Then, Else []clientv3.Op
	// Prefix holds every key the transaction touches (a name's prefix, or
	// the one key it deletes). Empty: it never shares a request.
	Prefix string
}

// SendTxn sends t on ctx, in a batch with others of its group that queued
// while an earlier request of the group was in flight.
func (e *Etcd) SendTxn(ctx context.Context, t Txn) (*clientv3.TxnResponse, error) {
	if t.Prefix == "" || e.batches == nil {
		return e.sendAlone(ctx, t)
	}
	return e.batches.send(ctx, t)
}

func (e *Etcd) sendAlone(ctx context.Context, t Txn) (*clientv3.TxnResponse, error) {
	return e.For(ctx).Txn(ctx).If(t.If...).Then(t.Then...).Else(t.Else...).Commit()
}

// batchGroup is what requests must have in common to share a batch.
type batchGroup struct {
	Credentials
	tenant Tenant
}

func (e *Etcd) groupOf(ctx context.Context) batchGroup {
	g := batchGroup{Credentials: e.CredentialsOf(ctx)}
	g.tenant, _ = flowFrom(ctx).flow.(Tenant)
	return g
}

type batcher struct {
	e                *Etcd
	always           bool         // BatchAlways
	nested           atomic.Int64 // requests sent as nested transactions, for tests
	batches, batched prometheus.Counter
	gathers          prometheus.Counter
	// gatherAfter and pause: the package's (tests change them)
	gatherAfter time.Duration
	pause       func(took time.Duration) time.Duration

	mu     sync.Mutex
	groups map[batchGroup]*queued
}

// queued is one group's state: whether a request of it is in flight, the
// transactions waiting for it to return, and how many batches of the round
// in flight have still to return.
type queued struct {
	busy    bool
	pending []*txnCall
	round   int
	// When the group's round in flight was sent and how many transactions
	// it carried (1: a request alone); the pause gathering the next round (nil:
	// none), how many were pending when it began, and how many pauses to
	// skip after one that gathered nothing.
	sentAt     time.Time
	size       int
	gather     *gathering
	gatherFrom int
	gatherSkip int
}

type txnCall struct {
	ctx  context.Context
	t    Txn
	size int
	// lead is closed when this call's goroutine is to send batch (which
	// holds it first): the batches of a round are sent by their first
	// callers, so that batching starts no goroutine of its own.
	lead  chan struct{}
	batch []*txnCall
	alone bool // sent again alone after its batch failed
	done  chan struct{}
	resp  *clientv3.TxnResponse
	err   error
}

func newBatcher(e *Etcd, reg prometheus.Registerer, always bool) *batcher {
	b := &batcher{
		e: e, always: always,
		batches: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "coordproxy", Name: "etcd_batches_total",
			Help: "etcd Txn requests that carried two or more of the proxy's transactions at once (group commit).",
		}),
		batched: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "coordproxy", Name: "etcd_batched_txns_total",
			Help: "Transactions the proxy sent to etcd inside a batch rather than alone.",
		}),
		gathers: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "coordproxy", Name: "etcd_batch_gathers_total",
			Help: "Pauses before a group-commit round in which callers the previous round answered could join it (etcd slower than the proxy's turnaround).",
		}),
		groups:      map[batchGroup]*queued{},
		gatherAfter: gatherAfter, pause: gatherPause,
	}
	reg.MustRegister(b.batches, b.batched, b.gathers)
	return b
}

func (b *batcher) send(ctx context.Context, t Txn) (*clientv3.TxnResponse, error) {
	key := b.e.groupOf(ctx)
	b.mu.Lock()
	q := b.groups[key]
	if q == nil {
		q = &queued{}
		b.groups[key] = q
	}
	if !q.busy {
		q.busy = true
		q.size = 1 // a request alone: no pause after it (gatherFor)
		b.mu.Unlock()
		var resp *clientv3.TxnResponse
		var err error
		if b.always {
			c := &txnCall{ctx: ctx, t: t, done: make(chan struct{})}
			b.sendBatch(q, []*txnCall{c})
			resp, err = c.resp, c.err
		} else {
			resp, err = b.e.sendAlone(ctx, t)
		}
		b.next(key, q)
		return resp, err
	}
	c := &txnCall{ctx: ctx, t: t, size: txnSize(t), lead: make(chan struct{}), done: make(chan struct{})}
	q.pending = append(q.pending, c)
	b.mu.Unlock()
	lead := func() {
		b.sendBatch(q, c.batch)
		b.mu.Lock()
		q.round--
		last := q.round == 0
		b.mu.Unlock()
		if last {
			b.next(key, q)
		}
	}
	select {
	case <-c.lead:
		lead()
	case <-c.done:
	case <-sendQueue(ctx).Done():
		// The caller's time is up while it waits for a round: as a request
		// that never got a slot to etcd. Taken into a round already, it
		// waits for that round, whose deadline is no later than its own.
		if b.drop(q, c) {
			return nil, status.FromContextError(sendQueue(ctx).Err()).Err()
		}
		select {
		case <-c.lead:
			lead()
		case <-c.done:
		}
	}
	return c.resp, c.err
}

// drop takes c out of q's pending transactions; false if a round has it.
func (b *batcher) drop(q *queued, c *txnCall) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	for i, p := range q.pending {
		if p == c {
			q.pending = append(q.pending[:i:i], q.pending[i+1:]...)
			return true
		}
	}
	return false
}

// maxRound bounds the transactions one round sends (the limiter bounds how
// many requests of it are in flight at once).
const maxRound = 256

// take splits the next round of q's pending transactions into batches.
// The round takes them as the slots to etcd are shared (flow.go): by
// priority, then one of each flow in turn, each flow's in its own order;
// what does not fit stays pending in its order. Callers gone meanwhile are
// answered and dropped.
func (b *batcher) take(q *queued) [][]*txnCall {
	var batches [][]*txnCall
	var sizes []int
	round, rest := fairRound(q.pending, maxRound)
	for _, c := range round {
		if err := sendQueue(c.ctx).Err(); err != nil {
			c.err = status.FromContextError(err).Err()
			close(c.done)
			continue
		}
		placed := false
		for i, batch := range batches {
			if len(batch) < maxBatch && sizes[i]+c.size <= maxBatchBytes && !nestsWithAny(c.t.Prefix, batch) {
				batches[i], sizes[i], placed = append(batch, c), sizes[i]+c.size, true
				break
			}
		}
		if !placed {
			batches, sizes = append(batches, []*txnCall{c}), append(sizes, c.size)
		}
	}
	q.pending = rest
	return batches
}

// fairRound picks up to n of pending: the highest priority first, and
// within a priority one of each flow in turn, in the order the flows first
// queued; rest is the others, in their order.
func fairRound(pending []*txnCall, n int) (round, rest []*txnCall) {
	if len(pending) <= n {
		return pending, nil
	}
	var byPrio [numPriorities]struct {
		flows  []any
		queued map[any][]*txnCall
	}
	for _, c := range pending {
		f := flowFrom(c.ctx)
		p := &byPrio[f.prio]
		if p.queued == nil {
			p.queued = map[any][]*txnCall{}
		}
		if _, ok := p.queued[f.flow]; !ok {
			p.flows = append(p.flows, f.flow)
		}
		p.queued[f.flow] = append(p.queued[f.flow], c)
	}
	taken := make(map[*txnCall]bool, n)
	for i := range byPrio {
		p := &byPrio[i]
		for len(round) < n && len(p.flows) > 0 {
			turn := p.flows[:0]
			for _, f := range p.flows {
				if len(round) == n {
					turn = append(turn, f)
					continue
				}
				q := p.queued[f]
				round = append(round, q[0])
				taken[q[0]] = true
				if p.queued[f] = q[1:]; len(q) > 1 {
					turn = append(turn, f)
				}
			}
			p.flows = turn
		}
	}
	for _, c := range pending {
		if !taken[c] {
			rest = append(rest, c)
		}
	}
	return round, rest
}

func nestsWithAny(prefix string, batch []*txnCall) bool {
	for _, c := range batch {
		if strings.HasPrefix(prefix, c.t.Prefix) || strings.HasPrefix(c.t.Prefix, prefix) {
			return true
		}
	}
	return false
}

// sendBatch sends batch as one etcd Txn; it runs on the goroutine of the
// batch's first caller. If the batch fails, each caller sends its own
// transaction alone, from its own goroutine, so that none waits for
// another's. A batch of one goes alone (but for BatchAlways).
func (b *batcher) sendBatch(q *queued, batch []*txnCall) {
	if len(batch) > 1 || b.always && !batch[0].alone {
		if b.sendNested(batch) {
			return
		}
		b.mu.Lock()
		q.round += len(batch) - 1
		b.mu.Unlock()
		for _, c := range batch {
			c.alone = true
		}
		for _, c := range batch[1:] {
			c.batch = []*txnCall{c}
			close(c.lead)
		}
	}
	c := batch[0]
	c.resp, c.err = b.e.sendAlone(c.ctx, c.t)
	close(c.done)
}

// sendNested sends batch as one Txn of nested transactions and answers its
// callers; false if etcd refused or failed it.
func (b *batcher) sendNested(batch []*txnCall) bool {
	ops := make([]clientv3.Op, len(batch))
	for i, c := range batch {
		ops[i] = clientv3.OpTxn(c.t.If, c.t.Then, c.t.Else)
	}
	ctx, cancel := b.batchContext(batch)
	resp, err := b.e.For(ctx).Txn(ctx).Then(ops...).Commit()
	cancel()
	b.nested.Add(1)
	if err != nil {
		return false
	}
	if len(batch) > 1 {
		b.batches.Inc()
		b.batched.Add(float64(len(batch)))
	}
	for i, c := range batch {
		sub := resp.Responses[i].GetResponseTxn()
		c.resp = &clientv3.TxnResponse{Header: resp.Header, Succeeded: sub.Succeeded, Responses: sub.Responses}
		close(c.done)
	}
	return true
}

// batchContext is the context a batch is sent on. It outlives any one
// caller (detached), carries the first caller's values (its group's
// credentials and metadata), and ends no later than any member may: at the
// earliest deadline of the members whose deadline counts from their call
// (a caller with a deadline ends within the request timeout of it); a batch
// of only requests whose deadline runs from the send (SendTimeout) keeps
// that: the limiter gives it the request timeout once it is sent.
func (b *batcher) batchContext(batch []*txnCall) (context.Context, context.CancelFunc) {
	ctx := context.WithoutCancel(batch[0].ctx)
	// The batch waits for a slot at the highest priority of its members.
	prio := flowFrom(ctx).prio
	for _, c := range batch[1:] {
		prio = min(prio, flowFrom(c.ctx).prio)
	}
	ctx = WithPriority(ctx, prio)
	var earliest time.Time
	for _, c := range batch {
		if _, _, bound := SendBound(c.ctx); bound {
			continue
		}
		if d, ok := c.ctx.Deadline(); ok && (earliest.IsZero() || d.Before(earliest)) {
			earliest = d
		}
	}
	if earliest.IsZero() {
		return context.WithTimeout(ctx, b.e.timeout)
	}
	// Not sent as SendTimeout's: the limiter must keep this deadline.
	ctx = context.WithValue(ctx, sendBoundKey{}, noSendBound{})
	return context.WithDeadline(ctx, earliest)
}

// noSendBound hides the first caller's SendTimeout from the limiter.
type noSendBound struct{}

// txnSize is about how many bytes t adds to a request.
func txnSize(t Txn) int {
	n := 0
	for _, c := range t.If {
		pc := c.GetCompare()
		n += len(pc.Key) + len(pc.RangeEnd) + len(c.ValueBytes()) + 32
	}
	for _, ops := range [][]clientv3.Op{t.Then, t.Else} {
		for _, op := range ops {
			n += len(op.KeyBytes()) + len(op.RangeBytes()) + len(op.ValueBytes()) + 32
		}
	}
	return n
}
