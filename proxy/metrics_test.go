package proxy_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/coordproxy/coordproxy/proxy"
	"github.com/coordproxy/coordproxy/proxy/proxytest"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	epb "go.etcd.io/etcd/server/v3/etcdserver/api/v3election/v3electionpb"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3lock/v3lockpb"
	"google.golang.org/grpc/status"
)

func TestMetrics_etcdErrorsCountedByCode(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	ctx := proxytest.Ctx(t)
	notFound := map[string]string{"code": "NotFound"}
	before := env.Metric(t, "coordproxy_etcd_errors_total", notFound)
	_, err := env.Lock.Lock(ctx, &v3lockpb.LockRequest{Name: []byte("m"), Lease: 0x7e57})
	// etcd answered the proxy's transaction NotFound; the caller gets what
	// etcd's own Lock service answers, with etcd's text.
	if err == nil || !strings.Contains(status.Convert(err).Message(), rpctypes.ErrLeaseNotFound.Error()) {
		t.Fatalf("Lock with an unknown lease: %v; want %q", err, rpctypes.ErrLeaseNotFound)
	}
	if after := env.Metric(t, "coordproxy_etcd_errors_total", notFound); after <= before {
		t.Errorf("coordproxy_etcd_errors_total{code=NotFound} %v after etcd answered NotFound, was %v", after, before)
	}
	if ok := env.Metric(t, "coordproxy_etcd_errors_total", map[string]string{"code": "OK"}); ok != 0 {
		t.Errorf("successes counted as errors: %v", ok)
	}
}

func TestMetrics_waitersAndHoldersFollowTheQueue(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	ctx := proxytest.Ctx(t)
	gauge := func(name, service string) float64 {
		return env.Metric(t, "coordproxy_"+name, map[string]string{"service": service})
	}
	waitGauge := func(name, service string, want float64) {
		t.Helper()
		proxytest.WaitFor(t, 30*time.Second, func() (bool, string) {
			got := gauge(name, service)
			return got == want, name + "{service=" + service + "} is not what it should be"
		})
	}

	// Lock: a holder, a waiter, the hand-over by Unlock, the end by lease revocation.
	first, second := env.Grant(t, 600), env.Grant(t, 600)
	held, err := env.Lock.Lock(ctx, &v3lockpb.LockRequest{Name: []byte("m"), Lease: first})
	if err != nil {
		t.Fatal(err)
	}
	if h, w := gauge("holders", "lock"), gauge("waiters", "lock"); h != 1 || w != 0 {
		t.Fatalf("after one Lock: holders %v, waiters %v; want 1, 0", h, w)
	}
	waiter := make(chan error, 1)
	go func() {
		_, err := env.Lock.Lock(ctx, &v3lockpb.LockRequest{Name: []byte("m"), Lease: second})
		waiter <- err
	}()
	waitGauge("waiters", "lock", 1)
	if _, err := env.Lock.Unlock(ctx, &v3lockpb.UnlockRequest{Key: held.Key}); err != nil {
		t.Fatal(err)
	}
	if err := <-waiter; err != nil {
		t.Fatal(err)
	}
	if w := gauge("waiters", "lock"); w != 0 {
		t.Errorf("waiters %v after the waiter got the lock; want 0", w)
	}
	waitGauge("holders", "lock", 1)
	if _, err := env.Lease.LeaseRevoke(ctx, &pb.LeaseRevokeRequest{ID: second}); err != nil {
		t.Fatal(err)
	}
	waitGauge("holders", "lock", 0)

	// Election: a leader, a waiting candidate, Resign.
	l1, l2 := env.Grant(t, 600), env.Grant(t, 600)
	leader, err := env.Election.Campaign(ctx, &epb.CampaignRequest{Name: []byte("e"), Lease: l1, Value: []byte("a")})
	if err != nil {
		t.Fatal(err)
	}
	if h := gauge("holders", "election"); h != 1 {
		t.Fatalf("holders{election} %v after a Campaign; want 1", h)
	}
	candidate := make(chan *epb.CampaignResponse, 1)
	go func() {
		r, err := env.Election.Campaign(ctx, &epb.CampaignRequest{Name: []byte("e"), Lease: l2, Value: []byte("b")})
		if err != nil {
			t.Error(err)
		}
		candidate <- r
	}()
	waitGauge("waiters", "election", 1)
	if g := gauge("waiters", "lock"); g != 0 {
		t.Errorf("a waiting Campaign counted under service=lock: %v", g)
	}
	if _, err := env.Election.Resign(ctx, &epb.ResignRequest{Leader: leader.Leader}); err != nil {
		t.Fatal(err)
	}
	next := <-candidate
	if next == nil {
		t.FailNow()
	}
	waitGauge("waiters", "election", 0)
	waitGauge("holders", "election", 1)
	if _, err := env.Election.Resign(ctx, &epb.ResignRequest{Leader: next.Leader}); err != nil {
		t.Fatal(err)
	}
	waitGauge("holders", "election", 0)
}

// Held locks cost etcd no watcher: the holders gauge learns of releases
// through this proxy at once and of the others (straight at etcd, a lease
// revoked there) at its next check of the held keys.
func TestMetrics_holdersCostEtcdNoWatch(t *testing.T) {
	env := proxytest.New(t, proxy.Config{HoldCheck: 50 * time.Millisecond})
	ctx := proxytest.Ctx(t)
	holders := func() float64 { return env.Metric(t, "coordproxy_holders", map[string]string{"service": "lock"}) }
	watchers := proxytest.EtcdWatchers(t)

	const names = 50
	lease := env.Grant(t, 600)
	var keys [][]byte
	for i := range names {
		keys = append(keys, env.MustLock(t, fmt.Sprintf("held/%d", i), lease).Key)
	}
	if h := holders(); h != names {
		t.Fatalf("holders %v after %d Locks, want %d", h, names, names)
	}
	if w := proxytest.EtcdWatchers(t) - watchers; w != 0 {
		t.Fatalf("%v etcd watchers for %d held locks nobody waits for, want 0", w, names)
	}

	// Through this proxy: at once.
	env.MustUnlock(t, keys[0])
	if h := holders(); h != names-1 {
		t.Fatalf("holders %v right after an Unlock through the proxy, want %d", h, names-1)
	}
	// Straight at etcd: at the next check.
	if _, err := env.KV.Delete(ctx, string(keys[1])); err != nil {
		t.Fatal(err)
	}
	proxytest.WaitFor(t, 30*time.Second, func() (bool, string) {
		h := holders()
		return h == names-2, fmt.Sprintf("holders %v after a key was deleted at etcd, want %d", h, names-2)
	})
	// A lease revoked at etcd takes the rest.
	if _, err := env.KV.Revoke(ctx, clientv3.LeaseID(lease)); err != nil {
		t.Fatal(err)
	}
	proxytest.WaitFor(t, 30*time.Second, func() (bool, string) {
		h := holders()
		return h == 0, fmt.Sprintf("holders %v after their lease was revoked at etcd, want 0", h)
	})
	// A lease revoked through the proxy: at once.
	l2 := env.Grant(t, 600)
	env.MustLock(t, "held/again", l2)
	if _, err := env.Lease.LeaseRevoke(ctx, &pb.LeaseRevokeRequest{ID: l2}); err != nil {
		t.Fatal(err)
	}
	if h := holders(); h != 0 {
		t.Fatalf("holders %v right after LeaseRevoke through the proxy, want 0", h)
	}
	if w := proxytest.EtcdWatchers(t) - watchers; w != 0 {
		t.Fatalf("%v etcd watchers left, want 0", w)
	}
}
