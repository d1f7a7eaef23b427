package proxy_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	coordproxyv1 "github.com/coordproxy/coordproxy/proto/coordproxy/v1"
	"github.com/coordproxy/coordproxy/proxy"
	"github.com/coordproxy/coordproxy/proxy/proxytest"
	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3election/v3electionpb"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3lock/v3lockpb"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
)

const twoTenants = `
leases:
  unrecorded: deny
rules:
  - identities: ["spiffe://test/a"]
    prefixes: ["a/", "shared/"]
    verbs: [lock, elect, read, write, lease]
  - identities: ["spiffe://test/b"]
    prefixes: ["b/", "shared/"]
    verbs: [lock, elect, read, write, lease]
`

// tenant is one identity's clients of one replica.
type tenant struct {
	kv    *clientv3.Client
	conn  *grpc.ClientConn
	lock  v3lockpb.LockClient
	elec  v3electionpb.ElectionClient
	locks coordproxyv1.LockServiceClient
	elecs coordproxyv1.ElectionServiceClient
	tls   *tls.Config
	addr  string
}

func newTenant(t *testing.T, addr string, cfg *tls.Config) *tenant {
	t.Helper()
	kv, err := clientv3.New(clientv3.Config{Endpoints: []string{"https://" + addr}, TLS: cfg, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { kv.Close() })
	conn := dialWith(t, addr, credentials.NewTLS(cfg))
	return &tenant{kv: kv, conn: conn, lock: v3lockpb.NewLockClient(conn), elec: v3electionpb.NewElectionClient(conn),
		locks: coordproxyv1.NewLockServiceClient(conn), elecs: coordproxyv1.NewElectionServiceClient(conn), tls: cfg, addr: addr}
}

// denied fails t unless err is etcd's permission denied: the gRPC status
// with its code and text, or etcd's client's value for it.
func denied(t *testing.T, what string, err error) {
	t.Helper()
	if errors.Is(err, rpctypes.ErrPermissionDenied) {
		return
	}
	if status.Code(err) != codes.PermissionDenied || status.Convert(err).Message() != rpctypes.ErrPermissionDenied.Error() {
		t.Errorf("%s: %v, want PermissionDenied %q", what, err, rpctypes.ErrPermissionDenied.Error())
	}
}

// Identities from client certificates, a policy giving A and B their own
// prefixes and a shared one, two replicas: B can touch none of A's names or
// keys through any service, and nothing B tries changes etcd; A can; the
// shared prefix still excludes them from each other; a changed policy is in
// force for new calls without a restart, a bad one keeps the old.
func TestPolicy_twoTenantsThroughTwoReplicas(t *testing.T) {
	pki := proxytest.NewPKI(t)
	etcd := proxytest.StartEtcd(t)
	policyFile := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(policyFile, []byte(twoTenants), 0o644); err != nil {
		t.Fatal(err)
	}
	var logs proxytest.LockedBuffer
	cfg := proxy.Config{CertFile: pki.ServerCert, KeyFile: pki.ServerKey, TrustedCAFile: pki.CAFile, ClientCertAuth: true, PolicyFile: policyFile}
	cfg1, cfg2 := cfg, cfg
	cfg2.Registry = prometheus.NewRegistry()
	cfg2.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	r1 := proxytest.StartProxy(t, []string{etcd.URL}, cfg1)
	r2 := proxytest.StartProxy(t, []string{etcd.URL}, cfg2)
	a := newTenant(t, r1.Addr().String(), pki.IdentityTLS(t, "spiffe://test/a"))
	b := newTenant(t, r2.Addr().String(), pki.IdentityTLS(t, "spiffe://test/b"))
	root := proxytest.Client(t, etcd.URL)
	ctx := proxytest.Ctx(t)

	// A does its work.
	la, err := a.kv.Grant(ctx, 30)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.kv.KeepAlive(ctx, la.ID); err != nil {
		t.Fatal(err)
	}
	held, err := a.lock.Lock(ctx, &v3lockpb.LockRequest{Name: []byte("a/job"), Lease: int64(la.ID)})
	if err != nil {
		t.Fatal(err)
	}
	led, err := a.elec.Campaign(ctx, &v3electionpb.CampaignRequest{Name: []byte("a/e"), Lease: int64(la.ID), Value: []byte("a")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.kv.Put(ctx, "a/k", "v"); err != nil {
		t.Fatal(err)
	}
	// A reads what is A's.
	if _, err := a.locks.Describe(ctx, &coordproxyv1.DescribeRequest{Name: []byte("a/job")}); err != nil {
		t.Fatalf("A Describe a/job: %v", err)
	}
	if _, err := a.elec.Leader(ctx, &v3electionpb.LeaderRequest{Name: []byte("a/e")}); err != nil {
		t.Fatalf("A Leader a/e: %v", err)
	}
	if r, err := a.kv.Get(ctx, "a/", clientv3.WithPrefix()); err != nil || r.Count != 3 {
		t.Fatalf("A Get a/: %v, %v", r, err)
	}
	aw, err := pb.NewWatchClient(a.conn).Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	aw.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: &pb.WatchCreateRequest{Key: []byte("a/"), RangeEnd: []byte("a0")}}})
	if wr, err := aw.Recv(); err != nil || !wr.Created || wr.Canceled {
		t.Fatalf("A Watch a/: %v, %v", wr, err)
	}
	aw.CloseSend()

	// B tries everything on A's names and keys.
	lb, err := b.kv.Grant(ctx, 30)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.kv.KeepAlive(ctx, lb.ID); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, root) // B's own lease is B's business
	_, err = b.lock.Lock(ctx, &v3lockpb.LockRequest{Name: []byte("a/job"), Lease: int64(lb.ID)})
	denied(t, "B Lock a/job", err)
	_, err = b.locks.TryLock(ctx, &coordproxyv1.LockRequest{Name: []byte("a/job"), Lease: int64(lb.ID)})
	denied(t, "B TryLock a/job", err)
	_, err = b.lock.Unlock(ctx, &v3lockpb.UnlockRequest{Key: held.Key})
	denied(t, "B Unlock A's key", err)
	_, err = b.locks.Unlock(ctx, &coordproxyv1.UnlockRequest{Key: held.Key})
	denied(t, "B coordproxy Unlock A's key", err)
	_, err = b.locks.Describe(ctx, &coordproxyv1.DescribeRequest{Name: []byte("a/job")})
	denied(t, "B Describe a/job", err)
	_, err = b.elec.Campaign(ctx, &v3electionpb.CampaignRequest{Name: []byte("a/e"), Lease: int64(lb.ID), Value: []byte("b")})
	denied(t, "B Campaign a/e", err)
	_, err = b.elec.Proclaim(ctx, &v3electionpb.ProclaimRequest{Leader: led.Leader, Value: []byte("b")})
	denied(t, "B Proclaim for A", err)
	_, err = b.elec.Resign(ctx, &v3electionpb.ResignRequest{Leader: led.Leader})
	denied(t, "B Resign for A", err)
	_, err = b.elec.Leader(ctx, &v3electionpb.LeaderRequest{Name: []byte("a/e")})
	denied(t, "B Leader a/e", err)
	obs, err := b.elec.Observe(ctx, &v3electionpb.LeaderRequest{Name: []byte("a/e")})
	if err == nil {
		_, err = obs.Recv()
	}
	denied(t, "B Observe a/e", err)
	ext, err := b.elecs.Observe(ctx, &coordproxyv1.ObserveRequest{Name: []byte("a/e")})
	if err == nil {
		_, err = ext.Recv()
	}
	denied(t, "B coordproxy Observe a/e", err)
	_, err = b.kv.Get(ctx, "a/k")
	denied(t, "B Get a/k", err)
	_, err = b.kv.Get(ctx, "", clientv3.WithPrefix())
	denied(t, "B Get everything", err)
	_, err = b.kv.Put(ctx, "a/k", "b")
	denied(t, "B Put a/k", err)
	_, err = b.kv.Delete(ctx, "a/", clientv3.WithPrefix())
	denied(t, "B Delete a/", err)
	_, err = b.kv.Txn(ctx).If(clientv3.Compare(clientv3.Version("b/x"), "=", 0)).Then(clientv3.OpPut("a/k", "b")).Commit()
	denied(t, "B Txn writing a/k", err)
	_, err = b.kv.Txn(ctx).If(clientv3.Compare(clientv3.Value("a/k"), "=", "v")).Then(clientv3.OpPut("b/x", "b")).Commit()
	denied(t, "B Txn comparing a/k", err)
	// A watch is refused as etcd refuses one: created and canceled at once.
	ws, err := pb.NewWatchClient(b.conn).Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ws.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: &pb.WatchCreateRequest{Key: []byte("a/"), RangeEnd: []byte("a0")}}})
	if wr, err := ws.Recv(); err != nil || !wr.Created || !wr.Canceled || wr.WatchId != clientv3.InvalidWatchID || wr.CancelReason != rpctypes.ErrGRPCPermissionDenied.Error() {
		t.Errorf("B Watch a/: %v, %v; want created and canceled with etcd's %q", wr, err, rpctypes.ErrGRPCPermissionDenied.Error())
	}
	ws.CloseSend()
	// The JSON gateway answers the same.
	code, body, err := httpsDo(httpsClient(b.tls), http.MethodPost, "https://"+b.addr+"/v3/kv/range", `{"key":"YS9r"}`)
	if err != nil || code != http.StatusForbidden || !strings.Contains(body, "permission denied") {
		t.Errorf("B's JSON range of a/k: %d %q %v, want 403 permission denied", code, body, err)
	}
	if after := snapshot(t, root); after != before {
		t.Errorf("B's refused calls changed etcd:\nbefore %s\nafter  %s", before, after)
	}
	if n := proxytest.Gathered(t, cfg2.Registry, "coordproxy_denied_total", nil); n < 18 {
		t.Errorf("%v refusals counted, want every one", n)
	}
	if !strings.Contains(logs.String(), "call refused by the policy") || !strings.Contains(logs.String(), "identity=spiffe://test/b") {
		t.Errorf("refusals not logged with the identity: %s", tail(logs.String(), 2000))
	}

	// A's lease is A's, on every replica, even where B may lock.
	_, err = b.kv.Revoke(ctx, la.ID)
	denied(t, "B Revoke A's lease", err)
	_, err = b.kv.TimeToLive(ctx, la.ID)
	denied(t, "B TimeToLive of A's lease", err)
	ka, err := pb.NewLeaseClient(b.conn).LeaseKeepAlive(ctx)
	if err == nil {
		ka.Send(&pb.LeaseKeepAliveRequest{ID: int64(la.ID)})
		_, err = ka.Recv()
	}
	denied(t, "B KeepAlive of A's lease", err)
	_, err = b.lock.Lock(ctx, &v3lockpb.LockRequest{Name: []byte("shared/l"), Lease: int64(la.ID)})
	denied(t, "B Lock shared/l on A's lease", err)
	sharedLed, err := a.elec.Campaign(ctx, &v3electionpb.CampaignRequest{Name: []byte("shared/e"), Lease: int64(la.ID), Value: []byte("a")})
	if err != nil {
		t.Fatal(err)
	}
	_, err = b.elec.Proclaim(ctx, &v3electionpb.ProclaimRequest{Leader: sharedLed.Leader, Value: []byte("b")})
	denied(t, "B Proclaim for A on a shared name", err)
	_, err = b.elec.Resign(ctx, &v3electionpb.ResignRequest{Leader: sharedLed.Leader})
	denied(t, "B Resign for A on a shared name", err)
	st, err := coordproxyv1.NewSessionServiceClient(b.conn).KeepAlive(ctx)
	if err == nil {
		st.Send(&coordproxyv1.SessionRequest{Lease: int64(la.ID)})
		_, err = st.Recv()
	}
	denied(t, "B resuming a session on A's lease", err)
	// A lease granted straight at etcd has no owner: leases.unrecorded: deny.
	bare, err := root.Grant(ctx, 30)
	if err != nil {
		t.Fatal(err)
	}
	_, err = b.lock.Lock(ctx, &v3lockpb.LockRequest{Name: []byte("b/x"), Lease: int64(bare.ID)})
	denied(t, "B Lock on an unrecorded lease", err)
	if _, err := root.Revoke(ctx, bare.ID); err != nil {
		t.Fatal(err)
	}
	// A may use its lease through the other replica too.
	a2 := newTenant(t, b.addr, a.tls)
	if _, err := a2.kv.TimeToLive(ctx, la.ID); err != nil {
		t.Fatalf("A's TimeToLive of its lease through the other replica: %v", err)
	}
	if _, err := a2.elec.Resign(ctx, &v3electionpb.ResignRequest{Leader: sharedLed.Leader}); err != nil {
		t.Fatalf("A resigning through the other replica: %v", err)
	}
	if after := snapshot(t, root); after != before {
		t.Errorf("B's refused calls on A's lease changed etcd:\nbefore %s\nafter  %s", before, after)
	}

	// B's own prefix works, and the shared one excludes both ways.
	if _, err := b.kv.Put(ctx, "b/k", "v"); err != nil {
		t.Fatal(err)
	}
	sharedA, err := a.lock.Lock(ctx, &v3lockpb.LockRequest{Name: []byte("shared/n"), Lease: int64(la.ID)})
	if err != nil {
		t.Fatal(err)
	}
	waitB := proxytest.Go(func() error {
		_, err := b.lock.Lock(ctx, &v3lockpb.LockRequest{Name: []byte("shared/n"), Lease: int64(lb.ID)})
		return err
	})
	proxytest.WaitFor(t, 30*time.Second, func() (bool, string) {
		r, err := root.Get(ctx, "shared/n/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		return err == nil && r.Count == 2, "B waiting behind A on the shared name"
	})
	if waitB.Returned() {
		t.Fatalf("B took the shared lock A holds: %v", waitB.Err())
	}
	if _, err := a.lock.Unlock(ctx, &v3lockpb.UnlockRequest{Key: sharedA.Key}); err != nil {
		t.Fatal(err)
	}
	if err := waitB.Wait(t); err != nil {
		t.Fatalf("B after A released the shared lock: %v", err)
	}

	// A reload gives B read on a/ for new calls; a bad file keeps it.
	os.WriteFile(policyFile, []byte(twoTenants+`  - identities: ["spiffe://test/b"]
    prefixes: ["a/"]
    verbs: [read]
`), 0o644)
	proxytest.WaitFor(t, 30*time.Second, func() (bool, string) {
		_, err := b.kv.Get(ctx, "a/k")
		return err == nil, fmt.Sprintf("B's Get a/k after the reload: %v", err)
	})
	os.WriteFile(policyFile, []byte("rules:\n  - identities: [x]\n    verbs: [lock]\n"), 0o644)
	proxytest.WaitFor(t, 30*time.Second, func() (bool, string) {
		return strings.Contains(logs.String(), "policy file invalid; keeping the policy in force"), "the bad file logged"
	})
	if _, err := b.kv.Get(ctx, "a/k"); err != nil {
		t.Fatalf("after a bad policy file: %v, want the last good policy in force", err)
	}
	if !strings.Contains(logs.String(), "rule 1: no prefixes") {
		t.Errorf("the bad file's error does not name the rule: %s", tail(logs.String(), 2000))
	}
}

// snapshot is every key in etcd with its revisions, and the leases.
func snapshot(t *testing.T, kv *clientv3.Client) string {
	t.Helper()
	ctx := context.Background()
	r, err := kv.Get(ctx, "", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, k := range r.Kvs {
		fmt.Fprintf(&b, "%s@%d/%d=%q ", k.Key, k.CreateRevision, k.ModRevision, k.Value)
	}
	ls, err := kv.Leases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(&b, "leases %d", len(ls.Leases))
	return b.String()
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
