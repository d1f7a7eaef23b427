package etcdio

import (
	"context"
	"sync"
)

// workers send the etcd requests that a waiting call makes before it waits
// (the lease-0 grant, the transaction that creates its key, Campaign's first
// read) from a fixed set of long-lived goroutines instead of the call's own
// gRPC handler goroutine.
//
// A waiting call parks its handler goroutine for as long as it waits, with
// the stack that goroutine has grown to. Waiting needs an 8 KiB stack
// (gRPC's server frames and ours); an etcd request through the etcd
// client's and gRPC's client layers needs more, so the goroutine would grow
// to 16 KiB, and only a garbage collection halves a parked stack again,
// which seldom comes once every waiter is parked and nothing allocates. (A
// new goroutine per request would not do: its first stack comes from the
// same pool as the handlers' and leaves theirs scattered over half-empty
// stack spans.) docs/benchmarks.md, "10 000 waiters", has the figures.
//
// The idle workers are taken last in, first out, so that a light load keeps
// to the few whose stacks have already grown (a garbage collection shrinks an
// idle goroutine's stack, and a channel's receivers would take jobs in turn,
// each regrowing its own).
type workers struct {
	free chan struct{} // a token per idle worker
	mu   sync.Mutex
	idle []chan func() // the idle workers' job channels, most recent last

	stop    chan struct{}
	stopped sync.Once
}

func newWorkers(n int) *workers {
	w := &workers{free: make(chan struct{}, n), stop: make(chan struct{})}
	for range n {
		job := make(chan func())
		w.idle = append(w.idle, job)
		w.free <- struct{}{}
		go w.run(job)
	}
	return w
}

func (w *workers) run(job chan func()) {
	for {
		select {
		case f := <-job:
			f()
		case <-w.stop:
			return
		}
	}
}

// do runs f on a worker and returns when f has. If no worker is free before
// queue ends (the context the request would wait on for a slot to etcd; see
// SendTimeout), or the workers have stopped, f runs on the caller's
// goroutine instead, so that the request meets the same fate it would
// without workers.
func (w *workers) do(queue context.Context, f func()) {
	select {
	case <-w.free:
	case <-queue.Done():
		f()
		return
	case <-w.stop:
		f()
		return
	}
	w.mu.Lock()
	job := w.idle[len(w.idle)-1]
	w.idle = w.idle[:len(w.idle)-1]
	w.mu.Unlock()
	done := make(chan struct{})
	select {
	case job <- func() { f(); close(done) }:
		<-done
	case <-w.stop:
		f()
	}
	w.mu.Lock()
	w.idle = append(w.idle, job)
	w.mu.Unlock()
	w.free <- struct{}{}
}

// close stops the workers once their current jobs are done.
func (w *workers) close() { w.stopped.Do(func() { close(w.stop) }) }

// sendQueue is the context an etcd request made on ctx waits on for a slot
// to etcd.
func sendQueue(ctx context.Context) context.Context {
	if queue, _, ok := SendBound(ctx); ok {
		return queue
	}
	return ctx
}
