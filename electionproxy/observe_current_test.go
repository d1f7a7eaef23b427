package electionproxy_test

import (
	"fmt"
	"testing"

	coordproxyv1 "github.com/coordproxy/coordproxy/proto/coordproxy/v1"
	"github.com/coordproxy/coordproxy/proxy"
	"github.com/coordproxy/coordproxy/proxy/proxytest"
	epb "go.etcd.io/etcd/server/v3/etcdserver/api/v3election/v3electionpb"
)

func TestElectionsObserve_beginsWithTheCurrentState(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	ctx := proxytest.Ctx(t)
	tests := []struct {
		name   string
		setup  func(t *testing.T, name string) (leader *epb.LeaderKey, value string)
		then   func(t *testing.T, s *scene, leader *epb.LeaderKey)
		events []string
	}{{
		name:  "no leader",
		setup: func(t *testing.T, name string) (*epb.LeaderKey, string) { return nil, "" },
		then: func(t *testing.T, s *scene, _ *epb.LeaderKey) {
			s.lead(env.Grant(t, 60), "a")
		},
		events: []string{"ELECTED a"},
	}, {
		name: "no leader any more",
		setup: func(t *testing.T, name string) (*epb.LeaderKey, string) {
			lk := campaign(t, env, name, env.Grant(t, 60), "gone")
			if _, err := env.Election.Resign(ctx, &epb.ResignRequest{Leader: lk}); err != nil {
				t.Fatal(err)
			}
			return nil, ""
		},
		then: func(t *testing.T, s *scene, _ *epb.LeaderKey) {
			s.lead(env.Grant(t, 60), "a")
		},
		events: []string{"ELECTED a"},
	}, {
		name: "a leader and a candidate",
		setup: func(t *testing.T, name string) (*epb.LeaderKey, string) {
			lk := campaign(t, env, name, env.Grant(t, 60), "a")
			campaignAsync(ctx, env, name, env.Grant(t, 60), "b")
			env.WaitKeys(t, name+"/", 2)
			return lk, "a"
		},
		then: func(t *testing.T, s *scene, lk *epb.LeaderKey) {
			s.resign(lk)
		},
		events: []string{"ELECTED b"},
	}, {
		name: "a leader that proclaimed",
		setup: func(t *testing.T, name string) (*epb.LeaderKey, string) {
			lk := campaign(t, env, name, env.Grant(t, 60), "a")
			if _, err := env.Election.Proclaim(ctx, &epb.ProclaimRequest{Leader: lk, Value: []byte("a2")}); err != nil {
				t.Fatal(err)
			}
			return lk, "a2"
		},
		then: func(t *testing.T, s *scene, lk *epb.LeaderKey) {
			s.proclaim(lk, "a3")
		},
		events: []string{"PROCLAIMED a3"},
	}}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newScene(t, env, fmt.Sprintf("c%d", i))
			lk, value := tt.setup(t, s.name)
			before, err := env.KV.Get(ctx, s.name)
			if err != nil {
				t.Fatal(err)
			}
			o := observeExt(t, env, s.name)
			m := o.next(t)
			checkEvent(t, m)
			if m.Event != coordproxyv1.ObserveResponse_EVENT_CURRENT || m.Revision < before.Header.Revision {
				t.Fatalf("first message %s at revision %d, want CURRENT at %d or later", eventText(m), m.Revision, before.Header.Revision)
			}
			switch {
			case lk == nil && m.Leader != nil:
				t.Fatalf("CURRENT with leader %v, want none", m.Leader)
			case lk != nil && (m.Leader == nil || string(m.Leader.Key) != string(lk.Key) ||
				m.Leader.CreateRevision != lk.Rev || m.Leader.Lease != lk.Lease || string(m.Leader.Value) != value):
				t.Fatalf("CURRENT with leader %v, want %s (rev %d, lease %x) with value %q", m.Leader, lk.Key, lk.Rev, lk.Lease, value)
			}
			tt.then(t, s, lk)
			last := m.Revision
			for i, want := range tt.events {
				m := o.next(t)
				checkEvent(t, m)
				if got := eventText(m); got != want || m.Revision <= last || m.Revision != s.revs[i] {
					t.Fatalf("event %d: %s at revision %d, want %s at %d (after %d)", i, got, m.Revision, want, s.revs[i], last)
				}
				last = m.Revision
			}
		})
	}
}
