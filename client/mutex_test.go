package client_test

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/coordproxy/coordproxy/client"
	"github.com/coordproxy/coordproxy/proxy"
	"github.com/coordproxy/coordproxy/proxy/proxytest"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// session is a concurrency.Session whose client talks to the proxy only.
func session(t *testing.T, env *proxytest.Env, ttl int) *concurrency.Session {
	t.Helper()
	cli := proxytest.Client(t, env.Proxy.Addr().String())
	s, err := concurrency.NewSession(cli, concurrency.WithTTL(ttl))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// etcdSession is a concurrency.Session straight on etcd, for the other side
// of interop checks.
func etcdSession(t *testing.T, env *proxytest.Env) *concurrency.Session {
	t.Helper()
	s, err := concurrency.NewSession(env.KV, concurrency.WithTTL(30))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestMutex_lockTryLockUnlockAgainstConcurrencyMutex(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	ctx := proxytest.Ctx(t)
	m := client.NewMutex(session(t, env, 30), "cm")
	other := concurrency.NewMutex(etcdSession(t, env), "cm")

	if err := other.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	err := m.TryLock(ctx)
	var locked *client.LockedError
	if !errors.Is(err, concurrency.ErrLocked) || !errors.As(err, &locked) || string(locked.Holder.Key) != other.Key() {
		t.Fatalf("TryLock while a concurrency.Mutex holds: %v; want ErrLocked naming %q", err, other.Key())
	}
	if m.Key() != "" || m.FencingToken() != 0 {
		t.Fatalf("a refused TryLock left the mutex looking held: %q %d", m.Key(), m.FencingToken())
	}

	done := make(chan error, 1)
	go func() { done <- m.Lock(ctx) }()
	env.WaitKeys(t, "cm/", 2)
	select {
	case err := <-done:
		t.Fatalf("Lock returned while the concurrency.Mutex holds: %v", err)
	default:
	}
	if err := other.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	kv := env.Keys(t, m.Key())
	if len(kv) != 1 || kv[0].CreateRevision != m.FencingToken() {
		t.Fatalf("held key %q token %d; etcd has %v", m.Key(), m.FencingToken(), kv)
	}
	if err := other.TryLock(ctx); !errors.Is(err, concurrency.ErrLocked) {
		t.Fatalf("concurrency.Mutex.TryLock while the client holds: %v", err)
	}

	// IsOwner guards a write while held, and no longer after Unlock.
	guarded := func() bool {
		cmp := m.IsOwner()
		resp, err := env.KV.Txn(ctx).If(cmp).Then(clientv3.OpPut("cm-data", "x")).Commit()
		if err != nil {
			t.Fatal(err)
		}
		return resp.Succeeded
	}
	if !guarded() {
		t.Fatal("IsOwner false while held")
	}
	key, token := m.Key(), m.FencingToken()
	if err := m.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	resp, err := env.KV.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", token)).Commit()
	if err != nil || resp.Succeeded {
		t.Fatalf("the old grant still compares as owner after Unlock: %v", err)
	}
	if err := m.Unlock(ctx); err == nil {
		t.Fatal("Unlock of a mutex not held succeeded")
	}
}

func TestMutex_waiterWhoseSessionEndsGetsErrSessionExpired(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	ctx := proxytest.Ctx(t)
	holder := client.NewMutex(session(t, env, 30), "exp")
	if err := holder.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	s := session(t, env, 30)
	waiter := client.NewMutex(s, "exp")
	done := make(chan error, 1)
	go func() { done <- waiter.Lock(ctx) }()
	env.WaitKeys(t, "exp/", 2)
	if _, err := env.KV.Revoke(ctx, s.Lease()); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, concurrency.ErrSessionExpired) {
			t.Fatalf("Lock after the lease ended: %v, want concurrency.ErrSessionExpired", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Lock did not return after its lease ended")
	}
}

// 16 clients, each with its own session through the proxy, take turns;
// every write is guarded by IsOwner and must apply.
func TestMutex_fencedMutualExclusion(t *testing.T) {
	const workers, rounds = 16, 5
	env := proxytest.New(t, proxy.Config{})
	ctx := proxytest.Ctx(t)
	var wg sync.WaitGroup
	errc := make(chan error, workers)
	for range workers {
		m := client.NewMutex(session(t, env, 30), "fm")
		wg.Go(func() {
			for range rounds {
				if err := m.Lock(ctx); err != nil {
					errc <- err
					return
				}
				if err := incrementGuarded(ctx, env.KV, "fm-counter", m.IsOwner()); err != nil {
					errc <- err
					return
				}
				if err := m.Unlock(ctx); err != nil {
					errc <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	resp, err := env.KV.Get(ctx, "fm-counter")
	if err != nil {
		t.Fatal(err)
	}
	if got := string(resp.Kvs[0].Value); got != strconv.Itoa(workers*rounds) {
		t.Fatalf("counter %s, want %d", got, workers*rounds)
	}
}

// incrementGuarded adds one to counter in a transaction that applies only
// while owner holds and nobody else wrote the counter since it was read:
// overlapping holders make one of them fail.
func incrementGuarded(ctx context.Context, kv *clientv3.Client, counter string, owner clientv3.Cmp) error {
	cr, err := kv.Get(ctx, counter)
	if err != nil {
		return err
	}
	n, mod := 0, int64(0)
	if len(cr.Kvs) > 0 {
		n, _ = strconv.Atoi(string(cr.Kvs[0].Value))
		mod = cr.Kvs[0].ModRevision
	}
	resp, err := kv.Txn(ctx).
		If(owner, clientv3.Compare(clientv3.ModRevision(counter), "=", mod)).
		Then(clientv3.OpPut(counter, strconv.Itoa(n+1))).
		Commit()
	if err != nil {
		return err
	}
	if !resp.Succeeded {
		return errors.New("guarded write refused: another holder overlapped or the grant was lost")
	}
	return nil
}
