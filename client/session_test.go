package client_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/coordproxy/coordproxy/client"
	"github.com/coordproxy/coordproxy/proxy"
	"github.com/coordproxy/coordproxy/proxy/proxytest"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

func alive(t *testing.T, env *proxytest.Env, lease clientv3.LeaseID) bool {
	t.Helper()
	ttl, err := env.KV.TimeToLive(proxytest.Ctx(t), lease)
	if err != nil {
		t.Fatal(err)
	}
	return ttl.TTL > 0
}

// A Session's lease holds this client's Mutex, and concurrency's primitives
// and etcd's own services can use it too; Close revokes it at once.
func TestSession_holdsLocksAndCloseRevokes(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	ctx := proxytest.Ctx(t)
	cli := proxytest.Client(t, env.Proxy.Addr().String())
	s, err := client.NewSession(cli, client.WithTTL(30))
	if err != nil {
		t.Fatal(err)
	}
	m := client.NewMutex(s, "sess")
	if err := m.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	// concurrency's Election on the same lease, through the proxy.
	cs, err := concurrency.NewSession(cli, concurrency.WithLease(s.Lease()))
	if err != nil {
		t.Fatal(err)
	}
	e := concurrency.NewElection(cs, "sess-election")
	if err := e.Campaign(ctx, "me"); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	<-s.Done()
	if s.Err() != nil {
		t.Fatalf("Err after Close: %v", s.Err())
	}
	if alive(t, env, s.Lease()) {
		t.Fatal("lease alive after Close")
	}
	if keys := env.Keys(t, "sess"); len(keys) != 0 {
		t.Fatalf("keys after Close: %v", keys)
	}
}

// With two replicas behind one client, a replica that stops releases
// nothing: the session resumes its lease through the other, and the lock
// stays held.
func TestSession_resumesThroughAnotherReplica(t *testing.T) {
	a := proxytest.New(t, proxy.Config{})
	b := proxytest.NewProxyEnv(t, a.Etcd, a.Etcd.URL, proxy.Config{})
	ctx := proxytest.Ctx(t)
	cli := proxytest.Client(t, a.Proxy.Addr().String(), b.Proxy.Addr().String())
	s, err := client.NewSession(cli, client.WithTTL(30))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	m := client.NewMutex(s, "kept")
	if err := m.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	on, other := a, b
	if b.Metric(t, "coordproxy_sessions", nil) == 1 {
		on, other = b, a
	}
	if on.Metric(t, "coordproxy_sessions", nil) != 1 {
		t.Fatal("the session is on neither replica")
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	on.Proxy.Shutdown(sctx)
	proxytest.WaitFor(t, 30*time.Second, func() (bool, string) {
		n := other.Metric(t, "coordproxy_sessions", nil)
		return n == 1, fmt.Sprintf("%v sessions on the other replica", n)
	})
	select {
	case <-s.Done():
		t.Fatalf("session ended: %v", s.Err())
	default:
	}
	if !alive(t, other, s.Lease()) {
		t.Fatal("lease gone after its replica stopped")
	}
	if keys := other.Keys(t, "kept/"); len(keys) != 1 || string(keys[0].Key) != m.Key() {
		t.Fatalf("lock after the replica stopped: %v", keys)
	}
}

// A session whose lease is revoked elsewhere ends, and says so.
func TestSession_endsWhenItsLeaseIsRevokedElsewhere(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	cli := proxytest.Client(t, env.Proxy.Addr().String())
	// A short TTL: the proxy learns of the revoke at its next keep-alive, a
	// third of the TTL later.
	s, err := client.NewSession(cli, client.WithTTL(3))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := env.KV.Revoke(proxytest.Ctx(t), s.Lease()); err != nil {
		t.Fatal(err)
	}
	<-s.Done()
	if !errors.Is(s.Err(), rpctypes.ErrLeaseNotFound) {
		t.Fatalf("Err: %v, want %v", s.Err(), rpctypes.ErrLeaseNotFound)
	}
}

// Cut off from its proxy — its connections reset and new ones refused, or
// every packet dropped — a holder's session ends at its SafeUntil, from its
// own timer, before the next holder is granted; and the next holder is
// granted a window later, not when the 30 s TTL runs out.
func TestSession_aHolderCutOffConcludesItLostBeforeTheNextHolds(t *testing.T) {
	for _, how := range []string{"reset and refused", "blackhole"} {
		t.Run(how, func(t *testing.T) {
			env := proxytest.New(t, proxy.Config{})
			ctx := proxytest.Ctx(t)
			relay := proxytest.NewRelay(t, env.Proxy.Addr().String())
			cli := proxytest.Client(t, relay.Addr())
			s, err := client.NewSession(cli, client.WithTTL(30))
			if err != nil {
				t.Fatal(err)
			}
			if err := client.NewMutex(s, "cut").Lock(ctx); err != nil {
				t.Fatal(err)
			}
			ended := make(chan time.Time, 1)
			go func() { <-s.Done(); ended <- time.Now() }()
			wcli := proxytest.Client(t, env.Proxy.Addr().String())
			next := proxytest.Go(func() error {
				ws, err := client.NewSession(wcli, client.WithTTL(30))
				if err != nil {
					return err
				}
				return client.NewMutex(ws, "cut").Lock(ctx)
			})
			env.WaitKeys(t, "cut/", 2)
			if how == "blackhole" {
				relay.Blackhole()
			} else {
				relay.Refuse()
				relay.Reset()
			}
			if err := next.Wait(t); err != nil {
				t.Fatal(err)
			}
			granted := time.Now()
			select {
			case at := <-ended:
				if !at.Before(granted) {
					t.Fatalf("the cut-off holder's session ended %s after the next holder was granted", at.Sub(granted))
				}
			default:
				t.Fatalf("the next holder was granted while the cut-off holder's session goes on (%s left)", s.Remaining())
			}
			if safe := s.SafeUntil(); !safe.Before(granted) {
				t.Fatalf("the cut-off holder was safe until %s after the next holder was granted", safe.Sub(granted))
			}
			if !errors.Is(s.Err(), client.ErrSessionLost) {
				t.Fatalf("Err %v, want ErrSessionLost", s.Err())
			}
			if s.Remaining() > 0 {
				t.Fatal("Remaining > 0 after the session was lost")
			}
		})
	}
}

// Heartbeats keep a session safe for as long as it lasts: SafeUntil moves
// with each answer and stays ahead of now, over many windows.
func TestSession_heartbeatsKeepItSafe(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	cli := proxytest.Client(t, env.Proxy.Addr().String())
	s, err := client.NewSession(cli, client.WithTTL(30), client.WithWindow(300*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Window() != 300*time.Millisecond || s.LockDelay() != 0 {
		t.Fatalf("window %s, lock delay %s", s.Window(), s.LockDelay())
	}
	first := s.SafeUntil()
	for range 10 {
		select {
		case <-s.Renewed():
		case <-s.Done():
			t.Fatalf("session ended: %v", s.Err())
		}
	}
	if !s.SafeUntil().After(first) {
		t.Fatal("SafeUntil did not move")
	}
	if s.Remaining() <= 0 || s.Remaining() > 300*time.Millisecond {
		t.Fatalf("Remaining %s with a 300ms window", s.Remaining())
	}
}

// A session whose replica goes away resumes through another one, within
// its window, even when that other one was unreachable for a while before
// (its connection waiting out a reconnect backoff of seconds).
func TestSession_resumesThroughAReplicaThatWasDownBefore(t *testing.T) {
	a := proxytest.New(t, proxy.Config{})
	b := proxytest.NewProxyEnv(t, a.Etcd, a.Etcd.URL, proxy.Config{})
	ctx := proxytest.Ctx(t)
	toA, toB := proxytest.NewRelay(t, a.Proxy.Addr().String()), proxytest.NewRelay(t, b.Proxy.Addr().String())
	toB.Refuse()
	cli := proxytest.Client(t, toA.Addr(), toB.Addr())
	s, err := client.NewSession(cli, client.WithTTL(30))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := client.NewMutex(s, "kept").Lock(ctx); err != nil {
		t.Fatal(err)
	}
	// Long enough for the connection's backoff to grow past a window.
	time.Sleep(8 * time.Second)
	toB.Accept()
	toA.Refuse()
	toA.Reset()
	proxytest.WaitFor(t, 30*time.Second, func() (bool, string) {
		return b.Metric(t, "coordproxy_sessions", nil) == 1, "the session did not resume on the other replica"
	})
	select {
	case <-s.Done():
		t.Fatalf("the session ended: %v", s.Err())
	default:
	}
}

// A Lock that waits on a session that is lost meanwhile returns the
// session's error instead of waiting on a connection that hangs.
func TestSession_aWaitEndsWhenItsSessionIsLost(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	ctx := proxytest.Ctx(t)
	holder, err := client.NewSession(proxytest.Client(t, env.Proxy.Addr().String()), client.WithTTL(30))
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	if err := client.NewMutex(holder, "busy").Lock(ctx); err != nil {
		t.Fatal(err)
	}
	relay := proxytest.NewRelay(t, env.Proxy.Addr().String())
	s, err := client.NewSession(proxytest.Client(t, relay.Addr()), client.WithTTL(30))
	if err != nil {
		t.Fatal(err)
	}
	wait := proxytest.Go(func() error { return client.NewMutex(s, "busy").Lock(ctx) })
	env.WaitKeys(t, "busy/", 2)
	relay.Blackhole()
	if err := wait.Wait(t); !errors.Is(err, client.ErrSessionLost) {
		t.Fatalf("the wait on a lost session: %v, want ErrSessionLost", err)
	}
}
