package lockproxy_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/coordproxy/coordproxy/keyspace"
	coordproxyv1 "github.com/coordproxy/coordproxy/proto/coordproxy/v1"
	"github.com/coordproxy/coordproxy/proxy"
	"github.com/coordproxy/coordproxy/proxy/proxytest"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3lock/v3lockpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// contended returns the holder a TryLock refusal names, failing unless err
// is that refusal.
func contended(t *testing.T, err error) *coordproxyv1.Key {
	t.Helper()
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.FailedPrecondition {
		t.Fatalf("TryLock: %v, want FailedPrecondition", err)
	}
	for _, d := range st.Details() {
		if c, ok := d.(*coordproxyv1.Contended); ok {
			return c.Holder
		}
	}
	t.Fatalf("TryLock refusal %v has no Contended detail", err)
	return nil
}

func TestTryLock_grantsAFreeLockAndRefusesAHeldOneWithoutWriting(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	ctx := proxytest.Ctx(t)
	a, b := env.Grant(t, 30), env.Grant(t, 30)

	got, err := env.Locks.TryLock(ctx, &coordproxyv1.LockRequest{Name: []byte("try"), Lease: a})
	if err != nil {
		t.Fatal(err)
	}
	keys := env.Keys(t, "try/")
	if len(keys) != 1 || string(keys[0].Key) != string(got.Key) || keys[0].CreateRevision != got.FencingToken || got.Lease != a {
		t.Fatalf("granted %v; keys %v", got, keys)
	}
	if want := keyspace.OwnerKey("try", clientv3.LeaseID(a)); string(got.Key) != want {
		t.Fatalf("key %q, want concurrency's %q", got.Key, want)
	}

	// Another lease is refused, told who holds it, and leaves nothing.
	_, err = env.Locks.TryLock(ctx, &coordproxyv1.LockRequest{Name: []byte("try"), Lease: b})
	h := contended(t, err)
	if string(h.Key) != string(got.Key) || h.Lease != a || h.CreateRevision != got.FencingToken || h.Ttl <= 0 || h.Ttl > 30 || h.GrantedTtl != 30 {
		t.Fatalf("holder %v, want %q of lease %x with a TTL", h, got.Key, a)
	}
	if keys := env.Keys(t, "try/"); len(keys) != 1 {
		t.Fatalf("a refused TryLock left keys: %v", keys)
	}

	// The holder's lease asking again holds it still (re-entrant, as Mutex).
	again, err := env.Locks.TryLock(ctx, &coordproxyv1.LockRequest{Name: []byte("try"), Lease: a})
	if err != nil || again.FencingToken != got.FencingToken {
		t.Fatalf("TryLock by the holder's lease: %v, %v", again, err)
	}

	// A waiter behind the holder: TryLock is refused while either is there,
	// and the waiter's key is not touched.
	waiter := proxytest.Go(func() error {
		_, err := env.Locks.Lock(ctx, &coordproxyv1.LockRequest{Name: []byte("try"), Lease: b})
		return err
	})
	env.WaitKeys(t, "try/", 2)
	c := env.Grant(t, 30)
	_, err = env.Locks.TryLock(ctx, &coordproxyv1.LockRequest{Name: []byte("try"), Lease: c})
	contended(t, err)
	if keys := env.Keys(t, "try/"); len(keys) != 2 {
		t.Fatalf("keys %v, want the holder's and the waiter's", keys)
	}
	if _, err := env.Locks.Unlock(ctx, &coordproxyv1.UnlockRequest{Key: got.Key}); err != nil {
		t.Fatal(err)
	}
	if err := waiter.Wait(t); err != nil {
		t.Fatal(err)
	}
	_, err = env.Locks.TryLock(ctx, &coordproxyv1.LockRequest{Name: []byte("try"), Lease: c})
	if h := contended(t, err); h.Lease != b {
		t.Fatalf("holder %v, want the former waiter's lease %x", h, b)
	}
}

func TestTryLock_excludesConcurrencyMutexBothWays(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	ctx := proxytest.Ctx(t)
	sess, err := concurrency.NewSession(env.KV, concurrency.WithTTL(30))
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()

	m := concurrency.NewMutex(sess, "trymix")
	if err := m.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	_, err = env.Locks.TryLock(ctx, &coordproxyv1.LockRequest{Name: []byte("trymix"), Lease: env.Grant(t, 30)})
	if h := contended(t, err); string(h.Key) != m.Key() {
		t.Fatalf("holder %q, want the mutex's %q", h.Key, m.Key())
	}
	if err := m.Unlock(ctx); err != nil {
		t.Fatal(err)
	}

	got, err := env.Locks.TryLock(ctx, &coordproxyv1.LockRequest{Name: []byte("trymix"), Lease: env.Grant(t, 30)})
	if err != nil {
		t.Fatal(err)
	}
	if err := concurrency.NewMutex(sess, "trymix").TryLock(ctx); !errors.Is(err, concurrency.ErrLocked) {
		t.Fatalf("Mutex.TryLock while the proxy's TryLock holds: %v, want ErrLocked", err)
	}
	// etcd's own Lock waits behind it too.
	if _, err := env.Locks.Unlock(ctx, &coordproxyv1.UnlockRequest{Key: got.Key}); err != nil {
		t.Fatal(err)
	}
}

// Many TryLocks at once on a free name: exactly one wins each round, and
// the losers leave no key.
func TestTryLock_concurrentAttemptsGrantExactlyOne(t *testing.T) {
	const clients, rounds = 16, 5
	env := proxytest.New(t, proxy.Config{})
	ctx := proxytest.Ctx(t)
	leases := make([]int64, clients)
	for i := range leases {
		leases[i] = env.Grant(t, 60)
	}
	for r := range rounds {
		name := fmt.Sprintf("race%d", r)
		var won atomic.Int32
		var winner atomic.Value
		var wg sync.WaitGroup
		errs := make(chan error, clients)
		for i := range clients {
			wg.Go(func() {
				h, err := env.Locks.TryLock(ctx, &coordproxyv1.LockRequest{Name: []byte(name), Lease: leases[i]})
				if err == nil {
					won.Add(1)
					winner.Store(string(h.Key))
					return
				}
				if status.Code(err) != codes.FailedPrecondition {
					errs <- err
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		keys := env.Keys(t, name+"/")
		if won.Load() != 1 || len(keys) != 1 || string(keys[0].Key) != winner.Load() {
			t.Fatalf("round %d: %d winners, keys %v", r, won.Load(), keys)
		}
	}
}

func TestLockService_invalidRequestsWriteNothing(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	ctx := proxytest.Ctx(t)
	lease := env.Grant(t, 30)
	before := env.Keys(t, "")
	for _, tc := range []struct {
		name string
		call func() error
		code codes.Code
	}{
		{"TryLock without a name", func() error {
			_, err := env.Locks.TryLock(ctx, &coordproxyv1.LockRequest{Lease: lease})
			return err
		}, codes.InvalidArgument},
		{"TryLock without a lease", func() error {
			_, err := env.Locks.TryLock(ctx, &coordproxyv1.LockRequest{Name: []byte("v")})
			return err
		}, codes.InvalidArgument},
		{"Lock without a lease", func() error {
			_, err := env.Locks.Lock(ctx, &coordproxyv1.LockRequest{Name: []byte("v")})
			return err
		}, codes.InvalidArgument},
		{"Lock without a name", func() error {
			_, err := env.Locks.Lock(ctx, &coordproxyv1.LockRequest{Lease: lease})
			return err
		}, codes.InvalidArgument},
		{"TryLock with a lease etcd does not have", func() error {
			_, err := env.Locks.TryLock(ctx, &coordproxyv1.LockRequest{Name: []byte("v"), Lease: 0x7777})
			return err
		}, codes.NotFound},
		{"Unlock of a key that is not an ownership key", func() error {
			_, err := env.Locks.Unlock(ctx, &coordproxyv1.UnlockRequest{Key: []byte("v/not-a-lease")})
			return err
		}, codes.InvalidArgument},
		{"Describe without a name", func() error {
			_, err := env.Locks.Describe(ctx, &coordproxyv1.DescribeRequest{})
			return err
		}, codes.InvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.call(); status.Code(err) != tc.code {
				t.Fatalf("%v, want %v", err, tc.code)
			}
		})
	}
	if after := env.Keys(t, ""); len(after) != len(before) {
		t.Fatalf("keys before %d, after %d", len(before), len(after))
	}
}

// The fencing token is the ownership key's create revision: it grows with
// every grant, through the new Lock, TryLock and etcd's Lock alike.
func TestLock_fencingTokensGrowWithEveryGrant(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	ctx := proxytest.Ctx(t)
	leases := []int64{env.Grant(t, 30), env.Grant(t, 30)}
	var last int64
	for i := range 6 {
		lease := leases[i%2]
		var key []byte
		var token int64
		switch i % 3 {
		case 0:
			h, err := env.Locks.Lock(ctx, &coordproxyv1.LockRequest{Name: []byte("fence"), Lease: lease})
			if err != nil {
				t.Fatal(err)
			}
			key, token = h.Key, h.FencingToken
		case 1:
			h, err := env.Locks.TryLock(ctx, &coordproxyv1.LockRequest{Name: []byte("fence"), Lease: lease})
			if err != nil {
				t.Fatal(err)
			}
			key, token = h.Key, h.FencingToken
		case 2:
			r, err := env.Lock.Lock(ctx, &v3lockpb.LockRequest{Name: []byte("fence"), Lease: lease})
			if err != nil {
				t.Fatal(err)
			}
			kv := env.Keys(t, string(r.Key))
			key, token = r.Key, kv[0].CreateRevision
		}
		if kv := env.Keys(t, string(key)); len(kv) != 1 || kv[0].CreateRevision != token {
			t.Fatalf("grant %d: token %d, key %v", i, token, kv)
		}
		if token <= last {
			t.Fatalf("grant %d: token %d after %d", i, token, last)
		}
		last = token
		if _, err := env.Locks.Unlock(ctx, &coordproxyv1.UnlockRequest{Key: key}); err != nil {
			t.Fatal(err)
		}
	}
}

// 16 clients take turns through the fenced Lock; each writes only if the
// token it was given is still the lock key's create revision.
func TestLock_fencedMutualExclusion(t *testing.T) {
	const workers, rounds = 16, 6
	env := proxytest.New(t, proxy.Config{})
	ctx := proxytest.Ctx(t)
	f := proxytest.NewFence(env.KV, "fenced-counter", 1)
	var wg sync.WaitGroup
	errc := make(chan error, workers)
	for range workers {
		lease := env.Grant(t, 60)
		wg.Go(func() {
			for range rounds {
				h, err := env.Locks.Lock(ctx, &coordproxyv1.LockRequest{Name: []byte("fenced"), Lease: lease})
				if err == nil {
					err = f.Critical(ctx, string(h.Key))
				}
				if err == nil {
					_, err = env.Locks.Unlock(ctx, &coordproxyv1.UnlockRequest{Key: h.Key})
				}
				if err != nil {
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
	if kvs := env.Keys(t, "fenced/"); len(kvs) != 0 {
		t.Fatalf("%d keys left", len(kvs))
	}
}

func TestLockDescribe_holderWithTTLAndWaitersInOrder(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	ctx := proxytest.Ctx(t)

	d, err := env.Locks.Describe(ctx, &coordproxyv1.DescribeRequest{Name: []byte("desc")})
	if err != nil || d.Holder != nil || len(d.Waiters) != 0 || d.Waiting != 0 || d.Header.GetRevision() == 0 {
		t.Fatalf("free lock: %v, %v", d, err)
	}

	holder := env.Grant(t, 40)
	h, err := env.Locks.Lock(ctx, &coordproxyv1.LockRequest{Name: []byte("desc"), Lease: holder})
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithCancel(ctx)
	var waiters []*proxytest.Call
	var leases []int64
	for i := range 3 {
		lease := env.Grant(t, 40)
		leases = append(leases, lease)
		waiters = append(waiters, proxytest.Go(func() error {
			_, err := env.Locks.Lock(wctx, &coordproxyv1.LockRequest{Name: []byte("desc"), Lease: lease})
			return err
		}))
		env.WaitKeys(t, "desc/", i+2) // one at a time: their order is known
	}
	defer func() {
		cancel()
		for _, w := range waiters {
			w.Wait(t)
		}
	}()

	d, err = env.Locks.Describe(ctx, &coordproxyv1.DescribeRequest{Name: []byte("desc")})
	if err != nil {
		t.Fatal(err)
	}
	if d.Holder == nil || string(d.Holder.Key) != string(h.Key) || d.Holder.CreateRevision != h.FencingToken ||
		d.Holder.Lease != holder || d.Holder.Ttl <= 0 || d.Holder.Ttl > 40 || d.Holder.GrantedTtl != 40 {
		t.Fatalf("holder %v, want %q with its lease's TTL", d.Holder, h.Key)
	}
	if len(d.Waiters) != 3 || d.Waiting != 3 {
		t.Fatalf("waiters %v, waiting %d; want 3", d.Waiters, d.Waiting)
	}
	for i, w := range d.Waiters {
		if w.Lease != leases[i] || w.Ttl != 0 || (i > 0 && w.CreateRevision <= d.Waiters[i-1].CreateRevision) {
			t.Fatalf("waiter %d: %v, want lease %x in create order", i, w, leases[i])
		}
	}

	d, err = env.Locks.Describe(ctx, &coordproxyv1.DescribeRequest{Name: []byte("desc"), Limit: 1})
	if err != nil || len(d.Waiters) != 1 || d.Waiters[0].Lease != leases[0] || d.Waiting != 3 {
		t.Fatalf("limit 1: %v, %v; want the first waiter and a count of 3", d, err)
	}

	// A holder whose lease is revoked is gone, and the first waiter holds.
	if _, err := env.KV.Revoke(ctx, clientv3.LeaseID(holder)); err != nil {
		t.Fatal(err)
	}
	if err := waiters[0].Wait(t); err != nil {
		t.Fatal(err)
	}
	d, err = env.Locks.Describe(ctx, &coordproxyv1.DescribeRequest{Name: []byte("desc")})
	if err != nil || d.Holder.GetLease() != leases[0] || d.Waiting != 2 {
		t.Fatalf("after the holder's lease ended: %v, %v", d, err)
	}
}
