package proxy_test

import (
	"context"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coordproxy/coordproxy/proxy"
	"github.com/coordproxy/coordproxy/proxy/proxytest"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3lock/v3lockpb"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

func TestShutdown_drainsThenRefusesNewCallsAndEndsWaits(t *testing.T) {
	etcd := proxytest.StartEtcd(t)
	var logs proxytest.LockedBuffer
	srv := proxy.New(proxy.Config{
		Endpoints: []string{etcd.URL},
		Listen:    "127.0.0.1:0",
		Logger:    slog.New(slog.NewTextHandler(&logs, nil)),
		// Longer than the test: only EndDrainDelay ends it.
		DrainDelay: time.Hour,
	})
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	conn := proxytest.Dial(t, srv.Addr().String())
	kv := proxytest.Client(t, etcd.URL)
	ctx := proxytest.Ctx(t)
	lc, lsc, hc := v3lockpb.NewLockClient(conn), pb.NewLeaseClient(conn), healthpb.NewHealthClient(conn)
	grant := func() int64 { return proxytest.Grant(t, lsc, 600) }
	count := func(pfx string) int64 {
		t.Helper()
		r, err := kv.Get(ctx, pfx, clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			t.Fatal(err)
		}
		return r.Count
	}
	readyz := func() int {
		t.Helper()
		resp, err := http.Get("http://" + srv.Addr().String() + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}

	holder, err := lc.Lock(ctx, &v3lockpb.LockRequest{Name: []byte("l"), Lease: grant()})
	if err != nil {
		t.Fatal(err)
	}
	waiter := make(chan error, 1)
	waiterLease := grant()
	go func() {
		_, err := lc.Lock(ctx, &v3lockpb.LockRequest{Name: []byte("l"), Lease: waiterLease})
		waiter <- err
	}()
	proxytest.WaitFor(t, 30*time.Second, func() (bool, string) { return count("l/") == 2, "waiter not queued" })
	if code := readyz(); code != http.StatusOK {
		t.Fatalf("/readyz before shutdown: %d", code)
	}

	sctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	done := make(chan struct{})
	go func() {
		srv.Shutdown(sctx)
		close(done)
	}()

	// During the drain delay: not ready, not serving by health, yet calls
	// are served as before.
	proxytest.WaitFor(t, 30*time.Second, func() (bool, string) {
		return readyz() == http.StatusServiceUnavailable, "/readyz does not answer 503 after Shutdown began"
	})
	for _, svc := range []string{"", "v3lockpb.Lock", "v3electionpb.Election"} {
		r, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
		if err != nil || r.Status != healthpb.HealthCheckResponse_NOT_SERVING {
			t.Errorf("health of %q during the drain delay: %v, %v; want NOT_SERVING", svc, r, err)
		}
	}
	if _, err := lc.Lock(ctx, &v3lockpb.LockRequest{Name: []byte("during"), Lease: grant()}); err != nil {
		t.Errorf("Lock during the drain delay: %v; want it served", err)
	}
	select {
	case err := <-waiter:
		t.Fatalf("waiting Lock ended during the drain delay: %v", err)
	default:
	}

	proxy.EndDrainDelay(srv)

	// After it: new calls are refused, waits end, their keys go, holders stay.
	_, err = lc.Lock(ctx, &v3lockpb.LockRequest{Name: []byte("after"), Lease: waiterLease})
	if status.Code(err) != codes.Unavailable {
		t.Errorf("Lock after the drain delay: %v; want Unavailable", err)
	}
	if err := <-waiter; status.Code(err) != codes.Unavailable {
		t.Errorf("waiting Lock ended with %v; want Unavailable", err)
	}
	<-done
	if sctx.Err() != nil {
		t.Errorf("Shutdown returned after its bound")
	}
	if n := count("after/"); n != 0 {
		t.Errorf("refused Lock left %d keys", n)
	}
	r, err := kv.Get(ctx, "l/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Kvs) != 1 || string(r.Kvs[0].Key) != string(holder.Key) {
		t.Errorf("keys under l/: %v; want only the holder's %s", r.Kvs, holder.Key)
	}
	if strings.Contains(logs.String(), "graceful stop timed out") {
		t.Errorf("stop was forced:\n%s", logs.String())
	}
}

func TestShutdown_drainDelayCountsWithinTheBound(t *testing.T) {
	etcd := proxytest.StartEtcd(t)
	srv := proxy.New(proxy.Config{Endpoints: []string{etcd.URL}, Listen: "127.0.0.1:0", DrainDelay: time.Hour})
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	done := make(chan struct{})
	go func() {
		srv.Shutdown(sctx)
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("Shutdown still waits for its hour-long drain delay after its bound passed")
	}
}
