package semaphore_test

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coordproxy/coordproxy/keyspace"
	coordproxyv1 "github.com/coordproxy/coordproxy/proto/coordproxy/v1"
	"github.com/coordproxy/coordproxy/proxy"
	"github.com/coordproxy/coordproxy/proxy/proxytest"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func semAcquire(ctx context.Context, env *proxytest.Env, name string, lease, limit int64) (*coordproxyv1.Held, error) {
	return env.Semaphores.Acquire(ctx, &coordproxyv1.AcquireRequest{Name: []byte(name), Lease: lease, Limit: limit})
}

func mustAcquire(t *testing.T, env *proxytest.Env, name string, lease, limit int64) *coordproxyv1.Held {
	t.Helper()
	h, err := semAcquire(proxytest.Ctx(t), env, name, lease, limit)
	if err != nil {
		t.Fatalf("acquire %q: %v", name, err)
	}
	return h
}

func mustRelease(t *testing.T, env *proxytest.Env, key []byte) {
	t.Helper()
	if _, err := env.Semaphores.Release(proxytest.Ctx(t), &coordproxyv1.ReleaseRequest{Key: key}); err != nil {
		t.Fatalf("release %q: %v", key, err)
	}
}

// Sixteen clients, a limit of three, rounds of Acquire/fenced work/Release:
// never more than three hold, everyone is served, the waiters share one etcd
// watch, and afterwards no key, watch or goroutine is left.
func TestSemaphore_neverMoreThanLimitHoldAndAllAreServed(t *testing.T) {
	const clients, rounds, limit = 16, 4, 3
	env := proxytest.New(t, proxy.Config{QueueLinger: 100 * time.Millisecond})
	ctx := proxytest.Ctx(t)
	o := proxytest.NewFence(env.KV, "sem-occupancy", limit)

	leases := make([]int64, clients+limit)
	for i := range leases {
		leases[i] = env.Grant(t, 60)
	}
	env.Keys(t, "sem/") // the test's own etcd client connects lazily
	watchers0, goroutines0 := proxytest.EtcdWatchers(t), runtime.NumGoroutine()
	blockers := make([]*coordproxyv1.Held, limit)
	for i := range blockers {
		blockers[i] = mustAcquire(t, env, "sem", leases[clients+i], limit)
	}
	leases = leases[:clients]

	var wg sync.WaitGroup
	errc := make(chan error, clients)
	for _, lease := range leases {
		wg.Go(func() {
			for range rounds {
				h, err := semAcquire(ctx, env, "sem", lease, limit)
				if err == nil {
					err = o.Enter(ctx, string(h.Key), h.FencingToken)
				}
				if err == nil {
					err = o.Leave(ctx, string(h.Key), h.FencingToken)
				}
				if err == nil {
					_, err = env.Semaphores.Release(ctx, &coordproxyv1.ReleaseRequest{Key: h.Key})
				}
				if err != nil {
					errc <- err
					return
				}
			}
		})
	}
	// Everyone queues behind the blockers, on one watch.
	env.WaitKeys(t, "sem/", limit+clients)
	if got := proxytest.EtcdWatchers(t) - watchers0; got != 1 {
		t.Errorf("%d etcd watchers for %d waiters on one name, want 1", int(got), clients)
	}
	for _, b := range blockers {
		mustRelease(t, env, b.Key)
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	o.Check(t, clients*rounds)
	if kvs := env.Keys(t, "sem/"); len(kvs) != 0 {
		t.Fatalf("%d keys left under sem/", len(kvs))
	}
	proxytest.WaitFor(t, 10*time.Second, func() (bool, string) {
		w, g := proxytest.EtcdWatchers(t)-watchers0, runtime.NumGoroutine()-goroutines0
		return w <= 0 && g <= 2, fmt.Sprintf("%d etcd watchers and %d goroutines more than before the clients", int(w), g)
	})
}

// With every place taken, waiters are granted in the order they came, one
// per place given back; the grant carries the key's create revision as the
// fencing token and the lease.
func TestSemaphore_waitersAreGrantedInArrivalOrder(t *testing.T) {
	const limit, waiters = 2, 5
	env := proxytest.New(t, proxy.Config{})
	ctx := proxytest.Ctx(t)
	var holders []*coordproxyv1.Held
	for range limit {
		holders = append(holders, mustAcquire(t, env, "fifo", env.Grant(t, 60), limit))
	}
	granted := make(chan int64, waiters) // leases, in the order granted
	var leases []int64
	for i := range waiters {
		lease := env.Grant(t, 60)
		leases = append(leases, lease)
		c := proxytest.Go(func() error {
			h, err := semAcquire(ctx, env, "fifo", lease, limit)
			if err != nil {
				return err
			}
			kr, err := env.KV.Get(ctx, string(h.Key))
			if err != nil {
				return err
			}
			if len(kr.Kvs) != 1 || kr.Kvs[0].CreateRevision != h.FencingToken || h.Lease != lease ||
				string(h.Key) != keyspace.OwnerKey("fifo", clientv3.LeaseID(lease)) {
				return fmt.Errorf("grant %v does not match its key %v", h, kr.Kvs)
			}
			// One waiter is granted per release, and the test reads holders
			// only after receiving from granted.
			holders = append(holders, h)
			granted <- lease
			return nil
		})
		t.Cleanup(func() {
			if err := c.Wait(t); err != nil {
				t.Error(err)
			}
		})
		env.WaitKeys(t, "fifo/", limit+i+1) // arrival order is create order
	}
	for i, want := range leases {
		mustRelease(t, env, holders[i].Key)
		select {
		case got := <-granted:
			if got != want {
				t.Fatalf("grant %d went to lease %x, want %x (FIFO)", i, got, want)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("no grant after a release (%d)", i)
		}
	}
}

// Holders whose lease ends give their place to the next waiter; a waiter
// whose lease ends is told its session expired, as etcd's Lock says, and is
// never granted.
func TestSemaphore_leaseEndingHandsOnOrEndsTheWait(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	ctx := proxytest.Ctx(t)
	holderLease := env.Grant(t, 60)
	mustAcquire(t, env, "expiry", holderLease, 1)

	doomed := env.Grant(t, 60)
	c1 := proxytest.Go(func() error { _, err := semAcquire(ctx, env, "expiry", doomed, 1); return err })
	env.WaitKeys(t, "expiry/", 2)
	next := env.Grant(t, 60)
	var got *coordproxyv1.Held
	c2 := proxytest.Go(func() (err error) { got, err = semAcquire(ctx, env, "expiry", next, 1); return err })
	env.WaitKeys(t, "expiry/", 3)

	if _, err := env.KV.Revoke(ctx, clientv3.LeaseID(doomed)); err != nil {
		t.Fatal(err)
	}
	if st := status.Convert(c1.Wait(t)); st.Code() != codes.Unknown || st.Message() != concurrency.ErrSessionExpired.Error() {
		t.Fatalf("waiter whose lease ended: %v, want Unknown %q", st.Err(), concurrency.ErrSessionExpired)
	}
	if _, err := env.KV.Revoke(ctx, clientv3.LeaseID(holderLease)); err != nil {
		t.Fatal(err)
	}
	if err := c2.Wait(t); err != nil {
		t.Fatal(err)
	}
	if kvs := env.Keys(t, "expiry/"); len(kvs) != 1 || string(kvs[0].Key) != string(got.Key) {
		t.Fatalf("keys %v, want only the new holder's %q", kvs, got.Key)
	}
}

// Waiters that give up (cancelled or past their deadline) leave no key, and
// the ones that stay are served.
func TestSemaphore_cancelledWaitersLeaveNoKeys(t *testing.T) {
	const limit, waiters = 2, 12
	env := proxytest.New(t, proxy.Config{})
	ctx := proxytest.Ctx(t)
	var holders []*coordproxyv1.Held
	for range limit {
		holders = append(holders, mustAcquire(t, env, "quit", env.Grant(t, 60), limit))
	}
	// A third give up by cancelling, a third by going away (their
	// connection closes), a third stay.
	quit, giveUp := context.WithCancel(ctx)
	leaving := proxytest.Dial(t, env.Proxy.Addr().String())
	var calls []*proxytest.Call
	stay := map[string]bool{}
	for i := range waiters {
		lease := env.Grant(t, 60)
		cctx, sems := ctx, env.Semaphores
		switch i % 3 {
		case 0:
			cctx = quit
		case 1:
			sems = coordproxyv1.NewSemaphoreServiceClient(leaving)
		default:
			stay[keyspace.OwnerKey("quit", clientv3.LeaseID(lease))] = true
		}
		calls = append(calls, proxytest.Go(func() error {
			h, err := sems.Acquire(cctx, &coordproxyv1.AcquireRequest{Name: []byte("quit"), Lease: lease, Limit: limit})
			if err == nil {
				_, err = env.Semaphores.Release(ctx, &coordproxyv1.ReleaseRequest{Key: h.Key})
			}
			return err
		}))
	}
	env.WaitKeys(t, "quit/", limit+waiters)
	giveUp()
	leaving.Close()
	env.WaitKeys(t, "quit/", limit+len(stay))
	for _, kv := range env.Keys(t, "quit/")[limit:] {
		if !stay[string(kv.Key)] {
			t.Fatalf("key %q of a waiter that gave up is left", kv.Key)
		}
	}
	for _, h := range holders {
		mustRelease(t, env, h.Key)
	}
	for i, c := range calls {
		err := c.Wait(t)
		if i%3 == 2 && err != nil {
			t.Fatalf("waiter that stayed: %v", err)
		}
		if i%3 != 2 && status.Code(err) != codes.Canceled {
			t.Fatalf("waiter that gave up: %v, want Canceled", err)
		}
	}
	env.WaitKeys(t, "quit/", 0)
}

// Every caller of a name must give the same limit: another limit, or a
// lock's key under the name, is refused and leaves no key of the refused
// call; the same lease with the same limit is the same acquisition.
func TestSemaphore_anotherLimitIsRefusedAndLeavesNoKey(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	ctx := proxytest.Ctx(t)
	a := env.Grant(t, 60)
	first := mustAcquire(t, env, "mix", a, 3)
	if again := mustAcquire(t, env, "mix", a, 3); again.FencingToken != first.FencingToken || string(again.Key) != string(first.Key) {
		t.Fatalf("same lease again: %v, want the same acquisition %v", again, first)
	}
	lockLease := env.Grant(t, 60)
	env.MustLock(t, "plain", lockLease)

	for _, tc := range []struct {
		desc  string
		name  string
		lease int64
		limit int64
		keys  int // under name + "/" afterwards
	}{
		{"smaller limit", "mix", env.Grant(t, 60), 2, 1},
		{"larger limit", "mix", env.Grant(t, 60), 4, 1},
		{"holder's own lease with another limit", "mix", a, 1, 1},
		{"a lock's name", "plain", env.Grant(t, 60), 3, 1},
		{"the lock holder's lease", "plain", lockLease, 3, 1},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			_, err := semAcquire(ctx, env, tc.name, tc.lease, tc.limit)
			if st := status.Convert(err); st.Code() != codes.FailedPrecondition || !strings.Contains(st.Message(), "in use") || strings.Contains(st.Message(), "\n") {
				t.Fatalf("got %v, want FailedPrecondition saying the name is in use", err)
			}
			if kvs := env.Keys(t, tc.name+"/"); len(kvs) != tc.keys {
				t.Fatalf("keys %v, want %d", kvs, tc.keys)
			}
		})
	}
	if kvs := env.Keys(t, "mix/"); string(kvs[0].Key) != string(first.Key) || kvs[0].CreateRevision != first.FencingToken {
		t.Fatalf("holder's key %v changed", kvs[0])
	}
}
