package proxy_test

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/coordproxy/coordproxy/proxy"
	"github.com/coordproxy/coordproxy/proxy/proxytest"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3lock/v3lockpb"
)

// The fenced-write recipe of docs/reliability.md; the lines between the
// markers must appear there as they are here.

// RECIPE-BEGIN
// ErrLockLost: the lock was lost (lease expired, key deleted) before the write.
var ErrLockLost = errors.New("lock lost: fenced write rejected")

// LockFenced takes the lock name for lease through coordproxy and returns
// the ownership key and its fencing token: the key's create revision, which
// only grows from one holder to the next.
func LockFenced(ctx context.Context, locks v3lockpb.LockClient, kv *clientv3.Client,
	name string, lease clientv3.LeaseID) (key string, token int64, err error) {
	held, err := locks.Lock(ctx, &v3lockpb.LockRequest{Name: []byte(name), Lease: int64(lease)})
	if err != nil {
		return "", 0, err
	}
	key = string(held.Key)
	g, err := kv.Get(ctx, key)
	if err != nil {
		return key, 0, err // still held: Unlock(key) when giving up
	}
	if len(g.Kvs) == 0 {
		return key, 0, ErrLockLost
	}
	return key, g.Kvs[0].CreateRevision, nil
}

// FencedPut writes k=v only if key still exists with create revision token,
// in one etcd transaction: a holder that was paused, partitioned or outlived
// its lease cannot overwrite the work of the next one.
func FencedPut(ctx context.Context, kv *clientv3.Client, key string, token int64, k, v string) error {
	resp, err := kv.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", token)).
		Then(clientv3.OpPut(k, v)).
		Commit()
	if err != nil {
		return err // outcome unknown: read k back before retrying
	}
	if !resp.Succeeded {
		return ErrLockLost
	}
	return nil
}

// RECIPE-END

func TestFencedRecipe(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	ctx := proxytest.Ctx(t)
	a, b := clientv3.LeaseID(env.Grant(t, 60)), clientv3.LeaseID(env.Grant(t, 60))

	keyA, tokenA, err := LockFenced(ctx, env.Lock, env.KV, "orders", a)
	if err != nil {
		t.Fatal(err)
	}
	if err := FencedPut(ctx, env.KV, keyA, tokenA, "data/orders", "written by a"); err != nil {
		t.Fatalf("the holder's fenced write: %v", err)
	}

	// a's lease ends while it holds (a pause longer than its TTL): b takes
	// the lock, and a's late write must not land.
	got := make(chan error, 1)
	go func() {
		keyB, tokenB, err := LockFenced(ctx, env.Lock, env.KV, "orders", b)
		if err == nil {
			if tokenB <= tokenA {
				t.Errorf("token of the next holder %d, want above %d", tokenB, tokenA)
			}
			err = FencedPut(ctx, env.KV, keyB, tokenB, "data/orders", "written by b")
		}
		got <- err
	}()
	env.WaitKeys(t, "orders/", 2)
	if _, err := env.KV.Revoke(ctx, a); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Fatalf("the next holder: %v", err)
	}
	if err := FencedPut(ctx, env.KV, keyA, tokenA, "data/orders", "late write by a"); !errors.Is(err, ErrLockLost) {
		t.Fatalf("the old holder's late write: %v, want ErrLockLost", err)
	}
	r, err := env.KV.Get(ctx, "data/orders")
	if err != nil || len(r.Kvs) != 1 || string(r.Kvs[0].Value) != "written by b" {
		t.Fatalf("data/orders = %v (%v), want b's write", r, err)
	}

	src, err := os.ReadFile("fenced_recipe_test.go")
	if err != nil {
		t.Fatal(err)
	}
	doc, err := os.ReadFile("../docs/reliability.md")
	if err != nil {
		t.Fatal(err)
	}
	s := string(src)
	recipe := s[strings.Index(s, "// RECIPE-BEGIN\n")+len("// RECIPE-BEGIN\n") : strings.Index(s, "// RECIPE-END")]
	if !strings.Contains(string(doc), "```go\n"+recipe+"```") {
		t.Fatalf("docs/reliability.md's recipe differs from this file's; it should read:\n%s", recipe)
	}
}
