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
	epb "go.etcd.io/etcd/server/v3/etcdserver/api/v3election/v3electionpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

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
					errs <- fmt.Errorf("observer %d: event %d (%s) never came: %w", i, j, w, o.end)
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
