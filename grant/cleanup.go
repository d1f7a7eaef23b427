package grant

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/coordproxy/coordproxy/etcdio"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Abandon removes key if it still has create revision rev, in the background
// on the proxy's own context: each attempt is bounded by the request timeout,
// and attempts repeat until etcd answers or the proxy closes.
func (g *Granter) Abandon(key string, rev int64) { g.cleaner.remove(key, rev) }

// RemoveNow removes key if it still has create revision rev before the call
// answers, so that a refused call leaves no key; if etcd does not answer in
// time, the cleaner keeps trying in the background.
func (g *Granter) RemoveNow(ctx context.Context, key string, rev int64) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), g.etcd.RequestTimeout())
	defer cancel()
	if removeTxn(ctx, g.etcd, key, rev) != nil {
		g.Abandon(key, rev)
	}
}

// removeTxn deletes key only if it is still the key created at rev: a later
// acquisition with the same lease is never touched. It is batched with
// others (the one key is its prefix); a request without the caller's token
// goes with the proxy's own credentials.
func removeTxn(ctx context.Context, e *etcdio.Etcd, key string, rev int64) error {
	// A removal frees a queue: it goes with the releases.
	ctx = etcdio.WithPriority(ctx, etcdio.PriorityRelease)
	_, err := e.SendTxn(ctx, etcdio.Txn{
		If:     []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(key), "=", rev)},
		Then:   []clientv3.Op{clientv3.OpDelete(key)},
		Prefix: key,
	})
	return err
}

// cleaner deletes waiter keys whose callers have gone. It uses the proxy's
// own etcd client and deadlines, never the caller's context, so that a client
// that disconnects or times out cannot leave a ghost key blocking the queue
// until its lease expires (etcd #13330, #14850, #18082).
type cleaner struct {
	etcd    *etcdio.Etcd
	log     *slog.Logger
	metrics *Metrics

	ctx    context.Context // cancelled when retries must give up
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	waiting bool // wait has begun: no new work may join wg
}

func newCleaner(etcd *etcdio.Etcd, log *slog.Logger, m *Metrics) *cleaner {
	ctx, cancel := context.WithCancel(context.Background())
	return &cleaner{etcd: etcd, log: log, metrics: m, ctx: ctx, cancel: cancel}
}

// remove deletes key in the background, so that the call that abandoned it
// returns at once: a handler never outlives its client's deadline by more
// than the request timeout. The first attempt starts immediately; failures
// are retried until etcd answers or the proxy closes.
func (c *cleaner) remove(key string, rev int64) {
	c.mu.Lock()
	if c.waiting {
		// A call cut off by a forced stop: one last attempt, untracked.
		c.mu.Unlock()
		go c.try(key, rev)
		return
	}
	c.wg.Add(1)
	c.mu.Unlock()
	go func() {
		defer c.wg.Done()
		b := etcdio.NewBackoff(50*time.Millisecond, time.Second)
		for c.try(key, rev) != nil {
			select {
			case <-c.ctx.Done():
				c.log.Error("gave up removing abandoned waiter key; it stays until its lease expires", "key", key, "create_revision", rev)
				return
			case <-time.After(b.Next()):
			}
		}
	}()
}

func (c *cleaner) try(key string, rev int64) error {
	// Queued behind other requests as long as the proxy runs, then the
	// whole timeout in etcd.
	ctx, cancel := etcdio.SendTimeout(c.ctx, c.ctx, c.etcd.RequestTimeout())
	defer cancel()
	if err := removeTxn(ctx, c.etcd, key, rev); err != nil {
		c.metrics.Cleanups.WithLabelValues("failed").Inc()
		c.log.Warn("removing abandoned waiter key failed; will retry", "key", key, "create_revision", rev, "error", err)
		return err
	}
	c.metrics.Cleanups.WithLabelValues("done").Inc()
	c.log.Debug("removed abandoned waiter key", "key", key, "create_revision", rev)
	return nil
}

// wait lets retries run until they finish or ctx is done, then stops them.
func (c *cleaner) wait(ctx context.Context) {
	c.mu.Lock()
	c.waiting = true
	c.mu.Unlock()
	done := make(chan struct{})
	go func() {
		c.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
	}
	c.cancel()
	<-done
}
