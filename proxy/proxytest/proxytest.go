// Package proxytest starts real etcd members and coordproxy servers inside a
// test process: etcd through go.etcd.io/etcd/server/v3/embed on loopback
// ports chosen by the kernel with its data in t.TempDir(), coordproxy through
// proxy.Server on 127.0.0.1:0. Everything started is stopped by t.Cleanup.
package proxytest

import (
	"context"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coordproxy/coordproxy/etcdio"

	"github.com/coordproxy/coordproxy/proxy"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// Logger logs to stderr when COORDPROXY_TEST_LOG is set, else nowhere: the
// proxy logs from goroutines that may outlive a test's t.Log.
func Logger() *slog.Logger {
	if os.Getenv("COORDPROXY_TEST_LOG") == "" {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// StartEtcd starts a real single-member etcd.
func StartEtcd(t testing.TB) *proxy.EmbeddedEtcd {
	t.Helper()
	return StartEtcdWith(t, proxy.EmbedOptions{})
}

// StartEtcdWith starts a real single-member etcd with opts (fsync off,
// error logs only, and raft ticks of 10 ms with a 100 ms election timeout
// unless opts names others: it starts in tens of milliseconds).
func StartEtcdWith(t testing.TB, opts proxy.EmbedOptions) *proxy.EmbeddedEtcd {
	t.Helper()
	opts.UnsafeNoFsync, opts.LogLevel = true, "error"
	if opts.TickMs == 0 && opts.ElectionMs == 0 {
		opts.TickMs, opts.ElectionMs = 10, 100
	}
	e, err := proxy.StartEmbeddedEtcd(t.TempDir(), opts)
	if err != nil {
		t.Fatalf("start etcd: %v", err)
	}
	t.Cleanup(e.Close)
	return e
}

// StartProxy starts a coordproxy in front of endpoints, listening on
// 127.0.0.1:0 and logging as Logger says; other fields of cfg left zero take
// proxy.DefaultConfig's.
//
// Unless cfg says etcdio.BatchOff, its transactions go to etcd nested even alone
// (etcdio.BatchAlways), so that the conformance, mixed-fleet and fencing
// tests meet etcd's nested-transaction semantics on every path; the
// binaries' default (batching only what queued) runs in e2e, coordbench and
// through StartProxyAsShipped.
func StartProxy(t testing.TB, endpoints []string, cfg proxy.Config) *proxy.Server {
	t.Helper()
	if cfg.EtcdBatching == etcdio.BatchConcurrent {
		cfg.EtcdBatching = etcdio.BatchAlways
	}
	return StartProxyAsShipped(t, endpoints, cfg)
}

// StartProxyAsShipped is StartProxy with cfg's batching as it is: zero is
// the production default, batching only the transactions that queued.
func StartProxyAsShipped(t testing.TB, endpoints []string, cfg proxy.Config) *proxy.Server {
	t.Helper()
	cfg.Endpoints = endpoints
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	if cfg.Logger == nil {
		cfg.Logger = Logger()
	}
	s := proxy.New(cfg)
	if err := s.Start(context.Background()); err != nil {
		t.Fatalf("start proxy: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s.Shutdown(ctx)
	})
	return s
}

// Dial opens a gRPC connection to addr, closed at cleanup.
func Dial(t testing.TB, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// Client opens an etcd client to endpoints, closed at cleanup.
func Client(t testing.TB, endpoints ...string) *clientv3.Client {
	t.Helper()
	c, err := clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatalf("etcd client: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// RootPassword is the password of etcd's root user after EnableAuth.
const RootPassword = "root-secret"

// EnableAuth turns on authentication in the etcd at etcdURL: a root user,
// and user with password, whose role may read and write the keys under
// prefix and nothing else. It returns a client logged in as root, closed at
// cleanup.
func EnableAuth(t testing.TB, etcdURL, user, password, prefix string) *clientv3.Client {
	t.Helper()
	ctx := Ctx(t)
	c := Client(t, etcdURL)
	role := user + "-role"
	steps := []func() error{
		func() error { _, err := c.UserAdd(ctx, "root", RootPassword); return err },
		func() error { _, err := c.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := c.RoleAdd(ctx, role); return err },
		func() error {
			_, err := c.RoleGrantPermission(ctx, role, prefix, clientv3.GetPrefixRangeEnd(prefix), clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		},
		func() error { _, err := c.UserAdd(ctx, user, password); return err },
		func() error { _, err := c.UserGrantRole(ctx, user, role); return err },
		func() error { _, err := c.AuthEnable(ctx); return err },
	}
	for i, step := range steps {
		if err := step(); err != nil {
			t.Fatalf("enable auth, step %d: %v", i, err)
		}
	}
	root, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{etcdURL},
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
		Username:    "root",
		Password:    RootPassword,
	})
	if err != nil {
		t.Fatalf("etcd client as root: %v", err)
	}
	t.Cleanup(func() { root.Close() })
	return root
}

// LockedBuffer collects output written from other goroutines (a logger, a
// child process) for a test to poll.
type LockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *LockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *LockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
