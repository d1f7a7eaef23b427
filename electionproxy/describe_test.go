package electionproxy_test

import (
	"fmt"
	"strings"
	"testing"

	coordproxyv1 "github.com/coordproxy/coordproxy/proto/coordproxy/v1"
	"github.com/coordproxy/coordproxy/proxy"
	"github.com/coordproxy/coordproxy/proxy/proxytest"
	"go.etcd.io/etcd/client/v3/concurrency"
	epb "go.etcd.io/etcd/server/v3/etcdserver/api/v3election/v3electionpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestElections_emptyNameIsInvalidArgumentAsInTheElectionService(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	ctx := proxytest.Ctx(t)
	_, want := env.Election.Leader(ctx, &epb.LeaderRequest{})
	s, err := env.Elections.Observe(ctx, &coordproxyv1.ObserveRequest{})
	if err == nil {
		_, err = s.Recv()
	}
	_, derr := env.Elections.Describe(ctx, &coordproxyv1.DescribeRequest{})
	for rpc, err := range map[string]error{"Observe": err, "Describe": derr} {
		if status.Code(err) != codes.InvalidArgument || status.Convert(err).Message() != status.Convert(want).Message() {
			t.Errorf("%s: %v, want %v", rpc, err, want)
		}
	}
}

func TestElectionsDescribe_leaderWithTTLThenCandidatesInOrder(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	ctx := proxytest.Ctx(t)
	describe := func(name string, limit int64) *coordproxyv1.ElectionDescription {
		t.Helper()
		d, err := env.Elections.Describe(ctx, &coordproxyv1.DescribeRequest{Name: []byte(name), Limit: limit})
		if err != nil {
			t.Fatalf("describe %q limit %d: %v", name, limit, err)
		}
		return d
	}

	if d := describe("empty", 0); d.Leader != nil || len(d.Candidates) != 0 || d.Waiting != 0 || d.Header.GetRevision() == 0 {
		t.Fatalf("empty election: %v, want a header and nothing else", d)
	}

	// A leader that proclaimed, two proxy candidates and one of
	// concurrency.Election on etcd directly, queued in that order.
	la := env.Grant(t, 60)
	lk := campaign(t, env, "e", la, "a")
	if _, err := env.Election.Proclaim(ctx, &epb.ProclaimRequest{Leader: lk, Value: []byte("a2")}); err != nil {
		t.Fatal(err)
	}
	lb, lc := env.Grant(t, 30), env.Grant(t, 30)
	campaignAsync(ctx, env, "e", lb, "b")
	env.WaitKeys(t, "e/", 2)
	campaignAsync(ctx, env, "e", lc, "c")
	env.WaitKeys(t, "e/", 3)
	sess, err := concurrency.NewSession(env.KV, concurrency.WithTTL(30))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sess.Close() })
	go concurrency.NewElection(sess, "e").Campaign(ctx, "d")
	env.WaitKeys(t, "e/", 4)
	keys := env.Keys(t, "e/")
	byValue := map[string]*queuedKey{}
	for _, kv := range keys {
		byValue[string(kv.Value)] = &queuedKey{string(kv.Key), kv.Lease, kv.CreateRevision, kv.ModRevision}
	}

	tests := []struct {
		limit int64
		want  []string
	}{
		{0, []string{"b", "c", "d"}},
		{1, []string{"b"}},
		{2, []string{"b", "c"}},
		{3, []string{"b", "c", "d"}},
		{100, []string{"b", "c", "d"}},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("limit %d", tt.limit), func(t *testing.T) {
			d := describe("e", tt.limit)
			l := d.Leader
			a := byValue["a2"]
			if l == nil || string(l.Key) != a.key || string(l.Value) != "a2" || l.Lease != la ||
				l.CreateRevision != lk.Rev || l.ModRevision != a.mod {
				t.Fatalf("leader %v, want %s with value a2, lease %x, create revision %d", l, a.key, la, lk.Rev)
			}
			if l.GrantedTtl != 60 || l.Ttl <= 0 || l.Ttl > 60 {
				t.Errorf("leader's TTL %d of %d, want 60 granted and some left", l.Ttl, l.GrantedTtl)
			}
			if d.Waiting != 3 {
				t.Errorf("waiting %d, want 3", d.Waiting)
			}
			if d.Header.GetRevision() < keys[len(keys)-1].ModRevision {
				t.Errorf("header revision %d, before the last candidate's %d", d.Header.GetRevision(), keys[len(keys)-1].ModRevision)
			}
			var got []string
			for _, c := range d.Candidates {
				got = append(got, string(c.Value))
				w := byValue[string(c.Value)]
				if w == nil || string(c.Key) != w.key || c.Lease != w.lease || c.CreateRevision != w.create || c.Ttl != 0 || c.GrantedTtl != 0 {
					t.Errorf("candidate %v, want %+v without TTLs", c, w)
				}
			}
			if strings.Join(got, ",") != strings.Join(tt.want, ",") {
				t.Fatalf("candidates %v, want %v", got, tt.want)
			}
		})
	}

	// The first candidate leads once the leader resigns.
	if _, err := env.Election.Resign(ctx, &epb.ResignRequest{Leader: lk}); err != nil {
		t.Fatal(err)
	}
	d := describe("e", 0)
	if d.Leader == nil || string(d.Leader.Value) != "b" || d.Leader.GrantedTtl != 30 || d.Waiting != 2 || len(d.Candidates) != 2 {
		t.Fatalf("after the leader resigned: %v, want b leading (granted TTL 30) before 2 candidates", d)
	}
}

type queuedKey struct {
	key         string
	lease       int64
	create, mod int64
}
