package lockproxy_test

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/coordproxy/coordproxy/proxy"
	"github.com/coordproxy/coordproxy/proxy/proxytest"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3lock/v3lockpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The waiters of one name share one etcd watch; some give up, the holder's
// lease ends, concurrency.Mutex clients queue among them; every acquisition
// is fenced, none overlaps, and afterwards no watch and no goroutine is left.
func TestLock_waitersShareOneWatchAndLeaveNothingBehind(t *testing.T) {
	const proxyWaiters, mutexWaiters = 32, 4
	env := proxytest.New(t, proxy.Config{QueueLinger: 100 * time.Millisecond})
	ctx := proxytest.Ctx(t)
	f := proxytest.NewFence(env.KV, "shared-counter", 1)

	holderLease := env.Grant(t, 60)
	holderSess, err := concurrency.NewSession(env.KV, concurrency.WithLease(clientv3.LeaseID(holderLease)))
	if err != nil {
		t.Fatal(err)
	}
	defer holderSess.Close()
	if err := concurrency.NewMutex(holderSess, "shared").Lock(ctx); err != nil {
		t.Fatal(err)
	}
	leases := make([]int64, proxyWaiters)
	for i := range leases {
		leases[i] = env.Grant(t, 60)
	}
	watchers0, goroutines0 := proxytest.EtcdWatchers(t), runtime.NumGoroutine()

	// Proxy waiters; every fourth gives up while queued.
	quit, giveUp := context.WithCancel(ctx)
	var wg sync.WaitGroup
	errc := make(chan error, proxyWaiters+mutexWaiters)
	for i, lease := range leases {
		wg.Go(func() {
			cctx := ctx
			if i%4 == 0 {
				cctx = quit
			}
			resp, err := env.Lock.Lock(cctx, &v3lockpb.LockRequest{Name: []byte("shared"), Lease: lease})
			if i%4 == 0 {
				if status.Code(err) != codes.Canceled {
					errc <- fmt.Errorf("waiter that gave up: %v, want Canceled", err)
				}
				return
			}
			if err == nil {
				err = f.Critical(ctx, string(resp.Key))
			}
			if err == nil {
				_, err = env.Lock.Unlock(ctx, &v3lockpb.UnlockRequest{Key: resp.Key})
			}
			if err != nil {
				errc <- err
			}
		})
	}
	env.WaitKeys(t, "shared/", proxyWaiters+1)
	if got := proxytest.EtcdWatchers(t) - watchers0; got != 1 {
		t.Errorf("%d etcd watchers for %d proxy waiters on one name, want 1", int(got), proxyWaiters)
	}

	// concurrency.Mutex clients queue behind them, each with its own watch.
	var sessions []*concurrency.Session
	for range mutexWaiters {
		s, err := concurrency.NewSession(env.KV, concurrency.WithTTL(60))
		if err != nil {
			t.Fatal(err)
		}
		sessions = append(sessions, s)
		wg.Go(func() {
			m := concurrency.NewMutex(s, "shared")
			if err := f.MutexRound(ctx, m); err != nil {
				errc <- err
			}
		})
	}
	env.WaitKeys(t, "shared/", proxyWaiters+mutexWaiters+1)

	giveUp()
	env.WaitKeys(t, "shared/", proxyWaiters-proxyWaiters/4+mutexWaiters+1)
	// The holder's lease ends: the queue moves on without it.
	if _, err := env.KV.Revoke(ctx, clientv3.LeaseID(holderLease)); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	f.Check(t, proxyWaiters-proxyWaiters/4+mutexWaiters)
	if kvs := env.Keys(t, "shared/"); len(kvs) != 0 {
		t.Fatalf("%d keys left under shared/", len(kvs))
	}
	for _, s := range sessions {
		s.Close()
	}

	// Nothing outlives the waiters but the watch's short linger.
	proxytest.WaitFor(t, 10*time.Second, func() (bool, string) {
		w, g := proxytest.EtcdWatchers(t)-watchers0, runtime.NumGoroutine()-goroutines0
		return w <= 0 && g <= 2, fmt.Sprintf("%d etcd watchers and %d goroutines more than before the waiters", int(w), g)
	})
}
