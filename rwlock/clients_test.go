package rwlock_test

import (
	"context"
	"fmt"
	"strconv"
	"sync/atomic"
	"testing"

	coordproxyv1 "github.com/coordproxy/coordproxy/proto/coordproxy/v1"
	"github.com/coordproxy/coordproxy/proxy/proxytest"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	recipe "go.etcd.io/etcd/client/v3/experimental/recipes"
)

// rwClient is one user of a read/write lock: through the proxy, or etcd's
// recipes.RWMutex on its own session. Each holds at most one key at a time.
type rwClient interface {
	lock(ctx context.Context, write bool) (key string, token int64, err error)
	unlock(ctx context.Context) error
}

type proxyRW struct {
	env   *proxytest.Env
	name  string
	lease int64
	key   []byte
}

func (p *proxyRW) lock(ctx context.Context, write bool) (string, int64, error) {
	req := &coordproxyv1.RWLockRequest{Name: []byte(p.name), Lease: p.lease}
	f := p.env.RWLocks.RLock
	if write {
		f = p.env.RWLocks.WLock
	}
	h, err := f(ctx, req)
	if err != nil {
		return "", 0, err
	}
	p.key = h.Key
	return string(h.Key), h.FencingToken, nil
}

func (p *proxyRW) unlock(ctx context.Context) error {
	_, err := p.env.RWLocks.Unlock(ctx, &coordproxyv1.UnlockRequest{Key: p.key})
	return err
}

// recipeRW is recipes.RWMutex for the recipe's prefix, which is the
// proxy's name.
type recipeRW struct {
	sess   *concurrency.Session
	prefix string
	m      *recipe.RWMutex
	write  bool
}

func newRecipeRW(t *testing.T, client *clientv3.Client, prefix string) *recipeRW {
	t.Helper()
	sess, err := concurrency.NewSession(client, concurrency.WithTTL(60))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sess.Close() })
	return &recipeRW{sess: sess, prefix: prefix}
}

func (r *recipeRW) lock(ctx context.Context, write bool) (string, int64, error) {
	r.m, r.write = recipe.NewRWMutex(r.sess, r.prefix), write
	var err error
	if write {
		err = r.m.Lock()
	} else {
		err = r.m.RLock()
	}
	if err != nil {
		return "", 0, err
	}
	// The recipe does not tell its key: it is the one key of the session's
	// lease under the prefix.
	resp, err := r.sess.Client().Get(ctx, r.prefix+"/", clientv3.WithPrefix())
	if err != nil {
		return "", 0, err
	}
	for _, kv := range resp.Kvs {
		if kv.Lease == int64(r.sess.Lease()) {
			return string(kv.Key), kv.CreateRevision, nil
		}
	}
	return "", 0, fmt.Errorf("recipe's key of lease %x not found", r.sess.Lease())
}

func (r *recipeRW) unlock(context.Context) error {
	if r.write {
		return r.m.Unlock()
	}
	return r.m.RUnlock()
}

// rwFence checks a read/write lock twice: in the process (a writer never
// overlaps anyone, readers overlap only readers) and in etcd, where a
// writer's increment of a counter is fenced by its key's create revision and
// the counter's mod revision, and a reader's hold ends with a compare that
// the counter did not change while it held.
type rwFence struct {
	kv      *clientv3.Client
	counter string

	readers, writers atomic.Int64
	mostReaders      atomic.Int64
	bad              atomic.Int64
	writes, reads    atomic.Int64
}

func (f *rwFence) counterNow(ctx context.Context) (int64, int64, error) {
	cr, err := f.kv.Get(ctx, f.counter)
	if err != nil || len(cr.Kvs) == 0 {
		return 0, 0, err
	}
	n, _ := strconv.ParseInt(string(cr.Kvs[0].Value), 10, 64)
	return n, cr.Kvs[0].ModRevision, nil
}

func (f *rwFence) write(ctx context.Context, key string, token int64) error {
	if f.writers.Add(1) != 1 || f.readers.Load() != 0 {
		f.bad.Add(1)
	}
	defer f.writers.Add(-1)
	n, mod, err := f.counterNow(ctx)
	if err != nil {
		return err
	}
	resp, err := f.kv.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", token),
			clientv3.Compare(clientv3.ModRevision(f.counter), "=", mod)).
		Then(clientv3.OpPut(f.counter, strconv.FormatInt(n+1, 10))).
		Commit()
	if err != nil {
		return err
	}
	if !resp.Succeeded {
		f.bad.Add(1)
	}
	f.writes.Add(1)
	return nil
}

func (f *rwFence) read(ctx context.Context, key string, token int64) error {
	r := f.readers.Add(1)
	defer f.readers.Add(-1)
	for m := f.mostReaders.Load(); r > m && !f.mostReaders.CompareAndSwap(m, r); m = f.mostReaders.Load() {
	}
	if f.writers.Load() != 0 {
		f.bad.Add(1)
	}
	_, mod, err := f.counterNow(ctx)
	if err != nil {
		return err
	}
	resp, err := f.kv.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", token),
			clientv3.Compare(clientv3.ModRevision(f.counter), "=", mod)).
		Commit()
	if err != nil {
		return err
	}
	if !resp.Succeeded {
		f.bad.Add(1)
	}
	f.reads.Add(1)
	return nil
}
