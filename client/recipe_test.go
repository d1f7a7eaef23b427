package client_test

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/coordproxy/coordproxy/client"
	"github.com/coordproxy/coordproxy/proxy"
	"github.com/coordproxy/coordproxy/proxy/proxytest"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// The fenced-update recipe of docs/extensions.md; the lines between the
// markers must appear there as they are here.

// RECIPE-BEGIN
// ErrLockLost: the lock was lost (lease ended, key deleted) before the write.
var ErrLockLost = errors.New("lock lost: fenced write refused")

// UpdateFenced holds the lock name while it reads key, computes its new
// value and writes it; the write lands only if this grant of the lock still
// holds at that moment, so a holder that was paused past its lease cannot
// overwrite the next holder's work.
func UpdateFenced(ctx context.Context, s *concurrency.Session, name, key string,
	update func(old []byte) []byte) error {
	m := client.NewMutex(s, name)
	if err := m.Lock(ctx); err != nil {
		return err
	}
	defer m.Unlock(context.WithoutCancel(ctx))

	kv := s.Client() // through coordproxy's KV pass-through
	get, err := kv.Get(ctx, key)
	if err != nil {
		return err
	}
	var old []byte
	if len(get.Kvs) > 0 {
		old = get.Kvs[0].Value
	}
	resp, err := kv.Txn(ctx).
		If(m.IsOwner()). // the ownership key still has this grant's fencing token
		Then(clientv3.OpPut(key, string(update(old)))).
		Commit()
	if err != nil {
		return err // outcome unknown: read key back before retrying
	}
	if !resp.Succeeded {
		return ErrLockLost
	}
	return nil
}

// RECIPE-END

func TestFencedUpdateRecipe(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	ctx := proxytest.Ctx(t)
	a, b := session(t, env, 30), session(t, env, 30)

	if err := UpdateFenced(ctx, a, "orders", "data/orders", func([]byte) []byte { return []byte("1") }); err != nil {
		t.Fatal(err)
	}

	// a holds and is "paused" inside update past its lease; b takes the lock
	// and writes; a's late write must be refused.
	paused, resume := make(chan struct{}), make(chan struct{})
	aDone := make(chan error, 1)
	go func() {
		aDone <- UpdateFenced(ctx, a, "orders", "data/orders", func(old []byte) []byte {
			close(paused)
			<-resume
			return append(old, []byte("+late a")...)
		})
	}()
	<-paused
	bDone := make(chan error, 1)
	go func() {
		bDone <- UpdateFenced(ctx, b, "orders", "data/orders", func(old []byte) []byte { return append(old, []byte("+b")...) })
	}()
	env.WaitKeys(t, "orders/", 2)
	if _, err := env.KV.Revoke(ctx, a.Lease()); err != nil {
		t.Fatal(err)
	}
	if err := <-bDone; err != nil {
		t.Fatalf("the next holder: %v", err)
	}
	close(resume)
	if err := <-aDone; !errors.Is(err, ErrLockLost) {
		t.Fatalf("the paused holder's late write: %v, want ErrLockLost", err)
	}
	r, err := env.KV.Get(ctx, "data/orders")
	if err != nil || len(r.Kvs) != 1 || string(r.Kvs[0].Value) != "1+b" {
		t.Fatalf("data/orders = %v (%v), want 1+b", r, err)
	}

	src, err := os.ReadFile("recipe_test.go")
	if err != nil {
		t.Fatal(err)
	}
	doc, err := os.ReadFile("../docs/extensions.md")
	if err != nil {
		t.Fatal(err)
	}
	s := string(src)
	recipe := s[strings.Index(s, "// RECIPE-BEGIN\n")+len("// RECIPE-BEGIN\n") : strings.Index(s, "// RECIPE-END")]
	if !strings.Contains(string(doc), "```go\n"+recipe+"```") {
		t.Fatalf("docs/extensions.md's recipe differs from this file's; it should read:\n%s", recipe)
	}
}
