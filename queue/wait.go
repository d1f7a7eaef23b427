package queue

import (
	"context"
	"errors"

	"github.com/coordproxy/coordproxy/etcdio"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

// ErrKeyGone is a wait's answer when the waiter's own key no longer exists
// with its create revision (lease expired, revoked, or the key deleted).
var ErrKeyGone = errors.New("coordproxy: waiter key is gone")

// View is a queue as a wait condition or a hook sees it: valid only during
// that call, under the queue's lock.
type View struct{ q *Queue }

// Rev is the revision the view is exact as of.
func (v View) Rev() int64 { return v.q.rev }

// Has reports whether key exists with create revision rev.
func (v View) Has(key string, rev int64) bool {
	kv := v.q.keys[key]
	return kv != nil && kv.CreateRevision == rev
}

// Before is how many keys were created before revision rev: the position a
// key created at rev has.
func (v View) Before(rev int64) int { return v.q.index(rev, nil) }

// At is the key at position i, 0 the oldest.
func (v View) At(i int) *mvccpb.KeyValue { return v.q.order[i] }

// Len is the number of keys.
func (v View) Len() int { return len(v.q.order) }

// Wake wakes the waiters watching key, to judge their condition again.
func (v View) Wake(key string) { v.q.wakeLocked(key) }

// A Cond decides a wait on the view: done ends it (with err), otherwise it
// names the keys, appended to watch, whose changes could change its answer.
type Cond func(v View, watch []string) (keys []string, done bool, err error)

// ForKey is the condition of a wait of key, created at revision rev, whose
// turn decides: until the view has seen key created it watches key, and once
// key is gone it ends with ErrKeyGone.
//
// The view is exact as of its revision and keys are never created with an
// old revision, so once the view has reached rev a turn it shows stays; the
// caller still confirms it with a linearizable read.
func ForKey(key string, rev int64, turn func(v View, watch []string) (keys []string, done bool)) Cond {
	return func(v View, watch []string) ([]string, bool, error) {
		if v.Rev() < rev {
			return append(watch, key), false, nil
		}
		if !v.Has(key, rev) {
			return nil, true, ErrKeyGone
		}
		keys, done := turn(v, watch)
		return keys, done, nil
	}
}

// WaitTurn blocks until, as the shared watch sees it, no key under the prefix
// has a create revision below rev: the condition concurrency's waitDeletes
// waits for (a Lock's, a Campaign's and a writer's turn). It watches key and
// the key just before it only. It returns ErrKeyGone as soon as key no longer
// exists with create revision rev, instead of waiting for the keys before it
// as concurrency does.
func (q *Queue) WaitTurn(ctx context.Context, stop <-chan struct{}, key string, rev int64) error {
	return q.Wait(ctx, stop, ForKey(key, rev, FirstInLine(key, rev)))
}

// FirstInLine is WaitTurn's turn, for ForKey: no key was created before rev.
// It watches key and the key just before it only.
func FirstInLine(key string, rev int64) func(v View, watch []string) ([]string, bool) {
	return func(v View, watch []string) ([]string, bool) {
		i := v.Before(rev)
		if i == 0 {
			return nil, true
		}
		return append(watch, key, string(v.At(i-1).Key)), false
	}
}

// WaitGone blocks until, as the shared watch sees it, key no longer exists
// with create revision rev; or ctx ends, stop is closed or the queue stops.
func (q *Queue) WaitGone(ctx context.Context, stop <-chan struct{}, key string, rev int64) error {
	return q.Wait(ctx, stop, func(v View, watch []string) ([]string, bool, error) {
		if v.Rev() >= rev && !v.Has(key, rev) {
			return nil, true, nil
		}
		return append(watch, key), false, nil
	})
}

// Wait blocks until cond, judged under the queue's lock whenever a key it
// watches changes, says done; or ctx ends; or stop is closed
// (etcdio.ErrStopping); or the queue stops (ErrStopped). A caller gives the
// proxy's stop channel rather than a context derived for it, which would
// cost each waiting call heap for as long as it waits.
func (q *Queue) Wait(ctx context.Context, stop <-chan struct{}, cond Cond) error {
	if err := q.waitReady(ctx, stop); err != nil {
		return err
	}
	wake := make(chan struct{}, 1)
	var buf [2]string
	for {
		q.mu.Lock()
		if q.stopped {
			q.mu.Unlock()
			return ErrStopped
		}
		watching, done, err := cond(View{q}, buf[:0])
		if done {
			q.mu.Unlock()
			return err
		}
		for _, k := range watching {
			q.waits[k] = append(q.waits[k], wake)
		}
		q.mu.Unlock()

		select {
		case <-wake:
		case <-ctx.Done():
			err = ctx.Err()
		case <-stop:
			err = etcdio.ErrStopping
		}
		q.mu.Lock()
		for _, k := range watching {
			q.unwaitLocked(k, wake)
		}
		q.mu.Unlock()
		if err != nil {
			return err
		}
	}
}

func (q *Queue) waitReady(ctx context.Context, stop <-chan struct{}) error {
	select {
	case <-q.ready:
	case <-ctx.Done():
		return ctx.Err()
	case <-stop:
		return etcdio.ErrStopping
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.stopped {
		return ErrStopped
	}
	return nil
}

func (q *Queue) wakeLocked(key string) {
	for _, ch := range q.waits[key] {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
	delete(q.waits, key)
}

func (q *Queue) unwaitLocked(key string, ch chan struct{}) {
	chans := q.waits[key]
	for i, c := range chans {
		if c == ch {
			chans[i] = chans[len(chans)-1]
			chans = chans[:len(chans)-1]
			break
		}
	}
	if len(chans) == 0 {
		delete(q.waits, key)
	} else {
		q.waits[key] = chans
	}
}

type hook struct {
	removed func(v View, i int)
	users   int
}

// Hook has removed told, under the queue's lock, of every key that leaves
// the view, with the position i it had, until the returned unhook is
// called; removed may wake waiters (View.Wake). Hooks of one id are one:
// the first one's removed serves every user of the id (a semaphore's
// waiters of one limit share one), so a hand-off costs one call per id,
// not per waiter.
func (q *Queue) Hook(id any, removed func(v View, i int)) (unhook func()) {
	q.mu.Lock()
	h := q.hooks[id]
	if h == nil {
		h = &hook{removed: removed}
		q.hooks[id] = h
	}
	h.users++
	q.mu.Unlock()
	return func() {
		q.mu.Lock()
		if h.users--; h.users == 0 {
			delete(q.hooks, id)
		}
		q.mu.Unlock()
	}
}
