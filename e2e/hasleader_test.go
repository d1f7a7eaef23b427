package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	coordproxyv1 "github.com/coordproxy/coordproxy/proto/coordproxy/v1"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3election/v3electionpb"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3lock/v3lockpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// A caller that requires a leader (etcd's "hasleader" metadata, as
// clientv3.WithRequireLeader sends it) gets from the proxy what it gets from
// etcd when the cluster loses its leader: its streams (Observe, Watch,
// LeaseKeepAlive) end with Unavailable "etcdserver: no leader", and its calls
// are refused with the same. The proxy and a native client both talk to the
// one member left of three; the other two are killed.
func TestHasLeader_callsAndStreamsEndWithNoLeaderAsOnEtcd(t *testing.T) {
	c := startCluster(t, 3)
	survivor := c.members[0]
	p := startProxiesTo(t, []string{survivor.clientURL}, 1)[0]
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	leaderCtx := metadata.AppendToOutgoingContext(ctx, rpctypes.MetadataRequireLeaderKey, rpctypes.MetadataHasLeader)

	targets := []struct{ name, addr string }{
		{"native", strings.TrimPrefix(survivor.clientURL, "http://")},
		{"proxy", p.addr},
	}
	type streamEnd struct {
		what string
		err  error
	}
	ends := make(chan streamEnd, 16)
	conns := map[string]*grpc.ClientConn{}
	for _, tg := range targets {
		conn, err := grpc.NewClient(tg.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conns[tg.name] = conn
		lease, err := pb.NewLeaseClient(conn).LeaseGrant(ctx, &pb.LeaseGrantRequest{TTL: 60})
		if err != nil {
			t.Fatal(err)
		}
		name := []byte(tg.name + "-election")
		elec := v3electionpb.NewElectionClient(conn)
		if _, err := elec.Campaign(leaderCtx, &v3electionpb.CampaignRequest{Name: name, Lease: lease.ID, Value: []byte("v")}); err != nil {
			t.Fatal(err)
		}
		obs, err := elec.Observe(leaderCtx, &v3electionpb.LeaderRequest{Name: name})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := obs.Recv(); err != nil {
			t.Fatal(err)
		}
		go func() {
			for {
				if _, err := obs.Recv(); err != nil {
					ends <- streamEnd{tg.name + " Observe", err}
					return
				}
			}
		}()
		w, err := pb.NewWatchClient(conn).Watch(leaderCtx)
		if err != nil {
			t.Fatal(err)
		}
		w.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: &pb.WatchCreateRequest{Key: []byte(tg.name + "-w")}}})
		if r, err := w.Recv(); err != nil || !r.Created {
			t.Fatalf("%s watch: %v %v", tg.name, r, err)
		}
		go func() {
			for {
				if _, err := w.Recv(); err != nil {
					ends <- streamEnd{tg.name + " Watch", err}
					return
				}
			}
		}()
	}

	// coordproxy's own ElectionService.Observe ends as etcd's Observe does.
	ext, err := coordproxyv1.NewElectionServiceClient(conns["proxy"]).Observe(leaderCtx, &coordproxyv1.ObserveRequest{Name: []byte("proxy-election")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ext.Recv(); err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			if _, err := ext.Recv(); err != nil {
				ends <- streamEnd{"proxy ElectionService.Observe", err}
				return
			}
		}
	}()

	c.kill(c.members[1])
	c.kill(c.members[2])

	want := status.Convert(rpctypes.ErrGRPCNoLeader).String()
	for range 5 {
		select {
		case e := <-ends:
			if got := status.Convert(e.err).String(); got != want {
				t.Errorf("%s ended with %s, want %s", e.what, got, want)
			}
		case <-time.After(90 * time.Second):
			t.Fatal("streams that require a leader still open 90 s after the cluster lost its leader")
		}
	}

	// Calls: once etcd refuses a native one, the proxy refuses the same.
	calls := []struct {
		name string
		call func(ctx context.Context, conn *grpc.ClientConn, tg string) error
	}{
		{"Range", func(ctx context.Context, conn *grpc.ClientConn, _ string) error {
			_, err := pb.NewKVClient(conn).Range(ctx, &pb.RangeRequest{Key: []byte("k")})
			return err
		}},
		{"Put", func(ctx context.Context, conn *grpc.ClientConn, _ string) error {
			_, err := pb.NewKVClient(conn).Put(ctx, &pb.PutRequest{Key: []byte("k")})
			return err
		}},
		{"LeaseGrant", func(ctx context.Context, conn *grpc.ClientConn, _ string) error {
			_, err := pb.NewLeaseClient(conn).LeaseGrant(ctx, &pb.LeaseGrantRequest{TTL: 60})
			return err
		}},
		{"Leader", func(ctx context.Context, conn *grpc.ClientConn, tg string) error {
			_, err := v3electionpb.NewElectionClient(conn).Leader(ctx, &v3electionpb.LeaderRequest{Name: []byte(tg + "-election")})
			return err
		}},
		{"Lock", func(ctx context.Context, conn *grpc.ClientConn, tg string) error {
			_, err := v3lockpb.NewLockClient(conn).Lock(ctx, &v3lockpb.LockRequest{Name: []byte(tg + "-lock"), Lease: 0x7fff0003})
			return err
		}},
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := calls[0].call(leaderCtx, conns["native"], "native")
		if status.Convert(err).String() == want {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("native Range with hasleader still answers %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	unavailableBefore := etcdErrors(t, p.addr, "Unavailable")
	for _, cl := range calls {
		var got []string
		for _, tg := range targets {
			cctx, ccancel := context.WithTimeout(leaderCtx, 10*time.Second)
			err := cl.call(cctx, conns[tg.name], tg.name)
			ccancel()
			got = append(got, fmt.Sprintf("%s: %s", tg.name, status.Convert(err)))
		}
		if !strings.HasSuffix(got[0], want) || strings.TrimPrefix(got[0], "native: ") != strings.TrimPrefix(got[1], "proxy: ") {
			t.Errorf("%s with hasleader and no leader: %v, want both %s", cl.name, got, want)
		}
	}
	// Each refusal is etcd's answer to one request: the proxy's etcd client
	// does not retry it (it would retry the Range alone up to 100 times).
	// The count also holds the proxy's own require-leader watch asking
	// again, at most once a second, hence the margin.
	if n := etcdErrors(t, p.addr, "Unavailable") - unavailableBefore; n >= 50 {
		t.Errorf("the proxy sent etcd %v requests that etcd refused for want of a leader, for %d calls", n, len(calls))
	}
}

// etcdErrors reads coordproxy_etcd_errors_total{code} from a proxy's /metrics.
func etcdErrors(t *testing.T, addr, code string) float64 {
	t.Helper()
	return proxyMetric(t, addr, "coordproxy_etcd_errors_total", map[string]string{"code": code})
}
