package proxy_test

import (
	"errors"
	"io"
	"testing"

	"github.com/coordproxy/coordproxy/proxy"
	"github.com/coordproxy/coordproxy/proxy/proxytest"
	"github.com/prometheus/client_golang/prometheus"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// Client keep-alive streams share one etcd stream (per credentials) while
// it keeps up: 20 clients' streams cost etcd one; each request gets exactly one answer,
// etcd's to it, in the order the client sent them, a revoked lease's with
// TTL 0 as etcd gives it; a client that closes its side gets its answers,
// then the end of its stream.
func TestLeaseKeepAlive_clientStreamsShareOneEtcdStream(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	ctx := proxytest.Ctx(t)
	streams := func() float64 {
		return proxytest.Gathered(t, prometheus.DefaultGatherer, "grpc_server_started_total", map[string]string{"grpc_method": "LeaseKeepAlive"})
	}
	before := streams()
	var clients []pb.Lease_LeaseKeepAliveClient
	var leases []int64
	for range 20 {
		ka, err := env.Lease.LeaseKeepAlive(ctx)
		if err != nil {
			t.Fatal(err)
		}
		lease := env.Grant(t, 60)
		if err := ka.Send(&pb.LeaseKeepAliveRequest{ID: lease}); err != nil {
			t.Fatal(err)
		}
		r, err := ka.Recv()
		if err != nil || r.ID != lease || r.TTL != 60 {
			t.Fatalf("keep-alive of %x: %v, %v", lease, r, err)
		}
		clients, leases = append(clients, ka), append(leases, lease)
	}
	if n := streams() - before; n != 1 {
		t.Errorf("20 client keep-alive streams opened %v etcd streams, want 1", n)
	}

	// One client, requests for several leases back to back (another
	// client's lease among them, and one revoked): the answers in order.
	revoked := env.Grant(t, 60)
	if _, err := env.KV.Revoke(ctx, clientV3Lease(revoked)); err != nil {
		t.Fatal(err)
	}
	order := []int64{leases[0], leases[1], leases[0], revoked, leases[2], leases[0]}
	ka := clients[0]
	for _, id := range order {
		if err := ka.Send(&pb.LeaseKeepAliveRequest{ID: id}); err != nil {
			t.Fatal(err)
		}
	}
	// Meanwhile nine others keep theirs alive too (at most 15 unanswered:
	// under the 16 that would open a second etcd stream).
	for i, c := range clients[1:10] {
		if err := c.Send(&pb.LeaseKeepAliveRequest{ID: leases[i+1]}); err != nil {
			t.Fatal(err)
		}
	}
	for i, id := range order {
		r, err := ka.Recv()
		if err != nil {
			t.Fatal(err)
		}
		wantTTL := int64(60)
		if id == revoked {
			wantTTL = 0
		}
		if r.ID != id || r.TTL != wantTTL {
			t.Fatalf("answer %d: lease %x TTL %d, want lease %x TTL %d", i, r.ID, r.TTL, id, wantTTL)
		}
	}
	for i, c := range clients[1:10] {
		r, err := c.Recv()
		if err != nil || r.ID != leases[i+1] {
			t.Fatalf("client %d: %v, %v; want the answer for %x", i+1, r, err, leases[i+1])
		}
	}

	// Closing: what was sent is answered, then the stream ends.
	c := clients[5]
	for range 3 {
		if err := c.Send(&pb.LeaseKeepAliveRequest{ID: leases[5]}); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.CloseSend(); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if r, err := c.Recv(); err != nil || r.ID != leases[5] {
			t.Fatalf("answer %d after CloseSend: %v, %v", i, r, err)
		}
	}
	if _, err := c.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("after the answers: %v, want the stream's end", err)
	}
	// The others go on, on the same etcd stream.
	if err := clients[6].Send(&pb.LeaseKeepAliveRequest{ID: leases[6]}); err != nil {
		t.Fatal(err)
	}
	if r, err := clients[6].Recv(); err != nil || r.ID != leases[6] {
		t.Fatalf("another client after one closed: %v, %v", r, err)
	}
	if n := streams() - before; n != 1 {
		t.Errorf("%v etcd keep-alive streams, want still 1", n)
	}
}

// A client with many keep-alives unanswered at once spreads them over more
// etcd streams (at most 8), and still gets every answer, in its order.
func TestLeaseKeepAlive_aBacklogSpreadsOverAFewStreamsInOrder(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	ctx := proxytest.Ctx(t)
	streams := func() float64 {
		return proxytest.Gathered(t, prometheus.DefaultGatherer, "grpc_server_started_total", map[string]string{"grpc_method": "LeaseKeepAlive"})
	}
	before := streams()
	var leases []int64
	for range 10 {
		leases = append(leases, env.Grant(t, 60))
	}
	ka, err := env.Lease.LeaseKeepAlive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const n = 400
	go func() {
		for i := range n {
			if ka.Send(&pb.LeaseKeepAliveRequest{ID: leases[i%len(leases)]}) != nil {
				return
			}
		}
	}()
	for i := range n {
		r, err := ka.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if want := leases[i%len(leases)]; r.ID != want || r.TTL != 60 {
			t.Fatalf("answer %d: lease %x TTL %d, want lease %x TTL 60", i, r.ID, r.TTL, want)
		}
	}
	if n := streams() - before; n < 1 || n > 8 {
		t.Errorf("%v etcd keep-alive streams, want 1 to 8", n)
	}
}
