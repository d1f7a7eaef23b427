package grant_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/coordproxy/coordproxy/etcdio"
	"github.com/coordproxy/coordproxy/grant"
	"github.com/coordproxy/coordproxy/keyspace"
	"github.com/coordproxy/coordproxy/proxy/proxytest"
	"github.com/coordproxy/coordproxy/queue"
	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Take's paths, each over a real etcd: granted at once, granted after the
// wait, the caller leaving while it waits, the key gone after the wait, and
// the proxy stopping under a waiter. Waits are observed through the waiters
// gauge and the keys in etcd, never by sleeping.

type takeEnv struct {
	g   *grant.Granter
	e   *etcdio.Etcd
	cli *clientv3.Client
	reg *prometheus.Registry
}

func newTakeEnv(t *testing.T) *takeEnv {
	t.Helper()
	etcd := proxytest.StartEtcd(t)
	reg := prometheus.NewRegistry()
	e, err := etcdio.Dial(context.Background(), etcdio.Config{Endpoints: []string{etcd.URL}, Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	g := grant.New(e, grant.Options{Metrics: grant.NewMetrics(reg), Logger: proxytest.Logger()})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		g.Close(ctx)
		e.Close()
	})
	return &takeEnv{g: g, e: e, cli: proxytest.Client(t, etcd.URL), reg: reg}
}

// claim puts name's key for a fresh lease, as a primitive's transaction
// does, and returns its claim; free says whether it holds at once.
func (te *takeEnv) claim(t *testing.T, name string) grant.Claim {
	t.Helper()
	ctx := proxytest.Ctx(t)
	l, err := te.cli.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	key := keyspace.OwnerKey(name, l.ID)
	put, err := te.cli.Put(ctx, key, "", clientv3.WithLease(l.ID))
	if err != nil {
		t.Fatal(err)
	}
	owner, err := te.cli.Get(ctx, keyspace.Prefix(name), clientv3.WithFirstCreate()...)
	if err != nil {
		t.Fatal(err)
	}
	return grant.Claim{Service: "lock", Name: name, Key: key, Rev: put.Header.Revision, Lease: l.ID,
		Header: put.Header, Created: true, Free: string(owner.Kvs[0].Key) == key}
}

func (te *takeEnv) metric(t *testing.T, name string) float64 {
	return proxytest.Gathered(t, te.reg, name, map[string]string{"service": "lock"})
}

// waiting waits until n calls wait in a queue.
func (te *takeEnv) waiting(t *testing.T, n float64) {
	t.Helper()
	proxytest.WaitFor(t, 10*time.Second, func() (bool, string) {
		got := te.metric(t, "coordproxy_waiters")
		return got == n, fmt.Sprintf("waiters gauge %v, want %v", got, n)
	})
}

func (te *takeEnv) exists(t *testing.T, key string) bool {
	t.Helper()
	resp, err := te.cli.Get(proxytest.Ctx(t), key)
	if err != nil {
		t.Fatal(err)
	}
	return len(resp.Kvs) == 1
}

func TestTake_grantedAtOnceIsHeldWithoutWaiting(t *testing.T) {
	te := newTakeEnv(t)
	c := te.claim(t, "once")
	if !c.Free {
		t.Fatal("the only key does not hold")
	}
	g, err := te.g.Take(proxytest.Ctx(t), c)
	if err != nil {
		t.Fatal(err)
	}
	if g.Key != c.Key || g.Rev != c.Rev || g.Header != c.Header {
		t.Fatalf("grant %+v for claim %+v", g, c)
	}
	if h := te.metric(t, "coordproxy_holders"); h != 1 {
		t.Fatalf("holders gauge %v, want 1", h)
	}
}

func TestTake_waitsForTheOlderKeyThenConfirms(t *testing.T) {
	te := newTakeEnv(t)
	first := te.claim(t, "wait")
	second := te.claim(t, "wait")
	if second.Free {
		t.Fatal("the second key holds at once")
	}
	call := proxytest.Go(func() error {
		g, err := te.g.Take(proxytest.Ctx(t), second)
		if err == nil && (g.Key != second.Key || g.Rev != second.Rev || g.Header.Revision <= first.Rev) {
			return errors.New("grant does not match its claim or predates the release")
		}
		return err
	})
	te.waiting(t, 1)
	if call.Returned() {
		t.Fatal("granted while the older key holds")
	}
	if _, err := te.cli.Delete(proxytest.Ctx(t), first.Key); err != nil {
		t.Fatal(err)
	}
	if err := call.Wait(t); err != nil {
		t.Fatal(err)
	}
	te.waiting(t, 0)
}

func TestTake_callerLeavingWhileWaitingRemovesItsKey(t *testing.T) {
	te := newTakeEnv(t)
	te.claim(t, "leave")
	waiter := te.claim(t, "leave")
	ctx, cancel := context.WithCancel(proxytest.Ctx(t))
	call := proxytest.Go(func() error { _, err := te.g.Take(ctx, waiter); return err })
	te.waiting(t, 1)
	cancel()
	if err := call.Wait(t); !errors.Is(err, context.Canceled) {
		t.Fatalf("Take of a caller that left: %v, want context.Canceled", err)
	}
	proxytest.WaitFor(t, 10*time.Second, func() (bool, string) {
		return !te.exists(t, waiter.Key), "the waiter's key is still there"
	})
}

func TestTake_keyGoneAfterTheWaitIsAnExpiredSession(t *testing.T) {
	te := newTakeEnv(t)
	c := te.claim(t, "gone")
	c.Free = false
	// The turn comes, and the key is gone by the time it is checked.
	c.Wait = func(ctx context.Context, stop <-chan struct{}, q *queue.Queue) error {
		_, err := te.cli.Delete(ctx, c.Key)
		return err
	}
	if _, err := te.g.Take(proxytest.Ctx(t), c); !errors.Is(err, grant.ErrSessionExpired) {
		t.Fatalf("Take after the key went: %v, want %v", err, grant.ErrSessionExpired)
	}
	if h := te.metric(t, "coordproxy_holders"); h != 0 {
		t.Fatalf("holders gauge %v: a key that is gone was counted", h)
	}
}

func TestTake_keyGoneWhileWaitingIsAnExpiredSession(t *testing.T) {
	te := newTakeEnv(t)
	te.claim(t, "revoked")
	waiter := te.claim(t, "revoked")
	call := proxytest.Go(func() error { _, err := te.g.Take(proxytest.Ctx(t), waiter); return err })
	te.waiting(t, 1)
	if _, err := te.cli.Revoke(proxytest.Ctx(t), waiter.Lease); err != nil {
		t.Fatal(err)
	}
	if err := call.Wait(t); !errors.Is(err, grant.ErrSessionExpired) {
		t.Fatalf("Take of a revoked waiter: %v, want %v", err, grant.ErrSessionExpired)
	}
}

func TestTake_stoppingEndsTheWaitAsAStoppingMemberAndRemovesTheKey(t *testing.T) {
	te := newTakeEnv(t)
	te.claim(t, "stop")
	waiter := te.claim(t, "stop")
	call := proxytest.Go(func() error { _, err := te.g.Take(proxytest.Ctx(t), waiter); return err })
	te.waiting(t, 1)
	te.e.Stop() // as the proxy's shutdown does: every wait ends first
	if err := call.Wait(t); !errors.Is(err, rpctypes.ErrGRPCStopped) {
		t.Fatalf("Take when the proxy stops: %v, want %v", err, rpctypes.ErrGRPCStopped)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	te.g.Close(ctx) // then the granter closes, letting the cleanups finish
	if te.exists(t, waiter.Key) {
		t.Fatal("the stopped waiter's key is still there")
	}
}
