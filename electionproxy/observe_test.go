package electionproxy_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/coordproxy/coordproxy/keyspace"
	"github.com/coordproxy/coordproxy/proxy"
	"github.com/coordproxy/coordproxy/proxy/proxytest"
	clientv3 "go.etcd.io/etcd/client/v3"
	epb "go.etcd.io/etcd/server/v3/etcdserver/api/v3election/v3electionpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

type change struct{ key, value string }

func (c change) String() string { return c.key + "=" + c.value }

func TestObserve_deliversEveryChangeInOrder(t *testing.T) {
	// No pacing: changes land in etcd as fast as they can be made, so many
	// arrive in one watch response. etcd's Observe drops what follows a
	// delete in a batch (#7815, #18163).
	env := proxytest.New(t, proxy.Config{})
	ctx := proxytest.Ctx(t)
	l1, l2 := env.Grant(t, 60), env.Grant(t, 60)
	k1 := keyspace.OwnerKey("e", clientv3.LeaseID(l1))
	k2 := keyspace.OwnerKey("e", clientv3.LeaseID(l2))
	c1 := campaign(t, env, "e", l1, "a0")
	s, err := env.Election.Observe(ctx, &epb.LeaderRequest{Name: []byte("e")})
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan change, 100)
	go func() {
		for {
			m, err := s.Recv()
			if err != nil {
				close(got)
				return
			}
			got <- change{string(m.Kv.Key), string(m.Kv.Value)}
		}
	}()
	// The stream is registered once it has answered the current leader:
	// a stream opened on an election without one answers nothing, and the
	// changes below could come before the proxy's first read.
	select {
	case c := <-got:
		if c != (change{k1, "a0"}) {
			t.Fatalf("first answer %v, want the current leader %s=a0", c, k1)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no current leader within 30s")
	}
	var want []change
	for i := 1; i <= 5; i++ {
		v := fmt.Sprintf("a%d", i)
		if _, err := env.Election.Proclaim(ctx, &epb.ProclaimRequest{Leader: c1, Value: []byte(v)}); err != nil {
			t.Fatal(err)
		}
		want = append(want, change{k1, v})
	}
	ch := campaignAsync(ctx, env, "e", l2, "b0")
	env.WaitKeys(t, "e/", 2)
	// Hand-off and proclamations of the new leader, back to back. The new
	// leader's first proclamation is made straight at etcd so that it need
	// not wait for its Campaign to return.
	if _, err := env.Election.Resign(ctx, &epb.ResignRequest{Leader: c1}); err != nil {
		t.Fatal(err)
	}
	want = append(want, change{k2, "b0"})
	for i := 1; i <= 3; i++ {
		v := fmt.Sprintf("b%d", i)
		if _, err := env.KV.Put(ctx, k2, v, clientv3.WithLease(clientv3.LeaseID(l2))); err != nil {
			t.Fatal(err)
		}
		want = append(want, change{k2, v})
	}
	if r := wait(t, ch); r.err != nil {
		t.Fatal(r.err)
	}
	// One revision that both ends the leader and changes the candidate
	// behind it: observers see the state after the revision.
	l3 := env.Grant(t, 60)
	k3 := keyspace.OwnerKey("e", clientv3.LeaseID(l3))
	if _, err := env.KV.Put(ctx, k3, "c0", clientv3.WithLease(clientv3.LeaseID(l3))); err != nil {
		t.Fatal(err)
	}
	if _, err := env.KV.Txn(ctx).Then(clientv3.OpDelete(k2), clientv3.OpPut(k3, "c1", clientv3.WithLease(clientv3.LeaseID(l3)))).Commit(); err != nil {
		t.Fatal(err)
	}
	want = append(want, change{k3, "c1"})

	for i, w := range want {
		select {
		case c, ok := <-got:
			if !ok {
				t.Fatalf("stream ended after %d changes", i)
			}
			if c != w {
				t.Fatalf("change %d: %v, want %v (all: %v)", i, c, w, want)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("change %d (%v) never arrived", i, w)
		}
	}
	select {
	case c := <-got:
		t.Fatalf("unexpected extra change %v", c)
	default:
	}
}

func TestObserve_slowObserverIsEndedAndOthersGetEverything(t *testing.T) {
	env := proxytest.New(t, proxy.Config{ObserveBuffer: 4})
	ctx := proxytest.Ctx(t)
	lk := campaign(t, env, "e", env.Grant(t, 60), "v")
	slow, err := env.Election.Observe(ctx, &epb.LeaderRequest{Name: []byte("e")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := slow.Recv(); err != nil { // the current leader
		t.Fatal(err)
	}
	fast, err := env.Election.Observe(ctx, &epb.LeaderRequest{Name: []byte("e")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fast.Recv(); err != nil {
		t.Fatal(err)
	}
	// Values large enough that the unread stream's flow-control window
	// fills and the proxy's sends to it block.
	big := strings.Repeat("x", 256<<10)
	const n = 40
	done := make(chan error, 1)
	go func() {
		for i := range n {
			m, err := fast.Recv()
			if err != nil {
				done <- err
				return
			}
			if want := fmt.Sprintf("%d%s", i, big); string(m.Kv.Value) != want {
				done <- fmt.Errorf("fast observer got change %d out of order", i)
				return
			}
		}
		done <- nil
	}()
	for i := range n {
		if _, err := env.Election.Proclaim(ctx, &epb.ProclaimRequest{Leader: lk, Value: []byte(fmt.Sprintf("%d%s", i, big))}); err != nil {
			t.Fatal(err)
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// The slow stream ends with a clear status once it has read what it
	// was sent, rather than silently missing changes.
	var last error
	for range n + 1 {
		if _, last = slow.Recv(); last != nil {
			break
		}
	}
	if status.Code(last) != codes.ResourceExhausted {
		t.Fatalf("slow observer ended with %v, want ResourceExhausted", last)
	}
}
