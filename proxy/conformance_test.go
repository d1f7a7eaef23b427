package proxy_test

import (
	"context"
	"strings"
	"testing"

	"github.com/coordproxy/coordproxy/proxy"
	"github.com/coordproxy/coordproxy/proxy/proxytest"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3election/v3electionpb"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3lock/v3lockpb"
	"google.golang.org/protobuf/proto"
)

// scenario is one conformance case. It runs once against etcd's native
// services and once through coordproxy; both runs must record the same
// normalized outcomes: codes, messages, responses with their headers, and the
// keys left in etcd.
type scenario struct {
	name string
	run  func(r *run)
}

// Calls, each recording its outcome.

func (r *run) lockCall(step, name string, lease int64) *v3lockpb.LockResponse {
	resp, err := r.lock.Lock(r.ctx, &v3lockpb.LockRequest{Name: []byte(name), Lease: lease})
	r.outcome(step, resp, err)
	return resp
}

func (r *run) lockAsync(step, name string, lease int64) *pending {
	return r.async(step, func(ctx context.Context) (proto.Message, error) {
		return r.lock.Lock(ctx, &v3lockpb.LockRequest{Name: []byte(name), Lease: lease})
	})
}

func (r *run) unlock(step string, key []byte) {
	resp, err := r.lock.Unlock(r.ctx, &v3lockpb.UnlockRequest{Key: key})
	r.outcome(step, resp, err)
}

func (r *run) campaign(step, name string, lease int64, val string) *v3electionpb.CampaignResponse {
	resp, err := r.elec.Campaign(r.ctx, &v3electionpb.CampaignRequest{Name: []byte(name), Lease: lease, Value: []byte(val)})
	r.outcome(step, resp, err)
	return resp
}

func (r *run) campaignAsync(step, name string, lease int64, val string) *pending {
	return r.async(step, func(ctx context.Context) (proto.Message, error) {
		return r.elec.Campaign(ctx, &v3electionpb.CampaignRequest{Name: []byte(name), Lease: lease, Value: []byte(val)})
	})
}

func (r *run) proclaim(step string, lk *v3electionpb.LeaderKey, val string) {
	resp, err := r.elec.Proclaim(r.ctx, &v3electionpb.ProclaimRequest{Leader: lk, Value: []byte(val)})
	r.outcome(step, resp, err)
}

func (r *run) resign(step string, lk *v3electionpb.LeaderKey) {
	resp, err := r.elec.Resign(r.ctx, &v3electionpb.ResignRequest{Leader: lk})
	r.outcome(step, resp, err)
}

func (r *run) leader(step, name string) {
	resp, err := r.elec.Leader(r.ctx, &v3electionpb.LeaderRequest{Name: []byte(name)})
	r.outcome(step, resp, err)
}

func (r *run) revoke(lease int64) {
	if _, err := r.kv.Revoke(r.ctx, clientV3Lease(lease)); err != nil {
		r.t.Fatal(err)
	}
}

// cancelled runs call with a context that is cancelled once name has n keys:
// a client giving up while it waits.
func (r *run) cancelled(step, name string, n int, call func(ctx context.Context) (proto.Message, error)) {
	ctx, cancel := context.WithCancel(r.ctx)
	p := r.async(step, func(context.Context) (proto.Message, error) { return call(ctx) })
	r.waitKeys(name, n)
	cancel()
	p.wait()
}

var scenarios = []scenario{
	// Lock: tests/integration/v3lock_grpc_test.go and v3_curl_lock_test.go.
	{"lock-uncontended", func(r *run) {
		l := r.grant(30)
		r.lockCall("lock", r.name("a"), l)
		r.keys("after")
	}},
	{"lock-twice-same-lease-is-one-acquisition", func(r *run) {
		l := r.grant(30)
		r.lockCall("lock1", r.name("a"), l)
		r.lockCall("lock2", r.name("a"), l)
		r.keys("after")
	}},
	{"lock-waiter-acquires-after-unlock", func(r *run) {
		l1, l2 := r.grant(30), r.grant(30)
		first := r.lockCall("lock1", r.name("a"), l1)
		w := r.lockAsync("lock2", r.name("a"), l2)
		r.waitKeys(r.name("a"), 2)
		w.still()
		r.unlock("unlock1", first.Key)
		w.wait()
		r.keys("after")
	}},
	{"lock-waiter-acquires-after-holder-lease-revoked", func(r *run) {
		l1, l2 := r.grant(30), r.grant(30)
		r.lockCall("lock1", r.name("a"), l1)
		w := r.lockAsync("lock2", r.name("a"), l2)
		r.waitKeys(r.name("a"), 2)
		r.revoke(l1)
		w.wait()
		r.keys("after")
	}},
	{"lock-waiters-acquire-in-order", func(r *run) {
		l1, l2, l3 := r.grant(30), r.grant(30), r.grant(30)
		first := r.lockCall("lock1", r.name("a"), l1)
		w2 := r.lockAsync("lock2", r.name("a"), l2)
		r.waitKeys(r.name("a"), 2)
		w3 := r.lockAsync("lock3", r.name("a"), l3)
		r.waitKeys(r.name("a"), 3)
		r.unlock("unlock1", first.Key)
		second, _ := w2.wait()
		w3.still()
		r.unlock("unlock2", second.(*v3lockpb.LockResponse).Key)
		w3.wait()
		r.keys("after")
	}},
	{"lock-unknown-lease", func(r *run) {
		r.lockCall("lock", r.name("a"), 0x7fff0000)
		r.keys("after")
	}},
	{"lock-negative-lease", func(r *run) {
		r.lockCall("lock", r.name("a"), -5)
		r.keys("after")
	}},
	{"lock-revoked-lease", func(r *run) {
		l := r.grant(30)
		r.revoke(l)
		r.lockCall("lock", r.name("a"), l)
		r.keys("after")
	}},
	{"lock-lease-0-grants-a-lease", func(r *run) {
		resp := r.lockCall("lock", r.name("a"), 0)
		r.keys("after lock")
		if resp != nil {
			r.unlock("unlock", resp.Key)
		}
		r.keys("after unlock")
	}},
	{"lock-name-with-slashes", func(r *run) {
		l := r.grant(30)
		resp := r.lockCall("lock", r.name("/x/y"), l)
		r.unlock("unlock", resp.Key)
		r.keys("after")
	}},
	{"lock-unlock-lock-again", func(r *run) {
		l := r.grant(30)
		resp := r.lockCall("lock1", r.name("a"), l)
		r.unlock("unlock", resp.Key)
		r.lockCall("lock2", r.name("a"), l)
		r.keys("after")
	}},
	{"lock-waiter-cancelled-leaves-no-key", func(r *run) {
		l1, l2 := r.grant(30), r.grant(30)
		r.lockCall("lock1", r.name("a"), l1)
		r.cancelled("lock2", r.name("a"), 2, func(ctx context.Context) (proto.Message, error) {
			return r.lock.Lock(ctx, &v3lockpb.LockRequest{Name: []byte(r.name("a")), Lease: l2})
		})
		r.waitKeys(r.name("a"), 1)
		r.keys("after")
	}},
	{"lock-waiter-lease-revoked-is-not-granted", func(r *run) {
		l1, l2 := r.grant(30), r.grant(30)
		first := r.lockCall("lock1", r.name("a"), l1)
		w := r.lockAsync("lock2", r.name("a"), l2)
		r.waitKeys(r.name("a"), 2)
		r.revoke(l2)
		r.waitKeys(r.name("a"), 1)
		r.unlock("unlock1", first.Key)
		w.wait()
		r.keys("after")
	}},
	{"unlock-key-already-gone", func(r *run) {
		l := r.grant(30)
		resp := r.lockCall("lock", r.name("a"), l)
		r.unlock("unlock1", resp.Key)
		r.unlock("unlock2", resp.Key)
		r.keys("after")
	}},
	{"unlock-empty-key", func(r *run) {
		r.unlock("unlock", nil)
	}},

	// Election: tests/integration/v3election_grpc_test.go and
	// v3_curl_election_test.go.
	{"campaign-uncontended", func(r *run) {
		l := r.grant(30)
		r.campaign("campaign", r.name("e"), l, "v1")
		r.leader("leader", r.name("e"))
		r.keys("after")
	}},
	{"campaign-waiter-elected-after-resign", func(r *run) {
		l1, l2 := r.grant(30), r.grant(30)
		c1 := r.campaign("campaign1", r.name("e"), l1, "abc")
		w := r.campaignAsync("campaign2", r.name("e"), l2, "def")
		r.waitKeys(r.name("e"), 2)
		w.still()
		r.resign("resign1", c1.Leader)
		w.wait()
		r.leader("leader", r.name("e"))
		r.keys("after")
	}},
	{"campaign-waiter-elected-after-leader-lease-revoked", func(r *run) {
		l1, l2 := r.grant(30), r.grant(30)
		r.campaign("campaign1", r.name("e"), l1, "abc")
		w := r.campaignAsync("campaign2", r.name("e"), l2, "def")
		r.waitKeys(r.name("e"), 2)
		r.revoke(l1)
		w.wait()
		r.leader("leader", r.name("e"))
	}},
	{"campaign-unknown-lease", func(r *run) {
		r.campaign("campaign", r.name("e"), 0x7fff0001, "v")
		r.keys("after")
	}},
	{"campaign-lease-0-then-observe-and-proclaim", func(r *run) {
		c := r.campaign("campaign", r.name("/election-prefix"), 0, "v1")
		o := r.observe("observe", r.name("/election-prefix"))
		o.next()
		o.cancel()
		r.proclaim("proclaim", c.Leader, "v2")
		r.leader("leader", r.name("/election-prefix"))
		r.keys("after")
	}},
	{"campaign-again-same-lease-updates-value", func(r *run) {
		l := r.grant(30)
		r.campaign("campaign1", r.name("e"), l, "v1")
		r.campaign("campaign2", r.name("e"), l, "v2")
		r.leader("leader", r.name("e"))
		r.keys("after")
	}},
	{"campaign-waiter-cancelled-leaves-no-key", func(r *run) {
		l1, l2 := r.grant(30), r.grant(30)
		r.campaign("campaign1", r.name("e"), l1, "a")
		r.cancelled("campaign2", r.name("e"), 2, func(ctx context.Context) (proto.Message, error) {
			return r.elec.Campaign(ctx, &v3electionpb.CampaignRequest{Name: []byte(r.name("e")), Lease: l2, Value: []byte("b")})
		})
		r.waitKeys(r.name("e"), 1)
		r.keys("after")
	}},
	{"proclaim-by-leader", func(r *run) {
		l := r.grant(30)
		c := r.campaign("campaign", r.name("e"), l, "v1")
		r.proclaim("proclaim", c.Leader, "v2")
		r.leader("leader", r.name("e"))
	}},
	{"proclaim-wrong-rev-is-not-leader", func(r *run) {
		l := r.grant(30)
		c := r.campaign("campaign", r.name("e"), l, "v1")
		lk := proto.Clone(c.Leader).(*v3electionpb.LeaderKey)
		lk.Rev += 100
		r.proclaim("proclaim", lk, "v2")
		r.leader("leader", r.name("e"))
	}},
	{"proclaim-after-resign-is-not-leader", func(r *run) {
		l := r.grant(30)
		c := r.campaign("campaign", r.name("e"), l, "v1")
		r.resign("resign", c.Leader)
		r.proclaim("proclaim", c.Leader, "v2")
		r.keys("after")
	}},
	{"proclaim-with-revoked-lease-is-not-leader", func(r *run) {
		l := r.grant(30)
		c := r.campaign("campaign", r.name("e"), l, "v1")
		r.revoke(l)
		r.proclaim("proclaim", c.Leader, "v2")
		r.keys("after")
	}},
	{"proclaim-missing-leader", func(r *run) {
		resp, err := r.elec.Proclaim(r.ctx, &v3electionpb.ProclaimRequest{Value: []byte("v2")})
		r.outcome("proclaim", resp, err)
	}},
	{"proclaim-empty-leader-key", func(r *run) {
		r.proclaim("proclaim", &v3electionpb.LeaderKey{Name: []byte(r.name("e")), Rev: 3}, "v")
	}},
	{"resign-missing-leader", func(r *run) {
		resp, err := r.elec.Resign(r.ctx, &v3electionpb.ResignRequest{})
		r.outcome("resign", resp, err)
	}},
	{"resign-wrong-rev-keeps-leader", func(r *run) {
		l := r.grant(30)
		c := r.campaign("campaign", r.name("e"), l, "v1")
		lk := proto.Clone(c.Leader).(*v3electionpb.LeaderKey)
		lk.Rev++
		r.resign("resign", lk)
		r.leader("leader", r.name("e"))
	}},
	{"resign-twice", func(r *run) {
		l := r.grant(30)
		c := r.campaign("campaign", r.name("e"), l, "v1")
		r.resign("resign1", c.Leader)
		r.resign("resign2", c.Leader)
		r.keys("after")
	}},
	{"resign-retried-after-campaign-again-keeps-the-newer-leader", func(r *run) {
		// The same lease campaigns again after resigning: the same key, a
		// newer revision. A late retry of the first Resign compares the
		// create revision and leaves the newer leadership.
		l := r.grant(30)
		first := r.campaign("campaign1", r.name("e"), l, "v1")
		r.resign("resign1", first.Leader)
		r.campaign("campaign2", r.name("e"), l, "v2")
		r.resign("resign1-retried", first.Leader)
		r.leader("leader", r.name("e"))
		r.keys("after")
	}},
	{"leader-none", func(r *run) {
		r.leader("leader", r.name("hello"))
	}},
	{"observe-current-leader-first-then-changes", func(r *run) {
		// tests/integration TestV3ElectionObserve, one change at a time.
		l1, l2 := r.grant(30), r.grant(30)
		c1 := r.campaign("campaign1", r.name("e"), l1, "0")
		r.proclaim("proclaim1", c1.Leader, "1")
		o := r.observe("observe", r.name("e"))
		o.next()
		for _, v := range []string{"2", "3", "4"} {
			r.proclaim("proclaim"+v, c1.Leader, v)
			o.next()
		}
		w := r.campaignAsync("campaign2", r.name("e"), l2, "5")
		r.waitKeys(r.name("e"), 2)
		r.resign("resign1", c1.Leader)
		c2, _ := w.wait()
		o.next()
		for _, v := range []string{"6", "7"} {
			r.proclaim("proclaim"+v, c2.(*v3electionpb.CampaignResponse).Leader, v)
			o.next()
		}
		r.revoke(l2)
		r.leader("leader", r.name("e"))
	}},
	{"observe-waits-for-first-leader", func(r *run) {
		o := r.observe("observe", r.name("e"))
		l := r.grant(30)
		r.campaign("campaign", r.name("e"), l, "v")
		o.next()
	}},

	// Lease pass-through: a client needs only the proxy's address.
	{"lease-grant-ttl-leases-keepalive-revoke", func(r *run) {
		g, err := r.lease.LeaseGrant(r.ctx, &pb.LeaseGrantRequest{TTL: 30})
		r.outcome("grant", g, err)
		ttl, err := r.lease.LeaseTimeToLive(r.ctx, &pb.LeaseTimeToLiveRequest{ID: g.ID})
		r.outcome("ttl", ttl, err)
		ka, err := r.lease.LeaseKeepAlive(r.ctx)
		if err != nil {
			r.t.Fatal(err)
		}
		if err := ka.Send(&pb.LeaseKeepAliveRequest{ID: g.ID}); err != nil {
			r.t.Fatal(err)
		}
		kr, err := ka.Recv()
		r.outcome("keepalive", kr, err)
		ka.CloseSend()
		leases, err := r.lease.LeaseLeases(r.ctx, &pb.LeaseLeasesRequest{})
		found := false
		for _, l := range leases.GetLeases() {
			found = found || l.ID == g.ID
		}
		r.record("leases: err=%v contains granted lease: %v", err, found)
		rv, err := r.lease.LeaseRevoke(r.ctx, &pb.LeaseRevokeRequest{ID: g.ID})
		r.outcome("revoke", rv, err)
		rv, err = r.lease.LeaseRevoke(r.ctx, &pb.LeaseRevokeRequest{ID: g.ID})
		r.outcome("revoke again", rv, err)
		ttl, err = r.lease.LeaseTimeToLive(r.ctx, &pb.LeaseTimeToLiveRequest{ID: g.ID})
		r.outcome("ttl after revoke", ttl, err)
	}},
	{"lease-keepalive-unknown-lease", func(r *run) {
		ka, err := r.lease.LeaseKeepAlive(r.ctx)
		if err != nil {
			r.t.Fatal(err)
		}
		if err := ka.Send(&pb.LeaseKeepAliveRequest{ID: 0x7fff0002}); err != nil {
			r.t.Fatal(err)
		}
		kr, err := ka.Recv()
		r.outcome("keepalive", kr, err)
		ka.CloseSend()
	}},
}

// TestConformance runs every scenario against etcd's native Lock, Election
// and Lease services and through coordproxy, over one real etcd, and requires
// the same outcomes: the module's etcd (3.7, embedded) with the proxy as
// shipped (batching what queued) and with every transaction nested
// (proxytest.StartProxy's batching, the path a busy proxy takes), then
// each of proxytest.EtcdVersions as a server process (not with -short).
func TestConformance(t *testing.T) {
	t.Run("etcd-3.7", func(t *testing.T) { conformance(t, proxytest.StartEtcd(t).URL, proxytest.StartProxyAsShipped) })
	t.Run("etcd-3.7-nested", func(t *testing.T) { conformance(t, proxytest.StartEtcd(t).URL, proxytest.StartProxy) })
	for _, v := range proxytest.EtcdVersions {
		t.Run("etcd-"+v, func(t *testing.T) {
			if testing.Short() {
				t.Skip("-short: etcd " + v + " runs in the full suite")
			}
			conformance(t, proxytest.StartEtcdProcess(t, v).URL, proxytest.StartProxy)
		})
	}
}

func conformance(t *testing.T, etcdURL string, start func(testing.TB, []string, proxy.Config) *proxy.Server) {
	etcd := struct{ URL string }{etcdURL}
	p := start(t, []string{etcd.URL}, proxy.Config{})
	kv := proxytest.Client(t, etcd.URL)
	targets := []target{
		{"native", proxytest.Dial(t, strings.TrimPrefix(etcd.URL, "http://"))},
		{"proxy", proxytest.Dial(t, p.Addr().String())},
	}
	if len(scenarios) < 25 {
		t.Fatalf("%d scenarios; the conformance table must have at least 25", len(scenarios))
	}
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			var got [2][]string
			for i, tg := range targets {
				r := newRun(t, tg, kv, sc.name)
				sc.run(r)
				got[i] = r.lines
			}
			compareRuns(t, got)
		})
	}
}
