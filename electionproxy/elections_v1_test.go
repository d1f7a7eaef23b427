package electionproxy_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	coordproxyv1 "github.com/coordproxy/coordproxy/proto/coordproxy/v1"
	"github.com/coordproxy/coordproxy/proxy"
	"github.com/coordproxy/coordproxy/proxy/proxytest"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	epb "go.etcd.io/etcd/server/v3/etcdserver/api/v3election/v3electionpb"
	"google.golang.org/grpc/status"
)

// extObserver reads one ElectionService.Observe stream in the background.
type extObserver struct {
	cancel context.CancelFunc
	msgs   chan *coordproxyv1.ObserveResponse // closed when the stream ends
	end    error                              // valid once msgs is closed
}

func observeExt(t *testing.T, env *proxytest.Env, name string) *extObserver {
	t.Helper()
	ctx, cancel := context.WithCancel(proxytest.Ctx(t))
	t.Cleanup(cancel)
	s, err := env.Elections.Observe(ctx, &coordproxyv1.ObserveRequest{Name: []byte(name)})
	if err != nil {
		t.Fatalf("observe %q: %v", name, err)
	}
	o := &extObserver{cancel: cancel, msgs: make(chan *coordproxyv1.ObserveResponse, 256)}
	go func() {
		for {
			m, err := s.Recv()
			if err != nil {
				o.end = err
				close(o.msgs)
				return
			}
			o.msgs <- m
		}
	}()
	return o
}

// next is the stream's next message; the test fails if the stream ends or
// nothing comes for long.
func (o *extObserver) next(t *testing.T) *coordproxyv1.ObserveResponse {
	t.Helper()
	select {
	case m, ok := <-o.msgs:
		if !ok {
			t.Fatalf("observe stream ended: %v", o.end)
		}
		return m
	case <-time.After(30 * time.Second):
		t.Fatal("no observe message within 30s")
		return nil
	}
}

// ended waits for the end of the stream and returns its error.
func (o *extObserver) ended(t *testing.T) error {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case _, ok := <-o.msgs:
			if !ok {
				return o.end
			}
		case <-timeout:
			t.Fatal("observe stream did not end within 30s")
			return nil
		}
	}
}

// eventText is m as "ELECTED value", "PROCLAIMED value" or "NO_LEADER".
func eventText(m *coordproxyv1.ObserveResponse) string {
	s := strings.TrimPrefix(m.Event.String(), "EVENT_")
	if m.Leader != nil {
		s += " " + string(m.Leader.Value)
	}
	return s
}

// checkEvent checks what holds for every message: revision and header agree,
// a leader comes exactly with the events that have one, and a proclamation
// is the leader key's last change.
func checkEvent(t *testing.T, m *coordproxyv1.ObserveResponse) {
	t.Helper()
	if m.Header == nil || m.Header.Revision != m.Revision || m.Header.ClusterId == 0 || m.Header.MemberId == 0 {
		t.Errorf("%s: header %v, revision %d: want a full header at the event's revision", eventText(m), m.Header, m.Revision)
	}
	switch m.Event {
	case coordproxyv1.ObserveResponse_EVENT_ELECTED, coordproxyv1.ObserveResponse_EVENT_PROCLAIMED:
		if m.Leader == nil {
			t.Fatalf("%s without a leader", eventText(m))
		}
	case coordproxyv1.ObserveResponse_EVENT_NO_LEADER:
		if m.Leader != nil {
			t.Fatalf("NO_LEADER with leader %v", m.Leader)
		}
	}
	if l := m.Leader; l != nil {
		if l.CreateRevision <= 0 || l.ModRevision < l.CreateRevision || l.ModRevision > m.Revision || l.Lease == 0 {
			t.Errorf("%s: leader %v at revision %d: revisions or lease wrong", eventText(m), l, m.Revision)
		}
		if m.Event == coordproxyv1.ObserveResponse_EVENT_PROCLAIMED && l.ModRevision != m.Revision {
			t.Errorf("%s: leader's mod revision %d, want the event's %d", eventText(m), l.ModRevision, m.Revision)
		}
	}
}

// scene drives one election for a test, and records the etcd revision at
// which each change that observers must see happened.
type scene struct {
	t    *testing.T
	env  *proxytest.Env
	ctx  context.Context
	name string
	revs []int64
}

func newScene(t *testing.T, env *proxytest.Env, name string) *scene {
	return &scene{t: t, env: env, ctx: proxytest.Ctx(t), name: name}
}

// lead campaigns through the proxy on an election without candidates.
func (s *scene) lead(lease int64, val string) *epb.LeaderKey {
	s.t.Helper()
	lk := campaign(s.t, s.env, s.name, lease, val)
	s.revs = append(s.revs, lk.Rev)
	return lk
}

// queue campaigns through the proxy behind the present candidates and
// returns once its key is queued; nobody sees a change.
func (s *scene) queue(lease int64, val string) chan result {
	s.t.Helper()
	n := len(s.env.Keys(s.t, s.name+"/"))
	ch := campaignAsync(s.ctx, s.env, s.name, lease, val)
	s.env.WaitKeys(s.t, s.name+"/", n+1)
	return ch
}

func (s *scene) proclaim(lk *epb.LeaderKey, val string) {
	s.t.Helper()
	resp, err := s.env.Election.Proclaim(s.ctx, &epb.ProclaimRequest{Leader: lk, Value: []byte(val)})
	if err != nil {
		s.t.Fatalf("proclaim %q: %v", val, err)
	}
	s.revs = append(s.revs, resp.Header.Revision)
}

func (s *scene) resign(lk *epb.LeaderKey) {
	s.t.Helper()
	resp, err := s.env.Election.Resign(s.ctx, &epb.ResignRequest{Leader: lk})
	if err != nil {
		s.t.Fatalf("resign: %v", err)
	}
	s.revs = append(s.revs, resp.Header.Revision)
}

// revoke ends a lease as its expiry does: its keys are deleted in one
// revision.
func (s *scene) revoke(lease int64) {
	s.t.Helper()
	resp, err := s.env.KV.Revoke(s.ctx, clientv3.LeaseID(lease))
	if err != nil {
		s.t.Fatalf("revoke: %v", err)
	}
	s.revs = append(s.revs, resp.Header.Revision)
}

// changed records a change made some other way, at etcd's current revision
// (nothing else writes to the test's etcd meanwhile).
func (s *scene) changed() {
	s.t.Helper()
	resp, err := s.env.KV.Get(s.ctx, s.name)
	if err != nil {
		s.t.Fatal(err)
	}
	s.revs = append(s.revs, resp.Header.Revision)
}

func won(t *testing.T, ch chan result) *epb.LeaderKey {
	t.Helper()
	r := wait(t, ch)
	if r.err != nil {
		t.Fatalf("queued candidate: %v", r.err)
	}
	return r.resp.Leader
}

func TestElectionsObserve_reportsEveryChangeInRevisionOrder(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	tests := []struct {
		name string
		run  func(t *testing.T, s *scene)
		want []string
	}{{
		name: "leader resigns, nobody waits",
		run: func(t *testing.T, s *scene) {
			lk := s.lead(env.Grant(t, 60), "a")
			s.resign(lk)
		},
		want: []string{"ELECTED a", "NO_LEADER"},
	}, {
		name: "leader's lease expires, nobody waits",
		run: func(t *testing.T, s *scene) {
			lease := env.Grant(t, 60)
			s.lead(lease, "a")
			s.revoke(lease)
		},
		want: []string{"ELECTED a", "NO_LEADER"},
	}, {
		name: "leader proclaims, the same value too",
		run: func(t *testing.T, s *scene) {
			lk := s.lead(env.Grant(t, 60), "a")
			s.proclaim(lk, "a2")
			s.proclaim(lk, "a3")
			s.proclaim(lk, "a3")
			s.resign(lk)
		},
		want: []string{"ELECTED a", "PROCLAIMED a2", "PROCLAIMED a3", "PROCLAIMED a3", "NO_LEADER"},
	}, {
		name: "successor takes over when the leader resigns",
		run: func(t *testing.T, s *scene) {
			a := s.lead(env.Grant(t, 60), "a")
			ch := s.queue(env.Grant(t, 60), "b")
			s.resign(a)
			b := won(t, ch)
			s.proclaim(b, "b2")
			s.resign(b)
		},
		want: []string{"ELECTED a", "ELECTED b", "PROCLAIMED b2", "NO_LEADER"},
	}, {
		name: "successor takes over when the leader's lease expires",
		run: func(t *testing.T, s *scene) {
			la, lb := env.Grant(t, 60), env.Grant(t, 60)
			s.lead(la, "a")
			ch := s.queue(lb, "b")
			s.revoke(la)
			won(t, ch)
			s.revoke(lb)
		},
		want: []string{"ELECTED a", "ELECTED b", "NO_LEADER"},
	}, {
		name: "a candidate leaving while the leader stays is no change",
		run: func(t *testing.T, s *scene) {
			a := s.lead(env.Grant(t, 60), "a")
			lb := env.Grant(t, 60)
			ch := s.queue(lb, "b")
			if _, err := env.KV.Revoke(s.ctx, clientv3.LeaseID(lb)); err != nil {
				t.Fatal(err)
			}
			if r := wait(t, ch); status.Convert(r.err).Message() != concurrency.ErrSessionExpired.Error() {
				t.Fatalf("candidate whose lease ended: %v, want %v", r.err, concurrency.ErrSessionExpired)
			}
			s.resign(a)
		},
		want: []string{"ELECTED a", "NO_LEADER"},
	}, {
		name: "leader and candidates all go in one revision",
		run: func(t *testing.T, s *scene) {
			s.lead(env.Grant(t, 60), "a")
			b := s.queue(env.Grant(t, 60), "b")
			c := s.queue(env.Grant(t, 60), "c")
			resp, err := env.KV.Delete(s.ctx, s.name+"/", clientv3.WithPrefix())
			if err != nil || resp.Deleted != 3 {
				t.Fatalf("delete the election's keys: %v, %v", resp, err)
			}
			s.revs = append(s.revs, resp.Header.Revision)
			for _, ch := range []chan result{b, c} {
				if r := wait(t, ch); status.Convert(r.err).Message() != concurrency.ErrSessionExpired.Error() {
					t.Fatalf("candidate whose key was deleted: %v, want %v", r.err, concurrency.ErrSessionExpired)
				}
			}
		},
		want: []string{"ELECTED a", "NO_LEADER"},
	}, {
		name: "the same lease campaigns again after resigning",
		run: func(t *testing.T, s *scene) {
			lease := env.Grant(t, 60)
			lk := s.lead(lease, "a")
			s.resign(lk)
			lk = s.lead(lease, "a again")
			s.resign(lk)
		},
		want: []string{"ELECTED a", "NO_LEADER", "ELECTED a again", "NO_LEADER"},
	}, {
		name: "candidates of concurrency.Election on etcd directly",
		run: func(t *testing.T, s *scene) {
			sa, err := concurrency.NewSession(env.KV, concurrency.WithTTL(60))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { sa.Close() })
			sb, err := concurrency.NewSession(env.KV, concurrency.WithTTL(60))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { sb.Close() })
			ea, eb := concurrency.NewElection(sa, s.name), concurrency.NewElection(sb, s.name)
			if err := ea.Campaign(s.ctx, "x"); err != nil {
				t.Fatal(err)
			}
			s.revs = append(s.revs, ea.Rev())
			if err := ea.Proclaim(s.ctx, "x2"); err != nil {
				t.Fatal(err)
			}
			s.changed()
			done := make(chan error, 1)
			go func() { done <- eb.Campaign(s.ctx, "y") }()
			env.WaitKeys(t, s.name+"/", 2)
			if err := ea.Resign(s.ctx); err != nil {
				t.Fatal(err)
			}
			s.changed()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			if err := sb.Close(); err != nil { // revokes the session's lease
				t.Fatal(err)
			}
			s.changed()
		},
		want: []string{"ELECTED x", "PROCLAIMED x2", "ELECTED y", "NO_LEADER"},
	}}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newScene(t, env, fmt.Sprintf("e%d", i))
			o := observeExt(t, env, s.name)
			cur := o.next(t)
			checkEvent(t, cur)
			if got := eventText(cur); got != "CURRENT" {
				t.Fatalf("first message %s, want CURRENT without a leader", got)
			}
			tt.run(t, s)
			if len(s.revs) != len(tt.want) {
				t.Fatalf("test bug: %d changes recorded for %d events", len(s.revs), len(tt.want))
			}
			last := cur.Revision
			for i, want := range tt.want {
				m := o.next(t)
				checkEvent(t, m)
				if got := eventText(m); got != want {
					t.Fatalf("event %d: %s, want %s (all: %v)", i, got, want, tt.want)
				}
				if m.Revision <= last || m.Revision != s.revs[i] {
					t.Fatalf("event %d (%s) at revision %d; want %d, after %d", i, want, m.Revision, s.revs[i], last)
				}
				last = m.Revision
			}
			select {
			case m := <-o.msgs:
				t.Fatalf("unexpected message after the last change: %v", m)
			default:
			}
		})
	}
}
