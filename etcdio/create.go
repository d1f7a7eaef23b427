package etcdio

import (
	"context"
	"errors"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// SendCreate sends a transaction that creates a waiter key, of the shape
// If(CreateRevision(key) = 0) Then(Put key …) Else(Get key …), on a context
// from Detached(ctx), from one of the workers, batched with others
// (SendTxn). When etcd's answer leaves the
// outcome unknown (the request timed out inside etcd, or its leader
// changed), the same transaction is sent again until etcd answers or the
// Detached context ends (for a caller without a deadline: for up to the
// request timeout more): it creates the key at most once, and the answer
// then says whether the key exists and with which create revision, so the
// caller can hand it on or clean it up. Without this, a waiter key could
// stay behind with nobody knowing of it.
func (e *Etcd) SendCreate(ctx context.Context, t Txn) (resp *clientv3.TxnResponse, err error) {
	actx, cancel := e.Detached(ctx)
	defer cancel()
	e.workers.do(sendQueue(actx), func() { resp, err = e.sendCreate(ctx, actx, t) })
	return resp, err
}

func (e *Etcd) sendCreate(ctx, actx context.Context, t Txn) (*clientv3.TxnResponse, error) {
	resp, err := e.SendTxn(actx, t)
	if err == nil || !outcomeUnknown(err) {
		return resp, err
	}
	rctx := actx
	if _, ok := ctx.Deadline(); !ok {
		var rcancel context.CancelFunc
		rctx, rcancel = context.WithTimeout(context.WithoutCancel(ctx), e.timeout)
		defer rcancel()
	}
	bo := NewBackoff(20*time.Millisecond, 500*time.Millisecond)
	for {
		e.log.Debug("create transaction's outcome unknown; sending it again", "error", err)
		select {
		case <-rctx.Done():
			return nil, err
		case <-time.After(bo.Next()):
		}
		resp, err = e.SendTxn(rctx, t)
		if err == nil || !outcomeUnknown(err) || rctx.Err() != nil {
			return resp, err
		}
	}
}

// BeforeWait runs f, an etcd request that a call makes on ctx before it
// waits, on one of the workers, so that the call's goroutine keeps the small
// stack that waiting needs (see workers).
func (e *Etcd) BeforeWait(ctx context.Context, f func()) { e.workers.do(sendQueue(ctx), f) }

// outcomeUnknown: etcd gave up waiting for the request, which may still be
// applied.
func outcomeUnknown(err error) bool {
	return errors.Is(err, rpctypes.ErrTimeout) || errors.Is(err, rpctypes.ErrTimeoutDueToLeaderFail) ||
		errors.Is(err, rpctypes.ErrTimeoutDueToConnectionLost) || errors.Is(err, rpctypes.ErrTimeoutWaitAppliedIndex)
}

// Backoff is an exponential delay between attempts: min, doubled up to max.
type Backoff struct {
	min, max, cur time.Duration
}

// NewBackoff starts at min.
func NewBackoff(min, max time.Duration) *Backoff { return &Backoff{min: min, max: max} }

// Reset starts again at min.
func (b *Backoff) Reset() { b.cur = 0 }

// Next is the delay before the next attempt.
func (b *Backoff) Next() time.Duration {
	switch {
	case b.cur == 0:
		b.cur = b.min
	case b.cur < b.max:
		b.cur = min(2*b.cur, b.max)
	}
	return b.cur
}
