package proxy_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/coordproxy/coordproxy/proxy"
	"github.com/coordproxy/coordproxy/proxy/proxytest"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3lock/v3lockpb"
	"go.uber.org/zap"
	"google.golang.org/grpc/status"
)

// A proxy without etcd credentials of its own forwards each caller's etcd
// token: a client logs in through the proxy (Auth.Authenticate passes
// through) and etcd's RBAC then judges its KV and Lock calls as the caller's.
func TestAuth_callersTokenIsForwardedAndRBACIsEtcds(t *testing.T) {
	etcd := proxytest.StartEtcd(t)
	proxytest.EnableAuth(t, etcd.URL, "alice", "alice-pw", "alice/")
	p := proxytest.StartProxy(t, []string{etcd.URL}, proxy.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	alice, err := clientv3.New(clientv3.Config{
		Endpoints: []string{p.Addr().String()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop(),
		Username: "alice", Password: "alice-pw",
	})
	if err != nil {
		t.Fatalf("log in as alice through the proxy: %v", err)
	}
	defer alice.Close()
	if _, err := alice.Put(ctx, "alice/x", "v"); err != nil {
		t.Fatalf("alice writes her own key through the proxy: %v", err)
	}
	if _, err := alice.Put(ctx, "bob/x", "v"); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Fatalf("alice writes bob's key through the proxy: %v, want %v", err, rpctypes.ErrPermissionDenied)
	}
	anon := proxytest.Client(t, p.Addr().String())
	if _, err := anon.Put(ctx, "alice/x", "v"); !errors.Is(err, rpctypes.ErrUserEmpty) {
		t.Fatalf("a caller without a token writes through the proxy: %v, want %v", err, rpctypes.ErrUserEmpty)
	}

	lease, err := alice.Grant(ctx, 30)
	if err != nil {
		t.Fatal(err)
	}
	locks := v3lockpb.NewLockClient(alice.ActiveConnection())
	held, err := locks.Lock(ctx, &v3lockpb.LockRequest{Name: []byte("alice/lock"), Lease: int64(lease.ID)})
	if err != nil {
		t.Fatalf("alice locks under her prefix through the proxy: %v", err)
	}
	if _, err := locks.Unlock(ctx, &v3lockpb.UnlockRequest{Key: held.Key}); err != nil {
		t.Fatal(err)
	}
	_, err = locks.Lock(ctx, &v3lockpb.LockRequest{Name: []byte("bob/lock"), Lease: int64(lease.ID)})
	if status.Convert(err).Message() != rpctypes.ErrPermissionDenied.Error() {
		t.Fatalf("alice locks under bob's prefix through the proxy: %v, want %q", err, rpctypes.ErrPermissionDenied.Error())
	}
}
