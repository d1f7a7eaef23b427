package client_test

import (
	"context"
	"testing"

	"github.com/coordproxy/coordproxy/client"
	"github.com/coordproxy/coordproxy/proxy"
	"github.com/coordproxy/coordproxy/proxy/proxytest"
	recipe "go.etcd.io/etcd/client/v3/experimental/recipes"
)

func TestSemaphore_limitHoldersAndTheNextWaits(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	ctx := proxytest.Ctx(t)
	a, b, c := client.NewSemaphore(session(t, env, 30), "pool", 2), client.NewSemaphore(session(t, env, 30), "pool", 2), client.NewSemaphore(session(t, env, 30), "pool", 2)
	for _, s := range []*client.Semaphore{a, b} {
		if err := s.Acquire(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if a.FencingToken() == 0 || b.FencingToken() <= a.FencingToken() {
		t.Fatalf("tokens %d, %d", a.FencingToken(), b.FencingToken())
	}
	done := make(chan error, 1)
	go func() { done <- c.Acquire(ctx) }()
	env.WaitKeys(t, "pool/", 3)
	d, err := c.Describe(ctx)
	if err != nil || d.Limit != 2 || len(d.Holders) != 2 || d.Waiting != 1 || string(d.Holders[0].Key) != a.Key() {
		t.Fatalf("Describe: %v, %v", d, err)
	}
	select {
	case err := <-done:
		t.Fatalf("third Acquire returned with the semaphore full: %v", err)
	default:
	}
	if err := a.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if kv := env.Keys(t, c.Key()); len(kv) != 1 || kv[0].CreateRevision != c.FencingToken() {
		t.Fatalf("c holds %q/%d, etcd has %v", c.Key(), c.FencingToken(), kv)
	}
	for _, s := range []*client.Semaphore{b, c} {
		if err := s.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if keys := env.Keys(t, "pool/"); len(keys) != 0 {
		t.Fatalf("keys left: %v", keys)
	}
}

func TestRWMutex_readersShareAndARecipeWriterWaits(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	ctx := proxytest.Ctx(t)
	r1, r2 := client.NewRWMutex(session(t, env, 30), "doc"), client.NewRWMutex(session(t, env, 30), "doc")
	if err := r1.RLock(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r2.RLock(ctx); err != nil {
		t.Fatal(err)
	}
	w := recipe.NewRWMutex(etcdSession(t, env), "doc")
	done := make(chan error, 1)
	go func() { done <- w.Lock() }()
	env.WaitKeys(t, "doc/", 3)
	select {
	case err := <-done:
		t.Fatalf("the recipe's writer locked while readers hold: %v", err)
	default:
	}
	// A reader that comes after the waiting writer waits for it.
	r3 := client.NewRWMutex(session(t, env, 30), "doc")
	rctx, cancel := context.WithCancel(ctx)
	late := make(chan error, 1)
	go func() { late <- r3.RLock(rctx) }()
	env.WaitKeys(t, "doc/", 4)
	for _, r := range []*client.RWMutex{r1, r2} {
		if err := r.Unlock(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-late:
		t.Fatalf("a later reader got in while the writer holds: %v", err)
	default:
	}
	if err := w.Unlock(); err != nil {
		t.Fatal(err)
	}
	if err := <-late; err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := r3.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	if keys := env.Keys(t, "doc/"); len(keys) != 0 {
		t.Fatalf("keys left: %v", keys)
	}
}
