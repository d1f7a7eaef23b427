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
	t.Run("proxy without a user of its own", func(t *testing.T) { testTokenForwarding(t, false) })
	t.Run("proxy with its own user", func(t *testing.T) { testTokenForwarding(t, true) })
}

// testTokenForwarding: alice may use alice/ only. With its own user (who may
// use every key), the proxy still makes etcd judge alice's requests as
// alice's, and uses its own user for callers without a token and for its own
// work (the shared watch of a waiting Lock, cleanup).
func testTokenForwarding(t *testing.T, ownUser bool) {
	etcd := proxytest.StartEtcd(t)
	root := proxytest.EnableAuth(t, etcd.URL, "alice", "alice-pw", "alice/")
	cfg := proxy.Config{}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if ownUser {
		for i, step := range []func() error{
			func() error { _, err := root.RoleAdd(ctx, "proxy-role"); return err },
			func() error {
				_, err := root.RoleGrantPermission(ctx, "proxy-role", "\x00", "\x00", clientv3.PermissionType(clientv3.PermReadWrite))
				return err
			},
			func() error { _, err := root.UserAdd(ctx, "coordproxy", "proxy-pw"); return err },
			func() error { _, err := root.UserGrantRole(ctx, "coordproxy", "proxy-role"); return err },
		} {
			if err := step(); err != nil {
				t.Fatalf("proxy user, step %d: %v", i, err)
			}
		}
		cfg.EtcdUsername, cfg.EtcdPassword = "coordproxy", "proxy-pw"
	}
	p := proxytest.StartProxy(t, []string{etcd.URL}, cfg)

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
	_, err = anon.Put(ctx, "bob/x", "v")
	if ownUser && err != nil {
		t.Fatalf("a caller without a token writes as the proxy's user: %v", err)
	}
	if !ownUser && !errors.Is(err, rpctypes.ErrUserEmpty) {
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
	if ownUser {
		// A second Lock waits in the proxy's shared watch (the proxy's
		// user) and is granted when the first is unlocked.
		second, err := alice.Grant(ctx, 30)
		if err != nil {
			t.Fatal(err)
		}
		granted := make(chan error, 1)
		go func() {
			_, err := locks.Lock(ctx, &v3lockpb.LockRequest{Name: []byte("alice/lock"), Lease: int64(second.ID)})
			granted <- err
		}()
		proxytest.WaitFor(t, 30*time.Second, func() (bool, string) {
			resp, err := root.Get(ctx, "alice/lock/", clientv3.WithPrefix(), clientv3.WithCountOnly())
			return err == nil && resp.Count == 2, "the second Lock has not queued"
		})
		if _, err := locks.Unlock(ctx, &v3lockpb.UnlockRequest{Key: held.Key}); err != nil {
			t.Fatal(err)
		}
		if err := <-granted; err != nil {
			t.Fatalf("alice's waiting Lock: %v", err)
		}
	} else if _, err := locks.Unlock(ctx, &v3lockpb.UnlockRequest{Key: held.Key}); err != nil {
		t.Fatal(err)
	}
	_, err = locks.Lock(ctx, &v3lockpb.LockRequest{Name: []byte("bob/lock"), Lease: int64(lease.ID)})
	if status.Convert(err).Message() != rpctypes.ErrPermissionDenied.Error() {
		t.Fatalf("alice locks under bob's prefix through the proxy: %v, want %q", err, rpctypes.ErrPermissionDenied.Error())
	}
}
