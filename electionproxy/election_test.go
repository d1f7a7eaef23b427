package electionproxy_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/coordproxy/coordproxy/lease0"
	"github.com/coordproxy/coordproxy/proxy"
	"github.com/coordproxy/coordproxy/proxy/proxytest"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	epb "go.etcd.io/etcd/server/v3/etcdserver/api/v3election/v3electionpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

func campaign(t *testing.T, env *proxytest.Env, name string, lease int64, val string) *epb.LeaderKey {
	t.Helper()
	resp, err := env.Election.Campaign(proxytest.Ctx(t), &epb.CampaignRequest{Name: []byte(name), Lease: lease, Value: []byte(val)})
	if err != nil {
		t.Fatalf("campaign %q: %v", name, err)
	}
	return resp.Leader
}

type result struct {
	resp *epb.CampaignResponse
	err  error
}

func campaignAsync(ctx context.Context, env *proxytest.Env, name string, lease int64, val string) chan result {
	ch := make(chan result, 1)
	go func() {
		resp, err := env.Election.Campaign(ctx, &epb.CampaignRequest{Name: []byte(name), Lease: lease, Value: []byte(val)})
		ch <- result{resp, err}
	}()
	return ch
}

func wait(t *testing.T, ch chan result) result {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(30 * time.Second):
		t.Fatal("campaign did not return")
		return result{}
	}
}

func pending(ch chan result) bool { return len(ch) == 0 }

func leaderValue(t *testing.T, env *proxytest.Env, name string) string {
	t.Helper()
	resp, err := env.Election.Leader(proxytest.Ctx(t), &epb.LeaderRequest{Name: []byte(name)})
	if err != nil {
		t.Fatalf("leader %q: %v", name, err)
	}
	return string(resp.Kv.Value)
}

func TestCampaign_excludesConcurrencyElectionBothWays(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	ctx := proxytest.Ctx(t)
	sess, err := concurrency.NewSession(env.KV, concurrency.WithTTL(30))
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()

	t.Run("proxy leads, concurrency waits", func(t *testing.T) {
		lk := campaign(t, env, "interop1", env.Grant(t, 30), "proxy")
		e := concurrency.NewElection(sess, "interop1")
		done := make(chan error, 1)
		go func() { done <- e.Campaign(ctx, "client") }()
		env.WaitKeys(t, "interop1/", 2)
		if len(done) > 0 {
			t.Fatalf("concurrency.Election won while the proxy's candidate leads: %v", <-done)
		}
		if _, err := env.Election.Resign(ctx, &epb.ResignRequest{Leader: lk}); err != nil {
			t.Fatal(err)
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if got := leaderValue(t, env, "interop1"); got != "client" {
			t.Fatalf("leader %q, want client", got)
		}
		if err := e.Resign(ctx); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("concurrency leads, proxy waits", func(t *testing.T) {
		e := concurrency.NewElection(sess, "interop2")
		if err := e.Campaign(ctx, "client"); err != nil {
			t.Fatal(err)
		}
		ch := campaignAsync(ctx, env, "interop2", env.Grant(t, 30), "proxy")
		env.WaitKeys(t, "interop2/", 2)
		if !pending(ch) {
			t.Fatalf("proxy's candidate won while concurrency.Election leads: %+v", <-ch)
		}
		if err := e.Resign(ctx); err != nil {
			t.Fatal(err)
		}
		r := wait(t, ch)
		if r.err != nil {
			t.Fatal(r.err)
		}
		// concurrency.Election observes the proxy's leader.
		resp, err := e.Leader(ctx)
		if err != nil || string(resp.Kvs[0].Value) != "proxy" || string(resp.Kvs[0].Key) != string(r.resp.Leader.Key) {
			t.Fatalf("concurrency sees leader %v, %v; want the proxy's %q", resp, err, r.resp.Leader.Key)
		}
	})
}

func TestCampaign_candidateWhoseLeaseEndsIsNeverLeader(t *testing.T) {
	// etcd #19597: etcd's Campaign tells a candidate whose lease expired
	// while it waited that it is leader, once the leaders before it leave.
	env := proxytest.New(t, proxy.Config{})
	ctx := proxytest.Ctx(t)
	first := campaign(t, env, "e", env.Grant(t, 60), "first")
	lease := env.Grant(t, 60)
	ch := campaignAsync(ctx, env, "e", lease, "second")
	env.WaitKeys(t, "e/", 2)
	if _, err := env.KV.Revoke(ctx, clientv3.LeaseID(lease)); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Election.Resign(ctx, &epb.ResignRequest{Leader: first}); err != nil {
		t.Fatal(err)
	}
	r := wait(t, ch)
	if st := status.Convert(r.err); st.Code() != codes.Unknown || st.Message() != concurrency.ErrSessionExpired.Error() {
		t.Fatalf("got %+v, %v; want Unknown %q", r.resp, r.err, concurrency.ErrSessionExpired)
	}
	if _, err := env.Election.Leader(ctx, &epb.LeaderRequest{Name: []byte("e")}); status.Convert(err).Message() != "election: no leader" {
		t.Fatalf("Leader: %v, want election: no leader", err)
	}
}

func TestCampaign_failedByEtcdOutageLeavesNoKey(t *testing.T) {
	// etcd #21128: a Campaign that fails after creating its key leaks it.
	etcd := proxytest.StartEtcd(t)
	fault, url := proxytest.FaultProxy(t, etcd.URL)
	env := proxytest.NewProxyEnv(t, etcd, url, proxy.Config{RequestTimeout: 500 * time.Millisecond})
	campaign(t, env, "outage", env.Grant(t, 600), "leader")
	ctx, cancel := context.WithTimeout(proxytest.Ctx(t), 30*time.Second)
	defer cancel()
	cctx, ccancel := context.WithCancel(ctx)
	ch := campaignAsync(cctx, env, "outage", env.Grant(t, 600), "candidate")
	env.WaitKeys(t, "outage/", 2)
	fault.PauseTx()
	fault.PauseRx()
	proxytest.WaitCutOff(t, env.Proxy.Client())
	ccancel()
	if r := wait(t, ch); status.Code(r.err) != codes.Canceled {
		t.Fatalf("campaign ended with %v, want Canceled", r.err)
	}
	proxytest.WaitFor(t, 30*time.Second, func() (bool, string) {
		return env.Metric(t, "coordproxy_waiter_cleanups_total", map[string]string{"result": "failed"}) > 0,
			"no failed cleanup while etcd was cut off"
	})
	fault.UnpauseTx()
	fault.UnpauseRx()
	env.WaitKeys(t, "outage/", 1)
	if got := leaderValue(t, env, "outage"); got != "leader" {
		t.Fatalf("leader %q after cleanup, want the first candidate", got)
	}
}

func TestProclaim_refusesMalformedLeaderKeys(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	ctx := proxytest.Ctx(t)
	lease := env.Grant(t, 60)
	other := env.Grant(t, 60)
	lk := campaign(t, env, "e", lease, "v1")
	campaign(t, env, "f", other, "f1")
	with := func(f func(*epb.LeaderKey)) *epb.LeaderKey {
		c := proto.Clone(lk).(*epb.LeaderKey)
		f(c)
		return c
	}
	tests := []struct {
		name  string
		lk    *epb.LeaderKey
		field string
	}{
		// etcd proclaims onto the key whatever the name says.
		{"name of another election", with(func(k *epb.LeaderKey) { k.Name = []byte("f") }), `"leader.key"`},
		{"empty name", with(func(k *epb.LeaderKey) { k.Name = nil }), `"leader.name"`},
		// etcd moves the leader key onto the named lease.
		{"another lease", with(func(k *epb.LeaderKey) { k.Lease = other }), `"leader.lease"`},
		// etcd creates the key: a compare on revision 0 holds for a missing key.
		{"rev 0 and a key that does not exist", with(func(k *epb.LeaderKey) { k.Key = []byte("e/abc"); k.Lease = 0xabc; k.Rev = 0 }), `"leader.rev"`},
		{"key not of the name/lease form", with(func(k *epb.LeaderKey) { k.Key = []byte("e/leader") }), `"leader.key"`},
		{"key outside the election", with(func(k *epb.LeaderKey) { k.Key = []byte("config") }), `"leader.key"`},
	}
	before := env.Keys(t, "")
	for _, tt := range tests {
		for _, rpc := range []string{"Proclaim", "Resign"} {
			var err error
			if rpc == "Proclaim" {
				_, err = env.Election.Proclaim(ctx, &epb.ProclaimRequest{Leader: tt.lk, Value: []byte("forged")})
			} else {
				_, err = env.Election.Resign(ctx, &epb.ResignRequest{Leader: tt.lk})
			}
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tt.field) {
				t.Errorf("%s with %s: %v, want InvalidArgument naming %s", rpc, tt.name, err, tt.field)
			}
		}
	}
	after := env.Keys(t, "")
	if len(after) != len(before) {
		t.Fatalf("keys changed: %d before, %d after", len(before), len(after))
	}
	for i := range after {
		if !proto.Equal(before[i], after[i]) {
			t.Fatalf("key changed: %v -> %v", before[i], after[i])
		}
	}
}

func TestProclaim_lease0KeepsTheLeaderKeysLease(t *testing.T) {
	// etcd grants a fresh 60 s lease for lease 0 and moves the leader key
	// onto it: leadership silently ends a minute later.
	env := proxytest.New(t, proxy.Config{})
	ctx := proxytest.Ctx(t)
	lease := env.Grant(t, 600)
	lk := campaign(t, env, "e", lease, "v1")
	zero := proto.Clone(lk).(*epb.LeaderKey)
	zero.Lease = 0
	if _, err := env.Election.Proclaim(ctx, &epb.ProclaimRequest{Leader: zero, Value: []byte("v2")}); err != nil {
		t.Fatal(err)
	}
	kvs := env.Keys(t, "e/")
	if len(kvs) != 1 || string(kvs[0].Value) != "v2" || kvs[0].Lease != lease {
		t.Fatalf("leader key %v, want value v2 on lease %x", kvs, lease)
	}
	if n := env.Metric(t, "coordproxy_lease_zero_calls_total", map[string]string{"rpc": "Proclaim"}); n != 1 {
		t.Fatalf("lease-0 Proclaim counted %v times, want 1", n)
	}
}

func TestResign_neverDeletesAKeyWithAnotherCreateRevision(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	ctx := proxytest.Ctx(t)
	lease := env.Grant(t, 60)
	old := campaign(t, env, "e", lease, "v1")
	if _, err := env.Election.Resign(ctx, &epb.ResignRequest{Leader: old}); err != nil {
		t.Fatal(err)
	}
	// Same lease, same key, new create revision.
	now := campaign(t, env, "e", lease, "v2")
	if string(now.Key) != string(old.Key) || now.Rev == old.Rev {
		t.Fatalf("new candidacy %v, old %v: want the same key with a new revision", now, old)
	}
	// A stale resign succeeds, as in etcd, and deletes nothing.
	if _, err := env.Election.Resign(ctx, &epb.ResignRequest{Leader: old}); err != nil {
		t.Fatal(err)
	}
	if got := leaderValue(t, env, "e"); got != "v2" {
		t.Fatalf("leader %q after a stale resign, want v2", got)
	}
}

func TestElection_emptyNameIsInvalidArgument(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	ctx := proxytest.Ctx(t)
	_, cerr := env.Election.Campaign(ctx, &epb.CampaignRequest{Lease: env.Grant(t, 60), Value: []byte("v")})
	_, lerr := env.Election.Leader(ctx, &epb.LeaderRequest{})
	s, err := env.Election.Observe(ctx, &epb.LeaderRequest{})
	if err == nil {
		_, err = s.Recv()
	}
	for rpc, err := range map[string]error{"Campaign": cerr, "Leader": lerr, "Observe": err} {
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), `"name"`) {
			t.Errorf("%s: %v, want InvalidArgument naming the name field", rpc, err)
		}
	}
	if kvs := env.Keys(t, "/"); len(kvs) != 0 {
		t.Fatalf("keys left: %v", kvs)
	}
}

func TestCampaign_lease0IsVisible(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	ctx := proxytest.Ctx(t)
	resp, err := env.Election.Campaign(ctx, &epb.CampaignRequest{Name: []byte("e"), Value: []byte("v")})
	if err != nil {
		t.Fatal(err)
	}
	ttl, err := env.KV.TimeToLive(ctx, clientv3.LeaseID(resp.Leader.Lease))
	if err != nil || ttl.GrantedTTL != lease0.TTL {
		t.Fatalf("lease of a lease-0 campaign: %v, %v; want granted TTL %d as in etcd", ttl, err, lease0.TTL)
	}
	if n := env.Metric(t, "coordproxy_lease_zero_calls_total", map[string]string{"rpc": "Campaign"}); n != 1 {
		t.Fatalf("lease-0 Campaign counted %v times, want 1", n)
	}
}
