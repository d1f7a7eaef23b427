package proxy_test

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/coordproxy/coordproxy/proxy"
	"github.com/coordproxy/coordproxy/proxy/proxytest"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	epb "go.etcd.io/etcd/server/v3/etcdserver/api/v3election/v3electionpb"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3lock/v3lockpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestShutdown_endsWaitsWithUnavailableAndRemovesTheirKeys(t *testing.T) {
	etcd := proxytest.StartEtcd(t)
	var logs proxytest.LockedBuffer
	srv := proxy.New(proxy.Config{
		Endpoints: []string{etcd.URL},
		Listen:    "127.0.0.1:0",
		Logger:    slog.New(slog.NewTextHandler(&logs, nil)),
	})
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	conn := proxytest.Dial(t, srv.Addr().String())
	kv := proxytest.Client(t, etcd.URL)
	ctx := proxytest.Ctx(t)
	lc, ec, lsc := v3lockpb.NewLockClient(conn), epb.NewElectionClient(conn), pb.NewLeaseClient(conn)
	grant := func() int64 { return proxytest.Grant(t, lsc, 600) }

	holder, err := lc.Lock(ctx, &v3lockpb.LockRequest{Name: []byte("l"), Lease: grant()})
	if err != nil {
		t.Fatal(err)
	}
	leader, err := ec.Campaign(ctx, &epb.CampaignRequest{Name: []byte("e"), Lease: grant(), Value: []byte("v")})
	if err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 4)
	lockWaiter, campaignWaiter := grant(), grant()
	go func() {
		_, err := lc.Lock(ctx, &v3lockpb.LockRequest{Name: []byte("l"), Lease: lockWaiter})
		errs <- err
	}()
	go func() {
		_, err := ec.Campaign(ctx, &epb.CampaignRequest{Name: []byte("e"), Lease: campaignWaiter, Value: []byte("w")})
		errs <- err
	}()
	obs, err := ec.Observe(ctx, &epb.LeaderRequest{Name: []byte("e")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := obs.Recv(); err != nil {
		t.Fatal(err)
	}
	ka, err := lsc.LeaseKeepAlive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := ka.Send(&pb.LeaseKeepAliveRequest{ID: lockWaiter}); err != nil {
		t.Fatal(err)
	}
	if _, err := ka.Recv(); err != nil {
		t.Fatal(err)
	}
	for _, pfx := range []string{"l/", "e/"} {
		proxytest.WaitFor(t, 30*time.Second, func() (bool, string) {
			r, err := kv.Get(ctx, pfx, clientv3.WithPrefix(), clientv3.WithCountOnly())
			return err == nil && r.Count == 2, "waiters not queued under " + pfx
		})
	}

	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv.Shutdown(sctx)

	for range 2 {
		err := <-errs
		if st := status.Convert(err); st.Code() != codes.Unavailable {
			t.Errorf("waiter ended with %v, want Unavailable", err)
		}
	}
	if _, err := obs.Recv(); status.Code(err) != codes.Unavailable {
		t.Errorf("observe ended with %v, want Unavailable", err)
	}
	if _, err := ka.Recv(); status.Code(err) != codes.Unavailable {
		t.Errorf("keepalive stream ended with %v, want Unavailable", err)
	}
	// Waiters' keys were removed before their calls returned; holders keep
	// theirs: those belong to the clients' leases, not to this proxy.
	for pfx, want := range map[string]string{"l/": string(holder.Key), "e/": string(leader.Leader.Key)} {
		r, err := kv.Get(ctx, pfx, clientv3.WithPrefix())
		if err != nil {
			t.Fatal(err)
		}
		if len(r.Kvs) != 1 || string(r.Kvs[0].Key) != want {
			t.Errorf("keys under %s: %v, want only %s", pfx, r.Kvs, want)
		}
	}
	if strings.Contains(logs.String(), "graceful stop timed out") {
		t.Errorf("stop was forced:\n%s", logs.String())
	}
}
