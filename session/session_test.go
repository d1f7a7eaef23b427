package session_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	coordproxyv1 "github.com/coordproxy/coordproxy/proto/coordproxy/v1"
	"github.com/coordproxy/coordproxy/proxy"
	"github.com/coordproxy/coordproxy/proxy/proxytest"
	"github.com/coordproxy/coordproxy/session"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3lock/v3lockpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// open starts a session stream on env's proxy with first as its first
// message and returns it with the first answer.
func open(t *testing.T, env *proxytest.Env, ctx context.Context, first *coordproxyv1.SessionRequest) (coordproxyv1.SessionService_KeepAliveClient, *coordproxyv1.SessionResponse) {
	t.Helper()
	st, err := env.Sessions.KeepAlive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(first); err != nil {
		t.Fatal(err)
	}
	resp, err := st.Recv()
	if err != nil {
		t.Fatalf("opening %v: %v", first, err)
	}
	return st, resp
}

func leaseAlive(t *testing.T, env *proxytest.Env, lease int64) bool {
	t.Helper()
	ttl, err := env.KV.TimeToLive(proxytest.Ctx(t), clientv3.LeaseID(lease))
	if err != nil {
		t.Fatal(err)
	}
	return ttl.TTL > 0
}

func ended(t *testing.T, env *proxytest.Env, how string, n float64) {
	t.Helper()
	proxytest.WaitFor(t, 30*time.Second, func() (bool, string) {
		v := env.Metric(t, "coordproxy_sessions_ended_total", map[string]string{"how": how})
		return v == n, fmt.Sprintf("%v sessions ended %s, want %v", v, how, n)
	})
}

// A session grants its lease, writes its record on it and tells each
// refresh; the record vanishes with the lease.
func TestKeepAlive_grantsAndRefreshesTheLease(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	ctx := proxytest.Ctx(t)
	st, first := open(t, env, ctx, &coordproxyv1.SessionRequest{Ttl: 3})
	if first.Lease == 0 || first.Ttl != 3 || first.Header.Revision == 0 {
		t.Fatalf("first answer %v", first)
	}
	rec := env.Keys(t, session.RecordKey(clientv3.LeaseID(first.Lease)))
	if len(rec) != 1 || rec[0].Lease != first.Lease {
		t.Fatalf("session record %v, want one key on lease %x", rec, first.Lease)
	}
	// etcd's client refreshes every TTL/3: two refreshes come within the TTL.
	for range 2 {
		r, err := st.Recv()
		if err != nil || r.Lease != first.Lease || r.Ttl <= 0 || r.Closed {
			t.Fatalf("refresh %v, %v", r, err)
		}
	}
	if !leaseAlive(t, env, first.Lease) {
		t.Fatal("lease not alive")
	}
	if err := st.Send(&coordproxyv1.SessionRequest{Close: true}); err != nil {
		t.Fatal(err)
	}
	for {
		r, err := st.Recv()
		if err != nil {
			t.Fatalf("waiting for the closed answer: %v", err)
		}
		if r.Closed {
			break
		}
	}
	if leaseAlive(t, env, first.Lease) {
		t.Fatal("lease alive after close")
	}
	if rec := env.Keys(t, session.RecordPrefix); len(rec) != 0 {
		t.Fatalf("records left: %v", rec)
	}
	ended(t, env, "close", 1)
}

// A client that goes away (its stream cancelled, or its connection closed)
// has its lease revoked after the grace: its lock passes to the next waiter.
func TestKeepAlive_aClientThatGoesAwayReleasesWhatItHolds(t *testing.T) {
	for _, how := range []string{"cancel", "connection"} {
		t.Run(how, func(t *testing.T) {
			env := proxytest.New(t, proxy.Config{})
			ctx := proxytest.Ctx(t)
			// The holder has its own connection, as its own process would.
			holderConn := proxytest.Dial(t, env.Proxy.Addr().String())
			sctx, cancel := context.WithCancel(ctx)
			defer cancel()
			st, err := coordproxyv1.NewSessionServiceClient(holderConn).KeepAlive(sctx)
			if err != nil {
				t.Fatal(err)
			}
			grace := int64(0)
			if err := st.Send(&coordproxyv1.SessionRequest{Ttl: 30, GraceMs: &grace}); err != nil {
				t.Fatal(err)
			}
			s, err := st.Recv()
			if err != nil {
				t.Fatal(err)
			}
			held, err := v3lockpb.NewLockClient(holderConn).Lock(ctx, &v3lockpb.LockRequest{Name: []byte("job"), Lease: s.Lease})
			if err != nil {
				t.Fatal(err)
			}
			waiter := env.Grant(t, 30)
			next := proxytest.Go(func() error {
				_, err := env.Lock.Lock(ctx, &v3lockpb.LockRequest{Name: []byte("job"), Lease: waiter})
				return err
			})
			env.WaitKeys(t, "job/", 2)

			if how == "cancel" {
				cancel()
			} else {
				holderConn.Close()
			}
			if err := next.Wait(t); err != nil {
				t.Fatalf("next waiter: %v", err)
			}
			if leaseAlive(t, env, s.Lease) {
				t.Fatal("the gone client's lease is alive")
			}
			if keys := env.Keys(t, "job/"); len(keys) != 1 || string(keys[0].Key) == string(held.Key) {
				t.Fatalf("keys %v, want only the waiter's", keys)
			}
			ended(t, env, "gone", 1)
		})
	}
}

// A session resumed through another replica within the grace is not
// revoked by the replica it left; resumed after that replica revoked, it is
// told its lease is gone.
func TestKeepAlive_resumedElsewhereIsNotRevoked(t *testing.T) {
	a := proxytest.New(t, proxy.Config{})
	b := proxytest.NewProxyEnv(t, a.Etcd, a.Etcd.URL, proxy.Config{})
	ctx := proxytest.Ctx(t)

	actx, leave := context.WithCancel(ctx)
	grace := int64(2000)
	_, s := open(t, a, actx, &coordproxyv1.SessionRequest{Ttl: 30, GraceMs: &grace})
	// The client moves to b (a's stream not yet gone), then leaves a.
	_, r := open(t, b, ctx, &coordproxyv1.SessionRequest{Lease: s.Lease, GraceMs: &grace})
	if r.Lease != s.Lease || r.Ttl <= 0 {
		t.Fatalf("resumed %v", r)
	}
	leave()
	ended(t, a, "resumed", 1)
	if !leaseAlive(t, a, s.Lease) {
		t.Fatal("the replica the client left revoked the lease it resumed elsewhere")
	}
	if ended := a.Metric(t, "coordproxy_sessions_ended_total", map[string]string{"how": "gone"}); ended != 0 {
		t.Fatalf("%v sessions revoked as gone", ended)
	}

	// Gone for good: revoked after the grace, and a late resume is refused
	// with etcd's words.
	cctx, gone := context.WithCancel(ctx)
	zero := int64(0)
	_, s2 := open(t, a, cctx, &coordproxyv1.SessionRequest{Ttl: 30, GraceMs: &zero})
	gone()
	ended(t, a, "gone", 1)
	st, err := b.Sessions.KeepAlive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	st.Send(&coordproxyv1.SessionRequest{Lease: s2.Lease})
	if _, err := st.Recv(); status.Code(err) != codes.NotFound || status.Convert(err).Message() != rpctypes.ErrLeaseNotFound.Error() {
		t.Fatalf("resuming a revoked session: %v, want NotFound %q", err, rpctypes.ErrLeaseNotFound)
	}
}

// A proxy that stops releases nothing: its session streams end with
// Unavailable, the lease and the record stay, and the client resumes the
// session through another replica.
func TestKeepAlive_aStoppingProxyReleasesNothing(t *testing.T) {
	a := proxytest.New(t, proxy.Config{})
	b := proxytest.NewProxyEnv(t, a.Etcd, a.Etcd.URL, proxy.Config{})
	ctx := proxytest.Ctx(t)
	zero := int64(0)
	st, s := open(t, a, ctx, &coordproxyv1.SessionRequest{Ttl: 30, GraceMs: &zero})
	held := a.MustLock(t, "kept", s.Lease)

	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a.Proxy.Shutdown(sctx)
	for {
		if _, err := st.Recv(); err != nil {
			if status.Code(err) != codes.Unavailable {
				t.Fatalf("session stream on a stopping proxy: %v, want Unavailable", err)
			}
			break
		}
	}
	if !leaseAlive(t, b, s.Lease) {
		t.Fatal("a stopping proxy revoked a session's lease")
	}
	if keys := b.Keys(t, "kept/"); len(keys) != 1 || string(keys[0].Key) != string(held.Key) {
		t.Fatalf("the lock after the proxy stopped: %v", keys)
	}
	_, r := open(t, b, ctx, &coordproxyv1.SessionRequest{Lease: s.Lease})
	if r.Lease != s.Lease {
		t.Fatalf("resumed %v", r)
	}
	if rec := b.Keys(t, session.RecordKey(clientv3.LeaseID(s.Lease))); len(rec) != 1 {
		t.Fatalf("record %v", rec)
	}
}

// Bad first messages are InvalidArgument and leave nothing in etcd.
func TestKeepAlive_badOpeningsAreRefusedAndLeaveNothing(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	ctx := proxytest.Ctx(t)
	existing := env.Grant(t, 5)
	big, neg := int64(6000), int64(-1)
	for _, req := range []*coordproxyv1.SessionRequest{
		{},
		{Ttl: 5, Lease: existing},
		{Ttl: -5},
		{Lease: -1},
		{Ttl: 5, GraceMs: &big},
		{Ttl: 5, GraceMs: &neg},
		{Lease: existing, GraceMs: &big},
		{Ttl: 5, Close: true},
		{Ttl: 5, Heartbeat: 1},
		{Ttl: 5, WindowMs: 99},
		{Ttl: 5, WindowMs: 300001},
		{Ttl: 5, WindowMs: -750},
		{Ttl: 5, WindowMs: 750, GraceMs: &neg},
		{Ttl: 5, WindowMs: 750, GraceMs: new(int64)},
		{Ttl: 5, WindowMs: 750, LockDelayMs: -1},
		{Ttl: 5, WindowMs: 750, LockDelayMs: 60001},
		{Lease: existing, WindowMs: 50},
	} {
		st, err := env.Sessions.KeepAlive(ctx)
		if err != nil {
			t.Fatal(err)
		}
		st.Send(req)
		if _, err := st.Recv(); status.Code(err) != codes.InvalidArgument {
			t.Errorf("opening with %v: %v, want InvalidArgument", req, err)
		}
	}
	leases, err := env.KV.Leases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(leases.Leases) != 1 {
		t.Fatalf("leases after the refusals: %v, want only the test's own", leases.Leases)
	}
	if rec := env.Keys(t, session.RecordPrefix); len(rec) != 0 {
		t.Fatalf("records: %v", rec)
	}
	// An unknown lease: etcd's answer, with heartbeats or without.
	for _, window := range []int64{0, 750} {
		st, _ := env.Sessions.KeepAlive(ctx)
		st.Send(&coordproxyv1.SessionRequest{Lease: 0x7fff0000, WindowMs: window})
		if _, err := st.Recv(); status.Code(err) != codes.NotFound || status.Convert(err).Message() != rpctypes.ErrLeaseNotFound.Error() {
			t.Fatalf("unknown lease (window %d ms): %v", window, err)
		}
	}
	if rec := env.Keys(t, session.RecordPrefix); len(rec) != 0 {
		t.Fatalf("records after unknown leases: %v", rec)
	}
}
