package session_test

import (
	"context"
	"testing"
	"time"

	coordproxyv1 "github.com/coordproxy/coordproxy/proto/coordproxy/v1"
	"github.com/coordproxy/coordproxy/proxy"
	"github.com/coordproxy/coordproxy/proxy/proxytest"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3lock/v3lockpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// A heartbeating session's safety rests on one inequality: the proxy
// revokes no sooner than the window after it read the client's last
// heartbeat, so nobody else holds before (client's send time of any
// answered heartbeat) + window. These tests check it the way a client
// would rely on it: the next holder's grant comes after the old holder's
// last heartbeat's send time plus the window (and lock delay), read from
// the same clock. Slowness can only make the grant later.

// beater is a heartbeating session stream on its own connection, as a
// holder process would have.
type beater struct {
	t     *testing.T
	conn  *grpc.ClientConn
	st    coordproxyv1.SessionService_KeepAliveClient
	lease int64
	n     uint64
	last  time.Time // send time of the last heartbeat answered
}

func openBeater(t *testing.T, env *proxytest.Env, ctx context.Context, first *coordproxyv1.SessionRequest) (*beater, *coordproxyv1.SessionResponse) {
	t.Helper()
	conn := proxytest.Dial(t, env.Proxy.Addr().String())
	st, err := coordproxyv1.NewSessionServiceClient(conn).KeepAlive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sent := time.Now()
	if err := st.Send(first); err != nil {
		t.Fatal(err)
	}
	resp, err := st.Recv()
	if err != nil {
		t.Fatalf("opening %v: %v", first, err)
	}
	return &beater{t: t, conn: conn, st: st, lease: resp.Lease, last: sent}, resp
}

// beat sends the next heartbeat and reads its answer.
func (b *beater) beat() *coordproxyv1.SessionResponse {
	b.t.Helper()
	b.n++
	sent := time.Now()
	b.st.Send(&coordproxyv1.SessionRequest{Heartbeat: b.n}) // an error shows in Recv
	resp, err := b.st.Recv()
	if err != nil {
		b.t.Fatalf("heartbeat %d: %v", b.n, err)
	}
	if resp.Heartbeat != b.n {
		b.t.Fatalf("heartbeat %d answered as %d", b.n, resp.Heartbeat)
	}
	b.last = sent
	return resp
}

// lockBehind locks name on the beater's lease and starts a waiter on a lease
// of its own; the waiter's result carries the time it was granted.
func lockBehind(t *testing.T, env *proxytest.Env, ctx context.Context, b *beater, name string) *proxytest.Call {
	t.Helper()
	if _, err := v3lockpb.NewLockClient(b.conn).Lock(ctx, &v3lockpb.LockRequest{Name: []byte(name), Lease: b.lease}); err != nil {
		t.Fatal(err)
	}
	waiter := env.Grant(t, 30)
	next := proxytest.Go(func() error {
		_, err := env.Lock.Lock(ctx, &v3lockpb.LockRequest{Name: []byte(name), Lease: waiter})
		return err
	})
	env.WaitKeys(t, name+"/", 2)
	return next
}

// A heartbeating session answers each heartbeat at once with its number and
// the lease's least life in etcd, and its lease lives on past its TTL.
func TestHeartbeats_areAnsweredWithTheLeasesLeastLife(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	ctx := proxytest.Ctx(t)
	b, first := openBeater(t, env, ctx, &coordproxyv1.SessionRequest{Ttl: 2, WindowMs: 400})
	if first.WindowMs != 400 || first.Heartbeat != 0 || first.LeaseMs <= 0 || first.LeaseMs > 2000 || first.LockDelayMs != 0 {
		t.Fatalf("first answer %v", first)
	}
	start := time.Now()
	for time.Since(start) < 5*time.Second {
		r := b.beat()
		if r.LeaseMs <= 0 || r.LeaseMs > 2000 || r.Lease != b.lease || r.Ttl <= 0 {
			t.Fatalf("answer to heartbeat %d: %v", b.n, r)
		}
		time.Sleep(100 * time.Millisecond) // a client's pace: window/4
	}
	if !leaseAlive(t, env, b.lease) {
		t.Fatal("the lease of a session that heartbeats expired")
	}
	if err := b.st.Send(&coordproxyv1.SessionRequest{Close: true}); err != nil {
		t.Fatal(err)
	}
	for {
		r, err := b.st.Recv()
		if err != nil {
			t.Fatalf("waiting for the closed answer: %v", err)
		}
		if r.Closed {
			break
		}
	}
	if leaseAlive(t, env, b.lease) {
		t.Fatal("lease alive after close")
	}
}

// Whatever ends the holder's contact — its connection closed (a dead
// process and a cut connection look the same), or silence with the stream
// still open (a partition, a paused process) — the waiter is granted no
// sooner than the window after the holder's last answered heartbeat was
// sent, and the lease is revoked then, not when its TTL runs out.
func TestHeartbeats_theNextHolderWaitsOutTheWindow(t *testing.T) {
	for _, how := range []string{"connection closed", "silent"} {
		t.Run(how, func(t *testing.T) {
			env := proxytest.New(t, proxy.Config{})
			ctx := proxytest.Ctx(t)
			const window = 1500 * time.Millisecond
			b, _ := openBeater(t, env, ctx, &coordproxyv1.SessionRequest{Ttl: 30, WindowMs: window.Milliseconds()})
			next := lockBehind(t, env, ctx, b, "job")
			b.beat()
			if how == "connection closed" {
				b.conn.Close()
			}
			if err := next.Wait(t); err != nil {
				t.Fatalf("next waiter: %v", err)
			}
			granted := time.Now()
			if safe := b.last.Add(window); granted.Before(safe) {
				t.Fatalf("the waiter was granted %s before the holder's window ended", safe.Sub(granted))
			}
			if leaseAlive(t, env, b.lease) {
				t.Fatal("the holder's lease is alive")
			}
			ended(t, env, "gone", 1)
			if how == "silent" {
				if _, err := b.st.Recv(); status.Code(err) != codes.NotFound || status.Convert(err).Message() != rpctypes.ErrLeaseNotFound.Error() {
					t.Fatalf("the silent holder's stream: %v, want etcd's lease not found", err)
				}
			}
		})
	}
}

// A lock delay, the session's or the proxy's (the larger), holds the lease
// that much longer after the window; a close does not wait for it.
func TestHeartbeats_aLockDelayHoldsTheLeaseLonger(t *testing.T) {
	for _, c := range []struct {
		name           string
		proxy, session time.Duration
	}{
		{"the session's", 0, 1200 * time.Millisecond},
		{"the proxy's", 1200 * time.Millisecond, 300 * time.Millisecond},
	} {
		t.Run(c.name, func(t *testing.T) {
			env := proxytest.New(t, proxy.Config{SessionLockDelay: c.proxy})
			ctx := proxytest.Ctx(t)
			const window = 500 * time.Millisecond
			b, first := openBeater(t, env, ctx, &coordproxyv1.SessionRequest{Ttl: 30, WindowMs: window.Milliseconds(), LockDelayMs: c.session.Milliseconds()})
			delay := max(c.proxy, c.session)
			if first.LockDelayMs != delay.Milliseconds() {
				t.Fatalf("lock delay in force %d ms, want %s", first.LockDelayMs, delay)
			}
			next := lockBehind(t, env, ctx, b, "job")
			b.beat()
			b.conn.Close()
			if err := next.Wait(t); err != nil {
				t.Fatalf("next waiter: %v", err)
			}
			if safe, granted := b.last.Add(window+delay), time.Now(); granted.Before(safe) {
				t.Fatalf("the waiter was granted %s before the window and lock delay ended", safe.Sub(granted))
			}
			// A close releases at once, lock delay or not.
			c, _ := openBeater(t, env, ctx, &coordproxyv1.SessionRequest{Ttl: 30, WindowMs: window.Milliseconds(), LockDelayMs: c.session.Milliseconds()})
			if err := c.st.Send(&coordproxyv1.SessionRequest{Close: true}); err != nil {
				t.Fatal(err)
			}
			for {
				r, err := c.st.Recv()
				if err != nil {
					t.Fatal(err)
				}
				if r.Closed {
					break
				}
			}
			if leaseAlive(t, env, c.lease) {
				t.Fatal("lease alive after close")
			}
		})
	}
}

// A session resumed through another replica within the window is kept: the
// replica it left does not revoke it when the window passes there.
func TestHeartbeats_aSessionResumedElsewhereInTimeIsKept(t *testing.T) {
	a := proxytest.New(t, proxy.Config{})
	bEnv := proxytest.NewProxyEnv(t, a.Etcd, a.Etcd.URL, proxy.Config{})
	ctx := proxytest.Ctx(t)
	const window = 500 * time.Millisecond
	old, _ := openBeater(t, a, ctx, &coordproxyv1.SessionRequest{Ttl: 30, WindowMs: window.Milliseconds()})
	old.beat()
	old.conn.Close()
	moved, r := openBeater(t, bEnv, ctx, &coordproxyv1.SessionRequest{Lease: old.lease, WindowMs: window.Milliseconds()})
	if r.Lease != old.lease || r.WindowMs != window.Milliseconds() {
		t.Fatalf("resumed %v", r)
	}
	// Kept alive through b by its heartbeats, past a's window.
	for a.Metric(t, "coordproxy_sessions_ended_total", map[string]string{"how": "resumed"}) == 0 {
		moved.beat()
		time.Sleep(window / 4)
	}
	if !leaseAlive(t, a, old.lease) {
		t.Fatal("the replica the client left revoked the lease it resumed elsewhere")
	}
}

// The answers' lease_ms is a lower bound of the lease's life in etcd even
// when the proxy is cut off from etcd: the client's bound (send time of
// the heartbeat + lease_ms) never passes the moment etcd lets the lease
// expire, and the session ends as lost once it may have.
func TestHeartbeats_leaseMsIsALowerBoundWhenEtcdIsCutOff(t *testing.T) {
	etcd := proxytest.StartEtcd(t)
	fp, url := proxytest.FaultProxy(t, etcd.URL)
	env := proxytest.NewProxyEnv(t, etcd, url, proxy.Config{})
	ctx := proxytest.Ctx(t)
	b, _ := openBeater(t, env, ctx, &coordproxyv1.SessionRequest{Ttl: 2, WindowMs: 300})
	b.beat()

	// etcd, asked directly all along: when each answer arrived, and
	// whether the lease was there.
	type sample struct {
		arrived time.Time
		alive   bool
	}
	var samples []sample
	pctx, stopPolling := context.WithCancel(ctx)
	polled := proxytest.Go(func() error {
		for pctx.Err() == nil {
			ttl, err := env.KV.TimeToLive(pctx, clientv3.LeaseID(b.lease))
			if err != nil {
				return nil
			}
			samples = append(samples, sample{time.Now(), ttl.TTL >= 0})
			if ttl.TTL < 0 {
				return nil
			}
		}
		return nil
	})

	fp.PauseTx()
	fp.PauseRx()
	defer func() { fp.UnpauseTx(); fp.UnpauseRx() }()
	var bound time.Time // the latest the client may count on
	for {
		b.n++
		sent := time.Now()
		b.st.Send(&coordproxyv1.SessionRequest{Heartbeat: b.n})
		r, err := b.st.Recv()
		if err != nil {
			if status.Code(err) != codes.NotFound {
				t.Fatalf("the session cut off from etcd ended with %v, want lease not found", err)
			}
			break
		}
		if e := sent.Add(time.Duration(r.LeaseMs) * time.Millisecond); e.After(bound) {
			bound = e
		}
		time.Sleep(75 * time.Millisecond)
	}
	if time.Now().Before(bound) {
		t.Fatalf("the session ended as lost %s before the bound it gave", time.Until(bound))
	}
	proxytest.WaitFor(t, 30*time.Second, func() (bool, string) {
		ttl, err := env.KV.TimeToLive(ctx, clientv3.LeaseID(b.lease))
		return err == nil && ttl.TTL < 0, "the lease of a session cut off from etcd did not expire"
	})
	stopPolling()
	polled.Wait(t)
	checked := 0
	for _, s := range samples {
		if s.arrived.Before(bound) {
			checked++
			if !s.alive {
				t.Fatalf("the lease expired %s before the bound the proxy gave", bound.Sub(s.arrived))
			}
		}
	}
	if checked == 0 {
		t.Fatal("no answer of etcd came before the bound: nothing was checked")
	}
}
