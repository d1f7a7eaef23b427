package rwlock_test

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	coordproxyv1 "github.com/coordproxy/coordproxy/proto/coordproxy/v1"
	"github.com/coordproxy/coordproxy/proxy"
	"github.com/coordproxy/coordproxy/proxy/proxytest"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Sixteen clients, half through the proxy and half etcd's recipes.RWMutex,
// each alternating reads and writes on one name: writers never overlap
// anyone, readers overlap readers, everyone is served, and afterwards no
// key, watch or goroutine is left.
func TestRWLock_writersExcludeEveryoneMixedWithRecipeRWMutex(t *testing.T) {
	const clients, rounds = 16, 6
	env := proxytest.New(t, proxy.Config{QueueLinger: 100 * time.Millisecond})
	ctx := proxytest.Ctx(t)
	f := &rwFence{kv: env.KV, counter: "rw-counter"}
	recipes := proxytest.Client(t, env.Etcd.URL)

	users := make([]rwClient, clients)
	for i := range users {
		if i%2 == 0 {
			users[i] = &proxyRW{env: env, name: "rw", lease: env.Grant(t, 60)}
		} else {
			users[i] = newRecipeRW(t, recipes, "rw")
		}
	}
	env.Keys(t, "rw/") // the test's own etcd client connects lazily
	watchers0, goroutines0 := proxytest.EtcdWatchers(t), runtime.NumGoroutine()

	var wg sync.WaitGroup
	errc := make(chan error, clients)
	for i, u := range users {
		wg.Go(func() {
			for r := range rounds {
				write := (i+r)%3 == 0
				key, token, err := u.lock(ctx, write)
				if err == nil && write {
					err = f.write(ctx, key, token)
				} else if err == nil {
					err = f.read(ctx, key, token)
				}
				if err == nil {
					err = u.unlock(ctx)
				}
				if err != nil {
					errc <- fmt.Errorf("client %d round %d: %w", i, r, err)
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
	if f.bad.Load() != 0 {
		t.Fatalf("%d overlaps of a writer with another holder", f.bad.Load())
	}
	if n := f.writes.Load() + f.reads.Load(); n != clients*rounds {
		t.Fatalf("%d holds, want %d", n, clients*rounds)
	}
	if n, _, _ := f.counterNow(ctx); n != f.writes.Load() {
		t.Fatalf("counter %d, want %d fenced writes", n, f.writes.Load())
	}
	if kvs := env.Keys(t, "rw/"); len(kvs) != 0 {
		t.Fatalf("%d keys left under rw/", len(kvs))
	}
	recipes.Close()
	proxytest.WaitFor(t, 10*time.Second, func() (bool, string) {
		w, g := proxytest.EtcdWatchers(t)-watchers0, runtime.NumGoroutine()-goroutines0
		return w <= 0 && g <= 2, fmt.Sprintf("%d etcd watchers and %d goroutines more than before the clients", int(w), g)
	})
}

// Readers hold together, through the proxy and the recipe alike; a writer
// waits for all of them, and a reader that comes after a waiting writer
// waits for the writer, as the recipe's RLock does.
func TestRWLock_readersShareAndWritersWaitForThem(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	ctx := proxytest.Ctx(t)
	for _, tc := range []struct {
		desc                    string
		reader1, reader2, write string // "proxy" or "recipe"
	}{
		{"proxy readers, proxy writer", "proxy", "proxy", "proxy"},
		{"recipe reader then proxy reader, recipe writer", "recipe", "proxy", "recipe"},
		{"proxy reader then recipe reader, proxy writer", "proxy", "recipe", "proxy"},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			name := strings.ReplaceAll(tc.desc, " ", "-")
			user := func(kind string) rwClient {
				if kind == "recipe" {
					return newRecipeRW(t, env.KV, name)
				}
				return &proxyRW{env: env, name: name, lease: env.Grant(t, 60)}
			}
			r1, r2, w, r3 := user(tc.reader1), user(tc.reader2), user(tc.write), user("proxy")
			if _, _, err := r1.lock(ctx, false); err != nil {
				t.Fatal(err)
			}
			// The second reader is granted while the first holds.
			if _, _, err := r2.lock(ctx, false); err != nil {
				t.Fatal(err)
			}
			wc := proxytest.Go(func() error { _, _, err := w.lock(ctx, true); return err })
			env.WaitKeys(t, name, 3)
			rc := proxytest.Go(func() error { _, _, err := r3.lock(ctx, false); return err })
			env.WaitKeys(t, name, 4)
			if wc.Returned() || rc.Returned() {
				t.Fatalf("granted while readers hold: writer %v, later reader %v", wc.Returned(), rc.Returned())
			}
			if err := r1.unlock(ctx); err != nil {
				t.Fatal(err)
			}
			env.WaitKeys(t, name, 3)
			if wc.Returned() || rc.Returned() {
				t.Fatalf("granted while a reader holds: writer %v, later reader %v", wc.Returned(), rc.Returned())
			}
			if err := r2.unlock(ctx); err != nil {
				t.Fatal(err)
			}
			if err := wc.Wait(t); err != nil {
				t.Fatal(err)
			}
			if rc.Returned() {
				t.Fatal("the reader after the writer was granted while the writer holds")
			}
			if err := w.unlock(ctx); err != nil {
				t.Fatal(err)
			}
			if err := rc.Wait(t); err != nil {
				t.Fatal(err)
			}
			if err := r3.unlock(ctx); err != nil {
				t.Fatal(err)
			}
			env.WaitKeys(t, name, 0)
		})
	}
}

// Waiters that give up (cancelled or disconnected) leave no key, the ones
// that stay are served, all proxy waiters of a name share one etcd watch, and
// nothing is left afterwards.
func TestRWLock_cancelledWaitersLeaveNoKeys(t *testing.T) {
	const waiters = 12
	env := proxytest.New(t, proxy.Config{QueueLinger: 100 * time.Millisecond})
	ctx := proxytest.Ctx(t)
	leases := make([]int64, waiters+1)
	for i := range leases {
		leases[i] = env.Grant(t, 60)
	}
	leaving := proxytest.Dial(t, env.Proxy.Addr().String())
	env.Keys(t, "gone/")
	watchers0, goroutines0 := proxytest.EtcdWatchers(t), runtime.NumGoroutine()

	writer, err := env.RWLocks.WLock(ctx, &coordproxyv1.RWLockRequest{Name: []byte("gone"), Lease: leases[waiters]})
	if err != nil {
		t.Fatal(err)
	}
	quit, giveUp := context.WithCancel(ctx)
	stay := map[int64]bool{}
	var calls []*proxytest.Call
	for i, lease := range leases[:waiters] {
		cctx, rw := ctx, env.RWLocks
		switch i % 3 {
		case 0:
			cctx = quit
		case 1:
			rw = coordproxyv1.NewRWLockServiceClient(leaving)
		default:
			stay[lease] = true
		}
		f := rw.RLock
		if i%2 == 0 {
			f = rw.WLock
		}
		calls = append(calls, proxytest.Go(func() error {
			h, err := f(cctx, &coordproxyv1.RWLockRequest{Name: []byte("gone"), Lease: lease})
			if err == nil {
				_, err = env.RWLocks.Unlock(ctx, &coordproxyv1.UnlockRequest{Key: h.Key})
			}
			return err
		}))
	}
	env.WaitKeys(t, "gone/", waiters+1)
	if got := proxytest.EtcdWatchers(t) - watchers0; got != 1 {
		t.Errorf("%d etcd watchers for %d waiters on one name, want 1", int(got), waiters)
	}
	giveUp()
	leaving.Close()
	env.WaitKeys(t, "gone/", len(stay)+1)
	for _, kv := range env.Keys(t, "gone/") {
		if !stay[kv.Lease] && string(kv.Key) != string(writer.Key) {
			t.Fatalf("key %q of a waiter that gave up is left", kv.Key)
		}
	}
	if _, err := env.RWLocks.Unlock(ctx, &coordproxyv1.UnlockRequest{Key: writer.Key}); err != nil {
		t.Fatal(err)
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
	env.WaitKeys(t, "gone/", 0)
	proxytest.WaitFor(t, 10*time.Second, func() (bool, string) {
		w, g := proxytest.EtcdWatchers(t)-watchers0, runtime.NumGoroutine()-goroutines0
		return w <= 0 && g <= 2, fmt.Sprintf("%d etcd watchers and %d goroutines more than before the waiters", int(w), g)
	})
}

// A waiter whose lease ends is told its session expired, as etcd's Lock
// says, while the writer it waits for still holds.
func TestRWLock_waiterWhoseLeaseEndsIsToldAtOnce(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	ctx := proxytest.Ctx(t)
	writer, err := env.RWLocks.WLock(ctx, &coordproxyv1.RWLockRequest{Name: []byte("exp"), Lease: env.Grant(t, 60)})
	if err != nil {
		t.Fatal(err)
	}
	for _, write := range []bool{false, true} {
		lease := env.Grant(t, 60)
		c := proxytest.Go(func() error {
			f := env.RWLocks.RLock
			if write {
				f = env.RWLocks.WLock
			}
			_, err := f(ctx, &coordproxyv1.RWLockRequest{Name: []byte("exp"), Lease: lease})
			return err
		})
		env.WaitKeys(t, "exp/", 2)
		if _, err := env.KV.Revoke(ctx, clientv3.LeaseID(lease)); err != nil {
			t.Fatal(err)
		}
		if st := status.Convert(c.Wait(t)); st.Code() != codes.Unknown || st.Message() != concurrency.ErrSessionExpired.Error() {
			t.Fatalf("write=%v: %v, want Unknown %q", write, st.Err(), concurrency.ErrSessionExpired)
		}
	}
	if kvs := env.Keys(t, "exp/"); len(kvs) != 1 || string(kvs[0].Key) != string(writer.Key) {
		t.Fatalf("keys %v, want the writer's only", kvs)
	}
}

func TestRWLockService_invalidRequestsWriteNothing(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	ctx := proxytest.Ctx(t)
	lease := env.Grant(t, 60)
	for _, tc := range []struct {
		desc  string
		req   *coordproxyv1.RWLockRequest
		field string
	}{
		{"no name", &coordproxyv1.RWLockRequest{Lease: lease}, `"name"`},
		{"lease 0", &coordproxyv1.RWLockRequest{Name: []byte("v")}, `"lease"`},
	} {
		for _, f := range []func(context.Context, *coordproxyv1.RWLockRequest, ...grpc.CallOption) (*coordproxyv1.Held, error){env.RWLocks.RLock, env.RWLocks.WLock} {
			_, err := f(ctx, tc.req)
			if st := status.Convert(err); st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), tc.field) {
				t.Fatalf("%s: got %v, want InvalidArgument naming %s", tc.desc, err, tc.field)
			}
		}
	}
	if kvs := env.Keys(t, ""); len(kvs) != 0 {
		t.Fatalf("keys written: %v", kvs)
	}
}

// Unlock deletes only keys of the recipe's form that are attached to a
// lease; anything else is InvalidArgument and stays.
func TestRWLockUnlock_refusesKeysThatAreNotReadWriteLockKeys(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	ctx := proxytest.Ctx(t)
	lease := env.Grant(t, 60)
	for _, key := range []string{"config", "rw/read/123", "rw/read/abc", "rw/reader/1", "rw/write/12x"} {
		if _, err := env.KV.Put(ctx, key, ""); err != nil {
			t.Fatal(err)
		}
	}
	for _, key := range []string{"", "config", "rw/read/123", "rw/read/abc", "rw/read/", "rw/reader/1", "rw/write/12x", "rw/1"} {
		_, err := env.RWLocks.Unlock(ctx, &coordproxyv1.UnlockRequest{Key: []byte(key)})
		if st := status.Convert(err); st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), `"key"`) {
			t.Errorf("Unlock(%q) = %v, want InvalidArgument naming the key field", key, err)
		}
	}
	if n := len(env.Keys(t, "")); n != 5 {
		t.Fatalf("%d keys left, want all 5", n)
	}
	// A reader's key is deleted; one already gone is success.
	h, err := env.RWLocks.RLock(ctx, &coordproxyv1.RWLockRequest{Name: []byte("ok"), Lease: lease})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(h.Key), "ok/read/") {
		t.Fatalf("reader's key %q, want the recipe's ok/read/<number>", h.Key)
	}
	for range 2 {
		if _, err := env.RWLocks.Unlock(ctx, &coordproxyv1.UnlockRequest{Key: h.Key}); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(env.Keys(t, "")); n != 5 {
		t.Fatalf("%d keys, want the 5 put by the test", n)
	}
}
