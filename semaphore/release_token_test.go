package semaphore_test

import (
	"testing"

	coordproxyv1 "github.com/coordproxy/coordproxy/proto/coordproxy/v1"
	"github.com/coordproxy/coordproxy/proxy"
	"github.com/coordproxy/coordproxy/proxy/proxytest"
)

// A retried Release of an earlier acquisition (same lease, same name, same
// key) with its fencing token answers success and leaves the newer one.
func TestRelease_withAnOldFencingTokenLeavesTheNewerHold(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	ctx := proxytest.Ctx(t)
	lease := env.Grant(t, 30)
	acquire := func() *coordproxyv1.Held {
		h, err := env.Semaphores.Acquire(ctx, &coordproxyv1.AcquireRequest{Name: []byte("sem"), Lease: lease, Limit: 2})
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	first := acquire()
	if _, err := env.Semaphores.Release(ctx, &coordproxyv1.ReleaseRequest{Key: first.Key, FencingToken: first.FencingToken}); err != nil {
		t.Fatal(err)
	}
	second := acquire()
	if string(second.Key) != string(first.Key) || second.FencingToken <= first.FencingToken {
		t.Fatalf("second acquisition %q@%d, first %q@%d", second.Key, second.FencingToken, first.Key, first.FencingToken)
	}
	if _, err := env.Semaphores.Release(ctx, &coordproxyv1.ReleaseRequest{Key: first.Key, FencingToken: first.FencingToken}); err != nil {
		t.Fatalf("retried Release of the first acquisition: %v, want success", err)
	}
	if keys := env.Keys(t, "sem/"); len(keys) != 1 || keys[0].CreateRevision != second.FencingToken {
		t.Fatalf("after the retried Release: %v, want the second acquisition held", keys)
	}
	if _, err := env.Semaphores.Release(ctx, &coordproxyv1.ReleaseRequest{Key: second.Key, FencingToken: second.FencingToken}); err != nil {
		t.Fatal(err)
	}
	if keys := env.Keys(t, "sem/"); len(keys) != 0 {
		t.Fatalf("after Release with the current token: %v", keys)
	}
}
