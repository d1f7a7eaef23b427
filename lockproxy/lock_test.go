package lockproxy_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coordproxy/coordproxy/keyspace"
	"github.com/coordproxy/coordproxy/proxy"
	"github.com/coordproxy/coordproxy/proxy/proxytest"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3lock/v3lockpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestLock_excludesConcurrencyMutexBothWays(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	ctx := proxytest.Ctx(t)
	sess, err := concurrency.NewSession(env.KV, concurrency.WithTTL(30))
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()

	t.Run("proxy holds, mutex waits", func(t *testing.T) {
		held := env.MustLock(t, "interop1", env.Grant(t, 30))
		m := concurrency.NewMutex(sess, "interop1")
		if err := m.TryLock(ctx); !errors.Is(err, concurrency.ErrLocked) {
			t.Fatalf("TryLock while the proxy holds: %v, want ErrLocked", err)
		}
		c := proxytest.Go(func() error { return m.Lock(ctx) })
		env.WaitKeys(t, "interop1/", 2)
		if c.Returned() {
			t.Fatalf("mutex locked while the proxy holds: %v", c.Err())
		}
		env.MustUnlock(t, held.Key)
		if err := c.Wait(t); err != nil {
			t.Fatal(err)
		}
		if err := m.Unlock(ctx); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("mutex holds, proxy waits", func(t *testing.T) {
		m := concurrency.NewMutex(sess, "interop2")
		if err := m.Lock(ctx); err != nil {
			t.Fatal(err)
		}
		lease := env.Grant(t, 30)
		var got *v3lockpb.LockResponse
		c := proxytest.Go(func() (err error) {
			got, err = env.Lock.Lock(ctx, &v3lockpb.LockRequest{Name: []byte("interop2"), Lease: lease})
			return err
		})
		env.WaitKeys(t, "interop2/", 2)
		if c.Returned() {
			t.Fatalf("proxy locked while the mutex holds: %v", c.Err())
		}
		if err := m.Unlock(ctx); err != nil {
			t.Fatal(err)
		}
		if err := c.Wait(t); err != nil {
			t.Fatal(err)
		}
		if want := keyspace.OwnerKey("interop2", clientv3.LeaseID(lease)); string(got.Key) != want {
			t.Fatalf("key %q, want %q", got.Key, want)
		}
	})

	t.Run("same lease, same key as concurrency", func(t *testing.T) {
		m := concurrency.NewMutex(sess, "interop3")
		if err := m.Lock(ctx); err != nil {
			t.Fatal(err)
		}
		// Locking with the lease that already holds is the same acquisition.
		got := env.MustLock(t, "interop3", int64(sess.Lease()))
		if string(got.Key) != m.Key() {
			t.Fatalf("proxy key %q, concurrency key %q", got.Key, m.Key())
		}
		env.MustUnlock(t, got.Key)
	})
}

func TestLock_mutualExclusionWithFencedWrites(t *testing.T) {
	const workers, rounds = 16, 8
	env := proxytest.New(t, proxy.Config{})
	ctx := proxytest.Ctx(t)
	f := proxytest.NewFence(env.KV, "mutex-counter", 1)
	var wg sync.WaitGroup
	errc := make(chan error, workers)
	for range workers {
		lease := env.Grant(t, 60)
		wg.Go(func() {
			for range rounds {
				resp, err := env.Lock.Lock(ctx, &v3lockpb.LockRequest{Name: []byte("mutex"), Lease: lease})
				if err != nil {
					errc <- err
					return
				}
				if err := f.Critical(ctx, string(resp.Key)); err != nil {
					errc <- err
					return
				}
				if _, err := env.Lock.Unlock(ctx, &v3lockpb.UnlockRequest{Key: resp.Key}); err != nil {
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
	f.Check(t, workers*rounds)
	if kvs := env.Keys(t, "mutex/"); len(kvs) != 0 {
		t.Fatalf("%d keys left under mutex/", len(kvs))
	}
}

func TestLock_mutualExclusionMixedWithConcurrencyMutex(t *testing.T) {
	const workers, rounds = 16, 6
	env := proxytest.New(t, proxy.Config{})
	ctx := proxytest.Ctx(t)
	f := proxytest.NewFence(env.KV, "mixed-counter", 1)
	var wg sync.WaitGroup
	errc := make(chan error, workers)
	for i := range workers {
		if i%2 == 0 {
			lease := env.Grant(t, 60)
			wg.Go(func() {
				for range rounds {
					resp, err := env.Lock.Lock(ctx, &v3lockpb.LockRequest{Name: []byte("mixed"), Lease: lease})
					if err == nil {
						err = f.Critical(ctx, string(resp.Key))
					}
					if err == nil {
						_, err = env.Lock.Unlock(ctx, &v3lockpb.UnlockRequest{Key: resp.Key})
					}
					if err != nil {
						errc <- err
						return
					}
				}
			})
			continue
		}
		sess, err := concurrency.NewSession(env.KV, concurrency.WithTTL(60))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { sess.Close() })
		wg.Go(func() {
			m := concurrency.NewMutex(sess, "mixed")
			for range rounds {
				if err := f.MutexRound(ctx, m); err != nil {
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
	f.Check(t, workers*rounds)
}

func TestLock_cancelledWaitersLeaveNoKeys(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	holder := env.MustLock(t, "gone", env.Grant(t, 60))
	const waiters = 20
	ctx, cancel := context.WithCancel(proxytest.Ctx(t))
	var calls []*proxytest.Call
	for i := range waiters {
		lease := env.Grant(t, 60)
		c := proxytest.Go(func() error {
			cctx := ctx
			if i%2 == 0 {
				// half give up by deadline, half by cancellation
				var dcancel context.CancelFunc
				cctx, dcancel = context.WithTimeout(ctx, 300*time.Millisecond)
				defer dcancel()
			}
			_, err := env.Lock.Lock(cctx, &v3lockpb.LockRequest{Name: []byte("gone"), Lease: lease})
			return err
		})
		calls = append(calls, c)
	}
	env.WaitKeys(t, "gone/", waiters+1)
	cancel()
	for _, c := range calls {
		if code := status.Code(c.Wait(t)); code != codes.Canceled && code != codes.DeadlineExceeded {
			t.Fatalf("waiter ended with %v, want Canceled or DeadlineExceeded", c.Err())
		}
	}
	// A cancelled call returns to the client at once; the proxy removes the
	// key within its request timeout.
	env.WaitKeys(t, "gone/", 1)
	kvs := env.Keys(t, "gone/")
	if len(kvs) != 1 || string(kvs[0].Key) != string(holder.Key) {
		t.Fatalf("keys left: %v, want only the holder's %q", kvs, holder.Key)
	}
}

func TestLock_waiterWhoseLeaseEndsIsToldAtOnce(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	ctx := proxytest.Ctx(t)
	holder := env.MustLock(t, "expire", env.Grant(t, 60))
	lease := env.Grant(t, 60)
	c := proxytest.Go(func() error {
		_, err := env.Lock.Lock(ctx, &v3lockpb.LockRequest{Name: []byte("expire"), Lease: lease})
		return err
	})
	env.WaitKeys(t, "expire/", 2)
	if _, err := env.KV.Revoke(ctx, clientv3.LeaseID(lease)); err != nil {
		t.Fatal(err)
	}
	// etcd's Lock keeps waiting until the holder goes and only then says
	// the session expired; the proxy answers while the holder still holds.
	err := c.Wait(t)
	if st := status.Convert(err); st.Code() != codes.Unknown || st.Message() != concurrency.ErrSessionExpired.Error() {
		t.Fatalf("got %v, want Unknown %q", err, concurrency.ErrSessionExpired)
	}
	if kvs := env.Keys(t, "expire/"); len(kvs) != 1 || string(kvs[0].Key) != string(holder.Key) {
		t.Fatalf("keys: %v, want the holder's only", kvs)
	}
}

func TestUnlock_refusesKeysThatAreNotOwnershipKeys(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	ctx := proxytest.Ctx(t)
	lease := env.Grant(t, 60)
	other := env.Grant(t, 60)
	put := func(key string, lease int64) {
		if _, err := env.KV.Put(ctx, key, "data", clientv3.WithLease(clientv3.LeaseID(lease))); err != nil {
			t.Fatal(err)
		}
	}
	hexOf := func(l int64) string { return strconv.FormatInt(l, 16) }
	put("config", 0)
	put("app/settings", 0)
	put("app/abc", 0)                                // looks like an ownership key, has no lease
	put("app/"+hexOf(lease), other)                  // named after one lease, attached to another
	put("app/"+strings.ToUpper(hexOf(lease)), lease) // not the form concurrency writes

	for _, key := range []string{"config", "app/settings", "app/abc", "app/" + hexOf(lease), "app/" + strings.ToUpper(hexOf(lease)), "app/0"} {
		_, err := env.Lock.Unlock(ctx, &v3lockpb.UnlockRequest{Key: []byte(key)})
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), `"key"`) {
			t.Errorf("Unlock(%q) = %v, want InvalidArgument naming the key field", key, err)
		}
	}
	if n := len(env.Keys(t, "app/")) + len(env.Keys(t, "config")); n != 5 {
		t.Fatalf("%d keys left, want all 5: Unlock must not delete what it refuses", n)
	}
}

func TestLock_emptyNameIsInvalidArgument(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	_, err := env.Lock.Lock(proxytest.Ctx(t), &v3lockpb.LockRequest{Lease: env.Grant(t, 60)})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), `"name"`) {
		t.Fatalf("got %v, want InvalidArgument naming the name field", err)
	}
	if kvs := env.Keys(t, "/"); len(kvs) != 0 {
		t.Fatalf("keys left: %v", kvs)
	}
}

func TestLock_lease0IsCountedAndLoggedOncePerName(t *testing.T) {
	var logs syncBuffer
	env := proxytest.New(t, proxy.Config{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	for i := range 3 {
		resp := env.MustLock(t, fmt.Sprintf("zero%d", i%2), 0)
		env.MustUnlock(t, resp.Key)
	}
	got := env.Metric(t, "coordproxy_lease_zero_calls_total", map[string]string{"rpc": "Lock"})
	if got != 3 {
		t.Fatalf("lease-0 Lock calls counted %v, want 3", got)
	}
	if n := strings.Count(logs.String(), "Lock with lease 0"); n != 2 {
		t.Fatalf("logged %d times, want once per name (2):\n%s", n, logs.String())
	}
}

func TestLock_waiterKeyRemovedAfterEtcdComesBack(t *testing.T) {
	// The client gives up while etcd cannot be reached: the proxy cannot
	// delete the waiter key then, and must do it once etcd is back, on its
	// own.
	etcd := proxytest.StartEtcd(t)
	fault, url := proxytest.FaultProxy(t, etcd.URL)
	env := proxytest.NewProxyEnv(t, etcd, url, proxy.Config{RequestTimeout: 500 * time.Millisecond})
	holder := env.MustLock(t, "outage", env.Grant(t, 600))
	lease := env.Grant(t, 600)
	ctx, cancel := context.WithCancel(proxytest.Ctx(t))
	c := proxytest.Go(func() error {
		_, err := env.Lock.Lock(ctx, &v3lockpb.LockRequest{Name: []byte("outage"), Lease: lease})
		return err
	})
	env.WaitKeys(t, "outage/", 2)
	fault.PauseTx()
	fault.PauseRx()
	proxytest.WaitCutOff(t, env.Proxy.Client())
	cancel()
	if code := status.Code(c.Wait(t)); code != codes.Canceled {
		t.Fatalf("waiter ended with %v, want Canceled", c.Err())
	}
	proxytest.WaitFor(t, 30*time.Second, func() (bool, string) {
		n := env.Metric(t, "coordproxy_waiter_cleanups_total", map[string]string{"result": "failed"})
		return n > 0, "no failed cleanup attempt while etcd was cut off"
	})
	if kvs := env.Keys(t, "outage/"); len(kvs) != 2 {
		t.Fatalf("%d keys while cut off, want 2", len(kvs))
	}
	fault.UnpauseTx()
	fault.UnpauseRx()
	env.WaitKeys(t, "outage/", 1)
	if kvs := env.Keys(t, "outage/"); string(kvs[0].Key) != string(holder.Key) {
		t.Fatalf("left %q, want the holder's %q", kvs[0].Key, holder.Key)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
