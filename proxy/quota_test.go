package proxy_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	coordproxyv1 "github.com/coordproxy/coordproxy/proto/coordproxy/v1"
	"github.com/coordproxy/coordproxy/proxy"
	"github.com/coordproxy/coordproxy/proxy/proxytest"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3lock/v3lockpb"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Each quota of the policy file: below it nothing changes; over it the
// call is refused with ResourceExhausted and the quota's message, etcd's
// keyspace (and its leases) is what it was, and the counter of the rule
// and quota moves; what is given back is usable again.

// quotaEnv is a proxy whose policy lets anonymous callers do everything,
// with quotas (YAML under "quotas:").
func quotaEnv(t *testing.T, quotas string) *proxytest.Env {
	t.Helper()
	file := filepath.Join(t.TempDir(), "policy.yaml")
	doc := "rules:\n  - identities: [anonymous]\n    prefixes: [\"\"]\n    verbs: [lock, elect, read, write, lease, admin]\nquotas:\n" + quotas
	if err := os.WriteFile(file, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	return proxytest.New(t, proxy.Config{PolicyFile: file})
}

// exhausted fails t unless err is the refusal of quota (its message) of
// rule, with its QuotaFailure detail.
func exhausted(t *testing.T, what string, err error, message, rule string) {
	t.Helper()
	st := status.Convert(err)
	if st.Code() != codes.ResourceExhausted || st.Message() != message {
		t.Fatalf("%s: %v, want ResourceExhausted %q", what, err, message)
	}
	for _, d := range st.Details() {
		if qf, ok := d.(*errdetails.QuotaFailure); ok && len(qf.Violations) == 1 && qf.Violations[0].Subject == "quota rule "+rule {
			return
		}
	}
	t.Errorf("%s: details %v, want a QuotaFailure naming quota rule %s", what, st.Details(), rule)
}

func exceeded(t *testing.T, env *proxytest.Env, rule, quota string) float64 {
	t.Helper()
	return env.Metric(t, "coordproxy_quota_exceeded_total", map[string]string{"rule": rule, "quota": quota})
}

// unchanged fails t if etcd's keys or leases differ from before.
func unchanged(t *testing.T, env *proxytest.Env, what, before string) {
	t.Helper()
	if after := snapshot(t, env.KV); after != before {
		t.Fatalf("%s left etcd changed:\nbefore %s\nafter  %s", what, before, after)
	}
}

// Held keys, under a named rule for a certificate identity: two locks
// held, a third refused (TryLock too); an Unlock, or the lease's revoke,
// gives them back.
func TestQuota_heldKeys(t *testing.T) {
	pki := proxytest.NewPKI(t)
	etcd := proxytest.StartEtcd(t)
	file := filepath.Join(t.TempDir(), "policy.yaml")
	doc := `
rules:
  - identities: ["spiffe://test/*"]
    prefixes: [""]
    verbs: [lock, elect, read, write, lease]
quotas:
  default:
    held: 0
  rules:
    - name: tenant-a
      identities: ["spiffe://test/a"]
      held: 2
`
	if err := os.WriteFile(file, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	srv := proxytest.StartProxy(t, []string{etcd.URL}, proxy.Config{CertFile: pki.ServerCert, KeyFile: pki.ServerKey,
		TrustedCAFile: pki.CAFile, ClientCertAuth: true, PolicyFile: file})
	a := newTenant(t, srv.Addr().String(), pki.IdentityTLS(t, "spiffe://test/a"))
	other := newTenant(t, srv.Addr().String(), pki.IdentityTLS(t, "spiffe://test/other"))
	root := proxytest.Client(t, etcd.URL)
	ctx := proxytest.Ctx(t)
	metric := func(rule string) float64 {
		return proxytest.Gathered(t, srv.Registry(), "coordproxy_quota_exceeded_total", map[string]string{"rule": rule, "quota": "held"})
	}

	lease, err := a.kv.Grant(ctx, 600)
	if err != nil {
		t.Fatal(err)
	}
	var keys [][]byte
	for _, name := range []string{"q/1", "q/2"} {
		r, err := a.lock.Lock(ctx, &v3lockpb.LockRequest{Name: []byte(name), Lease: int64(lease.ID)})
		if err != nil {
			t.Fatalf("Lock %s below the quota: %v", name, err)
		}
		keys = append(keys, r.Key)
	}
	before := snapshot(t, root)
	_, err = a.lock.Lock(ctx, &v3lockpb.LockRequest{Name: []byte("q/3"), Lease: int64(lease.ID)})
	exhausted(t, "a third Lock", err, "etcdserver: too many held keys", "tenant-a")
	_, err = a.locks.TryLock(ctx, &coordproxyv1.LockRequest{Name: []byte("q/3"), Lease: int64(lease.ID)})
	exhausted(t, "a TryLock", err, "etcdserver: too many held keys", "tenant-a")
	unchanged(t, &proxytest.Env{KV: root}, "the refused Lock and TryLock", before)
	if n := metric("tenant-a"); n != 2 {
		t.Errorf("coordproxy_quota_exceeded_total{rule=tenant-a,quota=held} %v, want 2", n)
	}
	// Another identity has its own count: the default, none at all.
	ol, err := other.kv.Grant(ctx, 600)
	if err != nil {
		t.Fatal(err)
	}
	_, err = other.lock.Lock(ctx, &v3lockpb.LockRequest{Name: []byte("q/o"), Lease: int64(ol.ID)})
	exhausted(t, "the other identity's Lock", err, "etcdserver: too many held keys", "default")
	if n := metric("default"); n != 1 {
		t.Errorf("coordproxy_quota_exceeded_total{rule=default,quota=held} %v, want 1", n)
	}

	if _, err := a.lock.Unlock(ctx, &v3lockpb.UnlockRequest{Key: keys[0]}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.lock.Lock(ctx, &v3lockpb.LockRequest{Name: []byte("q/3"), Lease: int64(lease.ID)}); err != nil {
		t.Fatalf("Lock after an Unlock gave one back: %v", err)
	}
	if _, err := a.kv.Revoke(ctx, lease.ID); err != nil {
		t.Fatal(err)
	}
	l2, err := a.kv.Grant(ctx, 600)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"q/4", "q/5"} {
		if _, err := a.lock.Lock(ctx, &v3lockpb.LockRequest{Name: []byte(name), Lease: int64(l2.ID)}); err != nil {
			t.Fatalf("Lock %s after the lease's revoke gave both back: %v", name, err)
		}
	}
}

// Waiting calls: one Lock waits, a second one is refused; when the first
// is granted, a Lock may wait again.
func TestQuota_waitingCalls(t *testing.T) {
	env := quotaEnv(t, "  default:\n    waiting: 1\n")
	ctx := proxytest.Ctx(t)
	l1, l2 := env.Grant(t, 600), env.Grant(t, 600)
	held, err := env.Lock.Lock(ctx, &v3lockpb.LockRequest{Name: []byte("w"), Lease: l1})
	if err != nil {
		t.Fatal(err)
	}
	waiter := proxytest.Go(func() error {
		_, err := env.Lock.Lock(ctx, &v3lockpb.LockRequest{Name: []byte("w"), Lease: l2})
		return err
	})
	proxytest.WaitFor(t, 30*time.Second, func() (bool, string) {
		n := env.Metric(t, "coordproxy_waiters", map[string]string{"service": "lock"})
		return n == 1, fmt.Sprintf("%v waiters, want 1", n)
	})
	before := snapshot(t, env.KV)
	_, err = env.Lock.Lock(ctx, &v3lockpb.LockRequest{Name: []byte("x"), Lease: l1})
	exhausted(t, "a second waiting call", err, "etcdserver: too many waiting calls", "default")
	unchanged(t, env, "the refused Lock", before)
	if n := exceeded(t, env, "default", "waiting"); n != 1 {
		t.Errorf("coordproxy_quota_exceeded_total{quota=waiting} %v, want 1", n)
	}
	if _, err := env.Lock.Unlock(ctx, &v3lockpb.UnlockRequest{Key: held.Key}); err != nil {
		t.Fatal(err)
	}
	if err := waiter.Wait(t); err != nil {
		t.Fatalf("the waiting Lock: %v", err)
	}
	if _, err := env.Lock.Lock(ctx, &v3lockpb.LockRequest{Name: []byte("x"), Lease: l1}); err != nil {
		t.Fatalf("Lock once nobody waits: %v", err)
	}
}

// Sessions: one stream open, a second refused before any lease is
// granted; once the first ends, another opens.
func TestQuota_sessions(t *testing.T) {
	env := quotaEnv(t, "  default:\n    sessions: 1\n")
	ctx := proxytest.Ctx(t)
	open := func(ctx context.Context) (*coordproxyv1.SessionResponse, error) {
		st, err := env.Sessions.KeepAlive(ctx)
		if err != nil {
			return nil, err
		}
		if err := st.Send(&coordproxyv1.SessionRequest{Ttl: 30}); err != nil {
			return nil, err
		}
		return st.Recv()
	}
	firstCtx, endFirst := context.WithCancel(ctx)
	if _, err := open(firstCtx); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, env.KV)
	_, err := open(ctx)
	exhausted(t, "a second session", err, "etcdserver: too many sessions", "default")
	unchanged(t, env, "the refused session", before)
	if n := exceeded(t, env, "default", "sessions"); n != 1 {
		t.Errorf("coordproxy_quota_exceeded_total{quota=sessions} %v, want 1", n)
	}
	endFirst()
	proxytest.WaitFor(t, 30*time.Second, func() (bool, string) {
		sctx, cancel := context.WithCancel(ctx)
		defer cancel()
		_, err := open(sctx)
		return err == nil, fmt.Sprintf("a session after the first ended: %v", err)
	})
}

// Leases: two granted, a third refused (LeaseGrant, and a Lock with lease
// 0, which would grant one); a revoke gives one back, and so does a lease
// that is gone from etcd without the proxy's knowing (revoked straight
// at etcd): leases are counted while they live.
func TestQuota_leases(t *testing.T) {
	env := quotaEnv(t, "  default:\n    leases: 2\n")
	ctx := proxytest.Ctx(t)
	l1, l2 := env.Grant(t, 600), env.Grant(t, 600)
	before := snapshot(t, env.KV)
	_, err := env.Lease.LeaseGrant(ctx, &pb.LeaseGrantRequest{TTL: 600})
	exhausted(t, "a third LeaseGrant", err, "etcdserver: too many leases", "default")
	_, err = env.Lock.Lock(ctx, &v3lockpb.LockRequest{Name: []byte("zero")})
	exhausted(t, "a Lock with lease 0", err, "etcdserver: too many leases", "default")
	unchanged(t, env, "the refused grants", before)
	if n := exceeded(t, env, "default", "leases"); n != 2 {
		t.Errorf("coordproxy_quota_exceeded_total{quota=leases} %v, want 2", n)
	}
	if _, err := env.Lease.LeaseRevoke(ctx, &pb.LeaseRevokeRequest{ID: l1}); err != nil {
		t.Fatal(err)
	}
	env.Grant(t, 600)
	if _, err := env.KV.Revoke(ctx, clientV3Lease(l2)); err != nil {
		t.Fatal(err)
	}
	proxytest.WaitFor(t, 30*time.Second, func() (bool, string) {
		_, err := env.Lease.LeaseGrant(ctx, &pb.LeaseGrantRequest{TTL: 600})
		return err == nil, fmt.Sprintf("a grant after a lease was revoked at etcd: %v", err)
	})
}

// Watches: two open on a stream, a third refused as etcd refuses a watch
// (created and canceled, the reason given) with the stream going on; a
// cancel gives one back.
func TestQuota_watches(t *testing.T) {
	env := quotaEnv(t, "  default:\n    watches: 2\n")
	ctx := proxytest.Ctx(t)
	w, err := pb.NewWatchClient(env.Conn).Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	create := func(key string) *pb.WatchResponse {
		t.Helper()
		if err := w.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: &pb.WatchCreateRequest{Key: []byte(key)}}}); err != nil {
			t.Fatal(err)
		}
		r, err := w.Recv()
		if err != nil || !r.Created {
			t.Fatalf("create %s: %v, %v", key, r, err)
		}
		return r
	}
	first := create("a")
	if r := create("b"); r.Canceled {
		t.Fatalf("a second watch below the quota: %v", r)
	}
	if r := create("c"); !r.Canceled || r.CancelReason != "etcdserver: too many watches" {
		t.Fatalf("a third watch: %v, want created and canceled, %q", r, "etcdserver: too many watches")
	}
	if n := exceeded(t, env, "default", "watches"); n != 1 {
		t.Errorf("coordproxy_quota_exceeded_total{quota=watches} %v, want 1", n)
	}
	if err := w.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CancelRequest{CancelRequest: &pb.WatchCancelRequest{WatchId: first.WatchId}}}); err != nil {
		t.Fatal(err)
	}
	if r, err := w.Recv(); err != nil || !r.Canceled || r.WatchId != first.WatchId {
		t.Fatalf("cancel: %v, %v", r, err)
	}
	if r := create("d"); r.Canceled {
		t.Fatalf("a watch after a cancel gave one back: %v", r)
	}
	// The stream still works: an event on a watched key arrives.
	if _, err := env.KV.Put(ctx, "b", "v"); err != nil {
		t.Fatal(err)
	}
	if r, err := w.Recv(); err != nil || len(r.Events) != 1 || string(r.Events[0].Kv.Key) != "b" {
		t.Fatalf("event on b: %v, %v", r, err)
	}
}
