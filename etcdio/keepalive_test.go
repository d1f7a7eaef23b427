package etcdio_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/coordproxy/coordproxy/etcdio"
	"github.com/coordproxy/coordproxy/proxy/proxytest"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// aliveBefore asks etcd whether lease lives (a TTL of 0 is less than a
// second left, -1 gone); answered is true when the answer came before
// before, so that it tells the lease's state at a time before it (etcd
// answered between the send and the arrival).
func aliveBefore(t *testing.T, kv *clientv3.Client, lease clientv3.LeaseID, before time.Time) (alive, answered bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ttl, err := kv.TimeToLive(ctx, lease)
	if err != nil {
		t.Fatal(err)
	}
	return ttl.TTL >= 0, time.Now().Before(before)
}

// A kept lease outlives its TTL, and its Expiry is a lower bound: after the
// keep-alives stop, etcd has the lease at every moment before Expiry, and
// lets it expire after.
func TestKeepLease_keepsTheLeaseAndItsExpiryIsALowerBound(t *testing.T) {
	e, kv, _ := dial(t)
	ctx := proxytest.Ctx(t)
	sent := time.Now()
	g, err := kv.Grant(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	k := e.KeepLease(ctx, g.ID, g.TTL, sent.Add(2*time.Second))
	// Three TTLs: refreshed all along.
	for range 6 {
		select {
		case <-k.Refreshed():
		case <-k.Lost():
			t.Fatal("lost while kept")
		case <-time.After(10 * time.Second):
			t.Fatal("no refresh")
		}
	}
	if time.Since(sent) < 2*time.Second {
		<-k.Refreshed()
	}
	if alive, _ := aliveBefore(t, kv, g.ID, time.Now()); !alive {
		t.Fatal("the kept lease expired")
	}
	if k.TTL() != 2 {
		t.Fatalf("TTL %d, want 2", k.TTL())
	}
	k.Stop()
	expiry := k.Expiry()
	checked := 0
	for time.Now().Before(expiry) {
		alive, answered := aliveBefore(t, kv, g.ID, expiry)
		if answered {
			checked++
			if !alive {
				t.Fatalf("the lease expired before its Expiry (%s left)", time.Until(expiry))
			}
		}
	}
	if checked == 0 {
		t.Fatal("no answer came before the expiry: nothing was checked")
	}
	proxytest.WaitFor(t, 10*time.Second, func() (bool, string) {
		alive, _ := aliveBefore(t, kv, g.ID, time.Now())
		return !alive, "the lease outlived its TTL after Stop"
	})
}

// A lease revoked in etcd is lost at its next keep-alive; one kept through
// an etcd that stopped answering is lost when its Expiry passes, not before.
func TestKeepLease_isLostWhenRevokedOrWhenItsExpiryPassesUnanswered(t *testing.T) {
	t.Run("revoked", func(t *testing.T) {
		e, kv, _ := dial(t)
		ctx := proxytest.Ctx(t)
		g, err := kv.Grant(ctx, 3)
		if err != nil {
			t.Fatal(err)
		}
		k := e.KeepLease(ctx, g.ID, g.TTL, time.Now())
		<-k.Refreshed()
		if _, err := kv.Revoke(ctx, g.ID); err != nil {
			t.Fatal(err)
		}
		select {
		case <-k.Lost():
		case <-time.After(10 * time.Second):
			t.Fatal("a revoked lease was not lost")
		}
	})
	t.Run("unanswered", func(t *testing.T) {
		etcd := proxytest.StartEtcd(t)
		fp, url := proxytest.FaultProxy(t, etcd.URL)
		e, err := etcdio.Dial(context.Background(), etcdio.Config{Endpoints: []string{url}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(e.Close)
		kv := proxytest.Client(t, etcd.URL)
		ctx := proxytest.Ctx(t)
		sent := time.Now()
		g, err := kv.Grant(ctx, 2)
		if err != nil {
			t.Fatal(err)
		}
		k := e.KeepLease(ctx, g.ID, g.TTL, sent.Add(2*time.Second))
		<-k.Refreshed()
		fp.PauseTx()
		fp.PauseRx()
		defer func() { fp.UnpauseTx(); fp.UnpauseRx() }()
		select {
		case <-k.Lost():
		case <-time.After(10 * time.Second):
			t.Fatal("a lease kept through a cut-off etcd was not lost")
		}
		if now := time.Now(); now.Before(k.Expiry()) {
			t.Fatalf("lost %s before its expiry", k.Expiry().Sub(now))
		}
	})
}

// A lease kept with nothing known of it is Known once etcd answers its
// first keep-alive, with the TTL etcd gives; a lease that is gone is not.
func TestKeepLease_knownFromTheFirstAnswer(t *testing.T) {
	e, kv, _ := dial(t)
	ctx := proxytest.Ctx(t)
	g, err := kv.Grant(ctx, 30)
	if err != nil {
		t.Fatal(err)
	}
	sent := time.Now()
	k := e.KeepLease(ctx, g.ID, 0, time.Time{})
	if !k.Expiry().IsZero() {
		t.Fatalf("expiry %v before any answer", k.Expiry())
	}
	if err := k.Known(ctx); err != nil {
		t.Fatal(err)
	}
	if k.TTL() != 30 || k.Expiry().Before(sent.Add(30*time.Second)) || k.Expiry().After(time.Now().Add(30*time.Second)) {
		t.Fatalf("TTL %d, expiry in %s", k.TTL(), time.Until(k.Expiry()))
	}
	k.Stop()
	gone := e.KeepLease(ctx, clientv3.LeaseID(0x7fff0001), 0, time.Time{})
	if err := gone.Known(ctx); !errors.Is(err, rpctypes.ErrGRPCLeaseNotFound) {
		t.Fatalf("a lease that is gone: %v, want lease not found", err)
	}
}
