package etcdio

import (
	"context"
	"hash/maphash"
)

// Fair sharing of the requests in flight to etcd (--max-etcd-requests):
// each request belongs to a flow (the caller's identity, or its
// connection: proxy/edge.go names it) and has a priority. A request that
// finds every slot taken waits in its priority's queue for its flow's
// bucket; a freed slot goes to the highest priority that has waiters and,
// within it, to the next bucket in turn (round robin), so that a flow with
// one request waiting is served within one turn of the buckets however much
// another flow has queued. Flows are hashed into a fixed number of buckets
// per priority, so memory stays bounded however many flows there are (two
// flows that share a bucket share its turn).

// Priority orders the requests waiting for a slot to etcd: a lower value
// goes first.
type Priority int8

const (
	// PriorityRelease is for releases (Unlock, Release, Resign, LeaseRevoke) and
	// the removal of keys whose callers left. A release never waits behind
	// acquisitions, which is also what keeps locks moving under overload.
	PriorityRelease Priority = iota
	// PriorityKeep is for what keeps a holder holding and a waiter's turn
	// honest: sessions, post-wait checks, and the proxy's own work (reads
	// of its queues and holds).
	PriorityKeep
	// PriorityAcquire is for new acquisitions (Lock, TryLock, Campaign,
	// Proclaim, Acquire, RLock, WLock) and reads of who holds (Leader,
	// Observe, Describe).
	PriorityAcquire
	// PriorityPass is for KV, Lease and everything else passed through, and a
	// request that names no priority.
	PriorityPass

	numPriorities = int(PriorityPass) + 1
)

// String is the priority's name, as its metrics' label.
func (p Priority) String() string {
	switch p {
	case PriorityRelease:
		return "release"
	case PriorityKeep:
		return "keep"
	case PriorityAcquire:
		return "acquire"
	}
	return "pass"
}

// Tenant is a flow that is a caller's identity. A tenant's transactions
// share group-commit batches only with the same tenant's (batch.go), so
// that one tenant's round in flight never holds another's transaction and
// its answer, and one tenant's failing transaction never sends another's
// again alone. Flows that are not tenants (connections of callers without
// an identity) share batches.
type Tenant string

type flowKey struct{}

type flowOf struct {
	flow any // comparable: an identity, a connection's address
	prio Priority
}

// WithFlow is ctx whose etcd requests belong to flow at priority p. flow
// is any comparable value that tells flows apart (an identity's name, a
// connection's net.Addr); it is hashed only when a request has to wait.
func WithFlow(ctx context.Context, flow any, p Priority) context.Context {
	return context.WithValue(ctx, flowKey{}, flowOf{flow: flow, prio: p})
}

// WithPriority is ctx whose etcd requests go at priority p, in the flow
// ctx's already are.
func WithPriority(ctx context.Context, p Priority) context.Context {
	f := flowFrom(ctx)
	if f.prio == p {
		return ctx
	}
	f.prio = p
	return context.WithValue(ctx, flowKey{}, f)
}

// flowFrom is the flow and priority of ctx's requests; for a context that
// names none (the proxy's own work: its queues' reads, hold checks,
// cleanups), the proxy's own flow (nil) at PriorityKeep.
func flowFrom(ctx context.Context) flowOf {
	f, ok := ctx.Value(flowKey{}).(flowOf)
	if !ok {
		return flowOf{prio: PriorityKeep}
	}
	return f
}

var flowSeed = maphash.MakeSeed()

// bucketOf is flow's bucket among n.
func bucketOf(flow any, n int) int { return int(maphash.Comparable(flowSeed, flow) % uint64(n)) }
