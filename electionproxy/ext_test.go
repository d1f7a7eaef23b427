package electionproxy_test

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	coordproxyv1 "github.com/coordproxy/coordproxy/proto/coordproxy/v1"
	"github.com/coordproxy/coordproxy/proxy"
	"github.com/coordproxy/coordproxy/proxy/proxytest"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	epb "go.etcd.io/etcd/server/v3/etcdserver/api/v3election/v3electionpb"
	"google.golang.org/grpc/codes"
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

// Many observers of one election cost etcd one watch, all see the same
// changes, and once they leave nothing of them is left behind.
func TestElectionsObserve_observersShareOneWatchAndSeeTheSameChanges(t *testing.T) {
	const observers = 32
	env := proxytest.New(t, proxy.Config{QueueLinger: 100 * time.Millisecond})
	la, lb := env.Grant(t, 60), env.Grant(t, 60)
	env.Keys(t, "shared/") // connects the test's own etcd client before counting
	watchers0, goroutines0 := proxytest.EtcdWatchers(t), runtime.NumGoroutine()

	obs := make([]*extObserver, observers)
	for i := range obs {
		obs[i] = observeExt(t, env, "shared")
		if m := obs[i].next(t); m.Event != coordproxyv1.ObserveResponse_EVENT_CURRENT {
			t.Fatalf("observer %d began with %s", i, eventText(m))
		}
	}
	if got := proxytest.EtcdWatchers(t) - watchers0; got != 1 {
		t.Errorf("%d etcd watchers for %d observers of one election, want 1", int(got), observers)
	}
	s := newScene(t, env, "shared")
	a := s.lead(la, "a")
	ch := s.queue(lb, "b")
	for i := range 3 {
		s.proclaim(a, fmt.Sprintf("a%d", i))
	}
	s.resign(a)
	b := won(t, ch)
	s.proclaim(b, "b1")
	s.revoke(lb)
	if got := proxytest.EtcdWatchers(t) - watchers0; got != 1 {
		t.Errorf("%d etcd watchers for %d observers and two candidates of one election, want 1", int(got), observers)
	}

	want := []string{"ELECTED a", "PROCLAIMED a0", "PROCLAIMED a1", "PROCLAIMED a2", "ELECTED b", "PROCLAIMED b1", "NO_LEADER"}
	var wg sync.WaitGroup
	errs := make(chan error, observers)
	for i, o := range obs {
		wg.Go(func() {
			for j, w := range want {
				var m *coordproxyv1.ObserveResponse
				select {
				case m = <-o.msgs:
				case <-time.After(30 * time.Second):
				}
				if m == nil {
					errs <- fmt.Errorf("observer %d: event %d (%s) never came: %v", i, j, w, o.end)
					return
				}
				if got := eventText(m); got != w || m.Revision != s.revs[j] {
					errs <- fmt.Errorf("observer %d: event %d: %s at revision %d, want %s at %d", i, j, got, m.Revision, w, s.revs[j])
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	for _, o := range obs {
		o.cancel()
		if err := o.ended(t); status.Code(err) != codes.Canceled {
			t.Errorf("observer ended with %v, want Canceled", err)
		}
	}
	// Nothing outlives the observers but the watch's short linger.
	proxytest.WaitFor(t, 10*time.Second, func() (bool, string) {
		w, g := proxytest.EtcdWatchers(t)-watchers0, runtime.NumGoroutine()-goroutines0
		return w <= 0 && g <= 2, fmt.Sprintf("%d etcd watchers and %d goroutines more than before the observers", int(w), g)
	})
}

func TestElectionsObserve_slowObserverIsEndedAndOthersGetEverything(t *testing.T) {
	env := proxytest.New(t, proxy.Config{ObserveBuffer: 4})
	ctx := proxytest.Ctx(t)
	lk := campaign(t, env, "e", env.Grant(t, 60), "v")
	open := func() coordproxyv1.ElectionService_ObserveClient {
		s, err := env.Elections.Observe(ctx, &coordproxyv1.ObserveRequest{Name: []byte("e")})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Recv(); err != nil { // CURRENT
			t.Fatal(err)
		}
		return s
	}
	slow, fast := open(), open()
	// Values large enough that the unread stream's flow-control window
	// fills and the proxy's sends to it block.
	big := strings.Repeat("x", 256<<10)
	const n = 40
	done := make(chan error, 1)
	go func() {
		for i := range n {
			m, err := fast.Recv()
			if err != nil {
				done <- err
				return
			}
			if want := fmt.Sprintf("%d%s", i, big); m.Event != coordproxyv1.ObserveResponse_EVENT_PROCLAIMED || string(m.Leader.Value) != want {
				done <- fmt.Errorf("fast observer: change %d is %s, out of order", i, m.Event)
				return
			}
		}
		done <- nil
	}()
	for i := range n {
		if _, err := env.Election.Proclaim(ctx, &epb.ProclaimRequest{Leader: lk, Value: []byte(fmt.Sprintf("%d%s", i, big))}); err != nil {
			t.Fatal(err)
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	var last error
	for range n + 1 {
		if _, last = slow.Recv(); last != nil {
			break
		}
	}
	if st := status.Convert(last); st.Code() != codes.ResourceExhausted || !strings.Contains(st.Message(), "observe again") {
		t.Fatalf("slow observer ended with %v, want ResourceExhausted telling it to observe again", last)
	}
}

func TestElectionsObserve_endsWithUnavailableWhenTheProxyStops(t *testing.T) {
	etcd := proxytest.StartEtcd(t)
	srv := proxy.New(proxy.Config{Endpoints: []string{etcd.URL}, Listen: "127.0.0.1:0", Logger: proxytest.Logger()})
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	var stop sync.Once
	shutdown := func() {
		stop.Do(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			srv.Shutdown(ctx)
		})
	}
	t.Cleanup(shutdown)
	conn := proxytest.Dial(t, srv.Addr().String())
	env := &proxytest.Env{Etcd: etcd, Proxy: srv, Conn: conn, Elections: coordproxyv1.NewElectionServiceClient(conn)}
	o := observeExt(t, env, "e")
	if m := o.next(t); m.Event != coordproxyv1.ObserveResponse_EVENT_CURRENT {
		t.Fatalf("first message %s", eventText(m))
	}
	shutdown()
	if err := o.ended(t); status.Code(err) != codes.Unavailable {
		t.Fatalf("observe ended with %v, want Unavailable", err)
	}
}

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
