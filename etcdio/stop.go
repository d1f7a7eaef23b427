package etcdio

import (
	"context"
	"errors"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// ErrStopping ends a call cut short because the proxy is stopping; StopErr
// turns it into etcd's answer for that.
var ErrStopping = errors.New("coordproxy: stopping")

// Stop cuts every wait short: contexts from WithStop end with ErrStopping
// as their cause and Stopping is closed. Requests already sent finish.
func (e *Etcd) Stop() { e.stop() }

// Stopping is closed by Stop. A call that waits long selects on it itself
// rather than on a context derived with WithStop, which would cost each
// waiting call heap for as long as it waits (docs/benchmarks.md).
func (e *Etcd) Stopping() <-chan struct{} { return e.stopCtx.Done() }

// Stopped reports whether Stop has been called.
func (e *Etcd) Stopped() bool { return e.stopCtx.Err() != nil }

// WithStop derives a context that Stop cancels too.
func (e *Etcd) WithStop(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(ctx)
	unhook := context.AfterFunc(e.stopCtx, func() { cancel(ErrStopping) })
	return ctx, func() {
		unhook()
		cancel(nil)
	}
}

// StopErr maps the error of a call on a context from WithStop, or of a wait
// on Stopping: cut short because the proxy is stopping, it answers
// Unavailable "etcdserver: server stopped", as an etcd member that stops
// does; any other error is returned as it is.
func StopErr(ctx context.Context, err error) error {
	if errors.Is(err, ErrStopping) || errors.Is(context.Cause(ctx), ErrStopping) {
		return rpctypes.ErrGRPCStopped
	}
	return err
}

// Detached gives a request that must learn its outcome even if the client
// goes away (a transaction that may create a key) its own deadline of the
// request timeout. A caller with a deadline gets it counted from now, so
// that the call ends within the request timeout of the caller's deadline. A
// caller without one (a Lock that waits as long as it takes) may wait in the
// proxy for a slot to etcd for as long as it stays, and etcd then gets the
// whole timeout from the moment the request is sent (SendTimeout):
// otherwise, with thousands of such calls queued, the queue ate etcd's time
// and calls failed with "etcdserver: request timed out".
func (e *Etcd) Detached(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithTimeout(context.WithoutCancel(ctx), e.timeout)
	}
	return SendTimeout(ctx, ctx, e.timeout)
}
