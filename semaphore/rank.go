package semaphore

import (
	"context"

	"github.com/coordproxy/coordproxy/queue"
)

// rankWait is a semaphore waiter's wait: until, as the name's shared watch
// sees it, fewer than n keys under the prefix have a create revision below
// rev, so that key is among the first n, the holders of a semaphore of limit
// n. It returns queue.ErrKeyGone as soon as key no longer exists with create
// revision rev; the grant is then confirmed with a linearizable read.
//
// It watches only key: whenever a key leaves from among the first n, the
// queue's hook for limit n wakes the waiter of the key that moved up to
// place n-1, so a hand-off wakes one waiter, whatever n is, and costs one
// hook call per limit in use, not per waiter.
func rankWait(key string, rev int64, n int) func(ctx context.Context, stop <-chan struct{}, q *queue.Queue) error {
	return func(ctx context.Context, stop <-chan struct{}, q *queue.Queue) error {
		unhook := q.Hook(rankHook(n), func(v queue.View, i int) {
			if i < n && n-1 < v.Len() {
				v.Wake(string(v.At(n - 1).Key))
			}
		})
		defer unhook()
		return q.Wait(ctx, stop, queue.ForKey(key, rev, func(v queue.View, watch []string) ([]string, bool) {
			if v.Before(rev) < n {
				return nil, true
			}
			return append(watch, key), false
		}))
	}
}

// rankHook identifies the queue hook of the waiters of one limit.
type rankHook int
