package electionproxy_test

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/coordproxy/coordproxy/proxy"
	"github.com/coordproxy/coordproxy/proxy/proxytest"
	epb "go.etcd.io/etcd/server/v3/etcdserver/api/v3election/v3electionpb"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3lock/v3lockpb"
)

// In etcd 3.7.3, Observe streams that fell behind a fast run of Proclaims
// and were then cancelled can leave their watchers behind for good, and
// the server's own watch stream wedged: later native Lock waiters are never
// woken (docs/benchmarks.md, "Native etcd after a scenario"). Through the proxy the same
// run leaves nothing behind, and locks still hand off at once.
//
// COORDPROXY_LAG_NATIVE=1 runs the same test against etcd's own services
// instead, to see etcd's behaviour (it failed there in two of four runs).
func TestObserve_laggingObserversCancelledLeaveNothingAndLocksStillHandOff(t *testing.T) {
	const observers, proclaims = 128, 4000
	env := proxytest.New(t, proxy.Config{QueueLinger: 100 * time.Millisecond})
	if os.Getenv("COORDPROXY_LAG_NATIVE") != "" {
		env.Election = epb.NewElectionClient(env.KV.ActiveConnection())
		env.Lock = v3lockpb.NewLockClient(env.KV.ActiveConnection())
	}
	ctx := proxytest.Ctx(t)
	lk := campaign(t, env, "lag", env.Grant(t, 60), "v0")
	env.Keys(t, "lag/") // connects the test's own etcd client before counting
	watchers0, goroutines0 := proxytest.EtcdWatchers(t), runtime.NumGoroutine()

	octx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for range observers {
		s, err := env.Election.Observe(octx, &epb.LeaderRequest{Name: []byte("lag")})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Recv(); err != nil { // the current leader
			t.Fatal(err)
		}
		wg.Go(func() {
			for {
				if _, err := s.Recv(); err != nil {
					return
				}
			}
		})
	}
	// Proclaims as fast as they go, without waiting for the observers.
	for i := range proclaims {
		if _, err := env.Election.Proclaim(ctx, &epb.ProclaimRequest{Leader: lk, Value: fmt.Appendf(nil, "v%d", i+1)}); err != nil {
			t.Fatal(err)
		}
	}
	cancel()
	wg.Wait()
	proxytest.WaitFor(t, 30*time.Second, func() (bool, string) {
		w, g := proxytest.EtcdWatchers(t)-watchers0, runtime.NumGoroutine()-goroutines0
		return w <= 0 && g <= 2, fmt.Sprintf("%d etcd watchers and %d goroutines more than before the observers", int(w), g)
	})

	// A lock still hands off: a waiter parked behind a holder gets the lock
	// as soon as the holder unlocks.
	held, err := env.Lock.Lock(ctx, &v3lockpb.LockRequest{Name: []byte("after-lag"), Lease: env.Grant(t, 60)})
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() {
		_, err := env.Lock.Lock(ctx, &v3lockpb.LockRequest{Name: []byte("after-lag"), Lease: env.Grant(t, 60)})
		got <- err
	}()
	env.WaitKeys(t, "after-lag/", 2)
	if _, err := env.Lock.Unlock(ctx, &v3lockpb.UnlockRequest{Key: held.Key}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-got:
		if err != nil {
			t.Fatalf("waiter: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the waiter was not woken 30 s after the holder unlocked")
	}
	// And the election is still observed from its current state.
	s, err := env.Election.Observe(ctx, &epb.LeaderRequest{Name: []byte("lag")})
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("v%d", proclaims); string(m.Kv.Value) != want {
		t.Fatalf("a new observer first got %q, want the last value %q", m.Kv.Value, want)
	}
}
