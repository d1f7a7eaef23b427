package client_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/coordproxy/coordproxy/client"
	coordproxyv1 "github.com/coordproxy/coordproxy/proto/coordproxy/v1"
	"github.com/coordproxy/coordproxy/proxy"
	"github.com/coordproxy/coordproxy/proxy/proxytest"
	"go.etcd.io/etcd/client/v3/concurrency"
)

func next(t *testing.T, ch <-chan *coordproxyv1.ObserveResponse) *coordproxyv1.ObserveResponse {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatal("observe channel closed")
		}
		return ev
	case <-time.After(30 * time.Second):
		t.Fatal("no observe event")
		return nil
	}
}

func TestElection_campaignProclaimResignObservedWithConcurrencyElection(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	ctx := proxytest.Ctx(t)
	e := client.NewElection(session(t, env, 30), "el")
	native := concurrency.NewElection(etcdSession(t, env), "el")

	if _, err := e.Leader(ctx); !errors.Is(err, concurrency.ErrElectionNoLeader) {
		t.Fatalf("Leader with no leader: %v, want ErrElectionNoLeader", err)
	}
	if err := e.Proclaim(ctx, "x"); !errors.Is(err, concurrency.ErrElectionNotLeader) {
		t.Fatalf("Proclaim before leading: %v", err)
	}
	octx, stop := context.WithCancel(ctx)
	defer stop()
	events := e.Observe(octx)
	if ev := next(t, events); ev.Event != coordproxyv1.ObserveResponse_EVENT_CURRENT || ev.Leader != nil {
		t.Fatalf("first event %v, want CURRENT without a leader", ev)
	}

	// A concurrency.Election candidate on etcd leads first; the client waits.
	if err := native.Campaign(ctx, "native"); err != nil {
		t.Fatal(err)
	}
	if ev := next(t, events); ev.Event != coordproxyv1.ObserveResponse_EVENT_ELECTED || string(ev.Leader.Value) != "native" {
		t.Fatalf("event %v, want ELECTED native", ev)
	}
	won := make(chan error, 1)
	go func() { won <- e.Campaign(ctx, "proxy") }()
	env.WaitKeys(t, "el/", 2)
	if err := native.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-won; err != nil {
		t.Fatal(err)
	}
	if ev := next(t, events); ev.Event != coordproxyv1.ObserveResponse_EVENT_ELECTED || string(ev.Leader.Key) != e.Key() || ev.Leader.CreateRevision != e.Rev() {
		t.Fatalf("event %v, want ELECTED %s", ev, e.Key())
	}
	if err := e.Proclaim(ctx, "proxy-2"); err != nil {
		t.Fatal(err)
	}
	if ev := next(t, events); ev.Event != coordproxyv1.ObserveResponse_EVENT_PROCLAIMED || string(ev.Leader.Value) != "proxy-2" {
		t.Fatalf("event %v, want PROCLAIMED proxy-2", ev)
	}
	// The native side sees the client's leader.
	if l, err := native.Leader(ctx); err != nil || string(l.Kvs[0].Value) != "proxy-2" {
		t.Fatalf("concurrency.Election.Leader: %v, %v", l, err)
	}
	if kv, err := e.Leader(ctx); err != nil || string(kv.Value) != "proxy-2" {
		t.Fatalf("Leader: %v, %v", kv, err)
	}
	rev := e.Rev()
	if err := e.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	if ev := next(t, events); ev.Event != coordproxyv1.ObserveResponse_EVENT_NO_LEADER || ev.Leader != nil || ev.Revision <= rev {
		t.Fatalf("event %v, want NO_LEADER", ev)
	}
	if e.Key() != "" {
		t.Fatalf("Key after Resign: %q", e.Key())
	}
	stop()
	for range events {
	}
}

func TestElection_describeListsLeaderAndCandidates(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	ctx := proxytest.Ctx(t)
	leader := client.NewElection(session(t, env, 30), "ed")
	if err := leader.Campaign(ctx, "first"); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	waiting := make(chan error, 1)
	go func() { waiting <- client.NewElection(session(t, env, 30), "ed").Campaign(cctx, "second") }()
	env.WaitKeys(t, "ed/", 2)
	d, err := leader.Describe(ctx)
	if err != nil || string(d.Leader.GetKey()) != leader.Key() || string(d.Leader.GetValue()) != "first" || d.Leader.GetGrantedTtl() != 30 ||
		len(d.Candidates) != 1 || d.Waiting != 1 {
		t.Fatalf("Describe: %v, %v", d, err)
	}
	cancel()
	if err := <-waiting; err == nil {
		t.Fatal("cancelled Campaign succeeded")
	}
	env.WaitKeys(t, "ed/", 1)
}
