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
					errc <- fmt.Errorf("waiter that gave up: %w, want Canceled", err)
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

// While the proxy follows a name's queue (others wait there), a Lock's
// transaction does not range over the prefix to find the holder: the queue
// tells. Parking n waiters then costs etcd O(n) ranges, not n ranges of up
// to n keys each; and they are still granted in order.
func TestLock_waitersOnAFollowedQueueDoNotRangeThePrefix(t *testing.T) {
	const waiters = 50
	env := proxytest.New(t, proxy.Config{HoldCheck: time.Hour})
	ctx := proxytest.Ctx(t)
	ranges := func() float64 { return proxytest.EtcdMetric(t, "etcd_mvcc_range_total") }
	holder := env.MustLock(t, "followed", env.Grant(t, 600))

	before := ranges()
	calls := make([]*proxytest.Call, waiters)
	keys := make([][]byte, waiters)
	for i := range waiters {
		lease := env.Grant(t, 600)
		calls[i] = proxytest.Go(func() error {
			resp, err := env.Lock.Lock(ctx, &v3lockpb.LockRequest{Name: []byte("followed"), Lease: lease})
			if err == nil {
				keys[i] = resp.Key
			}
			return err
		})
		// Counted by the proxy's gauge, not read from etcd: reads of the
		// test's own would count as ranges too.
		proxytest.WaitFor(t, 30*time.Second, func() (bool, string) {
			n := env.Metric(t, "coordproxy_waiters", map[string]string{"service": "lock"})
			return n == float64(i+1), fmt.Sprintf("%v waiting, want %d", n, i+1)
		})
	}
	// etcd counts a range for the transaction's compare (one key) and one
	// for each read: a Lock that also read the holder ranged twice, over
	// the whole prefix the second time; now only the first waiters (before
	// the queue's first snapshot) and that snapshot do.
	if n := ranges() - before; n > 1.5*waiters {
		t.Fatalf("%v etcd ranges to park %d waiters, want about one each (the compare)", n, waiters)
	}
	env.MustUnlock(t, holder.Key)
	for i, c := range calls {
		if err := c.Wait(t); err != nil {
			t.Fatalf("waiter %d: %v", i, err)
		}
		for j := i + 1; j < waiters; j++ {
			if calls[j].Returned() {
				t.Fatalf("waiter %d granted before waiter %d released", j, i)
			}
		}
		env.MustUnlock(t, keys[i])
	}
	env.WaitKeys(t, "followed/", 0)
}
